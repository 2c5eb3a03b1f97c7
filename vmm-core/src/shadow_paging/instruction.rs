//! The instructions shadow paging intercepts, decoded at the guest's RIP:
//! MOV to/from CR0/CR3/CR4, CLTS, LMSW (a register or a memory operand),
//! SMSW (which SVM's CR0 read intercept catches too) and INVLPG.
//!
//! SVM without decode assists (QEMU's TCG has none) reports only *that*
//! such an instruction ran, not its operands or length; this reads the
//! instruction through the guest's segmentation and page tables and decodes
//! it with iced-x86, in whatever mode the vCPU is in.

use crate::emulator::{CpuMode, CpuState, InstructionBytes, Segment};
use crate::memory::GuestMemory;
use crate::paging::{Access, AccessKind, ControlRegisters, Walker, CR4_LA57};
use core::fmt;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// What an intercepted instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intercepted {
    /// `mov crN, reg`: the value to write.
    MovToCr {
        /// The control register number.
        cr: u8,
        /// The value (32 bits outside 64-bit mode).
        value: u64,
    },
    /// `mov reg, crN`.
    MovFromCr {
        /// The control register number.
        cr: u8,
        /// The destination general-purpose register (0 = RAX .. 15 = R15).
        gpr: usize,
    },
    /// CLTS: clear CR0.TS.
    Clts,
    /// LMSW: load CR0's low four bits (PE cannot be cleared).
    Lmsw {
        /// The source operand.
        value: u16,
    },
    /// SMSW (to a register or memory): CR0's low bits stored, which the
    /// instruction emulator carries out.
    Smsw,
    /// INVLPG of this linear address.
    Invlpg {
        /// The linear address (segment base applied).
        linear: u64,
    },
}

/// A decoded intercepted instruction and where the guest resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterceptedInstruction {
    /// What it does.
    pub kind: Intercepted,
    /// The address of the next instruction.
    pub next_rip: u64,
}

/// Why the instruction could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptError {
    /// The instruction bytes could not be read at this linear address.
    Fetch {
        /// The linear address of the instruction.
        linear: u64,
    },
    /// The memory operand of an LMSW could not be read: its address is
    /// not canonical, its page is not mapped, or it is not readable guest
    /// memory. (The CPU raises #GP or #PF for these before the intercept,
    /// so this means the guest's tables changed under the exit.)
    Operand {
        /// The linear address of the operand.
        linear: u64,
    },
    /// The bytes are not an instruction of the intercepted kinds.
    Unrecognized {
        /// The bytes read.
        bytes: InstructionBytes,
        /// The mode they were decoded in.
        mode: CpuMode,
    },
}

impl core::error::Error for InterceptError {}

impl fmt::Display for InterceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterceptError::Fetch { linear } => {
                write!(f, "cannot fetch the intercepted instruction at {linear:#x}")
            }
            InterceptError::Operand { linear } => {
                write!(f, "cannot read the LMSW operand at {linear:#x}")
            }
            InterceptError::Unrecognized { bytes, mode } => write!(
                f,
                "intercepted control-register or INVLPG exit at an instruction that is none ({bytes:?} in {mode})"
            ),
        }
    }
}

/// The general-purpose register behind `reg`, with its width in bits.
fn gpr(reg: Register) -> Option<(usize, u32)> {
    let r = reg as usize;
    let ax = Register::AX as usize;
    let eax = Register::EAX as usize;
    let rax = Register::RAX as usize;
    Some(match r {
        _ if (ax..ax + 16).contains(&r) => (r - ax, 16),
        _ if (eax..eax + 16).contains(&r) => (r - eax, 32),
        _ if (rax..rax + 16).contains(&r) => (r - rax, 64),
        _ => return None,
    })
}

fn cr_number(reg: Register) -> Option<u8> {
    let r = reg as usize;
    let cr0 = Register::CR0 as usize;
    (cr0..cr0 + 16).contains(&r).then(|| (r - cr0) as u8)
}

