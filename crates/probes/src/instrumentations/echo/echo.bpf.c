/* echo routes: the path of the route echo's router matched (context.path, what c.Path()
 * gives), read where (*Echo).ServeHTTP's call to (*Router).Find returns (router_call.h), or
 * its closure's when Pre middleware runs first, through the Context it was given: only
 * echo's own *context, told by its itab (a Pre middleware may pass its own type). Until
 * v4.11 Find leaves the request's own path there when nothing matched: a path with the bytes
 * of the one Find was given is no route (it would be the raw path). */
#include "router_call.h"
#include "routes.h"

const volatile u64 off_ctx_path = 0;
const volatile u32 hash_context = 0; /* of *echo.context */

/* At the call: func (r *Router) Find(method, path string, c Context); path's bytes kept. */
SEC("uprobe")
int echo_find_call(struct pt_regs *ctx)
{
	u32 hash = 0;
	bpf_probe_read_user(&hash, sizeof(hash), (void *)(GO_ARG6(ctx) + ITAB_HASH));
	if (hash == hash_context)
		remember_for_route(ctx, GO_ARG7(ctx), GO_ARG4(ctx));
	return 0;
}

SEC("uprobe")
int echo_find_returned(struct pt_regs *ctx)
{
	struct goroutine_key key;
	struct server_call *call;
	u64 path = 0, c = recall_for_route(ctx, &key, &call, &path);
	if (c && read_u64(c + off_ctx_path) != path)
		match_route(&key, call, c + off_ctx_path, false);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
