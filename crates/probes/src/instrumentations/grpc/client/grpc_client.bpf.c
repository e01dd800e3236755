/* gRPC client spans (google.golang.org/grpc). Every call, unary or streaming, goes through
 * grpc.newClientStream (start), then the transport's (*http2Client).NewStream (the HTTP/2 stream
 * and its connection are known: published for the server on this host), and ends in
 * (*clientStream).finish, which may run on another goroutine: the call is found there through
 * its transport stream. */
#include "conn.h"
#include "../grpc.h"

/* NewStream returns a *Stream (grpc < 1.69) or a *ClientStream embedding one (grpc.h). */
/* The stream's *http2Client: Stream.ct (a pointer before 1.66, an interface in 1.66-1.68) or
 * ClientStream.ct (1.69+); none in old grpc, whose NewStream entry is always probed. */
const volatile bool has_ct = false;
const volatile u64 off_ct = 0;
const volatile bool ct_is_interface = false;
const volatile bool ct_on_client_stream = false;
const volatile u64 off_http2client_conn = 0; /* http2Client.conn, a net.Conn */
/* The status received in the trailers: Stream.status (< 1.69) or ClientStream.status. */
const volatile u64 off_stream_status = 0;
const volatile bool status_on_client_stream = false;
/* clientStream.attempt -> csAttempt.s (transportStream from 1.71) */
const volatile u64 off_cs_attempt = 0;
const volatile u64 off_attempt_stream = 0;
const volatile u64 off_cc_target = 0; /* ClientConn.target (string) */
/* For outgoing traceparent injection over h2c (inject.bpf.c), whose probes are attached only
 * then: headerFrame.hf (clientHeaders.hf from 1.85), the []hpack.HeaderField the stream's
 * HEADERS frame is encoded from. */
const volatile u64 off_header_frame_hf = 0;

#define TARGET_CAP 128

struct grpc_client_event {
	struct span_header hdr;
	s32 status_code;
	u32 stream_id;
	u8 has_conn;
	u8 _pad;
	u16 method_len;
	u16 target_len;
	u16 message_len;
	struct conn_key conn;
	char method[METHOD_CAP];
	char target[TARGET_CAP];
	char message[MESSAGE_CAP];
	struct span_link link;
};

struct client_call {
	u64 start_ns;
	u64 method;
	u64 method_len;
	u64 cc;
	struct stream_conn_key conn;
	u8 has_conn;
	u8 sampled;
	u8 in_new_stream; /* between NewStream's entry and its return */
	u8 tls; /* the connection is TLS: the span id is tagged with the stream id */
	u8 headers_queued; /* the loopy writer publishes the stream as it writes its headers */
	u8 trace_id[16];
	u8 span_id[8];
	u8 parent_span_id[8];
	struct span_link link; /* a traceparent the call's metadata carried already */
};

/* Calls by the goroutine that started them, until their stream exists; then by stream. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct client_call);
} grpc_client_starting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct stream_key);
	__type(value, struct client_call);
} grpc_client_calls SEC(".maps");

/* func newClientStream(ctx, desc *StreamDesc, cc *ClientConn, method string, opts ...CallOption):
 * ctx in ARG1-2, desc ARG3, cc ARG4, method ARG5-6, in every grpc version. */
SEC("uprobe")
int grpc_client_start(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call call = {
		.start_ns = bpf_ktime_get_ns(),
		.cc = GO_ARG4(ctx),
		.method = GO_ARG5(ctx),
		.method_len = GO_ARG6(ctx),
	};
	/* The span this goroutine works for, if any, is the parent. */
	struct span_ctx *parent = goroutine_span(&key);
	bool has_parent = parent != 0, parent_sampled = true;
	if (parent) {
		__builtin_memcpy(call.trace_id, parent->trace_id, sizeof(call.trace_id));
		__builtin_memcpy(call.parent_span_id, parent->span_id, sizeof(call.parent_span_id));
		parent_sampled = parent->sampled;
	} else {
		random_id(call.trace_id, sizeof(call.trace_id));
	}
	random_id(call.span_id, sizeof(call.span_id));
	call.sampled = sample(call.trace_id, has_parent, parent_sampled);
	bpf_map_update_elem(&grpc_client_starting, &key, &call, BPF_ANY);
	return 0;
}

/* A call's stream whose HEADERS frame is about to be written: by its header fields' array,
 * which the loopy writer hands to writeHeader with the stream id. */
struct pending_headers_key {
	u32 pid;
	u32 _pad;
	u64 hf;
};

