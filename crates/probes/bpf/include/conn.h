/* Same-host linking of a client span to the server span it causes, with no write into either
 * process: both ends find their TCP connection's addresses from the Go socket's file
 * descriptor through the kernel's own structures (CO-RE, so any kernel layout), and meet in
 * conn_ctx, keyed by (client address, server address). */
#pragma once

#include "gotel.h"
#include <bpf/bpf_core_read.h>

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10

/* Only the fields read, relocated against the running kernel's BTF. */
struct in6_addr {
	u8 s6_addr[16];
} __attribute__((preserve_access_index));
struct sock_common {
	u32 skc_daddr;
	u32 skc_rcv_saddr;
	u16 skc_dport; /* network order */
	u16 skc_num; /* host order */
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	int sk_wmem_queued;
	int sk_sndbuf;
} __attribute__((preserve_access_index));
struct unix_sock {
	struct sock *peer;
} __attribute__((preserve_access_index));
struct tcp_sock {
	u32 write_seq; /* the sequence number of the next byte queued to send */
} __attribute__((preserve_access_index));
struct file;
struct socket {
	struct sock *sk;
	struct file *file;
} __attribute__((preserve_access_index));
struct file {
	void *private_data;
} __attribute__((preserve_access_index));
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));
struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));
struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* One TCP connection, the same from both ends. IPv4 addresses fill the first 4 bytes. A
 * unix socket pair has no addresses: its two kernel sockets stand in for them (the client's,
 * the server's), ports 0. */
struct conn_key {
	u8 client_addr[16];
	u8 server_addr[16];
	u16 client_port;
	u16 server_port;
	u32 family;
};

/* Connection -> the client span whose request is on it (HTTP/1.1: one at a time). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct span_ctx);
} conn_ctx SEC(".maps");

/* When a client on this host last published a span in conn_ctx (CLOCK_MONOTONIC ns). Servers
 * look their connection up only when one did lately: the walk from the Go socket to the
 * kernel's is the larger part of their entry probe, wasted where every caller is on another
 * host. A client publishes before it sends its request, so no link is missed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} conn_published SEC(".maps");

#define CONN_PUBLISHED_LATELY_NS (10ULL * 1000000000)

static __always_inline void note_conn_published(u64 now)
{
	u32 zero = 0;
	u64 *at = bpf_map_lookup_elem(&conn_published, &zero);
	/* Written at most once a second: every CPU's clients share this cache line. */
	if (at && now - *at > 1000000000ULL)
		*at = now;
}

static __always_inline bool conns_published_lately(u64 now)
{
	u32 zero = 0;
	u64 *at = bpf_map_lookup_elem(&conn_published, &zero);
	return at && now - *at < CONN_PUBLISHED_LATELY_NS;
}

/* One HTTP/2 stream: many RPCs share a gRPC connection, told apart by stream id. */
struct stream_conn_key {
	struct conn_key conn;
	u32 stream_id;
	u32 _pad;
};

/* (connection, stream) -> the gRPC client span whose request opened the stream. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stream_conn_key);
	__type(value, struct span_ctx);
} stream_ctx SEC(".maps");

/* The W3C tracestate of traces continued on this host, by trace id: a server that joined an
 * incoming trace keeps it here, and injection sends it on beside the traceparent of the
 * trace's calls to other hosts. One longer than TRACE_STATE_CAP is not sent on (never cut). */
#define TRACE_STATE_CAP 256
struct trace_state {
	u32 len;
	char text[TRACE_STATE_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u8[16]);
	__type(value, struct trace_state);
} trace_states SEC(".maps");

/* An empty trace_state, to make an entry from (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct trace_state);
} no_trace_state SEC(".maps");

/* Keeps the tracestate an incoming request carried (`len` bytes of user memory at `text`)
 * for the trace's outgoing calls. */
static __always_inline void keep_trace_state(const u8 *trace_id, u64 text, u64 len)
{
	u32 zero = 0;
	struct trace_state *empty = bpf_map_lookup_elem(&no_trace_state, &zero);
	if (!empty || !text || len == 0 || len > TRACE_STATE_CAP)
		return;
	bpf_map_update_elem(&trace_states, trace_id, empty, BPF_ANY);
	struct trace_state *kept = bpf_map_lookup_elem(&trace_states, trace_id);
	if (!kept)
		return;
	u32 n = len;
	if (n > TRACE_STATE_CAP || bpf_probe_read_user(kept->text, n, (void *)text)) {
		bpf_map_delete_elem(&trace_states, trace_id);
		return;
	}
	kept->len = n;
}

