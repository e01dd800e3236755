//! Routes from routers' own matches: the net/http server span of a request a router routed
//! is named `{method} {route}` and has the router's template as `http.route`, never the raw
//! path; a request nothing matched has no route.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A request and what its span must say: (path, status, route; None where nothing matched).
type Case<'a> = (&'a str, u16, Option<&'a str>);

/// Rounds of every case at once, after the cases one by one: a route is never another
/// request's.
const CONCURRENT_ROUNDS: usize = 5;

/// Runs `fixture` (fixtures/ROUTER against one release) under gotel, sends each case, one by
/// one and then CONCURRENT_ROUNDS times all at once, and checks the responses with
/// `body(case)`, then that each span has its case's route as `http.route` and in its name.
fn check_routes(
    instrumentation: &str,
    fixture: &str,
    args: &[&str],
    cases: &[Case<'_>],
    body: impl Fn(&Case<'_>) -> String,
) {
    let Some(()) = privileged() else { return };
    let (router, _) = fixture.split_once('-').unwrap();
    let collector = Collector::start(fixture);
    let port = free_port();
    let fx = support::fixture(&format!("{router}/{fixture}"));
    let addr = format!("127.0.0.1:{port}");
    let mut argv = vec!["run", "--", fx.to_str().unwrap(), "-addr", &addr];
    argv.extend_from_slice(args);
    let mut gotel = gotel(&argv, Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log(&format!("attached {instrumentation}"), WAIT);
    for case in cases {
        assert_eq!(http_get(port, case.0), (case.1, body(case)), "{}", case.0);
    }
    std::thread::scope(|scope| {
        for case in cases.iter().cycle().take(cases.len() * CONCURRENT_ROUNDS) {
            let expected = (case.1, body(case));
            scope.spawn(move || assert_eq!(http_get(port, case.0), expected, "{}", case.0));
        }
    });
    let sent = cases.len() * (1 + CONCURRENT_ROUNDS);
    let spans = collector.wait_for_spans(sent, WAIT);
    assert_eq!(spans.len(), sent, "one span per request");
    for s in &spans {
        let path = s.attr_str("url.path").unwrap_or_default();
        let &(_, status, route) = cases
            .iter()
            .find(|c| c.0 == path)
            .unwrap_or_else(|| panic!("a span for no request sent: {s:#?}"));
        assert_eq!(s.attr_str("http.route").as_deref(), route, "{path}");
        assert_eq!(s.name(), route.map_or("GET".to_string(), |r| format!("GET {r}")), "{path}");
        assert_eq!(s.attr_int("http.response.status_code"), Some(i64::from(status)), "{path}");
    }
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
}

/// The body of fixtures/gorilla, chi and echo: "route " and the route as the router itself
/// reports it to the handler, so the span agrees with the router, not only with the cases.
fn reported_route(case: &Case<'_>) -> String {
    format!("route {}", case.2.unwrap_or(""))
}

/// gin (fixtures/gin against the gin `fixture`): a parameter, a catch-all, a route in a group
/// behind a middleware (whose c.Next() runs the chain again), and a 404.
fn gin_routes(fixture: &str) {
    let cases = [
        ("/users/42", 200, Some("/users/:id")),
        ("/users/43", 200, Some("/users/:id")),
        ("/files/a/b.txt", 200, Some("/files/*path")),
        ("/api/v1/items/7", 200, Some("/api/v1/items/:id")),
        ("/nope", 404, None),
    ];
    check_routes("gin routes", fixture, &[], &cases, |case| match case.0 {
        "/users/42" => "user 42".into(),
        "/users/43" => "user 43".into(),
        "/files/a/b.txt" => "file /a/b.txt".into(),
        "/api/v1/items/7" => "item 7".into(),
        _ => "404 page not found".into(),
    });
}

#[test]
fn gin_routes_v1_7_oldest() {
    gin_routes("gin-v1.7.7");
}

#[test]
fn gin_routes_v1_12_newest_stripped() {
    gin_routes("gin-v1.12.0-stripped");
}

/// gorilla/mux: variables, a regexp variable, a path prefix, a subrouter behind a middleware
/// (its template has the prefix), and what matches nothing (a variable's regexp refused too).
fn gorilla_routes(fixture: &str) {
    let cases = [
        ("/users/42", 200, Some("/users/{id}")),
        ("/files/a/b.txt", 200, Some("/files/{path:.*}")),
        ("/static/app.css", 200, Some("/static/")),
        ("/api/v1/items/7", 200, Some("/api/v1/items/{id:[0-9]+}")),
        ("/api/v1/items/x", 404, None),
        ("/nope", 404, None),
    ];
    check_routes("gorilla/mux routes", fixture, &[], &cases, reported_route);
}

#[test]
fn gorilla_routes_v1_6_oldest_stripped() {
    gorilla_routes("gorilla-v1.6.2-stripped");
}

#[test]
fn gorilla_routes_v1_7_first_with_route_conf() {
    gorilla_routes("gorilla-v1.7.0");
}

#[test]
fn gorilla_routes_v1_8_newest_stripped() {
    gorilla_routes("gorilla-v1.8.1-stripped");
}

/// chi: parameters, a catch-all, a sub-router (Route) and routers mounted two deep, whose
/// patterns chi joins; `api_root` is the sub-router's "/" as this release reports it.
fn chi_routes(fixture: &str, api_root: &str) {
    let cases = [
        ("/users/42", 200, Some("/users/{id}")),
        ("/files/a/b.txt", 200, Some("/files/*")),
        ("/api/v1/items/7", 200, Some("/api/v1/items/{id}")),
        ("/api/v1/", 200, Some(api_root)),
        ("/admin/stats", 200, Some("/admin/stats")),
        ("/admin/deep/9", 200, Some("/admin/deep/{x}")),
        ("/nope", 404, None),
    ];
    check_routes("chi routes", fixture, &[], &cases, reported_route);
}

#[test]
fn chi_routes_v5_0_oldest() {
    chi_routes("chi-v5.0.0", "/api/v1//");
}

#[test]
fn chi_routes_v5_0_8_cuts_the_trailing_slash() {
    chi_routes("chi-v5.0.8", "/api/v1");
}

#[test]
fn chi_routes_v5_5_newest_stripped() {
    chi_routes("chi-v5.5.0-stripped", "/api/v1");
}

/// echo: parameters, a catch-all, a group behind a middleware, and a 404; `args` add a Pre
/// middleware (then echo routes in a closure). Where echo itself reports the raw path of a
/// request nothing matched (before v4.11), the span has no route all the same.
fn echo_routes(fixture: &str, args: &[&str]) {
    let cases = [
        ("/users/42", 200, Some("/users/:id")),
        ("/files/a/b.txt", 200, Some("/files/*")),
        ("/api/v1/items/7", 200, Some("/api/v1/items/:id")),
        ("/nope", 404, None),
    ];
    check_routes("echo routes", fixture, args, &cases, |case| match case.0 {
        "/nope" if fixture.starts_with("echo-v4.0.") => "route /nope".into(),
        _ => reported_route(case),
    });
}

#[test]
fn echo_routes_v4_0_oldest() {
    echo_routes("echo-v4.0.0", &[]);
}

#[test]
fn echo_routes_v4_16_newest_stripped_with_pre_middleware() {
    echo_routes("echo-v4.16.5-stripped", &["-pre"]);
}
