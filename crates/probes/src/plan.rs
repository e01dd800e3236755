//! What plans are made of, whatever the instrumentation: the functions to probe with their
//! cheap probe points, where probes go, and the field offsets every plan looks up.

use goinfo::{Function, GoBinary};
use offsets::FieldOffset;

/// A function to probe: its entry, its stack-check jump if it has one, and every RET.
#[derive(Debug, Clone)]
pub struct FunctionPlan {
    pub function: Function,
    /// File offset of the prologue's stack-check jump: a cheaper entry probe.
    pub stack_check: Option<u64>,
    pub return_offsets: Vec<u64>,
}

impl FunctionPlan {
    pub(crate) fn new(bin: &GoBinary, name: &str) -> Result<Self, String> {
        let plan = Self::entry_only(bin, name)?;
        if plan.return_offsets.is_empty() {
            return Err(format!("no RET instruction found in {name}"));
        }
        Ok(plan)
    }

    /// A function probed only where it starts (its RETs are not required).
    pub(crate) fn entry_only(bin: &GoBinary, name: &str) -> Result<Self, String> {
        let function = bin.function(name).map_err(|_| format!("{name} is not in the binary"))?;
        let stack_check = bin.stack_check_offset(&function);
        let return_offsets = bin.ret_offsets(&function);
        Ok(FunctionPlan { function, stack_check, return_offsets })
    }

    /// Where the entry probe goes for `placement`: (file offset, link-time address, what the
    /// instruction is). The stack-check jump runs on every call with the arguments untouched.
    pub(crate) fn entry_point(&self, placement: Placement) -> (u64, u64, &'static str) {
        let f = &self.function;
        match (placement, self.stack_check) {
            (Placement::Emulated, Some(jump)) => {
                (jump, jump - f.file_offset + f.address, "the stack-check jump")
            }
            _ => (f.file_offset, f.address, "the first instruction"),
        }
    }

    /// The first of `names` the binary has (functions renamed across Go versions).
    pub(crate) fn first_of(bin: &GoBinary, names: &[&str]) -> Option<Self> {
        names.iter().find_map(|n| Self::entry_only(bin, n).ok())
    }
}

/// The calls one function makes to another, each with the first branch after it returns
/// (goinfo `returns_from_calls`): a probe at the call sees the callee's arguments, one at the
/// branch what the callee left behind, both on instructions the kernel emulates, with the
/// caller's frame alive. What a RET probe would see, for an entry probe's cost.
#[derive(Debug, Clone)]
pub struct CallReturn {
    pub caller: Function,
    pub callee: String,
    /// (file offset of the call, file offset of the branch after it), for each call.
    pub sites: Vec<(u64, u64)>,
}