struct pending_headers {
	struct stream_conn_key conn;
	struct span_ctx span;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pending_headers_key);
	__type(value, struct pending_headers);
} grpc_pending_headers SEC(".maps");

/* func newHTTP2Client(connectCtx, ctx context.Context, addr resolver.Address, ...): it dials
 * the connection, so a process marked here has it enrolled for injection when it connects. */
SEC("uprobe")
int grpc_client_dial(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid) || bpf_map_lookup_elem(&client_pids, &pid))
		return 0;
	u8 one = 1;
	bpf_map_update_elem(&client_pids, &pid, &one, BPF_ANY);
	return 0;
}

/* The connection of the *http2Client `t` (its conn, a net.Conn), into the call. */
static __always_inline void call_conn(struct client_call *call, u64 t)
{
	bool tls = false;
	u64 tcpconn = go_tcpconn_in(t + off_http2client_conn, &tls);
	call->has_conn = go_conn_key(tcpconn, true, &call->conn.conn);
	call->tls = call->has_conn && tls;
}

/* func (t *http2Client) NewStream(ctx, callHdr *CallHdr): t in ARG1. The connection is known
 * before the stream is queued for the loopy writer. Probed with injection on, or where the
 * stream does not point back to its transport. */
SEC("uprobe")
int grpc_client_new_stream(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&grpc_client_starting, &key);
	if (!call)
		return 0;
	call->in_new_stream = 1;
	call_conn(call, GO_ARG1(ctx));
	return 0;
}

#define HEADER_FIELDS_SCANNED 24

/* Whether the header fields at `hf` (n of them) have a traceparent: an SDK in the process, or
 * metadata the caller passed on, put it there. Its value, if it has the length of one, is
 * parsed into `link`. */
static __always_inline bool has_traceparent(u64 hf, s64 n, struct span_link *link)
{
	struct traceparent_search s = find_traceparent_field(hf, n, HEADER_FIELDS_SCANNED);
	link_traceparent(s.value, link);
	return s.named || n > HEADER_FIELDS_SCANNED; /* not all seen: as good as yes */
}

/* func (c *controlBuffer) executeAndPut(f func() bool, it cbItem) (bool, error): within
 * NewStream, `it` (data in ARG4) is the stream's *headerFrame. */
SEC("uprobe")
int grpc_client_put(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&grpc_client_starting, &key);
	u64 frame = GO_ARG4(ctx);
	if (!call || !call->in_new_stream || !call->has_conn || !frame)
		return 0;
	struct {
		u64 ptr;
		s64 len;
	} hf = {};
	bpf_probe_read_user(&hf, sizeof(hf), (void *)(frame + off_header_frame_hf));
	if (!hf.ptr)
		return 0;
	struct pending_headers_key pk = { .pid = pid, .hf = hf.ptr };
	struct pending_headers pending = { .conn = call->conn };
	pending.span = span_ctx_of(call->trace_id, call->span_id, call->sampled);
	if (has_traceparent(hf.ptr, hf.len, &call->link))
		pending.span.flags |= SPAN_HAS_TRACEPARENT;
	if (call->tls)
		pending.span.flags |= SPAN_OVER_TLS;
	bpf_map_update_elem(&grpc_pending_headers, &pk, &pending, BPF_ANY);
	call->headers_queued = 1;
	return 0;
}

/* func (l *loopyWriter) writeHeader(streamID uint32, endStream bool, hf []hpack.HeaderField,
 * onWrite func()): streamID in ARG2, hf in ARG4-6. Runs on the loopy writer's goroutine, just
 * before the frame is encoded and written: the stream's span is published for sk_msg, or
 * over TLS queued for its socket's TCP option. */
SEC("uprobe")
int grpc_client_write_header(struct pt_regs *ctx)
{
	struct pending_headers_key pk = { .pid = bpf_get_current_pid_tgid() >> 32,
					  .hf = GO_ARG4(ctx) };
	struct pending_headers *pending = bpf_map_lookup_elem(&grpc_pending_headers, &pk);
	if (!pending)
		return 0; /* a server's headers, or a stream not traced */
	pending->conn.stream_id = (u32)GO_ARG2(ctx);
	if (pending->span.flags & SPAN_OVER_TLS) {
		tag_with_stream(pending->span.span_id, pending->conn.stream_id);
		if (!(pending->span.flags & SPAN_HAS_TRACEPARENT))
			queue_tls_stream(&pending->conn.conn, &pending->span);
	}
	bpf_map_update_elem(&stream_ctx, &pending->conn, &pending->span, BPF_ANY);
	bpf_map_delete_elem(&grpc_pending_headers, &pk);
	return 0;
}

