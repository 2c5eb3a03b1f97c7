//! What the emulator needs from the vCPU ([`CpuState`]) and from the machine
//! around it ([`GuestBus`]), plus [`RegisterFile`], a plain implementation of
//! the CPU side for tests, fuzzers and backends that copy state out.

use super::decode_cache::DecodeCache;
use super::translation_cache::TranslationCache;
use crate::paging::{ControlRegisters, TracedEntry, CR0_PE, EFER_LMA};

/// RFLAGS.CF.
pub const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS bit 1, always set.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.PF.
pub const RFLAGS_PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const RFLAGS_AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const RFLAGS_ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const RFLAGS_SF: u64 = 1 << 7;
/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.DF.
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.OF.
pub const RFLAGS_OF: u64 = 1 << 11;
/// RFLAGS.IOPL (two bits).
pub const RFLAGS_IOPL: u64 = 3 << 12;
/// RFLAGS.RF: resume flag (cleared when an instruction completes).
pub const RFLAGS_RF: u64 = 1 << 16;
/// RFLAGS.VM: virtual-8086 mode.
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS.AC: alignment check (and the SMAP override).
pub const RFLAGS_AC: u64 = 1 << 18;
/// The six arithmetic status flags.
pub const RFLAGS_STATUS: u64 =
    RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;

/// A segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

impl Segment {
    /// All six, in encoding order.
    pub const ALL: [Segment; 6] = [
        Segment::Es,
        Segment::Cs,
        Segment::Ss,
        Segment::Ds,
        Segment::Fs,
        Segment::Gs,
    ];
}

/// A segment register with its hidden (descriptor cache) part.
///
/// `attributes` uses the packed SVM VMCB layout: bits 3:0 type, 4 S, 6:5
/// DPL, 7 P, 8 AVL, 9 L, 10 D/B, 11 G. `limit` is the byte-granular limit
/// (already scaled by G), as in the VMCB and VMCS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentRegister {
    /// The visible selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The byte-granular limit.
    pub limit: u32,
    /// The attributes (VMCB layout).
    pub attributes: u16,
}

impl SegmentRegister {
    /// Attributes of a present, accessed, read/write data segment, DPL 0.
    pub const DATA: u16 = 0x0093;
    /// Attributes of a present, accessed, execute/read code segment, DPL 0.
    pub const CODE: u16 = 0x009b;
    /// The D/B bit.
    pub const DB: u16 = 1 << 10;
    /// The L bit.
    pub const LONG: u16 = 1 << 9;

    /// A segment with the given fields.
    pub const fn new(selector: u16, base: u64, limit: u32, attributes: u16) -> Self {
        Self {
            selector,
            base,
            limit,
            attributes,
        }
    }

    /// The type field.
    pub fn segment_type(&self) -> u16 {
        self.attributes & 0xf
    }
    /// S: a code or data segment (not a system segment).
    pub fn is_code_or_data(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    /// The descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attributes >> 5) & 3) as u8
    }
    /// P: present (a null or unusable segment is not).
    pub fn present(&self) -> bool {
        self.attributes & 0x80 != 0
    }
    /// L: a 64-bit code segment.
    pub fn long(&self) -> bool {
        self.attributes & Self::LONG != 0
    }
    /// D/B: 32-bit default size.
    pub fn default_big(&self) -> bool {
        self.attributes & Self::DB != 0
    }
    /// A code segment.
    pub fn is_code(&self) -> bool {
        self.segment_type() & 8 != 0
    }

    /// The segment register loaded with `selector` and the 8-byte
    /// descriptor `raw` from a descriptor table: base, limit scaled by
    /// G, attributes, and the accessed bit set as a load sets it.
    pub fn from_descriptor(selector: u16, raw: u64) -> Self {
        let limit = (raw & 0xffff) | ((raw >> 32) & 0xf_0000);
        let base = ((raw >> 16) & 0xff_ffff) | ((raw >> 32) & 0xff00_0000);
        let access = (raw >> 40) & 0xff;
        let flags = (raw >> 52) & 0xf;
        let limit = if flags & 8 != 0 {
            (limit << 12) | 0xfff
        } else {
            limit
        };
        // Only code and data segments have an accessed bit.
        let accessed = if access & 0x10 != 0 { 1 } else { 0 };
        Self {
            selector,
            base,
            limit: limit as u32,
            attributes: (access | accessed | (flags << 8)) as u16,
        }
    }
}

