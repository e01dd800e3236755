//! Every instrumentation, one folder each (by the Go import path it instruments), and `ALL`,
//! the one list of them that `gotel inspect`, `run`, `attach` and the daemon go through.
//!
//! A new instrumentation is a folder here with its `NAME.bpf.c` (build.rs finds it), a
//! `mod.rs` implementing `Instrumentation` and its `Plan`, its event decoding and its span
//! conventions; then a `mod` line and an entry in `ALL` below.

pub mod chi;
pub mod database_sql;
pub mod echo;
pub mod gin;
pub mod go_redis;
pub mod gorilla_mux;
pub mod goroutines;
pub mod grpc;
pub mod net_http;
pub mod pgx;

use crate::Instrumentation;

/// The routers whose matched routes the net/http server span takes (routes.h).
pub const ROUTERS: &[&str] = &[gin::MODULE, gorilla_mux::MODULE, chi::MODULE, echo::MODULE];

/// Every instrumentation, in the order `gotel inspect` shows them and they are attached.
pub static ALL: &[&dyn Instrumentation] = &[
    &net_http::server::HttpServer,
    &net_http::client::HttpClient,
    &gin::Gin,
    &gorilla_mux::GorillaMux,
    &chi::Chi,
    &echo::Echo,
    &grpc::server::GrpcServer,
    &grpc::client::GrpcClient,
    &database_sql::DatabaseSql,
    &pgx::Pgx,
    &go_redis::V9,
    &go_redis::V8,
    &goroutines::Goroutines,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn names_and_event_kinds_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
                let (ka, kb) = (a.events().map(|e| e.kind), b.events().map(|e| e.kind));
                assert!(
                    ka.is_none() || ka != kb,
                    "{} and {} share kind {ka:?}",
                    a.name(),
                    b.name()
                );
            }
            assert_ne!(a.events().map(|e| e.kind), Some(0), "kind 0 is no instrumentation's");
        }
    }

    #[test]
    fn what_is_required_is_registered() {
        for i in ALL {
            for name in i.depends().requires {
                assert!(ALL.iter().any(|r| r.name() == *name), "{} requires {name}", i.name());
            }
        }
    }
}
