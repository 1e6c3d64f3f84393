//! The Kubernetes objects raftgate reads, and parsing them from YAML or JSON manifests.
//!
//! Manifests are what people `kubectl apply`: multi-document YAML (`---`), `kind: List`,
//! or JSON. Objects of kinds we do not use (Deployments, Namespaces…) are skipped quietly;
//! an object of a kind we use that does not parse is reported with its kind, name and reason.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// `namespace/name`; cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Key {
        Key {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One object of a kind we use. Short-lived (parsed, then moved into [`Objects`]), so the
/// size difference between variants costs nothing worth a box.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Ingress(Ingress),
    IngressClass(IngressClass),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Endpoints(Endpoints),
    Secret(Secret),
    ConfigMap(ConfigMap),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Ingress(_) => "Ingress",
            Object::IngressClass(_) => "IngressClass",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Endpoints(_) => "Endpoints",
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Ingress(o) => &mut o.metadata,
            Object::IngressClass(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
        }
    }

    pub fn key(&self) -> Key {
        Key::of(self.meta())
    }
}

/// All objects the compiler reads, by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub ingresses: BTreeMap<Key, Ingress>,
    pub classes: BTreeMap<Key, IngressClass>,
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    pub endpoints: BTreeMap<Key, Endpoints>,
    pub secrets: BTreeMap<Key, Secret>,
    pub config_maps: BTreeMap<Key, ConfigMap>,
}

impl Objects {
    /// Adds an object. Returns false if one of the same kind and key was already there (it is kept).
    pub fn insert(&mut self, obj: Object) -> bool {
        let key = obj.key();
        fn put<T>(m: &mut BTreeMap<Key, T>, k: Key, v: T) -> bool {
            if m.contains_key(&k) {
                return false;
            }
            m.insert(k, v);
            true
        }
        match obj {
            Object::Ingress(o) => put(&mut self.ingresses, key, o),
            Object::IngressClass(o) => put(&mut self.classes, key, o),
            Object::Service(o) => put(&mut self.services, key, o),
            Object::EndpointSlice(o) => put(&mut self.slices, key, o),
            Object::Endpoints(o) => put(&mut self.endpoints, key, o),
            Object::Secret(o) => put(&mut self.secrets, key, o),
            Object::ConfigMap(o) => put(&mut self.config_maps, key, o),
        }
    }

    /// Adds or replaces an object; returns the one it replaced.
    pub fn upsert(&mut self, obj: Object) -> Option<Object> {
        let key = obj.key();
        match obj {
            Object::Ingress(o) => self.ingresses.insert(key, o).map(Object::Ingress),
            Object::IngressClass(o) => self.classes.insert(key, o).map(Object::IngressClass),
            Object::Service(o) => self.services.insert(key, o).map(Object::Service),
            Object::EndpointSlice(o) => self.slices.insert(key, o).map(Object::EndpointSlice),
            Object::Endpoints(o) => self.endpoints.insert(key, o).map(Object::Endpoints),
            Object::Secret(o) => self.secrets.insert(key, o).map(Object::Secret),
            Object::ConfigMap(o) => self.config_maps.insert(key, o).map(Object::ConfigMap),
        }
    }

    /// Removes the object of `kind` (as [`Object::kind`] names it) at `key`; true if it was there.
    pub fn remove(&mut self, kind: &str, key: &Key) -> bool {
        match kind {
            "Ingress" => self.ingresses.remove(key).is_some(),
            "IngressClass" => self.classes.remove(key).is_some(),
            "Service" => self.services.remove(key).is_some(),
            "EndpointSlice" => self.slices.remove(key).is_some(),
            "Endpoints" => self.endpoints.remove(key).is_some(),
            "Secret" => self.secrets.remove(key).is_some(),
            "ConfigMap" => self.config_maps.remove(key).is_some(),
            _ => false,
        }
    }

