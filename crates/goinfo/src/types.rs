//! Struct layouts from Go's runtime type descriptors (what reflect reads), which survive
//! `-s -w`. Needs no version knowledge of the structs themselves, only of the descriptor format
//! (internal/abi.Type, stable since Go 1.17 on 64-bit): a named struct type is found by scanning
//! the type data for a struct descriptor whose name and package path match, then its field
//! table gives each field's name and offset.

use std::collections::HashMap;

use crate::StructLayouts;

const TYPE_SIZE: usize = 48; // abi.Type on 64-bit
const STRUCT_TYPE_SIZE: usize = 80; // abi.StructType: Type, PkgPath Name, Fields []StructField
const FIELD_SIZE: usize = 24; // abi.StructField: Name, Typ, Offset
const KIND_MASK: u8 = 0x1f;
const KIND_POINTER: u8 = 22;
const KIND_STRUCT: u8 = 25;
const POINTER_TYPE_SIZE: usize = 56; // abi.PtrType: Type, Elem
const TFLAG_UNCOMMON: u8 = 1;
const TFLAG_EXTRA_STAR: u8 = 2;
const TFLAG_NAMED: u8 = 4;
const NAMED_UNCOMMON: u8 = TFLAG_NAMED | TFLAG_UNCOMMON;
/// A struct with more fields than this is not one of ours (or not a struct at all).
const MAX_FIELDS: u64 = 4096;

