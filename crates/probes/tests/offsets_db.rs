//! The embedded offsets database covers every field every instrumentation declares of the
//! standard library and of the modules it tracks, and agrees with the DWARF of every fixture
//! binary, whatever Go built it.

use std::path::{Path, PathBuf};

use goinfo::GoBinary;
use offsets::{Lookup, STD};

fn fixtures_dir() -> PathBuf {
    std::env::var_os("GOTEL_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

#[test]
fn every_declared_field_is_in_the_database() {
    let db = offsets::embedded().expect("embedded database parses");
    for spec in probes::declared_fields() {
        let Some(module) = db.modules.get(spec.module) else {
            // Modules not tracked (yet) must be described by the binary itself.
            assert!(UNTRACKED.contains(&spec.module), "{} missing", spec.module);
            continue;
        };
        let ranges =
            module.fields.get(&spec.key()).unwrap_or_else(|| panic!("{} missing", spec.key()));
        assert!(!ranges.is_empty());
        if spec.required {
            let newest = module.versions.last().unwrap();
            let found = db.lookup(spec.module, newest, &spec.key());
            assert!(
                matches!(found, Lookup::Found { offset: Some(_), .. }),
                "{} at {newest}: {found:?}",
                spec.key()
            );
        }
    }
    let std = &db.modules[STD];
    assert!(std.versions.len() >= 2, "several Go versions: {:?}", std.versions);
    for module in ["github.com/lib/pq", "github.com/jackc/pgx/v5", "github.com/go-sql-driver/mysql"]
    {
        let versions = &db.modules[module].versions;
        assert!(versions.len() >= 10, "{module}: every release, {versions:?}");
    }
}

/// Modules whose fields come from the binary alone: gRPC's (its fixtures' matrix checks them)
/// and the routers' (each struct read is one the router puts in an interface or a context,
/// so its type descriptor, with every field, is in every build, stripped too; routes.rs
/// checks each layout's first and the newest release).
const UNTRACKED: &[&str] = &[
    "google.golang.org/grpc",
    "google.golang.org/genproto/googleapis/rpc",
    "golang.org/x/net",
    "github.com/gin-gonic/gin",
    "github.com/gorilla/mux",
    "github.com/go-chi/chi/v5",
    "github.com/labstack/echo/v4",
];

#[test]
fn the_database_agrees_with_dwarf_on_every_fixture() {
    let db = offsets::embedded().unwrap();
    // The top directory's builds per Go version and the drivers' and go-redis's version
    // matrices (scripts/test.sh).
    let dirs = [fixtures_dir(), fixtures_dir().join("dbsql"), fixtures_dir().join("redis")];
    let fixtures: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            // Plain builds (with DWARF) of the server, of the chain, which links the client, of
            // the database service, which links the drivers, and of the Redis service.
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            ["httpserver-go", "chain-go", "dbsql-go", "redis-go", "dbsql-v", "redis-v"]
                .iter()
                .any(|prefix| name.strip_prefix(prefix).is_some_and(|v| !v.contains('-')))
        })
        .collect();
    if fixtures.is_empty() {
        let msg = "no fixtures: run scripts/build-fixtures.sh";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
        eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
        return;
    }
    let fields: Vec<_> =
        probes::declared_fields().into_iter().filter(|f| !UNTRACKED.contains(&f.module)).collect();
    let mut structs: Vec<&str> = fields.iter().map(|f| f.struct_name).collect();
    structs.sort_unstable();
    structs.dedup();
    let mut compared = 0;
    for path in fixtures {
        let bin = GoBinary::open(&path).unwrap();
        let info = bin.build_info();
        let dwarf = bin.struct_layouts(&structs).unwrap();
        for spec in &fields {
            // A struct this program does not link (the server alone has no HTTP client) says
            // nothing about its fields; one removed from the library is absent in the database.
            let Some(layout) = dwarf.get(spec.struct_name) else { continue };
            let version = match spec.module {
                STD => info.go_version.as_str(),
                module => info.module_version(module).expect("a linked module has a version"),
            };
            let from_dwarf = layout.get(spec.field).copied();
            let at = format!("{}: {} at {version}", path.display(), spec.key());
            match db.lookup(spec.module, version, &spec.key()) {
                Lookup::Found { offset, .. } => assert_eq!(offset, from_dwarf, "{at}"),
                Lookup::Unknown(why) => panic!("{at}: {why}"),
            }
            compared += usize::from(spec.module != STD);
        }
    }
    assert!(compared > 0, "no module field was compared");
}
