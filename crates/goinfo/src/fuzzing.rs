//! Entry points for the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz), one per parser:
//! each takes arbitrary bytes, gives them to the parser as a file would, and must return,
//! whatever the bytes, without a panic, an overflow, a huge allocation or a hang. Not an API:
//! hidden from the docs, and free to change with the targets.
//!
//! Inputs made of several pieces (sections, a memory image) are split with [`parts`]; the
//! seeds in `fuzz/corpus/` are written in that format by `fuzz/make-seeds.py`.

use std::path::Path;

use gimli::{EndianSlice, RunTimeEndian};

use crate::types::Memory;

/// Type and struct names the targets look up: the seed program's own type, and names gotel's
/// instrumentations ask for.
const WANTED: &[&str] = &["main.T", "net/http.Request", "runtime.g", "*main.T", "*crypto/tls.Conn"];

/// Splits `data` into `N` pieces: each but the last is preceded by its length (u32, little
/// endian; cut short where the data ends), the last is the rest.
pub fn parts<const N: usize>(mut data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    for piece in out.iter_mut().take(N - 1) {
        let Some((len, rest)) = data.split_first_chunk::<4>() else { break };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        (*piece, data) = rest.split_at(len);
    }
    out[N - 1] = data;
    out
}

/// A memory image: `bytes` at virtual address `base`.
struct Image<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl Memory for Image<'_> {
    fn read(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let at = usize::try_from(vaddr.checked_sub(self.base)?).ok()?;
        self.bytes.get(at..at.checked_add(len)?)
    }
}

/// Where the memory image of the buildinfo target starts: the pre-1.18 layout points there.
pub const BUILDINFO_MEMORY: u64 = 0x40_0000;

/// `.go.buildinfo`: pieces (section, memory image at [`BUILDINFO_MEMORY`]).
pub fn buildinfo(data: &[u8]) {
    let [section, memory] = parts::<2>(data);
    let image = Image { base: BUILDINFO_MEMORY, bytes: memory };
    if let Ok(info) =
        crate::buildinfo::parse(section, |at, len| image.read(at, len).map(<[u8]>::to_vec))
    {
        let _ = info.go_semver();
        let _ = info.module_version("google.golang.org/grpc");
    }
}

/// `.gopclntab`: 8 bytes of `.text`'s address (little endian), then the section.
pub fn pclntab(data: &[u8]) {
    let (text, section) = data.split_at(data.len().min(8));
    let mut start = [0u8; 8];
    start[..text.len()].copy_from_slice(text);
    let _ = crate::pclntab::parse(section, u64::from_le_bytes(start));
}

/// DWARF, little endian: pieces (.debug_abbrev, .debug_str, .debug_line_str, .debug_info),
/// uncompressed.
pub fn dwarf(data: &[u8]) {
    let [abbrev, str, line_str, info] = parts::<4>(data);
    let section = |id| {
        let bytes = match id {
            gimli::SectionId::DebugAbbrev => abbrev,
            gimli::SectionId::DebugStr => str,
            gimli::SectionId::DebugLineStr => line_str,
            gimli::SectionId::DebugInfo => info,
            _ => &[],
        };
        Ok::<_, gimli::Error>(EndianSlice::new(bytes, RunTimeEndian::Little))
    };
    if let Ok(dwarf) = gimli::Dwarf::load(section) {
        let _ = crate::dwarf::layouts(&dwarf, WANTED);
    }
}

/// Runtime type descriptors: a flags byte (bit 0: field offsets in the pre-1.19 encoding), the
/// type data's address (8 bytes, little endian), then the type data, which is also all the
/// memory there is.
pub fn types(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((base, region)) = rest.split_first_chunk::<8>() else { return };
    let image = Image { base: u64::from_le_bytes(*base), bytes: region };
    let _ = crate::types::struct_layouts(&image, image.base, region, flags & 1 != 0, WANTED);
    let _ = crate::types::type_hashes(&image, image.base, region, WANTED);
}

/// A whole executable file, and every question gotel asks of one.
pub fn binary(data: &[u8]) {
    let Ok(bin) = crate::GoBinary::parse(Path::new("fuzz"), data.to_vec()) else { return };
    let _ = bin.pclntab_functions();
    let _ = bin.struct_layouts(WANTED);
    let _ = bin.struct_layouts_from_types(WANTED);
    let _ = bin.type_hashes(WANTED);
    let _ = bin.module_version("google.golang.org/grpc");
    // The same functions on every run (the table is a HashMap): the first few by name.
    let mut names: Vec<&str> = bin.functions().map(|(name, _, _)| name).collect();
    names.sort_unstable();
    let functions: Vec<_> = names.iter().take(8).filter_map(|n| bin.function(n).ok()).collect();
    for f in &functions {
        let _ = bin.ret_offsets(f);
        let _ = bin.stack_check_offset(f);
        for callee in &functions {
            let _ = bin.calls_to(f, callee);
            let _ = bin.returns_from_calls(f, callee);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_by_length_and_stop_where_the_data_ends() {
        let data = [2, 0, 0, 0, b'a', b'b', 9, 0, 0, 0, b'c', b'd'];
        assert_eq!(parts::<3>(&data), [&b"ab"[..], b"cd", b""]);
        assert_eq!(parts::<2>(&data[..3]), [&b""[..], &data[..3]]);
        assert_eq!(parts::<1>(&data), [&data[..]]);
    }

    /// Every input in the committed corpora (fuzz/corpus/<target>) still parses without a
    /// panic: the fuzzers' findings stay fixed under a plain `cargo test`, without cargo-fuzz.
    #[test]
    fn the_fuzz_corpora_run_clean() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let targets = [
            ("binary", binary as fn(&[u8])),
            ("buildinfo", buildinfo),
            ("pclntab", pclntab),
            ("dwarf", dwarf),
            ("types", types),
        ];
        for (target, run) in targets {
            let dir = corpus.join(target);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            let mut inputs = 0;
            for entry in entries {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "{dir:?} is empty");
        }
    }
}