/// Reads `len` bytes at a virtual address of the executable.
pub(crate) trait Memory {
    fn read(&self, vaddr: u64, len: usize) -> Option<&[u8]>;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads an abi.Name: flags byte, varint length, bytes (the Go 1.17+ encoding).
fn read_name(mem: &dyn Memory, vaddr: u64) -> Option<String> {
    let head = mem.read(vaddr, 11).or_else(|| mem.read(vaddr, 2))?;
    let (len, n) = crate::buildinfo::read_uvarint(head.get(1..)?)?;
    let bytes = mem.read(vaddr.checked_add(1 + n as u64)?, usize::try_from(len).ok()?)?;
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

/// Scans `region` (the type data at `base`, where name offsets point) for the named structs in
/// `wanted` ("net/http.Request"). `offset_embed` is true before Go 1.19, when a field's offset
/// was stored shifted left by one with the embedded flag in bit 0.
pub(crate) fn struct_layouts(
    mem: &dyn Memory,
    base: u64,
    region: &[u8],
    offset_embed: bool,
    wanted: &[&str],
) -> StructLayouts {
    // "net/http.Request" -> ("net/http", "Request")
    let targets: Vec<(&str, &str, &str)> = wanted
        .iter()
        .filter_map(|w| split_type_name(w).map(|(pkg, name)| (*w, pkg, name)))
        .collect();
    let mut out = StructLayouts::new();
    let mut at = 0usize;
    while at + STRUCT_TYPE_SIZE + 16 <= region.len() && out.len() < targets.len() {
        let t = &region[at..];
        let (tflag, kind) = (t[20], t[23] & KIND_MASK);
        if kind == KIND_STRUCT && tflag & NAMED_UNCOMMON == NAMED_UNCOMMON {
            if let Some((full, fields)) = named_struct(mem, base, t, &targets, offset_embed) {
                out.entry(full.to_string()).or_insert(fields);
            }
        }
        at += 8; // descriptors are pointer-aligned
    }
    out
}

/// Scans `region` as `struct_layouts` does for the types in `wanted`, pointer types
/// ("*crypto/tls.Conn") or named structs ("google.golang.org/grpc/credentials.tlsConn", held in
/// an interface by value), and returns each one's type hash: what an itab holding that dynamic
/// type carries, so a program can tell an interface's dynamic type from its itab. Found by name
/// and package path alone, which need no relocation, so PIE executables qualify.
pub(crate) fn type_hashes(
    mem: &dyn Memory,
    base: u64,
    region: &[u8],
    wanted: &[&str],
) -> HashMap<String, u32> {
    // "*crypto/tls.Conn" -> ("crypto/tls", "Conn"). The type's own string says "*tls.Conn",
    // with the package's name, which need not be its path's last element ("echo/v4"): the
    // package path in the descriptor decides.
    let (mut pointers, mut structs) = (Vec::new(), Vec::new());
    for w in wanted {
        match w.strip_prefix('*') {
            Some(path) => pointers.extend(split_type_name(path).map(|(p, n)| (*w, p, n))),
            None => structs.extend(split_type_name(w).map(|(p, n)| (*w, p, n))),
        }
    }
    let mut out = HashMap::new();
    let mut at = 0usize;
    let want = pointers.len() + structs.len();
    while at + POINTER_TYPE_SIZE + 16 <= region.len() && out.len() < want {
        let t = &region[at..];
        let (tflag, kind) = (t[20], t[23] & KIND_MASK);
        let room_for_struct = t.len() >= STRUCT_TYPE_SIZE + 16 && !structs.is_empty();
        let found = match kind {
            KIND_POINTER if tflag & (TFLAG_UNCOMMON | TFLAG_EXTRA_STAR) == TFLAG_UNCOMMON => {
                pointer_type(mem, base, t, &pointers)
            }
            KIND_STRUCT if room_for_struct && tflag & NAMED_UNCOMMON == NAMED_UNCOMMON => {
                named_struct_type(mem, base, t, &structs)
            }
            _ => None,
        };
        if let Some(full) = found {
            out.entry(full.to_string()).or_insert(u32_at(t, 16));
        }
        at += 8;
    }
    out
}

fn pointer_type<'w>(
    mem: &dyn Memory,
    base: u64,
    t: &[u8],
    targets: &[(&'w str, &str, &str)],
) -> Option<&'w str> {
    let name_off = u32_at(t, 40) as i32;
    let name = read_name(mem, base.checked_add_signed(i64::from(name_off))?)?;
    let (_, type_name) = name.strip_prefix('*')?.split_once('.')?;
    let candidates: Vec<_> = targets.iter().filter(|(_, _, n)| *n == type_name).collect();
    if candidates.is_empty() {
        return None;
    }
    let pkg_off = u32_at(t, POINTER_TYPE_SIZE) as i32;
    let pkg_path = read_name(mem, base.checked_add_signed(i64::from(pkg_off))?)?;
    candidates.iter().find(|(_, pkg, _)| *pkg == pkg_path).map(|(full, _, _)| *full)
}

/// "crypto/tls.Conn" -> ("crypto/tls", "Conn").
fn split_type_name(w: &str) -> Option<(&str, &str)> {
    let slash = w.rfind('/').map_or(0, |i| i + 1);
    let dot = slash + w[slash..].find('.')?;
    Some((&w[..dot], &w[dot + 1..]))
}

/// Which of `targets` the named struct descriptor `t` is, if any.
fn named_struct_type<'w>(
    mem: &dyn Memory,
    base: u64,
    t: &[u8],
    targets: &[(&'w str, &str, &str)],
) -> Option<&'w str> {
    let name_off = u32_at(t, 40) as i32;
    let mut name = read_name(mem, base.checked_add_signed(i64::from(name_off))?)?;
    if t[20] & TFLAG_EXTRA_STAR != 0 {
        name = name.strip_prefix('*')?.to_string();
    }
    let (_, type_name) = name.split_once('.')?;
    let candidates: Vec<_> = targets.iter().filter(|(_, _, n)| *n == type_name).collect();
    if candidates.is_empty() {
        return None;
    }
    // The uncommon type after the struct type holds the package path that disambiguates
    // "http.Request" between net/http and any other package named http.
    let pkg_off = u32_at(t, STRUCT_TYPE_SIZE) as i32;
    let pkg_path = read_name(mem, base.checked_add_signed(i64::from(pkg_off))?)?;
    candidates.iter().find(|(_, pkg, _)| *pkg == pkg_path).map(|(full, _, _)| *full)
}

fn named_struct<'w>(
    mem: &dyn Memory,
    base: u64,
    t: &[u8],
    targets: &[(&'w str, &str, &str)],
    offset_embed: bool,
) -> Option<(&'w str, HashMap<String, u64>)> {
    let full = named_struct_type(mem, base, t, targets)?;
    let (fields_ptr, nfields) = (u64_at(t, TYPE_SIZE + 8), u64_at(t, TYPE_SIZE + 16));
    if nfields > MAX_FIELDS {
        return None;
    }
    let table = mem.read(fields_ptr, nfields as usize * FIELD_SIZE)?;
    let mut fields = HashMap::new();
    for f in table.chunks_exact(FIELD_SIZE) {
        let field_name = read_name(mem, u64_at(f, 0))?;
        let raw = u64_at(f, 16);
        fields.insert(field_name, if offset_embed { raw >> 1 } else { raw });
    }
    Some((full, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory that holds the same bytes at every address.
    struct Everywhere(Vec<u8>);

    impl Memory for Everywhere {
        fn read(&self, _vaddr: u64, len: usize) -> Option<&[u8]> {
            self.0.get(..len)
        }
    }

    /// Found by the types fuzz target: a name offset that puts a name at the top of the
    /// address space made the address of its bytes overflow.
    #[test]
    fn a_name_at_the_end_of_the_address_space_is_none() {
        let mem = Everywhere(vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_name(&mem, 0x1000).as_deref(), Some("\0"));
        assert_eq!(read_name(&mem, u64::MAX - 1), None);
    }
}
