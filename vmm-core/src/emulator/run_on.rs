//! Run-on: carrying out the guest's next instruction in the emulator after
//! the VMM completed an I/O or MMIO exit, instead of entering the guest
//! for it (the exit loop's `vcpu::run_on` decides when).
//!
//! [`Emulator::run_on_step`] runs one instruction only if it is in the set
//! run-on allows and changes nothing beyond what [`RegisterSnapshot`]
//! holds and guest memory: integer moves and arithmetic on general-purpose
//! registers and memory, near jumps, calls and returns, Jcc, LOOP and
//! JCXZ, PUSH/POP of general-purpose registers, the string instructions
//! without a REP prefix, and IN/OUT where the guest may use the port without the I/O permission
//! bitmap (real mode, or CPL <= IOPL outside virtual-8086 mode). Anything
//! else (segment loads, far transfers, flags that change IF, TF or IOPL,
//! system and privileged instructions, x87/SSE/MMX, LOCK) is declined
//! before anything changes, and the hardware runs it.

use super::access::Context;
use super::alu;
use super::cpu::{CpuMode, CpuState, GuestBus, RFLAGS_IOPL};
use super::decode::{self, Decoded};
use super::error::EmulateError;
use super::operand::gpr_of;
use super::{Emulator, Traced};
use iced_x86::{MemorySize, Mnemonic, OpKind};

/// What [`Emulator::run_on_step`] did with the instruction at CS:RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOnStep {
    /// Not one run-on may run (or its bytes could not be fetched or
    /// decoded): nothing changed; the guest runs it.
    Declined,
    /// It ran: `port_io` says it was IN, OUT, INS or OUTS.
    Ran {
        /// The report an emulated instruction gives ([`Traced`]).
        traced: Traced,
        /// It accessed a port.
        port_io: bool,
    },
}

/// The registers a run-on instruction may change (all sixteen
/// general-purpose registers, RIP, RFLAGS), to put back when it faults
/// before anything outside the vCPU changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterSnapshot {
    gprs: [u64; 16],
    rip: u64,
    rflags: u64,
}

impl RegisterSnapshot {
    /// The registers of `state` now.
    pub fn take<S: CpuState + ?Sized>(state: &S) -> Self {
        let mut gprs = [0; 16];
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = state.gpr(i);
        }
        Self {
            gprs,
            rip: state.rip(),
            rflags: state.rflags(),
        }
    }

    /// Put them back into `state`, writing only those that differ.
    pub fn restore<S: CpuState + ?Sized>(&self, state: &mut S) {
        for (i, g) in self.gprs.iter().enumerate() {
            if state.gpr(i) != *g {
                state.set_gpr(i, *g);
            }
        }
        if state.rip() != self.rip {
            state.set_rip(self.rip);
        }
        if state.rflags() != self.rflags {
            state.set_rflags(self.rflags);
        }
    }
}

/// Whether every operand of `d` is a general-purpose register, memory, an
/// immediate or a near branch target (no segment, control, debug, x87,
/// MMX or vector register; no far pointer).
fn plain_operands(d: &Decoded) -> bool {
    let i = &d.instr;
    (0..i.op_count()).all(|n| match i.op_kind(n) {
        OpKind::Register => gpr_of(i.op_register(n)).is_some(),
        OpKind::Memory
        | OpKind::NearBranch16
        | OpKind::NearBranch32
        | OpKind::NearBranch64
        | OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64
        | OpKind::MemorySegSI
        | OpKind::MemorySegESI
        | OpKind::MemorySegRSI
        | OpKind::MemorySegDI
        | OpKind::MemorySegEDI
        | OpKind::MemorySegRDI
        | OpKind::MemoryESDI
        | OpKind::MemoryESEDI
        | OpKind::MemoryESRDI => true,
        _ => false,
    })
}

