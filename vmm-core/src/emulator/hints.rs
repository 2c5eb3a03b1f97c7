//! What the hardware already found out about the instruction to emulate:
//! the guest-physical address of the access that exited (SVM's EXITINFO2
//! on a nested page fault, VMX's guest-physical address on an EPT
//! violation) and the instruction bytes the CPU fetched (SVM decode
//! assists). With them the emulator neither walks the guest's page tables
//! again for the faulting operand nor fetches the instruction again.
//!
//! Hints only ever replace work, never checks the hardware did not make:
//! segmentation, alignment and the mode's canonical checks run as without
//! them, and a hint that does not fit the decoded instruction (bytes that
//! are not a whole instruction, an address whose page offset is not the
//! operand's, an access of another kind, an instruction with more than
//! one memory access or whose address the operand does not give) is
//! ignored, so the emulator walks and fetches as it would have.

use super::access::Context;
use super::cpu::{CpuMode, CpuState, GuestBus};
use super::decode::Decoded;
use super::error::InstructionBytes;
use super::operand::Operand;
use crate::paging::{AccessKind, PAGE_SIZE};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// What the hardware reported with the exit, for
/// [`super::Emulator::emulate_hinted`]. The default says nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// The data access that exited, when the exit reports its final
    /// guest-physical address.
    pub access: Option<AccessHint>,
    /// The bytes at CS:RIP the CPU fetched (at most 15, possibly more than
    /// the instruction, possibly fewer): used when they hold a whole
    /// instruction, otherwise the emulator fetches it.
    pub bytes: Option<InstructionBytes>,
}

/// The guest-physical address of a data access that exited: the
/// translation of the instruction's memory operand (not of a page-table
/// entry, not of an instruction fetch), as the CPU found it walking the
/// guest's tables with the access's rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessHint {
    /// The guest-physical address of the byte that faulted.
    pub gpa: u64,
    /// The access was a write (so the guest's tables allow writing
    /// there); a read hint serves reads only.
    pub write: bool,
    /// The guest-linear address of that byte, when the exit reports it
    /// (VMX); it must then lie inside the memory operand.
    pub linear: Option<u64>,
}

/// The number of `i`'s only memory operand when an access hint can stand
/// for it: the instruction's one explicit memory operand, every other
/// operand a register or an immediate, and no other memory access
/// (`None` for pushes, pops, calls and returns, which touch the stack,
/// for strings, and for bit tests, whose register offset moves the
/// address outside the operand). A function of the instruction alone,
/// kept with its decode.
pub(crate) fn hintable_operand(i: &Instruction) -> Option<u32> {
    if matches!(
        i.mnemonic(),
        Mnemonic::Push
            | Mnemonic::Pop
            | Mnemonic::Pusha
            | Mnemonic::Pushad
            | Mnemonic::Popa
            | Mnemonic::Popad
            | Mnemonic::Bt
            | Mnemonic::Bts
            | Mnemonic::Btr
            | Mnemonic::Btc
            | Mnemonic::Call
            | Mnemonic::Ret
            | Mnemonic::Retf
    ) {
        return None;
    }
    let mut memory = (0..i.op_count()).filter(|&n| i.op_kind(n) != OpKind::Register);
    let n = memory.next()?;
    // Any other non-register operand (an immediate is fine, a string
    // or second memory operand is not).
    let only_immediates = memory.all(|m| {
        matches!(
            i.op_kind(m),
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    });
    (i.op_kind(n) == OpKind::Memory && only_immediates).then_some(n)
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// Enter the translation `hint` stands for into this instruction's
    /// TLB, if it fits the decoded instruction `d`: exactly one memory
    /// access, the instruction's explicit operand, whose linear range
    /// holds the faulting byte. Anything else leaves the TLB alone.
    pub fn apply_access_hint(&mut self, d: &Decoded, hint: &AccessHint) {
        if let Some((page, n, operand)) = self.hinted_page(d, hint) {
            // The operand's address, worked out once: the instruction
            // uses it as computed here, from the registers it starts with.
            self.operand_memo = Some((n, operand));
            let kind = if hint.write {
                AccessKind::Write
            } else {
                AccessKind::Read
            };
            self.seed_translation(page, hint.gpa, kind);
        }
    }

    /// A linear address in the page the hint translates, with the memory
    /// operand's number and the operand, or `None` if the hint does not
    /// fit.
    fn hinted_page(&self, d: &Decoded, hint: &AccessHint) -> Option<(u64, u32, Operand)> {
        // The operand as `Context::operand` gives it (the hint's operand
        // is a memory operand), without going through every kind.
        let n = d.hint_operand?;
        let size = d.address.size?.into();
        let (seg, offset) = (self.memory_segment(d), self.effective_address(d));
        let operand = Operand::Mem { seg, offset, size };
        if size == 0 || hint.gpa >> self.max_phys_bits() != 0 {
            return None;
        }
        // Segmentation as for a read; the access itself checks again with
        // its own kind.
        let la = self.linear(seg, offset, size, AccessKind::Read).ok()?;
        let wrap = |a: u64| {
            if self.mode == CpuMode::Long64 {
                a
            } else {
                a & 0xffff_ffff
            }
        };
        let offset_of = |a: u64| a & (PAGE_SIZE - 1);
        let size = size as u64;
        let page = match hint.linear {
            Some(linear) => {
                let inside = wrap(linear.wrapping_sub(la)) < size;
                if !inside || offset_of(linear) != offset_of(hint.gpa) {
                    return None;
                }
                wrap(linear)
            }
            None => {
                let in_page = PAGE_SIZE - offset_of(la);
                if offset_of(hint.gpa) == offset_of(la) {
                    la
                } else if size > in_page && offset_of(hint.gpa) == 0 {
                    // The access crosses a page and the second faulted.
                    wrap(la.wrapping_add(in_page))
                } else {
                    return None;
                }
            }
        };
        Some((page, n, operand))
    }
}