/// A descriptor-table register (GDTR, IDTR): base and byte limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    /// The linear base address.
    pub base: u64,
    /// The limit (the last valid byte offset).
    pub limit: u16,
}

/// The operating mode of the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// Real-address mode.
    Real,
    /// Virtual-8086 mode.
    Virtual8086,
    /// Protected mode with a 16-bit code segment.
    Protected16,
    /// Protected mode with a 32-bit code segment.
    Protected32,
    /// Long mode, 16-bit compatibility code segment.
    Compatibility16,
    /// Long mode, 32-bit compatibility code segment.
    Compatibility32,
    /// 64-bit mode.
    Long64,
}

impl CpuMode {
    /// The mode selected by CR0, EFER, RFLAGS and CS.
    pub fn of(control: &ControlRegisters, rflags: u64, cs: &SegmentRegister) -> CpuMode {
        if control.cr0 & CR0_PE == 0 {
            CpuMode::Real
        } else if control.efer & EFER_LMA != 0 {
            if cs.long() {
                CpuMode::Long64
            } else if cs.default_big() {
                CpuMode::Compatibility32
            } else {
                CpuMode::Compatibility16
            }
        } else if rflags & RFLAGS_VM != 0 {
            CpuMode::Virtual8086
        } else if cs.default_big() {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The default code size in bits: 16, 32 or 64.
    pub fn bitness(&self) -> u32 {
        match self {
            CpuMode::Real
            | CpuMode::Virtual8086
            | CpuMode::Protected16
            | CpuMode::Compatibility16 => 16,
            CpuMode::Protected32 | CpuMode::Compatibility32 => 32,
            CpuMode::Long64 => 64,
        }
    }

    /// Segment limits and types are checked (protected and compatibility
    /// modes; real and virtual-8086 modes check limits only).
    pub fn protected(&self) -> bool {
        !matches!(self, CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Long64)
    }
}

impl core::fmt::Display for CpuMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            CpuMode::Real => "real mode",
            CpuMode::Virtual8086 => "virtual-8086 mode",
            CpuMode::Protected16 => "16-bit protected mode",
            CpuMode::Protected32 => "32-bit protected mode",
            CpuMode::Compatibility16 => "16-bit compatibility mode",
            CpuMode::Compatibility32 => "32-bit compatibility mode",
            CpuMode::Long64 => "64-bit mode",
        };
        f.write_str(s)
    }
}

