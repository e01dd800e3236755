/* gin routes: the route template gin matched (Context.fullPath, set before the handlers run)
 * for the net/http server span of the request, read on the request's goroutine where the
 * handler chain goes on: (*Context).Next's entry. Where the compiler inlined every call of
 * Next (Go 1.19 builds of older gin), at the RETs of (*Engine).handleHTTPRequest instead, the
 * Context recorded at its entry: it goes back to gin's pool only after that returns. */
#include "routes.h"

const volatile u64 off_ctx_full_path = 0;

/* func (c *Context) Next(): c in ARG1. */
SEC("uprobe")
int gin_next(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	struct server_call *call = bpf_map_lookup_elem(&server_calls, &key);
	if (!call)
		return 0; /* not serving a traced request */
	match_route(&key, call, GO_ARG1(ctx) + off_ctx_full_path, true);
	return 0;
}

/* The Context each goroutine's handleHTTPRequest works on, between its entry and RETs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, u64);
} gin_contexts SEC(".maps");

/* func (engine *Engine) handleHTTPRequest(c *Context): c in ARG2. */
SEC("uprobe")
int gin_handle_enter(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	if (!bpf_map_lookup_elem(&server_calls, &key))
		return 0;
	u64 c = GO_ARG2(ctx);
	bpf_map_update_elem(&gin_contexts, &key, &c, BPF_ANY);
	return 0;
}

static __always_inline int gin_handle_return(struct pt_regs *ctx)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct goroutine_key key = { .pid = pid, .g = GO_G(ctx) };
	u64 *c = bpf_map_lookup_elem(&gin_contexts, &key);
	if (!c)
		return 0;
	u64 context = *c;
	bpf_map_delete_elem(&gin_contexts, &key);
	struct server_call *call = bpf_map_lookup_elem(&server_calls, &key);
	if (call)
		match_route(&key, call, context + off_ctx_full_path, true);
	return 0;
}

SEC("uprobe.multi")
int gin_handle_return_multi(struct pt_regs *ctx)
{
	return gin_handle_return(ctx);
}

SEC("uprobe")
int gin_handle_return_single(struct pt_regs *ctx)
{
	return gin_handle_return(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
