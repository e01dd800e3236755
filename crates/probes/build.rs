//! Compiles every BPF C program under `src/` (each `NAME.bpf.c` beside the Rust that loads it)
//! with clang and generates its libbpf-rs skeleton, `NAME.skel.rs`, in OUT_DIR. A new
//! instrumentation's program is found by walking the tree: nothing here names one.

use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

fn clang() -> String {
    if let Ok(c) = std::env::var("GOTEL_CLANG") {
        return c;
    }
    for candidate in ["clang-19", "clang"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.to_string();
        }
    }
    panic!(
        "\n\ngotel needs clang to compile its BPF programs, and none was found.\n\
         On Debian/Ubuntu: apt-get install clang-19 llvm-19 (or run scripts/setup.sh).\n\
         Set GOTEL_CLANG to use another clang binary.\n"
    );
}

/// Every C file (`.c`, `.h`) below `dir`.
fn c_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).path();
        if path.is_dir() {
            c_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "c" || e == "h") {
            found.push(path);
        }
    }
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = clang();
    let include = PathBuf::from("bpf/include");
    println!("cargo:rerun-if-env-changed=GOTEL_CLANG");
    println!("cargo:rerun-if-changed=bpf");
    // Not all of src/, or every Rust edit would rebuild the programs: its C files, and the
    // registry, which a new instrumentation's folder is added to.
    println!("cargo:rerun-if-changed=src/instrumentations/mod.rs");
    let mut files = Vec::new();
    c_files(Path::new("src"), &mut files);
    files.sort(); // the same build on every machine
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut names: Vec<String> = Vec::new();
    for src in files.iter().filter(|f| f.to_string_lossy().ends_with(".bpf.c")) {
        let file = src.file_name().and_then(|f| f.to_str()).expect("a UTF-8 file name");
        let name = file.trim_end_matches(".bpf.c").to_string();
        // Skeletons share one directory, and their types are named after the file.
        if names.contains(&name) {
            panic!("two BPF programs are named {file}: give {} another name", src.display());
        }
        SkeletonBuilder::new()
            .source(src)
            .clang(&clang)
            .clang_args([
                "-Wall".into(),
                "-Werror".into(),
                format!("-I{}", include.display()),
                "-I/usr/include/x86_64-linux-gnu".into(),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building BPF program {}: {e:#}", src.display()));
        names.push(name);
    }
}
