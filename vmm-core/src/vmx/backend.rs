//! [`VcpuBackend`] for [`VmxVcpu`]: entering the guest, and the backend
//! calls of the shared exit loop.

use super::capabilities::{self, CR0_PG};
use super::control_registers::{EFER_GUEST_WRITABLE, EFER_LMA, EFER_LME};
use super::events::INFO_VALID;
use super::fields;
use super::guest_state::access_rights_from_attributes;
use super::host_debug::DebugEntry;
use super::instructions::{self, VmFail, VmxGprs};
use super::vcpu::SWITCHED_MSRS;
use super::VmxVcpu;
use crate::debug_registers::GuestDebugRegisters;
use crate::emulator::{Segment, SegmentRegister};
use crate::vcpu::{Event, Exit, SplitEntry, VcpuBackend};
use crate::vm::Vm;

/// Internal exits in a row before `run` returns to the exit loop anyway.
const MAX_INTERNAL_EXITS: u32 = 1000;

/// One VMX entry from its set-up to its end ([`SplitEntry`]).
pub struct VmxEntry {
    /// What the host's debugger changed for this entry.
    debugger: Option<DebugEntry>,
    /// The debug registers loaded for the guest, then as it left them.
    debug_registers: GuestDebugRegisters,
    /// VMLAUNCH/VMRESUME's own result.
    entered: Result<(), VmFail>,
}

impl SplitEntry for VmxVcpu {
    type Entry = VmxEntry;
    const MAX_INTERNAL_EXITS: u32 = MAX_INTERNAL_EXITS;

    fn begin_entry(&mut self, vm: &mut Vm, first: bool) -> Result<VmxEntry, Exit> {
        if first {
            if self.host_debug_holds() {
                // Held for the host's debugger.
                return Err(Exit::Preempted);
            }
            if let Err(e) = self.sync_ept(vm) {
                return Err(Exit::Error(e));
            }
            self.sync_io_bitmaps(vm);
            if self.pdptes_stale {
                self.pdptes_stale = false;
                if self.load_pdptes(vm).is_err() {
                    log::debug!("restored PAE PDPTEs are invalid: the guest gets #GP");
                    self.inject_event(Event::Exception(
                        crate::emulator::Exception::GeneralProtection(0),
                    ));
                }
            }
        }
        // A run lasts at most a millisecond of TSC time with the preemption
        // timer: the host's timer interrupt ends it too (external-interrupt
        // exiting), but an emulated CPU has been seen not to exit for it
        // while the guest's RFLAGS.IF is clear (Bochs), and a guest spinning
        // with interrupts closed would then keep the host's only CPU.
        let quantum = self.controls.preemption_timer_shift.map(|shift| {
            let per_ms = u64::from(vm.host().tsc_khz().unwrap_or(1_000_000));
            (per_ms >> shift).clamp(1, u64::from(u32::MAX))
        });
        self.load();
        if let Some(ticks) = quantum {
            self.write(fields::GUEST_PREEMPTION_TIMER, ticks);
        }
        let debugger = self.enter_host_debug();
        let debug_registers = self.entry_debug_registers(debugger.as_ref());
        self.xstate.switch_to_guest(vm.host().current_cpu());
        debug_registers.load(true);
        Ok(VmxEntry {
            debugger,
            debug_registers,
            entered: Ok(()),
        })
    }

    fn enter(&mut self, entry: &mut VmxEntry) {
        // SAFETY: VMX is on and our VMCS current (`begin_entry` loaded it
        // on this CPU right before); its host state is this CPU's,
        // HOST_RIP the exit path of `enter`; its EPT maps only this VM's
        // memory, its I/O bitmaps intercept every port but the VM's
        // pass-through ports and its MSR bitmap only lets through MSRs
        // the VMCS or its MSR areas switch.
        entry.entered = unsafe { instructions::enter(&mut self.gprs, self.launched) };
        entry.debug_registers.save(true);
        if entry.debugger.is_some_and(|e| e.has_breakpoints()) {
            // DR0-DR3 held the debugger's: only DR6 is the guest's.
            self.debug.dr6 = entry.debug_registers.dr6;
        } else {
            self.debug = entry.debug_registers;
        }
        self.xstate.switch_to_host();
        // A physical interrupt that ended the guest's run is taken now.
        instructions::take_pending_interrupts();
    }

