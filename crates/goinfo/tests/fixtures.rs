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
    let msg = format!("fixture {} missing (run scripts/build-fixtures.sh)", p.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// The Go toolchain that built a fixture ("go1.22" -> /usr/lib/go-1.22/bin/go or the machine's).
fn go_tool_for(version: &str) -> Option<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/go-{}/bin/go", version.trim_start_matches("go")));
    if debian.exists() {
        return Some(debian);
    }
    let local = PathBuf::from("/usr/local/go/bin/go");
    let v = Command::new(&local).args(["env", "GOVERSION"]).output().ok()?;
    String::from_utf8_lossy(&v.stdout).starts_with(version).then_some(local)
}

/// RET addresses of `func` as `go tool objdump` prints them.
fn objdump_rets(go: &Path, bin: &Path, func: &str) -> Vec<u64> {
    let out = Command::new(go)
        .args(["tool", "objdump", "-s", &format!("^{}$", regex_escape(func))])
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
    s.chars().flat_map(|c| if ".()*".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
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

    let layouts = bin.struct_layouts(&["net/http.Request", "net/url.URL", "no/such.Type"]).unwrap();
    let req = &layouts["net/http.Request"];
    assert_eq!(req["Method"], 0);
    assert_eq!(req["URL"], 16);
    assert_eq!(req.contains_key("Pattern"), has_pattern, "Request.Pattern exists from Go 1.23");
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

/// The structs gotel reads, as DWARF names them.
const STRUCTS: &[&str] = &[
    "net/http.Request",
    "net/url.URL",
    "net/http.response",
    "net/http.http2responseWriter",
    "net/http.http2responseWriterState",
];

/// Every Go version a fixture was built with ("go1.19", ...), from target/fixtures.
fn built_versions() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures_dir())
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix("httpserver-").map(str::to_string))
                .filter(|n| !n.contains('-'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn fixtures_exist_for_several_go_versions() {
    if fixture("httpserver-go1.26").is_none() {
        return;
    }
    let versions = built_versions();
    assert!(versions.len() >= 2, "fixtures for at least two Go versions: {versions:?}");
}

/// pclntab agrees with .symtab and with `go tool nm`, for every toolchain.
#[test]
fn pclntab_agrees_with_symtab_and_go_tool_nm() {
    for version in built_versions() {
        let Some(path) = fixture(&format!("httpserver-{version}")) else {
            return;
        };
        let bin = GoBinary::open(&path).unwrap();
        assert_eq!(bin.symbol_source(), goinfo::SymbolSource::Symtab);
        let pcln = bin.pclntab_functions().unwrap();
        assert!(pcln.len() > 1000, "{version}: {} functions", pcln.len());
        let mut by_address: std::collections::HashMap<u64, Vec<(&str, u64)>> = Default::default();
        for (name, addr, size) in bin.functions() {
            by_address.entry(addr).or_default().push((name, size));
        }
        let mut name_count: std::collections::HashMap<&str, usize> = Default::default();
        for f in &pcln {
            *name_count.entry(f.name.as_str()).or_default() += 1;
        }
        // A name that several local functions share (generic closures) is one map entry.
        for f in pcln.iter().filter(|f| name_count[f.name.as_str()] == 1) {
            let at_entry = by_address.get(&f.entry).unwrap_or_else(|| {
                panic!("{version}: no .symtab function at {:#x} ({})", f.entry, f.name)
            });
            // Same name, but for the ".abi0" suffix of assembly functions, the "[...]" that
            // pclntab writes for array lengths and the "·" that .symtab writes as ".".
            let pcln_name = f.name.replace('·', ".");
            let same = at_entry.iter().find(|(name, _)| {
                name.strip_suffix(".abi0").unwrap_or(name) == pcln_name
                    || pcln_name.contains("[...]")
            });
            let &(_, size) =
                same.unwrap_or_else(|| panic!("{version}: {at_entry:?} vs {}", f.name));
            assert!(size <= f.end - f.entry, "{version}: size of {}", f.name);
        }
        let Some(go) = go_tool_for(&version) else {
            continue;
        };
        let nm = Command::new(&go).args(["tool", "nm"]).arg(&path).output().unwrap();
        // name -> addresses: a function and its ABI wrapper share a name once ".abi0" is cut.
        let mut text_symbols: std::collections::HashMap<String, Vec<u64>> = Default::default();
        for line in String::from_utf8_lossy(&nm.stdout).lines() {
            // "  addr T name", where a generic name may itself contain spaces.
            let mut w = line.trim_start().splitn(3, ' ');
            if let (Some(addr), Some("T" | "t"), Some(name)) = (w.next(), w.next(), w.next()) {
                let name = name.strip_suffix(".abi0").unwrap_or(name);
                let addr = u64::from_str_radix(addr, 16).unwrap();
                text_symbols.entry(name.to_string()).or_default().push(addr);
            }
        }
        let mut checked = 0;
        for f in &pcln {
            if let Some(addrs) = text_symbols.get(&f.name) {
                assert!(addrs.contains(&f.entry), "{version}: go tool nm disagrees on {}", f.name);
                checked += 1;
            }
        }
        assert!(checked > pcln.len() * 9 / 10, "{version}: compared {checked} of {}", pcln.len());
        let serve = pcln.iter().find(|f| f.name == SERVE_HTTP).expect("ServeHTTP in pclntab");
        assert_eq!(text_symbols.get(SERVE_HTTP), Some(&vec![serve.entry]));
    }
}

/// Type descriptors give the same offsets as DWARF, for every toolchain; stripped builds give
/// the same functions and offsets as their unstripped twins.
#[test]
fn type_descriptors_and_pclntab_match_dwarf_and_symtab_when_stripped() {
    for version in built_versions() {
        let Some(path) = fixture(&format!("httpserver-{version}")) else {
            return;
        };
        let Some(stripped_path) = fixture(&format!("httpserver-{version}-stripped")) else {
            return;
        };
        let bin = GoBinary::open(&path).unwrap();
        let dwarf = bin.struct_layouts(STRUCTS).unwrap();
        let from_types = bin.struct_layouts_from_types(STRUCTS).unwrap();
        for s in STRUCTS {
            assert_eq!(from_types.get(*s), dwarf.get(*s), "{version}: {s}");
        }
        // The HTTP/2 writer was renamed in Go 1.27 (http2ResponseWriter); the rest is stable.
        for s in &STRUCTS[..3] {
            assert!(dwarf.contains_key(*s), "{version}: {s} in DWARF");
        }

        let stripped = GoBinary::open(&stripped_path).unwrap();
        assert_eq!(stripped.symbol_source(), goinfo::SymbolSource::Pclntab);
        assert!(matches!(stripped.struct_layouts(STRUCTS), Err(Error::NoDwarf { .. })));
        assert_eq!(stripped.struct_layouts_from_types(STRUCTS).unwrap(), dwarf, "{version}");
        let (a, b) = (bin.function(SERVE_HTTP).unwrap(), stripped.function(SERVE_HTTP).unwrap());
        assert_eq!((a.address, a.file_offset), (b.address, b.file_offset), "{version}");
        assert_eq!(bin.ret_offsets(&a), stripped.ret_offsets(&b), "{version}");
    }
}

/// The dynamic types a program tells apart by their itab's hash (`conn.h`): every toolchain's
/// binaries have descriptors for them, distinct hashes, and stripping changes none.
#[test]
fn type_hashes_are_found_and_survive_stripping() {
    const TYPES: &[&str] = &["*net.TCPConn", "*crypto/tls.Conn"];
    for version in built_versions() {
        let (Some(path), Some(stripped)) = (
            fixture(&format!("httpserver-{version}")),
            fixture(&format!("httpserver-{version}-stripped")),
        ) else {
            return;
        };
        let hashes = GoBinary::open(&path).unwrap().type_hashes(TYPES).unwrap();
        assert_eq!(hashes.len(), 2, "{version}: {hashes:?}");
        assert_ne!(hashes["*net.TCPConn"], hashes["*crypto/tls.Conn"], "{version}");
        let again = GoBinary::open(&stripped).unwrap().type_hashes(TYPES).unwrap();
        assert_eq!(again, hashes, "{version}");
    }
}

/// A struct held in an interface by value (grpc before 1.20 wraps TLS connections so): its
/// own descriptor's hash, the same stripped, distinct from the pointer types'.
#[test]
fn a_value_types_hash_is_found_and_survives_stripping() {
    const TYPES: &[&str] = &["google.golang.org/grpc/credentials.tlsConn", "*crypto/tls.Conn"];
    let (Some(path), Some(stripped)) =
        (fixture("grpc/grpc-v1.14.0"), fixture("grpc/grpc-v1.14.0-stripped"))
    else {
        return;
    };
    let hashes = GoBinary::open(&path).unwrap().type_hashes(TYPES).unwrap();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    assert_ne!(hashes[TYPES[0]], hashes[TYPES[1]]);
    assert_eq!(GoBinary::open(&stripped).unwrap().type_hashes(TYPES).unwrap(), hashes);
}

#[test]
fn a_gopath_build_has_no_modules_but_everything_else() {
    let Some(name) = built_versions().last().map(|v| format!("httpserver-{v}-gopath")) else {
        return;
    };
    let Some(path) = fixture(&name) else { return };
    let bin = GoBinary::open(&path).unwrap();
    assert!(bin.build_info().main_module.is_none(), "GOPATH mode records no module");
    assert!(bin.build_info().deps.is_empty());
    assert!(bin.function(SERVE_HTTP).is_ok());
    assert!(bin
        .struct_layouts_from_types(&["net/http.Request"])
        .unwrap()
        .contains_key("net/http.Request"));
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
    assert!(!GoBinary::is_go(&c_program).unwrap() && !GoBinary::is_go(&text).unwrap());
    assert!(GoBinary::is_go("/no/such/file").is_err());

    if let Some(go) = fixture("httpserver-go1.26") {
        assert!(GoBinary::is_go(&go).unwrap());
        if let Some(stripped) = fixture("httpserver-go1.26-stripped") {
            assert!(GoBinary::is_go(stripped).unwrap());
        }
        let bytes = std::fs::read(go).unwrap();
        for len in [16, 64, 4096] {
            let truncated = temp_file(&format!("trunc{len}"), &bytes[..len]);
            assert!(GoBinary::open(&truncated).is_err(), "{len}-byte ELF prefix is rejected");
            let _ = std::fs::remove_file(truncated);
        }
    }
    for p in [empty, text] {
        let _ = std::fs::remove_file(p);
    }
}
