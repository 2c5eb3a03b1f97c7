//! [`ArchState`] for [`KvmVcpu`]: KVM_GET/SET_SREGS, DEBUGREGS,
//! VCPU_EVENTS, XSAVE and XCRS. Every setter hands its state to KVM at
//! once, so what KVM refuses is an error of the setter, not of the next
//! KVM_RUN.

use super::vcpu::{kvm_segment_from, segment_of, KvmVcpu};
use kvm_bindings::{
    kvm_debugregs, kvm_xcrs, kvm_xsave, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SHADOW, KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI,
};
use vmm_core::emulator::{CpuState, DescriptorTable, Segment};
use vmm_core::vcpu::{
    check_debug_registers, check_event_state, check_system_registers, check_xsave_image, ArchState,
    ArchStateError, DebugRegisters, EventKind, EventState, InterruptShadow, PendingEvent,
    StateLimits, SystemRegisters, XsaveImage,
};

/// IA32_PAT.
const MSR_PAT: u32 = 0x277;

/// Bytes of KVM_GET/SET_XSAVE's area.
const KVM_XSAVE_SIZE: usize = 4096;

fn hypervisor(e: kvm_ioctls::Error) -> ArchStateError {
    ArchStateError::Hypervisor(e.errno())
}

/// The host's physical-address width.
fn max_phys_bits() -> u8 {
    if core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax as u8
    } else {
        36
    }
}

/// Whether the host CPU has XSAVE (CPUID.1:ECX bit 26).
fn host_has_xsave() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 26) != 0
}

/// Where XSAVE component `i` ends in the standard layout, per the host.
fn component_end(i: u32) -> usize {
    let leaf = core::arch::x86_64::__cpuid_count(0xd, i);
    leaf.ebx as usize + leaf.eax as usize
}

impl KvmVcpu {
    fn events(&self) -> Result<kvm_bindings::kvm_vcpu_events, ArchStateError> {
        self.vcpu.get_vcpu_events().map_err(hypervisor)
    }
}

impl ArchState for KvmVcpu {
    fn system_registers(&self) -> SystemRegisters {
        let s = self.sregs();
        SystemRegisters {
            segments: Segment::ALL.map(|seg| self.segment(seg)),
            ldtr: segment_of(&s.ldt),
            tr: segment_of(&s.tr),
            gdtr: DescriptorTable {
                base: s.gdt.base,
                limit: s.gdt.limit,
            },
            idtr: DescriptorTable {
                base: s.idt.base,
                limit: s.idt.limit,
            },
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
        }
    }

    fn set_system_registers(&mut self, r: &SystemRegisters) -> Result<(), ArchStateError> {
        // KVM checks CR4 and EFER against its CPUID itself.
        let limits = StateLimits::new(0xffff_ffff, !0, max_phys_bits());
        check_system_registers(r, &limits)?;
        let mut s = self.sregs();
        let [es, cs, ss, ds, fs, gs] = r.segments.map(|seg| kvm_segment_from(&seg));
        (s.es, s.cs, s.ss, s.ds, s.fs, s.gs) = (es, cs, ss, ds, fs, gs);
        s.ldt = kvm_segment_from(&r.ldtr);
        s.tr = kvm_segment_from(&r.tr);
        s.gdt.base = r.gdtr.base;
        s.gdt.limit = r.gdtr.limit;
        s.idt.base = r.idtr.base;
        s.idt.limit = r.idtr.limit;
        s.cr0 = r.cr0;
        s.cr2 = r.cr2;
        s.cr3 = r.cr3;
        s.cr4 = r.cr4;
        s.cr8 = r.cr8;
        s.efer = r.efer;
        // A pending interrupt is the event state's, not this.
        s.interrupt_bitmap = [0; 4];
        self.vcpu.set_sregs(&s).map_err(hypervisor)?;
        *self.sregs.get_mut() = Some(s);
        self.sregs_dirty = false;
        self.stale_interrupt_state = true;
        Ok(())
    }

    fn debug_registers(&self) -> DebugRegisters {
        match self.vcpu.get_debug_regs() {
            Ok(d) => DebugRegisters {
                dr: d.db,
                dr6: d.dr6,
                dr7: d.dr7,
            },
            Err(e) => {
                log::warn!("KVM_GET_DEBUGREGS: {e}");
                DebugRegisters::default()
            }
        }
    }

