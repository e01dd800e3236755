//! database/sql client spans, whatever the driver: a CLIENT span per query, exec, prepared
//! statement execution, and transaction begin, commit and rollback (`database_sql.bpf.c`).
//!
//! Every such operation goes through one of seven functions, with the same signatures from Go
//! 1.19 to 1.27 and none calling another: `(*DB).queryDC` and `execDC` (DB, Conn and Tx
//! queries), `(*Stmt).QueryContext` and `ExecContext`, `(*DB).beginDC`, `(*Tx).Commit` and
//! `(*Tx).rollback` (`Rollback` is always inlined). `(*DB).prepareDC` is probed only to learn
//! the driver of the DB a statement will run on. The span ends where the function returns:
//! a query's rows are read after it. Registers, offsets and caveats per Go version:
//! `fixtures/dbsql/RESEARCH.md`.

pub mod event;
mod query;
pub(crate) mod span;

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::instrumentations::goroutines;
use crate::load::{bpf_object, load};
use crate::plan::{conn_offsets, offset_of};
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Plan, Report,
    Target,
};

bpf_object!("database_sql", DatabaseSqlSkelBuilder);

pub struct DatabaseSql;

const NAME: &str = "database/sql";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 5;

/// The probed functions in the order of the program's SQL_* operations (1-based), with the
/// return program for the registers each returns its error in (ARG1-2, ARG2-3, ARG3-4).
const FUNCTIONS: &[(&str, u8)] = &[
    ("database/sql.(*DB).queryDC", 2),
    ("database/sql.(*DB).execDC", 3),
    ("database/sql.(*Stmt).QueryContext", 2),
    ("database/sql.(*Stmt).ExecContext", 3),
    ("database/sql.(*DB).beginDC", 2),
    ("database/sql.(*Tx).Commit", 1),
    ("database/sql.(*Tx).rollback", 1),
];
const PREPARE: &str = "database/sql.(*DB).prepareDC";

/// The database systems spans name (db.system.name), by the program's system number, 1-based.
const SYSTEMS: &[&str] = &["postgresql", "mysql", "sqlite"];

/// A driver gotel knows.
struct Driver {
    /// Its connection type's Begin method: the first of driver.Conn's, so the itab of a
    /// connection's driver.Conn points at it.
    begin: &'static str,
    /// Its SYSTEMS number.
    system: u8,
    /// From its connection to the net.Conn it talks on: pointer fields, then the net.Conn
    /// field. Empty: the address is not read.
    conn: &'static [FieldSpec],
    /// From its connection to the database's name (db.namespace).
    namespace: Namespace,
}

/// Pointer fields to follow from a driver's connection, then the fields whose offsets add up
/// to the name's string in the struct reached (an embedded struct's, then its field's).
/// Empty: the name is not read.
struct Namespace {
    hops: &'static [FieldSpec],
    at: &'static [FieldSpec],
}

const NO_NAMESPACE: Namespace = Namespace { hops: &[], at: &[] };

const DRIVERS: &[Driver] = &[
    Driver {
        begin: "github.com/lib/pq.(*conn).Begin",
        system: 1,
        conn: &[field(PQ, "github.com/lib/pq.conn", "c")],
        // lib/pq keeps the database's name only in a map of connection options.
        namespace: NO_NAMESPACE,
    },
    Driver {
        begin: "github.com/jackc/pgx/v5/stdlib.(*Conn).Begin",
        system: 1,
        conn: &[
            field(PGX, "github.com/jackc/pgx/v5/stdlib.Conn", "conn"),
            field(PGX, "github.com/jackc/pgx/v5.Conn", "pgConn"),
            field(PGX, "github.com/jackc/pgx/v5/pgconn.PgConn", "conn"),
        ],
        namespace: Namespace {
            hops: &[
                field(PGX, "github.com/jackc/pgx/v5/stdlib.Conn", "conn"),
                field(PGX, "github.com/jackc/pgx/v5.Conn", "config"),
            ],
            at: &[
                field(PGX, "github.com/jackc/pgx/v5.ConnConfig", "Config"),
                field(PGX, "github.com/jackc/pgx/v5/pgconn.Config", "Database"),
            ],
        },
    },
    Driver {
        begin: "github.com/jackc/pgx/v4/stdlib.(*Conn).Begin",
        system: 1,
        conn: &[],
        namespace: NO_NAMESPACE,
    },
    Driver {
        begin: "github.com/go-sql-driver/mysql.(*mysqlConn).Begin",
        system: 2,
        conn: &[field(MYSQL, "github.com/go-sql-driver/mysql.mysqlConn", "netConn")],
        namespace: Namespace {
            hops: &[field(MYSQL, "github.com/go-sql-driver/mysql.mysqlConn", "cfg")],
            at: &[field(MYSQL, "github.com/go-sql-driver/mysql.Config", "DBName")],
        },
    },
    Driver {
        begin: "modernc.org/sqlite.(*conn).Begin",
        system: 3,
        conn: &[],
        namespace: NO_NAMESPACE,
    },
];

