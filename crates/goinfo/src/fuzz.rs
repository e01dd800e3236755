//! Property tests: no input, however malformed, makes the parsers panic.

use proptest::prelude::*;

use crate::types::Memory;

/// A memory image of `bytes` at address `base`.
struct Image {
    base: u64,
    bytes: Vec<u8>,
}

impl Memory for Image {
    fn read(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let at = usize::try_from(vaddr.checked_sub(self.base)?).ok()?;
        self.bytes.get(at..at.checked_add(len)?)
    }
}

/// A plausible pclntab header (Go 1.20 magic, 8-byte pointers) before arbitrary bytes, so the
/// parser gets past its first checks.
fn with_pclntab_header(tail: Vec<u8>) -> Vec<u8> {
    let mut v = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    v.extend(tail);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn pclntab_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in any::<u64>()) {
        let _ = crate::pclntab::parse(&bytes, text);
        let _ = crate::pclntab::parse(&with_pclntab_header(bytes), text);
    }

    #[test]
    fn buildinfo_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut section = b"\xff Go buildinf:\x08\x02".to_vec();
        section.extend(&bytes);
        let _ = crate::buildinfo::parse(&bytes, |_, _| None);
        let _ = crate::buildinfo::parse(&section, |_, _| Some(bytes.clone()));
    }

    #[test]
    fn type_descriptors_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let image = Image { base: 0x1000, bytes };
        let _ = crate::types::struct_layouts(&image, 0x1000, &image.bytes, false, &["net/http.Request"]);
    }

    #[test]
    fn whole_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.extend(&bytes);
        let _ = crate::GoBinary::parse(std::path::Path::new("fuzz"), elf);
        let _ = crate::GoBinary::parse(std::path::Path::new("fuzz"), bytes);
    }
}
