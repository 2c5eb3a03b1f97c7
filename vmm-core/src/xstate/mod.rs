//! Extended CPU state (x87, SSE, AVX) per vCPU, and XCR0.
//!
//! Neither VMRUN nor VM entry switches the x87/SSE/AVX registers or XCR0:
//! whatever the last guest left in XMM0 is what the next guest on that CPU
//! finds there, unless the VMM moves it aside. [`ExtendedState`] is that
//! move: each vCPU owns an XSAVE area (an FXSAVE area on CPUs without
//! XSAVE) holding its registers while it does not run, and its own XCR0.
//! The hardware backends call [`ExtendedState::switch_to_guest`] right
//! before every entry and [`ExtendedState::switch_to_host`] right after
//! every exit; in between the host's own state (and XCR0) is back, so a
//! host that uses the FPU keeps working and no guest can see another's
//! registers or the host's.
//!
//! The areas are always saved and restored with the whole *model mask*
//! ([`XstateModel::guest_mask`]: the components a guest may enable), not
//! the guest's current XCR0: a guest that runs with AVX disabled must not
//! find another VM's upper YMM halves when it enables AVX later.
//!
//! The model offers x87, SSE, AVX and the AVX-512 components where the CPU
//! has them; MPX, PKRU, AMX and the supervisor components (XSAVES/IA32_XSS)
//! are not offered. CPUID leaf 0xD and the feature bits that depend on those
//! components follow the model ([`XstateModel::cpuid`]).
//!
//! While a vCPU is not running, the emulator reads and writes its XMM and
//! YMM registers in the saved area ([`ExtendedState::xmm`] and friends),
//! so no register access ever touches another vCPU's state.

#[allow(unsafe_code)]
mod switch;

pub use switch::prepare_host_cpu;

use crate::vcpu::{check_xsave_image, ArchStateError, CpuidResult, XsaveImage, XSAVE_MIN_SIZE};

/// Writes the emulator's view of the extended state
/// ([`crate::emulator::CpuState`]'s XMM, upper-YMM, XCR0 and x87/MMX
/// methods) for a hardware vCPU that keeps its guest's registers in the
/// [`ExtendedState`] field `$field`: the emulator reads and writes the
/// saved area (see the module's documentation). Used inside the
/// backend's `impl CpuState`, by SVM and VMX alike.
macro_rules! extended_state_methods {
    ($field:ident) => {
        fn xmm(&self, index: usize) -> u128 {
            self.$field.xmm(index)
        }
        fn set_xmm(&mut self, index: usize, value: u128) {
            self.$field.set_xmm(index, value)
        }
        fn ymm_upper(&self, index: usize) -> Option<u128> {
            self.$field.ymm_upper(index)
        }
        fn set_ymm_upper(&mut self, index: usize, value: u128) {
            self.$field.set_ymm_upper(index, value)
        }
        fn xcr0(&self) -> Option<u64> {
            Some(self.$field.xcr0())
        }
        fn x87(&self) -> Option<$crate::emulator::X87Registers> {
            Some(self.$field.x87())
        }
        fn set_x87(&mut self, registers: &$crate::emulator::X87Registers) {
            self.$field.set_x87(registers)
        }
    };
}
use alloc::vec;
use alloc::vec::Vec;
pub(crate) use extended_state_methods;

/// XCR0 bit: x87 state (always set).
pub const XCR0_X87: u64 = 1 << 0;
/// XCR0 bit: SSE state (XMM registers, MXCSR).
pub const XCR0_SSE: u64 = 1 << 1;
/// XCR0 bit: AVX state (upper halves of YMM registers).
pub const XCR0_AVX: u64 = 1 << 2;
/// XCR0 bits: AVX-512 state (opmask, ZMM_Hi256, Hi16_ZMM), all or none.
pub const XCR0_AVX512: u64 = 0b111 << 5;
/// The components this VMM can give a guest, where the CPU has them.
pub const MODEL_COMPONENTS: u64 = XCR0_X87 | XCR0_SSE | XCR0_AVX | XCR0_AVX512;

