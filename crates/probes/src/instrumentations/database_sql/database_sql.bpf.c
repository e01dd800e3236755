/* database/sql client spans, whatever the driver. Every query, exec, prepared statement and
 * transaction step goes through one of seven functions, on the caller's goroutine, none of which
 * calls another: an entry probe records the call (its operation, the query text's address, the
 * driver), a probe at each RET ends it with the error the function returns. The driver is told
 * by its connection's type: the first method of the driver.Conn itab (Begin), compared with the
 * known drivers' methods; likewise a known error type by its Error method. */
#include "conn.h"
#include "db_calls.h"

/* The operation, one per probed function; the function returns its error in the registers its
 * return program reads. */
#define SQL_QUERY 1 /* (*DB).queryDC: error in ARG2-3 */
#define SQL_EXEC 2 /* (*DB).execDC: error in ARG3-4 */
#define SQL_STMT_QUERY 3 /* (*Stmt).QueryContext: error in ARG2-3 */
#define SQL_STMT_EXEC 4 /* (*Stmt).ExecContext: error in ARG3-4 */
#define SQL_BEGIN 5 /* (*DB).beginDC: error in ARG2-3 */
#define SQL_COMMIT 6 /* (*Tx).Commit: error in ARG1-2 */
#define SQL_ROLLBACK 7 /* (*Tx).rollback: error in ARG1-2 */
#define SQL_PREPARE 8 /* (*DB).prepareDC: no span, it tells which driver a DB has */
#define SQL_OPS 9

const volatile u64 off_dc_db = 0; /* driverConn.db (*DB) */
const volatile u64 off_dc_ci = 0; /* driverConn.ci (driver.Conn) */
const volatile u64 off_stmt_db = 0; /* Stmt.db (*DB) */
const volatile u64 off_stmt_query = 0; /* Stmt.query (string) */
const volatile u64 off_tx_dc = 0; /* Tx.dc (*driverConn) */
const volatile u64 off_tx_done = 0; /* Tx.done: non-zero once the transaction has ended */
/* Link-time address of each operation's entry probe: with the probe's run-time address, the
 * load bias of a PIE. */
const volatile u64 entry_address[SQL_OPS] = {};

#define DRIVERS 4
/* Known drivers: the link-time address of their connection type's Begin method (fun[0] of its
 * driver.Conn itab) and the database system they talk to (SYSTEMS in mod.rs); and the way from
 * their connection to its net.Conn: pointers at the first hops' offsets, then the net.Conn at
 * the last one (0 hops: unknown). */
#define CONN_HOPS 3
const volatile u64 driver_begin[DRIVERS] = {};
const volatile u8 driver_system[DRIVERS] = {};
const volatile u64 driver_conn_hop[DRIVERS][CONN_HOPS] = {};
const volatile u8 driver_conn_hops[DRIVERS] = {};
/* The way from a known driver's connection to the name of the database it is connected to:
 * pointers at the hops' offsets, then a Go string at driver_ns_at (0 hops: unknown). */
#define NS_HOPS 2
const volatile u64 driver_ns_hop[DRIVERS][NS_HOPS] = {};
const volatile u8 driver_ns_hops[DRIVERS] = {};
const volatile u64 driver_ns_at[DRIVERS] = {};
/* net.(*TCPConn).Close, fun[0] of a net.Conn itab for a *net.TCPConn: only a plain TCP
 * connection's socket is read (a TLS one holds it elsewhere). */
const volatile u64 tcpconn_close = 0;
/* Whether a driver that another traced library also sees is linked (pgx's stdlib): then calls
 * are marked in db_calls while in flight. */
const volatile bool mark_db_calls = false;

#define ERRORS 4
#define CODE_STRING 1 /* a Go string: PostgreSQL's SQLSTATE */
#define CODE_U16 2 /* a uint16: MySQL's error number */
/* Known error types: the link-time address of their Error method (fun[0] of an `error` itab),
 * and where and how their code is written in the value. */
const volatile u64 error_method[ERRORS] = {};
const volatile u64 error_code_offset[ERRORS] = {};
const volatile u8 error_code_kind[ERRORS] = {};

#define QUERY_CAP 1024
#define CODE_CAP 8
#define NS_CAP 64

struct sql_event {
	struct span_header hdr;
	u8 op;
	u8 system; /* 0: a driver gotel does not know */
	u8 failed; /* the function returned an error */
	u8 code_kind; /* how `code` is written: CODE_*, 0 for none */
	u16 query_len;
	u16 code_len;
	u8 has_peer;
	u8 _pad[7];
	char code[CODE_CAP];
	struct conn_key peer; /* the database's address is the server's */
	char query[QUERY_CAP];
	u16 ns_len;
	u8 _pad2[6];
	char ns[NS_CAP]; /* the database's name: db.namespace */
};

/* What a DB's connections are known to be: its driver's system, and the server its last
 * connection seen went to (a DB's pool dials one data source). */
struct db_facts {
	u8 system;
	u8 has_peer;
	u16 ns_len;
	u8 _pad[4];
	struct conn_key peer;
	char ns[NS_CAP];
};

