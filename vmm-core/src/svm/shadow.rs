//! SVM with shadow paging instead of nested paging.
//!
//! Nested paging is off; the VMCB's CR3 holds the root of the
//! [`ShadowPager`]'s current tree, and the guest's own CR0, CR3, CR4 and EFER
//! live here. The VMCB intercepts CR0/CR3/CR4 reads and writes, INVLPG and
//! #PF. What the hardware runs with:
//!
//! - CR0: the guest's, with PG and WP always set (paging is on even when the
//!   guest's is off: SVM allows PG without PE, "paged real mode"; WP so that
//!   read-only shadow entries hold against the supervisor too);
//! - CR4: the guest's with PAE set (every non-4-level guest runs on PAE
//!   shadow tables) and PGE clear (shadow entries are never global);
//! - EFER: the guest's, with LME and LMA both set only while the guest's
//!   long mode is active (LME with paging on), so a guest that has set LME
//!   but not yet enabled paging runs in legacy PAE mode;
//! - CR3: the shadow root (below 4 GiB for a PAE tree, as legacy CR3 is 32
//!   bits).
//!
//! Without decode assists (QEMU's TCG has none) the intercepted
//! instructions are decoded from guest memory
//! ([`crate::shadow_paging::decode_intercepted`]).

#![forbid(unsafe_code)]

use super::{offset, ExitCode, SvmError, SvmVcpu, EFER_LMA, EFER_SVME};
use crate::emulator::{CpuState, Exception, Hints};
use crate::paging::{
    ControlRegisters, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP,
    EFER_LME,
};
use crate::shadow_paging::{
    decode_intercepted, FaultOutcome, GuestFault, Intercepted, ShadowConfig, ShadowError,
    ShadowFormat, ShadowStats, SharedPager,
};
use crate::vcpu::{ControlAccess, Exit, ExitError, ShadowPagingBackend};
use crate::vm::Vm;
use alloc::format;
use alloc::string::ToString;

const CR0_TS: u64 = 1 << 3;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR4_PGE: u64 = 1 << 7;

/// VMEXIT_EXCP_PF: the #PF intercept.
const EXIT_EXCP_PF: ExitCode = ExitCode::Exception(14);
const INTERCEPT_INVLPG: u32 = 1 << 25;
/// Reads (bits 0-15) and writes (bits 16-31) of CR0, CR3 and CR4.
const INTERCEPT_CR_SHADOW: u32 = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 16) | (1 << 19) | (1 << 20);
const INTERCEPT_EXCEPTION_PF: u32 = 1 << 14;

/// The guest's view of its paging registers, and the pager (shared with
/// the VM's other vCPUs, see [`SharedPager`]).
pub(super) struct ShadowState {
    pager: SharedPager,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    /// CR2 of the last #PF injected: an intercepted fault during its
    /// delivery (an unfilled IDT or stack page) may leave another address
    /// in the VMCB's CR2, and the re-delivered #PF must carry this one.
    injected_cr2: u64,
}

impl ShadowState {
    fn control(&self) -> ControlRegisters {
        ControlRegisters {
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer,
        }
    }
}

/// The CR4 bits a guest may set: the architectural basics, plus what the
/// host CPU has of OSXSAVE, FSGSBASE, SMEP, SMAP and UMIP (the hardware
/// runs with them). PCIDE, LA57, PKE and VMXE are refused.
pub(super) fn cr4_allowed() -> u64 {
    let mut allowed = 0x7ff; // VME..OSXMMEXCPT
    let leaf1 = crate::host_cpu::cpuid(1);
    if leaf1.ecx & (1 << 26) != 0 {
        allowed |= 1 << 18;
    }
    let max = crate::host_cpu::cpuid(0).eax;
    if max >= 7 {
        let leaf7 = crate::host_cpu::cpuid_count(7, 0);
        if leaf7.ebx & 1 != 0 {
            allowed |= 1 << 16;
        }
        if leaf7.ebx & (1 << 7) != 0 {
            allowed |= CR4_SMEP;
        }
        if leaf7.ebx & (1 << 20) != 0 {
            allowed |= CR4_SMAP;
        }
        if leaf7.ecx & (1 << 2) != 0 {
            allowed |= 1 << 11;
        }
    }
    allowed & !CR4_PKE
}

