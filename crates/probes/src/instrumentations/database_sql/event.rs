//! `struct sql_event` (database_sql.bpf.c): one database operation.

use std::net::IpAddr;

use trace::{MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

/// What the probed function was (SQL_* in the C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Query,
    Exec,
    StmtQuery,
    StmtExec,
    Begin,
    Commit,
    Rollback,
}

impl Operation {
    fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            1 => Operation::Query,
            2 => Operation::Exec,
            3 => Operation::StmtQuery,
            4 => Operation::StmtExec,
            5 => Operation::Begin,
            6 => Operation::Commit,
            7 => Operation::Rollback,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        self as u8 + 1
    }
}

/// The error code a known driver's error carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// PostgreSQL's SQLSTATE ("42P01").
    Text(String),
    /// MySQL's error number (1146).
    Number(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlEvent {
    pub header: SpanHeader,
    /// None when the value read is not an operation (see `implausible`).
    pub op: Option<Operation>,
    /// The driver's database system (`SYSTEM_*` in mod.rs), 0 when the driver is unknown.
    pub system: u8,
    pub failed: bool,
    pub code: Option<ErrorCode>,
    /// As the program captured it: at most QUERY_CAP bytes.
    pub query: String,
    /// (server address, client port, server port) of the connection, when it could be read.
    pub peer: Option<(IpAddr, u16, u16)>,
    /// The database's name, where the driver's connection tells it.
    pub namespace: String,
}

const QUERY: (usize, usize, usize) = (60, 120, 1024);
const CODE: (usize, usize, usize) = (62, 72, 8);
/// Where the `struct conn_key` is, and the slot of the server's address in it: read from the
/// client's side.
const CONN: (usize, usize) = (80, 16);
const NAMESPACE: (usize, usize, usize) = (1144, 1152, 64);
const CODE_STRING: u8 = 1;
const CODE_U16: u8 = 2;

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &SqlEvent) -> Vec<u8> {
    let mut b = EventBytes::new(SqlEvent::SIZE, super::KIND, &e.header);
    b.put(56, &[e.op.map_or(0, Operation::to_u8), e.system, u8::from(e.failed)]);
    match &e.code {
        Some(ErrorCode::Text(code)) => {
            b.put(59, &[CODE_STRING]);
            b.strings(&[(CODE.0, CODE.1, CODE.2, code)]);
        }
        Some(ErrorCode::Number(n)) => {
            b.put(59, &[CODE_U16]);
            b.put(CODE.0, &2u16.to_le_bytes());
            b.put(CODE.1, &n.to_le_bytes());
        }
        None => {}
    }
    if let Some(peer) = e.peer {
        b.put(64, &[1]);
        b.conn(CONN.0, CONN.1, peer);
    }
    b.strings(&[
        (QUERY.0, QUERY.1, QUERY.2, &e.query),
        (NAMESPACE.0, NAMESPACE.1, NAMESPACE.2, &e.namespace),
    ]);
    b.0
}

impl SpanEvent for SqlEvent {
    /// sizeof(struct sql_event).
    const SIZE: usize = 1216;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let code_len = usize::from(f.u16(CODE.0)).min(CODE.2);
        let code = match f.u8(59) {
            CODE_STRING if code_len > 0 => Some(ErrorCode::Text(f.string(CODE.0, CODE.1, CODE.2))),
            CODE_U16 if code_len == 2 => Some(ErrorCode::Number(f.u16(CODE.1))),
            _ => None,
        };
        SqlEvent {
            header: SpanHeader::decode(&f),
            op: Operation::from_u8(f.u8(56)),
            system: f.u8(57),
            failed: f.u8(58) != 0,
            code,
            query: f.string(QUERY.0, QUERY.1, QUERY.2),
            peer: (f.u8(64) != 0).then(|| f.conn(CONN.0, CONN.1)).flatten(),
            namespace: f.string(NAMESPACE.0, NAMESPACE.1, NAMESPACE.2),
        }
    }

    fn implausible(&self) -> Option<String> {
        match self.op {
            None => Some("a database event of no known operation".into()),
            Some(_) if usize::from(self.system) > super::SYSTEMS.len() => {
                Some(format!("database system {} is none gotel knows", self.system))
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

    pub(crate) fn sample(op: Operation, query: &str) -> SqlEvent {
        SqlEvent {
            header: crate::event::test_header(),
            op: Some(op),
            system: 1,
            failed: false,
            code: None,
            query: query.into(),
            peer: Some(("127.0.0.1".parse().unwrap(), 41000, 5432)),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn round_trips_with_each_kind_of_code() {
        let e = sample(Operation::Query, "SELECT name FROM users WHERE id = $1");
        assert_eq!(SqlEvent::decode(&encode(&e)), e);
        let pg =
            SqlEvent { failed: true, code: Some(ErrorCode::Text("42P01".into())), ..e.clone() };
        assert_eq!(SqlEvent::decode(&encode(&pg)), pg);
        let my = SqlEvent { failed: true, code: Some(ErrorCode::Number(1146)), peer: None, ..e };
        assert_eq!(SqlEvent::decode(&encode(&my)), my);
    }

    #[test]
    fn unknown_operations_and_systems_are_implausible() {
        let mut e = sample(Operation::Exec, "");
        assert_eq!(e.implausible(), None);
        e.system = 200;
        assert!(e.implausible().is_some());
        let mut bytes = encode(&sample(Operation::Exec, ""));
        bytes[56] = 42;
        assert!(SqlEvent::decode(&bytes).implausible().is_some());
    }
}
