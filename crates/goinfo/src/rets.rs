//! Machine-code analysis of one function: where its RET instructions are, and where its
//! stack-check branch is.
//!
//! Go must never get a uretprobe (the return trampoline breaks moving goroutine stacks), so the
//! exit of a function is observed by a uprobe on each of its RET instructions. A uprobe costs
//! far less on an instruction the kernel emulates (a jump) than on one it single-steps, and
//! Go's prologue `CMP RSP, [R14+16]; JBE morestack` has such a jump that runs on every call
//! with the arguments still in their registers.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

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

/// For each direct call to `target` in `code` (which starts at `base`): the call's address and
/// the address of the first direct branch after it (a jump, conditional jump or call, which
/// the kernel emulates: a probe there costs what an entry probe does), which runs once each
/// time that call returns, with the caller's frame as it was at the call. Indirect calls on
/// the way are passed (they return there). None for a call with no such branch: where a RET
/// or an indirect jump comes first, or another branch lands between the call and it (then it
/// would run on that path too). A function with a jump table (an indirect JMP, whose landings
/// are unknown) has none.
pub fn amd64_returns_from_calls_to(code: &[u8], base: u64, target: u64) -> Vec<(u64, Option<u64>)> {
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, base, DecoderOptions::NONE)
        .into_iter()
        .filter(|insn| !insn.is_invalid())
        .collect();
    let direct = |insn: &Instruction| insn.op0_kind() == OpKind::NearBranch64;
    let jump_table = insns.iter().any(|insn| insn.mnemonic() == Mnemonic::Jmp && !direct(insn));
    let landings: Vec<u64> =
        insns.iter().filter(|insn| direct(insn)).map(Instruction::near_branch64).collect();
    let mut found = Vec::new();
    for (i, call) in insns.iter().enumerate() {
        if call.mnemonic() != Mnemonic::Call || !direct(call) || call.near_branch64() != target {
            continue;
        }
        let indirect_call = |insn: &Instruction| insn.mnemonic() == Mnemonic::Call && !direct(insn);
        let after = insns[i + 1..].iter().find(|insn| changes_flow(insn) && !indirect_call(insn));
        let place = after
            .filter(|insn| direct(insn) && !jump_table)
            .filter(|insn| !landings.iter().any(|&l| l >= call.next_ip() && l <= insn.ip()));
        found.push((call.ip(), place.map(Instruction::ip)));
    }
    found
}

/// Whether the instruction after `insn` may not be the next one run.
fn changes_flow(insn: &Instruction) -> bool {
    use Mnemonic::*;
    let m = insn.mnemonic();
    matches!(m, Call | Jmp | Ret | Retf | Int | Int1 | Int3 | Ud2 | Syscall)
        || is_conditional_jump(m)
}

/// A jump taken or not by a condition: to its target, else on to the next instruction.
pub(crate) fn is_conditional_jump(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Ja | Jae | Jb | Jbe | Je | Jne | Jg | Jge | Jl | Jle | Jo | Jno | Jp | Jnp | Js | Jns
    ) || matches!(m, Jrcxz | Jecxz | Loop | Loope | Loopne)
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
    fn finds_the_branch_each_call_returns_to() {
        // 0x1000 call 0x1025; test al,al; je 0x100b; nop x4
        // 0x100d call 0x1025; call rax
        // 0x1014 call 0x1025; mov eax,1; jne 0x1019 (between that call and it); call rax
        let code = [
            0xe8, 0x20, 0, 0, 0, 0x84, 0xc0, 0x74, 0x02, 0x90, 0x90, 0x90, 0x90, //
            0xe8, 0x13, 0, 0, 0, 0xff, 0xd0, //
            0xe8, 0x0c, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0x75, 0xf9, 0xff, 0xd0,
        ];
        assert_eq!(
            amd64_returns_from_calls_to(&code, 0x1000, 0x1025),
            vec![(0x1000, Some(0x1007)), (0x100d, Some(0x1014)), (0x1014, None)],
            "an indirect call is passed to the next direct branch; a landing in between disqualifies"
        );
        assert!(amd64_returns_from_calls_to(&code, 0x1000, 0x2000).is_empty());
    }

    #[test]
    fn a_ret_or_an_indirect_jump_first_leaves_no_place_after_a_call() {
        // call 0x1025; ret
        let code = [0xe8, 0x20, 0, 0, 0, 0xc3];
        assert_eq!(amd64_returns_from_calls_to(&code, 0x1000, 0x1025), vec![(0x1000, None)]);
    }

    #[test]
    fn a_jump_table_leaves_no_place_after_a_call() {
        // call 0x1025; je 0x1009; jmp [rax]
        let code = [0xe8, 0x20, 0, 0, 0, 0x74, 0x02, 0xff, 0x20];
        assert_eq!(amd64_returns_from_calls_to(&code, 0x1000, 0x1025), vec![(0x1000, None)]);
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
