//! `cargo xtask offsets`: regenerates crates/offsets/data/offsets.json.
//!
//! For every Go toolchain on the machine it builds a tiny program that links the code behind
//! every struct the instrumentations declare, reads the field offsets from its DWARF with
//! goinfo, and merges equal offsets into version ranges. Incremental (versions already in the
//! database are skipped unless --full), parallel (--jobs), and tolerant: a toolchain that fails
//! to build is recorded with its error, not fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use goinfo::GoBinary;
use offsets::db::{Database, ModuleOffsets, SCHEMA, STD};
use offsets::FieldSpec;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the offsets database.
    Offsets {
        /// Probe every toolchain again, not only those missing from the database.
        #[arg(long)]
        full: bool,
        /// Parallel builds.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Go toolchain roots (default: /usr/lib/go-1.* and /usr/local/go).
        #[arg(long = "goroot")]
        goroots: Vec<PathBuf>,
        /// Where the database lives.
        #[arg(long, default_value = "crates/offsets/data/offsets.json")]
        out: PathBuf,
    },
}

/// The program built per toolchain: it must link the code that uses every declared std struct
/// (the HTTP server and client, URL parsing, database/sql), so its DWARF describes them. It
/// never runs.
const STD_PROBE: &str = r#"package main

import (
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"os"
)

func main() {
	// Never runs: it links the server, the client and database/sql, so their structs are in
	// the DWARF.
	if len(os.Args) > 99 {
		u, err := url.Parse(os.Args[1])
		fmt.Println(u, err, http.ListenAndServe(os.Args[2], nil))
		fmt.Println(http.Get(os.Args[3]))
		db, _ := sql.Open(os.Args[4], os.Args[5])
		tx, _ := db.Begin()
		stmt, _ := tx.Prepare(os.Args[6])
		r, err := stmt.Exec()
		fmt.Println(r, err, tx.Commit())
	}
}
"#;

fn main() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&repo)?;
    match Cli::parse().task {
        Task::Offsets { full, jobs, goroots, out } => regenerate(full, jobs.max(1), goroots, &out),
    }
}

fn toolchains(given: Vec<PathBuf>) -> Vec<PathBuf> {
    if !given.is_empty() {
        return given;
    }
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("go-1.")))
        .collect();
    roots.sort();
    roots.push(PathBuf::from("/usr/local/go"));
    roots.into_iter().filter(|r| r.join("bin/go").exists()).collect()
}

fn go_version(goroot: &Path) -> anyhow::Result<String> {
    let out = Command::new(goroot.join("bin/go")).args(["env", "GOVERSION"]).output()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match v.strip_prefix("go") {
        Some(v) if out.status.success() => Ok(v.to_string()),
        _ => bail!("{}: cannot tell its Go version", goroot.display()),
    }
}

/// Builds the std probe with `goroot` and reads every declared std field from its DWARF.
fn probe_std(goroot: &Path, fields: &[FieldSpec]) -> anyhow::Result<BTreeMap<String, Option<u64>>> {
    let dir = std::env::temp_dir().join(format!(
        "gotel-offsets-{}-{}",
        std::process::id(),
        goroot.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("go.mod"), "module gotel.dev/offsets/probe\n\ngo 1.17\n")?;
    std::fs::write(dir.join("main.go"), STD_PROBE)?;
    let out = Command::new(goroot.join("bin/go"))
        .args(["build", "-trimpath", "-o", "probe", "."])
        .current_dir(&dir)
        .env("GOROOT", goroot)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .context("running go build")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        bail!("go build failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let bin = GoBinary::open(dir.join("probe"));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = bin?;
    let mut structs: Vec<&str> = fields.iter().map(|f| f.struct_name).collect();
    structs.dedup();
    let layouts = bin.struct_layouts(&structs)?;
    Ok(fields
        .iter()
        .map(|f| (f.key(), layouts.get(f.struct_name).and_then(|s| s.get(f.field)).copied()))
        .collect())
}

fn regenerate(full: bool, jobs: usize, goroots: Vec<PathBuf>, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut db = match std::fs::read_to_string(out) {
        Ok(text) if !full => Database::from_json(&text)?,
        _ => Database { schema: SCHEMA, modules: BTreeMap::new() },
    };
    let std_fields: Vec<FieldSpec> = probes::declared_fields();

    // A field declared since the last run needs every version probed again.
    let known: Vec<String> = match db.modules.get(STD) {
        Some(m) if std_fields.iter().all(|f| m.fields.contains_key(&f.key())) => m.versions.clone(),
        Some(_) => {
            println!("[offsets] new fields declared: probing every toolchain again");
            Vec::new()
        }
        None => Vec::new(),
    };
    let mut work = Vec::new();
    for root in toolchains(goroots) {
        let version = go_version(&root)?;
        if known.contains(&version) {
            println!("[offsets] std {version}: already in the database ({})", root.display());
        } else if !work.iter().any(|(v, _): &(String, PathBuf)| *v == version) {
            work.push((version, root));
        }
    }
    let total = work.len();
    println!("[offsets] probing {total} Go toolchain(s) with {jobs} job(s)");
    let queue = Mutex::new(work);
    let results = Mutex::new(Vec::new());
    let done = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let Some((version, root)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let result = probe_std(&root, &std_fields);
                let n = {
                    let mut d = done.lock().unwrap();
                    *d += 1;
                    *d
                };
                match &result {
                    Ok(fields) => println!(
                        "[offsets] ({n}/{total}) std {version}: {} fields in {:.1}s",
                        fields.values().filter(|o| o.is_some()).count(),
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => println!("[offsets] ({n}/{total}) std {version}: FAILED: {e:#}"),
                }
                results.lock().unwrap().push((version, result));
            });
        }
    });

    let module = db.modules.entry(STD.to_string()).or_insert_with(ModuleOffsets::default);
    // Fields no instrumentation declares any more leave the database with their last reader.
    let before = module.fields.len();
    module.fields.retain(|key, _| std_fields.iter().any(|f| f.key() == *key));
    if module.fields.len() < before {
        println!("[offsets] dropped {} field(s) no longer declared", before - module.fields.len());
    }
    for (version, result) in results.into_inner().unwrap() {
        match result {
            Ok(fields) => module.record(&version, &fields),
            Err(e) => {
                module.failed.insert(version, format!("{e:#}"));
            }
        }
    }
    // A field no build described would be unknown at every version: keep the old database.
    let undescribed: Vec<String> = std_fields
        .iter()
        .map(FieldSpec::key)
        .filter(|key| module.fields.get(key).is_none_or(|ranges| ranges.is_empty()))
        .collect();
    if !undescribed.is_empty() {
        let failures: Vec<String> =
            module.failed.iter().map(|(v, e)| format!("{v}: {e}")).collect();
        bail!(
            "no toolchain described {}; {} left as it was (failed builds: {})",
            undescribed.join(", "),
            out.display(),
            if failures.is_empty() { "none".to_string() } else { failures.join("; ") }
        );
    }
    let json = db.to_json();
    std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    let m = &db.modules[STD];
    println!(
        "[offsets] {}: std for Go {} ({} versions, {} failed), {} fields, {} bytes, in {:.1}s",
        out.display(),
        match (m.versions.first(), m.versions.last()) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "none".into(),
        },
        m.versions.len(),
        m.failed.len(),
        m.fields.len(),
        json.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
