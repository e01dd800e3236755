/* A router's matcher seen from its caller, without a RET probe: at the call (an instruction
 * the kernel emulates, the arguments in their registers) the instrumentation keeps the
 * argument where the matcher leaves its result, and at the first branch after the call
 * returns (plan.rs `CallReturn`) reads the result through it. An argument on the goroutine's
 * stack is kept relative to the stack pointer: the stack may move (grow) during the call, the
 * caller's frame with it. */
#pragma once

#include "gotel.h"

struct pending_call {
	u64 arg;
	u64 on_stack;
	u64 aux; /* a second value the instrumentation keeps as it is */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct pending_call);
} pending_calls SEC(".maps");

/* At a router's call to its matcher: keeps `arg` (and `aux`) if the goroutine serves a request
 * whose span is recorded (only its span takes a route). */
static __always_inline void remember_for_route(struct pt_regs *ctx, u64 arg, u64 aux)
{
	struct goroutine_key key = { .pid = bpf_get_current_pid_tgid() >> 32, .g = GO_G(ctx) };
	struct server_call *call = bpf_map_lookup_elem(&server_calls, &key);
	if (!call || !recorded(call->ctx.sampled))
		return;
	struct {
		u64 lo, hi;
	} stack = {}; /* runtime.g starts with its stack's bounds */
	struct pending_call p = { .arg = arg, .aux = aux };
	if (!bpf_probe_read_user(&stack, sizeof(stack), (void *)key.g) && arg >= stack.lo &&
	    arg < stack.hi) {
		p.arg = arg - ctx->sp;
		p.on_stack = 1;
	}
	bpf_map_update_elem(&pending_calls, &key, &p, BPF_ANY);
}

/* Where that call returned: the argument kept (and in `*aux`, if asked, the other value),
 * forgotten, with the goroutine's `key` and the request it serves in `*call`; 0 if none. */
static __always_inline u64 recall_for_route(struct pt_regs *ctx, struct goroutine_key *key,
					    struct server_call **call, u64 *aux)
{
	*key = (struct goroutine_key){ .pid = bpf_get_current_pid_tgid() >> 32, .g = GO_G(ctx) };
	*call = 0;
	struct pending_call *p = bpf_map_lookup_elem(&pending_calls, key);
	if (!p)
		return 0;
	u64 arg = p->on_stack ? ctx->sp + p->arg : p->arg;
	if (aux)
		*aux = p->aux;
	bpf_map_delete_elem(&pending_calls, key);
	*call = bpf_map_lookup_elem(&server_calls, key);
	return *call ? arg : 0;
}
