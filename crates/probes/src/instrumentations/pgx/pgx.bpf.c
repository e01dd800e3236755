/* pgx v5's own API: a CLIENT span per Query, Exec and SendBatch of a *pgx.Conn, which every
 * pgxpool.Pool, pgxpool.Conn and pgx.Tx call goes through (a transaction's BEGIN, COMMIT and
 * ROLLBACK are Execs). An Exec ends where it returns; a Query when its rows close, and a batch
 * when its results close, as pgx's own tracer has it: that is when the server's answer and any
 * error it ends with have been read. The open rows and batches are keyed by their address.
 * Under a database/sql call (pgx's stdlib driver) no span is made: database/sql's is the one. */
#include "conn.h"
#include "db_calls.h"

#define PGX_QUERY 1 /* (*Conn).Query: error in ARG3-4 */
#define PGX_EXEC 2 /* (*Conn).Exec: error in ARG3-4 */
#define PGX_BATCH 3 /* (*Conn).SendBatch: no error; its results' Close returns it */
#define PGX_OPS 4

/* Link-time address of each operation's entry probe, for a PIE's load bias. */
const volatile u64 entry_address[PGX_OPS] = {};
/* From a *pgx.Conn to the server's socket: Conn.pgConn (*PgConn), then PgConn.conn (a
 * net.Conn), read only when it is a *net.TCPConn, net.(*TCPConn).Close its itab's fun[0]
 * (0: the address is not read). */
const volatile u64 off_conn_pgconn = 0;
const volatile u64 off_pgconn_conn = 0;
const volatile u64 tcpconn_close = 0;
/* From a *pgx.Conn to the database's name: Conn.config (*ConnConfig), then the string at
 * ConnConfig.Config + pgconn.Config.Database. */
const volatile bool has_namespace = false;
const volatile u64 off_conn_config = 0;
const volatile u64 off_config_database = 0;
/* baseRows.err: the error a query's rows ended with. */
const volatile u64 off_rows_err = 0;
/* Batch.queuedQueries ([]*QueuedQuery) and QueuedQuery.query (string), so named up to v5.5.2,
 * QueuedQueries and SQL from v5.5.3. */
const volatile bool has_batch_queries = false;
const volatile u64 off_batch_queries = 0;
const volatile u64 off_queued_sql = 0;
/* (*pgconn.PgError).Error, fun[0] of an `error` itab for one, and PgError.Code (SQLSTATE). */
const volatile u64 pg_error_method = 0;
const volatile u64 off_pg_error_code = 0;

#define TEXT_CAP 1024 /* one statement's text, or BATCH_TEXTS of a batch's */
#define BATCH_TEXTS 4
#define BATCH_TEXT_CAP (TEXT_CAP / BATCH_TEXTS)
#define CODE_CAP 8
#define NS_CAP 64

struct pgx_event {
	struct span_header hdr;
	u8 op;
	u8 failed;
	u8 code_len;
	u8 has_peer;
	u16 ns_len;
	u8 texts; /* how many of text_len are set: 1, or a batch's first BATCH_TEXTS */
	u8 _pad;
	u32 batch_size; /* a batch's statements */
	u16 text_len[BATCH_TEXTS];
	u8 _pad2[4];
	char code[CODE_CAP];
	struct conn_key peer;
	char ns[NS_CAP];
	char text[TEXT_CAP]; /* a batch's i-th statement at i * BATCH_TEXT_CAP */
};

/* A call, from its start to its end. The texts are Go strings, which the rows and batch keep
 * alive until they close. */
struct pgx_call {
	u64 start_ns;
	u64 bias;
	struct span_ctx ctx;
	u8 parent_span_id[8];
	u8 op;
	u8 has_peer;
	u16 ns_len;
	u32 batch_size;
	u64 text[BATCH_TEXTS]; /* pointers */
	u64 text_len[BATCH_TEXTS];
	u64 closing; /* the rows or batch results being closed (pgx_closing) */
	struct conn_key peer;
	char ns[NS_CAP];
};

