//! The guard: a separate process that removes every pool address the moment the node process dies or stops renewing.
//!
//! The node tells its guard, through a pipe, until when (CLOCK_MONOTONIC) its holds may last
//! without a renewal (`hold-until <ns>`) each time it puts a decision into effect, or `none` when it holds nothing. The
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

use crate::config::Pool;
use crate::shell::ShellError;
use crate::shell::remove_all;

/// The monotonic clock (CLOCK_MONOTONIC), which the node and its guard share, in nanoseconds.
pub fn monotonic_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(t.tv_nsec).unwrap_or(0)
}

/// One message from the node to its guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMessage {
    /// The node's holds end at this CLOCK_MONOTONIC instant (nanoseconds) without a renewal.
    /// Absolute, so neither the pipe nor the guard's scheduling delays it.
    HoldUntil(u128),
    /// The node holds nothing.
    Nothing,
}

impl GuardMessage {
    /// The line written to the guard's stdin.
    pub fn line(&self) -> String {
        match self {
            GuardMessage::HoldUntil(ns) => format!("hold-until {ns}\n"),
            GuardMessage::Nothing => "none\n".to_string(),
        }
    }

    /// Reads one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if line == "none" {
            return Some(GuardMessage::Nothing);
        }
        let ns: u128 = line.strip_prefix("hold-until ")?.trim().parse().ok()?;
        Some(GuardMessage::HoldUntil(ns))
    }
}

/// What the guard does after a message, a timeout or the end of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait for the next message until this CLOCK_MONOTONIC instant (`None`: no deadline).
    Wait(Option<u128>),
    /// Remove every pool address, then wait without a deadline.
    Remove,
    /// Remove every pool address and exit.
    RemoveAndExit,
}

/// The guard's decision; pure. A deadline already past removes at once.
pub fn step(event: Result<GuardMessage, RecvTimeoutError>, now_ns: u128) -> Step {
    match event {
        Ok(GuardMessage::HoldUntil(ns)) if ns <= now_ns => Step::Remove,
        Ok(GuardMessage::HoldUntil(ns)) => Step::Wait(Some(ns)),
        Ok(GuardMessage::Nothing) => Step::Wait(None),
        Err(RecvTimeoutError::Timeout) => Step::Remove,
        Err(RecvTimeoutError::Disconnected) => Step::RemoveAndExit,
    }
}

/// Removes every pool address, retrying until it succeeds (`attempts` times at most, when given).
fn remove_retrying(pool: &Pool, attempts: Option<u32>) -> Result<usize, ShellError> {
    let mut tried = 0u32;
    loop {
        match remove_all(pool) {
            Ok(n) => return Ok(n),
            Err(e) => {
                tried += 1;
                if attempts.is_some_and(|a| tried >= a) {
                    return Err(e);
                }
                tracing::error!(error = %e, "VIP guard: removing the VIP addresses failed; retrying");
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
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
    let mut deadline: Option<u128> = None;
    loop {
        let event = match deadline {
            Some(d) => {
                let left = d.saturating_sub(monotonic_ns());
                rx.recv_timeout(Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX)))
            }
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match step(event, monotonic_ns()) {
            Step::Wait(d) => deadline = d,
            Step::Remove => {
                let n = remove_retrying(pool, None)?;
                tracing::warn!(
                    removed = n,
                    "VIP guard: the node stopped renewing; its VIP addresses are removed"
                );
                deadline = None;
            }
            Step::RemoveAndExit => {
                let n = remove_retrying(pool, Some(100))?;
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
        for m in [GuardMessage::HoldUntil(123_456_789_012), GuardMessage::Nothing] {
            assert_eq!(GuardMessage::parse(&m.line()), Some(m));
        }
        assert_eq!(GuardMessage::parse("hold-until x"), None);
        assert_eq!(GuardMessage::parse("drop"), None);
        let now = monotonic_ns();
        assert_eq!(
            step(Ok(GuardMessage::HoldUntil(now + 5)), now),
            Step::Wait(Some(now + 5))
        );
        assert_eq!(
            step(Ok(GuardMessage::HoldUntil(now)), now),
            Step::Remove,
            "already past"
        );
        assert_eq!(step(Ok(GuardMessage::Nothing), now), Step::Wait(None));
        assert_eq!(step(Err(RecvTimeoutError::Timeout), now), Step::Remove);
        assert_eq!(step(Err(RecvTimeoutError::Disconnected), now), Step::RemoveAndExit);
        assert!(monotonic_ns() >= now);
    }
}
