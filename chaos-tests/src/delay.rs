//! A delay line for frames: each leaves `delay` plus a seeded random jitter after it came in, so frames reorder when the jitter exceeds their spacing (netem's delay and reordering, which the test kernel lacks). Pure: time is passed in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::schedule::SplitMix64;

/// Microseconds on the caller's monotonic clock.
pub type Micros = u64;

/// Frames waiting to leave, in the order they are due.
#[derive(Debug)]
pub struct DelayLine {
    delay_us: u64,
    jitter_us: u64,
    capacity: usize,
    rng: SplitMix64,
    /// `(due, arrival number, frame)`: the arrival number keeps frames due at the same instant in order.
    queue: BinaryHeap<Reverse<(Micros, u64, Vec<u8>)>>,
    arrived: u64,
    dropped: u64,
}

impl DelayLine {
    /// Frames leave `delay_us` to `delay_us + jitter_us` after they arrive; at most `capacity`
    /// wait at once (more are dropped, as a full queue does).
    pub fn new(delay_us: u64, jitter_us: u64, capacity: usize, seed: u64) -> DelayLine {
        DelayLine {
            delay_us,
            jitter_us,
            capacity,
            rng: SplitMix64::new(seed),
            queue: BinaryHeap::new(),
            arrived: 0,
            dropped: 0,
        }
    }

    /// A frame came in at `now`; false if the line was full and dropped it.
    pub fn push(&mut self, frame: Vec<u8>, now: Micros) -> bool {
        if self.queue.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        let due = now
            .saturating_add(self.delay_us)
            .saturating_add(self.rng.range(0, self.jitter_us));
        self.queue.push(Reverse((due, self.arrived, frame)));
        self.arrived += 1;
        true
    }

    /// When the next frame is due, if one waits.
    pub fn next_due(&self) -> Option<Micros> {
        self.queue.peek().map(|Reverse((due, _, _))| *due)
    }

    /// The next frame due at or before `now`.
    pub fn pop_due(&mut self, now: Micros) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse((_, _, frame))| frame)
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Frames taken in, and frames dropped because the line was full.
    pub fn counts(&self) -> (u64, u64) {
        (self.arrived, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn number(f: &[u8]) -> u32 {
        u32::from_be_bytes([f[0], f[1], f[2], f[3]])
    }

    /// Pushes `count` frames `gap_us` apart and drains the line every 100 µs: (number, arrival, departure).
    fn run(line: &mut DelayLine, count: u32, gap_us: u64) -> Vec<(u32, Micros, Micros)> {
        let mut out = Vec::new();
        let mut now = 0;
        let mut next = 0;
        let end = u64::from(count) * gap_us + 1_000_000;
        while now <= end {
            while next < count && u64::from(next) * gap_us <= now {
                assert!(line.push(frame(next), u64::from(next) * gap_us));
                next += 1;
            }
            while let Some(f) = line.pop_due(now) {
                let n = number(&f);
                out.push((n, u64::from(n) * gap_us, now));
            }
            now += 100;
        }
        out
    }

    #[test]
    fn every_frame_leaves_within_its_delay_and_jitter() {
        let mut line = DelayLine::new(50_000, 30_000, 10_000, 7);
        let out = run(&mut line, 500, 1_000);
        assert_eq!(out.len(), 500, "no frame lost");
        assert!(line.is_empty());
        for (n, arrived, left) in &out {
            let waited = left - arrived;
            // Drained every 100 µs: up to that much late.
            assert!((50_000..=80_100).contains(&waited), "frame {n} waited {waited} µs");
        }
        // Frames 1 ms apart with up to 30 ms of jitter: many leave before one that came earlier.
        let reordered = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
        assert!(reordered > 50, "{reordered} reorderings");
        // And the spread is used: some wait near the minimum, some near the maximum.
        assert!(out.iter().any(|(_, a, l)| l - a < 55_000));
        assert!(out.iter().any(|(_, a, l)| l - a > 75_000));
    }

    #[test]
    fn without_jitter_the_order_is_kept() {
        let mut line = DelayLine::new(20_000, 0, 10_000, 7);
        let out = run(&mut line, 200, 500);
        let order: Vec<u32> = out.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        assert!(out.iter().all(|(_, a, l)| (20_000..=20_100).contains(&(l - a))));
    }

    #[test]
    fn a_full_line_drops_and_counts() {
        let mut line = DelayLine::new(1_000, 0, 3, 1);
        assert!((0..3).all(|n| line.push(frame(n), 0)));
        assert!(!line.push(frame(3), 0));
        assert_eq!(line.counts(), (3, 1));
        assert_eq!(line.pop_due(999), None);
        assert_eq!(line.next_due(), Some(1_000));
        assert_eq!(line.pop_due(1_000).map(|f| number(&f)), Some(0));
        assert_eq!(line.len(), 2);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let mut a = DelayLine::new(10_000, 5_000, 100, 42);
        let mut b = DelayLine::new(10_000, 5_000, 100, 42);
        assert_eq!(run(&mut a, 50, 300), run(&mut b, 50, 300));
    }
}
