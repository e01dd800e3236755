/* Propagation to other hosts with no write into any process: a sockops program on the cgroup
 * v2 root puts the client sockets of traced processes into a sockhash when they connect (to
 * another host, unless loopback is asked for), and an sk_msg program adds a W3C traceparent as
 * the kernel sends them:
 * - plaintext HTTP/1.1: a `traceparent:` line after the request line of the request that the
 *   client span on that connection (conn_ctx) is sending;
 * - HTTP/2 without TLS (gRPC h2c): a header field at the end of the HEADERS frame that opens a
 *   stream a gRPC client span published (stream_ctx, by connection and stream id). A byte
 *   cursor follows every frame the socket sends from its connection preface on, so a frame is
 *   only ever recognised where one starts; at any inconsistency the socket is left alone for
 *   good.
 * - TLS: the bytes cannot be edited, so the client span rides in a TCP header option on the
 *   first segment after it is published (sockops writes it); the server's sockops reads it
 *   into conn_ctx (HTTP/1.1) or stream_ctx (gRPC: the span id names the stream), where its
 *   server span finds its parent as from a client on its host.
 * Anything unexpected means no insert: bytes are never altered unless the addition can be
 * written whole. */
#include "conn.h"

const volatile bool inject_loopback = false;
/* Enrolled sockets that turn out to speak TLS carry their client span in a TCP option. */
const volatile bool tls_option_send = false;
/* Accepted sockets look for that option (a server on this host is traced). */
const volatile bool tls_option_receive = false;

/* Client sockets that may carry a request to inject into. Sockets leave it when they close. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, u32);
} inject_socks SEC(".maps");

/* Socket cookie -> connecting, between TCP_CONNECT (the process's context) and ESTABLISHED. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, u8);
} connecting SEC(".maps");

/* Connection -> the span whose request already got its line (or was judged unsafe). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, u64);
} handled SEC(".maps");

enum inject_stat {
	INJECTED = 0,
	SKIPPED_NOT_HTTP1, /* the message did not start with an HTTP/1.x request line */
	SKIPPED_NO_ROOM, /* the kernel would not make room for the line */
	DROPPED_WRITE_FAILED, /* room was made but could not be written: message dropped */
	SKIPPED_HAS_TRACEPARENT, /* the request or call carries one already */
	H2_INJECTED,
	H2_SKIPPED_SPLIT, /* the HEADERS frame was cut across sends, or continued */
	H2_SKIPPED_TOO_BIG, /* the field would take the frame past 16384 bytes */
	H2_SKIPPED_PADDED, /* a padded HEADERS frame: left alone */
	H2_LOST, /* the frames made no sense: the socket is left alone from then on */
	H2_PARTLY_SENT, /* the kernel sent part of a message and handed the rest back: left alone */
	TLS_SENT, /* TLS requests whose context went out in a TCP option */
	TLS_NO_SPACE, /* TLS requests a segment had no option space for (once per request) */
	TLS_RECEIVED, /* contexts that arrived in a TCP option, for a server here */
	TLS_STREAMS_SENT, /* gRPC streams over TLS whose span went out in a TCP option */
	TLS_STREAMS_RECEIVED, /* and those that arrived */
	TLS_STREAMS_SHARED, /* streams passed over for a newer one: a segment carries one option */
	INJECT_STAT_MAX,
};

/* Where a socket's bytes are, so far: what it turned out to speak, and for HTTP/2 where its
 * next frame starts. */
#define CURSOR_NEW 0 /* nothing sent yet */
#define CURSOR_HTTP1 1
#define CURSOR_H2 2
#define CURSOR_LOST 3 /* HTTP/2 frames that made no sense: never touched again */
#define CURSOR_TLS 4 /* a TLS ClientHello first: the bytes are left alone, options carry spans */

#define H2_FRAME_HEADER 9

struct cursor {
	u64 sent; /* bytes the socket has sent, fields added included */
	u64 next_frame; /* where in those the next frame header starts */
	u32 end_seq; /* TCP's write_seq once the last message walked is queued whole */
	u64 tls_no_space; /* TLS: the span a segment last had no option space for */
	u8 state;
	u8 partial_len; /* bytes of a frame header the last message ended in the middle of */
	u8 partial[H2_FRAME_HEADER];
	u8 _pad[1];
};

