//! BPF timestamps are CLOCK_MONOTONIC; spans need Unix epoch time. The offset between the two
//! moves when the wall clock is stepped or slewed, so it is measured again every few seconds.

use std::time::{Duration, Instant};

const REFRESH_EVERY: Duration = Duration::from_secs(5);

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into the timespec we pass, which lives for the call.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Converts CLOCK_MONOTONIC nanoseconds to Unix epoch nanoseconds.
#[derive(Debug)]
pub struct MonotonicClock {
    realtime_minus_monotonic: i128,
    measured_at: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock { realtime_minus_monotonic: measure_offset(), measured_at: Instant::now() }
    }

    pub fn refresh_if_stale(&mut self) {
        if self.measured_at.elapsed() >= REFRESH_EVERY {
            *self = Self::new();
        }
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        let t = i128::from(monotonic_ns) + self.realtime_minus_monotonic;
        u64::try_from(t).unwrap_or(0)
    }
}

/// Reads REALTIME between two MONOTONIC reads and keeps the tightest of a few tries, so the
/// offset is good to well under a microsecond even if the thread is preempted once.
fn measure_offset() -> i128 {
    let mut best: Option<(i128, i128)> = None; // (gap, offset)
    for _ in 0..5 {
        let before = now_ns(libc::CLOCK_MONOTONIC);
        let real = now_ns(libc::CLOCK_REALTIME);
        let after = now_ns(libc::CLOCK_MONOTONIC);
        let gap = after - before;
        let offset = real - (before + gap / 2);
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, offset));
        }
    }
    best.map_or(0, |(_, offset)| offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_converts_to_wall_clock_now_within_a_millisecond() {
        let clock = MonotonicClock::new();
        let mono = u64::try_from(now_ns(libc::CLOCK_MONOTONIC)).unwrap();
        let wall = now_ns(libc::CLOCK_REALTIME);
        let converted = i128::from(clock.to_unix_nanos(mono));
        assert!((converted - wall).abs() < 1_000_000, "off by {} ns", converted - wall);
    }

    #[test]
    fn durations_are_preserved() {
        let clock = MonotonicClock::new();
        let start = 5_000_000_000u64;
        assert_eq!(
            clock.to_unix_nanos(start + 50_000_000) - clock.to_unix_nanos(start),
            50_000_000
        );
    }
}