struct sql_call {
	u64 start_ns;
	u64 query;
	u64 query_len;
	u64 bias;
	struct span_ctx ctx;
	u8 parent_span_id[8];
	u8 op;
	u8 _pad[7];
	struct db_facts facts;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct sql_call);
} sql_calls SEC(".maps");

/* What each *DB seen is known to be (db_facts), for prepared statements, which reach no
 * connection first. */
struct db_key {
	u32 pid;
	u32 _pad;
	u64 db;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct db_key);
	__type(value, struct db_facts);
} sql_dbs SEC(".maps");

/* What the driverConn at `dc` tells: its driver's system and, for a plain TCP connection, the
 * server it is connected to. */
static __always_inline void dc_facts(u64 dc, u64 bias, struct db_facts *facts)
{
	u64 itab = read_u64(dc + off_dc_ci);
	u64 begin = itab ? read_u64(itab + 24) - bias : 0; /* itab.fun[0] */
	int driver = -1;
	for (int i = 0; i < DRIVERS; i++) {
		if (begin && begin == driver_begin[i]) {
			driver = i;
			break;
		}
	}
	if (driver < 0)
		return;
	facts->system = driver_system[driver];
	u8 ns_hops = driver_ns_hops[driver];
	if (ns_hops && ns_hops <= NS_HOPS) {
		u64 at = read_u64(dc + off_dc_ci + 8);
		for (int h = 0; h < NS_HOPS; h++) {
			if (h < ns_hops && at)
				at = read_u64(at + driver_ns_hop[driver][h]);
		}
		if (at)
			facts->ns_len = read_go_string(facts->ns, NS_CAP, at + driver_ns_at[driver]);
	}
	u8 hops = driver_conn_hops[driver];
	if (!hops || hops > CONN_HOPS)
		return;
	u64 at = read_u64(dc + off_dc_ci + 8); /* the driver's connection */
	for (int h = 0; h < CONN_HOPS - 1; h++) {
		if (h + 1 < hops && at)
			at = read_u64(at + driver_conn_hop[driver][h]);
	}
	if (!at)
		return;
	u64 net_conn = at + driver_conn_hop[driver][hops - 1];
	u64 conn_itab = read_u64(net_conn);
	if (!conn_itab || !tcpconn_close || read_u64(conn_itab + 24) - bias != tcpconn_close)
		return;
	facts->has_peer = go_conn_key(read_u64(net_conn + 8), true, &facts->peer);
}

static __always_inline int sql_enter(struct pt_regs *ctx, u8 op, u64 db, u64 dc, u64 query,
				     u64 query_len)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	u64 bias = op < SQL_OPS ? load_bias(ctx, entry_address[op]) : 0;
	struct db_key dbk = { .pid = pid, .db = db };
	struct sql_call call = {
		.query = query,
		.query_len = query_len,
		.bias = bias,
		.op = op,
	};
	if (dc) {
		dc_facts(dc, bias, &call.facts);
		if (db)
			bpf_map_update_elem(&sql_dbs, &dbk, &call.facts, BPF_ANY);
	} else if (db) {
		struct db_facts *known = bpf_map_lookup_elem(&sql_dbs, &dbk);
		if (known)
			call.facts = *known;
	}
	if (op == SQL_PREPARE)
		return 0;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	call.start_ns = bpf_ktime_get_ns();
	start_span_ctx(&key, &call.ctx, call.parent_span_id);
	bpf_map_update_elem(&sql_calls, &key, &call, BPF_ANY);
	if (mark_db_calls) {
		u8 in_call = 1;
		bpf_map_update_elem(&db_calls, &key, &in_call, BPF_ANY);
	}
	return 0;
}

/* func (db *DB) queryDC(ctx, txctx context.Context, dc *driverConn, releaseConn func(error),
 *                       query string, args []any) (*Rows, error) */
SEC("uprobe")
int sql_query_enter(struct pt_regs *ctx)
{
	return sql_enter(ctx, SQL_QUERY, GO_ARG1(ctx), GO_ARG6(ctx), GO_ARG8(ctx), GO_ARG9(ctx));
}

/* func (db *DB) execDC(ctx context.Context, dc *driverConn, release func(error), query string,
 *                      args []any) (Result, error) */
SEC("uprobe")
int sql_exec_enter(struct pt_regs *ctx)
{
	return sql_enter(ctx, SQL_EXEC, GO_ARG1(ctx), GO_ARG4(ctx), GO_ARG6(ctx), GO_ARG7(ctx));
}

/* func (db *DB) prepareDC(ctx context.Context, dc *driverConn, release func(error),
 *                         cg stmtConnGrabber, query string) (*Stmt, error) */
SEC("uprobe")
int sql_prepare_enter(struct pt_regs *ctx)
{
	return sql_enter(ctx, SQL_PREPARE, GO_ARG1(ctx), GO_ARG4(ctx), 0, 0);
}

/* func (db *DB) beginDC(ctx context.Context, dc *driverConn, release func(error),
 *                       opts *TxOptions) (*Tx, error) */
