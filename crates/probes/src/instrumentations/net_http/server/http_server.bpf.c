/* net/http server spans: a uprobe at the entry of net/http.serverHandler.ServeHTTP records the
 * request's goroutine and start time; one at each of its RETs emits the span. Everything is
 * read at the return: the handler has run, so the response status and the mux's route pattern
 * are known, and the Request itself is still alive. Except for HTTP/2 from Go 1.27: there the
 * request is copied where it begins (h2_request_unowned). */
#include "conn.h"
#include "routes.h"
#include "traceparent.h"

/* Field offsets, filled in per executable at load time. */
const volatile u64 off_req_method = 0;
const volatile u64 off_req_url = 0;
const volatile u64 off_req_proto_major = 0;
const volatile u64 off_req_proto_minor = 0;
const volatile u64 off_req_host = 0;
const volatile u64 off_req_remote_addr = 0;
const volatile u64 off_req_tls = 0;
const volatile u64 off_req_pattern = 0;
const volatile bool has_pattern = false; /* Request.Pattern exists since Go 1.23 */
/* The binary has a router whose matches gotel reads (routes.h): its route comes first. */
const volatile bool has_router = false;
const volatile u64 off_url_path = 0;
const volatile u64 off_url_raw_query = 0;
const volatile u64 off_response_status = 0;
/* HTTP/2 responses are a different ResponseWriter, used exactly when ProtoMajor is 2. */
const volatile bool has_h2 = false;
const volatile u64 off_h2rw_rws = 0;
const volatile u64 off_h2rws_status = 0;
/* And its stream, for a parent published per stream: responseWriterState.stream, stream.id,
 * stream.sc, serverConn.conn (a net.Conn). */
const volatile bool has_h2_streams = false;
const volatile u64 off_h2rws_stream = 0;
const volatile u64 off_h2stream_id = 0;
const volatile u64 off_h2stream_sc = 0;
const volatile u64 off_h2sc_conn = 0;
/* From Go 1.27 (net/http/internal/http2) an HTTP/2 request's *Request is made by net/http's
 * adapter and held by nothing but the handler's frames: once the handler no longer uses it,
 * the GC may free it and hand its memory to another object while the request is still being
 * served (seen: a /b request read at its end as the handler's own outgoing /c request). */
const volatile bool h2_request_unowned = false;
/* response.conn (*http.conn), and conn.rwc's data word (*net.TCPConn when plain, *tls.Conn
 * where the Request has TLS state). */
const volatile u64 off_response_conn = 0;
const volatile u64 off_conn_rwc_data = 0;

#define METHOD_CAP 16
#define PATH_CAP 256
#define QUERY_CAP 256
#define HOST_CAP 128
#define REMOTE_CAP 64
#define PATTERN_CAP ROUTE_CAP
#define TRACESTATE_CAP 256

struct http_server_event {
	struct span_header hdr;
	u16 status;
	u8 proto_major;
	u8 proto_minor;
	u8 tls;
	u8 panicked; /* net/http recovered the handler's panic: no response was finished */
	u8 _pad[2];
	u16 method_len, path_len, query_len, host_len, remote_len, pattern_len;
	char method[METHOD_CAP];
	char path[PATH_CAP];
	char query[QUERY_CAP];
	char host[HOST_CAP];
	char remote[REMOTE_CAP];
	char pattern[PATTERN_CAP];
	u16 tracestate_len;
	char tracestate[TRACESTATE_CAP];
};

/* How much of the Request and of its URL to copy: just past the last field read. */
const volatile u32 req_copy_bytes = 0;
const volatile u32 url_copy_bytes = 0;

/* What a span takes from the Request, copied where an HTTP/2 request begins when nothing keeps
 * its Request alive to the end (h2_request_unowned). */
