//! Fetching the instruction at CS:RIP from guest memory (through the CS
//! limit and the page tables, across a page boundary only when the
//! instruction needs the bytes) and decoding it with iced-x86.

use super::access::Context;
use super::cpu::{CpuMode, CpuState, GuestBus, Segment};
use super::error::{EmulateError, Exception, InstructionBytes};
use crate::paging::{AccessKind, PAGE_SIZE};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

/// The longest x86 instruction.
pub(crate) const MAX_INSTRUCTION_LEN: usize = 15;

/// A decoded instruction with what the emulator needs beside it.
#[derive(Clone)]
pub(crate) struct Decoded {
    pub instr: Instruction,
    pub bytes: InstructionBytes,
    /// The effective address size in bits (16, 32 or 64).
    pub address_size: u32,
    /// The number of the operand an access hint may stand for (see
    /// `hints::hintable_operand`), worked out once per decode.
    pub hint_operand: Option<u32>,
    /// The memory operand's address parts, looked up in `instr` once per
    /// decode rather than at every access.
    pub address: AddressParts,
    /// The instruction's form when it is a MOV between memory and a
    /// general-purpose register or an immediate (see `plain_mov`).
    pub plain_mov: Option<super::plain_mov::PlainMov>,
}

/// How the memory operand's effective address and segment follow from
/// the registers: what `Instruction::memory_base`, `memory_index`,
/// `memory_index_scale`, `memory_displacement64` and `memory_segment`
/// give, with the registers already resolved to general-purpose register
/// numbers (`None`: no register, or one that is not a general-purpose
/// register, such as RIP, whose target is in the displacement).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddressParts {
    /// The base register.
    pub base: Option<Gpr>,
    /// The index register.
    pub index: Option<Gpr>,
    /// The index's scale (1, 2, 4 or 8).
    pub scale: u8,
    /// The displacement, sign-extended (for RIP-relative operands, the
    /// target address).
    pub displacement: u64,
    /// The segment (DS when the instruction names none that applies).
    pub segment: Segment,
    /// The operand's size in bytes, for the sizes the emulator handles
    /// (`operand::memory_size_bytes`).
    pub size: Option<u8>,
}

/// A general-purpose register at a width, in a few bytes (kept in every
/// cached decode): what `operand::gpr_of` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gpr {
    /// The register's encoding index (0-15).
    pub index: u8,
    /// The width in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// AH, CH, DH or BH.
    pub high: bool,
}

impl Gpr {
    /// The register behind an iced register, if it is a general-purpose one.
    pub fn of(reg: iced_x86::Register) -> Option<Self> {
        let (index, size, high) = super::operand::gpr_of(reg)?;
        Some(Self {
            index: u8::try_from(index).ok()?,
            size: u8::try_from(size).ok()?,
            high,
        })
    }
}

impl AddressParts {
    fn of(i: &Instruction) -> Self {
        use super::operand::{memory_size_bytes, segment_of};
        Self {
            base: Gpr::of(i.memory_base()),
            index: Gpr::of(i.memory_index()),
            // 1, 2, 4 or 8.
            scale: i.memory_index_scale() as u8,
            displacement: i.memory_displacement64(),
            segment: segment_of(i.memory_segment()).unwrap_or(Segment::Ds),
            size: memory_size_bytes(i.memory_size()).and_then(|s| u8::try_from(s).ok()),
        }
    }
}

impl Decoded {
    fn new(instr: Instruction, bytes: &[u8], bitness: u32) -> Self {
        let address = AddressParts::of(&instr);
        Self {
            hint_operand: super::hints::hintable_operand(&instr),
            plain_mov: super::plain_mov::PlainMov::of(&instr, address.size),
            address,
            instr,
            bytes: InstructionBytes::new(bytes),
            address_size: address_size(bitness, bytes),
        }
    }
}

/// The address size selected by the mode and an address-size prefix.
fn address_size(bitness: u32, bytes: &[u8]) -> u32 {
    let mut toggled = false;
    for &b in bytes {
        match b {
            0x67 => toggled = true,
            0x66 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            0x40..=0x4f if bitness == 64 => {}
            _ => break,
        }
    }
    match (bitness, toggled) {
        (64, false) => 64,
        (64, true) | (32, false) | (16, true) => 32,
        _ => 16,
    }
}