SEC("uprobe")
int sql_begin_enter(struct pt_regs *ctx)
{
	return sql_enter(ctx, SQL_BEGIN, GO_ARG1(ctx), GO_ARG4(ctx), 0, 0);
}

/* func (s *Stmt) QueryContext / ExecContext(ctx context.Context, args ...any) */
static __always_inline int sql_stmt_enter(struct pt_regs *ctx, u8 op)
{
	u64 stmt = GO_ARG1(ctx);
	struct {
		u64 ptr;
		u64 len;
	} query = {};
	bpf_probe_read_user(&query, sizeof(query), (void *)(stmt + off_stmt_query));
	return sql_enter(ctx, op, read_u64(stmt + off_stmt_db), 0, query.ptr, query.len);
}

SEC("uprobe")
int sql_stmt_query_enter(struct pt_regs *ctx)
{
	return sql_stmt_enter(ctx, SQL_STMT_QUERY);
}

SEC("uprobe")
int sql_stmt_exec_enter(struct pt_regs *ctx)
{
	return sql_stmt_enter(ctx, SQL_STMT_EXEC);
}

/* func (tx *Tx) Commit() error; func (tx *Tx) rollback(discardConn bool) error */
static __always_inline int sql_tx_enter(struct pt_regs *ctx, u8 op)
{
	u64 tx = GO_ARG1(ctx);
	/* Every transaction's own goroutine rolls back once it is done, and a deferred Rollback
	 * after Commit does too: both return ErrTxDone at once, and are no operation. */
	u32 done = 0;
	bpf_probe_read_user(&done, sizeof(done), (void *)(tx + off_tx_done));
	if (op == SQL_ROLLBACK && done)
		return 0;
	u64 dc = read_u64(tx + off_tx_dc);
	return sql_enter(ctx, op, dc ? read_u64(dc + off_dc_db) : 0, dc, 0, 0);
}

SEC("uprobe")
int sql_commit_enter(struct pt_regs *ctx)
{
	return sql_tx_enter(ctx, SQL_COMMIT);
}

SEC("uprobe")
int sql_rollback_enter(struct pt_regs *ctx)
{
	return sql_tx_enter(ctx, SQL_ROLLBACK);
}

/* Ends the goroutine's call with the error (itab, data) its function returned. */
static __always_inline int sql_return(struct pt_regs *ctx, u64 err_itab, u64 err_data)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (mark_db_calls)
		bpf_map_delete_elem(&db_calls, &key);
	struct sql_call *call = bpf_map_lookup_elem(&sql_calls, &key);
	if (!call) {
		if (pid_traced(pid))
			count(STAT_NO_ENTRY);
		return 0;
	}
	if (!recorded(call->ctx.sampled)) {
		bpf_map_delete_elem(&sql_calls, &key);
		return 0;
	}
	struct sql_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RINGBUF_FULL);
		bpf_map_delete_elem(&sql_calls, &key);
		return 0;
	}
	fill_span_header(&e->hdr, pid, call->start_ns, call->ctx.trace_id, call->ctx.span_id,
			 call->parent_span_id, call->ctx.sampled);
	e->op = call->op;
	e->system = call->facts.system;
	e->has_peer = call->facts.has_peer;
	__builtin_memcpy(&e->peer, &call->facts.peer, sizeof(e->peer));
	e->ns_len = call->facts.ns_len;
	__builtin_memcpy(e->ns, call->facts.ns, sizeof(e->ns));
	e->failed = err_itab != 0;
	e->code_kind = 0;
	e->code_len = 0;
	if (err_itab) {
		u64 method = read_u64(err_itab + 24) - call->bias; /* itab.fun[0]: Error */
		for (int i = 0; i < ERRORS; i++) {
			if (!method || method != error_method[i])
				continue;
			e->code_kind = error_code_kind[i];
			u64 at = err_data + error_code_offset[i];
			if (error_code_kind[i] == CODE_STRING) {
				e->code_len = read_go_string(e->code, CODE_CAP, at);
			} else if (!bpf_probe_read_user(e->code, 2, (void *)at)) {
				e->code_len = 2;
			}
			break;
		}
	}
	e->query_len = copy_user_bytes(e->query, QUERY_CAP, call->query, (s64)call->query_len);
	bpf_map_delete_elem(&sql_calls, &key);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(sizeof(*e)));
	return 0;
}

/* One pair of return programs per error register pair: a uprobe_multi link for all RETs where
 * the kernel has it (6.6+), one uprobe per RET otherwise. */
#define SQL_RETURN(name, itab, data)                            \
	SEC("uprobe.multi")                                     \
	int name##_multi(struct pt_regs *ctx)                   \
	{                                                       \
		return sql_return(ctx, itab(ctx), data(ctx));   \
	}                                                       \
	SEC("uprobe")                                           \
	int name##_single(struct pt_regs *ctx)                  \
	{                                                       \
		return sql_return(ctx, itab(ctx), data(ctx));   \
	}

SQL_RETURN(sql_return_arg1, GO_ARG1, GO_ARG2)
SQL_RETURN(sql_return_arg2, GO_ARG2, GO_ARG3)
SQL_RETURN(sql_return_arg3, GO_ARG3, GO_ARG4)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
