//! The guard: a separate process that removes every pool address the moment the node process dies or stops renewing.
//!
//! The node tells its guard, through a pipe, how long its holds may last without a renewal
//! (`hold <ms>`) each time it puts a decision into effect, or `none` when it holds nothing. The
//! guard removes every pool address (interfaces and `lo`) when that time passes without a newer
//! message, or at once when the pipe closes. So a node process killed with SIGKILL, stopped with
//! SIGSTOP or stalled stops answering for its VIPs within its own lease, before any other member
//! can take them, without its own help. The kernel lifetime on each address (whole seconds) stays
//! as the last backstop, for the guard and the node frozen together (a VM pause).

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::sync::mpsc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;
use std::time::Instant;

use crate::config::Pool;
use crate::shell::ShellError;
use crate::shell::remove_all;

/// One message from the node to its guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMessage {
    /// The node's holds may last this long from now without a renewal.
    Hold(Duration),
    /// The node holds nothing.
    Nothing,
}

impl GuardMessage {
    /// The line written to the guard's stdin.
    pub fn line(&self) -> String {
        match self {
            GuardMessage::Hold(d) => format!("hold {}\n", d.as_millis()),
            GuardMessage::Nothing => "none\n".to_string(),
        }
    }

    /// Reads one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line == "none" {
            return Some(GuardMessage::Nothing);
        }
        let ms: u64 = line.strip_prefix("hold ")?.trim().parse().ok()?;
        Some(GuardMessage::Hold(Duration::from_millis(ms)))
    }
}

/// What the guard does after a message, a timeout or the end of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait for the next message until this deadline (`None`: no deadline).
    Wait(Option<Instant>),
    /// Remove every pool address, then wait without a deadline.
    Remove,
    /// Remove every pool address and exit.
    RemoveAndExit,
}

/// The guard's decision; pure, with `now` passed in.
pub fn step(event: Result<GuardMessage, RecvTimeoutError>, now: Instant) -> Step {
    match event {
        Ok(GuardMessage::Hold(d)) => Step::Wait(Some(now + d)),
        Ok(GuardMessage::Nothing) => Step::Wait(None),
        Err(RecvTimeoutError::Timeout) => Step::Remove,
        Err(RecvTimeoutError::Disconnected) => Step::RemoveAndExit,
    }
}

/// Runs the guard on `input` (the node's pipe) until it closes.
pub fn run(pool: &Pool, input: impl Read + Send + 'static) -> Result<(), ShellError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            let Ok(line) = line else { break };
            match GuardMessage::parse(&line) {
                Some(m) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                None => tracing::warn!(line, "VIP guard: unreadable message ignored"),
            }
        }
    });
    let mut deadline: Option<Instant> = None;
    loop {
        let event = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match step(event, Instant::now()) {
            Step::Wait(d) => deadline = d,
            Step::Remove => {
                let n = remove_all(pool)?;
                tracing::warn!(
                    removed = n,
                    "VIP guard: the node stopped renewing; its VIP addresses are removed"
                );
                deadline = None;
            }
            Step::RemoveAndExit => {
                let n = remove_all(pool)?;
                if n > 0 {
                    tracing::warn!(
                        removed = n,
                        "VIP guard: the node process is gone; its VIP addresses are removed"
                    );
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_steps() {
        for m in [GuardMessage::Hold(Duration::from_millis(237)), GuardMessage::Nothing] {
            assert_eq!(GuardMessage::parse(&m.line()), Some(m));
        }
        assert_eq!(GuardMessage::parse("hold x"), None);
        assert_eq!(GuardMessage::parse("drop"), None);
        let now = Instant::now();
        assert_eq!(
            step(Ok(GuardMessage::Hold(Duration::from_millis(5))), now),
            Step::Wait(Some(now + Duration::from_millis(5)))
        );
        assert_eq!(step(Ok(GuardMessage::Nothing), now), Step::Wait(None));
        assert_eq!(step(Err(RecvTimeoutError::Timeout), now), Step::Remove);
        assert_eq!(step(Err(RecvTimeoutError::Disconnected), now), Step::RemoveAndExit);
    }
}
