//! pgx v5's own API (`github.com/jackc/pgx/v5`): a CLIENT span per Query (and QueryRow), Exec
//! and SendBatch, whether called on a `pgx.Conn`, a `pgx.Tx` or a `pgxpool` pool or
//! connection: every one of them ends in `(*Conn).Query`, `Exec` or `SendBatch`. A
//! transaction's BEGIN, COMMIT and ROLLBACK are Execs of those statements, so they are spans
//! too. A query ends when its rows close (`(*baseRows).Close`), a batch when its results do,
//! as pgx's own tracer has it: the error a query ends with comes with its last row. Under
//! database/sql (pgx's stdlib driver) the span is database/sql's, and this program makes
//! none (`db_calls.h`). Registers and versions: `fixtures/dbsql/RESEARCH.md`.

pub mod event;
mod span;

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

bpf_object!("pgx", PgxSkelBuilder);

pub struct Pgx;

const NAME: &str = "pgx";
const MODULE: &str = "github.com/jackc/pgx/v5";
/// `struct span_header`'s kind for this instrumentation's events.
const KIND: u32 = 8;

/// The calls that start a span, in the order of the program's PGX_* operations (1-based).
const CALLS: [&str; 3] = [
    "github.com/jackc/pgx/v5.(*Conn).Query",
    "github.com/jackc/pgx/v5.(*Conn).Exec",
    "github.com/jackc/pgx/v5.(*Conn).SendBatch",
];
/// Where a query's rows close.
const ROWS_CLOSE: &str = "github.com/jackc/pgx/v5.(*baseRows).Close";
/// Where a batch's results close, by the kinds of results SendBatch returns: the first is in
/// every v5, the others where the binary has them.
const BATCH_CLOSE: &[&str] = &[
    "github.com/jackc/pgx/v5.(*batchResults).Close",
    "github.com/jackc/pgx/v5.(*pipelineBatchResults).Close",
    "github.com/jackc/pgx/v5.(*emptyBatchResults).Close",
];
const PG_ERROR: &str = "github.com/jackc/pgx/v5/pgconn.(*PgError).Error";
/// fun[0] of a net.Conn itab whose value is a *net.TCPConn.
const TCPCONN_CLOSE: &str = "net.(*TCPConn).Close";

const fn field(s: &'static str, f: &'static str, required: bool) -> FieldSpec {
    FieldSpec { module: MODULE, struct_name: s, field: f, required }
}

const ROWS_ERR: FieldSpec = field("github.com/jackc/pgx/v5.baseRows", "err", true);
const CONN_PGCONN: FieldSpec = field("github.com/jackc/pgx/v5.Conn", "pgConn", false);
const PGCONN_CONN: FieldSpec = field("github.com/jackc/pgx/v5/pgconn.PgConn", "conn", false);
const CONN_CONFIG: FieldSpec = field("github.com/jackc/pgx/v5.Conn", "config", false);
const CONFIG_CONFIG: FieldSpec = field("github.com/jackc/pgx/v5.ConnConfig", "Config", false);
const CONFIG_DATABASE: FieldSpec =
    field("github.com/jackc/pgx/v5/pgconn.Config", "Database", false);
const PG_ERROR_CODE: FieldSpec = field("github.com/jackc/pgx/v5/pgconn.PgError", "Code", false);
/// A batch's statements, by the names they have had: up to v5.5.2, then from v5.5.3.
const BATCH_QUERIES: [(FieldSpec, FieldSpec); 2] = [
    (
        field("github.com/jackc/pgx/v5.Batch", "queuedQueries", false),
        field("github.com/jackc/pgx/v5.QueuedQuery", "query", false),
    ),
    (
        field("github.com/jackc/pgx/v5.Batch", "QueuedQueries", false),
        field("github.com/jackc/pgx/v5.QueuedQuery", "SQL", false),
    ),
];

/// What the program reads: the rows' error (without it no query could end right), and, each
/// optional, the connection's socket and database, a batch's statements and the SQLSTATE.
const FIELDS: &[FieldSpec] = &[
    ROWS_ERR,
    CONN_PGCONN,
    PGCONN_CONN,
    CONN_CONFIG,
    CONFIG_CONFIG,
    CONFIG_DATABASE,
    PG_ERROR_CODE,
    BATCH_QUERIES[0].0,
    BATCH_QUERIES[0].1,
    BATCH_QUERIES[1].0,
    BATCH_QUERIES[1].1,
    FieldSpec::std("net.TCPConn", "conn", false),
    FieldSpec::std("net.conn", "fd", false),
    FieldSpec::std("net.netFD", "pfd", false),
    FieldSpec::std("internal/poll.FD", "Sysfd", false),
];