/// The register state the emulator reads and changes. General-purpose
/// registers are numbered as in the instruction encoding: 0 = RAX, 1 = RCX,
/// 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15.
pub trait CpuState {
    /// A general-purpose register (`index` < 16).
    fn gpr(&self, index: usize) -> u64;
    /// Set a general-purpose register (`index` < 16).
    fn set_gpr(&mut self, index: usize, value: u64);
    /// RIP.
    fn rip(&self) -> u64;
    /// Set RIP.
    fn set_rip(&mut self, value: u64);
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// Set RFLAGS.
    fn set_rflags(&mut self, value: u64);
    /// A segment register.
    fn segment(&self, segment: Segment) -> SegmentRegister;
    /// CR0, CR3, CR4 and EFER.
    fn control(&self) -> ControlRegisters;
    /// An XMM register (`index` < 16).
    fn xmm(&self, index: usize) -> u128;
    /// Set an XMM register (`index` < 16).
    fn set_xmm(&mut self, index: usize, value: u128);
    /// The current privilege level. The default takes SS.DPL (as VMX and
    /// SVM do), 0 in real mode and 3 in virtual-8086 mode.
    fn cpl(&self) -> u8 {
        if self.control().cr0 & CR0_PE == 0 {
            0
        } else if self.rflags() & RFLAGS_VM != 0 {
            3
        } else {
            self.segment(Segment::Ss).dpl()
        }
    }
    /// PKRU (protection-key rights), 0 if the guest does not use them.
    fn pkru(&self) -> u32 {
        0
    }
    /// Bits 255:128 of YMM register `index` (< 16), if this vCPU exposes
    /// AVX state to the emulator. The default, `None`, makes VEX-encoded
    /// instructions unsupported.
    fn ymm_upper(&self, index: usize) -> Option<u128> {
        let _ = index;
        None
    }
    /// Set bits 255:128 of YMM register `index` (< 16). Called only when
    /// [`CpuState::ymm_upper`] returned a value.
    fn set_ymm_upper(&mut self, index: usize, value: u128) {
        let _ = (index, value);
    }
    /// XCR0, if known; `None` makes VEX-encoded instructions unsupported.
    fn xcr0(&self) -> Option<u64> {
        None
    }
    /// The x87/MMX registers, if the vCPU exposes them (MMX moves on
    /// emulated memory need them; without them they are unsupported).
    fn x87(&self) -> Option<X87Registers> {
        None
    }
    /// Replace the x87/MMX registers (only called after
    /// [`CpuState::x87`] gave them).
    fn set_x87(&mut self, registers: &X87Registers) {
        let _ = registers;
    }
    /// The instruction just retired loaded SS with MOV or POP: block
    /// interrupts, NMIs and debug traps until the next instruction has run
    /// (the "MOV SS shadow"). Called after RIP moved past it. The default
    /// does nothing (a vCPU that cannot hold the shadow).
    fn set_mov_ss_shadow(&mut self) {}
    /// Load CR0 with `value` (LMSW): `true` if done, `false` if this vCPU
    /// cannot have CR0 changed by the emulator (the default), which makes
    /// the instruction unsupported. Only PE, MP, EM and TS ever change.
    fn set_cr0(&mut self, value: u64) -> bool {
        let _ = value;
        false
    }
    /// This vCPU's descriptor tables and segment loading, for the
    /// instructions that load segment registers (MOV and POP to a segment
    /// register, LDS/LES/LFS/LGS/LSS, far JMP, CALL and RET). `None` (the
    /// default) makes them unsupported.
    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        None
    }
    /// This vCPU's cache of guest page-table walks, kept across exits
    /// (see [`TranslationCache`]: every hit is checked against the guest's
    /// tables, so it needs no invalidation). `None` (the default): every
    /// emulation walks.
    fn translation_cache(&mut self) -> Option<&mut TranslationCache> {
        None
    }
    /// This vCPU's cache of decoded instructions, kept across exits (see
    /// [`DecodeCache`]: an instruction is reused only when the bytes
    /// fetched at CS:RIP are still its bytes). `None` (the default): every
    /// emulation decodes.
    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        None
    }
}

/// What an instruction that loads a segment register from a descriptor
/// table needs beyond [`CpuState`]. An implementor returns itself from
/// [`CpuState::descriptor_state`] (the IRET of
/// [`super::Emulator::emulate_iret`], and the segment loads and far
/// transfers of [`super::Emulator::emulate`] when
/// [`CpuState::descriptor_state`] offers it).
pub trait DescriptorState: CpuState {
    /// GDTR.
    fn gdtr(&self) -> DescriptorTable;
    /// Load a segment register (selector and hidden part).
    fn set_segment(&mut self, segment: Segment, value: SegmentRegister);
    /// LDTR (selector and hidden part). The default is an unusable LDTR,
    /// so that a selector into the LDT gets #GP.
    fn ldtr(&self) -> SegmentRegister {
        SegmentRegister::default()
    }
    /// Set the CPL after a return to an outer privilege level (after SS
    /// and CS are loaded). The default does nothing: the CPL follows
    /// SS.DPL, as [`CpuState::cpl`]'s default reads it.
    fn set_cpl(&mut self, cpl: u8) {
        let _ = cpl;
    }
    /// IDTR (SIDT). The default is an empty table.
    fn idtr(&self) -> DescriptorTable {
        DescriptorTable::default()
    }
    /// TR (selector and hidden part; STR). The default is an unusable TR.
    fn tr(&self) -> SegmentRegister {
        SegmentRegister::default()
    }
    /// Load LDTR or TR (LLDT, LTR) with a checked value. `false` when the
    /// vCPU cannot (the default): the instruction is then reported as
    /// unsupported.
    fn set_system_segment(&mut self, which: SystemSegment, value: SegmentRegister) -> bool {
        let _ = (which, value);
        false
    }
}

