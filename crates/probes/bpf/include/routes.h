/* The route a router matched for the request a goroutine serves: a router's instrumentation
 * (gin, ...) writes it while the handler runs, the net/http server span reads it at its end
 * and takes it over Request.Pattern. The template is the router's own string (its routing
 * tree's, alive as long as the router), so only where it is is kept; and the span it was
 * matched for, so an entry left from an earlier request on a kept-alive connection's
 * goroutine is never taken for a later one. */
#pragma once

#include "gotel.h"

struct matched_route {
	u64 text;
	u64 len;
	u8 span_id[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, struct matched_route);
} matched_routes SEC(".maps");

/* Records the route (a Go string header at `route`) for the server span `call` of the
 * goroutine `key`, once per span. */
static __always_inline void match_route(const struct goroutine_key *key,
					const struct server_call *call, u64 route)
{
	struct matched_route *known = bpf_map_lookup_elem(&matched_routes, key);
	if (known && !__builtin_memcmp(known->span_id, call->ctx.span_id, 8))
		return; /* the router's middleware chain runs this more than once a request */
	struct matched_route m = {};
	if (bpf_probe_read_user(&m, 16, (void *)route) || !m.text || !m.len)
		return; /* nothing matched (a 404): no route */
	__builtin_memcpy(m.span_id, call->ctx.span_id, 8);
	bpf_map_update_elem(&matched_routes, key, &m, BPF_ANY);
}

/* The route matched for the server span `call` of goroutine `key`, if any: its text and
 * length in `*len`. */
static __always_inline u64 route_matched(const struct goroutine_key *key,
					 const struct server_call *call, u64 *len)
{
	struct matched_route *m = bpf_map_lookup_elem(&matched_routes, key);
	if (!m || __builtin_memcmp(m->span_id, call->ctx.span_id, 8))
		return 0;
	*len = m->len;
	return m->text;
}