impl CallReturn {
    pub(crate) fn new(bin: &GoBinary, caller: &str, callee: &str) -> Result<Self, String> {
        let absent = |name: &str| format!("{name} is not in the binary");
        let caller = bin.function(caller).map_err(|_| absent(caller))?;
        let target = bin.function(callee).map_err(|_| absent(callee))?;
        let found = bin.returns_from_calls(&caller, &target);
        if found.is_empty() {
            return Err(format!("{} makes no call to {callee} (inlined)", caller.name));
        }
        let sites = found
            .into_iter()
            .map(|(call, after)| {
                after.map(|after| (call, after)).ok_or_else(|| {
                    format!(
                        "after {}'s call to {callee} at file offset {call:#x}, no instruction \
                         runs exactly when it returns that a uprobe can sit on cheaply",
                        caller.name
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CallReturn { caller, callee: callee.to_string(), sites })
    }
}

/// Where probes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On instructions the kernel emulates where the machine code allows (a function's
    /// stack-check jump; the entry of a function every request ends in), else entry and RETs.
    #[default]
    Emulated,
    /// Always the first instruction and every RET: the reference tools' way, for comparison.
    EntryRet,
}

pub(crate) fn offset_of(fields: &[FieldOffset], struct_name: &str, field: &str) -> Option<u64> {
    fields
        .iter()
        .find(|f| f.spec.struct_name == struct_name && f.spec.field == field)
        .and_then(|f| f.offset)
}

/// (offset of the *netFD in a net.TCPConn, offset of the fd number in a netFD), when known:
/// what `conn.h` needs to find a Go connection's socket.
pub(crate) fn conn_offsets(fields: &[FieldOffset]) -> Option<(u64, u64)> {
    let f = |s, f| offset_of(fields, s, f);
    Some((
        f("net.TCPConn", "conn")? + f("net.conn", "fd")?,
        f("net.netFD", "pfd")? + f("internal/poll.FD", "Sysfd")?,
    ))
}

/// Sets conn.h's way under a TLS connection (`crypto/tls.Conn.conn`, among the instrumentation's
/// fields) in a program's rodata, where the offset is known.
macro_rules! configure_tls_conn {
    ($ro:expr, $fields:expr) => {
        if let Some(conn) = $crate::plan::offset_of($fields, "crypto/tls.Conn", "conn") {
            $ro.off_tlsconn_conn_data = conn + 8; // an interface's data word follows its itab
            $ro.has_tls_offsets = true;
        }
    };
}
pub(crate) use configure_tls_conn;

/// The net.Conn dynamic types `conn.h` sees through to the socket (`go_tcpconn_in`), by the
/// type hash their itab carries; 0 for one the binary has no descriptor for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnTypes {
    pub tcp: u32,
    /// 0 where the binary has no unix sockets.
    pub unix: u32,
    pub tls: u32,
    /// grpc's wrapper of a TLS connection that keeps the raw one's SyscallConn.
    pub syscall: u32,
    /// grpc's wrapper of a TLS connection before 1.17, held by value.
    pub grpc_tls: u32,
}

const TCP_CONN: &str = "*net.TCPConn";
const UNIX_CONN: &str = "*net.UnixConn";
const TLS_CONN: &str = "*crypto/tls.Conn";
/// grpc's syscallConn, by the packages it has lived in (credentials/internal from 1.17,
/// internal/credentials from 1.32).
pub(crate) const SYSCALL_CONN: [&str; 2] = [
    "google.golang.org/grpc/internal/credentials.syscallConn",
    "google.golang.org/grpc/credentials/internal.syscallConn",
];

/// grpc's TLS connection before 1.17 (then syscallConn): a struct value, not a pointer.
pub(crate) const GRPC_TLS_CONN: &str = "google.golang.org/grpc/credentials.tlsConn";

/// The binary's ConnTypes; None where *net.TCPConn has no descriptor (then a connection is
/// taken to be one, as before TLS was seen through).
pub(crate) fn conn_types(bin: &GoBinary) -> Option<ConnTypes> {
    let syscall = SYSCALL_CONN.map(|name| format!("*{name}"));
    let wanted = [TCP_CONN, UNIX_CONN, TLS_CONN, &syscall[0], &syscall[1], GRPC_TLS_CONN];
    let hashes = bin.type_hashes(&wanted).ok()?;
    let of = |name: &str| hashes.get(name).copied().unwrap_or(0);
    Some(ConnTypes {
        tcp: *hashes.get(TCP_CONN)?,
        unix: of(UNIX_CONN),
        tls: of(TLS_CONN),
        syscall: syscall.iter().map(|name| of(name)).find(|&h| h != 0).unwrap_or(0),
        grpc_tls: of(GRPC_TLS_CONN),
    })
}

/// Sets conn.h's `go_tcpconn_in` constants in a program's rodata: the type hashes, and the
/// fields it reads under a *tls.Conn and grpc's syscallConn (among `$fields`).
macro_rules! configure_conn_types {
    ($ro:expr, $types:expr, $fields:expr) => {
        if let Some(t) = $types {
            $ro.hash_tcpconn = t.tcp;
            $ro.hash_unixconn = t.unix;
            $ro.hash_tlsconn = t.tls;
            $ro.has_conn_types = true;
            let syscall = $crate::plan::SYSCALL_CONN
                .iter()
                .find_map(|s| $crate::plan::offset_of($fields, s, "Conn"));
            if let Some(conn) = syscall {
                $ro.hash_syscallconn = t.syscall;
                $ro.off_syscallconn_conn = conn;
            }
            let raw = $crate::plan::offset_of($fields, $crate::plan::GRPC_TLS_CONN, "rawConn");
            if let Some(raw) = raw {
                $ro.hash_grpc_tlsconn = t.grpc_tls;
                $ro.off_grpc_tlsconn_raw = raw;
            }
        }
        $crate::plan::configure_tls_conn!($ro, $fields);
    };
}
pub(crate) use configure_conn_types;

/// Whether a module version ("v1.77.0", "v1.77.0-dev") is at least major.minor.
pub(crate) fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_versions_compare_by_major_and_minor() {
        assert!(!version_at_least("v1.69.0", 1, 77));
        assert!(!version_at_least("v1.76.9", 1, 77));
        assert!(version_at_least("v1.77.0", 1, 77));
        assert!(version_at_least("v1.85.0-dev", 1, 77));
        assert!(version_at_least("v2.0.0", 1, 77));
    }
}