/* Client connections injection enrolled as they were established (inject.bpf.c): a client
 * span published on another connection to another host goes out with nothing added. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, u8);
} enrolled_conns SEC(".maps");

static __always_inline bool server_on_loopback(const struct conn_key *key)
{
	if (key->family == AF_UNIX)
		return true; /* this host's, by definition */
	if (key->family == AF_INET)
		return key->server_addr[0] == 127;
	for (int i = 0; i < 15; i++) {
		if (key->server_addr[i])
			return false;
	}
	return key->server_addr[15] == 1;
}

/* Processes whose HTTP client gotel traces (marked by http_client.bpf.c when injection is
 * on): their connections are candidates for a traceparent line (inject.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u8);
} client_pids SEC(".maps");

/* Go struct offsets from the socket's owner down to its file descriptor, per executable:
 * net.Conn data (*net.TCPConn) -> TCPConn.conn.fd (*netFD) -> netFD.pfd.Sysfd. */
const volatile u64 off_tcpconn_fd = 0; /* TCPConn.conn + conn.fd */
const volatile u64 off_netfd_sysfd = 0; /* netFD.pfd + poll.FD.Sysfd */
const volatile bool has_conn_offsets = false;

/* crypto/tls.Conn.conn's data word: the *net.TCPConn a TLS connection runs on. */
const volatile u64 off_tlsconn_conn_data = 0;
const volatile bool has_tls_offsets = false;

/* The *net.TCPConn under a *tls.Conn, or 0 where that cannot be known. */
static __always_inline u64 go_conn_under_tls(u64 tlsconn)
{
	return has_tls_offsets && tlsconn ? read_u64(tlsconn + off_tlsconn_conn_data) : 0;
}

/* The dynamic types of a net.Conn seen through to the socket, told apart by the type hash
 * their itab carries (the agent reads the hashes from the binary's type descriptors): the
 * *net.TCPConn itself, a *tls.Conn over one (tls.Conn.conn), grpc's syscallConn around
 * either (its embedded net.Conn), and old grpc's tlsConn. */
const volatile u32 hash_tcpconn = 0;
const volatile u32 hash_unixconn = 0; /* *net.UnixConn: its conn.fd as a TCPConn's */
const volatile u32 hash_tlsconn = 0;
const volatile u32 hash_syscallconn = 0;
const volatile bool has_conn_types = false;
const volatile u64 off_syscallconn_conn = 0; /* syscallConn.Conn (net.Conn) */
/* grpc before 1.17 wraps TLS connections in a credentials.tlsConn value {*tls.Conn; rawConn}:
 * its rawConn (net.Conn) is the connection under TLS. */
const volatile u32 hash_grpc_tlsconn = 0;
const volatile u64 off_grpc_tlsconn_raw = 0;

/* The *net.TCPConn under the net.Conn (itab, data) at `iface`, or 0 for any other dynamic
 * type; `tls` set where a *tls.Conn was on the way. Without the hashes, the data word is taken
 * as the TCPConn. */
static __always_inline u64 go_tcpconn_in(u64 iface, bool *tls)
{
	if (!has_conn_types)
		return read_u64(iface + 8);
	for (int layer = 0; layer < 3; layer++) {
		u64 itab = read_u64(iface), data = read_u64(iface + 8);
		if (!itab || !data)
			return 0;
		u32 hash = 0;
		bpf_probe_read_user(&hash, sizeof(hash), (void *)(itab + ITAB_HASH));
		if (hash == hash_tcpconn || (hash == hash_unixconn && hash_unixconn))
			return data;
		if (hash == hash_tlsconn && hash_tlsconn && has_tls_offsets) {
			*tls = true;
			iface = data + off_tlsconn_conn_data - 8;
		} else if (hash == hash_syscallconn && hash_syscallconn) {
			iface = data + off_syscallconn_conn;
		} else if (hash == hash_grpc_tlsconn && hash_grpc_tlsconn) {
			*tls = true;
			iface = data + off_grpc_tlsconn_raw; /* data: the boxed value */
		} else {
			return 0;
		}
	}
	return 0;
}

