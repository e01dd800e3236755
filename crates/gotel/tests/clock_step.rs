//! The wall clock stepped (`date -s`) while gotel runs: span times follow it at once. A test
//! binary of its own, so no other test runs while the machine's clock is off.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn now_unix_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// Moves the wall clock by `by_ns` with `date -s`.
fn step_clock(by_ns: i128) {
    let to = now_unix_nanos() + by_ns;
    let at = format!("@{}.{:09}", to / 1_000_000_000, to % 1_000_000_000);
    let out = std::process::Command::new("date").args(["-s", &at]).output().expect("date");
    assert!(out.status.success(), "date -s {at}: {out:?}");
}

/// Steps the clock, and back when dropped, so a failing test leaves it right.
struct Stepped(i128);

impl Stepped {
    fn by(ns: i128) -> Stepped {
        step_clock(ns);
        Stepped(ns)
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        step_clock(-self.0);
    }
}

/// A request's span begins between the wall-clock readings taken around it, 1 ms allowed.
fn assert_on_the_wall_clock(collector: &Collector, port: u16, tag: &str) {
    let path = format!("/hello?clock={tag}");
    let before = now_unix_nanos();
    assert_eq!(http_get(port, &path).0, 200);
    let after = now_unix_nanos();
    let query = format!("clock={tag}");
    let span = collector.wait_for_span(|s| s.attr_str("url.query") == Some(query.clone()), WAIT);
    let span = span.unwrap_or_else(|| panic!("no span for {query}"));
    let start = span.nanos("startTimeUnixNano") as i128;
    let ms = 1_000_000;
    assert!(
        (before - ms..=after + ms).contains(&start),
        "{tag}: the span began {} ms from the request (window {} ms)",
        (start - before) / ms,
        (after - before) / ms
    );
}

/// The clock stepped 30 s ahead, then back: the first request after each step already has
/// its span on the new wall clock (gotel's timerfd sees the step), no re-measure to wait for.
#[test]
fn span_times_follow_a_stepped_wall_clock() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("clock-step");
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let _gotel = gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    assert_on_the_wall_clock(&collector, port, "before");
    {
        let _ahead = Stepped::by(30_000_000_000);
        std::thread::sleep(Duration::from_millis(200));
        assert_on_the_wall_clock(&collector, port, "ahead");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_on_the_wall_clock(&collector, port, "back");
}
