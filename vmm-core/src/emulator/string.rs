//! The string instructions (MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS) with
//! REP/REPE/REPNE, in both directions and every address size. A REP
//! instruction runs at most a bounded number of iterations per call; RCX,
//! RSI and RDI are updated after every iteration exactly as hardware does,
//! so a fault or a pause leaves the guest able to resume.

use super::access::Context;
use super::alu::{self, AluOp};
use super::cpu::{CpuState, GuestBus, Segment, RFLAGS_DF, RFLAGS_ZF};
use super::decode::Decoded;
use super::error::EmulateError;
use super::operand::address_mask;
use crate::paging::{AccessKind, PAGE_SIZE};
use iced_x86::{Mnemonic, OpKind};

#[derive(Clone, Copy, PartialEq, Eq)]
enum StringOp {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

/// What a call to [`Context::string`] did.
pub(crate) enum StringOutcome {
    /// Not a string instruction.
    NotString,
    /// Finished: advance RIP.
    Done,
    /// The iteration bound was reached: leave RIP on the instruction.
    Paused,
}

fn classify(d: &Decoded) -> Option<(StringOp, usize)> {
    use Mnemonic as M;
    let m = d.instr.mnemonic();
    let (op, size) = match m {
        M::Movsb => (StringOp::Movs, 1),
        M::Movsw => (StringOp::Movs, 2),
        M::Movsd => (StringOp::Movs, 4),
        M::Movsq => (StringOp::Movs, 8),
        M::Stosb => (StringOp::Stos, 1),
        M::Stosw => (StringOp::Stos, 2),
        M::Stosd => (StringOp::Stos, 4),
        M::Stosq => (StringOp::Stos, 8),
        M::Lodsb => (StringOp::Lods, 1),
        M::Lodsw => (StringOp::Lods, 2),
        M::Lodsd => (StringOp::Lods, 4),
        M::Lodsq => (StringOp::Lods, 8),
        M::Cmpsb => (StringOp::Cmps, 1),
        M::Cmpsw => (StringOp::Cmps, 2),
        M::Cmpsd => (StringOp::Cmps, 4),
        M::Cmpsq => (StringOp::Cmps, 8),
        M::Scasb => (StringOp::Scas, 1),
        M::Scasw => (StringOp::Scas, 2),
        M::Scasd => (StringOp::Scas, 4),
        M::Scasq => (StringOp::Scas, 8),
        M::Insb => (StringOp::Ins, 1),
        M::Insw => (StringOp::Ins, 2),
        M::Insd => (StringOp::Ins, 4),
        M::Outsb => (StringOp::Outs, 1),
        M::Outsw => (StringOp::Outs, 2),
        M::Outsd => (StringOp::Outs, 4),
        _ => return None,
    };
    // MOVSD and CMPSD are also SSE mnemonics: the string forms have
    // string memory operands.
    let is_string_operand = |k: OpKind| {
        matches!(
            k,
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    };
    let count = d.instr.op_count();
    let any = (0..count).any(|n| is_string_operand(d.instr.op_kind(n)));
    any.then_some((op, size))
}

/// A string instruction as the emulator carries it out: what a decode
/// finds, or what a port I/O exit reports.
#[derive(Clone, Copy)]
struct StringInstr {
    op: StringOp,
    /// Element size in bytes.
    size: usize,
    /// Address size in bits.
    asize: u32,
    repe: bool,
    repne: bool,
    /// The segment of the source operand (DS unless overridden).
    src_seg: Segment,
}

/// A string port instruction (INS or OUTS) whose particulars the vCPU
/// reported with its I/O exit (SVM's EXITINFO1, VMX's exit qualification),
/// so that it runs without fetching and decoding the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortString {
    /// INS (true) or OUTS.
    pub input: bool,
    /// Element size: 1, 2 or 4 bytes.
    pub size: u8,
    /// Address size: 16, 32 or 64 bits.
    pub address_size: u8,
    /// A REP prefix.
    pub rep: bool,
    /// The source segment of OUTS (DS unless overridden; INS always
    /// writes through ES).
    pub segment: Segment,
    /// The instruction after this one.
    pub next_rip: u64,
}

impl PortString {
    /// Whether the particulars describe an INS/OUTS at all (sizes a
    /// backend could not have meant send the emulator to decode instead).
    pub fn is_valid(&self) -> bool {
        matches!(self.size, 1 | 2 | 4) && matches!(self.address_size, 16 | 32 | 64)
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// Run a decoded string instruction for at most `max_iterations`
    /// iterations.
    pub fn string(
        &mut self,
        d: &Decoded,
        max_iterations: u64,
    ) -> Result<StringOutcome, EmulateError> {
        let Some((op, size)) = classify(d) else {
            return Ok(StringOutcome::NotString);
        };
        let instr = StringInstr {
            op,
            size,
            asize: d.address_size,
            repe: d.instr.has_repe_prefix(),
            repne: d.instr.has_repne_prefix(),
            src_seg: self.memory_segment(d),
        };
        self.run_string(instr, max_iterations)
    }

    /// Run the string port instruction an I/O exit described (checked with
    /// [`PortString::is_valid`]), for at most `max_iterations` iterations.
    pub fn port_string(
        &mut self,
        io: &PortString,
        max_iterations: u64,
    ) -> Result<StringOutcome, EmulateError> {
        let instr = StringInstr {
            op: if io.input {
                StringOp::Ins
            } else {
                StringOp::Outs
            },
            size: io.size.into(),
            asize: io.address_size.into(),
            // INS/OUTS take F3 as REP whatever its name, and F2 the same.
            repe: io.rep,
            repne: false,
            src_seg: io.segment,
        };
        self.run_string(instr, max_iterations)
    }

    fn run_string(
        &mut self,
        instr: StringInstr,
        max_iterations: u64,
    ) -> Result<StringOutcome, EmulateError> {
        let StringInstr {
            op,
            size,
            asize,
            repe,
            repne,
            src_seg,
        } = instr;
        let amask = address_mask(asize);
        let rep = repe || repne;
        let port = self.state.gpr(2) as u16;
        let mut done = 0u64;
        loop {
            if rep && self.state.gpr(1) & amask == 0 {
                return Ok(StringOutcome::Done);
            }
            if rep && done >= max_iterations.max(1) {
                return Ok(StringOutcome::Paused);
            }
            if rep && op != StringOp::Lods && op != StringOp::Cmps && op != StringOp::Scas {
                let count = self.state.gpr(1) & amask;
                let budget = max_iterations.max(1) - done;
                let n = match op {
                    StringOp::Ins | StringOp::Outs => {
                        self.port_run(op, size, asize, src_seg, port, count.min(budget))?
                    }
                    _ => self.page_run(op, size, asize, src_seg, count.min(budget))?,
                };
                if n > 0 {
                    done += n;
                    continue;
                }
            }
            let step = if self.state.rflags() & RFLAGS_DF != 0 {
                (size as u64).wrapping_neg()
            } else {
                size as u64
            };
            let rsi = self.state.gpr(6) & amask;
            let rdi = self.state.gpr(7) & amask;
            let (mut uses_si, mut uses_di) = (false, false);
            match op {
                StringOp::Movs => {
                    let v = self.read_value(src_seg, rsi, size)?;
                    self.write_value(Segment::Es, rdi, size, v)?;
                    (uses_si, uses_di) = (true, true);
                }
                StringOp::Stos => {
                    let v = self.read_gpr(0, size, false);
                    self.write_value(Segment::Es, rdi, size, v)?;
                    uses_di = true;
                }
                StringOp::Lods => {
                    let v = self.read_value(src_seg, rsi, size)?;
                    self.write_gpr(0, size, false, v);
                    uses_si = true;
                }
                StringOp::Cmps | StringOp::Scas => {
                    let a = if op == StringOp::Cmps {
                        uses_si = true;
                        self.read_value(src_seg, rsi, size)?
                    } else {
                        self.read_gpr(0, size, false)
                    };
                    let b = self.read_value(Segment::Es, rdi, size)?;
                    uses_di = true;
                    let (_, f) = alu::binary(AluOp::Sub, a, b, 0, size);
                    let flags = alu::merge_status(self.state.rflags(), f);
                    self.state.set_rflags(flags);
                }
                StringOp::Ins => {
                    // The destination is checked before the port is read.
                    let range = self.prepare(Segment::Es, rdi, size, AccessKind::Write)?;
                    let mut b = [0u8; 4];
                    let b = &mut b[..size.min(4)];
                    self.bus.io_read(port, b)?;
                    self.bus_write(&range, b)?;
                    uses_di = true;
                }
                StringOp::Outs => {
                    let v = self.read_value(src_seg, rsi, size)?;
                    let b = v.to_le_bytes();
                    self.bus.io_write(port, &b[..size.min(4)])?;
                    uses_si = true;
                }
            }
            if uses_si {
                self.write_gpr_asize(6, asize, rsi.wrapping_add(step) & amask);
            }
            if uses_di {
                self.write_gpr_asize(7, asize, rdi.wrapping_add(step) & amask);
            }
            done += 1;
            if !rep {
                return Ok(StringOutcome::Done);
            }
            let count = (self.state.gpr(1) & amask).wrapping_sub(1) & amask;
            self.write_gpr_asize(1, asize, count);
            if matches!(op, StringOp::Cmps | StringOp::Scas) {
                let zf = self.state.rflags() & RFLAGS_ZF != 0;
                if (repe && !zf) || (repne && zf) {
                    return Ok(StringOutcome::Done);
                }
            }
        }
    }

    /// How many elements from `seg:off` onwards stay inside the address
    /// size and inside the page of the first element, in the direction
    /// RFLAGS.DF says; 0 when the first element cannot be translated.
    fn page_room(&self, seg: Segment, off: u64, size: usize, asize: u32, kind: AccessKind) -> u64 {
        let amask = address_mask(asize);
        let down = self.state.rflags() & RFLAGS_DF != 0;
        let size64 = size as u64;
        let Ok(la) = self.linear(seg, off, size, kind) else {
            return 0;
        };
        let in_page = la & (PAGE_SIZE - 1);
        if in_page + size64 > PAGE_SIZE {
            return 0;
        }
        // The first element itself must not wrap the address size.
        let avail = amask - off;
        if avail < size64 - 1 {
            return 0;
        }
        // With a 64-bit address size, `off` and `avail` can be u64::MAX:
        // the element counts saturate instead of wrapping (the page bounds
        // them far below that anyway).
        if down {
            (in_page / size64 + 1).min((off / size64).saturating_add(1))
        } else {
            ((PAGE_SIZE - in_page) / size64)
                .min(((avail - (size64 - 1)) / size64).saturating_add(1))
        }
    }

    /// The guest-physical address of the element at `seg:first` of a run
    /// whose other end is the element at `seg:last`, both checked for
    /// `kind` and each inside one page; `None` sends the caller to the
    /// one-at-a-time path, which raises any fault at the exact iteration.
    fn run_start(
        &mut self,
        seg: Segment,
        first: u64,
        last: u64,
        size: usize,
        kind: AccessKind,
    ) -> Option<u64> {
        let start = self.prepare(seg, first, size, kind).ok()?.single()?;
        self.prepare(seg, last, size, kind).ok()?.single()?;
        Some(start)
    }

    /// A run of REP INS/OUTS iterations (upwards, DF clear) whose memory
    /// side lies inside one page of RAM: checked and translated once (first
    /// and last element, before the port is touched), then the port moves
    /// all elements in one string access and memory in one copy. The device
    /// sees the same sequence of element accesses as the one-at-a-time
    /// path. Returns the iterations done; 0 means "take the one-at-a-time
    /// path" (DF set, MMIO, a page or address-size boundary, or a fault,
    /// which that path raises at the exact iteration).
    fn port_run(
        &mut self,
        op: StringOp,
        size: usize,
        asize: u32,
        src_seg: Segment,
        port: u16,
        max: u64,
    ) -> Result<u64, EmulateError> {
        if max < 2 || self.state.rflags() & RFLAGS_DF != 0 {
            return Ok(0);
        }
        let amask = address_mask(asize);
        let (seg, reg, kind) = match op {
            StringOp::Ins => (Segment::Es, 7, AccessKind::Write),
            StringOp::Outs => (src_seg, 6, AccessKind::Read),
            _ => return Ok(0),
        };
        let off = self.state.gpr(reg) & amask;
        let n = max.min(self.page_room(seg, off, size, asize, kind));
        if n < 2 {
            return Ok(0);
        }
        let size64 = size as u64;
        let Some(first) = self.run_start(seg, off, off + (n - 1) * size64, size, kind) else {
            return Ok(0);
        };
        let bytes = (n * size64) as usize;
        if !self.bus.is_ram(first, bytes) {
            return Ok(0);
        }
        let mut buf = [0u8; PAGE_SIZE as usize];
        let Some(buf) = buf.get_mut(..bytes) else {
            return Ok(0);
        };
        if op == StringOp::Ins {
            self.bus.io_read_string(port, size, buf)?;
            self.bus.write_physical(first, buf)?;
        } else {
            self.bus.read_physical(first, buf)?;
            self.bus.io_write_string(port, size, buf)?;
        }
        self.write_gpr_asize(reg, asize, off.wrapping_add(bytes as u64) & amask);
        let count = (self.state.gpr(1) & amask).wrapping_sub(n) & amask;
        self.write_gpr_asize(1, asize, count);
        Ok(n)
    }

    /// A run of REP MOVS/STOS iterations whose elements all lie inside one
    /// page on each side: checked and translated once (first and last
    /// element), then moved element by element with the same accesses the
    /// one-at-a-time path makes. Returns the iterations done; 0 means "take
    /// the one-at-a-time path", which also raises any fault at the exact
    /// iteration hardware would.
    fn page_run(
        &mut self,
        op: StringOp,
        size: usize,
        asize: u32,
        src_seg: Segment,
        max: u64,
    ) -> Result<u64, EmulateError> {
        if max < 2 {
            return Ok(0);
        }
        let amask = address_mask(asize);
        let down = self.state.rflags() & RFLAGS_DF != 0;
        let size64 = size as u64;
        let rsi = self.state.gpr(6) & amask;
        let rdi = self.state.gpr(7) & amask;
        let mut n = max.min(self.page_room(Segment::Es, rdi, size, asize, AccessKind::Write));
        if op == StringOp::Movs {
            n = n.min(self.page_room(src_seg, rsi, size, asize, AccessKind::Read));
        }
        if n < 2 {
            return Ok(0);
        }
        let span = (n - 1) * size64;
        let last = |off: u64| if down { off - span } else { off + span };
        let Some(dst) = self.run_start(Segment::Es, rdi, last(rdi), size, AccessKind::Write) else {
            return Ok(0);
        };
        let src = if op == StringOp::Movs {
            match self.run_start(src_seg, rsi, last(rsi), size, AccessKind::Read) {
                Some(src) => Some(src),
                None => return Ok(0),
            }
        } else {
            None
        };
        let value = self.read_gpr(0, size, false).to_le_bytes();
        let mut buf = [0u8; 8];
        let buf = &mut buf[..size.min(8)];
        for i in 0..n {
            let delta = i * size64;
            let at = |base: u64| if down { base - delta } else { base + delta };
            match src {
                Some(src) => self.bus.read_physical(at(src), buf)?,
                None => buf.copy_from_slice(&value[..buf.len()]),
            }
            self.bus.write_physical(at(dst), buf)?;
        }
        let moved = n * size64;
        let advance = |off: u64| {
            (if down {
                off.wrapping_sub(moved)
            } else {
                off.wrapping_add(moved)
            }) & amask
        };
        if op == StringOp::Movs {
            self.write_gpr_asize(6, asize, advance(rsi));
        }
        self.write_gpr_asize(7, asize, advance(rdi));
        let count = (self.state.gpr(1) & amask).wrapping_sub(n) & amask;
        self.write_gpr_asize(1, asize, count);
        Ok(n)
    }
}