/// The x87 FPU and MMX registers, as FXSAVE lays them out (64-bit
/// format): `st[i]` is ST(i), the register TOP points to plus `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X87Registers {
    /// The control word.
    pub fcw: u16,
    /// The status word (TOP in bits 13:11, ES in bit 7).
    pub fsw: u16,
    /// The abridged tag word: bit `p` set when physical register `p` is
    /// valid.
    pub ftw: u8,
    /// The last x87 opcode.
    pub fop: u16,
    /// The last x87 instruction's address.
    pub fip: u64,
    /// The last x87 data operand's address.
    pub fdp: u64,
    /// ST(0)-ST(7), 80 bits each; an MMX register is the low 64 bits of
    /// its physical register.
    pub st: [[u8; 10]; 8],
}

impl Default for X87Registers {
    /// The state FNINIT leaves: FCW 0x37F, every register empty.
    fn default() -> Self {
        Self {
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            st: [[0; 10]; 8],
        }
    }
}

/// The system segment registers LLDT and LTR load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemSegment {
    /// The local descriptor table register.
    Ldtr,
    /// The task register.
    Tr,
}

/// A physical access or port access the machine could not carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// Nothing at this guest-physical address can take the access.
    Memory {
        /// The guest-physical address.
        gpa: u64,
    },
    /// The port access failed.
    Port {
        /// The port.
        port: u16,
    },
}

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BusError::Memory { gpa } => write!(f, "no memory or device at {gpa:#x}"),
            BusError::Port { port } => write!(f, "port {port:#x} access failed"),
        }
    }
}

