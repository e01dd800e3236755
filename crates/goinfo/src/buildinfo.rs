//! `.go.buildinfo`: the Go version and module list that `go version -m` prints.
//!
//! Layout (Go's debug/buildinfo is the specification): a 16-byte header, "\xff Go buildinf:",
//! then pointer size and flags. Since Go 1.18 (flag bit 2) two varint-prefixed strings follow at
//! offset 32; before that the header holds two pointers to Go string headers.

use crate::Error;

const MAGIC: &[u8] = b"\xff Go buildinf:";
const FLAG_INLINE_STRINGS: u8 = 0x2;
const FLAG_BIG_ENDIAN: u8 = 0x1;

/// A Go module as recorded by the linker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    /// Empty for the main module of a `go build` in a work tree ("(devel)" is kept as is).
    pub version: String,
    /// `=> path version` replacement, if any.
    pub replaced_by: Option<Box<Module>>,
}

/// Everything `.go.buildinfo` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildInfo {
    /// e.g. "go1.26.8"
    pub go_version: String,
    /// The main package path ("path" line).
    pub main_path: String,
    pub main_module: Option<Module>,
    pub deps: Vec<Module>,
    /// `build` lines: -ldflags, GOARCH, vcs.revision ...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// The version of module `path` linked into the binary, following replacements.
    pub fn module_version(&self, path: &str) -> Option<&str> {
        self.deps.iter().find(|m| m.path == path).map(|m| match &m.replaced_by {
            Some(r) if !r.version.is_empty() => r.version.as_str(),
            _ => m.version.as_str(),
        })
    }

    /// Go version as (major, minor, patch), e.g. "go1.22.12" -> (1, 22, 12).
    pub fn go_semver(&self) -> Option<(u32, u32, u32)> {
        parse_go_version(&self.go_version)
    }
}

/// Parses "go1.22", "go1.22.3", "go1.23rc1" (rc counts as .0) and "go1.26.8 X:nocoverage".
pub fn parse_go_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix("go")?.split([' ', '-']).next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor_raw = parts.next()?;
    let minor_digits: String = minor_raw.chars().take_while(char::is_ascii_digit).collect();
    let minor = minor_digits.parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?,
        None => 0,
    };
    Some((major, minor, patch))
}

/// Reads an unsigned LEB128 varint (Go's encoding/binary.Uvarint): its value and byte count.
pub(crate) fn read_uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let (mut value, mut shift) = (0u64, 0u32);
    for (i, &b) in data.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
    }
    None
}

/// Reads a varint-length-prefixed string, returning it and the rest.
fn read_varint_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, i) = read_uvarint(data)?;
    let end = i.checked_add(usize::try_from(len).ok()?)?;
    Some((data.get(i..end)?, data.get(end..)?))
}