/// Size of the legacy (FXSAVE) region.
const LEGACY_SIZE: usize = 512;
/// Size of the XSAVE header that follows it.
const HEADER_SIZE: usize = 64;
/// Offset of XMM0 in the legacy region.
const XMM_OFFSET: usize = 160;
/// Offset of MXCSR in the legacy region.
const MXCSR_OFFSET: usize = 24;
/// Offset of the x87 control word.
const FCW_OFFSET: usize = 0;
/// Offset of the x87 status word.
const FSW_OFFSET: usize = 2;
/// Offset of the abridged x87 tag word.
const FTW_OFFSET: usize = 4;
/// Offset of the last x87 opcode.
const FOP_OFFSET: usize = 6;
/// Offset of the last x87 instruction pointer (64-bit format).
const FIP_OFFSET: usize = 8;
/// Offset of the last x87 data pointer (64-bit format).
const FDP_OFFSET: usize = 16;
/// Offset of ST0/MM0; each register takes 16 bytes.
const ST_OFFSET: usize = 32;
/// Offset of XSTATE_BV in the XSAVE header.
const XSTATE_BV_OFFSET: usize = LEGACY_SIZE;
/// x87 control word after FNINIT / reset.
const FCW_INIT: u16 = 0x037f;
/// MXCSR after reset.
const MXCSR_INIT: u32 = 0x1f80;

/// CPUID leaf 1 ECX: XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
/// CPUID leaf 1 ECX: OSXSAVE (mirrors CR4.OSXSAVE).
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// CPUID leaf 1 ECX: AVX.
const LEAF1_ECX_AVX: u32 = 1 << 28;
/// CPUID leaf 1 ECX: FMA, F16C: need AVX state.
const LEAF1_ECX_FMA: u32 = 1 << 12;
const LEAF1_ECX_F16C: u32 = 1 << 29;
/// CPUID leaf 7 EBX: AVX2.
const LEAF7_EBX_AVX2: u32 = 1 << 5;
/// CPUID leaf 7 EBX: MPX (its bound registers are not offered).
const LEAF7_EBX_MPX: u32 = 1 << 14;
/// CPUID leaf 7 EBX: the AVX-512 feature bits (F, DQ, IFMA, PF, ER, CD,
/// BW, VL).
const LEAF7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
/// CPUID leaf 7 ECX: the AVX-512 feature bits (VBMI, VBMI2, GFNI's EVEX
/// forms ride on F; VNNI, BITALG, VPOPCNTDQ).
const LEAF7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
/// CPUID leaf 7 ECX: PKU and OSPKE (PKRU state is not offered).
const LEAF7_ECX_PKU: u32 = (1 << 3) | (1 << 4);
/// CPUID leaf 7 EDX: AVX-512 4VNNIW/4FMAPS, VP2INTERSECT, FP16.
const LEAF7_EDX_AVX512: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);
/// CPUID leaf 7 EDX: AMX (tile state is not offered) and CET (supervisor
/// state is not offered).
const LEAF7_EDX_AMX_CET: u32 = (1 << 22) | (1 << 24) | (1 << 25) | (1 << 20);
/// CPUID leaf 7 ECX: CET shadow stacks.
const LEAF7_ECX_CET_SS: u32 = 1 << 7;
/// CPUID leaf 0xD.1 EAX: XSAVEOPT, XSAVEC, XGETBV with ECX=1 (kept);
/// XSAVES and XFD are not offered.
const LEAF_D1_EAX_OFFERED: u32 = 0b111;

/// Where one XSAVE component lives in the standard-format area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Component {
    offset: u32,
    size: u32,
}

/// What a CPU lets guests keep in extended state, found from CPUID once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XstateModel {
    /// The CPU has XSAVE (otherwise FXSAVE is used and XCR0 stays 1).
    xsave: bool,
    /// Components a guest may enable in XCR0.
    guest_mask: u64,
    /// Offset and size of components 2..=7 in the standard format.
    components: [Component; 8],
    /// Bytes of the standard-format area for `guest_mask`.
    area_size: usize,
}

impl XstateModel {
    /// The model for the CPU this runs on.
    pub fn detect() -> Self {
        Self::from_cpuid(|leaf, subleaf| {
            let r = crate::host_cpu::cpuid_count(leaf, subleaf);
            CpuidResult {
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
            }
        })
    }