impl Instrumentation for Pgx {
    fn name(&self) -> &'static str {
        NAME
    }

    fn target(&self) -> Target {
        Target::Module { path: MODULE, oldest: (5, 0) }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn depends(&self) -> Depends {
        // A query's parent is the span its goroutine, or an ancestor, works for.
        Depends { requires: &[goroutines::NAME], ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let calls =
            CALLS.iter().map(|name| FunctionPlan::new(bin, name)).collect::<Result<Vec<_>, _>>()?;
        let rows_close = FunctionPlan::new(bin, ROWS_CLOSE)?;
        let mut batch_close = vec![FunctionPlan::new(bin, BATCH_CLOSE[0])?];
        batch_close.extend(BATCH_CLOSE[1..].iter().filter_map(|f| FunctionPlan::new(bin, f).ok()));
        let fields = offsets::resolve(bin, layouts, FIELDS)?;
        let address = |name: &str| bin.function(name).ok().map(|f| f.address);
        Ok(Box::new(PgxPlan {
            calls,
            rows_close,
            batch_close,
            pg_error: address(PG_ERROR),
            tcpconn_close: address(TCPCONN_CLOSE),
            fields,
        }))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::PgxEvent>(KIND)
                .measured_in(&trace::metric::DB_CLIENT_OPERATION_DURATION),
        )
    }
}

#[derive(Debug)]
struct PgxPlan {
    /// CALLS' plans, in their order.
    calls: Vec<FunctionPlan>,
    rows_close: FunctionPlan,
    /// BATCH_CLOSE's, those the binary has.
    batch_close: Vec<FunctionPlan>,
    /// Link-time addresses of PG_ERROR and TCPCONN_CLOSE, where the binary has them.
    pg_error: Option<u64>,
    tcpconn_close: Option<u64>,
    fields: Vec<FieldOffset>,
}

impl PgxPlan {
    fn offset(&self, f: &FieldSpec) -> Option<u64> {
        offset_of(&self.fields, f.struct_name, f.field)
    }
}

impl Plan for PgxPlan {
    fn report(&self) -> Report<'_> {
        let functions = self
            .calls
            .iter()
            .chain(std::iter::once(&self.rows_close))
            .chain(&self.batch_close)
            .collect();
        Report { note: None, functions, fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let placement = to.options.placement;
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::PgxSkelBuilder>(&mut storage, to, |ro| {
            for (op, f) in self.calls.iter().enumerate() {
                ro.entry_address[op + 1] = f.entry_point(placement).1;
            }
            ro.off_rows_err = self.offset(&ROWS_ERR).unwrap_or(0);
            let socket = (self.offset(&CONN_PGCONN), self.offset(&PGCONN_CONN));
            if let (Some(close), Some(offsets), (Some(pg_conn), Some(conn))) =
                (self.tcpconn_close, conn_offsets(&self.fields), socket)
            {
                (ro.off_tcpconn_fd, ro.off_netfd_sysfd) = offsets;
                (ro.off_conn_pgconn, ro.off_pgconn_conn) = (pg_conn, conn);
                ro.tcpconn_close = close;
                ro.has_conn_offsets = true;
            }
            let database = [CONN_CONFIG, CONFIG_CONFIG, CONFIG_DATABASE].map(|f| self.offset(&f));
            if let [Some(config), Some(embedded), Some(name)] = database {
                (ro.off_conn_config, ro.off_config_database) = (config, embedded + name);
                ro.has_namespace = true;
            }
            let queries = BATCH_QUERIES
                .iter()
                .find_map(|(batch, queued)| Some((self.offset(batch)?, self.offset(queued)?)));
            if let Some((batch, queued)) = queries {
                (ro.off_batch_queries, ro.off_queued_sql) = (batch, queued);
                ro.has_batch_queries = true;
            }
            if let (Some(method), Some(code)) = (self.pg_error, self.offset(&PG_ERROR_CODE)) {
                (ro.pg_error_method, ro.off_pg_error_code) = (method, code);
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        let [query, exec, batch] = [&self.calls[0], &self.calls[1], &self.calls[2]];
        attached.function(
            query,
            &p.pgx_query_enter,
            &p.pgx_return_rows_multi,
            &p.pgx_return_rows_single,
        )?;
        attached.function(
            exec,
            &p.pgx_exec_enter,
            &p.pgx_return_rows_multi,
            &p.pgx_return_rows_single,
        )?;
        attached.function(
            batch,
            &p.pgx_batch_enter,
            &p.pgx_return_batch_multi,
            &p.pgx_return_batch_single,
        )?;
        attached.function(
            &self.rows_close,
            &p.pgx_close_enter,
            &p.pgx_rows_closed_multi,
            &p.pgx_rows_closed_single,
        )?;
        for f in &self.batch_close {
            attached.function(
                f,
                &p.pgx_close_enter,
                &p.pgx_batch_closed_multi,
                &p.pgx_batch_closed_single,
            )?;
        }
        Ok(attached)
    }
}