impl SvmVcpu {
    /// A vCPU of `vm` in the reset state that runs with shadow paging
    /// (nested paging off), its shadow tables within `config`'s budget.
    pub fn new_shadow(
        svm: &super::Svm,
        vm: &Vm,
        asid: u32,
        config: ShadowConfig,
    ) -> Result<Self, SvmError> {
        Self::new_shadow_sharing(svm, vm, asid, SharedPager::new(config))
    }

    /// A vCPU of `vm` like [`SvmVcpu::new_shadow`] on `pager`: another
    /// vCPU's pager ([`SvmVcpu::shadow_pager`] and [`SharedPager::share`])
    /// for a VM with several, so that a page-table write by any of them
    /// reaches every vCPU's shadow trees.
    pub fn new_shadow_sharing(
        svm: &super::Svm,
        vm: &Vm,
        asid: u32,
        pager: SharedPager,
    ) -> Result<Self, SvmError> {
        let mut me = Self::new(svm, vm, asid)?;
        me.vmcb.write_u64(offset::NP_ENABLE, 0);
        me.vmcb.write_u32(offset::INTERCEPT_CR, INTERCEPT_CR_SHADOW);
        let exceptions = me.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
        me.vmcb.write_u32(
            offset::INTERCEPT_EXCEPTIONS,
            exceptions | INTERCEPT_EXCEPTION_PF,
        );
        let misc = me.vmcb.read_u32(offset::INTERCEPT_MISC1);
        me.vmcb
            .write_u32(offset::INTERCEPT_MISC1, misc | INTERCEPT_INVLPG);
        me.shadow = Some(ShadowState {
            pager,
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            injected_cr2: 0,
        });
        me.shadow_reset();
        Ok(me)
    }

    /// Whether this vCPU runs with shadow paging.
    pub fn uses_shadow_paging(&self) -> bool {
        self.shadow.is_some()
    }

    /// The shadow pager's counters (`None` with nested paging).
    pub fn shadow_stats(&self) -> Option<ShadowStats> {
        self.shadow.as_ref().map(|s| s.pager.lock().stats())
    }

    /// This vCPU's handle on its shadow pager (`None` with nested paging),
    /// to [`SharedPager::share`] with a sibling.
    pub fn shadow_pager(&self) -> Option<&SharedPager> {
        self.shadow.as_ref().map(|s| &s.pager)
    }

    /// The guest's paging registers, with shadow paging.
    pub(super) fn shadow_control(&self) -> Option<ControlRegisters> {
        self.shadow.as_ref().map(ShadowState::control)
    }

    /// After the VMCB went to its reset state: take the guest's registers
    /// from it and empty every shadow tree.
    pub(super) fn shadow_reset(&mut self) {
        let cr0 = self.vmcb.read_u64(offset::CR0);
        let efer = self.vmcb.read_u64(offset::EFER) & !EFER_SVME;
        if let Some(s) = self.shadow.as_mut() {
            s.cr0 = cr0;
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = efer;
            s.pager.lock().flush_all();
        }
    }

    /// Before VMRUN: the shadow root for the guest's registers, and the
    /// registers the hardware runs with.
    pub(super) fn shadow_enter(&mut self, vm: &Vm) -> Result<(), ExitError> {
        let Some(s) = self.shadow.as_mut() else {
            return Ok(());
        };
        let control = s.control();
        let (root, format) = s
            .pager
            .lock()
            .ensure(vm.host(), &control, vm.memory())
            .map_err(|e| ExitError::EntryFailed {
                detail: format!("shadow paging: {e}"),
            })?;
        if format == ShadowFormat::Pae && root.0 >> 32 != 0 {
            return Err(ExitError::EntryFailed {
                detail: format!("PAE shadow root {:#x} above 4 GiB", root.0),
            });
        }
        let cr0 = s.cr0 | CR0_PG | CR0_WP;
        let cr4 = (s.cr4 | CR4_PAE) & !CR4_PGE;
        let long = s.efer & EFER_LMA != 0;
        let mut efer = (s.efer & !(EFER_LME | EFER_LMA)) | EFER_SVME;
        if long {
            efer |= EFER_LME | EFER_LMA;
        }
        let flush = s.pager.lock().take_tlb_flush();
        self.vmcb.write_u64(offset::CR0, cr0);
        self.vmcb.write_u64(offset::CR4, cr4);
        self.vmcb.write_u64(offset::EFER, efer);
        self.vmcb.write_u64(offset::CR3, root.0);
        if flush {
            self.vmcb.write_u8(offset::TLB_CONTROL, 3);
        }
        Ok(())
    }

