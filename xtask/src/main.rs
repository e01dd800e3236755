//! `cargo xtask offsets`: regenerates crates/offsets/data/offsets.json.
//!
//! For every Go toolchain on the machine it builds a tiny program that links the code behind
//! every standard-library struct the instrumentations declare; for every release of every
//! tracked module (`tracked.rs`) on the module proxy, one that links that module's. It reads
//! the field offsets from each build's DWARF with goinfo and merges equal offsets into version
//! ranges. Incremental (versions already in the database are skipped unless --full), parallel
//! (--jobs), and tolerant: a version that fails to build is recorded with its error, not fatal.

mod build;
mod tracked;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use offsets::db::{Database, ModuleOffsets, SCHEMA, STD};
use offsets::FieldSpec;

use build::{read_offsets, Program};
use tracked::{Tracked, TRACKED};

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
        /// Go toolchain roots (default: /usr/lib/go-1.* and /usr/local/go); modules are built
        /// with the last.
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

/// One build to make: a Go version of the standard library, or a release of a module.
struct Job {
    version: String,
    goroot: PathBuf,
    /// None for the standard library.
    tracked: Option<&'static Tracked>,
    /// A module version the proxy did not list: skipped, not failed, if it cannot be got.
    guessed: bool,
}

impl Job {
    fn module(&self) -> &'static str {
        self.tracked.map_or(STD, |t| t.module)
    }

    fn run(&self, fields: &[FieldSpec]) -> anyhow::Result<BTreeMap<String, Option<u64>>> {
        let program = match self.tracked {
            None => Program { require: None, main_go: STD_PROBE },
            Some(t) => Program {
                require: Some(format!("{}@{}", t.module, self.version)),
                main_go: t.main_go,
            },
        };
        let mine: Vec<FieldSpec> =
            fields.iter().filter(|f| f.module == self.module()).copied().collect();
        read_offsets(&self.goroot, &program, &mine)
    }
}

fn regenerate(full: bool, jobs: usize, goroots: Vec<PathBuf>, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut db = match std::fs::read_to_string(out) {
        Ok(text) if !full => Database::from_json(&text)?,
        _ => Database { schema: SCHEMA, modules: BTreeMap::new() },
    };
    let fields: Vec<FieldSpec> = probes::declared_fields();
    let mut modules: Vec<&'static str> = fields.iter().map(|f| f.module).collect();
    modules.sort_unstable();
    modules.dedup();
    let untracked: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|m| *m != STD && !TRACKED.iter().any(|t| t.module == *m))
        .collect();
    if !untracked.is_empty() {
        println!(
            "[offsets] not tracked, their fields come from the binary alone: {}",
            untracked.join(", ")
        );
    }
    modules.retain(|m| !untracked.contains(m));

    // A field declared since the last run needs every version of its module probed again.
    let known = |module: &str| -> Vec<String> {
        match db.modules.get(module) {
            Some(m)
                if fields
                    .iter()
                    .filter(|f| f.module == module)
                    .all(|f| m.fields.contains_key(&f.key())) =>
            {
                m.versions.clone()
            }
            Some(_) => {
                println!("[offsets] {module}: new fields declared: probing every version again");
                Vec::new()
            }
            None => Vec::new(),
        }
    };
    let roots = toolchains(goroots);
    let Some(newest_go) = roots.last().cloned() else {
        bail!("no Go toolchain found");
    };
    let mut work: Vec<Job> = Vec::new();
    let std_known = known(STD);
    for root in roots {
        let version = go_version(&root)?;
        if std_known.contains(&version) {
            println!("[offsets] std {version}: already in the database ({})", root.display());
        } else if !work.iter().any(|j| j.version == version) {
            work.push(Job { version, goroot: root, tracked: None, guessed: false });
        }
    }
    for t in TRACKED {
        let module_known = known(t.module);
        let releases = tracked::releases(&newest_go, t)?;
        let total = releases.len();
        let new: Vec<_> =
            releases.into_iter().filter(|r| !module_known.contains(&r.version)).collect();
        println!("[offsets] {}: {total} release(s) from {}, {} new", t.module, t.oldest, new.len());
        work.extend(new.into_iter().map(|r| Job {
            version: r.version,
            goroot: newest_go.clone(),
            tracked: Some(t),
            guessed: r.guessed,
        }));
    }

    let total = work.len();
    println!("[offsets] {total} build(s) with {jobs} job(s)");
    // Popped from the end: the standard library's first, whose builds are slowest to repeat.
    work.reverse();
    let queue = Mutex::new(work);
    let results = Mutex::new(Vec::new());
    let done = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let Some(job) = queue.lock().unwrap().pop() else {
                    break;
                };
                let t = Instant::now();
                let result = job.run(&fields);
                let n = {
                    let mut d = done.lock().unwrap();
                    *d += 1;
                    *d
                };
                let what = format!("({n}/{total}) {} {}", job.module(), job.version);
                match &result {
                    Ok(found) => println!(
                        "[offsets] {what}: {} fields in {:.1}s",
                        found.values().filter(|o| o.is_some()).count(),
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) if job.guessed => println!("[offsets] {what}: not to be had ({e:#})"),
                    Err(e) => println!("[offsets] {what}: FAILED: {e:#}"),
                }
                results.lock().unwrap().push((job, result));
            });
        }
    });

    // Modules no instrumentation reads any more leave the database, as do fields.
    db.modules.retain(|m, _| modules.contains(&m.as_str()));
    for (job, result) in results.into_inner().unwrap() {
        let module =
            db.modules.entry(job.module().to_string()).or_insert_with(ModuleOffsets::default);
        match result {
            Ok(found) => module.record(&job.version, &found),
            Err(_) if job.guessed => {}
            Err(e) => {
                module.failed.insert(job.version, format!("{e:#}"));
            }
        }
    }
    let mut undescribed = Vec::new();
    for (name, module) in db.modules.iter_mut() {
        let mine: Vec<String> =
            fields.iter().filter(|f| f.module == name).map(FieldSpec::key).collect();
        let before = module.fields.len();
        module.fields.retain(|key, _| mine.contains(key));
        if module.fields.len() < before {
            println!(
                "[offsets] {name}: dropped {} field(s) no longer declared",
                before - module.fields.len()
            );
        }
        // A field no build described would be unknown at every version: keep the old database.
        for key in mine {
            if module
                .fields
                .get(&key)
                .is_none_or(|ranges| ranges.iter().all(|r| r.offset.is_none()))
            {
                let failures: Vec<String> =
                    module.failed.iter().map(|(v, e)| format!("{v}: {e}")).collect();
                undescribed.push(format!(
                    "{key} (failed builds: {})",
                    if failures.is_empty() { "none".to_string() } else { failures.join("; ") }
                ));
            }
        }
    }
    if !undescribed.is_empty() {
        bail!("no build described {}; {} left as it was", undescribed.join(", "), out.display());
    }
    let json = db.to_json();
    std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    for (name, m) in &db.modules {
        println!(
            "[offsets] {name}: {} ({} versions, {} failed), {} fields",
            match (m.versions.first(), m.versions.last()) {
                (Some(a), Some(b)) => format!("{a} .. {b}"),
                _ => "none".into(),
            },
            m.versions.len(),
            m.failed.len(),
            m.fields.len(),
        );
    }
    println!(
        "[offsets] {}: {} bytes, in {:.1}s",
        out.display(),
        json.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