    fn set_debug_registers(&mut self, d: &DebugRegisters) -> Result<(), ArchStateError> {
        check_debug_registers(d)?;
        let regs = kvm_debugregs {
            db: d.dr,
            dr6: d.dr6,
            dr7: d.dr7,
            ..Default::default()
        };
        self.vcpu.set_debug_regs(&regs).map_err(hypervisor)
    }

    fn event_state(&self) -> EventState {
        let Ok(e) = self.events() else {
            return EventState::default();
        };
        let pending = if e.exception.injected != 0 || e.exception.pending != 0 {
            Some(PendingEvent {
                kind: EventKind::Exception,
                vector: e.exception.nr,
                error_code: (e.exception.has_error_code != 0).then_some(e.exception.error_code),
                instruction_length: 0,
            })
        } else if e.nmi.injected != 0 || e.nmi.pending != 0 {
            Some(PendingEvent {
                kind: EventKind::Nmi,
                vector: 2,
                error_code: None,
                instruction_length: 0,
            })
        } else if e.interrupt.injected != 0 {
            let soft = e.interrupt.soft != 0;
            Some(PendingEvent {
                kind: if soft {
                    EventKind::SoftwareInterrupt
                } else {
                    EventKind::ExternalInterrupt
                },
                vector: e.interrupt.nr,
                error_code: None,
                // KVM re-executes INT n itself; the length is INT n's.
                instruction_length: if soft { 2 } else { 0 },
            })
        } else {
            None
        };
        let shadow = u32::from(e.interrupt.shadow);
        EventState {
            pending,
            interrupt_shadow: if shadow & KVM_X86_SHADOW_INT_MOV_SS != 0 {
                InterruptShadow::MovSs
            } else if shadow & KVM_X86_SHADOW_INT_STI != 0 {
                InterruptShadow::Sti
            } else {
                InterruptShadow::None
            },
            nmi_blocked: e.nmi.masked != 0,
            single_step_pending: false,
        }
    }

    fn set_event_state(&mut self, state: &EventState) -> Result<(), ArchStateError> {
        check_event_state(state, self.rflags(), self.control().cr0)?;
        // RFLAGS must be KVM's before the interrupt shadow is.
        self.flush()
            .map_err(|(_, errno)| ArchStateError::Hypervisor(errno))?;
        let mut e = self.events()?;
        e.exception.injected = 0;
        e.exception.pending = 0;
        e.exception.has_error_code = 0;
        e.exception.error_code = 0;
        e.interrupt.injected = 0;
        e.interrupt.soft = 0;
        e.nmi.injected = 0;
        e.nmi.pending = 0;
        e.exception_has_payload = 0;
        if let Some(p) = state.pending {
            match p.kind {
                EventKind::Exception | EventKind::SoftwareException => {
                    e.exception.injected = 1;
                    e.exception.nr = p.vector;
                    e.exception.has_error_code = u8::from(p.error_code.is_some());
                    e.exception.error_code = p.error_code.unwrap_or(0);
                }
                EventKind::Nmi => e.nmi.injected = 1,
                EventKind::ExternalInterrupt | EventKind::SoftwareInterrupt => {
                    e.interrupt.injected = 1;
                    e.interrupt.nr = p.vector;
                    e.interrupt.soft = u8::from(p.kind == EventKind::SoftwareInterrupt);
                }
            }
        }
        e.interrupt.shadow = match state.interrupt_shadow {
            InterruptShadow::None => 0,
            InterruptShadow::Sti => KVM_X86_SHADOW_INT_STI as u8,
            InterruptShadow::MovSs => KVM_X86_SHADOW_INT_MOV_SS as u8,
        };
        e.nmi.masked = u8::from(state.nmi_blocked);
        e.flags = KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_NMI_PENDING;
        self.vcpu.set_vcpu_events(&e).map_err(hypervisor)?;
        self.injected = state.pending.is_some();
        self.stale_interrupt_state = true;
        Ok(())
    }

