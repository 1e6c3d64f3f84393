//! `raftgate ctl` and `raftgate cert`: talk to a running node's admin API, and create cluster certificates.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a `ctl` or `cert` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("admin API at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer: {0}")]
    Answer(String),
    #[error("write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cert(#[from] raftgate_raft::Error),
}

/// One request to the admin API; a non-2xx answer becomes [`CtlError::Refused`] with its message.
pub async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CtlError> {
    let conn = |message: String| CtlError::Connect { addr, message };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| conn(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| conn(e.to_string()))?;
    tokio::spawn(connection);
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))
        .map_err(|e| conn(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| conn(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| conn(e.to_string()))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).trim().to_string()));
    if !status.is_success() {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        return Err(CtlError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    Ok(value)
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows as left-aligned columns two spaces apart, one line each.
pub(crate) fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// `ctl status` as a table: one row per member, and the leader.
pub fn status_table(cluster: &Value) -> Result<String, CtlError> {
    let members = cluster
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| CtlError::Answer("no members in the answer".into()))?;
    let mut rows = vec![["ID", "ADDRESS", "ROLE", "TERM", "APPLIED", "VERSION", "REACHABLE"].map(String::from)];
    let mut leaders = std::collections::BTreeSet::new();
    for m in members {
        let st = m.get("status").unwrap_or(&Value::Null);
        let reachable = if st.is_null() {
            format!("no ({})", m.get("error").map(opt).unwrap_or_default())
        } else {
            "yes".into()
        };
        let role = if st.is_null() {
            if m.get("voter").and_then(Value::as_bool) == Some(true) {
                "voter?"
            } else {
                "learner?"
            }
            .to_string()
        } else {
            opt(&st["role"])
        };
        if let Some(l) = st.get("leader").and_then(Value::as_u64) {
            leaders.insert(l);
        }
        rows.push([
            opt(&m["id"]),
            opt(&m["member"]["addr"]),
            role,
            opt(&st["term"]),
            opt(&st["last_applied_index"]),
            opt(&st["config_version"]),
            reachable,
        ]);
    }
    let mut out = columns(&rows);
    let leader = match leaders.len() {
        0 => "leader: none known".to_string(),
        1 => format!("leader: {}", leaders.iter().next().copied().unwrap_or_default()),
        _ => format!("leader: members disagree ({leaders:?})"),
    };
    let _ = writeln!(out, "{leader}");
    Ok(out)
}

/// `raftgate ctl vips`: one row per VIP (owner or handover, reason of the last move, how this
/// node holds it, since when it last announced it), then this node's lease.
pub fn vips_table(view: &Value) -> Result<String, CtlError> {
    let vips = view
        .get("vips")
        .and_then(Value::as_array)
        .ok_or_else(|| CtlError::Answer("no vips in the answer".into()))?;
    let ms = |v: &Value| {
        v.as_u64()
            .map_or_else(|| "-".to_string(), |n| format!("{:.1}s ago", n as f64 / 1000.0))
    };
    let mut rows = vec![["VIP", "OWNER", "REASON", "MOVED", "HELD HERE", "ANNOUNCED"].map(String::from)];
    for v in vips {
        let st = &v["state"];
        let owner = match st["state"].as_str() {
            Some("owned") => opt(&st["owner"]),
            Some("releasing") => format!("{} -> {}", opt(&st["from"]), opt(&st["to"])),
            Some(other) => other.to_string(),
            None => "?".into(),
        };
        rows.push([
            opt(&v["vip"]),
            owner,
            opt(&v["reason"]),
            ms(&v["moved_ms_ago"]),
            v["held"].as_str().unwrap_or("-").to_string(),
            ms(&v["announced_ms_ago"]),
        ]);
    }
    let mut out = columns(&rows);
    let node = opt(&view["node"]);
    let role = if view["leader"].as_bool() == Some(true) {
        " (leader: plans and grants)"
    } else {
        ""
    };
    let lease = view["lease_remaining_ms"]
        .as_u64()
        .map_or_else(|| "no usable lease".to_string(), |n| format!("lease {n} ms left"));
    let _ = writeln!(
        out,
        "node {node}{role}: {lease}, table revision {}",
        opt(&view["revision"])
    );
    if let Some(r) = view["refused"].as_str() {
        let _ = writeln!(out, "this node cannot own VIPs: {r}");
    }
    if let Some(r) = view["renewal_error"].as_str() {
        let _ = writeln!(out, "last renewal not granted: {r}");
    }
    if let Some(r) = view["last_error"].as_str() {
        let _ = writeln!(out, "last address or announcement error: {r}");
    }
    Ok(out)
}

/// `ctl routes`: one row per served route (HOST, PATH, MATCH, BACKEND, SOURCE), then the default backends.
pub fn routes_table(view: &Value) -> Result<String, CtlError> {
    let routes = view
        .get("routes")
        .and_then(Value::as_array)
        .ok_or_else(|| CtlError::Answer("no routes in the answer".into()))?;
    let mut rows = vec![["HOST", "PATH", "MATCH", "BACKEND", "SOURCE"].map(String::from)];
    for r in routes {
        let mut backend = opt(&r["backend"]);
        if let Some(c) = r.get("canary").filter(|c| !c.is_null()) {
            let _ = write!(backend, " (canary {} from {})", opt(&c["upstream"]), opt(&c["source"]));
        }
        rows.push([
            opt(&r["host"]),
            opt(&r["path"]),
            opt(&r["match"]),
            backend,
            opt(&r["source"]),
        ]);
    }
    let mut out = columns(&rows);
    for d in view["host_defaults"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "default backend of {}: {}", opt(&d["host"]), opt(&d["backend"]));
    }
    let default = match &view["default_backend"] {
        Value::Null => "none (unmatched requests get 404)".to_string(),
        v => opt(v),
    };
    let _ = writeln!(
        out,
        "default backend: {default}\n{} routes, table version {}",
        routes.len(),
        opt(&view["config_version"])
    );
    Ok(out)
}

