//! Label and field selectors as the Kubernetes list and watch calls parse and apply them.

use serde_json::Value;

use super::resources::ResourceType;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

/// A parsed `labelSelector`: every requirement must hold (comma means AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelRequirement>,
}

/// Splits on commas that are not inside parentheses (`a in (x,y),b` has two terms).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Finds ` in ` / ` notin ` (the operator needs whitespace before it and a parenthesised list after).
fn split_set_op(term: &str) -> Option<(&str, bool, &str)> {
    for (word, negated) in [(" notin", true), (" in", false)] {
        if let Some(pos) = term.find(word) {
            let rest = term[pos + word.len()..].trim_start();
            if rest.starts_with('(') {
                return Some((&term[..pos], negated, rest));
            }
        }
    }
    None
}

impl LabelSelector {
    /// Parses the selector syntax of `labels.Parse`; an empty string selects everything.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                return Err(format!("unable to parse requirement: empty term in {s:?}"));
            }
            reqs.push(Self::parse_term(term)?);
        }
        Ok(Self { reqs })
    }

    fn parse_term(term: &str) -> Result<LabelRequirement, String> {
        let bad_key = |k: &str| format!("unable to parse requirement: invalid label key {k:?}");
        let bad_value = |v: &str| format!("unable to parse requirement: invalid label value {v:?}");
        if let Some(key) = term.strip_prefix('!') {
            let key = key.trim();
            if !valid_key(key) {
                return Err(bad_key(key));
            }
            return Ok(LabelRequirement {
                key: key.to_string(),
                op: LabelOp::NotExists,
            });
        }
        if let Some((key, negated, rest)) = split_set_op(term) {
            let key = key.trim();
            if !valid_key(key) {
                return Err(bad_key(key));
            }
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("unable to parse requirement: expected a parenthesised set in {term:?}"))?;
            let mut values = Vec::new();
            for v in inner.split(',') {
                let v = v.trim();
                if !valid_value(v) {
                    return Err(bad_value(v));
                }
                values.push(v.to_string());
            }
            let op = if negated {
                LabelOp::NotIn(values)
            } else {
                LabelOp::In(values)
            };
            return Ok(LabelRequirement {
                key: key.to_string(),
                op,
            });
        }
        let (key, op) = if let Some((k, v)) = term.split_once("!=") {
            (k, Some(("!=", v)))
        } else if let Some((k, v)) = term.split_once("==") {
            (k, Some(("=", v)))
        } else if let Some((k, v)) = term.split_once('=') {
            (k, Some(("=", v)))
        } else if let Some((k, v)) = term.split_once('>') {
            (k, Some((">", v)))
        } else if let Some((k, v)) = term.split_once('<') {
            (k, Some(("<", v)))
        } else {
            (term, None)
        };
        let key = key.trim();
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        let op = match op {
            None => LabelOp::Exists,
            Some((sym, v)) => {
                let v = v.trim();
                match sym {
                    ">" | "<" => {
                        let n: i64 = v
                            .parse()
                            .map_err(|_| format!("unable to parse requirement: {v:?} is not an integer"))?;
                        if sym == ">" { LabelOp::Gt(n) } else { LabelOp::Lt(n) }
                    }
                    _ => {
                        if !valid_value(v) {
                            return Err(bad_value(v));
                        }
                        if sym == "!=" {
                            LabelOp::NotEq(v.to_string())
                        } else {
                            LabelOp::Eq(v.to_string())
                        }
                    }
                }
            }
        };
        Ok(LabelRequirement {
            key: key.to_string(),
            op,
        })
    }

    /// Whether the selector selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Applies the selector to an object's `metadata.labels`.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| {
            let v = get(&r.key);
            match &r.op {
                LabelOp::Eq(want) => v == Some(want.as_str()),
                LabelOp::NotEq(want) => v != Some(want.as_str()),
                LabelOp::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                LabelOp::Exists => v.is_some(),
                LabelOp::NotExists => v.is_none(),
                LabelOp::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
                LabelOp::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    negated: bool,
}