/* func (t *http2Client) NewStream(ctx, callHdr *CallHdr) (*ClientStream, error), at its RETs:
 * the stream in ARG1. Its id was assigned on this goroutine, under the transport's lock. */
static __always_inline int grpc_client_stream(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	u64 stream = GO_ARG1(ctx);
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = bpf_map_lookup_elem(&grpc_client_starting, &key);
	if (!call)
		return 0;
	call->in_new_stream = 0;
	if (!stream)
		return 0;
	u64 fields = stream_fields(stream);
	bpf_probe_read_user(&call->conn.stream_id, sizeof(u32), (void *)(fields + off_stream_id));
	/* With injection on, NewStream's entry found the connection already. */
	if (!call->has_conn && has_ct) {
		u64 ct = read_u64((ct_on_client_stream ? stream : fields) + off_ct +
				  (ct_is_interface ? 8 : 0));
		if (ct)
			call_conn(call, ct);
	}
	/* As the loopy writer tags the span it publishes, whichever runs first. */
	if (call->tls)
		tag_with_stream(call->span_id, call->conn.stream_id);
	/* Unless the loopy writer published it before the headers left: the server may have
	 * taken that entry already, and one written now would outlive the stream. */
	if (call->has_conn && !call->headers_queued) {
		/* The server span at the other end of this stream, on this host, is our child. */
		struct span_ctx span = span_ctx_of(call->trace_id, call->span_id, call->sampled);
		bpf_map_update_elem(&stream_ctx, &call->conn, &span, BPF_ANY);
	}
	struct stream_key skey = { .pid = pid, .stream = stream };
	bpf_map_update_elem(&grpc_client_calls, &skey, call, BPF_ANY);
	bpf_map_delete_elem(&grpc_client_starting, &key);
	return 0;
}

SEC("uprobe.multi")
int grpc_client_stream_multi(struct pt_regs *ctx)
{
	return grpc_client_stream(ctx);
}

SEC("uprobe")
int grpc_client_stream_single(struct pt_regs *ctx)
{
	return grpc_client_stream(ctx);
}

/* The status code the call ended with: OK when finish got no error (or io.EOF after OK
 * trailers), else the trailers' status, else Unknown. */
static __always_inline s32 final_status(u64 err_itab, u64 stream, u64 *message, u64 *message_len)
{
	if (!err_itab)
		return 0;
	struct grpc_status status = { .code = 2 /* Unknown */ };
	if (stream) {
		u64 base = status_on_client_stream ? stream : stream_fields(stream);
		read_grpc_status(read_u64(base + off_stream_status), &status);
	}
	*message = status.message;
	*message_len = status.message_len;
	return status.code;
}

/* func (cs *clientStream) finish(err error): cs in ARG1, err (itab, data) in ARG2-3. May run
 * more than once per call; the first ends the span. */
SEC("uprobe")
int grpc_client_finish(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	u64 cs = GO_ARG1(ctx), err_itab = GO_ARG2(ctx);
	u64 attempt = read_u64(cs + off_cs_attempt);
	u64 stream = attempt ? read_u64(attempt + off_attempt_stream) : 0;
	struct stream_key skey = { .pid = pid, .stream = stream };
	struct goroutine_key gkey = { .pid = pid, .g = GO_G(ctx) };
	struct client_call *call = 0;
	if (stream)
		call = bpf_map_lookup_elem(&grpc_client_calls, &skey);
	else /* no stream was ever opened (the connection failed): the caller's goroutine */
		call = bpf_map_lookup_elem(&grpc_client_starting, &gkey);
	if (!call)
		return 0;
	if (!recorded(call->sampled))
		goto done;
	struct grpc_client_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		goto done;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->trace_id, call->span_id,
			 call->parent_span_id, call->sampled);
	u64 message = 0, message_len = 0;
	e->status_code = final_status(err_itab, stream, &message, &message_len);
	e->message_len = copy_user_bytes(e->message, MESSAGE_CAP, message, (s64)message_len);
	e->stream_id = call->conn.stream_id;
	e->has_conn = call->has_conn;
	__builtin_memcpy(&e->conn, &call->conn.conn, sizeof(e->conn));
	e->method_len = copy_user_bytes(e->method, METHOD_CAP, call->method, (s64)call->method_len);
	e->target_len = copy_user_bytes(e->target, TARGET_CAP, read_u64(call->cc + off_cc_target),
					(s64)read_u64(call->cc + off_cc_target + 8));
	e->link = call->link;
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
done:
	if (stream)
		bpf_map_delete_elem(&grpc_client_calls, &skey);
	else
		bpf_map_delete_elem(&grpc_client_starting, &gkey);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