/* Connection -> its cursor, from its establishment. A socket without one (evicted) gets the
 * HTTP/1.1 treatment only, which reads each request's line afresh. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct cursor);
} cursors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, INJECT_STAT_MAX);
	__type(key, u32);
	__type(value, u64);
} inject_stats SEC(".maps");

static __always_inline void inject_count_n(u32 which, u64 n)
{
	u64 *v = bpf_map_lookup_elem(&inject_stats, &which);
	if (v)
		*v += n;
}

static __always_inline void inject_count(u32 which)
{
	inject_count_n(which, 1);
}

/* What the kernel will do with a message, from its socket: where its first byte goes in the
 * stream (TCP's write_seq), and how much send buffer is free. A message the kernel cannot
 * queue whole is partly handed back to the program, which sends the rest again: an addition
 * in the part handed back would have the program resend bytes already sent. */
struct send_state {
	u32 seq;
	u32 room;
};

static __always_inline struct send_state send_state(struct sk_msg_md *msg)
{
	struct send_state st = {};
	struct bpf_sock *bsk = msg->sk;
	if (!bsk)
		return st;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return st;
	st.seq = BPF_CORE_READ(tp, write_seq);
	struct sock *sk = (struct sock *)tp;
	int queued = BPF_CORE_READ(sk, sk_wmem_queued), sndbuf = BPF_CORE_READ(sk, sk_sndbuf);
	st.room = sndbuf > queued ? (u32)(sndbuf - queued) : 0;
	return st;
}

/* Whether the message, `extra` bytes longer, is sure to be queued whole: room for three times
 * its size (socket buffers count a buffer's overhead too) and 8 KiB; twice and 4 KiB was seen
 * to fall short with 8 KiB buffers. */
static __always_inline bool queued_whole(const struct send_state *st, u32 size, u32 extra)
{
	return st->room >= 3 * (size + extra) + 8192;
}

/* Builds the key from a socket's view: the client is local unless `server_side`. Ports:
 * local in host order, remote in network order in the upper half of the word. */
static __always_inline void key_from(struct conn_key *k, u32 family, u32 local_ip4,
				     u32 remote_ip4, const u32 *local_ip6, const u32 *remote_ip6,
				     u32 local_port, u32 remote_port, bool server_side)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	u8 *local = server_side ? k->server_addr : k->client_addr;
	u8 *remote = server_side ? k->client_addr : k->server_addr;
	if (family == AF_INET) {
		__builtin_memcpy(local, &local_ip4, 4);
		__builtin_memcpy(remote, &remote_ip4, 4);
	} else {
		__builtin_memcpy(local, local_ip6, 16);
		__builtin_memcpy(remote, remote_ip6, 16);
	}
	u16 local_h = (u16)local_port, remote_h = (u16)(__builtin_bswap32(remote_port));
	k->client_port = server_side ? remote_h : local_h;
	k->server_port = server_side ? local_h : remote_h;
}

/* A sockops socket's key; `server_side`: an accepted socket. Read in one place per run
 * (inject_sockops): from several, clang may share the context reads between them through a
 * pointer the verifier refuses ("dereference of modified ctx ptr"). */
static __always_inline void sockops_key(struct bpf_sock_ops *skops, struct conn_key *key,
					bool server_side)
{
	u32 local6[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
			  skops->local_ip6[3] };
	u32 remote6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
			   skops->remote_ip6[3] };
	key_from(key, skops->family, skops->local_ip4, skops->remote_ip4, local6, remote6,
		 skops->local_port, skops->remote_port, server_side);
}

static __always_inline u64 span_id_of(const struct span_ctx *span)
{
	u64 id;
	__builtin_memcpy(&id, span->span_id, 8);
	return id;
}

/* The HTTP/1.1 client span published on a connection that nothing was decided for yet, or
 * none: a request's first message, or a TLS socket's first segment after it. */
static __always_inline struct span_ctx *unhandled_request(const struct conn_key *key)
{
	struct span_ctx *span = bpf_map_lookup_elem(&conn_ctx, key);
	if (!span)
		return 0;
	u64 *done = bpf_map_lookup_elem(&handled, key);
	return done && *done == span_id_of(span) ? 0 : span;
}

static __always_inline void mark_handled(const struct conn_key *key, const struct span_ctx *span)
{
	u64 span_id = span_id_of(span);
	bpf_map_update_elem(&handled, key, &span_id, BPF_ANY);
}

/* TLS: a client span's context in a TCP header option, RFC 6994's shared experimental kind
 * with experiment ids of our own: kind, length, ExID, trace id, span id: 28 bytes, what a
 * segment has beside the timestamp option. The ExID says what the span is: bit 0 the sampled
 * flag clear, bit 1 a gRPC stream's (its span id starts with the stream id's low 16 bits). */
#define TLS_OPT_KIND 253
#define TLS_OPT_LEN 28
#define TLS_OPT_EXID 0x6774
#define TLS_OPT_UNSAMPLED 1
#define TLS_OPT_STREAM 2