    /// The model for a CPU that answers CPUID with `cpuid(leaf, subleaf)`.
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> CpuidResult) -> Self {
        let max_leaf = cpuid(0, 0).eax;
        let xsave = max_leaf >= 0xd && cpuid(1, 0).ecx & LEAF1_ECX_XSAVE != 0;
        let mut components = [Component::default(); 8];
        if !xsave {
            return Self {
                xsave,
                guest_mask: XCR0_X87 | XCR0_SSE,
                components,
                area_size: LEGACY_SIZE,
            };
        }
        let d0 = cpuid(0xd, 0);
        let host_supported = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
        let mut guest_mask = host_supported & MODEL_COMPONENTS | XCR0_X87 | XCR0_SSE;
        // AVX-512 is all three components or none, and only with AVX.
        if guest_mask & XCR0_AVX512 != XCR0_AVX512 || guest_mask & XCR0_AVX == 0 {
            guest_mask &= !XCR0_AVX512;
        }
        let mut area_size = LEGACY_SIZE + HEADER_SIZE;
        for (i, c) in components.iter_mut().enumerate().skip(2) {
            if guest_mask & (1 << i) == 0 {
                continue;
            }
            let leaf = cpuid(0xd, i as u32);
            *c = Component {
                offset: leaf.ebx,
                size: leaf.eax,
            };
            let end = leaf.ebx as usize + leaf.eax as usize;
            // A component the CPU places inside the legacy area or header,
            // or absurdly far, is not one we can keep: leave it out.
            if (leaf.ebx as usize) < LEGACY_SIZE + HEADER_SIZE || end > 64 * 1024 {
                guest_mask &= !(1 << i);
                if i == 2 {
                    guest_mask &= !XCR0_AVX512;
                }
                continue;
            }
            area_size = area_size.max(end);
        }
        Self {
            xsave,
            guest_mask,
            components,
            area_size,
        }
    }

    /// Whether the CPU has XSAVE.
    pub fn has_xsave(&self) -> bool {
        self.xsave
    }

    /// The XCR0 bits a guest may set.
    pub fn guest_mask(&self) -> u64 {
        self.guest_mask
    }

    /// Bytes of the saved area.
    pub fn area_size(&self) -> usize {
        self.area_size
    }

    /// Whether `value` is an XCR0 a guest may load with XSETBV: x87 set,
    /// nothing outside the model, AVX only with SSE, AVX-512 whole and
    /// only with AVX (SDM vol. 1, 13.3).
    pub fn valid_xcr0(&self, value: u64) -> bool {
        value & XCR0_X87 != 0
            && value & !self.guest_mask == 0
            && (value & XCR0_AVX == 0 || value & XCR0_SSE != 0)
            && (value & XCR0_AVX512 == 0
                || (value & XCR0_AVX512 == XCR0_AVX512 && value & XCR0_AVX != 0))
    }

    /// Bytes of the standard-format area that components `xcr0` need (what
    /// CPUID.(0xD,0).EBX reports for the current XCR0).
    fn size_for(&self, xcr0: u64) -> u32 {
        let mut size = (LEGACY_SIZE + HEADER_SIZE) as u32;
        for (i, c) in self.components.iter().enumerate().skip(2) {
            if xcr0 & (1 << i) != 0 {
                size = size.max(c.offset + c.size);
            }
        }
        size
    }

    /// Bring the host's answer `r` to CPUID `leaf`/`subleaf` in line with
    /// this model, for a guest whose CR4.OSXSAVE is `osxsave` and whose
    /// XCR0 is `xcr0`: leaf 1's OSXSAVE mirrors the guest's CR4, AVX and
    /// what needs it only with AVX state in the model, leaf 7 without the
    /// features whose state is not offered, and leaf 0xD describing exactly
    /// the components and sizes the model saves.
    pub fn cpuid(&self, leaf: u32, subleaf: u32, r: &mut CpuidResult, osxsave: bool, xcr0: u64) {
        let avx = self.guest_mask & XCR0_AVX != 0;
        let avx512 = self.guest_mask & XCR0_AVX512 != 0;
        match leaf {
            1 => {
                r.ecx &= !LEAF1_ECX_OSXSAVE;
                if !self.xsave {
                    r.ecx &= !LEAF1_ECX_XSAVE;
                } else if osxsave {
                    r.ecx |= LEAF1_ECX_OSXSAVE;
                }
                if !avx {
                    r.ecx &= !(LEAF1_ECX_AVX | LEAF1_ECX_FMA | LEAF1_ECX_F16C);
                }
            }
            7 if subleaf == 0 => {
                r.ebx &= !LEAF7_EBX_MPX;
                r.ecx &= !(LEAF7_ECX_PKU | LEAF7_ECX_CET_SS);
                r.edx &= !LEAF7_EDX_AMX_CET;
                if !avx {
                    r.ebx &= !LEAF7_EBX_AVX2;
                }
                if !avx512 {
                    r.ebx &= !LEAF7_EBX_AVX512;
                    r.ecx &= !LEAF7_ECX_AVX512;
                    r.edx &= !LEAF7_EDX_AVX512;
                }
            }
            0xd if !self.xsave => *r = CpuidResult::default(),
            0xd => match subleaf {
                0 => {
                    *r = CpuidResult {
                        eax: self.guest_mask as u32,
                        ebx: self.size_for(xcr0 & self.guest_mask),
                        ecx: self.size_for(self.guest_mask),
                        edx: (self.guest_mask >> 32) as u32,
                    }
                }
                1 => {
                    // XSAVEC's compacted size for XCR0 | IA32_XSS (XSS is 0).
                    let compacted = self.compacted_size(xcr0 & self.guest_mask);
                    *r = CpuidResult {
                        eax: r.eax & LEAF_D1_EAX_OFFERED,
                        ebx: compacted,
                        ecx: 0,
                        edx: 0,
                    }
                }
                i if i < 64 && self.guest_mask & (1 << i) != 0 => {
                    // Offset, size, and (ECX) alignment: the host's answer.
                    r.ecx &= 0b10;
                    r.edx = 0;
                }
                _ => *r = CpuidResult::default(),
            },
            _ => {}
        }
    }

    /// Size of the compacted area for `xcr0` (legacy region, header, then
    /// each component packed; AVX-512's 64-byte alignment as the CPU
    /// reports it is ignored, which only makes the answer larger than
    /// needed when a component asks for alignment).
    fn compacted_size(&self, xcr0: u64) -> u32 {
        let mut size = (LEGACY_SIZE + HEADER_SIZE) as u32;
        for (i, c) in self.components.iter().enumerate().skip(2) {
            if xcr0 & (1 << i) != 0 {
                size = size.next_multiple_of(64) + c.size;
            }
        }
        size
    }
}

