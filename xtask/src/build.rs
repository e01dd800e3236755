//! One probe build: a throwaway Go program linking the structs of interest, compiled with a
//! given toolchain, whose DWARF then says where every declared field lies.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use goinfo::GoBinary;
use offsets::FieldSpec;

/// A Go program to build: its go.mod requirement (none for the standard library) and source.
pub struct Program<'a> {
    /// "module@version" to require, got from the module proxy.
    pub require: Option<String>,
    pub main_go: &'a str,
}

/// Builds `program` with the toolchain at `goroot` in a fresh directory and reads `fields`
/// ("struct.field" -> offset, None where the struct has no such field or is not linked).
pub fn read_offsets(
    goroot: &Path,
    program: &Program,
    fields: &[FieldSpec],
) -> anyhow::Result<BTreeMap<String, Option<u64>>> {
    let tag: String = program
        .require
        .as_deref()
        .unwrap_or_else(|| goroot.file_name().and_then(|n| n.to_str()).unwrap_or("go"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!("gotel-offsets-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let built = build(goroot, program, &dir);
    let bin = built.and_then(|()| Ok(GoBinary::open(dir.join("probe"))?));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = bin?;
    let mut structs: Vec<&str> = fields.iter().map(|f| f.struct_name).collect();
    structs.sort_unstable();
    structs.dedup();
    let layouts = bin.struct_layouts(&structs)?;
    Ok(fields
        .iter()
        .map(|f| (f.key(), layouts.get(f.struct_name).and_then(|s| s.get(f.field)).copied()))
        .collect())
}

fn build(goroot: &Path, program: &Program, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("go.mod"), "module gotel.dev/offsets/probe\n\ngo 1.19\n")?;
    std::fs::write(dir.join("main.go"), program.main_go)?;
    if let Some(require) = &program.require {
        go(goroot, dir, &["get", require])?;
    }
    go(goroot, dir, &["build", "-trimpath", "-o", "probe", "."])
}

fn go(goroot: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(goroot.join("bin/go"))
        .args(args)
        .current_dir(dir)
        .env("GOROOT", goroot)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .output()
        .with_context(|| format!("running go {}", args[0]))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("go {} failed: {}", args[0], last.trim());
    }
    Ok(())
}