static __always_inline void tls_write_flag(struct bpf_sock_ops *skops, bool on)
{
	int flags = skops->bpf_sock_ops_cb_flags;
	int want = on ? flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG :
			flags & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
	if (want != flags)
		bpf_sock_ops_cb_flags_set(skops, want);
}

/* The newest gRPC stream span a TLS socket of ours has yet to send, or none; `tail` says
 * where the queue ended. A segment carries one option: the streams queued before the newest
 * had their HEADERS in this segment or an earlier one, so their option could only come late
 * (after the server took the stream up), and they are passed over. */
static __always_inline struct span_ctx *tls_pending_stream(struct tls_streams *q, u32 *tail)
{
	*tail = *(volatile u32 *)&q->tail;
	if (q->head == *tail)
		return 0;
	return &q->slot[(*tail - 1) & (TLS_STREAM_SLOTS - 1)];
}

/* HDR_OPT_LEN: room for the option where a segment may carry it. Sockets that turned out to
 * speak plaintext stop being asked. */
static __always_inline void tls_reserve(struct bpf_sock_ops *skops, const struct conn_key *key)
{
	struct cursor *cur = bpf_map_lookup_elem(&cursors, key);
	if (!cur)
		return; /* not enrolled here (another agent's, or evicted) */
	if (cur->state != CURSOR_NEW && cur->state != CURSOR_TLS) {
		tls_write_flag(skops, false);
		return;
	}
	/* The segment size is worked out with the most any segment will carry, so adding the
	 * option to a full segment never takes it past the path's MTU. */
	if (skops->args[0] == BPF_WRITE_HDR_TCP_CURRENT_MSS) {
		bpf_reserve_hdr_opt(skops, TLS_OPT_LEN, 0);
		return;
	}
	if (cur->state != CURSOR_TLS || skops->skb_len == 0)
		return; /* the handshake, or a bare ACK */
	struct tls_streams *q = bpf_map_lookup_elem(&tls_streams, key);
	u32 tail;
	if (q && tls_pending_stream(q, &tail)) {
		bpf_reserve_hdr_opt(skops, TLS_OPT_LEN, 0); /* else the next segment, if any */
		return;
	}
	struct span_ctx *span = unhandled_request(key);
	if (!span)
		return;
	if (span->flags & SPAN_HAS_TRACEPARENT) {
		/* Its own traceparent is in the encrypted request: the server reads that. */
		mark_handled(key, span);
		inject_count(SKIPPED_HAS_TRACEPARENT);
		return;
	}
	if (bpf_reserve_hdr_opt(skops, TLS_OPT_LEN, 0)) {
		/* SACK blocks took the space: the next segment may have it. */
		if (cur->tls_no_space != span_id_of(span))
			inject_count(TLS_NO_SPACE);
		cur->tls_no_space = span_id_of(span);
	}
}

/* WRITE_HDR_OPT: the option in the space reserved. */
static __always_inline void tls_write(struct bpf_sock_ops *skops, const struct conn_key *key)
{
	struct cursor *cur = bpf_map_lookup_elem(&cursors, key);
	if (!cur || cur->state != CURSOR_TLS)
		return;
	struct tls_streams *q = bpf_map_lookup_elem(&tls_streams, key);
	u32 tail = 0;
	struct span_ctx *stream = q ? tls_pending_stream(q, &tail) : 0;
	struct span_ctx *span = stream ? stream : unhandled_request(key);
	if (!span)
		return; /* the kernel fills the space with NOPs */
	u16 exid = TLS_OPT_EXID | (span->sampled ? 0 : TLS_OPT_UNSAMPLED) |
		   (stream ? TLS_OPT_STREAM : 0);
	u8 opt[TLS_OPT_LEN] = { TLS_OPT_KIND, TLS_OPT_LEN, exid >> 8, exid & 0xff };
	__builtin_memcpy(opt + 4, span->trace_id, 16);
	__builtin_memcpy(opt + 20, span->span_id, 8);
	if (bpf_store_hdr_opt(skops, opt, sizeof(opt), 0))
		return;
	if (stream) {
		inject_count_n(TLS_STREAMS_SHARED, tail - q->head - 1);
		q->head = tail; /* after the copy: the slots are the writer's again */
		inject_count(TLS_STREAMS_SENT);
		return;
	}
	mark_handled(key, span);
	inject_count(TLS_SENT);
}

/* What an accepted connection's options said last: the span id (a segment cut up by
 * segmentation offload repeats its options, and a repeat after the server took the context
 * must not put it back), and the last gRPC stream's full id, from which the next one's is
 * known from its low 16 bits (a client opens streams in increasing order). */
struct tls_seen {
	u64 span_id;
	u32 stream_id;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct tls_seen);
} tls_seen SEC(".maps");

