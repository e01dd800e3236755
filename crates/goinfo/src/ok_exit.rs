//! Machine-code analysis of one function that returns what a call inside it returned: the
//! conditional jump that tests that call's error, and the RETs only its nil side reaches.
//!
//! A span that ends at a function's RETs pays for a single-stepped instruction on every call
//! (about ten times an emulated one). When the function's successful return passes a jump
//! that tests the callee's error with the results still in their registers, a probe on that
//! jump (emulated) sees what the RET would, and the RETs behind its nil side need no probe:
//! only the error paths keep theirs, and they are rare.

use std::collections::HashSet;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::rets::is_conditional_jump;

/// Where a successful return is seen early, as addresses in the code's space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkExit {
    /// The `JE`/`JNE` right after the call (past NOPs and `TEST RBX, RBX`), where the results
    /// are still in RAX, RBX, RCX: the error's itab word, RBX, is zero on the nil side.
    pub branch: u64,
    /// RETs that no path from the entry reaches without taking the branch's nil side.
    pub rets_behind: Vec<u64>,
    /// Every other RET: where the error paths return.
    pub other_rets: Vec<u64>,
}

/// The `OkExit` of the function whose code starts at `base`, for its direct call(s) to
/// `target`: None unless exactly one call is followed by the test, the nil side reaches only
/// RETs no other path reaches, and no indirect jump hides where control may go.
pub fn amd64_ok_exit(code: &[u8], base: u64, target: u64) -> Option<OkExit> {
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, base, DecoderOptions::NONE)
        .into_iter()
        .filter(|insn| !insn.is_invalid())
        .collect();
    let direct = |insn: &Instruction| insn.op0_kind() == OpKind::NearBranch64;
    if insns.iter().any(|insn| insn.mnemonic() == Mnemonic::Jmp && !direct(insn)) {
        return None; // a jump table: its landings are unknown
    }
    let calls: Vec<usize> = (0..insns.len())
        .filter(|&i| {
            let insn = &insns[i];
            insn.mnemonic() == Mnemonic::Call && direct(insn) && insn.near_branch64() == target
        })
        .collect();
    let &[call] = calls.as_slice() else { return None };
    let (branch, nil_side) = error_test_after(&insns[call + 1..])?;
    let rets: Vec<u64> =
        insns.iter().filter(|i| i.mnemonic() == Mnemonic::Ret).map(Instruction::ip).collect();
    let without_edge = reachable(&insns, base, Some((branch, nil_side)));
    let from_nil_side = reachable(&insns, nil_side, None);
    let (behind, other): (Vec<u64>, Vec<u64>) =
        rets.iter().partition(|r| from_nil_side.contains(r) && !without_edge.contains(r));
    let shared = rets.iter().any(|r| from_nil_side.contains(r) && without_edge.contains(r));
    (!behind.is_empty() && !shared).then_some(OkExit {
        branch,
        rets_behind: behind,
        other_rets: other,
    })
}

/// After a call returns: NOPs, `TEST RBX, RBX`, then `JE` (nil side: its target) or `JNE`
/// (nil side: the next instruction). (branch address, nil side's address).
fn error_test_after(after: &[Instruction]) -> Option<(u64, u64)> {
    let mut rest = after.iter().skip_while(|insn| insn.mnemonic() == Mnemonic::Nop);
    let test = rest.next()?;
    let tests_rbx = test.mnemonic() == Mnemonic::Test
        && test.op0_kind() == OpKind::Register
        && test.op1_kind() == OpKind::Register
        && test.op0_register() == Register::RBX
        && test.op1_register() == Register::RBX;
    let jump = rest.next()?;
    if !tests_rbx || jump.op0_kind() != OpKind::NearBranch64 {
        return None;
    }
    match jump.mnemonic() {
        Mnemonic::Je => Some((jump.ip(), jump.near_branch64())),
        Mnemonic::Jne => Some((jump.ip(), jump.next_ip())),
        _ => None,
    }
}

/// Addresses of the instructions reachable from `start`, never taking `skip` (a jump's
/// address and one of its successors). Calls are taken to return; a RET, UD2 or INT3 ends a
/// path.
fn reachable(insns: &[Instruction], start: u64, skip: Option<(u64, u64)>) -> HashSet<u64> {
    let index = |ip: u64| insns.binary_search_by_key(&ip, Instruction::ip).ok();
    let mut seen = HashSet::new();
    let mut todo: Vec<usize> = index(start).into_iter().collect();
    while let Some(i) = todo.pop() {
        let insn = &insns[i];
        if !seen.insert(insn.ip()) {
            continue;
        }
        let mut next = Vec::with_capacity(2);
        match insn.mnemonic() {
            Mnemonic::Ret | Mnemonic::Ud2 | Mnemonic::Int3 => {}
            Mnemonic::Jmp => next.push(insn.near_branch64()),
            m if is_conditional_jump(m) => next.extend([insn.near_branch64(), insn.next_ip()]),
            _ => next.push(insn.next_ip()),
        }
        for to in next {
            if skip == Some((insn.ip(), to)) {
                continue;
            }
            todo.extend(index(to));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> Vec<u8> {
        vec![
            0xe8, 0xfb, 0x00, 0x00, 0x00, // 0x1000 call 0x1100
            0x90, // 0x1005 nop
            0x48, 0x85, 0xdb, // 0x1006 test rbx,rbx
            0x74, 0x01, // 0x1009 je 0x100c
            0xc3, // 0x100b ret (the error's)
            0x31, 0xc9, // 0x100c xor ecx,ecx
            0xc3, // 0x100e ret (the success's)
        ]
    }

    #[test]
    fn finds_the_nil_test_and_the_rets_behind_it() {
        let exit = amd64_ok_exit(&function(), 0x1000, 0x1100).unwrap();
        assert_eq!(
            exit,
            OkExit { branch: 0x1009, rets_behind: vec![0x100e], other_rets: vec![0x100b] }
        );
    }

    #[test]
    fn jne_puts_the_nil_side_after_the_jump() {
        let mut code = function();
        code[9] = 0x75; // jne 0x100c: now 0x100c is the error side, 0x100b the nil side's RET
        let exit = amd64_ok_exit(&code, 0x1000, 0x1100).unwrap();
        assert_eq!((exit.rets_behind, exit.other_rets), (vec![0x100b], vec![0x100e]));
    }

    #[test]
    fn a_ret_another_path_reaches_too_means_no_ok_exit() {
        let code = [
            0xe8, 0xfb, 0x00, 0x00, 0x00, // 0x1000 call 0x1100
            0x90, // 0x1005 nop
            0x48, 0x85, 0xdb, // 0x1006 test rbx,rbx
            0x74, 0x02, // 0x1009 je 0x100d
            0xeb, 0x02, // 0x100b jmp 0x100f (the error side joins the success side)
            0x31, 0xc9, // 0x100d xor ecx,ecx
            0xc3, // 0x100f ret
        ];
        assert_eq!(amd64_ok_exit(&code, 0x1000, 0x1100), None);
    }

    #[test]
    fn other_registers_tested_or_no_test_mean_no_ok_exit() {
        let mut code = function();
        code[8] = 0xc0; // test rax,rax
        assert_eq!(amd64_ok_exit(&code, 0x1000, 0x1100), None);
        assert_eq!(amd64_ok_exit(&function(), 0x1000, 0x1200), None, "no call to that target");
    }

    #[test]
    fn a_jump_table_means_no_ok_exit() {
        let mut code = function();
        code.extend([0xff, 0x20]); // jmp [rax]
        assert_eq!(amd64_ok_exit(&code, 0x1000, 0x1100), None);
    }
}
