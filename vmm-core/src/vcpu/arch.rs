//! The architectural state of a vCPU beyond what the emulator needs
//! ([`crate::emulator::CpuState`]): system registers (segments with their
//! hidden parts, LDTR, TR, GDTR, IDTR, CR0/2/3/4/8, EFER), debug
//! registers, the whole x87/SSE/AVX image with XCR0, and the event state
//! (an injected event not yet delivered, the interrupt shadow, NMI
//! blocking). [`ArchState`] reads and writes them on every backend, so a
//! vCPU can be saved whole ([`super::VcpuState`]) and rebuilt on a fresh
//! vCPU of any backend.
//!
//! Setters check first and change nothing when they refuse: a value the
//! hardware would refuse at the next entry is an [`ArchStateError`] here,
//! never a failed VMRUN or VM entry later. The rules are the same on every
//! backend ([`check_system_registers`], [`check_debug_registers`],
//! [`check_event_state`], [`check_xsave_image`]), so a state one backend
//! accepts another accepts too (as far as the CPUs offer the same
//! features).

use super::VcpuBackend;
use crate::emulator::{DescriptorTable, SegmentRegister};
use crate::paging::{CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// CR0.NW.
const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
const CR0_CD: u64 = 1 << 30;
/// EFER bits that can be set in a saved state: SCE, LME, LMA, NXE, FFXSR.
pub const EFER_VALID: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 14);
/// DR6 bits that always read as 1 (bits 4-11 and 16-31 with bit 12 as
/// the CPU reports it; RTM's bit 16 is read as set on CPUs without RTM).
pub const DR6_FIXED_ONE: u64 = 0xffff_0ff0;
/// DR7 bit 10, always 1.
pub const DR7_FIXED_ONE: u64 = 1 << 10;
/// Size of the legacy (FXSAVE) region of an XSAVE image.
pub const XSAVE_LEGACY_SIZE: usize = 512;
/// Size of the legacy region plus the XSAVE header.
pub const XSAVE_MIN_SIZE: usize = 576;

/// The system registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRegisters {
    /// ES, CS, SS, DS, FS, GS (see [`crate::emulator::Segment::ALL`]).
    pub segments: [SegmentRegister; 6],
    /// LDTR.
    pub ldtr: SegmentRegister,
    /// TR.
    pub tr: SegmentRegister,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0 as the guest sees it.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3 as the guest sees it.
    pub cr3: u64,
    /// CR4 as the guest sees it.
    pub cr4: u64,
    /// CR8 (TPR bits 7:4), where the backend keeps it; 0 on a backend
    /// whose CR8 is the emulated local APIC's TPR (saved with the device).
    pub cr8: u64,
    /// IA32_EFER as the guest sees it.
    pub efer: u64,
}

/// The debug registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRegisters {
    /// DR0-DR3.
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
}

impl Default for DebugRegisters {
    /// The power-on values.
    fn default() -> Self {
        Self {
            dr: [0; 4],
            dr6: DR6_FIXED_ONE,
            dr7: DR7_FIXED_ONE,
        }
    }
}

/// What kind of event a [`PendingEvent`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// An external interrupt.
    ExternalInterrupt,
    /// A non-maskable interrupt (vector 2).
    Nmi,
    /// A hardware exception (vector below 32).
    Exception,
    /// A software interrupt (INT n).
    SoftwareInterrupt,
    /// A software exception (INT3, INTO).
    SoftwareException,
}

/// An event injected into the vCPU but not yet delivered: it is delivered
/// at the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEvent {
    /// The kind.
    pub kind: EventKind,
    /// The vector.
    pub vector: u8,
    /// The error code pushed, for exceptions that push one.
    pub error_code: Option<u32>,
    /// The length of the instruction that raised a software interrupt or
    /// exception (1-15), 0 for the other kinds.
    pub instruction_length: u8,
}

/// Interrupt blocking by the instruction just retired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterruptShadow {
    /// None.
    #[default]
    None,
    /// STI: interrupts blocked for one instruction (needs RFLAGS.IF).
    Sti,
    /// MOV SS or POP SS: interrupts, NMIs and debug traps blocked for one
    /// instruction.
    MovSs,
}

