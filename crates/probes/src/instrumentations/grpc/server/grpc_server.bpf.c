/* gRPC server spans (google.golang.org/grpc). (*grpc.Server).handleStream runs one RPC, unary
 * or streaming, on one goroutine from the first frame to the final status: its entry starts the
 * span, its RETs end it. The status is whatever the transport's (w|W)riteStatus sent first for
 * that stream, which may run on another goroutine (a handler's SendMsg failing), so it meets
 * the span through a map keyed by the stream. */
#include "conn.h"
#include "../grpc.h"

const volatile u64 off_stream_method = 0; /* Stream.method (string) */
/* The transport argument's data word is the *http2Server; its conn is a net.Conn. */
const volatile u64 off_http2server_conn = 0; /* http2Server.conn */

/* An incoming traceparent, read from the request's HEADERS frame where the transport decodes
 * it: operateHeaders(t, frame) before grpc 1.60, operateHeaders(t, ctx, frame) after. */
const volatile bool has_metadata = false;
const volatile bool frame_in_arg4 = false;
const volatile u64 off_mhf_headers = 0; /* MetaHeadersFrame.HeadersFrame (*HeadersFrame) */
const volatile u64 off_hf_stream_id = 0; /* HeadersFrame.FrameHeader + FrameHeader.StreamID */
const volatile u64 off_mhf_fields = 0; /* MetaHeadersFrame.Fields ([]hpack.HeaderField) */
#define MAX_FIELDS 64


struct grpc_server_event {
	struct span_header hdr;
	s32 status_code; /* -1: no status seen */
	u32 stream_id;
	u8 has_conn;
	u8 _pad;
	u16 method_len;
	u16 message_len;
	u16 _pad2;
	struct conn_key conn;
	char method[METHOD_CAP];
	char message[MESSAGE_CAP];
};

struct grpc_call {
	u64 start_ns;
	u64 stream; /* handleStream's argument: the key of its status */
	struct stream_conn_key conn; /* the connection and HTTP/2 stream, when readable */
	u8 has_conn;
	u8 has_parent;
	u8 sampled;
	u8 trace_id[16];
	u8 span_id[8];
	u8 parent_span_id[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct grpc_call);
} grpc_server_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct stream_key);
	__type(value, struct grpc_status);
} grpc_statuses SEC(".maps");

/* (transport, stream id) -> the traceparent its request carried, until handleStream starts. */
struct incoming_key {
	u32 pid;
	u32 stream_id;
	u64 transport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct incoming_key);
	__type(value, struct span_ctx);
} grpc_incoming SEC(".maps");

SEC("uprobe")
int grpc_server_headers(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!has_metadata || !pid_traced(pid))
		return 0;
	/* Both read at fixed offsets: the verifier refuses a ctx read at a computed one. */
	volatile u64 arg2 = GO_ARG2(ctx), arg4 = GO_ARG4(ctx);
	u64 frame = frame_in_arg4 ? arg4 : arg2;
	struct traceparent_search s = find_traceparent_field(
		read_u64(frame + off_mhf_fields), (s64)read_u64(frame + off_mhf_fields + 8), MAX_FIELDS);
	u8 text[TRACEPARENT_LEN];
	struct incoming in = {};
	if (!s.value || bpf_probe_read_user(text, sizeof(text), (void *)s.value) ||
	    !parse_traceparent(text, &in))
		return 0;
	struct incoming_key key = { .pid = pid, .transport = GO_ARG1(ctx) };
	u64 headers = read_u64(frame + off_mhf_headers);
	bpf_probe_read_user(&key.stream_id, sizeof(u32), (void *)(headers + off_hf_stream_id));
	in.ctx.sampled = in.sampled;
	bpf_map_update_elem(&grpc_incoming, &key, &in.ctx, BPF_ANY);
	return 0;
}

