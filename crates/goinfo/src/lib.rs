//! Everything gotel learns from a Go executable file, with no privileges and no process:
//! build info (Go and module versions), function symbols, struct field offsets from DWARF and
//! the RET instructions of a function.

mod buildinfo;
mod dwarf;
#[doc(hidden)]
pub mod fuzzing;
mod ok_exit;
pub mod pclntab;
mod rets;
mod stated_version;
mod types;
mod vendor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

pub use buildinfo::{parse_go_version, BuildInfo, Module};
pub use dwarf::StructLayouts;
pub use ok_exit::{amd64_ok_exit, OkExit};
pub use pclntab::PclnFunction;
pub use rets::{
    amd64_calls_to, amd64_ret_addresses, amd64_returns_from_calls_to, amd64_stack_check_branch,
};
pub use stated_version::{ModuleVersion, VersionSource};

/// Why a file could not be analysed; each names the file and what is missing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ELF executable ({reason})")]
    NotElf { path: PathBuf, reason: String },
    #[error("{path} is not a Go program: it has no .go.buildinfo section")]
    NotGo { path: PathBuf },
    #[error("{path}: malformed .go.buildinfo: {reason}")]
    BadBuildInfo { path: PathBuf, reason: &'static str },
    #[error("{path}: unreadable .gopclntab: {reason}")]
    BadPclntab { path: PathBuf, reason: &'static str },
    #[error("{path}: unsupported architecture {arch} (gotel supports x86_64)")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: function {name} not found in {table}")]
    MissingFunction { path: PathBuf, name: String, table: SymbolSource },
    #[error("{path}: function {name} lies outside the file's loadable segments")]
    FunctionNotInFile { path: PathBuf, name: String },
    #[error("{path}: no DWARF debug info (built with -ldflags=-w, or stripped)")]
    NoDwarf { path: PathBuf },
    #[error("{path}: no Go type data section (.go.type or .rodata)")]
    NoTypes { path: PathBuf },
    #[error("{path}: bad DWARF: {reason}")]
    Dwarf { path: PathBuf, reason: String },
    // Internal, re-wrapped with the path before it leaves the crate.
    #[error("{0}")]
    Malformed(&'static str),
}

impl Error {
    fn with_path(self, path: &Path) -> Self {
        let path = path.to_path_buf();
        match self {
            Error::Malformed(reason) if reason.contains("pclntab") => {
                Error::BadPclntab { path, reason }
            }
            Error::Malformed(reason) => Error::BadBuildInfo { path, reason },
            Error::NoDwarf { .. } => Error::NoDwarf { path },
            Error::Dwarf { reason, .. } => Error::Dwarf { path, reason },
            other => other,
        }
    }
}

/// A function's place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// Virtual address of the entry.
    pub address: u64,
    pub size: u64,
    /// Offset of the entry in the file: what a uprobe attaches to.
    pub file_offset: u64,
}

/// Where function symbols came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    /// The ELF symbol table.
    Symtab,
    /// Go's own function table, which stripping keeps.
    Pclntab,
}

impl std::fmt::Display for SymbolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SymbolSource::Symtab => ".symtab",
            SymbolSource::Pclntab => ".gopclntab",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    file_offset: u64,
    file_size: u64,
}

