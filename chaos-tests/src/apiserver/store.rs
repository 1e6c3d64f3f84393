//! The object store: one global resourceVersion counter, the objects, the event history and the live watchers.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Map;
use serde_json::Value;
use serde_json::json;
use tokio::sync::mpsc;

use super::patch;
use super::resources::RESOURCES;
use super::resources::ResourceType;
use super::selector::Selectors;
use super::util;

/// Storage key: the resource type index and `namespace/name` (or `name` for cluster-scoped types), ordered
/// like etcd keys so pagination walks objects in the same order as the real server.
pub(crate) type Key = (usize, String);

/// The store key string of an object.
pub(crate) fn object_key(rt: &ResourceType, ns: &str, name: &str) -> String {
    if rt.namespaced {
        format!("{ns}/{name}")
    } else {
        name.to_string()
    }
}

/// Watch event types stored in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One write, as kept in the history and sent to watchers.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    pub(crate) res: usize,
    pub(crate) key: String,
    /// The object after the write; for DELETED, the last state stamped with the deletion revision.
    pub(crate) object: Arc<Value>,
    /// The object before the write (None for ADDED); used to rebuild past states and for selector transitions.
    pub(crate) prev: Option<Arc<Value>>,
}

/// A Kubernetes API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified_name())).with_details(rt, name)
    }

    fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified_name()),
        )
        .with_details(rt, name)
    }

    fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                rt.qualified_name()
            ),
        )
        .with_details(rt, name)
    }

    fn modified(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub(crate) fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {message}", rt.kind)).with_details(rt, name)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` body of this error.
    pub(crate) fn status_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        if let Some(map) = status.as_object_mut() {
            if !self.reason.is_empty() {
                map.insert("reason".into(), json!(self.reason));
            }
            if let Some(details) = &self.details {
                map.insert("details".into(), details.clone());
            }
        }
        status
    }
}

/// What a list reads: the newest state, or the state at an older revision (Exact reads and continue tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadAt {
    Latest,
    Revision(u64),
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub(crate) rv: u64,
    pub(crate) items: Vec<Arc<Value>>,
    /// Store key after which the next page starts, when more matching items remain.
    pub(crate) next_start: Option<String>,
    pub(crate) remaining: Option<u64>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// At the newest revision; with `initial`, first synthesize ADDED events for the current objects.
    Now { initial: bool },
    /// Right after this revision: replays later events from the history.
    After(u64),
}

/// A started watch: what to send first, then the live feed.
#[derive(Debug)]
pub(crate) struct WatchStart {
    /// Current objects to send as synthetic ADDED events (for `WatchFrom::Now { initial: true }`).
    pub(crate) initial: Vec<Arc<Value>>,
    /// Past events to replay (for `WatchFrom::After`).
    pub(crate) replay: Vec<Arc<StoredEvent>>,
    pub(crate) live: mpsc::UnboundedReceiver<Arc<StoredEvent>>,
    /// The revision the initial state or replay brings the watcher up to.
    pub(crate) rv: u64,
}

/// Preconditions of a DELETE (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// Patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json`; also used for `application/strategic-merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
}

/// The objects, the revision counter and the history of one test API server.
#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<StoredEvent>>,
    max_history: Option<usize>,
    watchers: Vec<(usize, mpsc::UnboundedSender<Arc<StoredEvent>>)>,
    rng: util::Rng,
    next_cluster_ip: u32,
    rv_tx: tokio::sync::watch::Sender<u64>,
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let map = match obj {
        Value::Object(map) => map,
        other => {
            *other = Value::Object(Map::new());
            match other {
                Value::Object(map) => map,
                _ => unreachable!("just assigned an object"),
            }
        }
    };
    let entry = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("just ensured an object"),
    }
}

/// The object without `metadata` and `status`: what `metadata.generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

/// Valid DNS-subdomain-like object names (the real validation differs per type but always rejects these).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks `kind`/`apiVersion` of a body against the resource type and fills them in when missing.
fn check_type_meta(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request was in an unknown format - expected a JSON object",
        ));
    };
    let api_version = rt.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(rt.kind));
    Ok(())
}

