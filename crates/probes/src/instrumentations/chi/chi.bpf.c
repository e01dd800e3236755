/* chi routes: the route pattern chi matched, as (*Context).RoutePattern() gives it, read where
 * each (*Mux).routeHTTP's call to (*node).FindRoute returns (router_call.h), through the
 * *Context it was given. FindRoute appends the pattern it matched to Context.RoutePatterns, one
 * per router on the way (a router mounted in another adds its own), so after the innermost the
 * list is whole; they are joined with each mount's trailing wildcard ("/" then "*") dropped
 * where the next part follows, as RoutePattern does, and from v5.0.8 a trailing slash cut as
 * it does. More parts than ROUTE_PARTS: no route rather than a wrong one. */
#include "router_call.h"
#include "routes.h"

#define ROUTE_PARTS 4

const volatile u64 off_ctx_route_patterns = 0;
const volatile bool trims_trailing_slash = false;

/* At the call: func (n *node) FindRoute(rctx *Context, method methodTyp, path string). */
SEC("uprobe")
int chi_find_call(struct pt_regs *ctx)
{
	remember_for_route(ctx, GO_ARG2(ctx), 0);
	return 0;
}

/* The draft's byte at `i` (below 2 * ROUTE_CAP). */
static __always_inline char *draft_byte(struct route_draft *d, u32 i)
{
	return &d->m.text[i & (2 * ROUTE_CAP - 1)];
}

/* Drops `suffix` (2 bytes at most) from the draft's end if it ends so. */
static __always_inline void trim_suffix(struct route_draft *d, const char *suffix, u32 n)
{
	u32 len = d->m.len;
	if (len < n || len > ROUTE_CAP)
		return;
	for (u32 i = 0; i < 2; i++)
		if (i < n && *draft_byte(d, len - n + i) != suffix[i])
			return;
	d->m.len = len - n;
}

SEC("uprobe")
int chi_find_returned(struct pt_regs *ctx)
{
	struct goroutine_key key;
	struct server_call *call;
	u64 rctx = recall_for_route(ctx, &key, &call, 0);
	if (!rctx)
		return 0;
	struct {
		u64 ptr;
		u64 len;
	} patterns = {};
	if (bpf_probe_read_user(&patterns, sizeof(patterns), (void *)(rctx + off_ctx_route_patterns)))
		return 0;
	if (!patterns.len || patterns.len > ROUTE_PARTS)
		return 0; /* nothing matched yet, or nested deeper than read */
	struct route_draft *d = route_draft(call);
	if (!d)
		return 0;
	for (u32 i = 0; i < ROUTE_PARTS; i++) {
		if (i >= patterns.len)
			break;
		if (i && d->m.len >= 2)
			trim_suffix(d, "/*", 2); /* a mount's wildcard, the next part following */
		if (!route_append(d, patterns.ptr + 16 * i))
			return 0;
	}
	if (trims_trailing_slash && !(d->m.len == 1 && *draft_byte(d, 0) == '/')) {
		trim_suffix(d, "//", 2);
		trim_suffix(d, "/", 1);
	}
	route_matched_by(&key, d);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