/// A parsed Go executable. Holds the file's bytes; cheap queries re-read its headers.
pub struct GoBinary {
    path: PathBuf,
    data: Vec<u8>,
    build_info: BuildInfo,
    functions: HashMap<String, (u64, u64)>,
    symbol_source: SymbolSource,
    /// The vendor directories (GOPATH mode) package names carry ("github.com/acme/app/vendor/").
    vendor_prefixes: Vec<String>,
    segments: Vec<Segment>,
    /// What the data states of libraries' versions, read once, when first asked.
    stated: OnceLock<Vec<(&'static str, Result<ModuleVersion, String>)>>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("go_version", &self.build_info.go_version)
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl GoBinary {
    /// Reads and parses `path`. Fails with a clear error for a non-ELF, non-Go or non-amd64 file.
    /// Whether `path` is a Go executable, reading only its ELF headers (a host has many large
    /// files that are not Go; this does not load them).
    pub fn is_go(path: impl AsRef<Path>) -> Result<bool, Error> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.into(), source };
        let cache = object::ReadCache::new(std::fs::File::open(path).map_err(io)?);
        let Ok(file) = object::File::parse(&cache) else { return Ok(false) };
        Ok(file.format() == object::BinaryFormat::Elf
            && file.section_by_name(".go.buildinfo").is_some())
    }

    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::parse(path, data)
    }

    /// Parses bytes already read; `path` is only used in messages.
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Self, Error> {
        let file = object::File::parse(&*data)
            .map_err(|e| Error::NotElf { path: path.into(), reason: e.to_string() })?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(Error::NotElf {
                path: path.into(),
                reason: format!("{:?}", file.format()),
            });
        }
        if file.architecture() != object::Architecture::X86_64 {
            let arch = format!("{:?}", file.architecture());
            return Err(Error::UnsupportedArch { path: path.into(), arch });
        }
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment { vaddr: s.address(), file_offset, file_size }
            })
            .collect();
        let section = file
            .section_by_name(".go.buildinfo")
            .ok_or_else(|| Error::NotGo { path: path.into() })?;
        let section_data = section.data().map_err(|_| Error::NotGo { path: path.into() })?;
        let read_at = |addr, len| bytes_at(&data, &segments, addr, len).map(<[u8]>::to_vec);
        let build_info = buildinfo::parse(section_data, read_at).map_err(|e| e.with_path(path))?;

        let mut functions = HashMap::new();
        for sym in file.symbols().filter(|s| s.kind() == SymbolKind::Text) {
            if let Ok(name) = sym.name() {
                functions.insert(name.to_string(), (sym.address(), sym.size()));
            }
        }
        let mut symbol_source = SymbolSource::Symtab;
        if functions.is_empty() {
            symbol_source = SymbolSource::Pclntab;
            let pcln = pclntab_of(&file).map_err(|e| e.with_path(path))?;
            functions = pcln
                .into_iter()
                .map(|f| (f.name, (f.entry, f.end.saturating_sub(f.entry))))
                .collect();
        }
        let vendor_prefixes = vendor::unprefix_functions(&mut functions);
        let stated = OnceLock::new();
        Ok(GoBinary {
            path: path.into(),
            data,
            build_info,
            functions,
            symbol_source,
            vendor_prefixes,
            segments,
            stated,
        })
    }

    /// Every function in `.gopclntab`, whether or not `.symtab` exists.
    pub fn pclntab_functions(&self) -> Result<Vec<PclnFunction>, Error> {
        let file = object::File::parse(&*self.data)
            .map_err(|e| Error::NotElf { path: self.path.clone(), reason: e.to_string() })?;
        pclntab_of(&file).map_err(|e| e.with_path(&self.path))
    }

    pub fn symbol_source(&self) -> SymbolSource {
        self.symbol_source
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// The version of module `path` linked in: from buildinfo, or, where buildinfo lists no
    /// modules (GOPATH and vendor builds), from a version string the library compiles in
    /// (`stated_version`) when the binary has the library's functions. Err says why none is
    /// known.
    pub fn module_version(&self, path: &str) -> Result<ModuleVersion, String> {
        if let Some(v) = self.build_info.module_version(path) {
            let source = VersionSource::BuildInfo;
            return Ok(ModuleVersion { version: v.to_string(), source });
        }
        if !self.links_unlisted_module(path) {
            return Err(format!("{path} is not in the binary"));
        }
        let why = |why: &str| {
            format!("{path} is in the binary, but buildinfo lists no modules and {why}")
        };
        let stated = self.stated.get_or_init(|| {
            stated_version::stated_modules()
                .filter_map(|m| Some((m, stated_version::stated_version(&self.data, m)?)))
                .collect()
        });
        match stated.iter().find(|(m, _)| *m == path) {
            Some((_, Ok(v))) => Ok(v.clone()),
            Some((_, Err(e))) => Err(why(e)),
            None => Err(why("gotel knows no version string it compiles in")),
        }
    }

    /// Whether buildinfo lists no modules while the binary has functions of `path`'s packages
    /// (a GOPATH or vendor build): its version must come from the binary itself.
    pub fn links_unlisted_module(&self, path: &str) -> bool {
        let package = format!("{path}.");
        self.build_info.deps.is_empty() && self.functions.keys().any(|f| f.starts_with(&package))
    }

    /// The vendor directories (GOPATH mode) its package names start with, e.g.
    /// "github.com/acme/app/vendor/"; functions and types are looked up without them.
    pub fn vendor_prefixes(&self) -> &[String] {
        &self.vendor_prefixes
    }

    /// Number of function symbols.
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// Every function as (name, address, size).
    pub fn functions(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.functions.iter().map(|(name, &(addr, size))| (name.as_str(), addr, size))
    }

    /// Looks up a function by its Go symbol name, e.g. "net/http.serverHandler.ServeHTTP".
    pub fn function(&self, name: &str) -> Result<Function, Error> {
        let &(address, size) = self.functions.get(name).ok_or_else(|| Error::MissingFunction {
            path: self.path.clone(),
            name: name.into(),
            table: self.symbol_source,
        })?;
        let file_offset = vaddr_to_offset(&self.segments, address).ok_or_else(|| {
            Error::FunctionNotInFile { path: self.path.clone(), name: name.into() }
        })?;
        Ok(Function { name: name.into(), address, size, file_offset })
    }

    /// The machine code of `function` as the file holds it (cut at the file's end).
    fn code_of(&self, function: &Function) -> &[u8] {
        let start = function.file_offset as usize;
        let end = start.saturating_add(function.size as usize).min(self.data.len());
        self.data.get(start..end).unwrap_or(&[])
    }

    /// File offsets of every RET instruction of `function`.
    pub fn ret_offsets(&self, function: &Function) -> Vec<u64> {
        amd64_ret_addresses(self.code_of(function), function.file_offset)
    }

    /// File offsets of the direct calls from `caller` to `callee`.
    pub fn calls_to(&self, caller: &Function, callee: &Function) -> Vec<u64> {
        let code = self.code_of(caller);
        // Decode at virtual addresses so branch targets compare with the callee's address.
        amd64_calls_to(code, caller.address, callee.address)
            .into_iter()
            .map(|addr| addr - caller.address + caller.file_offset)
            .collect()
    }

    /// For each direct call from `caller` to `callee`: the file offsets of the call and of the
    /// first branch after it that runs once each time it returns (None where there is none
    /// the kernel emulates, or other paths reach it too).
    pub fn returns_from_calls(
        &self,
        caller: &Function,
        callee: &Function,
    ) -> Vec<(u64, Option<u64>)> {
        let code = self.code_of(caller);
        let to_file = |addr: u64| addr - caller.address + caller.file_offset;
        amd64_returns_from_calls_to(code, caller.address, callee.address)
            .into_iter()
            .map(|(call, after)| (to_file(call), after.map(to_file)))
            .collect()
    }

    /// Where `function`'s successful return after its call to `callee` is seen on an emulated
    /// jump, and which RETs only that path reaches (`OkExit`, as file offsets); None where
    /// the machine code does not say so unambiguously.
    pub fn ok_exit(&self, function: &Function, callee: &Function) -> Option<OkExit> {
        let exit = amd64_ok_exit(self.code_of(function), function.address, callee.address)?;
        let to_file = |addr: u64| addr - function.address + function.file_offset;
        Some(OkExit {
            branch: to_file(exit.branch),
            rets_behind: exit.rets_behind.into_iter().map(to_file).collect(),
            other_rets: exit.other_rets.into_iter().map(to_file).collect(),
        })
    }

    /// File offset of the prologue's stack-check jump of `function`, where a uprobe sees the
    /// same registers as at the entry for a fraction of the cost; None without one.
    pub fn stack_check_offset(&self, function: &Function) -> Option<u64> {
        let start = function.file_offset as usize;
        let end = start.saturating_add(32).min(self.data.len());
        amd64_stack_check_branch(self.data.get(start..end)?, function.file_offset)
    }

    /// Field offsets of the named structs from the runtime type descriptors, which stripped
    /// binaries keep. Structs with no descriptor (never converted to an interface, say) are
    /// absent. Non-PIE executables only: in a PIE the descriptors' pointers are relocated at
    /// load time.
    pub fn struct_layouts_from_types(&self, wanted: &[&str]) -> Result<StructLayouts, Error> {
        let (base, region) = self.type_data()?;
        let offset_embed = matches!(self.build_info.go_semver(), Some((1, minor, _)) if minor < 19);
        vendor::lookup_types(&self.vendor_prefixes, wanted, |wanted| {
            Ok(types::struct_layouts(self, base, region, offset_embed, wanted))
        })
    }

    /// The type hashes of the pointer types ("*crypto/tls.Conn") and named structs in `wanted`
    /// from the runtime type descriptors: an itab for that dynamic type carries the same hash.
    /// Types the binary has no descriptor for are absent.
    pub fn type_hashes(&self, wanted: &[&str]) -> Result<HashMap<String, u32>, Error> {
        let (base, region) = self.type_data()?;
        vendor::lookup_types(&self.vendor_prefixes, wanted, |wanted| {
            Ok(types::type_hashes(self, base, region, wanted))
        })
    }

    /// The runtime type descriptors: where they start in memory, and their bytes. Go 1.27
    /// moved them into .go.type; before, they start .rodata.
    fn type_data(&self) -> Result<(u64, &[u8]), Error> {
        let file = object::File::parse(&*self.data)
            .map_err(|e| Error::NotElf { path: self.path.clone(), reason: e.to_string() })?;
        let section = file
            .section_by_name(".go.type")
            .or_else(|| file.section_by_name(".rodata"))
            .ok_or_else(|| Error::NoTypes { path: self.path.clone() })?;
        let region = section.data().map_err(|_| Error::NoTypes { path: self.path.clone() })?;
        Ok((section.address(), region))
    }

    /// Field offsets of the named structs from DWARF. Structs the binary lacks are absent.
    pub fn struct_layouts(&self, wanted: &[&str]) -> Result<StructLayouts, Error> {
        let file = object::File::parse(&*self.data)
            .map_err(|e| Error::NotElf { path: self.path.clone(), reason: e.to_string() })?;
        vendor::lookup_types(&self.vendor_prefixes, wanted, |wanted| {
            dwarf::struct_layouts(&file, wanted)
        })
        .map_err(|e| e.with_path(&self.path))
    }
}