/* Looks for our option with `exid`: true if found whole in `opt`. */
static __always_inline bool tls_load(struct bpf_sock_ops *skops, u8 *opt, u16 exid)
{
	__builtin_memset(opt, 0, TLS_OPT_LEN);
	opt[0] = TLS_OPT_KIND;
	opt[1] = 4; /* a 2-byte ExID to match */
	opt[2] = exid >> 8;
	opt[3] = exid & 0xff;
	return bpf_load_hdr_opt(skops, opt, TLS_OPT_LEN, 0) == TLS_OPT_LEN;
}

/* PARSE_HDR_OPT (a segment with an option the kernel does not know): the client span, for
 * the server span of the request on this connection. */
static __always_inline void tls_receive(struct bpf_sock_ops *skops, const struct conn_key *key)
{
	u8 opt[TLS_OPT_LEN];
	u16 exid = 0;
	for (u16 kind = 0; kind < 4; kind++) {
		if (tls_load(skops, opt, TLS_OPT_EXID | kind)) {
			exid = TLS_OPT_EXID | kind;
			break;
		}
	}
	if (!exid)
		return;
	struct tls_seen fresh = {}, *seen = bpf_map_lookup_elem(&tls_seen, key);
	if (!seen) {
		bpf_map_update_elem(&tls_seen, key, &fresh, BPF_ANY);
		seen = bpf_map_lookup_elem(&tls_seen, key);
		if (!seen)
			return;
	}
	u64 span_id;
	__builtin_memcpy(&span_id, opt + 20, 8);
	if (seen->span_id == span_id)
		return;
	seen->span_id = span_id;
	struct span_ctx span = span_ctx_of(opt + 4, opt + 20, !(exid & TLS_OPT_UNSAMPLED));
	if (!(exid & TLS_OPT_STREAM)) {
		note_conn_published(bpf_ktime_get_ns());
		bpf_map_update_elem(&conn_ctx, key, &span, BPF_ANY);
		inject_count(TLS_RECEIVED);
		return;
	}
	/* The stream whose low 16 bits the span id starts with, next after the last one. */
	u32 low = ((u32)opt[20] << 8) | opt[21];
	u32 stream = (seen->stream_id & ~0xffffu) | low;
	if (stream <= seen->stream_id)
		stream += 0x10000;
	seen->stream_id = stream;
	struct stream_conn_key sk = { .conn = *key, .stream_id = stream };
	note_conn_published(bpf_ktime_get_ns());
	bpf_map_update_elem(&stream_ctx, &sk, &span, BPF_ANY);
	inject_count(TLS_STREAMS_RECEIVED);
}

SEC("sockops")
int inject_sockops(struct bpf_sock_ops *skops)
{
	u32 family = skops->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	u32 op = skops->op;
	/* The socket's connection, seen from its end: accepted sockets are the server's. */
	struct conn_key key;
	sockops_key(skops, &key,
		    op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PARSE_HDR_OPT_CB);
	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		u32 pid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&client_pids, &pid))
			return 1;
		if (!inject_loopback && server_on_loopback(&key))
			return 1;
		u64 cookie = bpf_get_socket_cookie(skops);
		u8 one = 1;
		bpf_map_update_elem(&connecting, &cookie, &one, BPF_ANY);
		break;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		u64 cookie = bpf_get_socket_cookie(skops);
		if (!bpf_map_lookup_elem(&connecting, &cookie))
			return 1;
		bpf_map_delete_elem(&connecting, &cookie);
		struct cursor fresh = {};
		bpf_map_update_elem(&cursors, &key, &fresh, BPF_ANY);
		/* Whatever an earlier connection between these addresses left. */
		bpf_map_delete_elem(&handled, &key);
		bpf_map_delete_elem(&conn_ctx, &key);
		bpf_sock_hash_update(skops, &inject_socks, &key, BPF_NOEXIST);
		u8 one = 1;
		bpf_map_update_elem(&enrolled_conns, &key, &one, BPF_ANY);
		if (tls_option_send)
			tls_write_flag(skops, true);
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		if (!tls_option_receive)
			return 1;
		bpf_map_delete_elem(&tls_seen, &key);
		/* Called only for segments with an option the kernel does not know: free else. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		break;
	}
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		tls_reserve(skops, &key);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		tls_write(skops, &key);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		if (tls_option_receive)
			tls_receive(skops, &key);
		break;
	}
	return 1;
}

#define LINE_MAX 256

static __always_inline char hex_digit(u8 v)
{
	return v < 10 ? '0' + v : 'a' + v - 10;
}

/* Writes the 55 characters of a traceparent value for `span` at `out`. */
static __always_inline void traceparent_value(char *out, const struct span_ctx *span)
{
	out[0] = '0';
	out[1] = '0';
	out[2] = '-';
	for (int i = 0; i < 16; i++) {
		out[3 + 2 * i] = hex_digit(span->trace_id[i] >> 4);
		out[4 + 2 * i] = hex_digit(span->trace_id[i] & 0xf);
	}
	out[35] = '-';
	for (int i = 0; i < 8; i++) {
		out[36 + 2 * i] = hex_digit(span->span_id[i] >> 4);
		out[37 + 2 * i] = hex_digit(span->span_id[i] & 0xf);
	}
	out[52] = '-';
	out[53] = '0';
	out[54] = span->sampled ? '1' : '0';
}