/// The vCPU's event state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    /// The event injected and not yet delivered.
    pub pending: Option<PendingEvent>,
    /// The interrupt shadow.
    pub interrupt_shadow: InterruptShadow,
    /// NMIs are blocked (an NMI handler runs, until its IRET).
    pub nmi_blocked: bool,
    /// A single-step trap (#DB with DR6.BS) is due before the next
    /// instruction: the VMM completed an instruction that ran with
    /// RFLAGS.TF. Backends that hold it as a pending #DB event (SVM) report
    /// it there instead; KVM keeps its own.
    pub single_step_pending: bool,
}

/// The x87/SSE/AVX registers and XCR0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveImage {
    /// XCR0.
    pub xcr0: u64,
    /// The registers in the standard (non-compacted) XSAVE layout: the
    /// 512-byte legacy region (x87, MXCSR, XMM), the 64-byte header
    /// (XSTATE_BV), then the components XSTATE_BV names at their standard
    /// offsets. At least [`XSAVE_MIN_SIZE`] bytes.
    pub area: Vec<u8>,
}

impl XsaveImage {
    /// XSTATE_BV: the components the area holds (others are in their
    /// initial configuration).
    pub fn xstate_bv(&self) -> u64 {
        self.u64_at(XSAVE_LEGACY_SIZE)
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        let b = self.area.get(24..28).unwrap_or(&[0; 4]);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = self.area.get(at..at + 8) {
            b.copy_from_slice(s);
        }
        u64::from_le_bytes(b)
    }
}

/// A state a setter refuses: which rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchStateError {
    /// CR0: bits 63:32, PG without PE, NW without CD.
    Cr0,
    /// CR3: bits above the physical-address width.
    Cr3,
    /// CR4: a bit the vCPU does not offer.
    Cr4,
    /// CR8 above 15.
    Cr8,
    /// EFER: a bit the vCPU does not offer, or LMA not equal to LME with
    /// paging, or long mode without PAE.
    Efer,
    /// A segment register the entry checks refuse (in long mode a CS with
    /// both L and D).
    Segment,
    /// LDTR or TR: not a present LDT / busy TSS descriptor.
    SystemSegment,
    /// A descriptor-table base that is not canonical.
    DescriptorTable,
    /// DR6 or DR7 with bits 63:32 set, or a DR0-3 address not canonical.
    DebugRegister,
    /// The pending event: a vector its kind cannot have, an error code
    /// where none is pushed, an instruction length out of range, or an
    /// event that cannot be delivered in this state (an interrupt while
    /// IF is clear or in a shadow, an NMI while NMIs are blocked).
    Event,
    /// An STI shadow with RFLAGS.IF clear.
    InterruptShadow,
    /// XCR0 the vCPU does not offer.
    Xcr0,
    /// The XSAVE image: too short for the components it holds, a
    /// component the vCPU does not offer, a reserved header or MXCSR bit.
    Xsave,
    /// The hypervisor refused the state (errno).
    Hypervisor(i32),
}

impl core::fmt::Display for ArchStateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ArchStateError::Cr0 => f.write_str("invalid CR0"),
            ArchStateError::Cr3 => f.write_str("invalid CR3"),
            ArchStateError::Cr4 => f.write_str("invalid CR4"),
            ArchStateError::Cr8 => f.write_str("invalid CR8"),
            ArchStateError::Efer => f.write_str("invalid EFER"),
            ArchStateError::Segment => f.write_str("invalid segment register"),
            ArchStateError::SystemSegment => f.write_str("invalid LDTR or TR"),
            ArchStateError::DescriptorTable => f.write_str("invalid GDTR or IDTR"),
            ArchStateError::DebugRegister => f.write_str("invalid debug register"),
            ArchStateError::Event => f.write_str("invalid pending event"),
            ArchStateError::InterruptShadow => f.write_str("STI shadow with IF clear"),
            ArchStateError::Xcr0 => f.write_str("invalid XCR0"),
            ArchStateError::Xsave => f.write_str("invalid XSAVE image"),
            ArchStateError::Hypervisor(errno) => {
                write!(f, "the hypervisor refused (errno {errno})")
            }
        }
    }
}

