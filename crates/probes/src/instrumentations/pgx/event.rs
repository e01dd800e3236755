//! `struct pgx_event` (pgx.bpf.c): one Query, Exec or batch.

use std::net::IpAddr;

use trace::{MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

/// What the probed function was (PGX_* in the C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Query,
    Exec,
    Batch,
}

impl Operation {
    fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            1 => Operation::Query,
            2 => Operation::Exec,
            3 => Operation::Batch,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        self as u8 + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgxEvent {
    pub header: SpanHeader,
    /// None when the value read is not an operation (see `implausible`).
    pub op: Option<Operation>,
    pub failed: bool,
    /// The SQLSTATE of a `*pgconn.PgError`.
    pub code: Option<String>,
    /// The statement, at most TEXT_CAP bytes; a batch's first BATCH_TEXTS, BATCH_TEXT_CAP
    /// bytes each.
    pub texts: Vec<String>,
    /// A batch's number of statements (0: not read).
    pub batch_size: u32,
    /// (server address, client port, server port) of the connection, when it could be read.
    pub peer: Option<(IpAddr, u16, u16)>,
    /// The database the connection's config names.
    pub namespace: String,
}

const TEXT: (usize, usize) = (192, 1024);
const BATCH_TEXTS: usize = 4;
const TEXT_LEN: usize = 68;
const CODE: (usize, usize, usize) = (58, 80, 8);
/// The `struct conn_key`, and its server address's slot: read from the client's side.
const CONN: (usize, usize) = (88, 16);
const NAMESPACE: (usize, usize, usize) = (60, 128, 64);

/// Where a statement's text is, and how much of it there can be.
fn text_slot(op: Option<Operation>, i: usize) -> (usize, usize) {
    match op {
        Some(Operation::Batch) => {
            let cap = TEXT.1 / BATCH_TEXTS;
            (TEXT.0 + i * cap, cap)
        }
        _ => TEXT,
    }
}

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &PgxEvent) -> Vec<u8> {
    let mut b = EventBytes::new(PgxEvent::SIZE, super::KIND, &e.header);
    b.put(56, &[e.op.map_or(0, Operation::to_u8), u8::from(e.failed)]);
    if let Some(code) = &e.code {
        let n = code.len().min(CODE.2);
        b.put(CODE.0, &[n as u8]);
        b.put(CODE.1, &code.as_bytes()[..n]);
    }
    if let Some(peer) = e.peer {
        b.put(59, &[1]);
        b.conn(CONN.0, CONN.1, peer);
    }
    b.strings(&[(NAMESPACE.0, NAMESPACE.1, NAMESPACE.2, &e.namespace)]);
    b.put(62, &[e.texts.len().min(BATCH_TEXTS) as u8]);
    b.put(64, &e.batch_size.to_le_bytes());
    for (i, text) in e.texts.iter().take(BATCH_TEXTS).enumerate() {
        let (at, cap) = text_slot(e.op, i);
        b.strings(&[(TEXT_LEN + 2 * i, at, cap, text)]);
    }
    b.0
}

impl SpanEvent for PgxEvent {
    /// sizeof(struct pgx_event).
    const SIZE: usize = 1216;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let op = Operation::from_u8(f.u8(56));
        let code_len = usize::from(f.u8(CODE.0)).min(CODE.2);
        let code = (code_len > 0)
            .then(|| String::from_utf8_lossy(&f.0[CODE.1..CODE.1 + code_len]).into_owned());
        let texts = (0..usize::from(f.u8(62)).min(BATCH_TEXTS))
            .map(|i| {
                let (at, cap) = text_slot(op, i);
                f.string(TEXT_LEN + 2 * i, at, cap)
            })
            .collect();
        PgxEvent {
            header: SpanHeader::decode(&f),
            op,
            failed: f.u8(57) != 0,
            code,
            texts,
            batch_size: f.u32(64),
            peer: (f.u8(59) != 0).then(|| f.conn(CONN.0, CONN.1)).flatten(),
            namespace: f.string(NAMESPACE.0, NAMESPACE.1, NAMESPACE.2),
        }
    }

    fn implausible(&self) -> Option<String> {
        match self.op {
            None => Some("a pgx event of no known operation".into()),
            Some(Operation::Batch) if self.texts.len() > self.batch_size as usize => {
                Some(format!("a batch of {} statements with {}", self.batch_size, self.texts.len()))
            }
            Some(_) => None,
        }
    }

    fn span(self, clock: &MonotonicClock, options: &SpanOptions) -> Span {
        super::span::span(self, clock, options)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(op: Operation, texts: &[&str]) -> PgxEvent {
        PgxEvent {
            header: crate::event::test_header(),
            op: Some(op),
            failed: false,
            code: None,
            texts: texts.iter().map(|t| t.to_string()).collect(),
            batch_size: if op == Operation::Batch { texts.len() as u32 } else { 0 },
            peer: Some(("127.0.0.1".parse().unwrap(), 41000, 5432)),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn round_trips() {
        let q = sample(Operation::Query, &["SELECT name FROM users WHERE id = $1"]);
        assert_eq!(PgxEvent::decode(&encode(&q)), q);
        let failed = PgxEvent { failed: true, code: Some("42P01".into()), peer: None, ..q };
        assert_eq!(PgxEvent::decode(&encode(&failed)), failed);
        let batch = PgxEvent {
            batch_size: 7,
            ..sample(Operation::Batch, &["SELECT 1", "SELECT 2", "UPDATE t SET a = 1", "x"])
        };
        assert_eq!(PgxEvent::decode(&encode(&batch)), batch);
    }

    #[test]
    fn unknown_operations_and_impossible_batches_are_implausible() {
        let mut bytes = encode(&sample(Operation::Exec, &["SELECT 1"]));
        assert_eq!(PgxEvent::decode(&bytes).implausible(), None);
        bytes[56] = 9;
        assert!(PgxEvent::decode(&bytes).implausible().is_some());
        let batch = PgxEvent { batch_size: 1, ..sample(Operation::Batch, &["SELECT 1", "x"]) };
        assert!(batch.implausible().is_some());
    }
}
