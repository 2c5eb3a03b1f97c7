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
}

impl Decoded {
    fn new(instr: Instruction, bytes: &[u8], bitness: u32) -> Self {
        Self {
            hint_operand: super::hints::hintable_operand(&instr),
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
    let first = ctx.translate_range(la, in_page, AccessKind::Execute)?;
    ctx.bus_read(&first, &mut buf[..in_page])?;
    // The same bytes at the same RIP decode as before.
    if let Some(cache) = ctx.state.decode_cache() {
        if let Some(d) = cache.lookup(bitness, rip, buf.get(..in_page).unwrap_or(&[])) {
            return Ok(d);
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