    fn end_entry(&mut self, vm: &mut Vm, entry: VmxEntry) -> Option<Exit> {
        if let Err(e) = entry.entered {
            return Some(self.instruction_failure(e));
        }
        self.launched = true;
        // The event we injected (if any) was delivered or is reported
        // again through the IDT-vectoring information.
        // (A failed entry keeps it, for the diagnosis.)
        let failed_entry = self.read(fields::EXIT_REASON) & (1 << 31) != 0;
        let pending = self.read(fields::ENTRY_INTERRUPTION_INFO);
        if pending & INFO_VALID != 0 && !failed_entry {
            self.write(fields::ENTRY_INTERRUPTION_INFO, 0);
        }
        match entry.debugger.and_then(|e| self.leave_host_debug(&e)) {
            Some(true) => return Some(Exit::Preempted),
            Some(false) => return None,
            None => {}
        }
        let exit = self.decode_exit(vm)?;
        if exit == Exit::InterruptWindow {
            self.request_interrupt_window(false);
        }
        if exit == Exit::NmiWindow {
            self.request_nmi_window(false);
        }
        if matches!(
            exit,
            Exit::Hlt { .. }
                | Exit::PortIo { .. }
                | Exit::Cpuid { .. }
                | Exit::Msr { .. }
                | Exit::ControlRegister { .. }
                | Exit::Invlpg { .. }
        ) {
            // The exit loop completes this instruction and raises
            // its single-step trap itself (a CPU may have saved one
            // for it, which would come again at every re-entry
            // while RIP stays on a HLT).
            self.clear_single_step();
        }
        Some(exit)
    }
}

impl VcpuBackend for VmxVcpu {
    fn run(&mut self, vm: &mut Vm) -> Exit {
        crate::vcpu::run_split(self, vm)
    }

    fn inject(&mut self, event: Event) -> bool {
        self.inject_event(event)
    }

    fn interrupts_open(&self) -> bool {
        self.interrupt_can_be_taken()
    }

    fn debug_trap(&mut self, dr6: u64) {
        self.raise_debug_trap(dr6);
    }

    fn breakpoints(&self) -> crate::emulator::Breakpoints {
        crate::emulator::Breakpoints {
            addresses: self.debug.dr,
            dr7: self.read(fields::GUEST_DR7),
            io_enabled: self.guest_cr4() & crate::paging::CR4_DE != 0,
        }
    }

    fn nmis_open(&self) -> bool {
        self.nmi_can_be_taken()
    }

    fn may_run_on(&self) -> bool {
        self.host_debug.is_none()
            && self.step_exit_rip.is_none()
            && self.read(fields::ENTRY_INTERRUPTION_INFO) & super::events::INFO_VALID == 0
            && !self.debug_trap_pending()
            && self.read(fields::GUEST_INTERRUPTIBILITY) & super::events::BLOCKING_STI_MOVSS == 0
    }