    /// Decode the exits only shadow paging has: #PF, CR accesses, INVLPG.
    /// `None` for every other exit (and with nested paging).
    pub(super) fn shadow_exit(&mut self, vm: &mut Vm) -> Option<Exit> {
        self.shadow.as_ref()?;
        let code = ExitCode::from_raw(self.vmcb.read_u64(offset::EXIT_CODE));
        if !matches!(
            code,
            ExitCode::CrRead(_) | ExitCode::CrWrite(_) | EXIT_EXCP_PF | ExitCode::Invlpg
        ) {
            return None;
        }
        let info1 = self.vmcb.read_u64(offset::EXIT_INFO1);
        let info2 = self.vmcb.read_u64(offset::EXIT_INFO2);
        // An event whose delivery the exit interrupted (a #PF while the CPU
        // pushed an interrupt frame) is delivered again on the next entry.
        let int_info = self.vmcb.read_u64(offset::EXIT_INT_INFO);
        if int_info & (1 << 31) != 0 {
            self.vmcb.write_u64(offset::EVENT_INJ, int_info);
            // An exception (type 3) with vector 14: restore its CR2.
            if int_info & 0x7ff == (3 << 8) | 14 {
                let cr2 = self.shadow.as_ref().map_or(0, |s| s.injected_cr2);
                self.vmcb.write_u64(offset::CR2, cr2);
            }
        }
        if code == EXIT_EXCP_PF {
            return Some(Exit::PageFault {
                address: info2,
                error_code: info1 as u32,
            });
        }
        let cr0 = self.shadow.as_ref().map_or(0, |s| s.cr0);
        Some(match decode_intercepted(&*self, vm.memory_mut()) {
            Ok(i) => {
                let next_rip = i.next_rip;
                let write = |cr, value| Exit::ControlRegister {
                    access: ControlAccess::Write { cr, value },
                    next_rip,
                };
                match i.kind {
                    Intercepted::MovToCr { cr, value } => write(cr, value),
                    Intercepted::MovFromCr { cr, gpr } => Exit::ControlRegister {
                        access: ControlAccess::Read { cr, gpr },
                        next_rip,
                    },
                    Intercepted::Clts => write(0, cr0 & !CR0_TS),
                    // LMSW loads PE, MP, EM, TS but cannot clear PE.
                    Intercepted::Lmsw { value } => {
                        write(0, (cr0 & !0xe) | (u64::from(value) & 0xf))
                    }
                    Intercepted::Invlpg { linear } => Exit::Invlpg { linear, next_rip },
                    // SMSW stores the guest's CR0 (the emulator reads it
                    // through `CpuState::control`, the shadow's copy).
                    Intercepted::Smsw => Exit::Emulate {
                        gpa: None,
                        hints: Hints::default(),
                    },
                }
            }
            Err(e) => Exit::Error(ExitError::Unhandled {
                code: code.raw(),
                detail: e.to_string(),
            }),
        })
    }

