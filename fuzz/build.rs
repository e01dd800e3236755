//! Compiles c/traceparent.c, the BPF programs' traceparent parser built for the host, with
//! libFuzzer's coverage instrumentation so the fuzzer sees its branches. libbpf's headers come
//! from the libbpf-sys that probes builds (DEP_BPF_INCLUDE).

fn main() {
    let include = std::env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports its headers");
    println!("cargo:rerun-if-changed=c/traceparent.c");
    println!("cargo:rerun-if-changed=../crates/probes/bpf/include");
    let mut build = cc::Build::new();
    build
        .compiler(std::env::var("GOTEL_CLANG").unwrap_or_else(|_| "clang-19".into()))
        .file("c/traceparent.c")
        .include("../crates/probes/bpf/include")
        .include(include)
        .flag("-Wall")
        .flag("-Werror");
    // Under `cargo fuzz` (which sets cfg fuzzing for the targets): the same edge counters,
    // PC table and comparison hooks rustc gives the Rust code.
    if std::env::var("CARGO_CFG_FUZZING").is_ok() {
        build.flag("-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp");
    }
    build.compile("gotel_traceparent");
}