struct request_fields {
	/* The words that tell the same Request at the end: Method's data, URL, Host's data. */
	u64 identity[3];
	u8 proto_major, proto_minor, tls, _pad[5];
	u16 method_len, path_len, query_len, host_len, remote_len, _pad2[3];
	char method[METHOD_CAP];
	char path[PATH_CAP];
	char query[QUERY_CAP];
	char host[HOST_CAP];
	char remote[REMOTE_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct request_fields);
} begun_requests SEC(".maps");

/* Copies of the Request and its URL, and the fields read from them, per CPU (too big for the
 * BPF stack). */
struct request_copy {
	struct window_buffer req;
	struct window_buffer url;
	struct request_fields fields;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct request_copy);
} scratch SEC(".maps");

/* The words of a Request's copy `w` that tell it from another at the same address. */
static __always_inline void request_identity(const struct window *w, u64 identity[3])
{
	identity[0] = window_u64(w, off_req_method);
	identity[1] = window_u64(w, off_req_url);
	identity[2] = window_u64(w, off_req_host);
}

/* What spans take from the Request copied in copy->req, into copy->fields (reading its URL). */
static __always_inline void request_fields_of(struct request_copy *copy)
{
	const struct window *w = (const struct window *)copy->req.w;
	struct request_fields *f = &copy->fields;
	request_identity(w, f->identity);
	f->proto_major = (u8)window_u64(w, off_req_proto_major);
	f->proto_minor = (u8)window_u64(w, off_req_proto_minor);
	f->tls = window_u64(w, off_req_tls) != 0;
	f->method_len = window_go_string(f->method, METHOD_CAP, w, off_req_method);
	f->host_len = window_go_string(f->host, HOST_CAP, w, off_req_host);
	f->remote_len = window_go_string(f->remote, REMOTE_CAP, w, off_req_remote_addr);
	u64 url_addr = window_u64(w, off_req_url);
	f->path_len = f->query_len = 0;
	if (url_addr) {
		const struct window *url = (const struct window *)copy->url.w;
		read_window(&copy->url, url_copy_bytes, url_addr);
		f->path_len = window_go_string(f->path, PATH_CAP, url, off_url_path);
		f->query_len = window_go_string(f->query, QUERY_CAP, url, off_url_raw_query);
	}
}

/* The HTTP/2 stream the response writer `rw` answers, and the span a client published for it
 * (a client on this host, or a TLS option from one on another). */
static __always_inline struct span_ctx *h2_stream_parent(u64 rw, struct stream_conn_key *sk)
{
	if (!has_h2_streams)
		return 0;
	u64 rws = read_u64(rw + off_h2rw_rws);
	u64 stream = rws ? read_u64(rws + off_h2rws_stream) : 0;
	if (!stream)
		return 0;
	bpf_probe_read_user(&sk->stream_id, sizeof(sk->stream_id), (void *)(stream + off_h2stream_id));
	bool tls = false;
	u64 sc = read_u64(stream + off_h2stream_sc);
	u64 tcpconn = sc ? go_tcpconn_in(sc + off_h2sc_conn, &tls) : 0;
	if (!go_conn_key(tcpconn, false, &sk->conn))
		return 0;
	return bpf_map_lookup_elem(&stream_ctx, sk);
}

/* How soon after an entry the same request's prologue may run again (morestack). */
#define RESTART_NS 10000000ULL