/// fun[0] of a net.Conn itab whose value is a *net.TCPConn (Close is net.Conn's first method).
const TCPCONN_CLOSE: &str = "net.(*TCPConn).Close";

const PQ: &str = "github.com/lib/pq";
const PGX: &str = "github.com/jackc/pgx/v5";
const MYSQL: &str = "github.com/go-sql-driver/mysql";

/// Error types whose code a span reports: their Error method, the field holding the code, and
/// whether that is a string (SQLSTATE) or a number.
const ERRORS: &[(&str, FieldSpec, ErrorCodeKind)] = &[
    ("github.com/lib/pq.(*Error).Error", field(PQ, "github.com/lib/pq.Error", "Code"), TEXT),
    (
        "github.com/jackc/pgx/v5/pgconn.(*PgError).Error",
        field(PGX, "github.com/jackc/pgx/v5/pgconn.PgError", "Code"),
        TEXT,
    ),
    (
        "github.com/go-sql-driver/mysql.(*MySQLError).Error",
        field(MYSQL, "github.com/go-sql-driver/mysql.MySQLError", "Number"),
        NUMBER,
    ),
];

type ErrorCodeKind = u8;
const TEXT: ErrorCodeKind = 1;
const NUMBER: ErrorCodeKind = 2;

const fn field(module: &'static str, s: &'static str, f: &'static str) -> FieldSpec {
    FieldSpec { module, struct_name: s, field: f, required: false }
}

/// The fields the program reads: database/sql's own, the socket's (conn.h), and the drivers'
/// (optional: without an error code, a failed span says `_OTHER`; without the way to the
/// connection, a span has no server address).
const FIELDS: &[FieldSpec] = &[
    FieldSpec::std("database/sql.driverConn", "db", true),
    FieldSpec::std("database/sql.driverConn", "ci", true),
    FieldSpec::std("database/sql.Stmt", "db", true),
    FieldSpec::std("database/sql.Stmt", "query", true),
    FieldSpec::std("database/sql.Tx", "dc", true),
    FieldSpec::std("database/sql.Tx", "done", true),
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
    ERRORS[0].1,
    ERRORS[1].1,
    ERRORS[2].1,
    DRIVERS[0].conn[0],
    DRIVERS[1].conn[0],
    DRIVERS[1].conn[1],
    DRIVERS[1].conn[2],
    DRIVERS[3].conn[0],
    DRIVERS[1].namespace.hops[0],
    DRIVERS[1].namespace.hops[1],
    DRIVERS[1].namespace.at[0],
    DRIVERS[1].namespace.at[1],
    DRIVERS[3].namespace.hops[0],
    DRIVERS[3].namespace.at[0],
];

