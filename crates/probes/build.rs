//! Compiles the BPF C programs with clang and generates their libbpf-rs skeletons.

use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] =
    &["http_server", "http_client", "goroutines", "inject", "grpc_server", "grpc_client", "execs"];

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

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = clang();
    let include = PathBuf::from("bpf/include");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=GOTEL_CLANG");
    for name in PROGRAMS {
        let src = PathBuf::from(format!("bpf/{name}.bpf.c"));
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args([
                "-Wall".into(),
                "-Werror".into(),
                format!("-I{}", include.display()),
                "-I/usr/include/x86_64-linux-gnu".into(),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building BPF program {}: {e:#}", src.display()));
    }
}