/* Calls in flight, by goroutine. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct pgx_call);
} pgx_calls SEC(".maps");

struct object_key {
	u32 pid;
	u32 _pad;
	u64 address;
};

/* Queries and batches whose rows or results are open, by their address. LRU: rows a program
 * never closes age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct object_key);
	__type(value, struct pgx_call);
} pgx_open SEC(".maps");

/* Rows or results being closed, by the goroutine closing them (Close's receiver is gone where
 * it returns). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct pgx_call);
} pgx_closing SEC(".maps");

/* Where a *pgx.Conn is connected to: the server's socket and the database's name. */
static __always_inline void conn_facts(u64 conn, u64 bias, struct pgx_call *call)
{
	if (has_namespace) {
		u64 config = read_u64(conn + off_conn_config);
		if (config)
			call->ns_len = read_go_string(call->ns, NS_CAP, config + off_config_database);
	}
	if (!tcpconn_close)
		return;
	u64 pg_conn = read_u64(conn + off_conn_pgconn);
	if (!pg_conn)
		return;
	struct {
		u64 itab;
		u64 data;
	} net_conn = {};
	bpf_probe_read_user(&net_conn, sizeof(net_conn), (void *)(pg_conn + off_pgconn_conn));
	if (net_conn.itab && read_u64(net_conn.itab + 24) - bias == tcpconn_close)
		call->has_peer = go_conn_key(net_conn.data, true, &call->peer);
}

static __always_inline int pgx_enter(struct pt_regs *ctx, u8 op, u64 conn, u64 text,
				     u64 text_len, u64 batch)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (bpf_map_lookup_elem(&db_calls, &key))
		return 0;
	struct pgx_call call = { .op = op };
	call.bias = op < PGX_OPS ? load_bias(ctx, entry_address[op]) : 0;
	call.text[0] = text;
	call.text_len[0] = text_len;
	if (batch) {
		struct {
			u64 ptr;
			s64 len;
		} queued = {};
		if (has_batch_queries)
			bpf_probe_read_user(&queued, sizeof(queued), (void *)(batch + off_batch_queries));
		call.batch_size = queued.len > 0 ? (u32)queued.len : 0;
		u64 queries[BATCH_TEXTS] = {};
		if (queued.ptr && queued.len > 0)
			bpf_probe_read_user(queries, sizeof(queries), (void *)queued.ptr);
		for (int i = 0; i < BATCH_TEXTS; i++) {
			if (i >= queued.len || !queries[i])
				break;
			struct {
				u64 ptr;
				u64 len;
			} sql = {};
			bpf_probe_read_user(&sql, sizeof(sql), (void *)(queries[i] + off_queued_sql));
			call.text[i] = sql.ptr;
			call.text_len[i] = sql.len;
		}
	}
	if (conn)
		conn_facts(conn, call.bias, &call);
	call.start_ns = bpf_ktime_get_ns();
	start_span_ctx(&key, &call.ctx, call.parent_span_id);
	bpf_map_update_elem(&pgx_calls, &key, &call, BPF_ANY);
	return 0;
}

/* func (c *Conn) Query(ctx context.Context, sql string, args ...any) (Rows, error) */
SEC("uprobe")
int pgx_query_enter(struct pt_regs *ctx)
{
	return pgx_enter(ctx, PGX_QUERY, GO_ARG1(ctx), GO_ARG4(ctx), GO_ARG5(ctx), 0);
}

/* func (c *Conn) Exec(ctx context.Context, sql string, arguments ...any)
 *     (pgconn.CommandTag, error) */
SEC("uprobe")
int pgx_exec_enter(struct pt_regs *ctx)
{
	return pgx_enter(ctx, PGX_EXEC, GO_ARG1(ctx), GO_ARG4(ctx), GO_ARG5(ctx), 0);
}

/* func (c *Conn) SendBatch(ctx context.Context, b *Batch) (br BatchResults) */
SEC("uprobe")
int pgx_batch_enter(struct pt_regs *ctx)
{
	return pgx_enter(ctx, PGX_BATCH, GO_ARG1(ctx), 0, 0, GO_ARG4(ctx));
}

/* Sends `call`'s span, ended now by the error (itab, data). */
static __always_inline void pgx_emit(u32 pid, const struct pgx_call *call, u64 err_itab,
				     u64 err_data)
{
	if (!recorded(call->ctx.sampled))
		return;
	struct pgx_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		return;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->ctx.trace_id, call->ctx.span_id,
			 call->parent_span_id, call->ctx.sampled);
	e->op = call->op;
	e->failed = err_itab != 0;
	e->code_len = 0;
	if (err_itab && pg_error_method && read_u64(err_itab + 24) - call->bias == pg_error_method)
		e->code_len = read_go_string(e->code, CODE_CAP, err_data + off_pg_error_code);
	e->has_peer = call->has_peer;
	__builtin_memcpy(&e->peer, &call->peer, sizeof(e->peer));
	e->ns_len = call->ns_len;
	__builtin_memcpy(e->ns, call->ns, sizeof(e->ns));
	e->batch_size = call->batch_size;
	if (call->op == PGX_BATCH) {
		e->texts = 0;
		for (int i = 0; i < BATCH_TEXTS; i++) {
			e->text_len[i] = copy_user_bytes(e->text + i * BATCH_TEXT_CAP, BATCH_TEXT_CAP,
							 call->text[i], (s64)call->text_len[i]);
			if (call->text[i])
				e->texts = i + 1;
		}
	} else {
		e->texts = 1;
		e->text_len[0] = copy_user_bytes(e->text, TEXT_CAP, call->text[0],
						 (s64)call->text_len[0]);
	}
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
}

