//! Database client spans, end to end: the dbsql fixture (lib/pq, pgx's stdlib driver and
//! go-sql-driver/mysql through database/sql, and pgx's own pgxpool, all linked) against real,
//! private PostgreSQL and MariaDB servers, spans checked at a real OpenTelemetry Collector.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const CLIENT: i64 = 3;

/// The server span of the request to `path`, and the CLIENT spans under it, in start order.
fn request<'a>(
    spans: &'a [ReceivedSpan],
    path: &str,
    query: Option<&str>,
) -> Vec<&'a ReceivedSpan> {
    let server = spans
        .iter()
        .find(|s| {
            s.attr_str("url.path").as_deref() == Some(path)
                && s.attr_str("url.query").as_deref() == query
        })
        .unwrap_or_else(|| panic!("no server span for {path} in {spans:#?}"));
    children_of(spans, server)
}

/// (name, db.query.text) of each span.
fn named(spans: &[&ReceivedSpan]) -> Vec<(String, Option<String>)> {
    spans.iter().map(|s| (s.name().to_string(), s.attr_str("db.query.text"))).collect()
}

fn pair(name: &str, text: Option<&str>) -> (String, Option<String>) {
    (name.to_string(), text.map(str::to_string))
}

/// What differs between databases: the fixture's statements (as sanitized) and the codes.
struct Dialect {
    system: &'static str,
    /// The fixture's -driver names using it.
    drivers: &'static [&'static str],
    select_from: &'static str,
    select_one: &'static str,
    insert_startup: &'static str,
    insert_tx: &'static str,
    /// Of `DELETE FROM missing`.
    no_such_table: &'static str,
}

const POSTGRES: Dialect = Dialect {
    system: "postgresql",
    drivers: &["postgres", "pgx"],
    select_from: "SELECT name FROM users WHERE id >= $1 ORDER BY id",
    select_one: "SELECT name FROM users WHERE id = $1",
    insert_startup: "INSERT INTO users VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING",
    insert_tx: "INSERT INTO users VALUES (?, ?) ON CONFLICT DO NOTHING",
    no_such_table: "42P01",
};

const MYSQL: Dialect = Dialect {
    system: "mysql",
    drivers: &["mysql"],
    select_from: "SELECT name FROM users WHERE id >= ? ORDER BY id",
    select_one: "SELECT name FROM users WHERE id = ?",
    insert_startup: "INSERT IGNORE INTO users VALUES (?, ?), (?, ?)",
    insert_tx: "INSERT IGNORE INTO users VALUES (?, ?)",
    no_such_table: "1146",
};

/// A private server for `driver`: (what keeps it running, its port, the fixture's -dsn).
fn database(driver: &str, tag: &str) -> (Box<dyn std::any::Any>, u16, String, &'static Dialect) {
    if MYSQL.drivers.contains(&driver) {
        let db = Mariadb::start(tag);
        let (port, dsn) = (db.port, db.dsn());
        (Box::new(db), port, dsn, &MYSQL)
    } else {
        let db = Postgres::start(tag);
        let (port, dsn) = (db.port, db.dsn());
        (Box::new(db), port, dsn, &POSTGRES)
    }
}

/// The fixture's start-up statements: roots, as no request was being served.
fn assert_startup_statements(spans: &[ReceivedSpan], d: &Dialect) {
    let mut startup: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.kind() == CLIENT && s.hex("parentSpanId").is_empty()).collect();
    startup.sort_by_key(|s| s.nanos("startTimeUnixNano"));
    assert_eq!(
        named(&startup),
        [
            pair(
                "CREATE users",
                Some("CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text NOT NULL)")
            ),
            pair("INSERT users", Some(d.insert_startup)),
        ]
    );
}