impl Instrumentation for DatabaseSql {
    fn name(&self) -> &'static str {
        NAME
    }

    fn target(&self) -> Target {
        Target::Std
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn depends(&self) -> Depends {
        // A query's parent is the span its goroutine, or an ancestor, works for.
        Depends { requires: &[goroutines::NAME], ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let functions = FUNCTIONS
            .iter()
            .map(|(name, _)| FunctionPlan::new(bin, name))
            .collect::<Result<Vec<_>, _>>()?;
        let prepare = FunctionPlan::entry_only(bin, PREPARE)?;
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let address = |name: &str| bin.function(name).ok().map(|f| f.address);
        let drivers = DRIVERS.iter().filter_map(|d| {
            // Every hop known, or none used.
            let hops: Option<Vec<u64>> =
                d.conn.iter().map(|f| offset_of(&fields, f.struct_name, f.field)).collect();
            let offsets = |fs: &[FieldSpec]| -> Option<Vec<u64>> {
                fs.iter().map(|f| offset_of(&fields, f.struct_name, f.field)).collect()
            };
            let namespace = offsets(d.namespace.hops)
                .zip(offsets(d.namespace.at))
                .filter(|(hops, _)| !hops.is_empty())
                .map(|(hops, at)| (hops, at.iter().sum()));
            Some(LinkedDriver {
                begin: address(d.begin)?,
                driver: d,
                conn: hops.unwrap_or_default(),
                namespace,
            })
        });
        let errors = ERRORS.iter().filter_map(|(method, code, kind)| {
            let at = offset_of(&fields, code.struct_name, code.field)?;
            Some((address(method)?, at, *kind))
        });
        Ok(Box::new(DatabaseSqlPlan {
            functions,
            prepare,
            drivers: drivers.collect(),
            errors: errors.collect(),
            tcpconn_close: address(TCPCONN_CLOSE),
            fields,
        }))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::SqlEvent>(KIND)
                .measured_in(&trace::metric::DB_CLIENT_OPERATION_DURATION),
        )
    }
}

#[derive(Debug)]
struct DatabaseSqlPlan {
    /// FUNCTIONS' plans, in their order.
    functions: Vec<FunctionPlan>,
    prepare: FunctionPlan,
    /// The drivers in the binary.
    drivers: Vec<LinkedDriver>,
    /// (link-time address of an Error method, offset of the code, kind) likewise.
    errors: Vec<(u64, u64, ErrorCodeKind)>,
    /// Link-time address of TCPCONN_CLOSE; None: no server address is read.
    tcpconn_close: Option<u64>,
    fields: Vec<FieldOffset>,
}

/// A known driver the binary links.
#[derive(Debug)]
struct LinkedDriver {
    /// Link-time address of its Begin.
    begin: u64,
    driver: &'static Driver,
    /// Offsets of its `conn` fields; empty when one is unknown.
    conn: Vec<u64>,
    /// (pointer hops, offset of the name) of its `namespace`; None when one is unknown.
    namespace: Option<(Vec<u64>, u64)>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.begin)
    }
}

/// "github.com/lib/pq" of "github.com/lib/pq.(*conn).Begin".
fn package_of(function: &str) -> &str {
    let last_slash = function.rfind('/').map_or(0, |i| i + 1);
    function[last_slash..].find('.').map_or(function, |dot| &function[..last_slash + dot])
}