/// Guest-physical memory (RAM or MMIO) and I/O ports, as the emulated
/// instruction reaches them. Accesses never cross a 4 KiB page.
pub trait GuestBus {
    /// Read `data.len()` bytes at `gpa`.
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError>;
    /// Write `data` at `gpa`.
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError>;
    /// Read the little-endian quadword at `gpa` (a page-table entry). The
    /// default goes through [`GuestBus::read_physical`]; a bus with a
    /// quicker path for RAM overrides it.
    fn read_u64_physical(&mut self, gpa: u64) -> Result<u64, BusError> {
        let mut b = [0u8; 8];
        self.read_physical(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// The paging-structure entry at `gpa` (8 bytes if `wide`, else 4), if
    /// it lies in memory whose reads have no side effects (RAM or ROM);
    /// `None` elsewhere (a device, nothing) or when the bus cannot tell.
    /// The vCPU's translation cache checks its walks through this, and
    /// serves none whose entries it cannot read so. The default says
    /// `None`: no walk is reused.
    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        let _ = (gpa, wide);
        None
    }
    /// Whether every paging-structure entry of `path` still holds its
    /// value, each read as [`GuestBus::read_table_entry`] reads it (an
    /// entry it cannot read holds nothing). The default asks for the
    /// entries one by one; a bus that can read several in one lookup
    /// overrides it.
    fn table_entries_hold(&mut self, path: &[TracedEntry]) -> bool {
        path.iter()
            .all(|e| self.read_table_entry(e.gpa, e.wide) == Some(e.value))
    }
    /// [`GuestBus::table_entries_hold`], then, if they all hold, read
    /// `data.len()` bytes at `gpa` as [`GuestBus::read_physical`] reads
    /// them (the page a cached walk leads to). `Ok(false)`: an entry does
    /// not hold, and nothing was read. The default does the two in turn;
    /// a bus that can find the entries and the bytes in one lookup
    /// overrides it.
    fn table_entries_hold_then_read(
        &mut self,
        path: &[TracedEntry],
        gpa: u64,
        data: &mut [u8],
    ) -> Result<bool, BusError> {
        if !self.table_entries_hold(path) {
            return Ok(false);
        }
        self.read_physical(gpa, data)?;
        Ok(true)
    }
    /// Complete a locked read-modify-write at `gpa` whose read returned
    /// `old`: store `new` if the bytes there still equal `old` and return
    /// `true`; return `false`, changing nothing, if another vCPU changed
    /// them meanwhile (the emulator then runs the instruction again). The
    /// access never crosses a page. The default simply writes, which is
    /// atomic when no other vCPU runs during the emulation; a host that
    /// emulates for several vCPUs at once overrides it with a real
    /// compare-exchange on RAM.
    fn write_locked(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, BusError> {
        let _ = old;
        self.write_physical(gpa, new)?;
        Ok(true)
    }
    /// Read `data.len()` bytes (1, 2 or 4) from `port`.
    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError>;
    /// Write `data` (1, 2 or 4 bytes) to `port`.
    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError>;
    /// A string read (REP INS): `data.len() / size` reads of `size` bytes
    /// from `port`, in order. The default reads element by element.
    fn io_read_string(&mut self, port: u16, size: usize, data: &mut [u8]) -> Result<(), BusError> {
        for element in data.chunks_mut(size.max(1)) {
            self.io_read(port, element)?;
        }
        Ok(())
    }
    /// A string write (REP OUTS): `data.len() / size` writes of `size`
    /// bytes to `port`, in order. The default writes element by element.
    fn io_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), BusError> {
        for element in data.chunks(size.max(1)) {
            self.io_write(port, element)?;
        }
        Ok(())
    }
    /// Whether `len` bytes at `gpa` are all plain RAM, so that the
    /// emulator may move a string instruction's data in one piece. The
    /// default says no (every access then goes element by element).
    fn is_ram(&self, gpa: u64, len: usize) -> bool {
        let _ = (gpa, len);
        false
    }
    /// Whether `len` bytes at `gpa` have nothing behind them (open bus:
    /// reads give all ones, writes are dropped), so that an instruction
    /// whose store the emulator does not carry out may still complete with
    /// only its effects on the CPU. The default says no.
    fn is_unassigned(&self, gpa: u64, len: usize) -> bool {
        let _ = (gpa, len);
        false
    }
}

/// A plain copy of the register state, implementing [`CpuState`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterFile {
    /// RAX..R15.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub segments: [SegmentRegister; 6],
    /// CR0, CR3, CR4, EFER.
    pub control: ControlRegisters,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// PKRU.
    pub pkru: u32,
    /// Bits 255:128 of YMM0..YMM15.
    pub ymm_upper: [u128; 16],
    /// XCR0.
    pub xcr0: u64,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// LDTR.
    pub ldtr: SegmentRegister,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// TR.
    pub tr: SegmentRegister,
    /// The x87/MMX registers, if this vCPU has them.
    pub x87: Option<X87Registers>,
    /// The walks of earlier emulations (not architectural state: it
    /// compares equal whatever it holds).
    pub translation_cache: TranslationCache,
    /// The instructions decoded by earlier emulations (not architectural
    /// state either).
    pub decode_cache: DecodeCache,
}

impl RegisterFile {
    /// Real mode after reset, but with CS base 0: every segment has base 0,
    /// limit 0xffff.
    pub fn real_mode() -> Self {
        let seg = SegmentRegister::new(0, 0, 0xffff, SegmentRegister::DATA);
        let mut segments = [seg; 6];
        segments[Segment::Cs as usize].attributes = SegmentRegister::CODE;
        Self {
            rflags: RFLAGS_FIXED,
            segments,
            ..Self::default()
        }
    }

