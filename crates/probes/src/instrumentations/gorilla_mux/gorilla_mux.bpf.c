/* gorilla/mux routes: the path template of the route (*Router).Match matched, read where
 * (*Router).ServeHTTP's call to it returns (router_call.h), through the *RouteMatch it was
 * given: RouteMatch.Route, then Route's regexp group (a pointer before v1.7, a value inside the
 * embedded routeConf from v1.7), its path regexp, and that one's template. A route without a
 * path (a Host-only route) and a request nothing matched have none. A router nested as another
 * router's handler matches after the outer one, and its route, the more specific, wins. */
#include "router_call.h"
#include "routes.h"

const volatile u64 off_match_route = 0;
const volatile u64 off_route_regexp = 0;
const volatile bool regexp_by_pointer = false; /* before v1.7 */
const volatile u64 off_group_path = 0;
const volatile u64 off_regexp_template = 0;

/* At the call: func (r *Router) Match(req *http.Request, match *RouteMatch) bool. */
SEC("uprobe")
int mux_match_call(struct pt_regs *ctx)
{
	remember_for_route(ctx, GO_ARG3(ctx), 0);
	return 0;
}

SEC("uprobe")
int mux_match_returned(struct pt_regs *ctx)
{
	struct goroutine_key key;
	struct server_call *call;
	u64 match = recall_for_route(ctx, &key, &call, 0);
	if (!match)
		return 0;
	u64 route = read_u64(match + off_match_route);
	if (!route)
		return 0;
	u64 group = route + off_route_regexp;
	if (regexp_by_pointer && !(group = read_u64(group)))
		return 0;
	u64 path = read_u64(group + off_group_path);
	if (path)
		match_route(&key, call, path + off_regexp_template, false);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