/// A 64-byte aligned piece of a save area (XSAVE needs 64-byte alignment).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// A save area: standard-format XSAVE layout (or FXSAVE's 512 bytes).
#[derive(Clone)]
struct Area {
    chunks: Vec<Chunk>,
}

impl Area {
    fn new(size: usize) -> Self {
        Self {
            chunks: vec![Chunk([0; 64]); size.div_ceil(64)],
        }
    }

    fn byte(&self, offset: usize) -> u8 {
        self.chunks.get(offset / 64).map_or(0, |c| c.0[offset % 64])
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        if let Some(c) = self.chunks.get_mut(offset / 64) {
            c.0[offset % 64] = value;
        }
    }

    fn read<const N: usize>(&self, offset: usize) -> [u8; N] {
        core::array::from_fn(|i| self.byte(offset + i))
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(offset + i, *b);
        }
    }

    fn u64_at(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.read(offset))
    }

    /// The state after RESET/INIT: x87 control word 0x37F, MXCSR 0x1F80,
    /// everything else zero, XSTATE_BV 0 (every component in its initial
    /// configuration).
    fn reset(&mut self) {
        for c in &mut self.chunks {
            c.0 = [0; 64];
        }
        self.write(FCW_OFFSET, &FCW_INIT.to_le_bytes());
        self.write(MXCSR_OFFSET, &MXCSR_INIT.to_le_bytes());
    }
}

/// One vCPU's x87/SSE/AVX registers and XCR0, and room for the host's
/// while the guest runs.
#[derive(Clone)]
pub struct ExtendedState {
    model: XstateModel,
    guest: Area,
    guest_xcr0: u64,
    host: Area,
    /// Components the host area holds room for.
    host_mask: u64,
    /// XCR0 of the host, saved while the guest's is loaded.
    host_xcr0: u64,
    /// The guest's state is in the CPU's registers (between the switches).
    loaded: bool,
    /// Save and restore the host's own registers (see
    /// [`crate::host::Host::uses_extended_state`]).
    keep_host: bool,
    /// Names this state in the per-CPU record of what is in the registers.
    token: u64,
    /// The saved area changed since it was last saved from or loaded into
    /// the CPU (emulator writes, reset), so the registers are stale.
    dirty: bool,
}