    fn xsave_image(&self) -> XsaveImage {
        let mut area = match self.vcpu.get_xsave() {
            Ok(x) => x.region.iter().flat_map(|w| w.to_le_bytes()).collect(),
            Err(e) => {
                log::warn!("KVM_GET_XSAVE: {e}");
                vec![0; KVM_XSAVE_SIZE]
            }
        };
        if self.fpu_dirty {
            // The emulator's register writes not yet handed to KVM.
            let f = self.fpu();
            area[0..2].copy_from_slice(&f.fcw.to_le_bytes());
            area[2..4].copy_from_slice(&f.fsw.to_le_bytes());
            area[4] = f.ftwx;
            area[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
            area[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
            area[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
            area[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
            for (i, r) in f.fpr.iter().enumerate() {
                area[32 + 16 * i..48 + 16 * i].copy_from_slice(r);
            }
            for (i, r) in f.xmm.iter().enumerate() {
                area[160 + 16 * i..176 + 16 * i].copy_from_slice(r);
            }
        }
        let xcr0 = self
            .vcpu
            .get_xcrs()
            .ok()
            .and_then(|x| {
                x.xcrs
                    .iter()
                    .take(x.nr_xcrs as usize)
                    .find(|c| c.xcr == 0)
                    .map(|c| c.value)
            })
            .unwrap_or(1);
        XsaveImage { xcr0, area }
    }

    fn set_xsave_image(&mut self, x: &XsaveImage) -> Result<(), ArchStateError> {
        let valid = |v: u64| v & 1 != 0 && (v & 4 == 0 || v & 2 != 0);
        check_xsave_image(x, valid, !0, component_end)?;
        if x.area.len() > KVM_XSAVE_SIZE && x.area[KVM_XSAVE_SIZE..].iter().any(|b| *b != 0) {
            return Err(ArchStateError::Xsave);
        }
        // A host without XSAVE (KVM in a TCG machine without it) has no
        // XCR0 to set: KVM refuses KVM_SET_XCRS there, and its guests'
        // XCR0 is 1 (x87) for good.
        if x.xcr0 != 1 || host_has_xsave() {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = x.xcr0;
            self.vcpu.set_xcrs(&xcrs).map_err(hypervisor)?;
        }
        let mut xsave = kvm_xsave::default();
        for (i, word) in xsave.region.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            for (j, byte) in b.iter_mut().enumerate() {
                *byte = x.area.get(4 * i + j).copied().unwrap_or(0);
            }
            *word = u32::from_le_bytes(b);
        }
        // SAFETY: KVM_SET_XSAVE (not XSAVE2) reads exactly the 4096-byte
        // region of `kvm_xsave`, which `xsave` holds whole.
        unsafe { self.vcpu.set_xsave(&xsave) }.map_err(hypervisor)?;
        *self.fpu.get_mut() = None;
        self.fpu_dirty = false;
        Ok(())
    }

    fn settle(&mut self) -> Result<(), ArchStateError> {
        if self.access.is_some() {
            self.flush()
                .map_err(|(_, errno)| ArchStateError::Hypervisor(errno))?;
            self.complete_pending_io();
            self.forget_registers();
        }
        Ok(())
    }
}

/// What KVM's power-on registers (`KvmVcpu::reset`) leave as they were:
/// the x87/SSE state (FNINIT's control word 0x37F, MXCSR 0x1F80, every
/// register zero, XCR0 1), the debug registers, the pass-through MSRs
/// (PAT at its power-on value, the others 0) and the TSC (0).
pub(super) fn power_on_extras(vcpu: &mut KvmVcpu) -> Result<(), ArchStateError> {
    use vmm_core::vcpu::VcpuBackend;
    let mut area = vec![0u8; vmm_core::vcpu::XSAVE_MIN_SIZE];
    area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    vcpu.set_xsave_image(&XsaveImage { xcr0: 1, area })?;
    vcpu.set_debug_registers(&DebugRegisters::default())?;
    for msr in vmm_core::vcpu::PASS_THROUGH {
        let value = if msr == MSR_PAT {
            0x0007_0406_0007_0406
        } else {
            0
        };
        vcpu.set_backend_msr(msr, value);
    }
    let tsc = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: vmm_core::vcpu::MSR_TSC,
        data: 0,
        ..Default::default()
    }])
    .map_err(|_| ArchStateError::Hypervisor(libc::E2BIG))?;
    vcpu.vcpu.set_msrs(&tsc).map_err(hypervisor)?;
    Ok(())
}