    /// Keeps only the objects of `kind` for which `keep` is true.
    pub fn retain(&mut self, kind: &str, keep: impl Fn(&Key) -> bool) {
        match kind {
            "Ingress" => self.ingresses.retain(|k, _| keep(k)),
            "IngressClass" => self.classes.retain(|k, _| keep(k)),
            "Service" => self.services.retain(|k, _| keep(k)),
            "EndpointSlice" => self.slices.retain(|k, _| keep(k)),
            "Endpoints" => self.endpoints.retain(|k, _| keep(k)),
            "Secret" => self.secrets.retain(|k, _| keep(k)),
            "ConfigMap" => self.config_maps.retain(|k, _| keep(k)),
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.ingresses.len()
            + self.classes.len()
            + self.services.len()
            + self.slices.len()
            + self.endpoints.len()
            + self.secrets.len()
            + self.config_maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a manifest or one of its objects was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(#[source] serde_yaml::Error),
    #[error("{kind} {name}: {reason}")]
    Object { kind: String, name: String, reason: String },
}

/// Parses a manifest file's text. The outer error means the file as a whole is unreadable;
/// the inner ones are per object, and every other object in the file is still returned.
pub fn parse(text: &str) -> Result<Vec<Result<Object, ManifestError>>, ManifestError> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(ManifestError::Syntax)?;
        docs.push(value);
    }
    let mut out = Vec::new();
    for value in docs {
        flatten(value, &mut out);
    }
    Ok(out)
}

fn flatten(value: serde_yaml::Value, out: &mut Vec<Result<Object, ManifestError>>) {
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
            for item in items {
                flatten(item, out);
            }
        }
        return;
    }
    if let Some(r) = object(value, &kind) {
        out.push(r);
    }
}

fn object(value: serde_yaml::Value, kind: &str) -> Option<Result<Object, ManifestError>> {
    let api = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|v| v.as_str()).map(str::to_string);
    let name = match (field("namespace"), field("name")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n,
        (_, None) => "<unnamed>".into(),
    };
    let err = |reason: String| ManifestError::Object {
        kind: kind.to_string(),
        name: name.clone(),
        reason,
    };
    fn de<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
        serde_yaml::from_value(v).map_err(|e| e.to_string())
    }
    let parsed = match (api.as_str(), kind) {
        ("networking.k8s.io/v1", "Ingress") => de(value).map(Object::Ingress),
        ("networking.k8s.io/v1", "IngressClass") => de(value).map(Object::IngressClass),
        ("v1", "Service") => de(value).map(Object::Service),
        ("v1", "Endpoints") => de(value).map(Object::Endpoints),
        ("discovery.k8s.io/v1", "EndpointSlice") => de(value).map(Object::EndpointSlice),
        ("v1", "Secret") => de(value).map(Object::Secret),
        ("v1", "ConfigMap") => de(value).map(Object::ConfigMap),
        (_, "Ingress" | "IngressClass") if api != "networking.k8s.io/v1" => Err(format!(
            "apiVersion {api:?} is not served; use networking.k8s.io/v1 (extensions/v1beta1 was removed in Kubernetes 1.22)"
        )),
        ("", _) => Err("missing apiVersion or kind".into()),
        _ => return None,
    };
    Some(parsed.map_err(err).and_then(|mut o| {
        if o.meta().name.as_deref().unwrap_or_default().is_empty() {
            return Err(ManifestError::Object {
                kind: kind.into(),
                name,
                reason: "metadata.name is missing".into(),
            });
        }
        // Namespaced objects without a namespace land in `default`, as with `kubectl apply`.
        if !matches!(o, Object::IngressClass(_)) && o.meta().namespace.is_none() {
            o.meta_mut().namespace = Some("default".into());
        }
        Ok(o)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: broken}
spec:
  rules: "not a list"
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: s}
  type: kubernetes.io/tls
  data: {tls.crt: aGVsbG8=, tls.key: aGVsbG8=}
"#;

    #[test]
    fn multi_document_lists_and_per_object_errors() {
        let objs = parse(MIXED).unwrap();
        assert_eq!(objs.len(), 3, "the Deployment is skipped");
        assert!(matches!(&objs[0], Ok(Object::Service(s)) if s.metadata.namespace.as_deref() == Some("shop")));
        let Err(e) = &objs[1] else {
            panic!("an Ingress of the wrong shape must fail")
        };
        let msg = e.to_string();
        assert!(
            msg.contains("Ingress default/broken") || msg.contains("Ingress broken"),
            "{msg}"
        );
        assert!(msg.contains("invalid type"), "{msg}");
        let Ok(Object::Secret(s)) = &objs[2] else {
            panic!("secret from List")
        };
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.data.as_ref().unwrap()["tls.crt"].0, b"hello");
    }

    #[test]
    fn garbage_is_a_file_error_and_old_api_versions_are_explained() {
        assert!(matches!(parse("kind: [unclosed"), Err(ManifestError::Syntax(_))));
        let objs = parse("apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n").unwrap();
        assert!(
            objs[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("extensions/v1beta1 was removed")
        );
        assert!(parse("").unwrap().is_empty());
        assert!(parse("---\n---\n").unwrap().is_empty());
    }

    #[test]
    fn json_manifests_parse_too() {
        let objs = parse(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{}}"#).unwrap();
        assert!(matches!(&objs[0], Ok(Object::Service(_))));
    }
}
