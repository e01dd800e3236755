/* net/http client spans: uprobes at the entry and exits of net/http.(*Transport).roundTrip, or
 * of golang.org/x/net/http2's Transport.roundTripOpt where a program uses that library's
 * transport directly. The span is a child of whatever span the calling goroutine works for
 * (goroutine_span). */
#include "conn.h"
#include "traceparent.h"

const volatile u64 off_req_method = 0;
const volatile u64 off_req_url = 0;
const volatile u64 off_url_scheme = 0;
const volatile u64 off_url_host = 0;
const volatile u64 off_url_path = 0;
const volatile u64 off_url_raw_query = 0;
const volatile u64 off_resp_status_code = 0;
const volatile u64 off_resp_proto_major = 0;
const volatile u64 off_resp_proto_minor = 0;
/* Mark this process in client_pids, for traceparent injection on its connections. */
const volatile bool mark_client_pids = false;
/* persistConn.conn's data word: the *net.TCPConn of a plain connection, the *tls.Conn of
 * one where persistConn.tlsState is set. */
const volatile u64 off_pconn_conn_data = 0;
const volatile u64 off_pconn_tls_state = 0;
/* With injection on: look for a traceparent the request carries already (traceparent.h). */
const volatile bool check_own_traceparent = false;
/* HTTP/2: clientStream.cc and .ID, ClientConn.tconn (a net.Conn); of net/http's bundled client
 * (net/http/internal/http2 from Go 1.27), and of golang.org/x/net/http2's. */
struct h2_offsets {
	u64 cs_cc, cs_id, cc_tconn;
};
const volatile struct h2_offsets std_h2 = {};
const volatile struct h2_offsets xnet_h2 = {};

#define METHOD_CAP 16
#define SCHEME_CAP 16
#define HOST_CAP 128
#define PATH_CAP 256
#define QUERY_CAP 256

struct http_client_event {
	struct span_header hdr;
	u16 status; /* 0: no response */
	u8 proto_major;
	u8 proto_minor;
	u8 failed; /* roundTrip returned an error */
	u8 _pad[3];
	u16 method_len, scheme_len, host_len, path_len, query_len, _pad2;
	char method[METHOD_CAP];
	char scheme[SCHEME_CAP];
	char host[HOST_CAP];
	char path[PATH_CAP];
	char query[QUERY_CAP];
	struct span_link link;
};

struct client_call {
	u64 start_ns;
	u64 req;
	struct span_ctx ctx;
	u8 parent_span_id[8];
	struct span_link link;
	/* Begun by x/net's transport, which ends it; else net/http's roundTrip does. */
	u8 by_xnet;
	u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct client_call);
} client_calls SEC(".maps");

/* Goroutines in net/http's Transport that hand a request to x/net's (http2.ConfigureTransport):
 * the net/http span covers it, and x/net's transport, entered next, makes none. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct goroutine_key);
	__type(value, u8);
} handed_to_xnet SEC(".maps");

/* Both transports' round trips: func (t *Transport) roundTrip(req *Request) (*Response,
 * error), and x/net's roundTripOpt(req, opt), req in ARG2. */
static __always_inline int begin_call(struct pt_regs *ctx, u8 by_xnet)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (by_xnet && bpf_map_delete_elem(&handed_to_xnet, &key) == 0)
		return 0;
	struct client_call call = {
		.start_ns = bpf_ktime_get_ns(), .req = GO_ARG2(ctx), .by_xnet = by_xnet
	};
	if (mark_client_pids && !bpf_map_lookup_elem(&client_pids, &pid)) {
		u8 one = 1;
		bpf_map_update_elem(&client_pids, &pid, &one, BPF_ANY);
	}
	start_span_ctx(&key, &call.ctx, call.parent_span_id);
	bpf_map_update_elem(&client_calls, &key, &call, BPF_ANY);
	return 0;
}

SEC("uprobe")
int http_client_enter(struct pt_regs *ctx)
{
	return begin_call(ctx, 0);
}

SEC("uprobe")
int http_client_xnet_enter(struct pt_regs *ctx)
{
	return begin_call(ctx, 1);
}

/* golang.org/x/net/http2.noDialH2RoundTripper.RoundTrip: net/http's Transport, upgraded by
 * ConfigureTransport, passes its request to x/net's, on the same goroutine, right away. */