fn mask(bits: u32) -> u64 {
    match bits {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Read and decode the instruction at the vCPU's CS:RIP.
pub fn decode_intercepted<S: CpuState + ?Sized>(
    cpu: &S,
    memory: &mut GuestMemory,
) -> Result<InterceptedInstruction, InterceptError> {
    let control = cpu.control();
    let cs = cpu.segment(Segment::Cs);
    let mode = CpuMode::of(&control, cpu.rflags(), &cs);
    let bitness = mode.bitness();
    let rip = cpu.rip();
    let linear = if bitness == 64 {
        rip
    } else {
        cs.base.wrapping_add(rip & mask(bitness)) & 0xffff_ffff
    };
    let walker = Walker::new(control);
    let access = Access::new(AccessKind::Execute, cpu.cpl());
    let mut bytes = [0u8; 15];
    let mut got = 0usize;
    while got < bytes.len() {
        let at = linear.wrapping_add(got as u64);
        let Ok(t) = walker.translate(memory, at, access) else {
            break;
        };
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(bytes.len() - got);
        let Some(dst) = bytes.get_mut(got..got + n) else {
            break;
        };
        if memory.read(t.gpa, dst).is_err() {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Err(InterceptError::Fetch { linear });
    }
    let code = bytes.get(..got).unwrap_or(&[]);
    let unrecognized = InterceptError::Unrecognized {
        bytes: InstructionBytes::new(code),
        mode,
    };
    let mut decoder = Decoder::with_ip(bitness, code, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(unrecognized);
    }
    let next_rip = instr.next_ip() & mask(bitness);
    let operand_mask = if bitness == 64 { u64::MAX } else { 0xffff_ffff };
    let kind = match instr.mnemonic() {
        Mnemonic::Mov
            if instr.op0_kind() == OpKind::Register && instr.op1_kind() == OpKind::Register =>
        {
            if let Some(cr) = cr_number(instr.op0_register()) {
                let (index, _) = gpr(instr.op1_register()).ok_or(unrecognized)?;
                Intercepted::MovToCr {
                    cr,
                    value: cpu.gpr(index) & operand_mask,
                }
            } else if let Some(cr) = cr_number(instr.op1_register()) {
                let (index, _) = gpr(instr.op0_register()).ok_or(unrecognized)?;
                Intercepted::MovFromCr { cr, gpr: index }
            } else {
                return Err(unrecognized);
            }
        }
        Mnemonic::Clts => Intercepted::Clts,
        Mnemonic::Lmsw if instr.op0_kind() == OpKind::Register => {
            let (index, _) = gpr(instr.op0_register()).ok_or(unrecognized)?;
            Intercepted::Lmsw {
                value: cpu.gpr(index) as u16,
            }
        }
        Mnemonic::Lmsw if instr.op0_kind() == OpKind::Memory => {
            let linear = memory_operand(&instr, cpu, bitness);
            let mut word = [0u8; 2];
            for (i, byte) in word.iter_mut().enumerate() {
                let at = linear.wrapping_add(i as u64)
                    & if bitness == 64 { u64::MAX } else { 0xffff_ffff };
                if bitness == 64 && !canonical(&control, at) {
                    return Err(InterceptError::Operand { linear });
                }
                let read = Access::new(AccessKind::Read, cpu.cpl());
                let gpa = walker
                    .translate(memory, at, read)
                    .map_err(|_| InterceptError::Operand { linear })?
                    .gpa;
                memory
                    .read(gpa, core::slice::from_mut(byte))
                    .map_err(|_| InterceptError::Operand { linear })?;
            }
            Intercepted::Lmsw {
                value: u16::from_le_bytes(word),
            }
        }
        Mnemonic::Smsw => Intercepted::Smsw,
        Mnemonic::Invlpg if instr.op0_kind() == OpKind::Memory => Intercepted::Invlpg {
            linear: memory_operand(&instr, cpu, bitness),
        },
        _ => return Err(unrecognized),
    };
    Ok(InterceptedInstruction { kind, next_rip })
}

/// Whether `linear` is canonical (48 bits, 57 with CR4.LA57).
fn canonical(control: &ControlRegisters, linear: u64) -> bool {
    let shift = if control.cr4 & CR4_LA57 != 0 { 7 } else { 16 };
    (((linear << shift) as i64) >> shift) as u64 == linear
}

/// The linear address of `instr`'s memory operand: base, scaled index and
/// displacement wrapped to the address size (RIP-relative targets as iced
/// resolved them), plus the segment base (only FS and GS in 64-bit mode),
/// wrapped to 32 bits outside 64-bit mode.
fn memory_operand<S: CpuState + ?Sized>(instr: &Instruction, cpu: &S, bitness: u32) -> u64 {
    let base = instr.memory_base();
    let index = instr.memory_index();
    // The address size: a base or index register's width, else the
    // displacement's (2, 4 or 8 bytes for 16-, 32- or 64-bit addressing):
    // with a 0x67 prefix it is not the code size.
    let mut bits = match instr.memory_displ_size() {
        2 => 16,
        4 => 32,
        8 => 64,
        _ => bitness,
    };
    let mut ea = instr.memory_displacement64();
    if base == Register::RIP || base == Register::EIP {
        // iced resolved the RIP-relative target already.
        bits = if base == Register::EIP { 32 } else { 64 };
    } else {
        if let Some((i, w)) = gpr(base) {
            ea = ea.wrapping_add(cpu.gpr(i));
            bits = w;
        }
        if let Some((i, w)) = gpr(index) {
            ea = ea.wrapping_add(
                cpu.gpr(i)
                    .wrapping_mul(u64::from(instr.memory_index_scale())),
            );
            bits = w;
        }
    }
    let ea = ea & mask(bits);
    let segment = match instr.memory_segment() {
        Register::ES => Segment::Es,
        Register::CS => Segment::Cs,
        Register::SS => Segment::Ss,
        Register::FS => Segment::Fs,
        Register::GS => Segment::Gs,
        _ => Segment::Ds,
    };
    let seg_base = if bitness == 64 && !matches!(segment, Segment::Fs | Segment::Gs) {
        0
    } else {
        cpu.segment(segment).base
    };
    let linear = seg_base.wrapping_add(ea);
    if bitness == 64 {
        linear
    } else {
        linear & 0xffff_ffff
    }
}
