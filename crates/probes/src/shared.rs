//! Maps shared by every loaded instrumentation: one ring buffer for all span events, the set of
//! traced pids, the counters, the spans goroutines and connections carry, and the database
//! calls goroutines are in. Created once; each object reuses their file descriptors.

use std::os::fd::AsFd;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType, OpenMapMut};

use crate::Error;

/// The ring buffer's default size. Its pages are mapped twice into the agent (for reads across
/// the wrap), so it counts double in the agent's RSS; 4 MiB holds ~200 ms of events at 20k
/// spans/s.
pub const DEFAULT_RINGBUF_MIB: u32 = 4;
const MAX_TRACED_PIDS: u32 = 16384;
const STAT_COUNT: u32 = 6;
const CTX_MAX: u32 = 65536;
const SERVER_CALLS_MAX: u32 = 32768;
const DB_CALLS_MAX: u32 = 32768;
const TLS_SOCKETS_MAX: u32 = 16384;
const TRACE_STATES_MAX: u32 = 16384;
/// Routed requests in flight (entries go when their span ends).
const MATCHED_ROUTES_MAX: u32 = 16384;

/// The agent's view of what the BPF side counted (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Spans lost because the ring buffer was full (the agent fell behind).
    pub ringbuf_full: u64,
    /// Returns seen without their entry (attached while a call was in flight).
    pub returns_without_entry: u64,
    /// gRPC streams over TLS whose span found its socket's queue for TCP options full.
    pub tls_streams_full: u64,
    /// HTTP requests to other hosts, with injection on, on connections opened before gotel
    /// started: left alone, nothing added.
    pub requests_on_older_connections: u64,
    /// HTTP/2 requests (Go 1.27+) whose Request the GC had reused by the time they ended: their
    /// span has what the request began with, and no ServeMux pattern.
    pub requests_reused: u64,
    /// HTTP server entries run again when morestack restarted the function: the request kept
    /// the span it began with.
    pub entries_repeated: u64,
}

pub struct SharedMaps {
    events: MapHandle,
    traced_pids: MapHandle,
    stats: MapHandle,
    goroutine_ctx: MapHandle,
    server_calls: MapHandle,
    conn_ctx: MapHandle,
    conn_published: MapHandle,
    stream_ctx: MapHandle,
    client_pids: MapHandle,
    db_calls: MapHandle,
    tls_streams: MapHandle,
    enrolled_conns: MapHandle,
    trace_states: MapHandle,
    matched_routes: MapHandle,
}

/// Deletes the entries of a map keyed by struct goroutine_key (gotel.h: the pid first) that
/// belong to `pid`; how many.
fn delete_keys_of(map: &MapHandle, pid: u32) -> usize {
    let theirs: Vec<Vec<u8>> =
        map.keys().filter(|k| k.get(..4) == Some(&pid.to_ne_bytes()[..])).collect();
    theirs.iter().filter(|k| map.delete(k).is_ok()).count()
}

impl SharedMaps {
    /// `ring_mib`: the ring buffer's size in MiB, a power of two.
    pub fn create(ring_mib: u32) -> Result<Self, Error> {
        if !ring_mib.is_power_of_two() || ring_mib > 1024 {
            return Err(Error::Internal {
                what: format!("ring buffer of {ring_mib} MiB: use a power of two up to 1024"),
            });
        }
        let opts = libbpf_sys_opts();
        let create = |ty, name: &str, key, value, max| {
            MapHandle::create(ty, Some(name), key, value, max, &opts)
                .map_err(|source| Error::Bpf { what: format!("create map {name}"), source })
        };
        Ok(SharedMaps {
            events: create(MapType::RingBuf, "events", 0, 0, ring_mib << 20)?,
            traced_pids: create(MapType::Hash, "traced_pids", 4, 1, MAX_TRACED_PIDS)?,
            stats: create(MapType::PercpuArray, "stats", 4, 8, STAT_COUNT)?,
            goroutine_ctx: create(MapType::LruHash, "goroutine_ctx", 16, 32, CTX_MAX)?,
            // struct server_call (gotel.h); libbpf refuses a mismatch when the objects load.
            server_calls: create(MapType::LruHash, "server_calls", 16, 80, SERVER_CALLS_MAX)?,
            conn_ctx: create(MapType::LruHash, "conn_ctx", 40, 32, CTX_MAX)?,
            conn_published: create(MapType::Array, "conn_published", 4, 8, 1)?,
            stream_ctx: create(MapType::LruHash, "stream_ctx", 48, 32, CTX_MAX)?,
            client_pids: create(MapType::LruHash, "client_pids", 4, 1, MAX_TRACED_PIDS)?,
            db_calls: create(MapType::LruHash, "db_calls", 16, 1, DB_CALLS_MAX)?,
            // struct tls_streams (conn.h): head, tail and 8 span_ctx.
            tls_streams: create(MapType::LruHash, "tls_streams", 40, 264, TLS_SOCKETS_MAX)?,
            enrolled_conns: create(MapType::LruHash, "enrolled_conns", 40, 1, CTX_MAX)?,
            // struct trace_state (conn.h): a length and 256 bytes.
            trace_states: create(MapType::LruHash, "trace_states", 16, 260, TRACE_STATES_MAX)?,
            // struct matched_route (routes.h): a span id, a length and ROUTE_CAP bytes.
            matched_routes: create(
                MapType::LruHash,
                "matched_routes",
                16,
                144,
                MATCHED_ROUTES_MAX,
            )?,
        })
    }

