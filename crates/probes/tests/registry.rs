//! The registry on real binaries: which instrumentations apply to each fixture, which are
//! attached with them, and why the others are skipped. Pure: no privileges needed.

use std::path::{Path, PathBuf};

use goinfo::GoBinary;
use probes::{plan_all, Selection};

fn fixture(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("GOTEL_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    let msg = format!("no fixture {}: run scripts/build-fixtures.sh", path.display());
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// (attached, skipped with their reasons) for one fixture.
fn selected(name: &str) -> Option<(Vec<&'static str>, Vec<String>)> {
    let bin = GoBinary::open(fixture(name)?).unwrap();
    let plans = plan_all(&bin);
    assert_eq!(plans.len(), probes::instrumentations::ALL.len(), "a plan or a skip for each");
    let selection = Selection::of(&plans);
    let attach = selection.attach.iter().map(|(i, _)| i.name()).collect();
    Some((attach, selection.skipped.iter().map(|s| s.to_string()).collect()))
}

#[test]
fn an_http_service_gets_server_client_and_their_goroutine_ancestry() {
    let Some((attach, skipped)) = selected("chain-go1.26") else { return };
    assert_eq!(attach, ["net/http server", "net/http client", "goroutine ancestry"]);
    assert_eq!(
        skipped,
        [
            "gin routes: github.com/gin-gonic/gin is not in the binary",
            "gorilla/mux routes: github.com/gorilla/mux is not in the binary",
            "chi routes: github.com/go-chi/chi/v5 is not in the binary",
            "echo routes: github.com/labstack/echo/v4 is not in the binary",
            "gRPC server: google.golang.org/grpc is not in the binary",
            "gRPC client: google.golang.org/grpc is not in the binary",
            "database/sql: database/sql.(*DB).queryDC is not in the binary",
            "pgx: github.com/jackc/pgx/v5 is not in the binary",
            "go-redis v9: github.com/redis/go-redis/v9 is not in the binary",
            "go-redis v8: github.com/go-redis/redis/v8 is not in the binary",
        ]
    );
}

/// A server that makes no HTTP calls: its queries alone require goroutine ancestry. pgx is
/// linked, for its stdlib driver and its own API: both attach.
#[test]
fn a_database_client_gets_database_sql_pgx_and_goroutine_ancestry() {
    for name in ["dbsql-go1.19", "dbsql-go1.27-pie-stripped", "dbsql/dbsql-v5.0.0-stripped"] {
        let Some((attach, _)) = selected(name) else { return };
        assert_eq!(
            attach,
            ["net/http server", "database/sql", "pgx", "goroutine ancestry"],
            "{name}"
        );
    }
}

/// Both go-redis majors linked: both attach, whichever the program uses.
#[test]
fn a_redis_client_gets_both_go_redis_majors_and_goroutine_ancestry() {
    for name in ["redis-go1.19", "redis-go1.27-pie-stripped", "redis/redis-v9.23.0-stripped"] {
        let Some((attach, _)) = selected(name) else { return };
        assert_eq!(
            attach,
            ["net/http server", "go-redis v9", "go-redis v8", "goroutine ancestry"],
            "{name}"
        );
    }
}

#[test]
fn a_grpc_service_gets_http_grpc_and_goroutine_ancestry() {
    for name in ["grpc/grpc-v1.14.0", "grpc/grpc-v1.40.0", "grpc/grpc-v1.85.0-stripped"] {
        let Some((attach, skipped)) = selected(name) else { return };
        assert_eq!(
            skipped,
            [
                "gin routes: github.com/gin-gonic/gin is not in the binary",
                "gorilla/mux routes: github.com/gorilla/mux is not in the binary",
                "chi routes: github.com/go-chi/chi/v5 is not in the binary",
                "echo routes: github.com/labstack/echo/v4 is not in the binary",
                "database/sql: database/sql.(*DB).queryDC is not in the binary",
                "pgx: github.com/jackc/pgx/v5 is not in the binary",
                "go-redis v9: github.com/redis/go-redis/v9 is not in the binary",
                "go-redis v8: github.com/go-redis/redis/v8 is not in the binary",
            ]
        );
        assert_eq!(
            attach,
            [
                "net/http server",
                "net/http client",
                "gRPC server",
                "gRPC client",
                "goroutine ancestry"
            ],
            "{name}"
        );
    }
}

#[test]
fn plans_report_their_functions_and_fields() {
    let Some(path) = fixture("grpc/grpc-v1.69.0") else { return };
    let bin = GoBinary::open(path).unwrap();
    for planned in plan_all(&bin) {
        let name = planned.instrumentation.name();
        let Ok(plan) = planned.plan else { continue };
        let report = plan.report();
        assert!(!report.functions.is_empty(), "{name} probes a function");
        for f in report.fields {
            assert!(
                planned.instrumentation.fields().contains(&f.spec),
                "{name} reports {} it did not declare",
                f.spec.key()
            );
        }
        if planned.instrumentation.name().starts_with("gRPC") {
            let library = planned.library.as_ref().expect("gRPC's version");
            assert_eq!(library.version, "v1.69.0");
            assert_eq!(library.source, goinfo::VersionSource::BuildInfo);
        }
    }
}