    /// 32-bit protected mode, flat 4 GiB segments, DPL 0, no paging.
    pub fn protected_flat32() -> Self {
        let data = SegmentRegister::new(
            0x10,
            0,
            0xffff_ffff,
            SegmentRegister::DATA | SegmentRegister::DB | 0x800,
        );
        let code = SegmentRegister::new(
            0x08,
            0,
            0xffff_ffff,
            SegmentRegister::CODE | SegmentRegister::DB | 0x800,
        );
        let mut segments = [data; 6];
        segments[Segment::Cs as usize] = code;
        Self {
            rflags: RFLAGS_FIXED,
            segments,
            control: ControlRegisters {
                cr0: CR0_PE,
                ..ControlRegisters::default()
            },
            ..Self::default()
        }
    }

    /// 64-bit mode at CPL 0 with the given CR3 (4-level paging, NX, SSE and
    /// AVX enabled, WP set).
    pub fn long_mode(cr3: u64) -> Self {
        use crate::paging::{CR0_PG, CR0_WP, CR4_OSFXSR, CR4_OSXSAVE, CR4_PAE, EFER_LME, EFER_NXE};
        let data = SegmentRegister::new(0x10, 0, 0xffff_ffff, SegmentRegister::DATA | 0x800);
        let code = SegmentRegister::new(
            0x08,
            0,
            0xffff_ffff,
            SegmentRegister::CODE | SegmentRegister::LONG | 0x800,
        );
        let mut segments = [data; 6];
        segments[Segment::Cs as usize] = code;
        Self {
            rflags: RFLAGS_FIXED,
            segments,
            control: ControlRegisters {
                cr0: CR0_PE | CR0_PG | CR0_WP | 0x10,
                cr3,
                cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXSAVE,
                efer: EFER_LME | EFER_LMA | EFER_NXE,
            },
            // x87, SSE and AVX state enabled.
            xcr0: 7,
            ..Self::default()
        }
    }
}

impl CpuState for RegisterFile {
    fn gpr(&self, index: usize) -> u64 {
        self.gprs.get(index).copied().unwrap_or(0)
    }
    fn set_gpr(&mut self, index: usize, value: u64) {
        if let Some(r) = self.gprs.get_mut(index) {
            *r = value;
        }
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, value: u64) {
        self.rip = value;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
    fn segment(&self, segment: Segment) -> SegmentRegister {
        self.segments[segment as usize]
    }
    fn control(&self) -> ControlRegisters {
        self.control
    }
    fn xmm(&self, index: usize) -> u128 {
        self.xmm.get(index).copied().unwrap_or(0)
    }
    fn set_xmm(&mut self, index: usize, value: u128) {
        if let Some(r) = self.xmm.get_mut(index) {
            *r = value;
        }
    }
    fn pkru(&self) -> u32 {
        self.pkru
    }
    fn ymm_upper(&self, index: usize) -> Option<u128> {
        self.ymm_upper.get(index).copied()
    }
    fn set_ymm_upper(&mut self, index: usize, value: u128) {
        if let Some(r) = self.ymm_upper.get_mut(index) {
            *r = value;
        }
    }
    fn xcr0(&self) -> Option<u64> {
        Some(self.xcr0)
    }
    fn x87(&self) -> Option<X87Registers> {
        self.x87
    }
    fn set_x87(&mut self, registers: &X87Registers) {
        self.x87 = Some(*registers);
    }
    fn set_cr0(&mut self, value: u64) -> bool {
        self.control.cr0 = value;
        true
    }
    fn translation_cache(&mut self) -> Option<&mut TranslationCache> {
        Some(&mut self.translation_cache)
    }
    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        Some(&mut self.decode_cache)
    }
    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        Some(self)
    }
}

impl DescriptorState for RegisterFile {
    fn gdtr(&self) -> DescriptorTable {
        self.gdtr
    }
    fn set_segment(&mut self, segment: Segment, value: SegmentRegister) {
        self.segments[segment as usize] = value;
    }
    fn ldtr(&self) -> SegmentRegister {
        self.ldtr
    }
    fn idtr(&self) -> DescriptorTable {
        self.idtr
    }
    fn tr(&self) -> SegmentRegister {
        self.tr
    }
    fn set_system_segment(&mut self, which: SystemSegment, value: SegmentRegister) -> bool {
        match which {
            SystemSegment::Ldtr => self.ldtr = value,
            SystemSegment::Tr => self.tr = value,
        }
        true
    }
}
