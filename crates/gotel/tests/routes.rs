//! Routes from routers' own matches: the net/http server span of a request a router routed
//! is named `{method} {route}` and has the router's template as `http.route`, never the raw
//! path; a request nothing matched has no route.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// gin (fixtures/gin against the gin `fixture`): a parameter, a catch-all, a route in a group
/// behind a middleware (whose c.Next() runs the chain again), and a 404.
fn gin_routes(fixture_name: &str) {
    let Some(()) = privileged() else { return };
    let collector = Collector::start(fixture_name);
    let port = free_port();
    let fx = fixture(&format!("gin/{fixture_name}"));
    let addr = format!("127.0.0.1:{port}");
    let mut gotel =
        gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("attached gin routes", WAIT);
    // (path, status, route, body)
    let cases = [
        ("/users/42", 200, Some("/users/:id"), "user 42"),
        ("/users/43", 200, Some("/users/:id"), "user 43"),
        ("/files/a/b.txt", 200, Some("/files/*path"), "file /a/b.txt"),
        ("/api/v1/items/7", 200, Some("/api/v1/items/:id"), "item 7"),
        ("/nope", 404, None, "404 page not found"),
    ];
    for (path, status, _, body) in cases {
        assert_eq!(http_get(port, path), (status, body.to_string()), "{path}");
    }
    let spans = collector.wait_for_spans(cases.len(), WAIT);
    for (path, status, route, _) in cases {
        let s = spans
            .iter()
            .find(|s| s.attr_str("url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no span for {path}: {spans:#?}"));
        assert_eq!(s.attr_str("http.route").as_deref(), route, "{path}");
        assert_eq!(s.name(), route.map_or("GET".to_string(), |r| format!("GET {r}")), "{path}");
        assert_eq!(s.attr_int("http.response.status_code"), Some(i64::from(status)), "{path}");
    }
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
}

#[test]
fn gin_routes_v1_7_oldest() {
    gin_routes("gin-v1.7.7");
}

#[test]
fn gin_routes_v1_12_newest_stripped() {
    gin_routes("gin-v1.12.0-stripped");
}