/* What a request gets: its traceparent, and its trace's tracestate where this host keeps one
 * (trace_states), as HTTP/1.1 header lines or as HPACK fields. Built per CPU (too big for the
 * stack). */
#define INSERT_CAP 512
struct insertion {
	u32 len;
	u8 bytes[INSERT_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct insertion);
} insertions SEC(".maps");

/* Appends `n` bytes of `text` at ins->bytes[at...]; the new end. */
static __always_inline u32 append(struct insertion *ins, u32 at, const char *text, u32 n)
{
	for (u32 i = 0; i < TRACE_STATE_CAP; i++) { /* the longest: a tracestate */
		if (i >= n)
			break;
		ins->bytes[(at + i) & (INSERT_CAP - 1)] = text[i];
	}
	return at + n;
}

static __always_inline struct insertion *insertion_for(const struct span_ctx *span, bool h2)
{
	u32 zero = 0;
	struct insertion *ins = bpf_map_lookup_elem(&insertions, &zero);
	if (!ins)
		return 0;
	/* HPACK: a literal field without indexing, its name literal too, so neither side's
	 * table changes: 0x00, the name's length and text, the value's length and text. */
	u32 n = h2 ? append(ins, 0, "\x00\x0btraceparent\x37", 14) : append(ins, 0, "traceparent: ", 13);
	traceparent_value((char *)ins->bytes + n, span);
	n += 55; /* its value */
	if (!h2)
		n = append(ins, n, "\r\n", 2);
	struct trace_state *state = bpf_map_lookup_elem(&trace_states, span->trace_id);
	u32 len = state ? state->len : 0;
	if (len > 0 && len <= TRACE_STATE_CAP) {
		if (!h2) {
			n = append(ins, n, "tracestate: ", 12);
		} else if (len < 127) { /* the length, an integer with a 7-bit prefix */
			char head[13] = "\x00\x0atracestate";
			head[12] = len;
			n = append(ins, n, head, 13);
		} else {
			u32 rest = len - 127; /* 0..129 */
			char head[15] = "\x00\x0atracestate\x7f";
			head[13] = rest < 128 ? rest : (rest & 0x7f) | 0x80;
			head[14] = rest >> 7;
			n = append(ins, n, head, rest < 128 ? 14 : 15);
		}
		n = append(ins, n, state->text, len);
		if (!h2)
			n = append(ins, n, "\r\n", 2);
	}
	ins->len = n;
	return ins;
}

/* Writes the insertion at `at`, where the message has a gap of its length; false if the
 * message's bytes there cannot be reached (then it must be dropped). */
static __always_inline bool fill_gap(struct sk_msg_md *msg, u32 at, const struct insertion *ins)
{
	u32 len = ins->len;
	if (len > INSERT_CAP || bpf_msg_pull_data(msg, at, at + len, 0))
		return false;
	u8 *data = msg->data, *end = msg->data_end;
	for (u32 i = 0; i < INSERT_CAP; i++) {
		if (i >= len)
			break;
		if (data + i + 1 > end)
			return false;
		data[i] = ins->bytes[i];
	}
	return true;
}

