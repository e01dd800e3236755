//! `struct redis_event` (go_redis.bpf.c): one command, pipeline or transaction.

use trace::{MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

/// What the probed function was (REDIS_* in the C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Command,
    /// A pipeline, or a transaction: its commands start with MULTI.
    Pipeline,
}

/// One command as captured: its first two arguments when they are strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    /// As go-redis holds it (commands it builds are lower case): at most NAME_CAP bytes.
    pub name: String,
    /// The second argument: the key, for most commands. At most KEY_CAP bytes.
    pub key: Option<String>,
    /// How many arguments, the name included.
    pub argc: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisEvent {
    pub header: SpanHeader,
    /// None when the value read is not an operation (see `implausible`).
    pub op: Option<Operation>,
    pub failed: bool,
    /// The message of a reply the server refused ("WRONGTYPE Operation against ...").
    pub error: Option<String>,
    /// The first CMDS commands.
    pub commands: Vec<Command>,
    /// How many commands the call had.
    pub total_commands: u32,
    /// The client's Options: Network ("tcp", "unix"; empty is tcp), Addr and DB.
    pub network: String,
    pub addr: String,
    pub db: i64,
}

const ADDR: (usize, usize) = (80, 64);
const NETWORK: (usize, usize) = (144, 8);
const ERROR: (usize, usize) = (152, 32);
const CMDS: (usize, usize, usize) = (184, 88, 8);
const NAME: (usize, usize) = (8, 16);
const KEY: (usize, usize) = (24, 64);

/// A string of at most `cap` bytes at `at` whose length is the byte at `len_at`.
fn short_string(f: &Fields<'_>, len_at: usize, at: usize, cap: usize) -> String {
    let len = usize::from(f.u8(len_at)).min(cap);
    String::from_utf8_lossy(&f.0[at..at + len]).into_owned()
}

fn put_short_string(b: &mut EventBytes, len_at: usize, at: usize, cap: usize, s: &str) {
    let n = s.len().min(cap);
    b.put(len_at, &[n as u8]);
    b.put(at, &s.as_bytes()[..n]);
}

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &RedisEvent) -> Vec<u8> {
    let mut b = EventBytes::new(RedisEvent::SIZE, super::V9.kind, &e.header);
    let op = match e.op {
        Some(Operation::Command) => 1,
        Some(Operation::Pipeline) => 2,
        None => 0,
    };
    b.put(56, &[op, u8::from(e.failed)]);
    if let Some(error) = &e.error {
        put_short_string(&mut b, 58, ERROR.0, ERROR.1, error);
    }
    b.put(59, &[e.commands.len().min(CMDS.2) as u8]);
    put_short_string(&mut b, 60, ADDR.0, ADDR.1, &e.addr);
    put_short_string(&mut b, 61, NETWORK.0, NETWORK.1, &e.network);
    b.put(64, &e.total_commands.to_le_bytes());
    b.put(72, &e.db.to_le_bytes());
    for (i, c) in e.commands.iter().take(CMDS.2).enumerate() {
        let at = CMDS.0 + i * CMDS.1;
        put_short_string(&mut b, at, at + NAME.0, NAME.1, &c.name);
        if let Some(key) = &c.key {
            put_short_string(&mut b, at + 1, at + KEY.0, KEY.1, key);
        }
        b.put(at + 4, &c.argc.to_le_bytes());
    }
    b.0
}

impl SpanEvent for RedisEvent {
    /// sizeof(struct redis_event).
    const SIZE: usize = 888;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let ncmds = usize::from(f.u8(59)).min(CMDS.2);
        let commands = (0..ncmds)
            .map(|i| {
                let at = CMDS.0 + i * CMDS.1;
                Command {
                    name: short_string(&f, at, at + NAME.0, NAME.1),
                    key: (f.u8(at + 1) > 0).then(|| short_string(&f, at + 1, at + KEY.0, KEY.1)),
                    argc: f.u32(at + 4),
                }
            })
            .collect();
        RedisEvent {
            header: SpanHeader::decode(&f),
            op: match f.u8(56) {
                1 => Some(Operation::Command),
                2 => Some(Operation::Pipeline),
                _ => None,
            },
            failed: f.u8(57) != 0,
            error: (f.u8(58) > 0).then(|| short_string(&f, 58, ERROR.0, ERROR.1)),
            commands,
            total_commands: f.u32(64),
            network: short_string(&f, 61, NETWORK.0, NETWORK.1),
            addr: short_string(&f, 60, ADDR.0, ADDR.1),
            db: i64::from_le_bytes(f.array(72)),
        }
    }

    fn implausible(&self) -> Option<String> {
        let Some(op) = self.op else {
            return Some("a Redis event of no known operation".into());
        };
        if op == Operation::Command && self.total_commands != 1 {
            return Some(format!("a Redis command event with {} commands", self.total_commands));
        }
        // Command names are letters (and the odd '|' or '-'); anything else is a wrong offset.
        let bad_name = self.commands.iter().find(|c| {
            !c.name.is_empty()
                && !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'|' || b == b'-' || b == b'_')
        });
        if let Some(c) = bad_name {
            return Some(format!("Redis command name {:?} is not a command", c.name));
        }
        if !(0..=1 << 20).contains(&self.db) {
            return Some(format!("Redis database index {} is none a server has", self.db));
        }
        None
    }

    fn span(self, clock: &MonotonicClock, _options: &SpanOptions) -> Span {
        super::span::span(self, clock)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn command(name: &str, key: Option<&str>, argc: u32) -> Command {
        Command { name: name.into(), key: key.map(Into::into), argc }
    }

    pub(crate) fn sample(op: Operation, commands: Vec<Command>) -> RedisEvent {
        RedisEvent {
            header: crate::event::test_header(),
            op: Some(op),
            failed: false,
            error: None,
            total_commands: commands.len() as u32,
            commands,
            network: "tcp".into(),
            addr: "127.0.0.1:6379".into(),
            db: 0,
        }
    }

    #[test]
    fn round_trips() {
        let e = sample(Operation::Command, vec![command("get", Some("user:1"), 2)]);
        assert_eq!(RedisEvent::decode(&encode(&e)), e);
        let mut p = sample(
            Operation::Pipeline,
            vec![command("multi", None, 1), command("set", Some("k"), 3), command("exec", None, 1)],
        );
        (p.failed, p.error, p.db, p.total_commands) =
            (true, Some("WRONGTYPE Operation".into()), 3, 12);
        assert_eq!(RedisEvent::decode(&encode(&p)), p);
    }

    #[test]
    fn garbage_is_implausible() {
        let mut e = sample(Operation::Command, vec![command("get", Some("k"), 2)]);
        assert_eq!(e.implausible(), None);
        e.commands[0].name = "g\u{1}t".into();
        assert!(e.implausible().is_some());
        let mut e = sample(Operation::Command, vec![command("get", None, 2)]);
        e.db = -5;
        assert!(e.implausible().is_some());
        let mut bytes = encode(&sample(Operation::Command, vec![]));
        bytes[56] = 9;
        assert!(RedisEvent::decode(&bytes).implausible().is_some());
    }
}