impl Plan for DatabaseSqlPlan {
    fn report(&self) -> Report<'_> {
        let mut functions: Vec<&FunctionPlan> = self.functions.iter().collect();
        functions.push(&self.prepare);
        let drivers: Vec<&str> = self.drivers.iter().map(|d| package_of(d.driver.begin)).collect();
        let note = match drivers.as_slice() {
            [] => "no driver gotel knows: spans say other_sql".to_string(),
            known => format!("drivers {}", known.join(", ")),
        };
        Report { note: Some(note), functions, fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let offset = |s, f| offset_of(&self.fields, s, f).unwrap_or(0);
        let placement = to.options.placement;
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::DatabaseSqlSkelBuilder>(&mut storage, to, |ro| {
            ro.off_dc_db = offset("database/sql.driverConn", "db");
            ro.off_dc_ci = offset("database/sql.driverConn", "ci");
            ro.off_stmt_db = offset("database/sql.Stmt", "db");
            ro.off_stmt_query = offset("database/sql.Stmt", "query");
            ro.off_tx_dc = offset("database/sql.Tx", "dc");
            ro.off_tx_done = offset("database/sql.Tx", "done");
            for (op, f) in self.functions.iter().enumerate() {
                ro.entry_address[op + 1] = f.entry_point(placement).1;
            }
            ro.entry_address[FUNCTIONS.len() + 1] = self.prepare.entry_point(placement).1;
            // The servers' addresses need the socket's offsets and TCPConn's Close to check
            // the net.Conn is plain TCP.
            let sockets = self.tcpconn_close.zip(conn_offsets(&self.fields));
            if let Some((close, conn_offsets)) = sockets {
                ro.tcpconn_close = close;
                (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = conn_offsets;
                ro.has_conn_offsets = true;
            }
            // pgx's own probes must see that its stdlib driver's statements are ours.
            ro.mark_db_calls = self.drivers.iter().any(|d| d.driver.begin.starts_with(PGX));
            for (i, d) in self.drivers.iter().take(ro.driver_begin.len()).enumerate() {
                (ro.driver_begin[i], ro.driver_system[i]) = (d.begin, d.driver.system);
                // A way cut short would lead elsewhere: the whole path, or no address.
                let hops = &mut ro.driver_conn_hop[i];
                if sockets.is_some() && d.conn.len() <= hops.len() {
                    hops[..d.conn.len()].copy_from_slice(&d.conn);
                    ro.driver_conn_hops[i] = d.conn.len() as u8;
                }
                if let Some((path, at)) = d.namespace.as_ref() {
                    let hops = &mut ro.driver_ns_hop[i];
                    if path.len() <= hops.len() {
                        hops[..path.len()].copy_from_slice(path);
                        (ro.driver_ns_hops[i], ro.driver_ns_at[i]) = (path.len() as u8, *at);
                    }
                }
            }
            let errors = self.errors.iter().take(ro.error_method.len());
            for (i, &(method, at, kind)) in errors.enumerate() {
                ro.error_method[i] = method;
                (ro.error_code_offset[i], ro.error_code_kind[i]) = (at, kind);
            }
        })?;
        let p = &skel.progs;
        let enters = [
            &p.sql_query_enter,
            &p.sql_exec_enter,
            &p.sql_stmt_query_enter,
            &p.sql_stmt_exec_enter,
            &p.sql_begin_enter,
            &p.sql_commit_enter,
            &p.sql_rollback_enter,
        ];
        let returns = [
            (&p.sql_return_arg1_multi, &p.sql_return_arg1_single),
            (&p.sql_return_arg2_multi, &p.sql_return_arg2_single),
            (&p.sql_return_arg3_multi, &p.sql_return_arg3_single),
        ];
        let mut attached = Attached::new(to);
        for ((f, enter), (_, error_in)) in self.functions.iter().zip(enters).zip(FUNCTIONS) {
            let (multi, single) = returns[usize::from(*error_in) - 1];
            attached.function(f, enter, multi, single)?;
        }
        attached.entry_line(&self.prepare, &p.sql_prepare_enter)?;
        Ok(attached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drivers_and_errors_field_is_declared() {
        let used = DRIVERS
            .iter()
            .flat_map(|d| d.conn.iter().chain(d.namespace.hops).chain(d.namespace.at))
            .chain(ERRORS.iter().map(|e| &e.1));
        for f in used {
            assert!(FIELDS.contains(f), "{} is not in FIELDS: it would never be resolved", f.key());
        }
    }

    #[test]
    fn a_methods_package_is_its_path_up_to_the_type() {
        assert_eq!(package_of("github.com/lib/pq.(*conn).Begin"), "github.com/lib/pq");
        assert_eq!(package_of("modernc.org/sqlite.(*conn).Begin"), "modernc.org/sqlite");
        assert_eq!(
            package_of("github.com/jackc/pgx/v5/stdlib.(*Conn).Begin"),
            "github.com/jackc/pgx/v5/stdlib"
        );
    }
}