    /// Resolve a shadow page fault.
    pub(super) fn shadow_fault(
        &mut self,
        vm: &mut Vm,
        fault: GuestFault,
    ) -> Result<FaultOutcome, ShadowError> {
        let Some(s) = self.shadow.as_mut() else {
            return Ok(FaultOutcome::Reflect(crate::paging::PageFault {
                address: fault.address,
                error_code: fault.error_code,
            }));
        };
        let control = s.control();
        let (host, memory) = vm.host_and_memory_mut();
        let mut out = s.pager.lock().handle_fault(host, memory, &control, fault);
        // A guest #PF met while the CPU delivered another event (the event
        // is queued again from EXITINTINFO): as the CPU would, a #PF during
        // a #PF becomes #DF, a #PF during #DF is a triple fault, and any
        // other event gives way to the #PF.
        let pending = self.vmcb.read_u64(offset::EVENT_INJ);
        if let (Ok(FaultOutcome::Reflect(_)), true) = (&out, pending & (1 << 31) != 0) {
            let exception = pending & 0x700 == 0x300;
            match pending & 0xff {
                14 if exception => {
                    // #DF with error code 0; CR2 holds the second fault's
                    // address, as the CPU loads it when it detects that
                    // fault.
                    self.vmcb
                        .write_u64(offset::EVENT_INJ, 8 | (3 << 8) | (1 << 11) | (1 << 31));
                    self.vmcb.write_u64(offset::CR2, fault.address);
                    if let Some(s) = self.shadow.as_mut() {
                        s.injected_cr2 = fault.address;
                    }
                    out = Ok(FaultOutcome::Filled);
                }
                8 if exception => {
                    out = Err(ShadowError::TripleFault {
                        address: fault.address,
                    });
                }
                _ => self.vmcb.write_u64(offset::EVENT_INJ, 0),
            }
        }
        log::trace!(
            "shadow #PF at {:#x} code {:#x} rip {:#x} cr2 {:#x} inj {:#x}: {out:?}",
            fault.address,
            fault.error_code,
            self.vmcb.read_u64(offset::RIP),
            self.vmcb.read_u64(offset::CR2),
            self.vmcb.read_u64(offset::EVENT_INJ),
        );
        out
    }

    /// A guest write to CR0, CR3 or CR4, checked as the CPU checks it.
    pub(super) fn shadow_write_cr(&mut self, vm: &Vm, cr: u8, value: u64) -> Result<(), Exception> {
        let gp = Exception::GeneralProtection(0);
        if let Some(s) = self.shadow.as_ref() {
            match cr {
                0 | 4 => s.pager.lock().count_cr_write(),
                2 | 8 => s.pager.lock().count_cr2_cr8(),
                _ => {}
            }
        }
        match cr {
            // QEMU's TCG exits on CR2 and CR8 accesses too.
            2 => {
                self.vmcb.write_u64(offset::CR2, value);
                return Ok(());
            }
            8 if value >> 4 == 0 => {
                let v_intr = self.vmcb.read_u64(offset::V_INTR);
                self.vmcb.write_u64(offset::V_INTR, (v_intr & !0xf) | value);
                return Ok(());
            }
            _ => {}
        }
        let Some(s) = self.shadow.as_mut() else {
            return Err(gp);
        };
        match cr {
            0 => {
                if value >> 32 != 0 {
                    return Err(gp);
                }
                let new = value | CR0_ET;
                if (new & CR0_PG != 0 && new & CR0_PE == 0)
                    || (new & CR0_NW != 0 && new & CR0_CD == 0)
                {
                    return Err(gp);
                }
                let old = s.cr0;
                let paging_on = new & CR0_PG != 0 && old & CR0_PG == 0;
                let paging_off = new & CR0_PG == 0 && old & CR0_PG != 0;
                if paging_on && s.efer & EFER_LME != 0 {
                    if s.cr4 & CR4_PAE == 0 {
                        return Err(gp);
                    }
                    s.efer |= EFER_LMA;
                }
                if paging_off {
                    s.efer &= !EFER_LMA;
                }
                s.cr0 = new;
            }
            3 => {
                // Bit 63 (no-flush with PCIDE) is not stored; PCIDE is never
                // set here, so the low bits are flags.
                s.cr3 = value & !(1 << 63);
                let control = s.control();
                let mut pager = s.pager.lock();
                pager.count_cr3_load();
                pager.activate(vm.host(), &control).map_err(|_| gp)?;
            }
            4 => {
                if value & !cr4_allowed() != 0 {
                    return Err(gp);
                }
                if s.efer & EFER_LMA != 0 && value & CR4_PAE == 0 {
                    return Err(gp);
                }
                let changed = s.cr4 ^ value;
                if changed & (CR4_PGE | CR4_PSE | CR4_PAE | CR4_SMEP | CR4_SMAP) != 0 {
                    // Architecturally a flush of every TLB entry, global
                    // ones included (Linux toggles PGE for exactly that).
                    // The shadow trees are never stale (guest page tables
                    // are write-protected), and PSE/PAE/SMEP/SMAP select
                    // other roots, so the cached trees stay; only the
                    // hardware TLB is flushed.
                    s.pager.lock().request_tlb_flush();
                }
                s.cr4 = value;
            }
            _ => return Err(gp),
        }
        Ok(())
    }