/* Gives a span id the stream id's low 16 bits as its first two bytes: a TLS option carries a
 * trace id and a span id, and the receiver learns the stream from the span id. */
static __always_inline void tag_with_stream(u8 *span_id, u32 stream_id)
{
	span_id[0] = stream_id >> 8;
	span_id[1] = stream_id;
}

/* HTTP/2 over TLS: the streams a client socket opened whose spans await a segment to ride on,
 * oldest first. One writer (the goroutine that writes the connection's HEADERS frames: grpc's
 * loopy writer, or net/http's under ClientConn.reqHeaderMu), one reader (the socket's
 * transmit path): the writer fills a slot, then moves tail; the reader moves head. */
#define TLS_STREAM_SLOTS 8
struct tls_streams {
	u32 head;
	u32 tail;
	struct span_ctx slot[TLS_STREAM_SLOTS];
};

/* Enrolled TLS client sockets (inject.bpf.c makes the entry) -> their waiting streams. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct tls_streams);
} tls_streams SEC(".maps");

/* Queues a TLS stream's span for the TCP option of its socket's next segment (inject.bpf.c),
 * where that socket is enrolled; counted when its queue is full. */
static __always_inline void queue_tls_stream(const struct conn_key *conn,
					     const struct span_ctx *span)
{
	struct tls_streams *q = bpf_map_lookup_elem(&tls_streams, conn);
	if (!q)
		return; /* not enrolled: same host, or opened before gotel started */
	u32 tail = q->tail;
	if (tail - *(volatile u32 *)&q->head >= TLS_STREAM_SLOTS) {
		count(STAT_TLS_STREAMS_FULL);
		return;
	}
	q->slot[tail & (TLS_STREAM_SLOTS - 1)] = *span;
	__sync_fetch_and_add(&q->tail, 1); /* after the slot: the reader may take it now */
}

/* The connection behind a Go *net.TCPConn; false if it cannot be read. `client_side`: the
 * socket is the client's (local = client), else the server's. */
static __always_inline bool go_conn_key(u64 tcpconn, bool client_side, struct conn_key *key)
{
	if (!has_conn_offsets || !tcpconn)
		return false;
	u64 netfd = read_u64(tcpconn + off_tcpconn_fd);
	if (!netfd)
		return false;
	s64 fd = (s64)read_u64(netfd + off_netfd_sysfd);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return false;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return false;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	/* A socket's file points back at it: anything else is not a socket. */
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return false;
	struct sock_common *sk = (struct sock_common *)BPF_CORE_READ(sock, sk);
	if (!sk)
		return false;
	u16 family = BPF_CORE_READ(sk, skc_family);
	u16 local_port = BPF_CORE_READ(sk, skc_num);
	u16 remote_port = __builtin_bswap16(BPF_CORE_READ(sk, skc_dport));
	u8 *local = client_side ? key->client_addr : key->server_addr;
	u8 *remote = client_side ? key->server_addr : key->client_addr;
	__builtin_memset(key, 0, sizeof(*key));
	key->family = family;
	if (family == AF_INET) {
		u32 l = BPF_CORE_READ(sk, skc_rcv_saddr), r = BPF_CORE_READ(sk, skc_daddr);
		__builtin_memcpy(local, &l, 4);
		__builtin_memcpy(remote, &r, 4);
	} else if (family == AF_INET6) {
		bpf_core_read(local, 16, &sk->skc_v6_rcv_saddr);
		bpf_core_read(remote, 16, &sk->skc_v6_daddr);
	} else if (family == AF_UNIX) {
		u64 self = (u64)sk, peer = (u64)BPF_CORE_READ((struct unix_sock *)sk, peer);
		if (!peer)
			return false; /* not connected */
		__builtin_memcpy(local, &self, sizeof(self));
		__builtin_memcpy(remote, &peer, sizeof(peer));
	} else {
		return false;
	}
	key->client_port = client_side ? local_port : remote_port;
	key->server_port = client_side ? remote_port : local_port;
	return true;
}