impl core::error::Error for ArchStateError {}

/// What a vCPU's CPU model allows, for the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// CR4 bits the vCPU may set.
    pub cr4_allowed: u64,
    /// EFER bits the vCPU may set (LMA included).
    pub efer_allowed: u64,
    /// The physical-address width.
    pub max_phys_bits: u8,
}

impl StateLimits {
    /// What a vCPU on the CPU this runs on may use, CR4 and EFER limited to
    /// `cr4_allowed` and `efer_allowed`.
    pub fn new(cr4_allowed: u64, efer_allowed: u64, max_phys_bits: u8) -> Self {
        Self {
            cr4_allowed,
            efer_allowed: (efer_allowed | EFER_LMA) & EFER_VALID,
            max_phys_bits: max_phys_bits.clamp(32, 52),
        }
    }
}

/// Whether `v` is a canonical 48-bit address.
fn canonical(v: u64) -> bool {
    ((v as i64) << 16 >> 16) as u64 == v
}

/// The checks every backend makes before it takes `r`.
pub fn check_system_registers(
    r: &SystemRegisters,
    limits: &StateLimits,
) -> Result<(), ArchStateError> {
    let cr0 = r.cr0;
    if cr0 >> 32 != 0
        || (cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0)
        || (cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0)
    {
        return Err(ArchStateError::Cr0);
    }
    if r.cr4 & !limits.cr4_allowed != 0 {
        return Err(ArchStateError::Cr4);
    }
    if r.cr8 > 15 {
        return Err(ArchStateError::Cr8);
    }
    let long = r.efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
    if r.efer & !limits.efer_allowed != 0
        || (r.efer & EFER_LMA != 0) != long
        || (long && r.cr4 & CR4_PAE == 0)
    {
        return Err(ArchStateError::Efer);
    }
    if (r.cr3 & !(1 << 63)) >> limits.max_phys_bits != 0 {
        return Err(ArchStateError::Cr3);
    }
    let cs = r.segments[crate::emulator::Segment::Cs as usize];
    if long && cs.long() && cs.default_big() {
        return Err(ArchStateError::Segment);
    }
    if r.segments.iter().any(|s| !canonical(s.base)) {
        return Err(ArchStateError::Segment);
    }
    // LDTR: unusable (not present) or a present LDT; TR: a present TSS,
    // 16-bit only outside long mode. (An available TSS type is what SVM
    // leaves after firmware loads TR by hand; VMX takes it as busy.)
    let ldtr_ok = !r.ldtr.present() || (r.ldtr.segment_type() == 2 && !r.ldtr.is_code_or_data());
    let tr_type = r.tr.segment_type();
    let tr_ok = r.tr.present()
        && !r.tr.is_code_or_data()
        && (matches!(tr_type, 9 | 11) || (matches!(tr_type, 1 | 3) && !long));
    if !ldtr_ok || !tr_ok || !canonical(r.ldtr.base) || !canonical(r.tr.base) {
        return Err(ArchStateError::SystemSegment);
    }
    if !canonical(r.gdtr.base) || !canonical(r.idtr.base) {
        return Err(ArchStateError::DescriptorTable);
    }
    Ok(())
}

/// The checks every backend makes before it takes `d`.
pub fn check_debug_registers(d: &DebugRegisters) -> Result<(), ArchStateError> {
    if d.dr6 >> 32 != 0 || d.dr7 >> 32 != 0 || d.dr.iter().any(|a| !canonical(*a)) {
        return Err(ArchStateError::DebugRegister);
    }
    Ok(())
}

