//! Machine-code analysis of one function: where its RET instructions are, and where its
//! stack-check branch is.
//!
//! Go must never get a uretprobe (the return trampoline breaks moving goroutine stacks), so the
//! exit of a function is observed by a uprobe on each of its RET instructions. A uprobe costs
//! far less on an instruction the kernel emulates (a jump) than on one it single-steps, and
//! Go's prologue `CMP RSP, [R14+16]; JBE morestack` has such a jump that runs on every call
//! with the arguments still in their registers.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

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

/// Addresses of the direct calls to `target` in `code` (which starts at `base`). A CALL is an
/// instruction the kernel emulates, and at it the callee's arguments are in their registers.
pub fn amd64_calls_to(code: &[u8], base: u64, target: u64) -> Vec<u64> {
    let decoder = Decoder::with_ip(64, code, base, DecoderOptions::NONE);
    decoder
        .into_iter()
        .filter(|insn| {
            insn.mnemonic() == Mnemonic::Call
                && insn.op0_kind() == OpKind::NearBranch64
                && insn.near_branch64() == target
        })
        .map(|insn| insn.ip())
        .collect()
}

/// Address of the conditional jump to morestack in the prologue of the function whose code
/// starts at `base`: `CMP RSP|R12, [R14+0x10]` (R12 after `LEA R12, [RSP-n]` for big frames)
/// then `JBE`. None for functions without a stack check (NOSPLIT, leaves).
pub fn amd64_stack_check_branch(code: &[u8], base: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, base, DecoderOptions::NONE);
    let mut saw_check = false;
    for insn in decoder.iter().take(3) {
        if saw_check {
            return (insn.mnemonic() == Mnemonic::Jbe && insn.op0_kind() == OpKind::NearBranch64)
                .then(|| insn.ip());
        }
        let compares_stack_guard = insn.mnemonic() == Mnemonic::Cmp
            && matches!(insn.op0_register(), Register::RSP | Register::R12)
            && insn.op1_kind() == OpKind::Memory
            && insn.memory_base() == Register::R14
            && insn.memory_displacement64() == 0x10;
        if compares_stack_guard {
            saw_check = true;
        } else if !(insn.mnemonic() == Mnemonic::Lea && insn.op0_register() == Register::R12) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_prologue_stack_check_jump() {
        // cmp rsp,[r14+0x10]; jbe +0x8a; push rbp
        let small = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x8a, 0, 0, 0, 0x55];
        assert_eq!(amd64_stack_check_branch(&small, 0x1000), Some(0x1004));
        // lea r12,[rsp-0x18]; cmp r12,[r14+0x10]; jbe +0x337
        let big =
            [0x4c, 0x8d, 0x64, 0x24, 0xe8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x37, 0x03, 0, 0];
        assert_eq!(amd64_stack_check_branch(&big, 0x2000), Some(0x2009));
    }

    #[test]
    fn finds_direct_calls_to_a_target_only() {
        // call +0x10 (-> 0x1015); call rax; call +0x0 (-> 0x100c)
        let code = [0xe8, 0x10, 0, 0, 0, 0xff, 0xd0, 0xe8, 0, 0, 0, 0];
        assert_eq!(amd64_calls_to(&code, 0x1000, 0x1015), vec![0x1000]);
        assert_eq!(amd64_calls_to(&code, 0x1000, 0x100c), vec![0x1007]);
        assert!(amd64_calls_to(&code, 0x1000, 0x2000).is_empty());
    }

    #[test]
    fn functions_without_a_stack_check_have_none() {
        // mov rax,[rbx]; ret
        assert_eq!(amd64_stack_check_branch(&[0x48, 0x8b, 0x03, 0xc3], 0), None);
        // cmp rsp,[r14+0x10] followed by something other than jbe
        assert_eq!(amd64_stack_check_branch(&[0x49, 0x3b, 0x66, 0x10, 0xc3], 0), None);
        assert_eq!(amd64_stack_check_branch(&[], 0), None);
    }

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