    /// The ring buffer that carries every span event.
    pub fn events(&self) -> &MapHandle {
        &self.events
    }

    /// Adds `pid` to the processes traced when programs were loaded with a pid filter.
    pub fn trace_pid(&self, pid: u32) -> Result<(), Error> {
        self.traced_pids
            .update(&pid.to_ne_bytes(), &[1], MapFlags::ANY)
            .map_err(|source| Error::Bpf { what: format!("trace pid {pid}"), source })
    }

    /// Stops tracing `pid` (it exited, or was never meant to be traced); its pid may be reused,
    /// so what its goroutines left in the shared maps goes too: requests in flight when it was
    /// killed or that never ended, the spans its goroutines worked for. Returns how many
    /// entries that removed.
    pub fn untrace_pid(&self, pid: u32) -> usize {
        // Absent already is as good as removed.
        let _ = self.traced_pids.delete(&pid.to_ne_bytes());
        let _ = self.client_pids.delete(&pid.to_ne_bytes());
        [&self.server_calls, &self.goroutine_ctx, &self.db_calls, &self.matched_routes]
            .into_iter()
            .map(|map| delete_keys_of(map, pid))
            .sum()
    }

    pub fn stats(&self) -> ProbeStats {
        ProbeStats {
            ringbuf_full: sum_per_cpu(&self.stats, 0),
            returns_without_entry: sum_per_cpu(&self.stats, 1),
            tls_streams_full: sum_per_cpu(&self.stats, 2),
            requests_on_older_connections: sum_per_cpu(&self.stats, 3),
            requests_reused: sum_per_cpu(&self.stats, 4),
            entries_repeated: sum_per_cpu(&self.stats, 5),
        }
    }

    /// Points an object's declarations of the shared maps (those of bpf/include) at these
    /// maps before it loads; its own maps are left alone.
    pub(crate) fn reuse_in(
        &self,
        maps: &mut dyn Iterator<Item = OpenMapMut<'_>>,
    ) -> Result<(), Error> {
        for mut open in maps {
            let name = open.name().to_string_lossy().into_owned();
            let shared = match name.as_str() {
                "events" => &self.events,
                "traced_pids" => &self.traced_pids,
                "stats" => &self.stats,
                "goroutine_ctx" => &self.goroutine_ctx,
                "server_calls" => &self.server_calls,
                "conn_ctx" => &self.conn_ctx,
                "conn_published" => &self.conn_published,
                "stream_ctx" => &self.stream_ctx,
                "client_pids" => &self.client_pids,
                "db_calls" => &self.db_calls,
                "tls_streams" => &self.tls_streams,
                "enrolled_conns" => &self.enrolled_conns,
                "trace_states" => &self.trace_states,
                "matched_routes" => &self.matched_routes,
                _ => continue,
            };
            open.reuse_fd(shared.as_fd())
                .map_err(|source| Error::Bpf { what: format!("reuse map {name}"), source })?;
        }
        Ok(())
    }
}

/// Counter `index` of a per-CPU array of u64, summed over CPUs (0 if unreadable).
pub(crate) fn sum_per_cpu(map: &MapHandle, index: u32) -> u64 {
    match map.lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(per_cpu)) => per_cpu
            .iter()
            .filter_map(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
            .sum(),
        _ => 0,
    }
}

pub(crate) fn libbpf_sys_opts() -> libbpf_rs::libbpf_sys::bpf_map_create_opts {
    libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    }
}