/// Whether an explanation ends at a route (exit code 0) rather than a default backend or 404 (1).
pub fn explained_route(x: &Value) -> bool {
    x["outcome"]["kind"].as_str() == Some("route")
}

/// `ctl routes --host URL`: the virtual host and why, each path rule and why it won or lost,
/// and what the route's policy does with the request.
pub fn explain_text(x: &Value) -> Result<String, CtlError> {
    let outcome = x
        .get("outcome")
        .ok_or_else(|| CtlError::Answer("no outcome in the answer".into()))?;
    let mut out = String::new();
    let scheme = if x["https"].as_bool() == Some(true) {
        "https"
    } else {
        "http"
    };
    let _ = writeln!(
        out,
        "request: {scheme} host {} path {}",
        opt(&x["host"]),
        opt(&x["path"])
    );
    let how = match x["host_match"].as_str() {
        Some("exact") => "exact host",
        Some("wildcard") => "wildcard",
        Some("any_host") => "catch-all (rules without a host)",
        _ => "none",
    };
    let _ = writeln!(
        out,
        "virtual host: {} [{how}]: {}",
        opt(&x["vhost"]),
        opt(&x["host_reason"])
    );
    let candidates = x["candidates"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !candidates.is_empty() {
        let _ = writeln!(out, "path rules, in precedence order:");
        let mut rows = vec![["", "PATH", "MATCH", "BACKEND", "SOURCE", "WHY"].map(String::from)];
        for c in candidates {
            let mark = if c["won"].as_bool() == Some(true) {
                "=>"
            } else if c["matched"].as_bool() == Some(true) {
                "~"
            } else {
                "x"
            };
            rows.push([
                mark.to_string(),
                opt(&c["path"]["value"]),
                match c["path"]["type"].as_str() {
                    Some("exact") => "Exact".into(),
                    Some("prefix") => "Prefix".into(),
                    Some("regex") => "Regex".into(),
                    _ => opt(&c["path"]["type"]),
                },
                opt(&c["backend"]),
                opt(&c["source"]),
                opt(&c["reason"]),
            ]);
        }
        for line in columns(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "winner: {}", opt(&x["path_reason"]));
    match outcome["kind"].as_str() {
        Some("route") => {
            let _ = writeln!(
                out,
                "result: route {} {} -> {} (from {})",
                opt(&outcome["host"]),
                opt(&outcome["path"]["value"]),
                opt(&outcome["backend"]),
                opt(&outcome["source"])
            );
        }
        Some("default_backend") => {
            let _ = writeln!(
                out,
                "result: no route matched; the {} default backend {} answers",
                opt(&outcome["scope"]),
                opt(&outcome["backend"])
            );
        }
        _ => {
            let _ = writeln!(out, "result: no route matched and no default backend: 404");
        }
    }
    for e in x["effects"].as_array().into_iter().flatten() {
        let stop = if e["answers"].as_bool() == Some(true) {
            " (answers here)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {}: {}{stop}", opt(&e["what"]), opt(&e["detail"]));
    }
    Ok(out)
}

/// `ctl check`'s exit code: 0 clean, 1 something rejected (or unreadable), 3 warnings only.
pub fn check_exit_code(problems: &[Value], errors: &[String]) -> u8 {
    if !errors.is_empty() || problems.iter().any(|p| p["severity"].as_str() == Some("rejected")) {
        1
    } else if problems.is_empty() {
        0
    } else {
        3
    }
}

/// `ctl check`: one row per problem (SEVERITY, OBJECT, PROBLEM, FIX), the files or objects
/// that could not be read, and a count.
pub fn check_table(problems: &[Value], errors: &[String]) -> String {
    let mut out = String::new();
    if !problems.is_empty() {
        let mut rows = vec![["SEVERITY", "OBJECT", "PROBLEM", "FIX"].map(String::from)];
        for p in problems {
            rows.push([
                opt(&p["severity"]),
                format!("{} {}", opt(&p["kind"]), opt(&p["object"])),
                opt(&p["reason"]),
                opt(&p["fix"]),
            ]);
        }
        out = columns(&rows);
    }
    for e in errors {
        let _ = writeln!(out, "unreadable: {e}");
    }
    let count = |s: &str| problems.iter().filter(|p| p["severity"].as_str() == Some(s)).count();
    let _ = writeln!(
        out,
        "{} rejected, {} warnings, {} unreadable",
        count("rejected"),
        count("warning"),
        errors.len()
    );
    out
}

/// The node that `ctl check` (without `--manifests`) asks, and its `/api/v1/status`. Only a
/// Raft leader compiles, so a follower with no problems to show hands over to the leader's
/// admin address; the first return value says which member answered.
pub async fn live_problems(admin: SocketAddr) -> Result<(String, Value), CtlError> {
    let status = request(admin, http::Method::GET, "/api/v1/status", None).await?;
    let here = format!("node {} at {admin}", opt(&status["node_id"]));
    let member = &status["raft"]["member"];
    let role = member["role"].as_str().unwrap_or_default();
    let quiet = status["problems"].as_array().is_none_or(Vec::is_empty)
        && status["source_errors"].as_array().is_none_or(Vec::is_empty);
    if member.is_null() || role == "leader" || !quiet {
        return Ok((here, status));
    }
    let Some(leader) = member["leader"].as_u64() else {
        return Ok((
            format!("{here}, a {role} that knows no leader (only the leader compiles; this may miss problems)"),
            status,
        ));
    };
    let leader_admin = member["members"][leader.to_string()]["admin"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let Some(addr) = leader_admin else {
        return Ok((
            format!(
                "{here}, a {role}; the leader (member {leader}) has no usable admin address, so this may miss problems"
            ),
            status,
        ));
    };
    let status = request(addr, http::Method::GET, "/api/v1/status", None).await?;
    Ok((
        format!("the leader, member {leader} at {addr} ({here} is a {role}; only the leader compiles)"),
        status,
    ))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `raftgate cert`: a cluster CA (unless `ca.key` exists in `out`) and one certificate per node.
/// `nodes` are `name[=host,host…]`. Returns the files written.
pub fn make_certs(out: &Path, cluster: &str, nodes: &[String]) -> Result<Vec<std::path::PathBuf>, CtlError> {
    std::fs::create_dir_all(out).map_err(|source| CtlError::Write {
        path: out.into(),
        source,
    })?;
    let mut written = Vec::new();
    let write = |name: &str, text: &str, private: bool, written: &mut Vec<std::path::PathBuf>| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| CtlError::Write {
            path: path.clone(),
            source,
        })?;
        if private {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        written.push(path);
        Ok::<_, CtlError>(())
    };
    let ca_key_path = out.join("ca.key");
    // Node certificates name their issuer after the cluster, so a reused CA keeps its name.
    let name_path = out.join("cluster-name");
    let cluster = match std::fs::read_to_string(&name_path) {
        Ok(n) if ca_key_path.exists() && !n.trim().is_empty() => n.trim().to_string(),
        _ => cluster.to_string(),
    };
    let cluster = cluster.as_str();
    let ca_key = if ca_key_path.exists() {
        std::fs::read_to_string(&ca_key_path).map_err(|source| CtlError::Read {
            path: ca_key_path.clone(),
            source,
        })?
    } else {
        let ca = raftgate_raft::tls::generate_ca(cluster)?;
        write("ca.crt", &ca.cert_pem, false, &mut written)?;
        write("ca.key", &ca.key_pem, true, &mut written)?;
        write("cluster-name", &format!("{cluster}\n"), false, &mut written)?;
        ca.key_pem
    };
    for spec in nodes {
        let (name, hosts) = match spec.split_once('=') {
            Some((n, h)) => (n, h.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect()),
            None => (spec.as_str(), Vec::new()),
        };
        let cert = raftgate_raft::tls::generate_node(cluster, &ca_key, name, &hosts)?;
        write(&format!("{name}.crt"), &cert.cert_pem, false, &mut written)?;
        write(&format!("{name}.key"), &cert.key_pem, true, &mut written)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_lists_every_member_and_the_leader() {
        let v = serde_json::json!({
            "members": [
                {"id": 1, "member": {"addr": "10.0.0.1:7946"}, "voter": true,
                 "status": {"role": "leader", "term": 3, "last_applied_index": 40, "config_version": 12, "leader": 1}},
                {"id": 2, "member": {"addr": "10.0.0.2:7946"}, "voter": true, "status": null, "error": "timed out"},
            ]
        });
        let t = status_table(&v).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        assert!(
            lines[1].contains("10.0.0.1:7946") && lines[1].contains("leader") && lines[1].contains("12"),
            "{t}"
        );
        assert!(
            lines[2].contains("voter?") && lines[2].contains("no (timed out)"),
            "{t}"
        );
        assert_eq!(lines[3], "leader: 1");
    }

    #[test]
    fn vips_table_shows_owners_handovers_and_why_this_node_is_not_granted() {
        let view = serde_json::json!({
            "node": 2, "leader": false, "lease_remaining_ms": null, "revision": 7,
            "refused": null, "renewal_error": "timing differs from the leader's", "last_error": null,
            "vips": [
                {"vip": "10.0.0.10", "state": {"state": "owned", "owner": 1}, "reason": "initial",
                 "moved_ms_ago": 1500, "held": null, "announced_ms_ago": null},
                {"vip": "10.0.0.11", "state": {"state": "releasing", "from": 2, "to": 3}, "reason": "drain",
                 "moved_ms_ago": null, "held": "quiet", "announced_ms_ago": 200},
            ],
        });
        let t = vips_table(&view).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("10.0.0.10  1 "), "{t}");
        assert!(lines[1].contains("1.5s ago"), "{t}");
        assert!(lines[2].contains("2 -> 3") && lines[2].contains("quiet"), "{t}");
        assert!(t.contains("node 2: no usable lease, table revision 7"), "{t}");
        assert!(t.contains("last renewal not granted: timing differs"), "{t}");
        assert!(!t.contains("cannot own"), "{t}");
    }

    #[test]
    fn routes_table_has_a_row_per_route_and_the_defaults() {
        let v = serde_json::json!({
            "config_version": 7,
            "routes": [
                {"host": "*", "path": "/", "match": "Prefix", "backend": "a/b:80", "source": "a/any", "canary": null},
                {"host": "shop.example.com", "path": "/api", "match": "Exact", "backend": "redirect 308 https://x/",
                 "source": "shop/main", "canary": {"upstream": "shop/new:80", "source": "shop/canary"}},
            ],
            "host_defaults": [{"host": "shop.example.com", "backend": "shop/def:80"}],
            "default_backend": "sys/default:80",
        });
        let t = routes_table(&v).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["HOST", "PATH", "MATCH", "BACKEND", "SOURCE"]
        );
        // Columns line up: the source of the widest backend starts under SOURCE.
        assert_eq!(lines[0].find("SOURCE"), lines[2].find("shop/main"), "{t}");
        assert!(lines[1].starts_with("*                 /     Prefix  a/b:80"), "{t}");
        assert!(
            lines[2].contains("redirect 308 https://x/ (canary shop/new:80 from shop/canary)")
                && lines[2].ends_with("shop/main"),
            "{t}"
        );
        assert_eq!(lines[3], "default backend of shop.example.com: shop/def:80");
        assert_eq!(lines[4], "default backend: sys/default:80");
        assert_eq!(lines[5], "2 routes, table version 7");
        assert!(routes_table(&serde_json::json!({})).is_err());
    }

    #[test]
    fn explain_text_marks_the_winner_and_the_outcome() {
        let x = serde_json::json!({
            "host": "a.com", "path": "/x", "https": false, "host_match": "wildcard", "vhost": "*.com",
            "host_reason": "why host",
            "candidates": [
                {"path": {"type": "prefix", "value": "/"}, "backend": "u1", "source": "s/1", "matched": true, "won": false, "reason": "lost"},
                {"path": {"type": "exact", "value": "/x"}, "backend": "u2", "source": "s/2", "matched": true, "won": true, "reason": "eq"},
                {"path": {"type": "regex", "value": "/y"}, "backend": "u3", "source": "s/3", "matched": false, "won": false, "reason": "no"},
            ],
            "path_reason": "why path",
            "outcome": {"kind": "route", "host": "*.com", "path": {"type": "exact", "value": "/x"}, "backend": "u2", "source": "s/2"},
            "effects": [{"what": "ssl-redirect", "detail": "308", "answers": true}],
        });
        let t = explain_text(&x).unwrap();
        assert!(t.contains("virtual host: *.com [wildcard]: why host"), "{t}");
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("  ")).collect();
        assert!(
            rows[1].trim_start().starts_with("~") && rows[1].contains("Prefix"),
            "{t}"
        );
        assert!(
            rows[2].trim_start().starts_with("=>") && rows[2].contains("Exact"),
            "{t}"
        );
        assert!(
            rows[3].trim_start().starts_with("x ") && rows[3].contains("Regex"),
            "{t}"
        );
        assert!(t.contains("result: route *.com /x -> u2 (from s/2)"), "{t}");
        assert!(t.ends_with("  ssl-redirect: 308 (answers here)\n"), "{t}");
        assert!(explained_route(&x));
        let miss = serde_json::json!({"outcome": {"kind": "default_backend", "scope": "global", "backend": "d"}});
        assert!(
            explain_text(&miss)
                .unwrap()
                .contains("the global default backend d answers")
        );
        assert!(!explained_route(&miss));
        assert!(!explained_route(&serde_json::json!({"outcome": {"kind": "not_found"}})));
    }

    #[test]
    fn check_table_and_exit_codes() {
        let warn = serde_json::json!({"severity": "warning", "kind": "Service", "object": "a/b", "reason": "gone", "fix": "create it"});
        let rej = serde_json::json!({"severity": "rejected", "kind": "Ingress", "object": "a/i", "reason": "bad path", "fix": "start with /"});
        assert_eq!(check_exit_code(&[], &[]), 0);
        assert_eq!(check_exit_code(std::slice::from_ref(&warn), &[]), 3);
        assert_eq!(check_exit_code(&[warn.clone(), rej.clone()], &[]), 1);
        assert_eq!(check_exit_code(&[], &["x.yaml: bad".into()]), 1);
        let t = check_table(&[rej, warn], &["x.yaml: bad".into()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "SEVERITY  OBJECT       PROBLEM   FIX");
        assert_eq!(lines[1], "rejected  Ingress a/i  bad path  start with /");
        assert_eq!(lines[2], "warning   Service a/b  gone      create it");
        assert_eq!(lines[3], "unreadable: x.yaml: bad");
        assert_eq!(lines[4], "1 rejected, 1 warnings, 1 unreadable");
        assert_eq!(check_table(&[], &[]), "0 rejected, 0 warnings, 0 unreadable\n");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query_value("https://a.com/x?q=1 2"),
            "https%3A%2F%2Fa.com%2Fx%3Fq%3D1%202"
        );
    }

    #[test]
    fn certs_are_made_once_per_ca_and_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = make_certs(dir.path(), "c", &["n1=10.0.0.1,n1.example".into()]).unwrap();
        assert_eq!(first.len(), 5);
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let second = make_certs(dir.path(), "other-name-is-ignored", &["n2".into()]).unwrap();
        assert_eq!(second.len(), 2, "an existing CA is reused, not replaced");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        raftgate_raft::PeerTls::load(
            &dir.path().join("ca.crt"),
            &dir.path().join("n2.crt"),
            &dir.path().join("n2.key"),
        )
        .unwrap();
    }
}
