//! Packages vendored in GOPATH mode. A project's `vendor` directory names each package it
//! holds by its path under the project: grpc-go vendored in github.com/acme/app is the package
//! "github.com/acme/app/vendor/google.golang.org/grpc", and so are its functions and types.
//! Module builds (`go mod vendor` included) keep the import path. Lookups here are by import
//! path, so the vendored names are also known without their prefix. Go's own copies in the
//! standard library ("vendor/golang.org/x/net/...") are left as they are: they are not the
//! library a program imports.

use std::collections::HashMap;

const VENDOR: &str = "/vendor/";

/// The prefix ("github.com/acme/app/vendor/") of a vendored package's symbol, if it has one.
fn prefix_of(symbol: &str) -> Option<&str> {
    let at = symbol.find(VENDOR)?;
    let prefix = &symbol[..at + VENDOR.len()];
    // Only a package path: not the compiler's type..eq./type:hash. functions naming the type,
    // nor a path only type arguments mention.
    let path_chars = |c: char| c.is_alphanumeric() || "./-_~".contains(c);
    let generated = ["type.", "type:", "go.", "go:"].iter().any(|g| prefix.starts_with(g));
    (at > 0 && !generated && prefix.chars().all(path_chars)).then_some(prefix)
}

/// Adds each vendored function under its import path too (the import path's own symbol wins
/// where both exist); returns the vendor prefixes seen, longest first.
pub(crate) fn unprefix_functions(functions: &mut HashMap<String, (u64, u64)>) -> Vec<String> {
    let mut prefixes: Vec<String> = Vec::new();
    let mut unprefixed = Vec::new();
    for (name, &at) in functions.iter() {
        if let Some(prefix) = prefix_of(name) {
            if !prefixes.iter().any(|p| p == prefix) {
                prefixes.push(prefix.to_string());
            }
            unprefixed.push((name[prefix.len()..].to_string(), at));
        }
    }
    for (name, at) in unprefixed {
        functions.entry(name).or_insert(at);
    }
    prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
    prefixes
}

/// Looks `wanted` type names up with `lookup`, as they are and under each vendor prefix
/// ("*pkg.T" as "*prefix/pkg.T"); results are keyed by the names as wanted, the import path's
/// own type first.
pub(crate) fn lookup_types<T, E>(
    prefixes: &[String],
    wanted: &[&str],
    lookup: impl FnOnce(&[&str]) -> Result<HashMap<String, T>, E>,
) -> Result<HashMap<String, T>, E> {
    if prefixes.is_empty() {
        return lookup(wanted);
    }
    let vendored = |w: &str, prefix: &str| match w.strip_prefix('*') {
        Some(name) => format!("*{prefix}{name}"),
        None => format!("{prefix}{w}"),
    };
    let names: Vec<String> = wanted
        .iter()
        .flat_map(|w| std::iter::once(w.to_string()).chain(prefixes.iter().map(|p| vendored(w, p))))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut found = lookup(&refs)?;
    let mut out = HashMap::new();
    for w in wanted {
        let value = found
            .remove(*w)
            .or_else(|| prefixes.iter().find_map(|p| found.remove(&vendored(w, p))));
        if let Some(value) = value {
            out.insert(w.to_string(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_the_projects_vendor_directories() {
        let grpc = "github.com/acme/app/vendor/google.golang.org/grpc.(*Server).handleStream";
        assert_eq!(prefix_of(grpc), Some("github.com/acme/app/vendor/"));
        // The standard library's own copies, and paths only type arguments mention, are not.
        assert_eq!(prefix_of("vendor/golang.org/x/net/http2/hpack.(*Decoder).Write"), None);
        assert_eq!(prefix_of("main.F[github.com/acme/app/vendor/x.T]"), None);
        assert_eq!(prefix_of("type..eq.github.com/acme/app/vendor/x.T"), None);
        assert_eq!(prefix_of("type..eq.struct { github.com/acme/app/vendor/x.T }"), None);
        assert_eq!(prefix_of("net/http.(*Server).Serve"), None);
    }

    #[test]
    fn vendored_functions_are_found_by_import_path_and_the_import_path_wins() {
        let mut functions = HashMap::from([
            ("github.com/acme/app/vendor/google.golang.org/grpc.invoke".to_string(), (1, 10)),
            ("github.com/acme/app/vendor/example.com/x.F".to_string(), (2, 10)),
            ("example.com/x.F".to_string(), (3, 10)),
        ]);
        let prefixes = unprefix_functions(&mut functions);
        assert_eq!(prefixes, ["github.com/acme/app/vendor/"]);
        assert_eq!(functions["google.golang.org/grpc.invoke"], (1, 10));
        assert_eq!(functions["example.com/x.F"], (3, 10));
    }

    #[test]
    fn types_are_found_under_the_prefix_and_keyed_as_wanted() {
        let prefixes = vec!["github.com/acme/app/vendor/".to_string()];
        let wanted = ["*google.golang.org/grpc.T", "net.TCPConn"];
        let found = lookup_types(&prefixes, &wanted, |names| {
            assert!(names.contains(&"*github.com/acme/app/vendor/google.golang.org/grpc.T"));
            Ok::<_, ()>(HashMap::from([
                ("*github.com/acme/app/vendor/google.golang.org/grpc.T".to_string(), 7),
                ("net.TCPConn".to_string(), 8),
            ]))
        });
        assert_eq!(
            found.unwrap(),
            HashMap::from([
                ("*google.golang.org/grpc.T".to_string(), 7),
                ("net.TCPConn".to_string(), 8)
            ])
        );
    }
}