/// A parsed `fieldSelector` (`field=value`, `field==value`, `field!=value`, comma means AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    reqs: Vec<FieldRequirement>,
}

/// Splits on the first unescaped occurrence of `sep`.
fn split_unescaped<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(sep) {
            return Some((&s[..i], &s[i + sep.len()..]));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parses a field selector and checks its fields are supported by the resource type, like the real server
    /// (which answers 400 "field label not supported" otherwise).
    pub(crate) fn parse(s: &str, rt: &ResourceType) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        let mut terms = Vec::new();
        let mut rest = s;
        while let Some((term, tail)) = split_unescaped(rest, ",") {
            terms.push(term);
            rest = tail;
        }
        terms.push(rest);
        for term in terms {
            let (field, value, negated) = if let Some((f, v)) = split_unescaped(term, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_unescaped(term, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_unescaped(term, "=") {
                (f, v, false)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            let field = field.trim();
            let supported =
                field == "metadata.name" || field == "metadata.namespace" || rt.extra_fields.contains(&field);
            if !supported {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push(FieldRequirement {
                field: field.to_string(),
                value: unescape(value.trim()),
                negated,
            });
        }
        Ok(Self { reqs })
    }

    /// Whether the selector selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether the object passes every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) != r.negated
        })
    }
}

/// The string value a field selector compares against; missing fields read as "".
fn field_value(obj: &Value, field: &str) -> String {
    // Core events expose `source` for `source.component`.
    let path = if field == "source" { "source.component" } else { field };
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Both selectors of a list or watch call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selectors {
    /// Whether the object passes both selectors.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// Whether neither selector filters anything.
    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::RESOURCES;
    use crate::apiserver::resources::by_plural;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "namespace": "ns1", "labels": labels}, "type": "kubernetes.io/tls"})
    }

    #[test]
    fn equality_and_inequality() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("app==web").unwrap().matches(&o));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("app=web,tier=front").unwrap().matches(&o));
        assert!(!LabelSelector::parse("app=web,tier=back").unwrap().matches(&o));
        // `!=` also selects objects that lack the label entirely.
        assert!(LabelSelector::parse("missing!=x").unwrap().matches(&o));
    }

    #[test]
    fn sets_and_existence() {
        let o = obj(json!({"env": "prod"}));
        assert!(LabelSelector::parse("env in (prod, staging)").unwrap().matches(&o));
        assert!(!LabelSelector::parse("env notin (prod,staging)").unwrap().matches(&o));
        assert!(LabelSelector::parse("other notin (prod)").unwrap().matches(&o));
        assert!(!LabelSelector::parse("other in (prod)").unwrap().matches(&o));
        assert!(LabelSelector::parse("env").unwrap().matches(&o));
        assert!(!LabelSelector::parse("!env").unwrap().matches(&o));
        assert!(LabelSelector::parse("!other,env in (prod),env").unwrap().matches(&o));
        assert!(LabelSelector::parse("").unwrap().matches(&o));
    }

    #[test]
    fn rejects_garbage() {
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("a in (x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let secrets = &RESOURCES[by_plural("", "v1", "secrets").unwrap()];
        let cms = &RESOURCES[by_plural("", "v1", "configmaps").unwrap()];
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=n1", secrets).unwrap().matches(&o));
        assert!(!FieldSelector::parse("metadata.name!=n1", secrets).unwrap().matches(&o));
        assert!(
            FieldSelector::parse("metadata.namespace==ns1,type=kubernetes.io/tls", secrets)
                .unwrap()
                .matches(&o)
        );
        assert!(!FieldSelector::parse("type=Opaque", secrets).unwrap().matches(&o));
        assert!(FieldSelector::parse("type=Opaque", cms).is_err());
        assert!(FieldSelector::parse("metadata.name", cms).is_err());
    }
}