/* Plaintext HTTP/1.1: the traceparent line after the request line. */
static __always_inline int inject_http1(struct sk_msg_md *msg, struct conn_key *key)
{
	struct span_ctx *span = unhandled_request(key);
	if (!span)
		return SK_PASS; /* none, or the rest of a request already handled: its body */
	/* Decided once per request: whatever happens below, later messages are its body. */
	mark_handled(key, span);
	if (span->flags & SPAN_HAS_TRACEPARENT) {
		inject_count(SKIPPED_HAS_TRACEPARENT);
		return SK_PASS;
	}

	u32 len = msg->size < LINE_MAX ? msg->size : LINE_MAX;
	if (len < 16 || bpf_msg_pull_data(msg, 0, len, 0)) {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}
	u8 *data = msg->data, *end = msg->data_end;
	/* "METHOD /target HTTP/1.x\r\n": a token, a space, a target, " HTTP/1.", CRLF. */
	u32 eol = 0;
	for (u32 i = 1; i < LINE_MAX - 1; i++) {
		if (data + i + 2 > end)
			break;
		if (data[i] == '\r' && data[i + 1] == '\n') {
			eol = i;
			break;
		}
	}
	if (eol < 14 || data + eol > end || data + 1 > end || data[0] < 'A' || data[0] > 'Z') {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}
	u8 *v = data + eol - 8;
	if (v < data || v + 8 > end || v[0] != 'H' || v[1] != 'T' || v[2] != 'T' || v[3] != 'P' ||
	    v[4] != '/' || v[5] != '1' || v[6] != '.' || v[-1] != ' ') {
		inject_count(SKIPPED_NOT_HTTP1);
		return SK_PASS;
	}

	struct insertion *ins = insertion_for(span, false);
	struct send_state st = send_state(msg);
	if (!ins || !queued_whole(&st, msg->size, ins->len)) {
		inject_count(SKIPPED_NO_ROOM);
		return SK_PASS;
	}
	u32 at = eol + 2;
	if (bpf_msg_push_data(msg, at, ins->len, 0)) {
		inject_count(SKIPPED_NO_ROOM);
		return SK_PASS;
	}
	/* From here the message has a gap: write it whole or drop the message. */
	if (!fill_gap(msg, at, ins)) {
		inject_count(DROPPED_WRITE_FAILED);
		return SK_DROP;
	}
	inject_count(INJECTED);
	return SK_PASS;
}

/* HTTP/2 */
#define H2_DATA 0
#define H2_HEADERS 1
#define H2_PRIORITY 2
#define H2_RST_STREAM 3
#define H2_SETTINGS 4
#define H2_PUSH_PROMISE 5
#define H2_PING 6
#define H2_GOAWAY 7
#define H2_WINDOW_UPDATE 8
#define H2_CONTINUATION 9
#define H2_END_HEADERS 0x4
#define H2_PADDED 0x8
#define H2_MAX_FRAME 16384 /* no peer may take less */
#define H2_FRAMES_PER_MSG 8192 /* a 64 KiB send of the smallest frames grpc-go writes */
#define H2_PREFACE_LEN 24

struct frame_header {
	u32 len;
	u8 type;
	u8 flags;
	u32 stream;
};

static __always_inline struct frame_header parse_frame_header(const u8 *h)
{
	struct frame_header f = {
		.len = ((u32)h[0] << 16) | ((u32)h[1] << 8) | h[2],
		.type = h[3],
		.flags = h[4],
		.stream = (((u32)h[5] << 24) | ((u32)h[6] << 16) | ((u32)h[7] << 8) | h[8]) &
			  0x7fffffff,
	};
	return f;
}

/* Whether a client could have sent this frame: a cursor that lost its place reads noise,
 * which this tells apart soon (types, stream ids and fixed lengths must fit). */
static __always_inline bool frame_plausible(const struct frame_header *f)
{
	switch (f->type) {
	case H2_DATA:
	case H2_HEADERS:
	case H2_CONTINUATION:
		return f->stream != 0;
	case H2_PRIORITY:
		return f->stream != 0 && f->len == 5;
	case H2_RST_STREAM:
		return f->stream != 0 && f->len == 4;
	case H2_SETTINGS:
		return f->stream == 0 && f->len % 6 == 0;
	case H2_PING:
		return f->stream == 0 && f->len == 8;
	case H2_GOAWAY:
		return f->stream == 0 && f->len >= 8;
	case H2_WINDOW_UPDATE:
		return f->len == 4;
	default: /* PUSH_PROMISE is the server's; anything else grpc-go never sends */
		return false;
	}
}

/* The span a client published for the stream a HEADERS frame opens, taken once: a later
 * HEADERS frame of the stream (trailers) finds nothing. */
static __always_inline bool take_stream_span(const struct conn_key *key, u32 stream,
					     struct span_ctx *out)
{
	struct stream_conn_key sk = { .conn = *key, .stream_id = stream };
	struct span_ctx *published = bpf_map_lookup_elem(&stream_ctx, &sk);
	if (!published)
		return false;
	*out = *published;
	bpf_map_delete_elem(&stream_ctx, &sk);
	return true;
}

/* The HEADERS frame at `off` (payload `f->len` bytes) opens a stream: if a client span
 * published it, its traceparent field goes at the end of the header block. Returns the bytes
 * added (0 or the insertion's length), or -1 when the message must be dropped. */