/* Where Query and SendBatch return: a failed query ends now, else its rows or results (data
 * `object`) are open until they close. Exec ends now. */
static __always_inline int pgx_return(struct pt_regs *ctx, u64 object, u64 err_itab, u64 err_data)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct pgx_call *call = bpf_map_lookup_elem(&pgx_calls, &key);
	if (!call)
		return 0; /* under database/sql, or attached mid-call */
	if (call->op == PGX_EXEC || err_itab || !object) {
		pgx_emit(pid, call, err_itab, err_data);
	} else if (recorded(call->ctx.sampled)) {
		struct object_key open = { .pid = pid, .address = object };
		bpf_map_update_elem(&pgx_open, &open, call, BPF_ANY);
	}
	bpf_map_delete_elem(&pgx_calls, &key);
	return 0;
}

#define PGX_RETURN(name, object, itab, data)                            \
	SEC("uprobe.multi")                                             \
	int name##_multi(struct pt_regs *ctx)                           \
	{                                                               \
		return pgx_return(ctx, object, itab, data);             \
	}                                                               \
	SEC("uprobe")                                                   \
	int name##_single(struct pt_regs *ctx)                          \
	{                                                               \
		return pgx_return(ctx, object, itab, data);             \
	}

/* Query: (Rows, error), the rows' data in ARG2, the error in ARG3-4; Exec: (CommandTag,
 * error), the error in ARG3-4 too; SendBatch: the results' data in ARG2, no error. */
PGX_RETURN(pgx_return_rows, GO_ARG2(ctx), GO_ARG3(ctx), GO_ARG4(ctx))
PGX_RETURN(pgx_return_batch, GO_ARG2(ctx), 0, 0)

/* func (rows *baseRows) Close(); func (br *batchResults) Close() error, and likewise for
 * *pipelineBatchResults: the open call of the receiver, if any, closes. */
SEC("uprobe")
int pgx_close_enter(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct object_key open = { .pid = pid, .address = GO_ARG1(ctx) };
	struct pgx_call *call = bpf_map_lookup_elem(&pgx_open, &open);
	if (!call)
		return 0;
	call->closing = open.address;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	bpf_map_update_elem(&pgx_closing, &key, call, BPF_ANY);
	bpf_map_delete_elem(&pgx_open, &open);
	return 0;
}

/* Where a Close returns, the query's error: for rows in baseRows.err, for a batch the error
 * Close returns. A batch's Close closes the rows of its statements inside: only the kind of
 * call that is closing ends. */
static __always_inline int pgx_close_return(struct pt_regs *ctx, bool rows, u64 err_itab,
					    u64 err_data)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct pgx_call *call = bpf_map_lookup_elem(&pgx_closing, &key);
	if (!call || (call->op == PGX_QUERY) != rows)
		return 0;
	if (rows) {
		struct {
			u64 itab;
			u64 data;
		} err = {};
		bpf_probe_read_user(&err, sizeof(err), (void *)(call->closing + off_rows_err));
		err_itab = err.itab;
		err_data = err.data;
	}
	pgx_emit(pid, call, err_itab, err_data);
	bpf_map_delete_elem(&pgx_closing, &key);
	return 0;
}

#define PGX_CLOSE_RETURN(name, rows, itab, data)                                \
	SEC("uprobe.multi")                                                     \
	int name##_multi(struct pt_regs *ctx)                                   \
	{                                                                       \
		return pgx_close_return(ctx, rows, itab, data);                 \
	}                                                                       \
	SEC("uprobe")                                                           \
	int name##_single(struct pt_regs *ctx)                                  \
	{                                                                       \
		return pgx_close_return(ctx, rows, itab, data);                 \
	}

PGX_CLOSE_RETURN(pgx_rows_closed, true, 0, 0)
PGX_CLOSE_RETURN(pgx_batch_closed, false, GO_ARG1(ctx), GO_ARG2(ctx))

char LICENSE[] SEC("license") = "Dual BSD/GPL";
