/* Goroutine ancestry: a goroutine started while its parent works for a span works for that
 * span too, at any depth. runtime.newproc1(fn, callergp, callerpc, ...) returns the new g; it
 * runs on the system stack, so its entry and return are matched by thread, not goroutine.
 * The cheap placement probes runtime.newproc.func1's two direct calls instead (calls are
 * emulated, a RET is single-stepped): `CALL newproc1` (same arguments as its entry) and the
 * `CALL runqput(pp, newg, true)` that follows it. */
#include "gotel.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* pid_tgid: the thread inside newproc1 */
	__type(value, u64); /* callergp */
} spawning SEC(".maps");

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

static __always_inline int goroutine_spawned(u64 newg)
{
	u64 id = bpf_get_current_pid_tgid();
	u64 *callergp = bpf_map_lookup_elem(&spawning, &id);
	if (!callergp)
		return 0;
	u32 pid = id >> 32;
	struct goroutine_key parent = { .pid = pid, .g = *callergp };
	struct goroutine_key child = { .pid = pid, .g = newg };
	bpf_map_delete_elem(&spawning, &id);
	struct span_ctx *inherited = bpf_map_lookup_elem(&goroutine_ctx, &parent);
	/* g structs are recycled: always overwrite what a dead goroutine left behind. */
	if (inherited) {
		struct span_ctx copy = *inherited;
		bpf_map_update_elem(&goroutine_ctx, &child, &copy, BPF_ANY);
	} else {
		bpf_map_delete_elem(&goroutine_ctx, &child);
	}
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
	return goroutine_spawned(GO_ARG2(ctx));
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