/// The checks every backend makes before it takes `e`, for a vCPU whose
/// RFLAGS is `rflags` and CR0 `cr0`.
pub fn check_event_state(e: &EventState, rflags: u64, cr0: u64) -> Result<(), ArchStateError> {
    let interrupts_enabled = rflags & crate::emulator::RFLAGS_IF != 0;
    if e.interrupt_shadow == InterruptShadow::Sti && !interrupts_enabled {
        return Err(ArchStateError::InterruptShadow);
    }
    let Some(p) = e.pending else {
        return Ok(());
    };
    let protected = cr0 & CR0_PE != 0;
    let pushes_code = matches!(p.vector, 8 | 10..=14 | 17 | 21);
    let ok = match p.kind {
        EventKind::ExternalInterrupt => {
            interrupts_enabled && e.interrupt_shadow == InterruptShadow::None
        }
        EventKind::Nmi => {
            p.vector == 2 && !e.nmi_blocked && e.interrupt_shadow == InterruptShadow::None
        }
        EventKind::Exception => p.vector < 32 && p.vector != 2,
        EventKind::SoftwareInterrupt => (1..=15).contains(&p.instruction_length),
        EventKind::SoftwareException => {
            matches!(p.vector, 3 | 4) && (1..=15).contains(&p.instruction_length)
        }
    };
    let code_ok = match p.error_code {
        None => true,
        Some(_) => p.kind == EventKind::Exception && pushes_code && protected,
    };
    let length_ok = matches!(
        p.kind,
        EventKind::SoftwareInterrupt | EventKind::SoftwareException
    ) || p.instruction_length == 0;
    if ok && code_ok && length_ok {
        Ok(())
    } else {
        Err(ArchStateError::Event)
    }
}

/// The checks every backend makes before it takes `x`, for a vCPU whose
/// extended state holds the components `supported` (XCR0 bits it may set;
/// their standard offsets and sizes from `component_end(i)`, the end of
/// component `i` in the area).
pub fn check_xsave_image(
    x: &XsaveImage,
    valid_xcr0: impl Fn(u64) -> bool,
    supported: u64,
    component_end: impl Fn(u32) -> usize,
) -> Result<(), ArchStateError> {
    if !valid_xcr0(x.xcr0) {
        return Err(ArchStateError::Xcr0);
    }
    if x.area.len() < XSAVE_MIN_SIZE {
        return Err(ArchStateError::Xsave);
    }
    let bv = x.xstate_bv();
    // XCOMP_BV and the rest of the header must be zero (XRSTOR #GP).
    let header_rest = x.area[XSAVE_LEGACY_SIZE + 8..XSAVE_MIN_SIZE]
        .iter()
        .any(|b| *b != 0);
    // MXCSR bits above 15 are reserved (MXCSR_MASK is 0xffff on 64-bit
    // CPUs, DAZ included).
    if header_rest || bv & !supported != 0 || x.mxcsr() >> 16 != 0 {
        return Err(ArchStateError::Xsave);
    }
    for i in 2..64 {
        if bv & (1 << i) != 0 && x.area.len() < component_end(i) {
            return Err(ArchStateError::Xsave);
        }
    }
    Ok(())
}

/// Backend-neutral access to the whole architectural state of a vCPU,
/// implemented by every backend (SVM, VMX, KVM and the test vCPUs).
pub trait ArchState: VcpuBackend {
    /// The system registers.
    fn system_registers(&self) -> SystemRegisters;
    /// Set the system registers; nothing changes on `Err`.
    fn set_system_registers(&mut self, r: &SystemRegisters) -> Result<(), ArchStateError>;
    /// The debug registers.
    fn debug_registers(&self) -> DebugRegisters;
    /// Set the debug registers; nothing changes on `Err`.
    fn set_debug_registers(&mut self, d: &DebugRegisters) -> Result<(), ArchStateError>;
    /// The event state.
    fn event_state(&self) -> EventState;
    /// Set the event state (after RFLAGS and CR0, which it is checked
    /// against); nothing changes on `Err`.
    fn set_event_state(&mut self, e: &EventState) -> Result<(), ArchStateError>;
    /// The x87/SSE/AVX registers and XCR0.
    fn xsave_image(&self) -> XsaveImage;
    /// Set them; nothing changes on `Err`.
    fn set_xsave_image(&mut self, x: &XsaveImage) -> Result<(), ArchStateError>;
    /// Finish what the backend has half done (the result of a device read
    /// it hands to the guest at the next entry), so the registers read
    /// now are the whole state. The default has nothing to finish.
    fn settle(&mut self) -> Result<(), ArchStateError> {
        Ok(())
    }
}
