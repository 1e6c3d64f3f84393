//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), for status page tests.
//!
//! Chromium reads commands on its fd 3 and writes answers and events on its fd 4, each a JSON
//! message ended by a NUL byte. A shell wrapper maps those to the child's stdin and stdout, so
//! no WebSocket client and no unsafe fd juggling are needed. The browser can run inside a
//! network namespace (`ip netns exec`), to look at a node's admin port there.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdin;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;
use serde_json::json;

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why driving the browser failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("start chromium: {0}")]
    Start(#[source] std::io::Error),
    #[error("talk to chromium: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("chromium did not answer {method} within {CALL_TIMEOUT:?}")]
    Timeout { method: String },
    #[error("{method}: {error}")]
    Protocol { method: String, error: String },
    #[error("{method}: unexpected answer {answer}")]
    Answer { method: String, answer: String },
    #[error("timed out waiting for {what}; the page reads:\n{text}")]
    Wait { what: String, text: String },
}

/// Where Debian's chromium package puts the browser, or `$CHROMIUM`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// One headless browser with one page; killed on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    input: ChildStdin,
    answers: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium with an empty profile and a `width`×`height` page, inside network
    /// namespace `netns` if one is given.
    pub fn start(chromium: &Path, netns: Option<&str>, width: u32, height: u32) -> Result<Browser, BrowserError> {
        let profile = tempfile::tempdir().map_err(BrowserError::Start)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sh"]);
                c
            }
            None => Command::new("sh"),
        };
        let mut child = cmd
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 1>/dev/null 2>/dev/null"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BrowserError::Start)?;
        let pipes = child.stdin.take().zip(child.stdout.take());
        let Some((input, output)) = pipes else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BrowserError::Start(std::io::Error::other("no pipes to chromium")));
        };
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(output);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                // Events (no id) are not needed: the tests poll the page's state.
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && v.get("id").is_some()
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let mut b = Browser {
            child,
            input,
            answers,
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}), false)?;
        let target_id = b.string(&target, "targetId", "Target.createTarget")?;
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
            false,
        )?;
        b.session = b.string(&attached, "sessionId", "Target.attachToTarget")?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            true,
        )?;
        Ok(b)
    }

    fn string(&self, v: &Value, field: &str, method: &str) -> Result<String, BrowserError> {
        v[field]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BrowserError::Answer {
                method: method.into(),
                answer: v.to_string(),
            })
    }

    /// Sends one command (to the page's session when `in_page`) and waits for its answer.
    pub fn call(&mut self, method: &str, params: Value, in_page: bool) -> Result<Value, BrowserError> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if in_page {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.input.write_all(&bytes).map_err(BrowserError::Pipe)?;
        self.input.flush().map_err(BrowserError::Pipe)?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .answers
                .recv_timeout(left)
                .map_err(|_| BrowserError::Timeout { method: method.into() })?;
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(BrowserError::Protocol {
                    method: method.into(),
                    error: err.to_string(),
                });
            }
            return Ok(v["result"].clone());
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) -> Result<(), BrowserError> {
        self.call("Page.navigate", json!({"url": url}), true).map(drop)
    }

    /// Evaluates `expression` in the page and returns its value (JSON-serialisable results only).
    pub fn eval(&mut self, expression: &str) -> Result<Value, BrowserError> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
            true,
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(BrowserError::Protocol {
                method: format!("Runtime.evaluate({expression})"),
                error: e.to_string(),
            });
        }
        Ok(r["result"]["value"].clone())
    }

    /// The page's visible text.
    pub fn text(&mut self) -> Result<String, BrowserError> {
        let v = self.eval("document.body ? document.body.innerText : ''")?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Polls until `expression` evaluates to `true` (every 50 ms), or fails with `what` and the
    /// page's text.
    pub async fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<(), BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression)? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Wait {
                    what: what.into(),
                    text: self.text()?,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page as it is.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, BrowserError> {
        let method = "Page.captureScreenshot";
        let r = self.call(method, json!({"format": "png"}), true)?;
        let data = self.string(&r, "data", method)?;
        base64(&data).ok_or_else(|| BrowserError::Answer {
            method: method.into(),
            answer: "data is not base64".into(),
        })
    }
}

/// Standard base64 (with or without padding); None on any other byte.
fn base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let full = n.to_be_bytes();
        out.extend_from_slice(&full[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded_and_refuses_junk() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGk").unwrap(), b"hi");
        assert_eq!(base64("YWJj").unwrap(), b"abc");
        assert_eq!(base64("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(base64("a"), None);
        assert_eq!(base64("a$bc"), None);
    }
}
