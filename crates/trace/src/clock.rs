//! BPF timestamps are CLOCK_MONOTONIC; spans need Unix epoch time. The offset between the two
//! moves when the wall clock is stepped or slewed, so it is measured again every few seconds,
//! and at once (within CHECK_EVERY) when the kernel says the wall clock was set.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How often the step watch is read: a syscall, so not per event.
const CHECK_EVERY: Duration = Duration::from_millis(100);

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
    checked_at: Instant,
    /// None where the kernel gives no timerfd: steps are then seen at the next refresh.
    steps: Option<StepWatch>,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    pub fn new() -> Self {
        let now = Instant::now();
        MonotonicClock {
            realtime_minus_monotonic: measure_offset(),
            measured_at: now,
            checked_at: now,
            steps: StepWatch::new(),
        }
    }

    pub fn refresh_if_stale(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.checked_at) < CHECK_EVERY {
            return;
        }
        self.checked_at = now;
        let stepped = self.steps.as_ref().is_some_and(StepWatch::stepped);
        if stepped || now.duration_since(self.measured_at) >= REFRESH_EVERY {
            self.realtime_minus_monotonic = measure_offset();
            self.measured_at = now;
        }
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        let t = i128::from(monotonic_ns) + self.realtime_minus_monotonic;
        u64::try_from(t).unwrap_or(0)
    }
}

/// A timerfd on CLOCK_REALTIME armed with TFD_TIMER_CANCEL_ON_SET: reading it fails with
/// ECANCELED once the wall clock is set (date -s, an NTP step), and it is then armed again.
#[derive(Debug)]
struct StepWatch(OwnedFd);

impl StepWatch {
    fn new() -> Option<StepWatch> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just created and nothing else owns it.
        let watch = StepWatch(unsafe { OwnedFd::from_raw_fd(fd) });
        watch.arm().then_some(watch)
    }

    /// An absolute expiry far in the future: the timer never fires, it only gets cancelled.
    fn arm(&self) -> bool {
        let in_a_century = now_ns(libc::CLOCK_REALTIME) / 1_000_000_000 + 100 * 365 * 86_400;
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: in_a_century as libc::time_t, tv_nsec: 0 },
        };
        let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
        // SAFETY: spec lives for the call; the old value is not asked for.
        unsafe {
            libc::timerfd_settime(self.0.as_raw_fd(), flags, &spec, std::ptr::null_mut()) == 0
        }
    }

    /// Whether the wall clock was set since the last look.
    fn stepped(&self) -> bool {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into the u64 we pass.
        let n = unsafe {
            libc::read(self.0.as_raw_fd(), (&raw mut expirations).cast(), size_of::<u64>())
        };
        let cancelled =
            n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED);
        if cancelled {
            self.arm();
        }
        cancelled
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
    fn a_fresh_watch_has_seen_no_step() {
        let watch = StepWatch::new().expect("timerfd");
        assert!(!watch.stepped());
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