SEC("uprobe")
int http_server_enter(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	/* func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request):
	 * sh (one pointer) in ARG1, rw (itab, data) in ARG2-3, req in ARG4. */
	struct server_call call = {
		.start_ns = bpf_ktime_get_ns(),
		.rw_data = GO_ARG3(ctx), /* rw's itab is in ARG2 */
		.req = GO_ARG4(ctx),
	};
	/* When the goroutine's stack must grow, morestack runs the prologue again, and this probe
	 * with it: the request begun a moment ago keeps its span (its parent was taken already).
	 * An entry left by a request that panicked is older than that. */
	struct server_call *begun = bpf_map_lookup_elem(&server_calls, &key);
	if (begun && begun->req == call.req && call.start_ns - begun->start_ns < RESTART_NS) {
		count(STAT_ENTRY_REPEATED);
		return 0;
	}
	/* A client span on this host whose request arrived on this connection (HTTP/1) or stream
	 * (HTTP/2) is the parent. */
	struct span_ctx *parent = 0;
	struct stream_conn_key sk = {};
	u64 proto_major = 0;
	if (h2_request_unowned || conns_published_lately(call.start_ns))
		proto_major = read_u64(call.req + off_req_proto_major);
	if (proto_major == 1) {
		u64 hc = read_u64(call.rw_data + off_response_conn);
		u64 tcpconn = hc ? read_u64(hc + off_conn_rwc_data) : 0;
		if (read_u64(call.req + off_req_tls))
			tcpconn = go_conn_under_tls(tcpconn);
		if (go_conn_key(tcpconn, false, &sk.conn))
			parent = bpf_map_lookup_elem(&conn_ctx, &sk.conn);
	} else if (proto_major == 2) {
		parent = h2_stream_parent(call.rw_data, &sk);
	}
	struct incoming remote = {};
	bool has_parent = true, parent_sampled = true;
	if (parent) {
		__builtin_memcpy(call.ctx.trace_id, parent->trace_id, sizeof(call.ctx.trace_id));
		__builtin_memcpy(call.parent_span_id, parent->span_id, sizeof(call.parent_span_id));
		parent_sampled = parent->sampled;
		if (proto_major == 2)
			bpf_map_delete_elem(&stream_ctx, &sk);
		else
			bpf_map_delete_elem(&conn_ctx, &sk.conn);
	} else {
		/* Else a W3C traceparent the request carries (from another host, or any client). */
		incoming_traceparent(call.req, &remote);
		if (remote.found) {
			__builtin_memcpy(call.ctx.trace_id, remote.ctx.trace_id, sizeof(call.ctx.trace_id));
			__builtin_memcpy(call.parent_span_id, remote.ctx.span_id,
					 sizeof(call.parent_span_id));
			parent_sampled = remote.sampled;
			call.tracestate = remote.state;
			call.tracestate_len = remote.state_len;
			keep_trace_state(call.ctx.trace_id, remote.state, remote.state_len);
		} else {
			random_id(call.ctx.trace_id, sizeof(call.ctx.trace_id));
			has_parent = false;
		}
	}
	random_id(call.ctx.span_id, sizeof(call.ctx.span_id));
	call.ctx.sampled = sample(call.ctx.trace_id, has_parent, parent_sampled);
	if (h2_request_unowned && proto_major == 2 && recorded(call.ctx.sampled)) {
		u32 zero = 0;
		struct request_copy *copy = bpf_map_lookup_elem(&scratch, &zero);
		if (copy) {
			read_window(&copy->req, req_copy_bytes, call.req);
			request_fields_of(copy);
			bpf_map_update_elem(&begun_requests, &key, &copy->fields, BPF_ANY);
		}
	}
	/* The handler's goroutine, and those it starts, work for this span (goroutine_span). */
	bpf_map_update_elem(&server_calls, &key, &call, BPF_ANY);
	return 0;
}

/* The response status; 0 when it cannot be known (HTTP/2 without its offsets) or was never
 * set (a handler that panicked first). */
static __always_inline u16 response_status(const struct server_call *call, u8 proto_major,
					   bool panicked)
{
	u64 status;
	if (proto_major == 2) {
		if (!has_h2)
			return 0;
		u64 rws = read_u64(call->rw_data + off_h2rw_rws);
		status = rws ? read_u64(rws + off_h2rws_status) : 0;
	} else {
		status = read_u64(call->rw_data + off_response_status);
	}
	/* A handler that wrote nothing gets 200 when the server finishes the response. */
	return status || panicked ? (u16)status : 200;
}

