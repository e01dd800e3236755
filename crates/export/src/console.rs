//! The terminal view: finished spans grouped by trace, one line per span, a tree when a trace
//! has more than one. A trace is printed once its root has ended, since children end first;
//! a trace whose root is not seen here is printed after a short wait. On a terminal, a line per
//! service every few seconds too (`Summary`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trace::{ProcessResource, Span, SpanKind, Status};

use crate::summary::Summary;

const WAIT_FOR_ROOT: Duration = Duration::from_secs(1);

/// Attributes worth a glance, in the order shown; the rest go to OTLP only.
const SHOWN: &[&str] =
    &["url.path", "url.query", "url.full", "server.address", "server.port", "client.address"];

struct Pending {
    spans: Vec<(Arc<ProcessResource>, Span)>,
    since: Instant,
}

pub struct Console<W: Write> {
    out: W,
    color: bool,
    pending: HashMap<[u8; 16], Pending>,
    summary: Option<Summary>,
}

impl<W: Write> Console<W> {
    pub fn new(out: W, color: bool) -> Self {
        Console { out, color, pending: HashMap::new(), summary: None }
    }

    /// Also prints a line per service (rate, errors, p50, p99) every `every`.
    pub fn with_summary(mut self, every: Duration) -> Self {
        self.summary = Some(Summary::new(every, Instant::now()));
        self
    }

    /// Whether it prints the per-service lines: what wants every span counted, sampled or not.
    pub fn summarizes(&self) -> bool {
        self.summary.is_some()
    }

    /// Counts a span, sampled or not, in the per-service lines.
    pub fn count(&mut self, resource: &ProcessResource, span: &Span) {
        if let Some(s) = &mut self.summary {
            s.count(resource, span);
        }
    }

    pub fn push(&mut self, resource: Arc<ProcessResource>, span: Span) {
        let trace_id = span.trace_id;
        // Children end before their parents, so the root ending means the trace is whole (as
        // far as this host sees it); a trace whose root is elsewhere waits out WAIT_FOR_ROOT.
        let is_root = span.parent_span_id.is_none();
        let entry = self
            .pending
            .entry(trace_id)
            .or_insert_with(|| Pending { spans: Vec::new(), since: Instant::now() });
        entry.spans.push((resource, span));
        if is_root {
            if let Some(p) = self.pending.remove(&trace_id) {
                self.print(trace_id, p.spans);
            }
        }
    }