    /// Remember the CR2 of an injected #PF (see `ShadowState::injected_cr2`).
    pub(super) fn shadow_note_cr2(&mut self, cr2: u64) {
        if let Some(s) = self.shadow.as_mut() {
            s.injected_cr2 = cr2;
        }
    }

    /// INVLPG.
    pub(super) fn shadow_invlpg(&mut self, linear: u64) {
        if let Some(s) = self.shadow.as_mut() {
            s.pager.lock().invlpg(linear);
        }
    }

    /// An emulated write to guest memory.
    pub(super) fn shadow_guest_wrote(&mut self, gpa: u64, len: u64) {
        if let Some(s) = self.shadow.as_mut() {
            s.pager.lock().guest_wrote(gpa, len);
        }
    }

    /// Take the guest's paging registers from a restored state (already
    /// checked): every shadow tree is dropped and rebuilt for them.
    pub(super) fn shadow_set_registers(&mut self, r: &crate::vcpu::SystemRegisters) {
        if let Some(s) = self.shadow.as_mut() {
            s.cr0 = r.cr0;
            s.cr3 = r.cr3;
            s.cr4 = r.cr4;
            s.efer = r.efer;
            s.injected_cr2 = r.cr2;
            s.pager.lock().flush_all();
        }
    }

    /// The guest's EFER, with shadow paging.
    pub(super) fn shadow_efer(&self) -> Option<u64> {
        self.shadow.as_ref().map(|s| s.efer)
    }

    /// WRMSR EFER with shadow paging: `value` already checked for reserved
    /// bits; LME may not change while paging is on.
    pub(super) fn shadow_set_efer(&mut self, value: u64, writable: u64) -> bool {
        let Some(s) = self.shadow.as_mut() else {
            return false;
        };
        match super::consistency::efer_write(s.efer, s.cr0, value, writable, false) {
            Ok(efer) => {
                s.efer = efer;
                true
            }
            Err(_) => false,
        }
    }
}

/// The shadow-paging hooks of the exit loop; [`SvmVcpu`] offers them
/// (through [`crate::vcpu::VcpuBackend::shadow_paging`]) only when it was
/// made with [`SvmVcpu::new_shadow`].
impl ShadowPagingBackend for SvmVcpu {
    fn page_fault(&mut self, vm: &mut Vm, fault: GuestFault) -> Result<FaultOutcome, ShadowError> {
        self.shadow_fault(vm, fault)
    }

    fn write_control_register(&mut self, vm: &mut Vm, cr: u8, value: u64) -> Result<(), Exception> {
        self.shadow_write_cr(vm, cr, value)
    }

    fn read_control_register(&self, cr: u8) -> Option<u64> {
        let c = self.control();
        match (self.shadow.as_ref(), cr) {
            (Some(s), 0 | 3 | 4) => s.pager.lock().count_cr_read(),
            (Some(s), 2 | 8) => s.pager.lock().count_cr2_cr8(),
            _ => {}
        }
        match cr {
            0 => Some(c.cr0),
            2 => Some(self.vmcb.read_u64(offset::CR2)),
            3 => Some(c.cr3),
            4 => Some(c.cr4),
            // CR8 is the TPR: V_TPR, bits 3:0 of V_INTR.
            8 => Some(self.vmcb.read_u64(offset::V_INTR) & 0xf),
            _ => None,
        }
    }

    fn invalidate_page(&mut self, linear: u64) {
        self.shadow_invlpg(linear);
    }

    fn guest_wrote(&mut self, gpa: u64, len: u64) {
        self.shadow_guest_wrote(gpa, len);
    }
}
