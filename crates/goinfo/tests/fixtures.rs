//! Binary analysis on real Go executables built by scripts/build-fixtures.sh, checked against
//! the Go toolchain's own view (go tool objdump), and on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use goinfo::{Error, GoBinary};

const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";

fn fixtures_dir() -> PathBuf {
    std::env::var_os("GOTEL_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

/// The fixture, or None (said loudly) when fixtures were not built; CI insists on them.
fn fixture(name: &str) -> Option<PathBuf> {
    let p = fixtures_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "fixture {} missing (run scripts/build-fixtures.sh)",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// The Go toolchain that built a fixture ("go1.22" -> /usr/lib/go-1.22/bin/go or the machine's).
fn go_tool_for(version: &str) -> Option<PathBuf> {
    let debian = PathBuf::from(format!(
        "/usr/lib/go-{}/bin/go",
        version.trim_start_matches("go")
    ));
    if debian.exists() {
        return Some(debian);
    }
    let local = PathBuf::from("/usr/local/go/bin/go");
    let v = Command::new(&local)
        .args(["env", "GOVERSION"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&v.stdout)
        .starts_with(version)
        .then_some(local)
}

/// RET addresses of `func` as `go tool objdump` prints them.
fn objdump_rets(go: &Path, bin: &Path, func: &str) -> Vec<u64> {
    let out = Command::new(go)
        .args([
            "tool",
            "objdump",
            "-s",
            &format!("^{}$", regex_escape(func)),
        ])
        .arg(bin)
        .output()
        .expect("go tool objdump");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "RET"))
        .filter_map(|l| {
            let addr = l.split_whitespace().find(|w| w.starts_with("0x"))?;
            u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if ".()*".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

fn check_unstripped(version: &str, has_pattern: bool) {
    let Some(path) = fixture(&format!("httpserver-{version}")) else {
        return;
    };
    let bin = GoBinary::open(&path).unwrap();
    let info = bin.build_info();
    assert!(info.go_version.starts_with(version), "{}", info.go_version);
    assert_eq!(info.main_path, "gotel.dev/fixtures/httpserver");
    assert!(bin.function_count() > 1000);

    let f = bin.function(SERVE_HTTP).unwrap();
    assert!(f.size > 0 && f.address > 0);
    let rets = bin.ret_offsets(&f);
    assert!(!rets.is_empty());
    let ret_addrs: Vec<u64> = rets.iter().map(|o| o - f.file_offset + f.address).collect();
    if let Some(go) = go_tool_for(version) {
        assert_eq!(
            ret_addrs,
            objdump_rets(&go, &path, SERVE_HTTP),
            "RETs agree with go tool objdump"
        );
    }

    let layouts = bin
        .struct_layouts(&["net/http.Request", "net/url.URL", "no/such.Type"])
        .unwrap();
    let req = &layouts["net/http.Request"];
    assert_eq!(req["Method"], 0);
    assert_eq!(req["URL"], 16);
    assert_eq!(
        req.contains_key("Pattern"),
        has_pattern,
        "Request.Pattern exists from Go 1.23"
    );
    assert!(layouts["net/url.URL"].contains_key("RawQuery"));
    assert!(!layouts.contains_key("no/such.Type"));

    let missing = bin.function("main.noSuchFunction").unwrap_err();
    assert!(matches!(missing, Error::MissingFunction { .. }));
    assert!(missing.to_string().contains("main.noSuchFunction"));
    assert!(missing.to_string().contains(&path.display().to_string()));
}

#[test]
fn go1_22_fixture() {
    check_unstripped("go1.22", false);
}

#[test]
fn go1_26_fixture() {
    check_unstripped("go1.26", true);
}

#[test]
fn stripped_binaries_keep_buildinfo_but_lose_symbols_and_dwarf() {
    let Some(path) = fixture("httpserver-go1.26-stripped") else {
        return;
    };
    let bin = GoBinary::open(&path).unwrap();
    assert!(bin.build_info().go_version.starts_with("go1.26"));
    assert_eq!(bin.function_count(), 0);
    assert!(matches!(
        bin.function(SERVE_HTTP),
        Err(Error::MissingFunction { .. })
    ));
    assert!(matches!(
        bin.struct_layouts(&["net/http.Request"]),
        Err(Error::NoDwarf { .. })
    ));
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("goinfo-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_input_gets_errors_that_name_the_file() {
    let empty = temp_file("empty", b"");
    let e = GoBinary::open(&empty).unwrap_err();
    assert!(matches!(e, Error::NotElf { .. }), "{e}");
    assert!(e.to_string().contains(&empty.display().to_string()));

    let text = temp_file("text", b"#!/bin/sh\necho hello\n");
    assert!(matches!(GoBinary::open(&text), Err(Error::NotElf { .. })));

    let missing = GoBinary::open("/no/such/file").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("/no/such/file"));

    // A C program: ELF, but no Go.
    let c_program = std::env::current_exe().unwrap(); // this test binary is Rust: ELF, not Go
    let e = GoBinary::open(&c_program).unwrap_err();
    assert!(matches!(e, Error::NotGo { .. }), "{e}");
    assert!(e.to_string().contains("not a Go program"));

    if let Some(go) = fixture("httpserver-go1.26") {
        let bytes = std::fs::read(go).unwrap();
        for len in [16, 64, 4096] {
            let truncated = temp_file(&format!("trunc{len}"), &bytes[..len]);
            assert!(
                GoBinary::open(&truncated).is_err(),
                "{len}-byte ELF prefix is rejected"
            );
            let _ = std::fs::remove_file(truncated);
        }
    }
    for p in [empty, text] {
        let _ = std::fs::remove_file(p);
    }
}