/// Parses the raw section. `read_at` resolves a virtual address to bytes, needed only for the
/// pre-1.18 pointer layout.
pub(crate) fn parse(
    section: &[u8],
    read_at: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<BuildInfo, Error> {
    if section.len() < 32 || !section.starts_with(MAGIC) {
        return Err(Error::Malformed("bad .go.buildinfo magic"));
    }
    let ptr_size = section[14] as usize;
    let flags = section[15];
    let (version, modinfo) = if flags & FLAG_INLINE_STRINGS != 0 {
        let (v, rest) =
            read_varint_string(&section[32..]).ok_or(Error::Malformed("buildinfo version"))?;
        let (m, _) = read_varint_string(rest).ok_or(Error::Malformed("buildinfo modinfo"))?;
        (v.to_vec(), m.to_vec())
    } else {
        if ptr_size != 8 && ptr_size != 4 {
            return Err(Error::Malformed("buildinfo pointer size"));
        }
        let big = flags & FLAG_BIG_ENDIAN != 0;
        let word = |b: &[u8]| -> u64 {
            let mut v = 0u64;
            for (i, &x) in b.iter().enumerate() {
                let shift = if big { (b.len() - 1 - i) * 8 } else { i * 8 };
                v |= u64::from(x) << shift;
            }
            v
        };
        let read_go_string = |ptr_at: u64| -> Option<Vec<u8>> {
            let hdr = read_at(ptr_at, 2 * ptr_size)?;
            let (data, len) = (word(&hdr[..ptr_size]), word(&hdr[ptr_size..]));
            read_at(data, usize::try_from(len).ok()?)
        };
        let vptr = word(&section[16..16 + ptr_size]);
        let mptr = word(&section[16 + ptr_size..16 + 2 * ptr_size]);
        let v = read_go_string(vptr).ok_or(Error::Malformed("buildinfo version pointer"))?;
        let m = read_go_string(mptr).unwrap_or_default();
        (v, m)
    };
    let mut info = BuildInfo {
        go_version: String::from_utf8_lossy(&version).into_owned(),
        ..BuildInfo::default()
    };
    // modinfo is wrapped in 16-byte binary sentinels; keep only the text between them.
    let n = modinfo.len();
    let inner =
        if n >= 33 && modinfo[n - 17] == b'\n' { &modinfo[16..n - 16] } else { &modinfo[..] };
    parse_modinfo(&String::from_utf8_lossy(inner), &mut info);
    Ok(info)
}

fn parse_modinfo(text: &str, info: &mut BuildInfo) {
    for line in text.lines() {
        let mut f = line.split('\t');
        let module = |f: &mut std::str::Split<'_, char>| Module {
            path: f.next().unwrap_or_default().to_string(),
            version: f.next().unwrap_or_default().to_string(),
            replaced_by: None,
        };
        match f.next() {
            Some("path") => info.main_path = f.next().unwrap_or_default().to_string(),
            Some("mod") => info.main_module = Some(module(&mut f)),
            Some("dep") => info.deps.push(module(&mut f)),
            Some("=>") => {
                let replacement = Box::new(module(&mut f));
                if let Some(last) = info.deps.last_mut() {
                    last.replaced_by = Some(replacement);
                }
            }
            Some("build") => {
                if let Some((k, v)) = f.next().unwrap_or_default().split_once('=') {
                    info.settings.push((k.to_string(), v.to_string()));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline_section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(8);
        s.push(FLAG_INLINE_STRINGS);
        s.resize(32, 0);
        for part in [version, modinfo] {
            let mut len = part.len();
            while len >= 0x80 {
                s.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            s.push(len as u8);
            s.extend_from_slice(part.as_bytes());
        }
        s
    }

    #[test]
    fn parses_inline_layout_with_modules_and_replacements() {
        let sentinel = "\u{1}\u{2}0123456789abc\u{7f}";
        let body = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\n\
                    dep\tgolang.org/x/net\tv0.20.0\th1:abc=\n\
                    dep\tgoogle.golang.org/grpc\tv1.60.0\t\n=>\t../grpc\t\t\n\
                    build\t-ldflags=-s -w\n";
        let modinfo = format!("{sentinel}{body}{sentinel}");
        let info = parse(&inline_section("go1.22.12", &modinfo), |_, _| None).unwrap();
        assert_eq!(info.go_version, "go1.22.12");
        assert_eq!(info.go_semver(), Some((1, 22, 12)));
        assert_eq!(info.main_path, "example.com/app");
        assert_eq!(info.main_module.as_ref().unwrap().version, "(devel)");
        assert_eq!(info.module_version("golang.org/x/net"), Some("v0.20.0"));
        // A local replacement has no version: the original requirement stands.
        assert_eq!(info.module_version("google.golang.org/grpc"), Some("v1.60.0"));
        assert_eq!(info.settings, vec![("-ldflags".into(), "-s -w".into())]);
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        assert!(parse(b"not a buildinfo section at all......", |_, _| None).is_err());
        let mut s = inline_section("go1.22", "");
        s.truncate(34);
        assert!(parse(&s, |_, _| None).is_err());
    }

    #[test]
    fn go_versions() {
        assert_eq!(parse_go_version("go1.26.8 X:nocoverage"), Some((1, 26, 8)));
        assert_eq!(parse_go_version("go1.23rc1"), Some((1, 23, 0)));
        assert_eq!(parse_go_version("go1.22"), Some((1, 22, 0)));
        assert_eq!(parse_go_version("devel"), None);
    }
}