/// Whether run-on may carry out `d` (see the module documentation).
fn allowed<S: CpuState, B: GuestBus>(ctx: &Context<'_, S, B>, d: &Decoded) -> bool {
    let i = &d.instr;
    if i.has_lock_prefix() || !plain_operands(d) {
        return false;
    }
    // JMP and CALL through a far pointer in memory.
    if i.op_count() > 0
        && i.op0_kind() == OpKind::Memory
        && matches!(
            i.memory_size(),
            MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64
        )
    {
        return false;
    }
    // A REP string instruction: one that faults part way through has
    // written memory already, and the hardware running it again from the
    // start would not write the same (an overlapping forward copy reads
    // bytes it has overwritten). Only an I/O loop is worth running on.
    if (i.has_rep_prefix() || i.has_repne_prefix()) && is_string_memory(i.mnemonic()) {
        return false;
    }
    match i.mnemonic() {
        Mnemonic::In
        | Mnemonic::Out
        | Mnemonic::Insb
        | Mnemonic::Insw
        | Mnemonic::Insd
        | Mnemonic::Outsb
        | Mnemonic::Outsw
        | Mnemonic::Outsd => {
            // A REP INS/OUTS has its own exit, run without a decode
            // (and a run-on would pause it at the iteration bound).
            io_permitted(ctx) && !(i.has_rep_prefix() && is_string_io(i.mnemonic()))
        }
        Mnemonic::Mov
        | Mnemonic::Movzx
        | Mnemonic::Movsx
        | Mnemonic::Movsxd
        | Mnemonic::Lea
        | Mnemonic::Add
        | Mnemonic::Or
        | Mnemonic::Adc
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Sub
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test
        | Mnemonic::Inc
        | Mnemonic::Dec
        | Mnemonic::Not
        | Mnemonic::Neg
        | Mnemonic::Rol
        | Mnemonic::Ror
        | Mnemonic::Rcl
        | Mnemonic::Rcr
        | Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Shld
        | Mnemonic::Shrd
        | Mnemonic::Xchg
        | Mnemonic::Xadd
        | Mnemonic::Mul
        | Mnemonic::Imul
        | Mnemonic::Div
        | Mnemonic::Idiv
        | Mnemonic::Bt
        | Mnemonic::Bts
        | Mnemonic::Btr
        | Mnemonic::Btc
        | Mnemonic::Bsf
        | Mnemonic::Bsr
        | Mnemonic::Push
        | Mnemonic::Pop
        | Mnemonic::Jmp
        | Mnemonic::Call
        | Mnemonic::Ret
        | Mnemonic::Loop
        | Mnemonic::Loope
        | Mnemonic::Loopne
        | Mnemonic::Jcxz
        | Mnemonic::Jecxz
        | Mnemonic::Jrcxz
        | Mnemonic::Nop
        | Mnemonic::Pause
        | Mnemonic::Lfence
        | Mnemonic::Sfence
        | Mnemonic::Mfence
        | Mnemonic::Clc
        | Mnemonic::Stc
        | Mnemonic::Cmc
        | Mnemonic::Cld
        | Mnemonic::Std
        | Mnemonic::Cbw
        | Mnemonic::Cwde
        | Mnemonic::Cdqe
        | Mnemonic::Cwd
        | Mnemonic::Cdq
        | Mnemonic::Cqo => true,
        // Jcc, SETcc and CMOVcc, and the string instructions on memory
        // (a REP form was declined above).
        m => {
            alu::jcc_condition(m).is_some()
                || alu::setcc_condition(m).is_some()
                || alu::cmovcc_condition(m).is_some()
                || is_string_memory(m)
        }
    }
}

/// Whether `m` is a string instruction on memory (MOVS, STOS, LODS, CMPS,
/// SCAS).
fn is_string_memory(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Movsb
            | Mnemonic::Movsw
            | Mnemonic::Movsd
            | Mnemonic::Movsq
            | Mnemonic::Stosb
            | Mnemonic::Stosw
            | Mnemonic::Stosd
            | Mnemonic::Stosq
            | Mnemonic::Lodsb
            | Mnemonic::Lodsw
            | Mnemonic::Lodsd
            | Mnemonic::Lodsq
            | Mnemonic::Cmpsb
            | Mnemonic::Cmpsw
            | Mnemonic::Cmpsd
            | Mnemonic::Cmpsq
            | Mnemonic::Scasb
            | Mnemonic::Scasw
            | Mnemonic::Scasd
            | Mnemonic::Scasq
    )
}

fn is_string_io(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    )
}

/// Whether the guest may access any port without the TSS's I/O
/// permission bitmap, which the emulator does not read: real mode, or
/// CPL <= IOPL outside virtual-8086 mode. Otherwise the hardware checks.
fn io_permitted<S: CpuState, B: GuestBus>(ctx: &Context<'_, S, B>) -> bool {
    match ctx.mode {
        CpuMode::Real => true,
        CpuMode::Virtual8086 => false,
        _ => {
            let iopl = ((ctx.state.rflags() & RFLAGS_IOPL) >> 12) as u8;
            ctx.cpl <= iopl
        }
    }
}

impl Emulator {
    /// Run-on's step: fetch and decode the instruction at CS:RIP (through
    /// the vCPU's translation and decode caches) and carry it out if it
    /// is one run-on allows ([`RunOnStep::Ran`]); otherwise change nothing
    /// ([`RunOnStep::Declined`]). An error is what [`Emulator::emulate`]
    /// would give (an exception, a bus error); registers may have changed
    /// before it, so the caller keeps a [`RegisterSnapshot`] and decides
    /// whether to put it back (nothing outside the vCPU changed) or to
    /// treat the error as an emulated instruction's.
    pub fn run_on_step<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
    ) -> Result<RunOnStep, EmulateError> {
        let mut ctx = Context::new(state, bus, self.max_phys_bits);
        ctx.instructions = self.instructions;
        ctx.breakpoints = self.breakpoints;
        let d = match decode::fetch(&mut ctx) {
            Ok(d) => d,
            // The fetch itself faulted or the bytes do not decode: the
            // hardware finds out.
            Err(_) => return Ok(RunOnStep::Declined),
        };
        if !allowed(&ctx, &d) {
            return Ok(RunOnStep::Declined);
        }
        let port_io = matches!(
            d.instr.mnemonic(),
            Mnemonic::In
                | Mnemonic::Out
                | Mnemonic::Insb
                | Mnemonic::Insw
                | Mnemonic::Insd
                | Mnemonic::Outsb
                | Mnemonic::Outsw
                | Mnemonic::Outsd
        );
        let completion = self.run(&mut ctx, &d)?;
        Ok(RunOnStep::Ran {
            traced: ctx.traced(completion),
            port_io,
        })
    }
}