    /// Prints traces whose root never came (it may run in a process gotel does not see).
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= WAIT_FOR_ROOT)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                self.print(id, p.spans);
            }
        }
        if let Some(lines) = self.summary.as_mut().and_then(|s| s.lines(now)) {
            let text: String = lines
                .iter()
                .map(|l| format!("{}\n", self.paint("1;35", &format!("▸ {l}"))))
                .collect();
            let _ = self.out.write_all(text.as_bytes());
            let _ = self.out.flush();
        }
    }

    pub fn flush(&mut self) {
        self.tick(Instant::now() + WAIT_FOR_ROOT);
        let _ = self.out.flush();
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn line(&self, resource: &ProcessResource, span: &Span) -> String {
        let status_code = span.attribute("http.response.status_code").map(|v| v.to_string());
        let (status, status_color) = match (&span.status, status_code) {
            (Status::Error { .. }, Some(c)) => (c, "31"),
            (Status::Error { .. }, None) => ("ERROR".to_string(), "31"),
            (Status::Unset, Some(c)) => (c, "32"),
            (Status::Unset, None) => ("OK".to_string(), "32"),
        };
        let kind = match span.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Internal => "INTERNAL",
        };
        let mut attrs: Vec<String> =
            SHOWN.iter().filter_map(|k| span.attribute(k).map(|v| format!("{k}={v}"))).collect();
        // A client span whose request carried a traceparent of its own: the trace it joins.
        attrs.extend(
            span.links.iter().map(|l| format!("link={}-{}", hex(&l.trace_id), hex(&l.span_id))),
        );
        format!(
            "{} {} {:<6} {:<28} {} {:>9}  {}",
            self.paint("36", resource.service_name()),
            self.paint("2", &format!("[{}]", resource.pid)),
            kind,
            self.paint("1", &span.name),
            self.paint(status_color, &format!("{status:>5}")),
            format_duration(span.duration_nanos()),
            self.paint("2", &attrs.join(" ")),
        )
    }

    fn print(&mut self, trace_id: [u8; 16], mut spans: Vec<(Arc<ProcessResource>, Span)>) {
        spans.sort_by_key(|(_, s)| s.start_unix_nanos);
        let header = format!(
            "{} trace {}",
            format_clock(spans.first().map_or(0, |(_, s)| s.start_unix_nanos)),
            hex(&trace_id)
        );
        let mut text = self.paint("2", &header);
        text.push('\n');
        if spans.len() == 1 {
            text.push_str("  ");
            text.push_str(&self.line(&spans[0].0, &spans[0].1));
            text.push('\n');
        } else {
            // Roots: spans whose parent is not in this group.
            let ids: Vec<[u8; 8]> = spans.iter().map(|(_, s)| s.span_id).collect();
            let roots: Vec<usize> = (0..spans.len())
                .filter(|&i| spans[i].1.parent_span_id.is_none_or(|p| !ids.contains(&p)))
                .collect();
            for (n, &root) in roots.iter().enumerate() {
                self.tree(&spans, root, "  ", n + 1 == roots.len(), &mut text);
            }
        }
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    fn tree(
        &self,
        spans: &[(Arc<ProcessResource>, Span)],
        at: usize,
        prefix: &str,
        last: bool,
        text: &mut String,
    ) {
        let branch = if last { "└─ " } else { "├─ " };
        text.push_str(prefix);
        text.push_str(branch);
        text.push_str(&self.line(&spans[at].0, &spans[at].1));
        text.push('\n');
        let id = spans[at].1.span_id;
        let children: Vec<usize> =
            (0..spans.len()).filter(|&i| spans[i].1.parent_span_id == Some(id)).collect();
        let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
        for (n, &c) in children.iter().enumerate() {
            self.tree(spans, c, &child_prefix, n + 1 == children.len(), text);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn format_duration(nanos: u64) -> String {
    match nanos {
        n if n < 1_000_000 => format!("{:.0}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

/// HH:MM:SS.mmm in UTC.
fn format_clock(unix_nanos: u64) -> String {
    let ms = unix_nanos / 1_000_000;
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", (s / 3600) % 24, (s / 60) % 60, s % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::KeyValue;

    fn res(pid: u32, name: &str) -> Arc<ProcessResource> {
        let name = name.to_string().into();
        Arc::new(ProcessResource { pid, attributes: vec![("service.name".into(), name)] })
    }

    fn span(id: u8, parent: Option<u8>, kind: SpanKind, name: &str, start: u64) -> Span {
        Span {
            trace_id: [9; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            name: name.to_string().into(),
            kind,
            start_unix_nanos: start,
            end_unix_nanos: start + 2_500_000,
            attributes: vec![
                KeyValue::new("http.response.status_code", 200),
                KeyValue::new("url.path", "/a"),
            ],
            status: Status::Unset,
            trace_state: String::new(),
            links: Vec::new(),
        }
    }

    fn output(c: Console<Vec<u8>>) -> String {
        String::from_utf8(c.out).unwrap()
    }

    #[test]
    fn a_single_span_trace_is_one_line_printed_at_once() {
        let mut c = Console::new(Vec::new(), false);
        c.push(res(4, "shop"), span(1, None, SpanKind::Server, "GET /a", 0));
        let out = output(c);
        assert!(out.starts_with("00:00:00.000 trace 0909"), "{out}");
        let line = out.lines().nth(1).unwrap();
        assert!(line.contains("shop [4] SERVER GET /a"), "{line}");
        assert!(line.contains("  200") && line.contains("2.50ms") && line.contains("url.path=/a"));
    }

    #[test]
    fn a_trace_with_children_prints_as_a_tree_when_its_root_ends() {
        let mut c = Console::new(Vec::new(), false);
        c.push(res(5, "b"), span(3, Some(2), SpanKind::Client, "GET", 20));
        c.push(res(5, "b"), span(4, Some(2), SpanKind::Client, "POST", 30));
        assert!(c.out.is_empty(), "waits for the root");
        c.push(res(5, "b"), span(2, None, SpanKind::Server, "GET /b", 10));
        let out = output(c);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[1].starts_with("  └─ b [5] SERVER GET /b"), "{out}");
        assert!(lines[2].starts_with("     ├─ b [5] CLIENT GET"), "{out}");
        assert!(lines[3].starts_with("     └─ b [5] CLIENT POST"), "{out}");
    }

    #[test]
    fn orphans_are_printed_after_the_wait() {
        let mut c = Console::new(Vec::new(), false);
        c.push(res(5, "b"), span(3, Some(2), SpanKind::Client, "GET", 20));
        c.tick(Instant::now());
        assert!(c.out.is_empty());
        c.tick(Instant::now() + WAIT_FOR_ROOT);
        assert!(output(c).contains("CLIENT GET"));
    }
}
