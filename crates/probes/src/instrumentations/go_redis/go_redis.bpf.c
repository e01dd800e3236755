/* go-redis client spans (v9 and v8: the same program, loaded once per major version linked).
 * Every command goes through (*baseClient).process, every pipeline and MULTI/EXEC transaction
 * through one pipeline function (mod.rs names them per version), on the caller's goroutine. The
 * entry probe records the call; a probe at each RET reads the commands, the client's options
 * and the error, and ends the span. A command can run inside another on the same goroutine (a
 * new connection's HELLO inside the command that needed it): calls nest, up to CALL_DEPTH. */
#include "gotel.h"

#define REDIS_COMMAND 1 /* process(ctx, cmd Cmder) error */
#define REDIS_PIPELINE 2 /* a pipeline function (ctx, cmds []Cmder, ...) error */

/* The probed functions: the command's, and up to two pipeline functions. */
#define FUNCTIONS 3

const volatile u64 off_client_opt = 0; /* baseClient.opt (*Options) */
const volatile u64 off_opt_network = 0; /* Options.Network (string) */
const volatile u64 off_opt_addr = 0; /* Options.Addr (string) */
const volatile u64 off_opt_db = 0; /* Options.DB (int) */
const volatile u64 off_cmd_args = 0; /* baseCmd.args ([]interface{}); every Cmd embeds it first */
const volatile u64 off_cmd_err = 0; /* baseCmd.err (error) */
/* Link-time address of each function's entry probe, for a PIE's load bias. */
const volatile u64 entry_address[FUNCTIONS] = {};
/* proto.(*RedisError).Error and proto.RedisError.Error: fun[0] of the `error` itab of a reply
 * the server refused (and of redis.Nil). */
const volatile u64 redis_error_method[2] = {};

#define CMDS 8
#define NAME_CAP 16
#define KEY_CAP 64
#define ADDR_CAP 64
#define NETWORK_CAP 8
#define ERROR_CAP 32
#define GO_KIND_STRING 24 /* abi.Kind of string, in the low 5 bits of a type's kind byte */
#define TYPE_KIND_OFFSET 23 /* of the kind byte in a Go type descriptor (abi.Type) */

struct redis_cmd {
	u8 name_len;
	u8 key_len;
	u8 _pad[2];
	u32 argc;
	char name[NAME_CAP];
	char key[KEY_CAP];
};

struct redis_event {
	struct span_header hdr;
	u8 op;
	u8 failed;
	u8 error_len; /* of the message of a refused reply; 0 for other errors */
	u8 ncmds; /* commands captured, at most CMDS */
	u8 addr_len;
	u8 network_len;
	u8 _pad[2];
	u32 total_cmds;
	u32 _pad2;
	s64 db;
	char addr[ADDR_CAP];
	char network[NETWORK_CAP];
	char error[ERROR_CAP];
	struct redis_cmd cmds[CMDS];
};

struct redis_call {
	u64 start_ns;
	u64 client;
	u64 cmds; /* the Cmder (itab, data) of a command, or a pipeline's slice */
	u64 cmds_data;
	u64 ncmds;
	u64 bias;
	struct span_ctx ctx;
	u8 parent_span_id[8];
	u8 op;
	u8 _pad[7];
};

#define CALL_DEPTH 2 /* the calls below pick call[0] or call[1] */
struct redis_calls {
	struct redis_call call[CALL_DEPTH];
	u32 depth;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct redis_calls);
} redis_calls SEC(".maps");