impl types::Memory for GoBinary {
    fn read(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        bytes_at(&self.data, &self.segments, vaddr, len)
    }
}

/// The `len` bytes of the file `data` at virtual address `addr`, if a segment holds them.
fn bytes_at<'d>(data: &'d [u8], segments: &[Segment], addr: u64, len: usize) -> Option<&'d [u8]> {
    let off = usize::try_from(vaddr_to_offset(segments, addr)?).ok()?;
    data.get(off..off.checked_add(len)?)
}

fn pclntab_of(file: &object::File<'_>) -> Result<Vec<PclnFunction>, Error> {
    let section = file.section_by_name(".gopclntab").ok_or(Error::Malformed("no .gopclntab"))?;
    let data = section.data().map_err(|_| Error::Malformed("unreadable .gopclntab"))?;
    let text = file.section_by_name(".text").map_or(0, |s| s.address());
    pclntab::parse(data, text)
}

fn vaddr_to_offset(segments: &[Segment], addr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| addr >= s.vaddr && addr - s.vaddr < s.file_size)
        .map(|s| addr - s.vaddr + s.file_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length read from the file (a pre-1.18 buildinfo's string header) is not trusted: one
    /// near usize::MAX overflowed the end of the range.
    #[test]
    fn a_read_past_the_address_space_is_none() {
        let data = [1u8; 32];
        let segments = [Segment { vaddr: 0x1000, file_offset: 16, file_size: 16 }];
        assert_eq!(bytes_at(&data, &segments, 0x1004, 4), Some(&data[20..24]));
        assert_eq!(bytes_at(&data, &segments, 0x1004, usize::MAX), None);
        assert_eq!(bytes_at(&data, &segments, 0x2000, 1), None);
    }
}