static __always_inline int h2_headers(struct sk_msg_md *msg, const struct conn_key *key, u32 off,
				      const struct frame_header *f, const struct send_state *st)
{
	struct span_ctx span;
	if (!take_stream_span(key, f->stream, &span))
		return 0;
	if (span.flags & SPAN_HAS_TRACEPARENT) {
		inject_count(SKIPPED_HAS_TRACEPARENT);
		return 0;
	}
	if (!(f->flags & H2_END_HEADERS) || off + H2_FRAME_HEADER + f->len > msg->size) {
		inject_count(H2_SKIPPED_SPLIT);
		return 0;
	}
	if (f->flags & H2_PADDED) {
		inject_count(H2_SKIPPED_PADDED);
		return 0;
	}
	struct insertion *ins = insertion_for(&span, true);
	if (!ins) {
		inject_count(SKIPPED_NO_ROOM);
		return 0;
	}
	u32 added = ins->len;
	if (f->len + added > H2_MAX_FRAME) {
		inject_count(H2_SKIPPED_TOO_BIG);
		return 0;
	}
	if (!queued_whole(st, msg->size, added)) {
		inject_count(SKIPPED_NO_ROOM);
		return 0;
	}
	u32 at = off + H2_FRAME_HEADER + f->len;
	if (bpf_msg_push_data(msg, at, added, 0)) {
		inject_count(SKIPPED_NO_ROOM);
		return 0;
	}
	/* From here the frame has a gap: fill it and fix the length, or drop the message. */
	if (!fill_gap(msg, at, ins))
		goto drop;
	if (bpf_msg_pull_data(msg, off, off + 3, 0))
		goto drop;
	u8 *data = msg->data;
	if (data + 3 > (u8 *)msg->data_end)
		goto drop;
	u32 len = f->len + added;
	data[0] = len >> 16;
	data[1] = len >> 8;
	data[2] = len;
	inject_count(H2_INJECTED);
	return added;
drop:
	inject_count(DROPPED_WRITE_FAILED);
	return -1;
}

static __always_inline int h2_lost(struct cursor *cur)
{
	if (cur->state != CURSOR_LOST)
		inject_count(H2_LOST);
	cur->state = CURSOR_LOST;
	return SK_PASS;
}

/* One message's walk over its frames, a frame per bpf_loop step: the verifier checks the
 * step once, not once per frame. */
struct h2_walk {
	struct sk_msg_md *msg;
	struct cursor *cur;
	u64 start; /* where the message starts in the socket's bytes */
	struct conn_key key;
	struct send_state send;
	int verdict;
	bool walked; /* every frame header that starts in the message was read */
};

static long h2_frame(u64 index, void *ctx)
{
	struct h2_walk *w = ctx;
	struct sk_msg_md *msg = w->msg;
	struct cursor *cur = w->cur;
	u32 size = msg->size; /* grows with each field added */
	if (cur->next_frame >= w->start + size) {
		w->walked = true;
		return 1;
	}
	u32 off = cur->next_frame - w->start;
	if (off + H2_FRAME_HEADER > size) {
		/* The header goes on in the next message: keep what is here. */
		u32 have = size - off;
		if (bpf_msg_pull_data(msg, off, size, 0)) {
			h2_lost(cur);
			return 1;
		}
		u8 *data = msg->data;
		for (int b = 0; b < H2_FRAME_HEADER - 1; b++) {
			if (b < have && data + b + 1 <= (u8 *)msg->data_end)
				cur->partial[b] = data[b];
		}
		cur->partial_len = have;
		w->walked = true;
		return 1;
	}
	if (bpf_msg_pull_data(msg, off, off + H2_FRAME_HEADER, 0)) {
		h2_lost(cur);
		return 1;
	}
	u8 *data = msg->data;
	if (data + H2_FRAME_HEADER > (u8 *)msg->data_end) {
		h2_lost(cur);
		return 1;
	}
	struct frame_header f = parse_frame_header(data);
	if (!frame_plausible(&f)) {
		h2_lost(cur);
		return 1;
	}
	int added = 0;
	if (f.type == H2_HEADERS)
		added = h2_headers(msg, &w->key, off, &f, &w->send);
	if (added < 0) {
		w->verdict = SK_DROP;
		return 1;
	}
	cur->next_frame += H2_FRAME_HEADER + f.len + added;
	return 0;
}

