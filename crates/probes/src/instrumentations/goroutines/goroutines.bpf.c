/* Goroutine ancestry: a goroutine started while its parent works for a span works for that
 * span too, at any depth. runtime.newproc1(fn, callergp, callerpc, ...) returns the new g; it
 * runs on the system stack, so its entry and return are matched by thread, not goroutine.
 * The cheap placement probes runtime.newproc.func1's two direct calls instead (calls are
 * emulated, a RET is single-stepped): `CALL newproc1` (same arguments as its entry) and the
 * `CALL runqput(pp, newg, true)` that follows it. Where the offsets of g.m and m.curg are
 * known, the second alone suffices: on the system stack the g register holds g0, and g0's
 * m.curg is the goroutine whose `go` statement this is. */
#include "gotel.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* pid_tgid: the thread inside newproc1 */
	__type(value, u64); /* callergp */
} spawning SEC(".maps");

const volatile bool parent_from_m = false;
const volatile u64 off_g_m = 0;
const volatile u64 off_m_curg = 0;

/* Goroutines net/http starts for itself (a server connection's background read, once per
 * request; a client connection's read and write loops) never work for a span: told apart by
 * where their `go` statement is, they are spared the map lookups. Link-time addresses;
 * queue_call_address is the probed CALL's, so the difference to the probe's run-time address
 * is the load bias of a PIE. */
#define NO_SPAN_STARTERS 4
const volatile u64 off_g_gopc = 0;
const volatile u64 queue_call_address = 0;
const volatile u64 no_span_starter_begin[NO_SPAN_STARTERS] = {};
const volatile u64 no_span_starter_end[NO_SPAN_STARTERS] = {};

static __always_inline bool works_for_no_span(struct pt_regs *ctx, u64 newg)
{
	if (!off_g_gopc)
		return false;
	u64 pc = read_u64(newg + off_g_gopc) - load_bias(ctx, queue_call_address);
	for (int i = 0; i < NO_SPAN_STARTERS; i++)
		if (pc >= no_span_starter_begin[i] && pc < no_span_starter_end[i])
			return true;
	return false;
}

SEC("uprobe")
int goroutine_spawn_enter(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!pid_traced(id >> 32))
		return 0;
	u64 callergp = GO_ARG2(ctx);
	bpf_map_update_elem(&spawning, &id, &callergp, BPF_ANY);
	return 0;
}

static __always_inline void inherit(u32 pid, u64 callergp, u64 newg)
{
	struct goroutine_key parent = { .pid = pid, .g = callergp };
	struct goroutine_key child = { .pid = pid, .g = newg };
	struct span_ctx *inherited = goroutine_span(&parent);
	/* g structs are recycled: always overwrite what a dead goroutine left behind, the HTTP
	 * request it served too (a hijacked or killed request never reached its end). A new
	 * goroutine serves no request yet. */
	if (inherited) {
		struct span_ctx copy = *inherited;
		bpf_map_update_elem(&goroutine_ctx, &child, &copy, BPF_ANY);
	} else {
		bpf_map_delete_elem(&goroutine_ctx, &child);
	}
	bpf_map_delete_elem(&server_calls, &child);
}

static __always_inline int goroutine_spawned(u64 newg)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 *callergp = bpf_map_lookup_elem(&spawning, &id);
	if (!callergp)
		return 0;
	u64 parent = *callergp;
	bpf_map_delete_elem(&spawning, &id);
	inherit(id >> 32, parent, newg);
	return 0;
}

static __always_inline int goroutine_spawn_return(struct pt_regs *ctx)
{
	return goroutine_spawned(GO_ARG1(ctx) /* newproc1's result */);
}

/* At `CALL runqput(pp, newg, next)` right after newproc1 returned. */
SEC("uprobe")
int goroutine_spawn_queued(struct pt_regs *ctx)
{
	if (works_for_no_span(ctx, GO_ARG2(ctx)))
		return 0;
	if (!parent_from_m)
		return goroutine_spawned(GO_ARG2(ctx));
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (!pid_traced(pid))
		return 0;
	u64 m = read_u64(GO_G(ctx) + off_g_m);
	u64 curg = m ? read_u64(m + off_m_curg) : 0;
	if (curg)
		inherit(pid, curg, GO_ARG2(ctx));
	return 0;
}

SEC("uprobe.multi")
int goroutine_spawn_return_multi(struct pt_regs *ctx)
{
	return goroutine_spawn_return(ctx);
}

SEC("uprobe")
int goroutine_spawn_return_single(struct pt_regs *ctx)
{
	return goroutine_spawn_return(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
