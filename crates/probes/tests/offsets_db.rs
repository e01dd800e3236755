//! The embedded offsets database covers every field every instrumentation declares, and agrees
//! with the DWARF of every fixture binary.

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
        let module =
            db.modules.get(spec.module).unwrap_or_else(|| panic!("{} missing", spec.module));
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
}

#[test]
fn the_database_agrees_with_dwarf_on_every_fixture() {
    let db = offsets::embedded().unwrap();
    let fixtures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            // Plain builds (with DWARF) of the server and of the chain, which links the client.
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            ["httpserver-go", "chain-go"]
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
    let fields = probes::declared_fields();
    let mut structs: Vec<&str> = fields.iter().map(|f| f.struct_name).collect();
    structs.dedup();
    for path in fixtures {
        let bin = GoBinary::open(&path).unwrap();
        let go = &bin.build_info().go_version;
        let dwarf = bin.struct_layouts(&structs).unwrap();
        for spec in &fields {
            // A struct this program does not link (the server alone has no HTTP client) says
            // nothing about its fields; one removed from the library is absent in the database.
            let Some(layout) = dwarf.get(spec.struct_name) else { continue };
            let from_dwarf = layout.get(spec.field).copied();
            match db.lookup(STD, go, &spec.key()) {
                Lookup::Found { offset, .. } => {
                    assert_eq!(offset, from_dwarf, "{}: {} at {go}", path.display(), spec.key())
                }
                Lookup::Unknown(why) => panic!("{}: {} at {go}: {why}", path.display(), spec.key()),
            }
        }
    }
}
