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
    Ok(out)
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