/// Decode `bytes` at `rip`. `Ok(None)` means more bytes are needed.
fn try_decode(bitness: u32, bytes: &[u8], rip: u64) -> Result<Option<Instruction>, Exception> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    match decoder.last_error() {
        DecoderError::None if !instr.is_invalid() => Ok(Some(instr)),
        DecoderError::NoMoreBytes => Ok(None),
        _ => Err(Exception::InvalidOpcode),
    }
}

/// Decode bytes supplied by the backend (an SVM decode assist, KVM's
/// instruction bytes). `None` if they do not hold a whole instruction.
pub(crate) fn decode_given(
    mode: CpuMode,
    rip: u64,
    bytes: &[u8],
) -> Result<Option<Decoded>, Exception> {
    let bytes = bytes
        .get(..bytes.len().min(MAX_INSTRUCTION_LEN))
        .unwrap_or(&[]);
    let bitness = mode.bitness();
    Ok(try_decode(bitness, bytes, rip)?.map(|instr| {
        let len = instr.len().min(bytes.len());
        let taken = bytes.get(..len).unwrap_or(bytes);
        Decoded::new(instr, taken, bitness)
    }))
}

/// Fetch and decode the instruction at CS:RIP.
#[inline]
pub(crate) fn fetch<S: CpuState, B: GuestBus>(
    ctx: &mut Context<'_, S, B>,
) -> Result<Decoded, EmulateError> {
    let mode = ctx.mode;
    let bitness = mode.bitness();
    let rip = ctx.state.rip();
    let cs = ctx.state.segment(Segment::Cs);
    // How many bytes the CS limit allows, and where they start.
    let (la, available) = if mode == CpuMode::Long64 {
        let la = ctx.linear(Segment::Cs, rip, 1, AccessKind::Execute)?;
        (la, MAX_INSTRUCTION_LEN)
    } else {
        let ip = rip & 0xffff_ffff;
        if ip > u64::from(cs.limit) {
            return Err(Exception::GeneralProtection(0).into());
        }
        let room = u64::from(cs.limit) - ip + 1;
        let la = cs.base.wrapping_add(ip) & 0xffff_ffff;
        (la, room.min(MAX_INSTRUCTION_LEN as u64) as usize)
    };
    let mut buf = [0u8; MAX_INSTRUCTION_LEN];
    let in_page = ((PAGE_SIZE - (la & (PAGE_SIZE - 1))) as usize).min(available);
    ctx.fetch_in_page(la, &mut buf[..in_page])?;
    // The same bytes at the same RIP decode as before.
    if let Some(cache) = ctx.state.decode_cache() {
        if let Some(d) = cache.lookup(bitness, rip, &buf, in_page) {
            return Ok(d.clone());
        }
    }
    let mut have = in_page;
    loop {
        let bytes = &buf[..have];
        if let Some(instr) = try_decode(bitness, bytes, rip)? {
            let len = instr.len().min(have);
            let taken = &buf[..len];
            let d = Decoded::new(instr, taken, bitness);
            if len <= in_page {
                if let Some(cache) = ctx.state.decode_cache() {
                    cache.insert(bitness, rip, &d);
                }
            }
            return Ok(d);
        }
        if have >= available {
            // Out of bytes: past the CS limit, or longer than 15 bytes.
            return Err(if available < MAX_INSTRUCTION_LEN {
                Exception::GeneralProtection(0).into()
            } else {
                Exception::InvalidOpcode.into()
            });
        }
        // The instruction continues on the next page.
        let next = if mode == CpuMode::Long64 {
            la.wrapping_add(have as u64)
        } else {
            la.wrapping_add(have as u64) & 0xffff_ffff
        };
        let rest = available - have;
        let second = ctx.translate_range(next, rest, AccessKind::Execute)?;
        ctx.bus_read(&second, &mut buf[have..available])?;
        have = available;
    }
}