/// Checks `metadata.namespace` of a body against the request's namespace and sets it.
fn check_namespace(rt: &ResourceType, obj: &mut Value, ns: &str) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    if rt.namespaced {
        if let Some(body_ns) = meta.get("namespace").and_then(Value::as_str)
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// Secrets: `stringData` is merged into `data` (base64) on every write and never stored; `type` defaults.
fn normalize_secret(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else { return };
    if let Some(Value::Object(string_data)) = map.remove("stringData") {
        let data = map.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                let s = v.as_str().unwrap_or_default().to_string();
                data.insert(k, json!(util::base64_std(s.as_bytes())));
            }
        }
    }
    map.entry("type").or_insert_with(|| json!("Opaque"));
}

fn rv_string(obj: &Value) -> String {
    meta_str(obj, "resourceVersion").unwrap_or_default().to_string()
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

impl Store {
    pub(crate) fn new(rv_tx: tokio::sync::watch::Sender<u64>) -> Self {
        Self {
            // Revision 1 is "the empty cluster"; no object ever carries it, and "0" keeps its special meaning.
            rv: 1,
            compacted: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            max_history: None,
            watchers: Vec::new(),
            rng: util::Rng::new(),
            next_cluster_ip: 1,
            rv_tx,
        }
    }

    /// The newest revision.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The compaction point: reads and watches from revisions below it get 410 Gone.
    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Number of events kept in the history.
    pub(crate) fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Keeps at most `max` events of history, compacting older ones away (None: keep everything until compacted).
    pub(crate) fn set_max_history(&mut self, max: Option<usize>) {
        self.max_history = max;
        self.trim_history();
    }

    fn trim_history(&mut self) {
        if let Some(max) = self.max_history {
            while self.history.len() > max {
                if let Some(ev) = self.history.pop_front() {
                    self.compacted = self.compacted.max(ev.rv);
                }
            }
        }
    }

    /// Drops history up to and including `rv` (capped at the newest revision): afterwards, watches from,
    /// Exact lists at and continue tokens of revisions below `rv` get 410 Gone. Returns the compaction point.
    pub(crate) fn compact_to(&mut self, rv: u64) -> u64 {
        let rv = rv.min(self.rv);
        if rv > self.compacted {
            while self.history.front().is_some_and(|ev| ev.rv <= rv) {
                self.history.pop_front();
            }
            self.compacted = rv;
        }
        self.compacted
    }

    /// Records a write: bumps the revision, stamps the object, updates the objects, the history and watchers.
    fn commit(
        &mut self,
        kind: EventType,
        res: usize,
        key: String,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        if kind == EventType::Deleted {
            self.objects.remove(&(res, key.clone()));
        } else {
            self.objects.insert((res, key.clone()), obj.clone());
        }
        let ev = Arc::new(StoredEvent {
            rv: self.rv,
            kind,
            res,
            key,
            object: obj.clone(),
            prev,
        });
        self.watchers
            .retain(|(wres, tx)| *wres != res || tx.send(ev.clone()).is_ok());
        self.watchers.retain(|(_, tx)| !tx.is_closed());
        self.history.push_back(ev);
        self.trim_history();
        self.rv_tx.send_replace(self.rv);
        obj
    }

    /// Reads one object.
    pub(crate) fn get(&self, res: usize, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        self.objects
            .get(&(res, object_key(rt, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// POST: creates an object in namespace `ns` (ignored for cluster-scoped types).
    pub(crate) fn create(&mut self, res: usize, ns: &str, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        check_type_meta(rt, &mut obj)?;
        check_namespace(rt, &mut obj, ns)?;
        if !rv_string(&obj).is_empty() {
            return Err(ApiError::new(
                500,
                "",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            let generate = meta_str(&obj, "generateName").unwrap_or_default().to_string();
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{generate}{}", self.rng.name_suffix());
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                rt,
                &name,
                format!(
                    "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower \
                     case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        let key = object_key(rt, ns, &name);
        if self.objects.contains_key(&(res, key.clone())) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let uid = self.rng.uuid();
        let meta = meta_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(field);
        }
        self.prepare_for_create(rt, &mut obj);
        Ok(self.commit(EventType::Added, res, key, obj, None))
    }

    /// Type-specific create defaults (the `PrepareForCreate` of the real registry strategies).
    fn prepare_for_create(&mut self, rt: &ResourceType, obj: &mut Value) {
        let Some(map) = obj.as_object_mut() else { return };
        match (rt.group, rt.kind) {
            ("networking.k8s.io", "Ingress") | ("", "Service") => {
                map.insert("status".into(), json!({"loadBalancer": {}}));
            }
            ("", "Namespace") => {
                map.insert("status".into(), json!({"phase": "Active"}));
            }
            ("", "Pod") => {
                map.insert("status".into(), json!({"phase": "Pending"}));
            }
            _ => {}
        }
        if rt.group.is_empty() && rt.kind == "Service" {
            let spec = map.entry("spec").or_insert_with(|| json!({}));
            let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
            let has_ip = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !external && !has_ip {
                let n = self.next_cluster_ip;
                self.next_cluster_ip += 1;
                let ip = format!("10.96.{}.{}", (n >> 8) & 0xFF, n & 0xFF);
                if let Some(spec) = spec.as_object_mut() {
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
            }
        }
        if rt.group.is_empty() && rt.kind == "Secret" {
            normalize_secret(obj);
        }
    }

    /// PUT (`status`: the status subresource). Returns the stored object and whether it was created.
    pub(crate) fn update(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        mut obj: Value,
        status: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let rt = &RESOURCES[res];
        check_type_meta(rt, &mut obj)?;
        check_namespace(rt, &mut obj, ns)?;
        match meta_str(&obj, "name") {
            Some(body_name) if !body_name.is_empty() && body_name != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        let key = object_key(rt, ns, name);
        let Some(old) = self.objects.get(&(res, key.clone())).cloned() else {
            if rt.create_on_update && !status {
                meta_mut(&mut obj).remove("resourceVersion");
                return Ok((self.create(res, ns, obj)?, true));
            }
            return Err(ApiError::not_found(rt, name));
        };
        let body_rv = rv_string(&obj);
        if !body_rv.is_empty() {
            parse_rv(&body_rv)?;
            if body_rv != rv_string(&old) {
                return Err(ApiError::modified(rt, name));
            }
        }
        self.check_uid(rt, name, &obj, &old)?;
        Ok((self.finish_update(res, key, old, obj, status)?, false))
    }

    fn check_uid(&self, rt: &ResourceType, name: &str, new: &Value, old: &Value) -> Result<(), ApiError> {
        let new_uid = meta_str(new, "uid").unwrap_or_default();
        let old_uid = meta_str(old, "uid").unwrap_or_default();
        if !new_uid.is_empty() && new_uid != old_uid {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!("Precondition failed: UID in precondition: {new_uid}, UID in object meta: {old_uid}"),
            ));
        }
        Ok(())
    }

    /// PATCH (`status`: the status subresource).
    pub(crate) fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        patch_type: PatchType,
        patch_doc: &Value,
        status: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let key = object_key(rt, ns, name);
        let old = self
            .objects
            .get(&(res, key.clone()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut doc = (*old).clone();
        match patch_type {
            PatchType::Merge => {
                if !patch_doc.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut doc, patch_doc);
            }
            PatchType::Json => patch::json_patch(&mut doc, patch_doc).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?,
        }
        check_type_meta(rt, &mut doc)?;
        for field in ["name", "namespace"] {
            if meta_str(&doc, field) != meta_str(&old, field) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    format!("metadata.{field}: Invalid value: field is immutable"),
                ));
            }
        }
        let patched_rv = rv_string(&doc);
        if !patched_rv.is_empty() && patched_rv != rv_string(&old) {
            parse_rv(&patched_rv)?;
            return Err(ApiError::modified(rt, name));
        }
        self.check_uid(rt, name, &doc, &old)?;
        self.finish_update(res, key, old, doc, status)
    }

    /// The shared tail of PUT and PATCH: keeps system fields, applies status-subresource rules, bumps the
    /// generation, skips no-op writes (no new revision, no event, like the real server) and completes
    /// deletions whose finalizers are gone.
    fn finish_update(
        &mut self,
        res: usize,
        key: String,
        old: Arc<Value>,
        new: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let mut result = if status_only {
            let mut result = (*old).clone();
            if let Some(map) = result.as_object_mut() {
                match new.get("status") {
                    Some(s) if !s.is_null() => {
                        map.insert("status".into(), s.clone());
                    }
                    _ => {
                        map.remove("status");
                    }
                }
            }
            result
        } else {
            let mut result = new;
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let meta = meta_mut(&mut result);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old_meta.get(field) {
                    Some(v) => {
                        meta.insert(field.into(), v.clone());
                    }
                    None => {
                        meta.remove(field);
                    }
                }
            }
            meta.remove("selfLink");
            meta.remove("managedFields");
            if rt.status_subresource
                && let Some(map) = result.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => {
                        map.insert("status".into(), s.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                }
            }
            if rt.group.is_empty() && rt.kind == "Secret" {
                normalize_secret(&mut result);
            }
            if rt.group.is_empty() && rt.kind == "Service" {
                keep_cluster_ip(&old, &mut result);
            }
            if spec_part(&result) != spec_part(&old) {
                let generation = meta_str_num(&old, "generation").unwrap_or(0) + 1;
                meta_mut(&mut result).insert("generation".into(), json!(generation));
            }
            result
        };
        meta_mut(&mut result).insert("resourceVersion".into(), json!(rv_string(&old)));
        if result == *old {
            return Ok(old);
        }
        let deleting = meta(&result).is_some_and(|m| m.contains_key("deletionTimestamp"));
        let finalizers_left = meta(&result)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let kind = if deleting && !finalizers_left {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        Ok(self.commit(kind, res, key, result, Some(old)))
    }

    /// DELETE. Returns the object (stamped with the deletion revision) and whether it is gone; an object with
    /// finalizers only gets a `deletionTimestamp` and stays until an update empties its finalizers.
    pub(crate) fn delete(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let rt = &RESOURCES[res];
        let key = object_key(rt, ns, name);
        let old = self
            .objects
            .get(&(res, key.clone()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = pre.uid.as_deref().filter(|u| !u.is_empty()) {
            let actual = meta_str(&old, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                ));
            }
        }
        if let Some(rv) = pre.resource_version.as_deref().filter(|r| !r.is_empty()) {
            let actual = rv_string(&old);
            if rv != actual {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        let has_finalizers = meta(&old)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok((old, false));
            }
            let mut obj = (*old).clone();
            let meta = meta_mut(&mut obj);
            meta.insert("deletionTimestamp".into(), json!(util::now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok((self.commit(EventType::Modified, res, key, obj, Some(old)), false));
        }
        let obj = (*old).clone();
        Ok((self.commit(EventType::Deleted, res, key, obj, Some(old)), true))
    }

    /// The objects of a type under a key prefix at a revision (rebuilt from the history for older revisions),
    /// starting at key `start` (inclusive), in key order. The caller checks `at >= compacted`.
    fn objects_at(&self, res: usize, prefix: &str, start: &str, at: ReadAt) -> BTreeMap<String, Arc<Value>> {
        let lower = if start > prefix { start } else { prefix };
        let mut map: BTreeMap<String, Arc<Value>> = self
            .objects
            .range((res, lower.to_string())..)
            .take_while(|((r, k), _)| *r == res && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        if let ReadAt::Revision(at) = at {
            for ev in self.history.iter().rev() {
                if ev.rv <= at {
                    break;
                }
                if ev.res != res || !ev.key.starts_with(prefix) || ev.key.as_str() < lower {
                    continue;
                }
                match &ev.prev {
                    Some(prev) => {
                        map.insert(ev.key.clone(), prev.clone());
                    }
                    None => {
                        map.remove(&ev.key);
                    }
                }
            }
        }
        map
    }

    /// LIST: a page of matching objects at `at`, starting at store key `start`.
    pub(crate) fn list(
        &self,
        res: usize,
        ns: Option<&str>,
        selectors: &Selectors,
        at: ReadAt,
        start: &str,
        limit: Option<usize>,
    ) -> Result<ListPage, ApiError> {
        let rv = match at {
            ReadAt::Latest => self.rv,
            ReadAt::Revision(rv) => {
                if rv < self.compacted {
                    return Err(ApiError::expired(format!(
                        "The resourceVersion for the provided list is too old. ({rv} < {})",
                        self.compacted
                    )));
                }
                if rv > self.rv {
                    return Err(too_large(rv, self.rv));
                }
                rv
            }
        };
        let rt = &RESOURCES[res];
        let prefix = match ns {
            Some(ns) if rt.namespaced => format!("{ns}/"),
            _ => String::new(),
        };
        let at = if rv == self.rv {
            ReadAt::Latest
        } else {
            ReadAt::Revision(rv)
        };
        let objects = self.objects_at(res, &prefix, start, at);
        let mut matching = objects.into_iter().filter(|(_, o)| selectors.matches(o));
        let mut items = Vec::new();
        let mut last_key = None;
        let limit = limit.filter(|l| *l > 0);
        for (k, o) in matching.by_ref() {
            items.push(o);
            last_key = Some(k);
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let remaining = matching.count() as u64;
        let (next_start, remaining) = if remaining > 0 && limit.is_some() {
            let next = last_key.map(|k| format!("{k}\u{0}"));
            (next, selectors.is_empty().then_some(remaining))
        } else {
            (None, None)
        };
        Ok(ListPage {
            rv,
            items,
            next_start,
            remaining,
        })
    }

    /// Starts a watch on a resource type: the initial objects or replayed events, plus a live feed that
    /// receives every later write of the type, with no gap and no duplicate (both are taken under one lock).
    pub(crate) fn watch(&mut self, res: usize, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let (tx, live) = mpsc::unbounded_channel();
        let mut start = WatchStart {
            initial: Vec::new(),
            replay: Vec::new(),
            live,
            rv: self.rv,
        };
        match from {
            WatchFrom::Now { initial } => {
                if initial {
                    start.initial = self
                        .objects
                        .range((res, String::new())..)
                        .take_while(|((r, _), _)| *r == res)
                        .map(|(_, v)| v.clone())
                        .collect();
                }
            }
            WatchFrom::After(rv) => {
                if rv < self.compacted {
                    return Err(too_old(rv, self.compacted));
                }
                start.replay = self
                    .history
                    .iter()
                    .filter(|ev| ev.rv > rv && ev.res == res)
                    .cloned()
                    .collect();
            }
        }
        self.watchers.push((res, tx));
        Ok(start)
    }

    /// All objects of all types (for the request log and debugging endpoints).
    pub(crate) fn object_count(&self) -> usize {
        self.objects.len()
    }
}

fn meta_str_num(obj: &Value, field: &str) -> Option<i64> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_i64)
}

/// Services: an update without `spec.clusterIP` keeps the allocated one (the real server fills it in).
fn keep_cluster_ip(old: &Value, new: &mut Value) {
    let Some(old_spec) = old.get("spec") else { return };
    let Some(new_spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in ["clusterIP", "clusterIPs"] {
        let missing = new_spec
            .get(field)
            .is_none_or(|v| v.is_null() || v.as_str() == Some(""));
        if missing && let Some(v) = old_spec.get(field) {
            new_spec.insert(field.into(), v.clone());
        }
    }
}

/// The in-stream error of a watch from a compacted revision.
pub(crate) fn too_old(rv: u64, compacted: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({compacted})"))
}

/// The error for a read at a revision the server has not reached.
pub(crate) fn too_large(rv: u64, current: u64) -> ApiError {
    let mut err = ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {rv}, current: {current}"),
    );
    err.details = Some(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1
    }));
    err
}