SEC("uprobe")
int http_client_xnet_handoff(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (!bpf_map_lookup_elem(&client_calls, &key))
		return 0;
	u8 one = 1;
	bpf_map_update_elem(&handed_to_xnet, &key, &one, BPF_ANY);
	return 0;
}

/* Looks for a traceparent the request carries already: set by an SDK in the process, or
 * passed on from its caller. Injection then adds none, and the span links to it. */
static __always_inline void note_own_traceparent(struct client_call *call)
{
	if (!check_own_traceparent)
		return;
	struct incoming own;
	incoming_traceparent(call->req, &own);
	if (own.value)
		call->ctx.flags |= SPAN_HAS_TRACEPARENT;
	if (own.found) /* parsed by the search already */
		link_to(&own, &call->link);
}

/* net/http.(*persistConn).roundTrip: the connection the request goes out on is known here,
 * before the request is written. Publishes the client span for the server at the other end. */
SEC("uprobe")
int http_client_conn(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&client_calls, &key);
	if (!call)
		return 0;
	note_own_traceparent(call);
	u64 pc = GO_ARG1(ctx);
	u64 tcpconn = read_u64(pc + off_pconn_conn_data);
	if (read_u64(pc + off_pconn_tls_state))
		tcpconn = go_conn_under_tls(tcpconn);
	struct conn_key conn;
	if (go_conn_key(tcpconn, true, &conn)) {
		note_conn_published(bpf_ktime_get_ns());
		bpf_map_update_elem(&conn_ctx, &conn, &call->ctx, BPF_ANY);
		/* Opened before gotel started (or before this process was traced): left alone. */
		if (mark_client_pids && !server_on_loopback(&conn) &&
		    !bpf_map_lookup_elem(&enrolled_conns, &conn))
			count(STAT_NOT_ENROLLED);
	}
	return 0;
}

/* An HTTP/2 request on its way from the caller's goroutine to the one that writes its
 * HEADERS frame (ClientConn.roundTrip starts it), by the request the two share. */
struct h2_request_key {
	u32 pid;
	u32 _pad;
	u64 req;
};

struct h2_request {
	struct goroutine_key caller;
	u8 span_id[8]; /* the call's: a stale entry never meets another call of the caller */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct h2_request_key);
	__type(value, struct h2_request);
} h2_requests SEC(".maps");

/* func (cc *ClientConn) roundTrip(req, streamf) (RoundTrip before Go 1.23): req in ARG2, on
 * the caller's goroutine, inside Transport.roundTrip. */
SEC("uprobe")
int http_client_h2_round_trip(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&client_calls, &key);
	if (!call)
		return 0;
	note_own_traceparent(call);
	struct h2_request_key rk = { .pid = pid, .req = GO_ARG2(ctx) };
	struct h2_request r = { .caller = key };
	__builtin_memcpy(r.span_id, call->ctx.span_id, sizeof(r.span_id));
	bpf_map_update_elem(&h2_requests, &rk, &r, BPF_ANY);
	return 0;
}

/* func (cs *clientStream) encodeAndWriteHeaders(req): cs in ARG1, req in ARG2, on the stream's
 * goroutine, with its id assigned, before its HEADERS frame is written. Under
 * ClientConn.reqHeaderMu, so a connection's streams come here one at a time, in id order. The
 * stream's span is published for the server at the other end (same host), for sk_msg (h2c),
 * or queued for its socket's TCP option (TLS), tagged with the stream id. */
