//! `.gopclntab`: Go's own function table, kept in stripped binaries. Gives every function's
//! name, entry and end without `.symtab`. Go's runtime/symtab.go and debug/gosym are the
//! specification of the three layouts read here.

use crate::Error;

const MAGIC_1_16: u32 = 0xffff_fffa; // 1.16 and 1.17: absolute entries
const MAGIC_1_18: u32 = 0xffff_fff0; // 1.18 and 1.19: entries relative to textStart
const MAGIC_1_20: u32 = 0xffff_fff1; // 1.20 on; since 1.26 textStart is stored as 0

/// A function as the Go runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PclnFunction {
    pub name: String,
    pub entry: u64,
    /// The next function's entry (or the end of text): includes alignment padding.
    pub end: u64,
}

/// Little-endian reads that fail instead of panicking on short input.
struct Reader<'a> {
    data: &'a [u8],
    ptr_size: usize,
}

impl Reader<'_> {
    fn bytes(&self, at: usize, n: usize) -> Result<&[u8], Error> {
        at.checked_add(n)
            .and_then(|end| self.data.get(at..end))
            .ok_or(Error::Malformed("pclntab: read past the end"))
    }
    fn u32(&self, at: usize) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into().unwrap_or([0; 4])))
    }
    fn word(&self, at: usize) -> Result<u64, Error> {
        let b = self.bytes(at, self.ptr_size)?;
        Ok(if self.ptr_size == 8 {
            u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        } else {
            u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        })
    }
    fn offset(&self, at: usize) -> Result<usize, Error> {
        usize::try_from(self.word(at)?).map_err(|_| Error::Malformed("pclntab: offset too large"))
    }
    fn cstr(&self, at: usize) -> Result<String, Error> {
        let tail = self.data.get(at..).ok_or(Error::Malformed("pclntab: name past the end"))?;
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Malformed("pclntab: unterminated name"))?;
        Ok(String::from_utf8_lossy(&tail[..len]).into_owned())
    }
}

/// Parses the section. `text_section_start` stands in for a textStart the header leaves 0
/// (Go 1.26+): the runtime's `runtime.text`, which is where `.text` begins.
pub fn parse(data: &[u8], text_section_start: u64) -> Result<Vec<PclnFunction>, Error> {
    if data.len() < 8 {
        return Err(Error::Malformed("pclntab: too short"));
    }
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let ptr_size = usize::from(data[7]);
    if data[4] != 0 || data[5] != 0 || !(ptr_size == 4 || ptr_size == 8) {
        return Err(Error::Malformed("pclntab: bad header"));
    }
    let r = Reader { data, ptr_size };
    let p = ptr_size;
    let nfunc = r.offset(8)?;
    // Each function needs at least a functab entry: a count beyond that is corruption.
    if nfunc > data.len() / 8 {
        return Err(Error::Malformed("pclntab: function count larger than the table"));
    }
    let mut out = Vec::with_capacity(nfunc);
    match magic {
        MAGIC_1_18 | MAGIC_1_20 => {
            let mut text_start = r.word(8 + 2 * p)?;
            if text_start == 0 {
                text_start = text_section_start;
            }
            let funcnames = r.offset(8 + 3 * p)?;
            let pcln = r.offset(8 + 7 * p)?;
            // functab: nfunc+1 pairs of (entryoff u32, funcoff u32); the last entry is the end.
            for i in 0..nfunc {
                let at = pcln.saturating_add(i * 8);
                let entry_off = r.u32(at)?;
                let func_off = r.u32(at.saturating_add(4))? as usize;
                let next_entry_off = r.u32(at.saturating_add(8))?;
                let name_off = r.u32(pcln.saturating_add(func_off).saturating_add(4))? as usize;
                out.push(PclnFunction {
                    name: r.cstr(funcnames.saturating_add(name_off))?,
                    entry: text_start.saturating_add(u64::from(entry_off)),
                    end: text_start.saturating_add(u64::from(next_entry_off)),
                });
            }
        }
        MAGIC_1_16 => {
            let funcnames = r.offset(8 + 2 * p)?;
            let pcln = r.offset(8 + 6 * p)?;
            // functab: nfunc+1 pairs of (entry uintptr, funcoff uintptr).
            for i in 0..nfunc {
                let at = pcln.saturating_add(i * 2 * p);
                let entry = r.word(at)?;
                let func_off = r.offset(at.saturating_add(p))?;
                let end = r.word(at.saturating_add(2 * p))?;
                let name_off = r.u32(pcln.saturating_add(func_off).saturating_add(p))? as usize;
                let name = r.cstr(funcnames.saturating_add(name_off))?;
                out.push(PclnFunction { name, entry, end });
            }
        }
        _ => return Err(Error::Malformed("pclntab: unknown magic (Go before 1.16?)")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.20-layout table with two functions, "main.a" and "main.bb".
    fn table_1_20(text_start: u64) -> Vec<u8> {
        let mut t = vec![0u8; 8 + 8 * 8];
        t[0..4].copy_from_slice(&MAGIC_1_20.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let names = b"main.a\0main.bb\0";
        let funcnames = t.len();
        t.extend_from_slice(names);
        let pcln = t.len();
        let header = |t: &mut Vec<u8>, field: usize, v: u64| {
            t[8 + field * 8..16 + field * 8].copy_from_slice(&v.to_le_bytes())
        };
        header(&mut t, 0, 2); // nfunc
        header(&mut t, 2, text_start);
        header(&mut t, 3, funcnames as u64);
        header(&mut t, 7, pcln as u64);
        // functab: (0x0, f0) (0x40, f1) (0x90 end); _func records after it.
        let funcs_at = 3 * 8;
        for (entry, func) in [(0u32, funcs_at), (0x40, funcs_at + 8), (0x90, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&(func as u32).to_le_bytes());
        }
        for (entry, name) in [(0u32, 0u32), (0x40, 7)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn reads_names_entries_and_ends() {
        let f = parse(&table_1_20(0x401000), 0).unwrap();
        assert_eq!(
            f,
            vec![
                PclnFunction { name: "main.a".into(), entry: 0x401000, end: 0x401040 },
                PclnFunction { name: "main.bb".into(), entry: 0x401040, end: 0x401090 },
            ]
        );
    }

    #[test]
    fn a_zero_text_start_means_the_text_section() {
        let f = parse(&table_1_20(0), 0x500000).unwrap();
        assert_eq!(f[1].entry, 0x500040);
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        let t = table_1_20(0x401000);
        for len in 0..t.len() {
            let _ = parse(&t[..len], 0);
        }
        assert!(parse(&t[..t.len() - 3], 0).is_err());
        assert!(parse(b"\x01\x02\x03\x04\x00\x00\x01\x08", 0).is_err());
    }
}