/// Every kind of database work the fixture does, with the fixture build `build` (under
/// target/fixtures), through `driver`
/// (postgres: lib/pq; pgx: pgx's stdlib; mysql: go-sql-driver/mysql).
fn every_operation(build: &str, driver: &str) {
    let Some(()) = privileged() else { return };
    let tag = format!("{}-{driver}", build.replace('/', "-"));
    let (_db, db_port, dsn, d) = database(driver, &tag);
    let collector = Collector::start(&tag);
    let port = free_port();
    let fx = fixture(build);
    let addr = format!("127.0.0.1:{port}");
    let fx = fx.to_str().unwrap();
    let args = ["run", "--", fx, "-addr", &addr, "-dsn", &dsn, "-driver", driver];
    let gotel = gotel(&args, Some(&collector), &[("OTEL_SERVICE_NAME", "shop")]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("attached database/sql", WAIT);

    for path in ["/query", "/exec", "/tx", "/tx?rollback=1", "/stmt", "/goroutine"] {
        assert_eq!(http_get(port, path).0, 200, "{path}");
    }
    assert_eq!(http_get(port, "/fail").0, 500);
    // 7 server spans, 1 + 1 + 3 + 3 + 2 + 1 + 1 database spans, 2 at start-up.
    let spans = collector.wait_for_spans(7 + 12 + 2, WAIT);

    assert_startup_statements(&spans, d);
    // Even in a stripped PIE, whose type descriptors are not read, the drivers' fields are
    // known: from the offsets database, by module version.
    for s in spans.iter().filter(|s| s.kind() == CLIENT) {
        assert_eq!(s.attr_str("db.system.name").as_deref(), Some(d.system), "{s:#?}");
        assert_eq!(s.resource_str("service.name").as_deref(), Some("shop"));
        let server = (s.attr_str("server.address"), s.attr_int("server.port"));
        // pgx 5.0 to 5.3 wrap the socket in their own non-blocking connection (nbconn): it
        // is no *net.TCPConn, and is not read.
        let wrapped = build.contains("dbsql-v5.0.");
        let expected = (!wrapped).then(|| ("127.0.0.1".to_string(), i64::from(db_port)));
        assert_eq!(server.0.zip(server.1), expected, "{s:#?}");
        // The database the DSN names, where the driver's connection keeps it (lib/pq keeps
        // it in a map of options only).
        let namespace = match driver {
            "pgx" => Some("postgres"),
            "mysql" => Some("gotel"),
            _ => None,
        };
        assert_eq!(s.attr_str("db.namespace").as_deref(), namespace, "{s:#?}");
    }

    let select = d.select_from;
    let query = request(&spans, "/query", None);
    assert_eq!(named(&query), [pair("SELECT users", Some(select))]);
    assert_eq!(query[0].attr_str("db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(query[0].attr_str("db.collection.name").as_deref(), Some("users"));
    assert_eq!(query[0].status_code(), 0);

    let exec = request(&spans, "/exec", None);
    assert_eq!(
        named(&exec),
        [pair("UPDATE users", Some("UPDATE users SET name = ? WHERE id = ?"))]
    );

    let insert = d.insert_tx;
    let commit = request(&spans, "/tx", None);
    assert_eq!(
        named(&commit),
        [pair("BEGIN", None), pair("INSERT users", Some(insert)), pair("COMMIT", None)],
        "a deferred Rollback after Commit is no operation, and no span"
    );
    let rollback = request(&spans, "/tx", Some("rollback=1"));
    assert_eq!(
        named(&rollback),
        [pair("BEGIN", None), pair("INSERT users", Some(insert)), pair("ROLLBACK", None)]
    );

    let by_id = d.select_one;
    let stmt = request(&spans, "/stmt", None);
    assert_eq!(
        named(&stmt),
        [pair("SELECT users", Some(by_id)), pair("SELECT users", Some(by_id))]
    );

    let goroutine = request(&spans, "/goroutine", None);
    assert_eq!(
        named(&goroutine),
        [pair("SELECT users", Some(select))],
        "the handler's goroutine's"
    );

    let fail = request(&spans, "/fail", None);
    assert_eq!(named(&fail), [pair("DELETE missing", Some("DELETE FROM missing WHERE id = ?"))]);
    assert_eq!(fail[0].status_code(), 2, "an error");
    let code = Some(d.no_such_table);
    assert_eq!(fail[0].attr_str("db.response.status_code").as_deref(), code);
    assert_eq!(fail[0].attr_str("error.type").as_deref(), code);
}

#[test]
fn every_operation_lib_pq_go1_19() {
    every_operation("dbsql-go1.19", "postgres");
}

#[test]
fn every_operation_lib_pq_go1_22_stripped() {
    every_operation("dbsql-go1.22-stripped", "postgres");
}

#[test]
fn every_operation_lib_pq_go1_26_stripped() {
    every_operation("dbsql-go1.26-stripped", "postgres");
}

#[test]
fn every_operation_lib_pq_go1_27() {
    every_operation("dbsql-go1.27", "postgres");
}

/// Loaded at a random address: the drivers' and errors' methods are told apart at their
/// link-time addresses less the load bias.
#[test]
fn every_operation_lib_pq_go1_27_pie_stripped() {
    every_operation("dbsql-go1.27-pie-stripped", "postgres");
}

#[test]
fn every_operation_pgx_go1_19_stripped() {
    every_operation("dbsql-go1.19-stripped", "pgx");
}

#[test]
fn every_operation_pgx_go1_27() {
    every_operation("dbsql-go1.27", "pgx");
}

#[test]
fn every_operation_mysql_go1_21() {
    every_operation("dbsql-go1.21", "mysql");
}

#[test]
fn every_operation_mysql_go1_26_stripped() {
    every_operation("dbsql-go1.26-stripped", "mysql");
}

/// The oldest and newest releases of each driver gotel supports, from the version matrix
/// (scripts/test.sh builds them), stripped: their fields' offsets come from the type
/// descriptors, checked against the offsets database by `offsets_db`.
#[test]
fn every_operation_lib_pq_oldest_and_newest() {
    every_operation("dbsql/dbsql-v1.10.0-stripped", "postgres");
    every_operation("dbsql/dbsql-v1.12.3-stripped", "postgres");
}

#[test]
fn every_operation_pgx_oldest_and_newest() {
    every_operation("dbsql/dbsql-v5.0.0-stripped", "pgx");
    every_operation("dbsql/dbsql-v5.13.0-stripped", "pgx");
}

#[test]
fn every_operation_mysql_oldest_and_newest() {
    every_operation("dbsql/dbsql-v1.5.0-stripped", "mysql");
    every_operation("dbsql/dbsql-v1.10.1-stripped", "mysql");
}

/// pgx's own API through a pgxpool.Pool (-driver pgxpool): every kind of work, one span each,
/// with no database/sql in the way.
fn pgx_native(build: &str) {
    let Some(()) = privileged() else { return };
    let tag = format!("{}-pgxpool", build.replace('/', "-"));
    let pg = Postgres::start(&tag);
    let collector = Collector::start(&tag);
    let port = free_port();
    let fx = fixture(build);
    let (addr, dsn) = (format!("127.0.0.1:{port}"), pg.dsn());
    let fx = fx.to_str().unwrap();
    let args = ["run", "--", fx, "-addr", &addr, "-dsn", &dsn, "-driver", "pgxpool"];
    let gotel = gotel(&args, Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("attached pgx", WAIT);

    let paths = ["/query", "/queryrow", "/exec", "/tx", "/tx?rollback=1", "/batch", "/goroutine"];
    for path in paths {
        assert_eq!(http_get(port, path).0, 200, "{path}");
    }
    assert_eq!(http_get(port, "/fail").0, 500);
    assert_eq!(http_get(port, "/fail-rows").0, 500);
    // 9 server spans, 1 + 1 + 1 + 3 + 3 + 1 + 1 + 1 + 1 database spans, 2 at start-up.
    let spans = collector.wait_for_spans(9 + 13 + 2, WAIT);

    assert_startup_statements(&spans, &POSTGRES);
    let wrapped = build.contains("dbsql-v5.0.");
    for s in spans.iter().filter(|s| s.kind() == CLIENT) {
        assert_eq!(s.attr_str("db.system.name").as_deref(), Some("postgresql"), "{s:#?}");
        assert_eq!(s.attr_str("db.namespace").as_deref(), Some("postgres"), "{s:#?}");
        let server = s.attr_str("server.address").zip(s.attr_int("server.port"));
        // pgx 5.0 to 5.3 wrap the socket (nbconn), which is not read.
        let expected = (!wrapped).then(|| ("127.0.0.1".to_string(), i64::from(pg.port)));
        assert_eq!(server, expected, "{s:#?}");
    }

    let select = POSTGRES.select_from;
    let query = request(&spans, "/query", None);
    assert_eq!(named(&query), [pair("SELECT users", Some(select))]);
    assert_eq!(query[0].status_code(), 0);
    let by_id = POSTGRES.select_one;
    assert_eq!(named(&request(&spans, "/queryrow", None)), [pair("SELECT users", Some(by_id))]);
    assert_eq!(
        named(&request(&spans, "/exec", None)),
        [pair("UPDATE users", Some("UPDATE users SET name = ? WHERE id = ?"))]
    );
    let insert = POSTGRES.insert_tx;
    assert_eq!(
        named(&request(&spans, "/tx", None)),
        [
            pair("BEGIN", Some("begin")),
            pair("INSERT users", Some(insert)),
            pair("COMMIT", Some("commit"))
        ],
        "a deferred Rollback after Commit is no operation, and no span"
    );
    assert_eq!(
        named(&request(&spans, "/tx", Some("rollback=1"))),
        [
            pair("BEGIN", Some("begin")),
            pair("INSERT users", Some(insert)),
            pair("ROLLBACK", Some("rollback"))
        ]
    );
    let batch = request(&spans, "/batch", None);
    let statements = format!("{by_id}; {by_id}; UPDATE users SET name = ? WHERE id = ?");
    assert_eq!(named(&batch), [pair("BATCH", Some(&statements))]);
    assert_eq!(batch[0].attr_int("db.operation.batch.size"), Some(3));
    assert_eq!(named(&request(&spans, "/goroutine", None)), [pair("SELECT users", Some(select))]);

    let fail = request(&spans, "/fail", None);
    assert_eq!(named(&fail), [pair("DELETE missing", Some("DELETE FROM missing WHERE id = ?"))]);
    assert_eq!(fail[0].status_code(), 2, "an error");
    assert_eq!(fail[0].attr_str("db.response.status_code").as_deref(), Some("42P01"));
    // A division by zero is met on the first row: the error comes when the rows close.
    let late = request(&spans, "/fail-rows", None);
    assert_eq!(named(&late), [pair("SELECT users", Some("SELECT ? / (id - id) FROM users"))]);
    assert_eq!(late[0].status_code(), 2, "an error");
    assert_eq!(late[0].attr_str("error.type").as_deref(), Some("22012"));
}

#[test]
fn pgx_native_go1_26() {
    pgx_native("dbsql-go1.26");
}

#[test]
fn pgx_native_go1_27_pie_stripped() {
    pgx_native("dbsql-go1.27-pie-stripped");
}

/// The oldest and newest pgx v5 (scripts/test.sh builds them), stripped.
#[test]
fn pgx_native_oldest_and_newest() {
    pgx_native("dbsql/dbsql-v5.0.0-stripped");
    pgx_native("dbsql/dbsql-v5.13.0-stripped");
}

/// With --db-query-text raw, queries keep their values.
#[test]
fn raw_query_text_when_asked() {
    let Some(()) = privileged() else { return };
    let pg = Postgres::start("raw");
    let collector = Collector::start("dbsql-raw");
    let port = free_port();
    let fx = fixture("dbsql-go1.26");
    let (addr, dsn) = (format!("127.0.0.1:{port}"), pg.dsn());
    let args =
        ["run", "--db-query-text", "raw", "--", fx.to_str().unwrap(), "-addr", &addr, "-dsn", &dsn];
    let gotel = gotel(&args, Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("attached database/sql", WAIT);
    assert_eq!(http_get(port, "/exec").0, 200);
    let update =
        collector.wait_for_span(|s| s.name() == "UPDATE users", WAIT).expect("the UPDATE's span");
    assert_eq!(
        update.attr_str("db.query.text").as_deref(),
        Some("UPDATE users SET name = 'grace' WHERE id = 2")
    );
}

/// 200 requests at once through `driver`, each making one query: every query span arrives,
/// under its own request's span.
fn concurrent_queries(driver: &str, attached: &str) {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let pg = Postgres::start(&format!("concurrent-{driver}"));
    let collector = Collector::start(&format!("dbsql-concurrent-{driver}"));
    let port = free_port();
    let fx = fixture("dbsql-go1.26");
    let (addr, dsn) = (format!("127.0.0.1:{port}"), pg.dsn());
    let args = ["run", "--", fx.to_str().unwrap(), "-addr", &addr, "-dsn", &dsn, "-driver", driver];
    let gotel = gotel(&args, Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log(attached, WAIT);
    const N: usize = 200;
    let statuses = concurrent_gets(port, "/goroutine", N);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let spans = collector.wait_for_spans(2 + 2 * N, WAIT);
    assert_one_child_per_request(&spans, N, "SELECT users");
}

#[test]
fn concurrent_queries_keep_their_parents() {
    concurrent_queries("postgres", "attached database/sql");
}

/// The same through pgxpool, whose queries end when their rows close.
#[test]
fn concurrent_pgx_queries_keep_their_parents() {
    concurrent_queries("pgxpool", "attached pgx");
}