    fn backend_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            crate::vcpu::MSR_EFER => Some(self.read(fields::GUEST_IA32_EFER)),
            _ => self.vmcs_msr(msr),
        }
    }

    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        match msr {
            crate::vcpu::MSR_EFER => {
                if value & !(EFER_GUEST_WRITABLE | EFER_LMA) != 0 {
                    return false;
                }
                let current = self.read(fields::GUEST_IA32_EFER);
                // LME cannot change while paging is on.
                if self.guest_cr0() & CR0_PG != 0 && (current ^ value) & EFER_LME != 0 {
                    return false;
                }
                let lma = current & EFER_LMA;
                self.write(fields::GUEST_IA32_EFER, (value & EFER_GUEST_WRITABLE) | lma);
                true
            }
            _ => self.set_vmcs_msr(msr, value),
        }
    }

    fn reset(&mut self) {
        let ia32e = u64::from(capabilities::entry::IA32E_MODE_GUEST);
        self.write(fields::ENTRY_CONTROLS, self.entry_controls() & !ia32e);
        const RESET_CR0: u64 = 0x6000_0010;
        self.write(fields::CR0_READ_SHADOW, RESET_CR0);
        self.write(fields::GUEST_CR0, self.cr0.apply(RESET_CR0));
        self.write(fields::CR4_READ_SHADOW, 0);
        self.write(fields::GUEST_CR4, self.cr4.apply(0));
        self.write(fields::GUEST_CR3, 0);
        self.write(fields::GUEST_IA32_EFER, 0);
        for s in Segment::ALL {
            let (sel, limit, ar, base) = fields::guest_segment(s as u32);
            let (selector, b, attributes) = if s == Segment::Cs {
                (0xf000, 0xffff_0000, SegmentRegister::CODE)
            } else {
                (0, 0, SegmentRegister::DATA)
            };
            self.write(sel, selector);
            self.write(base, b);
            self.write(limit, 0xffff);
            self.write(ar, access_rights_from_attributes(attributes));
        }
        self.write(fields::GUEST_LDTR_SELECTOR, 0);
        self.write(fields::GUEST_LDTR_BASE, 0);
        self.write(fields::GUEST_LDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_LDTR_ACCESS_RIGHTS, 0x82);
        self.write(fields::GUEST_TR_SELECTOR, 0);
        self.write(fields::GUEST_TR_BASE, 0);
        self.write(fields::GUEST_TR_LIMIT, 0xffff);
        self.write(fields::GUEST_TR_ACCESS_RIGHTS, 0x8b);
        self.write(fields::GUEST_GDTR_BASE, 0);
        self.write(fields::GUEST_GDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_IDTR_BASE, 0);
        self.write(fields::GUEST_IDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_RIP, 0xfff0);
        self.write(fields::GUEST_RSP, 0);
        self.write(fields::GUEST_RFLAGS, 2);
        self.write(fields::GUEST_DR7, 0x400);
        self.write(fields::GUEST_IA32_DEBUGCTL, 0);
        self.write(fields::GUEST_INTERRUPTIBILITY, 0);
        self.write(fields::GUEST_ACTIVITY_STATE, 0);
        self.write(fields::GUEST_PENDING_DEBUG, 0);
        self.write(fields::GUEST_SYSENTER_CS, 0);
        self.write(fields::GUEST_SYSENTER_ESP, 0);
        self.write(fields::GUEST_SYSENTER_EIP, 0);
        if self.controls.pat {
            self.write(fields::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
        }
        for i in 0..4 {
            self.write(fields::GUEST_PDPTE0 + 2 * i, 0);
        }
        self.write(fields::ENTRY_INTERRUPTION_INFO, 0);
        let proc = self.read(fields::PROC_BASED_CONTROLS);
        self.write(
            fields::PROC_BASED_CONTROLS,
            proc & !u64::from(capabilities::proc::INTERRUPT_WINDOW_EXITING),
        );
        for i in 0..SWITCHED_MSRS.len() {
            self.msr_area.as_mut_slice()[i * 16 + 8..i * 16 + 16].fill(0);
        }
        self.xstate.reset();
        self.debug = Default::default();
        self.gprs.cr2 = 0;
        self.pdptes_stale = false;
        // After RESET, EDX holds the processor signature.
        self.gprs = VmxGprs {
            rdx: crate::host_cpu::cpuid(1).eax.into(),
            ..VmxGprs::default()
        };
        // The guest's own TLB entries are stale.
        self.flush_guest_tlb();
        // The guest's TSC starts near zero, as after a power-on.
        self.set_tsc_offset(crate::vcpu::msr_host_tsc().wrapping_neg());
    }

    fn extended_state(&self) -> Option<&crate::xstate::ExtendedState> {
        Some(&self.xstate)
    }

    fn tsc_offset(&self) -> u64 {
        if self.controls.proc & capabilities::proc::USE_TSC_OFFSETTING != 0 {
            self.read(fields::TSC_OFFSET)
        } else {
            0
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        if self.controls.proc & capabilities::proc::USE_TSC_OFFSETTING == 0 {
            return false;
        }
        self.write(fields::TSC_OFFSET, offset);
        true
    }

    fn request_nmi_window(&mut self, on: bool) {
        if !self.controls.nmi_window {
            return;
        }
        let proc = self.read(fields::PROC_BASED_CONTROLS);
        let bit = u64::from(capabilities::proc::NMI_WINDOW_EXITING);
        let wanted = if on { proc | bit } else { proc & !bit };
        if wanted != proc {
            self.write(fields::PROC_BASED_CONTROLS, wanted);
        }
    }

    fn set_pause_exiting(&mut self, on: bool) {
        let proc = self.read(fields::PROC_BASED_CONTROLS) as u32;
        let proc2 = self.read(fields::SECONDARY_CONTROLS) as u32;
        let (p, p2) = self.controls.with_pause_exiting(proc, proc2, on);
        if p != proc {
            self.write(fields::PROC_BASED_CONTROLS, p.into());
        }
        if p2 != proc2 {
            self.write(fields::SECONDARY_CONTROLS, p2.into());
        }
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let proc = self.read(fields::PROC_BASED_CONTROLS);
        let bit = u64::from(capabilities::proc::INTERRUPT_WINDOW_EXITING);
        let wanted = if on || !self.controls.interrupt_window_optional {
            proc | bit
        } else {
            proc & !bit
        };
        if wanted != proc {
            self.write(fields::PROC_BASED_CONTROLS, wanted);
        }
    }
}