/* An empty redis_calls to start a goroutine's entry from (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct redis_calls);
} redis_scratch SEC(".maps");

static __always_inline int redis_enter(struct pt_regs *ctx, u8 op, u32 function, u64 cmds,
				       u64 cmds_data, u64 ncmds)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct redis_calls *calls = bpf_map_lookup_elem(&redis_calls, &key);
	if (!calls) {
		u32 zero = 0;
		struct redis_calls *empty = bpf_map_lookup_elem(&redis_scratch, &zero);
		if (!empty)
			return 0;
		empty->depth = 0;
		bpf_map_update_elem(&redis_calls, &key, empty, BPF_ANY);
		calls = bpf_map_lookup_elem(&redis_calls, &key);
		if (!calls)
			return 0;
	}
	u32 depth = calls->depth;
	if (depth >= CALL_DEPTH) {
		/* Deeper than any nesting go-redis does: calls that never returned (a panic). */
		count(STAT_NO_ENTRY);
		depth = 0;
	}
	struct redis_call *call = depth ? &calls->call[1] : &calls->call[0];
	call->start_ns = bpf_ktime_get_ns();
	call->client = GO_ARG1(ctx);
	call->cmds = cmds;
	call->cmds_data = cmds_data;
	call->ncmds = ncmds;
	call->op = op;
	call->bias = function < FUNCTIONS ? load_bias(ctx, entry_address[function]) : 0;
	__builtin_memset(call->parent_span_id, 0, sizeof(call->parent_span_id));
	if (depth > 0) /* inside the command that needed it: its child */
		child_span_ctx(&calls->call[0].ctx, &call->ctx, call->parent_span_id);
	else
		start_span_ctx(&key, &call->ctx, call->parent_span_id);
	calls->depth = depth + 1;
	return 0;
}

/* func (c *baseClient) process(ctx context.Context, cmd Cmder) error */
SEC("uprobe")
int redis_command_enter(struct pt_regs *ctx)
{
	return redis_enter(ctx, REDIS_COMMAND, 0, GO_ARG4(ctx), GO_ARG5(ctx), 1);
}

/* func (c *baseClient) processPipeline(ctx context.Context, cmds []Cmder) error, and the
 * functions of the same first arguments that take its place in other versions */
SEC("uprobe")
int redis_pipeline_enter(struct pt_regs *ctx)
{
	return redis_enter(ctx, REDIS_PIPELINE, 1, GO_ARG4(ctx), 0, GO_ARG5(ctx));
}

SEC("uprobe")
int redis_pipeline2_enter(struct pt_regs *ctx)
{
	return redis_enter(ctx, REDIS_PIPELINE, 2, GO_ARG4(ctx), 0, GO_ARG5(ctx));
}

/* Whether the `error` (itab, data) is a reply the server refused, and if so its message. */
static __always_inline bool redis_error(u64 itab, u64 data, u64 bias, char *msg, u8 *len)
{
	u64 method = read_u64(itab + 24) - bias; /* itab.fun[0]: Error */
	if (!method || (method != redis_error_method[0] && method != redis_error_method[1]))
		return false;
	*len = (u8)read_go_string(msg, ERROR_CAP, data);
	return true;
}

/* redis.Nil, "redis: nil": a key that is not there, which is no error. */
static __always_inline bool is_nil_reply(const char *msg, u8 len)
{
	const char nil[] = "redis: nil";
	if (len != sizeof(nil) - 1)
		return false;
	for (int i = 0; i < (int)sizeof(nil) - 1; i++) {
		if (msg[i] != nil[i])
			return false;
	}
	return true;
}

/* Marks the span failed with the `error` (itab, data), its message if the server refused;
 * redis.Nil is no failure. */
static __always_inline void take_error(struct redis_event *e, u64 itab, u64 data, u64 bias)
{
	u8 len = 0;
	if (redis_error(itab, data, bias, e->error, &len) && is_nil_reply(e->error, len))
		return;
	e->failed = 1;
	e->error_len = len;
}

/* Reads command `data` (a Cmd, which starts with its baseCmd) into `out`; returns its error's
 * (itab, data) through `err`. */
