/* The route a router matched for the request a goroutine serves: a router's instrumentation
 * (gin, gorilla/mux, chi, echo) writes it while the request is routed, the net/http server
 * span takes it at its end over Request.Pattern. The template's bytes are copied when it is
 * matched (from the router's tree, alive as long as the router), with the span it was matched
 * for, so an entry left from an earlier request on a kept-alive connection's goroutine is never
 * taken for a later one. */
#pragma once

#include "gotel.h"

#define ROUTE_CAP 128

struct matched_route {
	u8 span_id[8];
	u32 len;
	u32 _pad;
	char text[ROUTE_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct goroutine_key);
	__type(value, struct matched_route);
} matched_routes SEC(".maps");

/* A matched_route being put together, with room for a part copied at any offset below
 * ROUTE_CAP: the verifier then sees every write in bounds. */
struct route_draft {
	struct matched_route m;
	char spill[ROUTE_CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct route_draft);
} route_drafts SEC(".maps");

/* The draft for the server span `call`, emptied; NULL if the per-CPU buffer is missing. */
static __always_inline struct route_draft *route_draft(const struct server_call *call)
{
	u32 zero = 0;
	struct route_draft *d = bpf_map_lookup_elem(&route_drafts, &zero);
	if (!d)
		return 0;
	__builtin_memcpy(d->m.span_id, call->ctx.span_id, 8);
	d->m.len = 0;
	return d;
}

/* Appends the Go string whose header is at `addr` to the draft, as far as ROUTE_CAP allows;
 * false if it cannot be read or is empty. */
static __always_inline bool route_append(struct route_draft *d, u64 addr)
{
	struct {
		u64 ptr;
		s64 len;
	} s = {};
	if (bpf_probe_read_user(&s, sizeof(s), (void *)addr) || !s.ptr || s.len <= 0)
		return false;
	u32 at = d->m.len;
	if (at >= ROUTE_CAP)
		return true; /* already full: the rest is cut */
	u32 n = s.len > ROUTE_CAP - at ? ROUTE_CAP - at : (u32)s.len;
	n &= 2 * ROUTE_CAP - 1;
	if (n > ROUTE_CAP)
		return false;
	if (bpf_probe_read_user(d->m.text + (at & (ROUTE_CAP - 1)), n, (void *)s.ptr))
		return false;
	d->m.len = at + n;
	return true;
}

/* The draft as the route of goroutine `key`'s request. */
static __always_inline void route_matched_by(const struct goroutine_key *key,
					     struct route_draft *d)
{
	if (d->m.len)
		bpf_map_update_elem(&matched_routes, key, &d->m, BPF_ANY);
}

/* Records the route (a Go string header at `route`) for the server span `call` of the
 * goroutine `key`. With `first_only`, one already recorded for the same span stays: a router
 * whose probe runs more than once a request with the same route (gin's middleware chain). */
static __always_inline void match_route(const struct goroutine_key *key,
					const struct server_call *call, u64 route,
					bool first_only)
{
	if (!recorded(call->ctx.sampled))
		return; /* no span will take it */
	if (first_only) {
		struct matched_route *known = bpf_map_lookup_elem(&matched_routes, key);
		if (known && !__builtin_memcmp(known->span_id, call->ctx.span_id, 8))
			return;
	}
	struct route_draft *d = route_draft(call);
	if (d && route_append(d, route))
		route_matched_by(key, d); /* an empty route is none: nothing matched (a 404) */
}

/* Copies the route matched for the server span `call` of goroutine `key` into `dst`
 * (ROUTE_CAP bytes) and forgets it; its length, 0 for none. */
static __always_inline u16 take_matched_route(const struct goroutine_key *key,
					      const struct server_call *call, char *dst)
{
	struct matched_route *m = bpf_map_lookup_elem(&matched_routes, key);
	if (!m)
		return 0;
	u16 len = 0;
	if (!__builtin_memcmp(m->span_id, call->ctx.span_id, 8) && m->len <= ROUTE_CAP) {
		__builtin_memcpy(dst, m->text, ROUTE_CAP);
		len = (u16)m->len;
	}
	bpf_map_delete_elem(&matched_routes, key);
	return len;
}