/* Follows the frames of one message from the socket's cursor on. */
static __always_inline int inject_h2(struct sk_msg_md *msg, const struct conn_key *key,
				     struct cursor *cur, const struct send_state *st)
{
	u64 start = cur->sent; /* where this message starts in the socket's bytes */
	u32 size = msg->size;
	if (st->seq != cur->end_seq) {
		/* The last message was not queued whole: its rest comes again, and the cursor
		 * counted it. Rather than guess where frames are, stop here for good. */
		cur->state = CURSOR_LOST;
		inject_count(H2_PARTLY_SENT);
		return SK_PASS;
	}
	if (cur->partial_len) {
		/* The rest of a frame header the last message ended in. */
		u32 have = cur->partial_len, need = H2_FRAME_HEADER - have;
		if (have >= H2_FRAME_HEADER || need > size)
			return h2_lost(cur); /* a header cut twice: never seen from grpc-go */
		if (bpf_msg_pull_data(msg, 0, need, 0))
			return h2_lost(cur);
		u8 *data = msg->data;
		u8 h[H2_FRAME_HEADER];
		for (int i = 0; i < H2_FRAME_HEADER; i++) {
			if (i < have)
				h[i] = cur->partial[i];
			else if (data + (i - have) + 1 <= (u8 *)msg->data_end)
				h[i] = data[i - have];
			else
				return h2_lost(cur);
		}
		struct frame_header f = parse_frame_header(h);
		if (!frame_plausible(&f))
			return h2_lost(cur);
		struct span_ctx span;
		if (f.type == H2_HEADERS && take_stream_span(key, f.stream, &span))
			inject_count(H2_SKIPPED_SPLIT);
		cur->next_frame += H2_FRAME_HEADER + f.len;
		cur->partial_len = 0;
	}
	struct h2_walk w = {
		.msg = msg, .cur = cur, .start = start, .key = *key, .send = *st, .verdict = SK_PASS
	};
	bpf_loop(H2_FRAMES_PER_MSG, h2_frame, &w, 0);
	if (w.verdict != SK_PASS)
		return w.verdict;
	if (!w.walked)
		return h2_lost(cur); /* more frames than followed: the place is lost */
	size = msg->size;
	cur->sent = start + size;
	cur->end_seq = st->seq + size;
	return SK_PASS;
}

/* The connection preface every HTTP/2 client starts with. */
static __always_inline bool starts_with_preface(struct sk_msg_md *msg)
{
	if (msg->size < H2_PREFACE_LEN || bpf_msg_pull_data(msg, 0, H2_PREFACE_LEN, 0))
		return false;
	u8 *data = msg->data;
	if (data + H2_PREFACE_LEN > (u8 *)msg->data_end)
		return false;
	const char preface[H2_PREFACE_LEN + 1] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	for (int i = 0; i < H2_PREFACE_LEN; i++) {
		if (data[i] != (u8)preface[i])
			return false;
	}
	return true;
}

/* An empty tls_streams, to make one from (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tls_streams);
} no_streams SEC(".maps");

/* A TLS record of the handshake, as a ClientHello starts: 0x16, version 3.x. */
static __always_inline bool starts_with_client_hello(struct sk_msg_md *msg)
{
	if (msg->size < 5 || bpf_msg_pull_data(msg, 0, 3, 0))
		return false;
	u8 *data = msg->data;
	if (data + 3 > (u8 *)msg->data_end)
		return false;
	return data[0] == 0x16 && data[1] == 3 && data[2] >= 1 && data[2] <= 4;
}

SEC("sk_msg")
int inject_sk_msg(struct sk_msg_md *msg)
{
	u32 family = msg->family;
	u32 local6[4] = { msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
			  msg->local_ip6[3] };
	u32 remote6[4] = { msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
			   msg->remote_ip6[3] };
	struct conn_key key;
	key_from(&key, family, msg->local_ip4, msg->remote_ip4, local6, remote6, msg->local_port,
		 msg->remote_port, false);
	struct cursor *cur = bpf_map_lookup_elem(&cursors, &key);
	if (!cur)
		return inject_http1(msg, &key);
	bool preface = false;
	if (cur->state == CURSOR_NEW) {
		preface = starts_with_preface(msg);
		cur->state = preface ? CURSOR_H2 : starts_with_client_hello(msg) ? CURSOR_TLS :
								      CURSOR_HTTP1;
		if (cur->state == CURSOR_TLS && tls_option_send) {
			/* Where a gRPC client queues its streams' spans. */
			u32 zero = 0;
			struct tls_streams *empty = bpf_map_lookup_elem(&no_streams, &zero);
			if (empty)
				bpf_map_update_elem(&tls_streams, &key, empty, BPF_ANY);
		}
	}
	if (cur->state == CURSOR_HTTP1)
		return inject_http1(msg, &key);
	if (cur->state != CURSOR_H2)
		return SK_PASS;
	/* Read per message only on HTTP/2 sockets, whose cursor follows TCP's write_seq. */
	struct send_state st = send_state(msg);
	if (preface) {
		cur->next_frame = H2_PREFACE_LEN;
		cur->end_seq = st.seq;
	}
	return inject_h2(msg, &key, cur, &st);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