impl core::fmt::Debug for ExtendedState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ExtendedState")
            .field("model", &self.model)
            .field("guest_xcr0", &self.guest_xcr0)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl ExtendedState {
    /// A vCPU's state in the reset configuration (XCR0 = 1).
    pub fn new(model: XstateModel) -> Self {
        let mut guest = Area::new(model.area_size);
        guest.reset();
        Self {
            host: Area::new(model.area_size),
            host_mask: model.guest_mask,
            guest,
            guest_xcr0: XCR0_X87,
            host_xcr0: XCR0_X87,
            model,
            loaded: false,
            keep_host: true,
            token: switch::new_token(),
            dirty: true,
        }
    }

    /// Whether the host's own extended state is saved and restored around
    /// guest runs (the default), or left alone for a host that never uses
    /// it (the guest's registers then stay in the CPU after an exit, already
    /// saved, until the next vCPU loads its own over them).
    pub fn keep_host_state(mut self, keep: bool) -> Self {
        self.keep_host = keep;
        self
    }

    /// The model the state follows.
    pub fn model(&self) -> &XstateModel {
        &self.model
    }

    /// Back to the state after RESET or INIT: registers initial, XCR0 = 1.
    pub fn reset(&mut self) {
        self.guest.reset();
        self.guest_xcr0 = XCR0_X87;
        self.dirty = true;
    }

    /// The guest's XCR0.
    pub fn xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    /// XSETBV by the guest: `index` is ECX. Returns `false` (the caller
    /// raises #GP) for a register other than XCR0 or a value the model
    /// refuses; the check of CPL and CR4.OSXSAVE is the caller's.
    pub fn set_xcr(&mut self, index: u32, value: u64) -> bool {
        if !self.model.xsave || index != 0 || !self.model.valid_xcr0(value) {
            return false;
        }
        self.guest_xcr0 = value;
        true
    }

    /// XSETBV by the guest, with the checks the CPU makes before it: #UD
    /// without CR4.OSXSAVE (`osxsave`), #GP(0) outside CPL 0 or where
    /// [`ExtendedState::set_xcr`] refuses `index` (ECX) or `value`
    /// (EDX:EAX). `Ok` when XCR0 changed; the caller then moves RIP past
    /// the instruction, or injects the exception.
    pub fn xsetbv(
        &mut self,
        index: u32,
        value: u64,
        osxsave: bool,
        cpl: u8,
    ) -> Result<(), crate::emulator::Exception> {
        use crate::emulator::Exception;
        if !osxsave {
            Err(Exception::InvalidOpcode)
        } else if cpl != 0 || !self.set_xcr(index, value) {
            Err(Exception::GeneralProtection(0))
        } else {
            Ok(())
        }
    }

    fn xstate_bv(&self) -> u64 {
        if self.model.xsave {
            self.guest.u64_at(XSTATE_BV_OFFSET)
        } else {
            XCR0_X87 | XCR0_SSE
        }
    }

    fn mark_in_use(&mut self, component: u64) {
        if self.model.xsave {
            let bv = self.guest.u64_at(XSTATE_BV_OFFSET) | component;
            self.guest.write(XSTATE_BV_OFFSET, &bv.to_le_bytes());
        }
    }

    /// The guest's x87/MMX registers (FCW, FSW, abridged FTW, FOP, FIP,
    /// FDP, ST0-ST7). A component in its initial configuration reads as
    /// FNINIT leaves it.
    pub fn x87(&self) -> crate::emulator::X87Registers {
        if self.xstate_bv() & XCR0_X87 == 0 {
            return crate::emulator::X87Registers::default();
        }
        crate::emulator::X87Registers {
            fcw: u16::from_le_bytes(self.guest.read(FCW_OFFSET)),
            fsw: u16::from_le_bytes(self.guest.read(FSW_OFFSET)),
            ftw: self.guest.byte(FTW_OFFSET),
            fop: u16::from_le_bytes(self.guest.read(FOP_OFFSET)),
            fip: self.guest.u64_at(FIP_OFFSET),
            fdp: self.guest.u64_at(FDP_OFFSET),
            st: core::array::from_fn(|i| self.guest.read(ST_OFFSET + 16 * i)),
        }
    }

    /// Set the guest's x87/MMX registers.
    pub fn set_x87(&mut self, r: &crate::emulator::X87Registers) {
        self.guest.write(FCW_OFFSET, &r.fcw.to_le_bytes());
        self.guest.write(FSW_OFFSET, &r.fsw.to_le_bytes());
        self.guest.write(FTW_OFFSET, &[r.ftw]);
        self.guest.write(FOP_OFFSET, &r.fop.to_le_bytes());
        self.guest.write(FIP_OFFSET, &r.fip.to_le_bytes());
        self.guest.write(FDP_OFFSET, &r.fdp.to_le_bytes());
        for (i, st) in r.st.iter().enumerate() {
            // Bytes 10-15 of each slot are reserved: zero them.
            let mut slot = [0u8; 16];
            slot[..10].copy_from_slice(st);
            self.guest.write(ST_OFFSET + 16 * i, &slot);
        }
        self.mark_in_use(XCR0_X87);
        self.dirty = true;
    }

    /// XMM register `index` (< 16) of the guest.
    pub fn xmm(&self, index: usize) -> u128 {
        if index >= 16 || self.xstate_bv() & XCR0_SSE == 0 {
            return 0;
        }
        u128::from_le_bytes(self.guest.read(XMM_OFFSET + 16 * index))
    }

    /// Set XMM register `index` (< 16) of the guest.
    pub fn set_xmm(&mut self, index: usize, value: u128) {
        if index >= 16 {
            return;
        }
        if self.xstate_bv() & XCR0_SSE == 0 {
            // The component was in its initial configuration: every XMM
            // register is zero, whatever the area's bytes say.
            for i in 0..16 {
                self.guest.write(XMM_OFFSET + 16 * i, &[0; 16]);
            }
            self.mark_in_use(XCR0_SSE);
        }
        self.guest
            .write(XMM_OFFSET + 16 * index, &value.to_le_bytes());
        self.dirty = true;
    }

    /// Bits 255:128 of YMM register `index` (< 16), if the model has AVX.
    pub fn ymm_upper(&self, index: usize) -> Option<u128> {
        let c = self.avx_component()?;
        if index >= 16 {
            return None;
        }
        if self.xstate_bv() & XCR0_AVX == 0 {
            return Some(0);
        }
        Some(u128::from_le_bytes(
            self.guest.read(c.offset as usize + 16 * index),
        ))
    }

    /// Set bits 255:128 of YMM register `index` (< 16).
    pub fn set_ymm_upper(&mut self, index: usize, value: u128) {
        let Some(c) = self.avx_component() else {
            return;
        };
        if index >= 16 {
            return;
        }
        if self.xstate_bv() & XCR0_AVX == 0 {
            self.guest.write(c.offset as usize, &[0; 256]);
            self.mark_in_use(XCR0_AVX);
        }
        self.guest
            .write(c.offset as usize + 16 * index, &value.to_le_bytes());
        self.dirty = true;
    }

    fn avx_component(&self) -> Option<Component> {
        (self.model.guest_mask & XCR0_AVX != 0).then_some(self.model.components[2])
    }

    /// MXCSR of the guest.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.guest.read(MXCSR_OFFSET))
    }

    /// The guest's registers and XCR0 as an [`XsaveImage`]: the standard
    /// XSAVE layout, with the header (XSTATE_BV = x87 | SSE) added on a
    /// CPU without XSAVE.
    pub fn image(&self) -> XsaveImage {
        let mut area: Vec<u8> = (0..self.model.area_size)
            .map(|i| self.guest.byte(i))
            .collect();
        if !self.model.xsave {
            area.resize(XSAVE_MIN_SIZE, 0);
            area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8]
                .copy_from_slice(&(XCR0_X87 | XCR0_SSE).to_le_bytes());
        }
        XsaveImage {
            xcr0: self.guest_xcr0,
            area,
        }
    }

    /// Take the guest's registers and XCR0 from `image`, checked as
    /// [`check_xsave_image`] checks (XCR0 and the components it holds
    /// within the model, the area long enough for them, the header and
    /// MXCSR as XRSTOR takes them). Nothing changes on `Err`.
    pub fn set_image(&mut self, image: &XsaveImage) -> Result<(), ArchStateError> {
        let model = &self.model;
        let valid_xcr0 = |x: u64| {
            if model.xsave {
                model.valid_xcr0(x)
            } else {
                x == XCR0_X87
            }
        };
        let end = |i: u32| {
            let c = model
                .components
                .get(i as usize)
                .copied()
                .unwrap_or_default();
            (c.offset + c.size) as usize
        };
        check_xsave_image(image, valid_xcr0, model.guest_mask, end)?;
        let len = if model.xsave {
            model.area_size
        } else {
            LEGACY_SIZE
        };
        for i in 0..len {
            self.guest
                .set_byte(i, image.area.get(i).copied().unwrap_or(0));
        }
        self.guest_xcr0 = image.xcr0;
        self.dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
