//! Outgoing `traceparent` at the socket layer (`inject.bpf.c`), so a server on another
//! host, instrumented or not, continues the trace. Nothing is written into any process: a
//! line is inserted into the plaintext HTTP/1.1 request, or a header field into the HEADERS
//! frame of a gRPC call over h2c, as the kernel sends it; over TLS, the client span rides in a
//! TCP header option that the server's gotel reads.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapHandle, MapType, OpenObject};

use crate::{Error, SharedMaps};
use skel::InjectSkelBuilder;

mod sockhash_check;
pub use sockhash_check::SockhashCheck;

crate::load::bpf_object!("inject");

/// Which connections get a traceparent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InjectMode {
    Off,
    /// Peers on other hosts; same-host peers are linked through the connection map for free.
    #[default]
    Remote,
    /// Loopback peers too (a local server gotel does not instrument, say).
    All,
}

impl InjectMode {
    /// As written in flags and config files.
    pub fn name(self) -> &'static str {
        match self {
            InjectMode::Off => "off",
            InjectMode::Remote => "remote",
            InjectMode::All => "all",
        }
    }
}

/// Which ends of propagation at the socket layer this agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sides {
    /// A client is traced: its sockets to other hosts are enrolled to carry its spans.
    pub send: bool,
    /// A server is traced: accepted sockets take the spans other hosts' clients sent in a
    /// TCP option.
    pub receive: bool,
}

/// What the sk_msg program did, summed over CPUs (`enum inject_stat`, in its order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectStats {
    /// HTTP/1.1 requests that got a line.
    pub injected: u64,
    /// The request was not plaintext HTTP/1.x: left alone.
    pub skipped_not_http1: u64,
    /// The kernel would not make room for the line or field, or the send buffer was too full
    /// to be sure the message is queued whole: left alone.
    pub skipped_no_room: u64,
    /// Room was made but could not be filled: the message was dropped rather than corrupted.
    pub dropped: u64,
    /// The HTTP/1.1 request or the gRPC call's metadata had a traceparent of its own: none
    /// added.
    pub skipped_has_traceparent: u64,
    /// HTTP/2 HEADERS frames that got a field.
    pub h2_injected: u64,
    /// HEADERS frames cut across sends or continued in CONTINUATION frames: left alone.
    pub h2_skipped_split: u64,
    /// HEADERS frames the field would take past 16384 bytes.
    pub h2_skipped_too_big: u64,
    /// Padded HEADERS frames.
    pub h2_skipped_padded: u64,
    /// HTTP/2 sockets whose frames made no sense at some point: left alone from then on.
    pub h2_lost: u64,
    /// HTTP/2 sockets whose kernel queued part of a message and handed the rest back: left
    /// alone from then on.
    pub h2_partly_sent: u64,
    /// Requests over TLS whose client span went out in a TCP option.
    pub tls_sent: u64,
    /// Requests over TLS a segment had no option space for (SACK blocks took it); a later
    /// segment of the request may still carry it.
    pub tls_no_space: u64,
    /// Client spans that arrived in a TCP option, for a server here.
    pub tls_received: u64,
    /// gRPC streams over TLS whose client span went out in a TCP option.
    pub tls_streams_sent: u64,
    /// And those that arrived, for a gRPC server here.
    pub tls_streams_received: u64,
    /// gRPC streams over TLS passed over for a newer stream on the same segment: a segment
    /// carries one option, and theirs would have come after their HEADERS.
    pub tls_streams_shared: u64,
}

const STAT_COUNT: u32 = 17;

/// The running injection: dropping it detaches the programs and releases every socket.
pub struct Injection {
    pub cgroup: PathBuf,
    pub sides: Sides,
    /// What a socket in the sockhash gets on this kernel, or why that could not be seen.
    pub receive_side: Result<SockhashCheck, String>,
    stats: MapHandle,
    /// Our own handle on the sockhash: the kernel drops a sockhash's sk_msg program when the
    /// last user reference goes, so it lives as long as the injection.
    _sockets: MapHandle,
    _sockops: Link,
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

impl Injection {
    /// Loads and attaches the programs, host-wide, for `mode` (not Off) and `sides`.
    pub fn start(shared: &SharedMaps, mode: InjectMode, sides: Sides) -> Result<Injection, Error> {
        let cgroup = cgroup2_root()
            .ok_or_else(|| Error::Internal { what: "no cgroup v2 hierarchy is mounted".into() })?;
        let bpf = |what: &str| crate::bpf_error("traceparent injection", &cgroup, what);
        let opts = crate::shared::libbpf_sys_opts();
        let stats =
            MapHandle::create(MapType::PercpuArray, Some("inject_stats"), 4, 8, STAT_COUNT, &opts)
                .map_err(bpf("create map inject_stats"))?;
        let sockets =
            MapHandle::create(MapType::Sockhash, Some("inject_socks"), 40, 4, 65536, &opts)
                .map_err(bpf("create map inject_socks"))?;
        let mut storage = MaybeUninit::<OpenObject>::uninit();
        let mut open = InjectSkelBuilder::default().open(&mut storage).map_err(bpf("open"))?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::Internal { what: "inject object has no .rodata".into() })?;
        ro.inject_loopback = mode == InjectMode::All;
        ro.tls_option_send = sides.send;
        ro.tls_option_receive = sides.receive;
        open.maps.inject_stats.reuse_fd(stats.as_fd()).map_err(bpf("reuse map inject_stats"))?;
        open.maps.inject_socks.reuse_fd(sockets.as_fd()).map_err(bpf("reuse map inject_socks"))?;
        shared.reuse_in(&mut open.open_object_mut().maps_mut())?;
        let skel = open.load().map_err(bpf("load"))?;
        let dir = std::fs::File::open(&cgroup)
            .map_err(|e| Error::Internal { what: format!("open {}: {e}", cgroup.display()) })?;
        skel.progs
            .inject_sk_msg
            .attach_sockmap(sockets.as_fd().as_raw_fd())
            .map_err(bpf("attach sk_msg to the sockhash"))?;
        let sockops = skel
            .progs
            .inject_sockops
            .attach_cgroup(dir.as_raw_fd())
            .map_err(bpf(&format!("attach sockops to {}", cgroup.display())))?;
        let receive_side = if sides.send {
            sockhash_check::check(&sockets).map_err(|e| e.to_string())
        } else {
            Err("no client socket is enrolled here".into())
        };
        Ok(Injection { cgroup, sides, receive_side, stats, _sockets: sockets, _sockops: sockops })
    }

    pub fn stats(&self) -> InjectStats {
        let sum = |index| crate::shared::sum_per_cpu(&self.stats, index);
        InjectStats {
            injected: sum(0),
            skipped_not_http1: sum(1),
            skipped_no_room: sum(2),
            dropped: sum(3),
            skipped_has_traceparent: sum(4),
            h2_injected: sum(5),
            h2_skipped_split: sum(6),
            h2_skipped_too_big: sum(7),
            h2_skipped_padded: sum(8),
            h2_lost: sum(9),
            h2_partly_sent: sum(10),
            tls_sent: sum(11),
            tls_no_space: sum(12),
            tls_received: sum(13),
            tls_streams_sent: sum(14),
            tls_streams_received: sum(15),
            tls_streams_shared: sum(16),
        }
    }
}
