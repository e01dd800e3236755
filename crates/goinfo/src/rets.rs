//! Machine-code analysis of one function: where its RET instructions are.
//!
//! Go must never get a uretprobe (the return trampoline breaks moving goroutine stacks), so the
//! exit of a function is observed by a uprobe on each of its RET instructions.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Addresses (same space as `base`) of every RET in `code`, which starts at `base`.
/// Decodes linearly: Go's compiler puts no data inside function bodies on amd64.
pub fn amd64_ret_addresses(code: &[u8], base: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, base, DecoderOptions::NONE);
    let mut rets = Vec::new();
    for insn in &mut decoder {
        if insn.is_invalid() {
            continue;
        }
        if matches!(insn.mnemonic(), Mnemonic::Ret | Mnemonic::Retf) {
            rets.push(insn.ip());
        }
    }
    rets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_ret_and_ignores_c3_inside_other_instructions() {
        let code = [
            0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00,
            0x00, // mov rax, 0xc3 (a 0xc3 byte that is no RET)
            0x74, 0x01, // je +1
            0xc3, // ret
            0x48, 0x83, 0xc4, 0x08, // add rsp, 8
            0xc3, // ret
        ];
        assert_eq!(amd64_ret_addresses(&code, 0x1000), vec![0x1009, 0x100e]);
    }

    #[test]
    fn empty_code_has_no_rets() {
        assert!(amd64_ret_addresses(&[], 0).is_empty());
    }
}
