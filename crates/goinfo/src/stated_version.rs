//! Library versions a binary states in its own data, for builds whose buildinfo lists no
//! modules: GOPATH and vendor builds, as Linux distributions and older toolchains make them.
//! Only libraries that compile their version into a string literal are known; anything that
//! does not read unambiguously is no version at all.

/// A library that compiles its version into a string literal after a fixed prefix.
struct Stated {
    module: &'static str,
    /// The literal's prefix; the version follows it, as `1.MINOR.PATCH[-dev]`.
    prefix: &'static [u8],
    /// Where the literal comes from, for the user.
    what: &'static str,
}

/// grpc-go's user agent, `"grpc-go/" + grpc.Version`, folded into one literal by the compiler.
const STATED: &[Stated] = &[Stated {
    module: "google.golang.org/grpc",
    prefix: b"grpc-go/",
    what: "grpc.Version, in grpc-go's user agent string",
}];

/// The modules whose versions `stated_version` can read.
pub(crate) fn stated_modules() -> impl Iterator<Item = &'static str> {
    STATED.iter().map(|s| s.module)
}

/// A module's version and how it was learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleVersion {
    /// As buildinfo spells versions: "v1.60.1".
    pub version: String,
    pub source: VersionSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    BuildInfo,
    /// Read from the binary's data: what was read ("grpc.Version, in ...").
    Stated(&'static str),
    /// Inferred from the struct layouts the binary describes, compared with the offsets
    /// database: which of its versions match ("v9.0.0 .. v9.5.1, 12 of 43 versions").
    Layout(String),
}

impl std::fmt::Display for VersionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSource::BuildInfo => f.write_str("from buildinfo"),
            VersionSource::Stated(what) => write!(f, "from {what} in the binary"),
            VersionSource::Layout(matches) => write!(f, "from the layout: matches {matches}"),
        }
    }
}

/// What the data states of `module`'s version: Some(Ok) when every literal found agrees,
/// Some(Err(why)) when they are missing or do not read unambiguously, None when gotel knows no
/// literal for the module.
pub(crate) fn stated_version(data: &[u8], module: &str) -> Option<Result<ModuleVersion, String>> {
    let stated = STATED.iter().find(|s| s.module == module)?;
    let mut versions: Vec<String> = Vec::new();
    let mut from = 0;
    while let Some(at) = find(&data[from..], stated.prefix) {
        let start = from + at + stated.prefix.len();
        from = start;
        // Other literals follow with no separator: a version is read only where it ends
        // unambiguously (no digit run that could belong to the next literal).
        match read_version(&data[start..]) {
            Some(Ok(v)) if !versions.contains(&v) => versions.push(v),
            Some(Ok(_)) | None => {}
            Some(Err(())) => {
                return Some(Err(format!("the {} cannot be read unambiguously", stated.what)))
            }
        }
    }
    Some(match versions.as_slice() {
        [v] => Ok(ModuleVersion {
            version: format!("v{v}"),
            source: VersionSource::Stated(stated.what),
        }),
        [] => Err(format!("no {} found", stated.what)),
        many => Err(format!("the {} names several versions: {}", stated.what, many.join(", "))),
    })
}

/// `1.MINOR.PATCH` (minor up to 3 digits, patch up to 2) and an optional `-dev`, at the start
/// of `bytes`: None when they do not start with "1.", Err when the digits run on past what a
/// version has (they may run into the next literal).
fn read_version(bytes: &[u8]) -> Option<Result<String, ()>> {
    let rest = bytes.strip_prefix(b"1.")?;
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let minor = digits(rest);
    if minor == 0 || minor > 3 || rest.get(minor) != Some(&b'.') {
        return Some(Err(()));
    }
    let after_minor = &rest[minor + 1..];
    let patch = digits(after_minor);
    if patch == 0 || patch > 2 {
        return Some(Err(()));
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut version = format!("1.{}.{}", text(&rest[..minor]), text(&after_minor[..patch]));
    if after_minor[patch..].starts_with(b"-dev") {
        version.push_str("-dev");
    }
    Some(Ok(version))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(data: &[u8]) -> Result<ModuleVersion, String> {
        stated_version(data, "google.golang.org/grpc").unwrap()
    }

    #[test]
    fn reads_the_version_packed_among_other_literals() {
        let v = of(b"xxgrpc-go/1.60.1unix-abstract...").unwrap();
        assert_eq!(v.version, "v1.60.1");
        assert_eq!(
            v.source.to_string(),
            "from grpc.Version, in grpc-go's user agent string in the binary"
        );
        assert_eq!(of(b"grpc-go/1.86.0-devhttp2").unwrap().version, "v1.86.0-dev");
        assert_eq!(of(b"grpc-go/1.33.2 grpc-go/1.33.2").unwrap().version, "v1.33.2");
    }

    #[test]
    fn anything_ambiguous_is_no_version() {
        // A digit run that may continue into the next literal.
        assert!(of(b"grpc-go/1.60.12006-01-02").is_err());
        assert!(of(b"grpc-go/1.60.1 grpc-go/1.61.0").unwrap_err().contains("several"));
        assert!(of(b"nothing here").unwrap_err().contains("no grpc.Version"));
        // The prefix alone, followed by something else: not a version, skipped.
        assert!(of(b"grpc-go/%s").is_err());
        assert!(stated_version(b"", "github.com/other/module").is_none());
    }
}