static __always_inline void read_cmd(u64 data, struct redis_cmd *out, u64 err[2])
{
	struct {
		u64 ptr;
		s64 len;
	} args = {};
	if (bpf_probe_read_user(&args, sizeof(args), (void *)(data + off_cmd_args)))
		return;
	bpf_probe_read_user(err, 16, (void *)(data + off_cmd_err));
	out->argc = args.len > 0 ? (u32)args.len : 0;
	if (args.len <= 0)
		return;
	/* args[0] and args[1]: (type, data) each. A string's data points to its header. */
	u64 first[4] = {};
	bpf_probe_read_user(first, args.len > 1 ? 32 : 16, (void *)args.ptr);
	u8 kind = 0;
	if (first[0] && !bpf_probe_read_user(&kind, 1, (void *)(first[0] + TYPE_KIND_OFFSET)) &&
	    (kind & 0x1f) == GO_KIND_STRING && first[1])
		out->name_len = (u8)read_go_string(out->name, NAME_CAP, first[1]);
	kind = 0;
	if (args.len > 1 && first[2] &&
	    !bpf_probe_read_user(&kind, 1, (void *)(first[2] + TYPE_KIND_OFFSET)) &&
	    (kind & 0x1f) == GO_KIND_STRING && first[3])
		out->key_len = (u8)read_go_string(out->key, KEY_CAP, first[3]);
}

static __always_inline int redis_return(struct pt_regs *ctx, u64 err_itab, u64 err_data)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct redis_calls *calls = bpf_map_lookup_elem(&redis_calls, &key);
	if (!calls || calls->depth == 0 || calls->depth > CALL_DEPTH) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	u32 depth = calls->depth - 1;
	calls->depth = depth;
	struct redis_call *call = depth ? &calls->call[1] : &calls->call[0];
	if (!recorded(call->ctx.sampled))
		goto done;
	struct redis_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		goto done;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->ctx.trace_id, call->ctx.span_id,
			 call->parent_span_id, call->ctx.sampled);
	e->op = call->op;
	e->failed = 0;
	e->error_len = 0;
	e->total_cmds = (u32)call->ncmds;
	e->db = 0;
	e->addr_len = 0;
	e->network_len = 0;
	u64 opt = read_u64(call->client + off_client_opt);
	if (opt) {
		e->addr_len = (u8)read_go_string(e->addr, ADDR_CAP, opt + off_opt_addr);
		e->network_len = (u8)read_go_string(e->network, NETWORK_CAP, opt + off_opt_network);
		bpf_probe_read_user(&e->db, sizeof(e->db), (void *)(opt + off_opt_db));
	}
	/* A pipeline's own error is its first command's, or the connection's: the commands'
	 * errors are read below. */
	if (err_itab)
		take_error(e, err_itab, err_data, call->bias);
	u64 n = call->ncmds < CMDS ? call->ncmds : CMDS;
	e->ncmds = (u8)n;
	for (int i = 0; i < CMDS; i++) {
		struct redis_cmd *out = &e->cmds[i];
		out->name_len = 0;
		out->key_len = 0;
		out->argc = 0;
		if (i >= n)
			continue;
		u64 data = call->cmds_data;
		if (call->op == REDIS_PIPELINE)
			data = read_u64(call->cmds + i * 16 + 8); /* cmds[i]: (itab, data) */
		u64 err[2] = {};
		if (data)
			read_cmd(data, out, err);
		if (call->op == REDIS_PIPELINE && err[0] && !e->failed)
			take_error(e, err[0], err[1], call->bias);
	}
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
done:
	if (depth == 0)
		bpf_map_delete_elem(&redis_calls, &key);
	return 0;
}

SEC("uprobe.multi")
int redis_return_multi(struct pt_regs *ctx)
{
	return redis_return(ctx, GO_ARG1(ctx), GO_ARG2(ctx));
}

SEC("uprobe")
int redis_return_single(struct pt_regs *ctx)
{
	return redis_return(ctx, GO_ARG1(ctx), GO_ARG2(ctx));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
