//! Struct field offsets from the DWARF that `go build` emits by default (compressed, DWARF 4
//! before Go 1.25 and DWARF 5 after).

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

use crate::Error;

/// Field name -> byte offset, per struct type name (Go's DWARF names: "net/http.Request").
pub type StructLayouts = HashMap<String, HashMap<String, u64>>;

/// Collects the layout of every struct in `wanted`; structs not present are simply absent.
pub(crate) fn struct_layouts(
    file: &object::File<'_>,
    wanted: &[&str],
) -> Result<StructLayouts, Error> {
    let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
    // Only what struct layouts need is decompressed: line tables, location and range lists are
    // most of Go's DWARF, and the agent's peak memory while it analyses an executable.
    let needed = |id| {
        use gimli::SectionId::*;
        matches!(id, DebugInfo | DebugAbbrev | DebugStr | DebugLineStr)
    };
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(match file.section_by_name(id.name()).filter(|_| needed(id)) {
            Some(s) => uncompressed(&s),
            None => Cow::Borrowed(&[]),
        })
    };
    let sections = gimli::DwarfSections::load(load).map_err(dwarf_err)?;
    if file.section_by_name(".debug_info").is_none() {
        return Err(Error::NoDwarf { path: Default::default() });
    }
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    layouts(&dwarf, wanted)
}

/// How many times its size a compressed section may claim to be once inflated. DWARF inflates
/// about 4 times; the claim is allocated before a byte is inflated, so a file's few bytes must
/// not have the agent reserve gigabytes.
const MAX_INFLATION: u64 = 100;

/// A section's bytes, inflated if compressed; empty if they cannot be, or if the size claimed
/// is not plausible.
fn uncompressed<'d>(section: &object::Section<'d, '_>) -> Cow<'d, [u8]> {
    match section.compressed_data() {
        Ok(c) if plausible(&c) => section.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
        _ => Cow::Borrowed(&[]),
    }
}

fn plausible(c: &object::CompressedData<'_>) -> bool {
    c.uncompressed_size <= (c.data.len() as u64).saturating_mul(MAX_INFLATION)
}

/// The layouts of the structs in `wanted` that `dwarf`'s units describe.
pub(crate) fn layouts(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    wanted: &[&str],
) -> Result<StructLayouts, Error> {
    let mut out = StructLayouts::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(dwarf_err)? {
        // The entries alone, not dwarf.unit(): that would parse the line table too.
        let abbreviations = dwarf.abbreviations(&header).map_err(dwarf_err)?;
        let mut entries = header.entries(&abbreviations);
        // Depth of the struct whose members we are collecting, if any.
        let mut collecting: Option<(isize, String)> = None;
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs().map_err(dwarf_err)? {
            depth += delta;
            if let Some((struct_depth, _)) = &collecting {
                if depth <= *struct_depth {
                    collecting = None;
                }
            }
            match entry.tag() {
                gimli::DW_TAG_structure_type if collecting.is_none() => {
                    let Some(name) = attr_string(dwarf, entry, gimli::DW_AT_name) else {
                        continue;
                    };
                    if wanted.contains(&name.as_str()) && !out.contains_key(&name) {
                        out.insert(name.clone(), HashMap::new());
                        collecting = Some((depth, name));
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((_, struct_name)) = &collecting else {
                        continue;
                    };
                    let Some(field) = attr_string(dwarf, entry, gimli::DW_AT_name) else {
                        continue;
                    };
                    let offset = match entry.attr_value(gimli::DW_AT_data_member_location) {
                        Ok(Some(AttributeValue::Udata(v))) => v,
                        Ok(Some(AttributeValue::Data1(v))) => u64::from(v),
                        Ok(Some(AttributeValue::Data2(v))) => u64::from(v),
                        Ok(Some(AttributeValue::Data4(v))) => u64::from(v),
                        Ok(Some(AttributeValue::Data8(v))) => v,
                        Ok(Some(AttributeValue::Sdata(v))) => u64::try_from(v).unwrap_or(0),
                        _ => continue,
                    };
                    if let Some(fields) = out.get_mut(struct_name) {
                        fields.insert(field, offset);
                    }
                }
                _ => {}
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    Ok(out)
}

pub(crate) type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// A string attribute in the forms Go's linker writes: inline, or in .debug_str or
/// .debug_line_str (offsets into .debug_str_offsets would need the unit's base, which Go does
/// not use).
fn attr_string(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'_>>,
    name: gimli::DwAt,
) -> Option<String> {
    let s = match entry.attr_value(name).ok()?? {
        AttributeValue::String(s) => s,
        AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        AttributeValue::DebugLineStrRef(offset) => dwarf.debug_line_str.get_str(offset).ok()?,
        _ => return None,
    };
    Some(String::from_utf8_lossy(s.slice()).into_owned())
}

fn dwarf_err(e: gimli::Error) -> Error {
    Error::Dwarf { path: Default::default(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the binary fuzz target: a compressed section's header claimed 2^56 bytes
    /// uncompressed, and that much was reserved before inflating (a real zlib stream inflates
    /// up to 1032 times: a small file could have had the agent take a gigabyte). A claim past
    /// MAX_INFLATION times the section's size is not believed.
    #[test]
    fn a_compressed_section_claiming_too_much_is_not_inflated() {
        let zlib = |data: &'static [u8], uncompressed_size| object::CompressedData {
            format: object::CompressionFormat::Zlib,
            data,
            uncompressed_size,
        };
        assert!(plausible(&zlib(&[0; 1000], 4000)), "what DWARF compresses to");
        assert!(!plausible(&zlib(&[0; 1000], 1 << 56)));
        assert!(!plausible(&zlib(&[0; 1000], 1000 * MAX_INFLATION + 1)));
        let plain = object::CompressedData::none(&[0; 16]);
        assert!(plausible(&plain));
    }

    /// The sections gotel reads of a real executable still inflate.
    #[test]
    fn real_compressed_dwarf_inflates() {
        let seed = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/binary/seed-go1.26.8-symtab-dwarf"
        );
        let elf = std::fs::read(seed).unwrap();
        let file = object::File::parse(&*elf).unwrap();
        assert!(struct_layouts(&file, &["main.T"]).unwrap().contains_key("main.T"));
    }
}
