//! Event injection: the VM-entry interruption information, the guest's
//! interruptibility (STI, MOV SS and NMI blocking), and events whose
//! delivery an exit interrupted, delivered again.

use super::capabilities::CR0_PE;
use super::fields;
use super::VmxVcpu;
use crate::emulator::{CpuState, Exception, RFLAGS_IF};
use crate::vcpu::Event;

/// Interruptibility state: blocking by STI and by MOV SS.
pub(super) const BLOCKING_STI_MOVSS: u64 = 0b11;
/// Interruptibility state: blocking by MOV SS alone.
pub(super) const BLOCKING_MOV_SS: u64 = 0b10;
/// Guest interruptibility: blocking by NMI (virtual-NMI blocking, since
/// the pin controls include virtual NMIs).
pub(super) const BLOCKING_NMI: u64 = 1 << 3;
/// Interruption-information valid bit.
pub(super) const INFO_VALID: u64 = 1 << 31;
/// Interruption-information "deliver error code" bit.
pub(super) const INFO_ERROR_CODE: u64 = 1 << 11;
/// Pending debug exceptions: BS, a single-step trap (as DR6.BS).
const PENDING_DEBUG_BS: u64 = 1 << 14;
/// Pending debug exceptions: B0-B3, matched breakpoints (as DR6.B0-B3).
const PENDING_DEBUG_B0_B3: u64 = 0xf;
/// Pending debug exceptions: an enabled breakpoint matched.
const PENDING_DEBUG_ENABLED_BREAKPOINT: u64 = 1 << 12;

impl VmxVcpu {
    /// Deliver `event` at the next entry through the VM-entry interruption
    /// information; `false` if an event is already pending there.
    pub(super) fn inject_event(&mut self, event: Event) -> bool {
        if self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID != 0 {
            return false;
        }
        let info = match event {
            Event::Exception(e) => {
                let mut v = u64::from(e.vector()) | (3 << 8) | INFO_VALID;
                // Real mode delivers no error code (and VM entry refuses one).
                if let Some(code) = e.error_code() {
                    if self.guest_cr0() & CR0_PE != 0 {
                        v |= INFO_ERROR_CODE;
                        self.write(fields::ENTRY_EXCEPTION_ERROR_CODE, code.into());
                    }
                }
                if let Exception::PageFault(pf) = e {
                    self.gprs.cr2 = pf.address;
                }
                v
            }
            Event::Interrupt(vector) => u64::from(vector) | INFO_VALID,
            Event::Nmi => 2 | (2 << 8) | INFO_VALID,
        };
        self.write(fields::ENTRY_INTERRUPTION_INFO, info);
        true
    }

    /// The single-step trap of an instruction the VMM completed: BS in the
    /// guest's pending debug exceptions, which the CPU delivers as a #DB
    /// (setting DR6.BS) right after the next VM entry, before any
    /// instruction. Nothing when an event is being injected: the
    /// instruction faulted instead of completing.
    pub(super) fn raise_single_step(&mut self) {
        self.raise_debug_trap(PENDING_DEBUG_BS);
    }

    /// Raise a debug trap with DR6 bits `dr6` (BS, B0-B3) through the
    /// pending debug exceptions, as [`Self::raise_single_step`] does.
    pub(super) fn raise_debug_trap(&mut self, dr6: u64) {
        if self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID != 0 {
            return;
        }
        let mut bits = dr6 & (PENDING_DEBUG_BS | PENDING_DEBUG_B0_B3);
        if bits & PENDING_DEBUG_B0_B3 != 0 {
            bits |= PENDING_DEBUG_ENABLED_BREAKPOINT;
        }
        let pending = self.read(fields::GUEST_PENDING_DEBUG);
        self.write(fields::GUEST_PENDING_DEBUG, pending | bits);
    }

    /// Drop a single-step trap from the pending debug exceptions (kept in
    /// an STI or MOV SS shadow, where VM entry requires it with RFLAGS.TF).
    pub(super) fn clear_single_step(&mut self) {
        let pending = self.read(fields::GUEST_PENDING_DEBUG);
        let shadow = self.read(fields::GUEST_INTERRUPTIBILITY) & BLOCKING_STI_MOVSS != 0;
        if pending & PENDING_DEBUG_BS != 0 && !shadow {
            self.write(fields::GUEST_PENDING_DEBUG, pending & !PENDING_DEBUG_BS);
        }
    }

    /// Whether a debug trap waits in the pending debug exceptions: it is
    /// delivered first, so no event is injected beside it.
    pub(super) fn debug_trap_pending(&self) -> bool {
        self.read(fields::GUEST_PENDING_DEBUG) & (PENDING_DEBUG_BS | PENDING_DEBUG_B0_B3) != 0
    }

    /// RFLAGS.IF set, no STI/MOV SS blocking, no event or debug trap
    /// pending.
    pub(super) fn interrupt_can_be_taken(&self) -> bool {
        self.rflags() & RFLAGS_IF != 0
            && self.read(fields::GUEST_INTERRUPTIBILITY) & BLOCKING_STI_MOVSS == 0
            && self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID == 0
            && !self.debug_trap_pending()
    }

    /// No blocking by NMI or MOV SS, no event pending.
    pub(super) fn nmi_can_be_taken(&self) -> bool {
        // Blocking by NMI (bit 3) is virtual-NMI blocking ("virtual NMIs"
        // is always on, see `Controls::derive`): set by injecting an NMI,
        // cleared by the handler's IRET. (Without virtual NMIs, NMI exiting
        // makes IRET leave the bit alone and only one NMI ever arrived.)
        self.read(fields::GUEST_INTERRUPTIBILITY) & (BLOCKING_NMI | 0b10) == 0
            && self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID == 0
            && !self.debug_trap_pending()
    }

    /// An event whose delivery the exit interrupted is delivered again on
    /// the next entry.
    pub(super) fn reinject_vectoring_event(&self) {
        let info = self.read(fields::IDT_VECTORING_INFO);
        if info & INFO_VALID == 0 {
            return;
        }
        self.write(fields::ENTRY_INTERRUPTION_INFO, info & (INFO_VALID | 0x7ff));
        if info & INFO_ERROR_CODE != 0 {
            self.write(
                fields::ENTRY_EXCEPTION_ERROR_CODE,
                self.read(fields::IDT_VECTORING_ERROR_CODE),
            );
        }
        // Software interrupts and exceptions need the instruction length.
        if matches!((info >> 8) & 7, 4..=6) {
            self.write(
                fields::ENTRY_INSTRUCTION_LENGTH,
                self.read(fields::EXIT_INSTRUCTION_LENGTH),
            );
        }
    }
}
