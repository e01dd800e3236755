/* net/http client spans: uprobes at the entry and RETs of net/http.(*Transport).roundTrip.
 * The span is a child of whatever span the calling goroutine works for (goroutine_span). */
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
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct client_call);
} client_calls SEC(".maps");

SEC("uprobe")
int http_client_enter(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	/* func (t *Transport) roundTrip(req *Request) (*Response, error) */
	struct client_call call = { .start_ns = bpf_ktime_get_ns(), .req = GO_ARG2(ctx) };
	if (mark_client_pids && !bpf_map_lookup_elem(&client_pids, &pid)) {
		u8 one = 1;
		bpf_map_update_elem(&client_pids, &pid, &one, BPF_ANY);
	}
	start_span_ctx(&key, &call.ctx, call.parent_span_id);
	bpf_map_update_elem(&client_calls, &key, &call, BPF_ANY);
	return 0;
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
	if (check_own_traceparent) {
		/* Set by an SDK in the process, or passed on from its caller: injection adds none,
		 * and the span links to the context it names. */
		struct incoming own;
		incoming_traceparent(call->req, &own);
		if (own.value)
			call->ctx.flags |= SPAN_HAS_TRACEPARENT;
		if (own.found) /* parsed by the search already */
			link_to(&own, &call->link);
	}
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

static __always_inline int http_client_return(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&client_calls, &key);
	if (!call) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	if (!call->ctx.sampled) {
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
			 call->parent_span_id);

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
	return http_client_return(ctx);
}

SEC("uprobe")
int http_client_return_single(struct pt_regs *ctx)
{
	return http_client_return(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