SEC("uprobe")
int grpc_server_enter(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	/* func (s *Server) handleStream(t ServerTransport, stream *Stream, ...): s in ARG1, t
	 * (itab, data) in ARG2-3, stream in ARG4, in every grpc version. */
	struct grpc_call call = {
		.start_ns = bpf_ktime_get_ns(),
		.stream = GO_ARG4(ctx),
	};
	u64 fields = stream_fields(call.stream);
	bpf_probe_read_user(&call.conn.stream_id, sizeof(u32), (void *)(fields + off_stream_id));
	bool tls = false;
	u64 tcpconn = go_tcpconn_in(GO_ARG3(ctx) + off_http2server_conn, &tls);
	call.has_conn = go_conn_key(tcpconn, false, &call.conn.conn);
	/* A gRPC client that opened this stream, on this host or over TLS from another (its span
	 * came in a TCP option), is the parent; else a traceparent the request carried. */
	struct span_ctx *parent = call.has_conn ? bpf_map_lookup_elem(&stream_ctx, &call.conn) : 0;
	struct incoming_key incoming = {
		.pid = pid,
		.stream_id = call.conn.stream_id,
		.transport = GO_ARG3(ctx),
	};
	bool remote = false;
	if (!parent && has_metadata) {
		parent = bpf_map_lookup_elem(&grpc_incoming, &incoming);
		remote = true;
	}
	bool parent_sampled = true;
	if (parent) {
		__builtin_memcpy(call.trace_id, parent->trace_id, sizeof(call.trace_id));
		__builtin_memcpy(call.parent_span_id, parent->span_id, sizeof(call.parent_span_id));
		parent_sampled = parent->sampled;
		call.has_parent = 1;
		/* After the copy: a deleted slot is reused. */
		if (remote)
			bpf_map_delete_elem(&grpc_incoming, &incoming);
		else
			bpf_map_delete_elem(&stream_ctx, &call.conn);
	} else {
		random_id(call.trace_id, sizeof(call.trace_id));
	}
	random_id(call.span_id, sizeof(call.span_id));
	call.sampled = sample(call.trace_id, call.has_parent, parent_sampled);
	bpf_map_update_elem(&grpc_server_calls, &key, &call, BPF_ANY);
	/* The handler runs on this goroutine: its outgoing calls are children. */
	struct span_ctx span = span_ctx_of(call.trace_id, call.span_id, call.sampled);
	bpf_map_update_elem(&goroutine_ctx, &key, &span, BPF_ANY);
	return 0;
}

/* func (t *http2Server) writeStatus(s *ServerStream, st *status.Status) error (WriteStatus
 * before grpc 1.69): t in ARG1, s in ARG2, st in ARG3. grpc sends only the first status of a
 * stream; so does gotel. */
SEC("uprobe")
int grpc_server_status(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct stream_key key = { .pid = pid, .stream = GO_ARG2(ctx) };
	struct grpc_status status = { .code = 2 /* Unknown */ };
	read_grpc_status(GO_ARG3(ctx), &status);
	bpf_map_update_elem(&grpc_statuses, &key, &status, BPF_NOEXIST);
	return 0;
}

static __always_inline int grpc_server_return(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct grpc_call *call = bpf_map_lookup_elem(&grpc_server_calls, &key);
	if (!call) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	struct stream_key skey = { .pid = pid, .stream = call->stream };
	struct grpc_status *status = bpf_map_lookup_elem(&grpc_statuses, &skey);
	/* The client publishes its stream once the id is assigned, which can be after the request
	 * reached us: look again, so at least this span finds its parent. */
	struct span_ctx *late = 0;
	if (!call->has_parent && call->has_conn)
		late = bpf_map_lookup_elem(&stream_ctx, &call->conn);
	if (late) {
		__builtin_memcpy(call->trace_id, late->trace_id, sizeof(call->trace_id));
		__builtin_memcpy(call->parent_span_id, late->span_id, sizeof(call->parent_span_id));
		call->sampled = late->sampled;
		bpf_map_delete_elem(&stream_ctx, &call->conn);
	}
	if (!recorded(call->sampled))
		goto done;
	struct grpc_server_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		goto done;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->trace_id, call->span_id,
			 call->parent_span_id, call->sampled);
	u64 fields = stream_fields(call->stream);
	e->stream_id = call->conn.stream_id;
	e->method_len = copy_user_bytes(e->method, METHOD_CAP, read_u64(fields + off_stream_method),
					(s64)read_u64(fields + off_stream_method + 8));
	e->status_code = status ? status->code : -1;
	e->message_len = status ? copy_user_bytes(e->message, MESSAGE_CAP, status->message,
						  (s64)status->message_len)
				: 0;
	e->has_conn = call->has_conn;
	__builtin_memcpy(&e->conn, &call->conn.conn, sizeof(e->conn));
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
done:
	bpf_map_delete_elem(&grpc_statuses, &skey);
	bpf_map_delete_elem(&grpc_server_calls, &key);
	bpf_map_delete_elem(&goroutine_ctx, &key);
	return 0;
}

SEC("uprobe.multi")
int grpc_server_return_multi(struct pt_regs *ctx)
{
	return grpc_server_return(ctx);
}

SEC("uprobe")
int grpc_server_return_single(struct pt_regs *ctx)
{
	return grpc_server_return(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