static __always_inline int end_request(struct pt_regs *ctx, bool panicked)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct server_call *call = bpf_map_lookup_elem(&server_calls, &key);
	if (!call) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	if (!recorded(call->ctx.sampled))
		goto done;
	struct http_server_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		goto done;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->ctx.trace_id, call->ctx.span_id,
			 call->parent_span_id, call->ctx.sampled);

	u32 zero = 0;
	struct request_copy *copy = bpf_map_lookup_elem(&scratch, &zero);
	if (!copy) {
		bpf_ringbuf_discard(e, 0);
		goto done;
	}
	const struct window *req = (const struct window *)copy->req.w;
	read_window(&copy->req, req_copy_bytes, call->req);
	/* The Request as it began, where it may be gone by now; its pattern (set while the
	 * handler ran) only if the memory still holds the same Request. */
	const struct request_fields *f = &copy->fields;
	bool same_request = true;
	struct request_fields *begun =
		h2_request_unowned ? bpf_map_lookup_elem(&begun_requests, &key) : 0;
	if (begun) {
		u64 now[3];
		request_identity(req, now);
		same_request = !__builtin_memcmp(begun->identity, now, sizeof(now));
		if (!same_request)
			count(STAT_REQUEST_REUSED);
		f = begun;
	} else {
		request_fields_of(copy);
	}
	e->proto_major = f->proto_major;
	e->panicked = panicked;
	e->status = response_status(call, e->proto_major, panicked);
	e->proto_minor = f->proto_minor;
	e->tls = f->tls;
	e->method_len = f->method_len;
	e->host_len = f->host_len;
	e->remote_len = f->remote_len;
	e->path_len = f->path_len;
	e->query_len = f->query_len;
	__builtin_memcpy(e->method, f->method, METHOD_CAP);
	__builtin_memcpy(e->host, f->host, HOST_CAP);
	__builtin_memcpy(e->remote, f->remote, REMOTE_CAP);
	__builtin_memcpy(e->path, f->path, PATH_CAP);
	__builtin_memcpy(e->query, f->query, QUERY_CAP);
	e->pattern_len = has_router ? take_matched_route(&key, call, e->pattern) : 0;
	if (!e->pattern_len && has_pattern && same_request)
		e->pattern_len = window_go_string(e->pattern, PATTERN_CAP, req, off_req_pattern);

	e->tracestate_len = copy_user_bytes(e->tracestate, TRACESTATE_CAP, call->tracestate,
					    (s64)call->tracestate_len);

	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
done:
	/* The request is over on every path. An entry this goroutine inherited when it started
	 * would outrank (goroutine_span) the span of the next request it serves. */
	bpf_map_delete_elem(&server_calls, &key);
	bpf_map_delete_elem(&goroutine_ctx, &key);
	if (h2_request_unowned)
		bpf_map_delete_elem(&begun_requests, &key);
	return 0;
}

/* Two entry points for the same return logic: one link for all RETs where the kernel has
 * uprobe_multi (6.6+), one uprobe per RET otherwise (or at the functions where requests end,
 * see mod.rs). Both are loaded; userspace attaches the one it uses. */
SEC("uprobe.multi")
int http_server_return_multi(struct pt_regs *ctx)
{
	return end_request(ctx, false);
}

SEC("uprobe")
int http_server_return_single(struct pt_regs *ctx)
{
	return end_request(ctx, false);
}

/* net/http.(*conn).serve.func1, the deferred function that recovers a handler's panic and
 * closes the connection: it runs once per HTTP/1 connection, and finds the goroutine serving a
 * request only when the handler panicked out of it (every other request ended before). Also
 * at the call an HTTP/2 handler's deferred function makes to reset the stream of a handler
 * that panicked (made on that path alone). */
SEC("uprobe")
int http_server_panicked(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (!bpf_map_lookup_elem(&server_calls, &key))
		return 0;
	return end_request(ctx, true);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