static __always_inline int h2_headers(struct pt_regs *ctx, const volatile struct h2_offsets *off)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct h2_request_key rk = { .pid = pid, .req = GO_ARG2(ctx) };
	struct h2_request *r = bpf_map_lookup_elem(&h2_requests, &rk);
	if (!r)
		return 0;
	struct h2_request req = *r;
	bpf_map_delete_elem(&h2_requests, &rk);
	struct client_call *call = bpf_map_lookup_elem(&client_calls, &req.caller);
	if (!call || __builtin_memcmp(call->ctx.span_id, req.span_id, sizeof(req.span_id)))
		return 0;
	u64 cs = GO_ARG1(ctx);
	struct stream_conn_key sk = {};
	bpf_probe_read_user(&sk.stream_id, sizeof(sk.stream_id), (void *)(cs + off->cs_id));
	bool tls = false;
	u64 tcpconn = go_tcpconn_in(read_u64(cs + off->cs_cc) + off->cc_tconn, &tls);
	if (!sk.stream_id || !go_conn_key(tcpconn, true, &sk.conn))
		return 0;
	bool remote = !server_on_loopback(&sk.conn);
	if (mark_client_pids && remote && !bpf_map_lookup_elem(&enrolled_conns, &sk.conn))
		count(STAT_NOT_ENROLLED);
	if (tls) {
		tag_with_stream(call->ctx.span_id, sk.stream_id);
		call->ctx.flags |= SPAN_OVER_TLS;
		if (remote && !(call->ctx.flags & SPAN_HAS_TRACEPARENT))
			queue_tls_stream(&sk.conn, &call->ctx);
	}
	note_conn_published(bpf_ktime_get_ns());
	bpf_map_update_elem(&stream_ctx, &sk, &call->ctx, BPF_ANY);
	return 0;
}

SEC("uprobe")
int http_client_h2_headers(struct pt_regs *ctx)
{
	return h2_headers(ctx, &std_h2);
}

SEC("uprobe")
int http_client_xnet_h2_headers(struct pt_regs *ctx)
{
	return h2_headers(ctx, &xnet_h2);
}

static __always_inline int end_call(struct pt_regs *ctx, u8 by_xnet)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&client_calls, &key);
	if (!call) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	/* x/net's transport under net/http's (ConfigureTransport): net/http's RET ends the span. */
	if (by_xnet && !call->by_xnet)
		return 0;
	if (!recorded(call->ctx.sampled)) {
		bpf_map_delete_elem(&client_calls, &key);
		return 0;
	}
	struct http_client_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		bpf_map_delete_elem(&client_calls, &key);
		return 0;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->ctx.trace_id, call->ctx.span_id,
			 call->parent_span_id, call->ctx.sampled);

	/* Results: *Response in ARG1, error (itab, data) in ARG2-3. */
	u64 resp = GO_ARG1(ctx);
	e->failed = GO_ARG2(ctx) != 0;
	e->status = resp ? (u16)read_u64(resp + off_resp_status_code) : 0;
	e->proto_major = resp ? (u8)read_u64(resp + off_resp_proto_major) : 0;
	e->proto_minor = resp ? (u8)read_u64(resp + off_resp_proto_minor) : 0;
	u64 req = call->req;
	e->method_len = read_go_string(e->method, METHOD_CAP, req + off_req_method);
	u64 url = read_u64(req + off_req_url);
	e->scheme_len = url ? read_go_string(e->scheme, SCHEME_CAP, url + off_url_scheme) : 0;
	e->host_len = url ? read_go_string(e->host, HOST_CAP, url + off_url_host) : 0;
	e->path_len = url ? read_go_string(e->path, PATH_CAP, url + off_url_path) : 0;
	e->query_len = url ? read_go_string(e->query, QUERY_CAP, url + off_url_raw_query) : 0;
	e->link = call->link;

	bpf_map_delete_elem(&client_calls, &key);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
	return 0;
}

SEC("uprobe.multi")
int http_client_return_multi(struct pt_regs *ctx)
{
	return end_call(ctx, 0);
}

/* roundTrip's jump on its round trip's error (goinfo's OkExit), with the results in their
 * registers as at a RET: on the nil side the span ends here, and the RETs that side leads to
 * carry no probe. An error goes on to a retry, whose result comes here again, or to a RET of
 * an error path, which ends the span. */
SEC("uprobe")
int http_client_ok(struct pt_regs *ctx)
{
	if (GO_ARG2(ctx))
		return 0;
	return end_call(ctx, 0);
}

SEC("uprobe")
int http_client_return_single(struct pt_regs *ctx)
{
	return end_call(ctx, 0);
}

SEC("uprobe.multi")
int http_client_xnet_return_multi(struct pt_regs *ctx)
{
	return end_call(ctx, 1);
}

SEC("uprobe")
int http_client_xnet_return_single(struct pt_regs *ctx)
{
	return end_call(ctx, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
