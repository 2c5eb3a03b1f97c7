//! Instruction decoding and emulation for accesses to emulated memory.
//!
//! When the guest touches MMIO (a nested-paging violation), faults under
//! shadow paging, or runs a string port instruction, the backend hands the
//! vCPU to [`Emulator::emulate`]: it fetches the instruction at CS:RIP
//! through the guest's segmentation and page tables (the shared
//! [`crate::paging::Walker`]), decodes it with iced-x86 in whatever mode the
//! vCPU is in, and carries it out against guest memory and devices.
//!
//! The emulator is generic over two small traits, so tests and fuzzers plug
//! in mocks: [`CpuState`] (registers, segments, control registers) and
//! [`GuestBus`] (guest-physical memory that may be MMIO, and I/O ports).
//! The emulator knows nothing of the VM around it: the vCPU layer
//! (`crate::vcpu`) makes [`crate::vm::Vm`] a [`GuestBus`] and turns
//! [`EmulateError`]s into the VM's stop reasons.
//!
//! The module forbids `unsafe` code: it decodes and carries out
//! instructions a hostile guest chose, and needs nothing the hardware
//! alone can do.
//!
//! Faults the guest must see come back as [`Exception`]s for the backend to
//! inject (#DE, #PF with its error code and CR2, #GP, #SS, #NP, #UD, #NM,
//! #AC); instructions the emulator does not implement come back as
//! [`EmulateError::Unsupported`] with the bytes, mode and RIP, and those
//! whose effect it does not model (a call gate, a task switch, a far
//! return to an outer level) as [`EmulateError::NotModelled`] naming it,
//! for the VM to stop with. Nothing a guest does makes it panic.
//!
//! The general-purpose integer set is covered: MOV and its extending
//! forms, the ALU group, INC/DEC/NOT/NEG, MUL/IMUL/DIV/IDIV (`muldiv`),
//! shifts, rotates and SHLD/SHRD, bit scans and counts and MOVBE (`bits`),
//! BT*, SETcc, CMOVcc, XCHG/XADD/CMPXCHG/8B/16B, PUSH/POP, ENTER/LEAVE
//! (`stack_frame`), the string
//! instructions, SMSW/LMSW (`system`), SGDT/SIDT/SLDT/STR and LLDT/LTR
//! (`descriptor_tables`), segment-register loads (`segment_load`), near
//! and far JMP/CALL/RET (`transfer`) and IRET (`iret`); and the data
//! moves of SSE/AVX (`vector`) and MMX (`mmx`, through the x87 registers
//! [`CpuState::x87`] exposes), MASKMOVQ/MASKMOVDQU (`masked_store`), and the x87 stores (`x87`: FST/FSTP,
//! FIST/FISTP/FISTTP, FNSTSW/FNSTCW, rounded and flagged as the FPU
//! does). Flags the manuals leave undefined get the values AMD
//! processors give (the differential test's strict mode checks them on
//! the host), and where the vendors differ otherwise the emulator does as
//! AMD and QEMU do: a REP string instruction with a 32-bit address size
//! and ECX = 0 leaves RCX, RSI and RDI whole (Intel processors clear
//! their upper halves). Memory with nothing behind it reads as all ones and drops
//! writes (the [`GuestBus`] of a VM does that), so every instruction the
//! emulator runs sees hardware's behaviour there.
//!
//! AVX (VEX-encoded) moves need the vCPU to expose YMM state and XCR0
//! through [`CpuState`]; otherwise they are reported as unsupported. LMSW
//! needs [`CpuState::set_cr0`], segment loads, far transfers and IRET
//! [`CpuState::descriptor_state`]; a vCPU without them reports those as
//! unsupported.
//!
//! Debug traps: the data accesses are matched against the guest's data
//! breakpoints ([`Emulator::breakpoints`]), and
//! [`Emulator::emulate_traced`] reports the DR6.B0-B3 bits hit and whether
//! the instruction loaded SS (MOV SS, POP SS), whose shadow it also sets
//! through [`CpuState::set_mov_ss_shadow`]; raising the #DB (with the
//! single-step trap RFLAGS.TF asks for) is left to the exit loop.
//!
//! Limits, by design or not yet done: x87 loads and arithmetic, FBSTP,
//! FNSTENV/FNSAVE/FXSAVE into a device (into unassigned memory they
//! complete with their effects alone), XSAVE, MMX and SSE arithmetic on
//! memory, and EVEX (AVX-512) are reported as unsupported (the VM stops; reads
//! of unmapped memory never get here, nested and shadow paging map it to
//! a page of all-ones); the I/O permission bitmap is not consulted for
//! INS/OUTS (VMX and SVM check it before the exit); a breakpoint hit by
//! MOV SS itself is not reported; MOV to and from control and debug
//! registers is not emulated.
//!
//! ```
//! use vmm_core::emulator::{Completion, Emulator, RegisterFile};
//! use vmm_core::test_host::{TestHost, TestVmBuilder};
//! use std::sync::Arc;
//!
//! // A real-mode guest with `mov [bx], al` (88 07) at 0x1000.
//! let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0).ram(0x10000).build().unwrap();
//! vm.memory_mut().write(0x1000, &[0x88, 0x07]).unwrap();
//! let mut cpu = RegisterFile::real_mode();
//! cpu.rip = 0x1000;
//! cpu.gprs[0] = 0x5a; // AL
//! cpu.gprs[3] = 0x2000; // BX
//! let done = Emulator::default().emulate(&mut cpu, &mut vm).unwrap();
//! assert_eq!(done, Completion::Retired);
//! assert_eq!(cpu.rip, 0x1002);
//! assert_eq!(vm.memory().read_u8(0x2000).unwrap(), 0x5a);
//! ```
#![forbid(unsafe_code)]

mod access;
mod alu;
mod bits;
mod breakpoints;
mod cpu;
mod decode;
mod decode_cache;
mod descriptor_tables;
mod error;
mod execute;
mod hints;
mod iret;
mod masked_store;
mod mmx;
mod muldiv;
mod operand;
mod plain_mov;
mod run_on;
mod segment_load;
mod stack_frame;
mod string;
mod system;
mod transfer;
mod translation_cache;
mod vector;
mod x87;

pub use breakpoints::Breakpoints;
pub use cpu::{
    BusError, CpuMode, CpuState, DescriptorState, DescriptorTable, GuestBus, RegisterFile, Segment,
    SegmentRegister, SystemSegment, X87Registers, RFLAGS_AC, RFLAGS_AF, RFLAGS_CF, RFLAGS_DF,
    RFLAGS_FIXED, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_OF, RFLAGS_PF, RFLAGS_RF, RFLAGS_SF,
    RFLAGS_STATUS, RFLAGS_TF, RFLAGS_VM, RFLAGS_ZF,
};
pub use decode_cache::DecodeCache;
pub use error::{EmulateError, Exception, InstructionBytes};
pub use execute::undefined_flags;
pub use hints::{AccessHint, Hints};
pub use run_on::{RegisterSnapshot, RunOnStep};
pub use string::PortString;
pub use translation_cache::TranslationCache;

use access::Context;
use string::StringOutcome;

/// How an emulation call ended, when the guest takes no exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The instruction completed and RIP points past it.
    Retired,
    /// A REP instruction reached the per-call iteration bound: RCX, RSI
    /// and RDI reflect the iterations done and RIP still points at the
    /// instruction, so the guest resumes it (after any pending interrupt).
    Paused,
}

/// The emulator's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulator {
    /// The most REP iterations one call performs before returning
    /// [`Completion::Paused`] (at least one is always done).
    pub max_rep_iterations: u64,
    /// The guest's MAXPHYADDR, for reserved-bit checks in page tables.
    pub max_phys_bits: u8,
    /// Which model-dependent instructions the guest's CPU has.
    pub instructions: OptionalInstructions,
    /// The guest's data breakpoints, matched against the instruction's
    /// data accesses (see [`Traced::breakpoint_hits`]).
    pub breakpoints: Breakpoints,
}

/// What [`Emulator::emulate_traced`] reports beyond the [`Completion`]:
/// what the instruction owes the guest once it retires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traced {
    /// How the call ended.
    pub completion: Completion,
    /// DR6.B0-B3 of the enabled data breakpoints its accesses matched: the
    /// #DB trap hardware raises after the instruction (or REP iteration).
    pub breakpoint_hits: u64,
    /// It loaded SS (MOV SS, POP SS): interrupts, NMIs and debug traps are
    /// held until the next instruction has run, as on hardware (the vCPU
    /// was told through [`CpuState::set_mov_ss_shadow`]).
    pub mov_ss_shadow: bool,
}

/// Instructions that exist only where CPUID says so. Without them the same
/// bytes mean something else, as on hardware: TZCNT (F3 0F BC) is BSF with
/// an ignored REP prefix, LZCNT (F3 0F BD) is BSR, and POPCNT and MOVBE are
/// #UD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalInstructions {
    /// TZCNT (BMI1: CPUID 7.0 EBX bit 3).
    pub tzcnt: bool,
    /// LZCNT (ABM: CPUID 0x8000_0001 ECX bit 5).
    pub lzcnt: bool,
    /// POPCNT (CPUID 1 ECX bit 23).
    pub popcnt: bool,
    /// MOVBE (CPUID 1 ECX bit 22).
    pub movbe: bool,
}

impl OptionalInstructions {
    /// Every one of them (the host CPU's view in the differential tests).
    pub const ALL: Self = Self {
        tzcnt: true,
        lzcnt: true,
        popcnt: true,
        movbe: true,
    };

    /// What a CPU with these CPUID answers has (`cpuid(leaf, subleaf)`
    /// gives EAX, EBX, ECX, EDX).
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let leaf1 = cpuid(1, 0);
        let max = cpuid(0, 0)[0];
        let leaf7 = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let ext1 = if max_ext >= 0x8000_0001 {
            cpuid(0x8000_0001, 0)
        } else {
            [0; 4]
        };
        Self {
            tzcnt: leaf7[1] & (1 << 3) != 0,
            lzcnt: ext1[2] & (1 << 5) != 0,
            popcnt: leaf1[2] & (1 << 23) != 0,
            movbe: leaf1[2] & (1 << 22) != 0,
        }
    }
}

impl Default for Emulator {
    fn default() -> Self {
        Self {
            max_rep_iterations: 1024,
            max_phys_bits: 46,
            instructions: OptionalInstructions::ALL,
            breakpoints: Breakpoints::NONE,
        }
    }
}

/// How many times a locked instruction is retried after losing a race.
const LOCK_RETRIES: u32 = 8;

impl Emulator {
    /// Fetch, decode and execute the instruction at CS:RIP.
    pub fn emulate<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
    ) -> Result<Completion, EmulateError> {
        self.emulate_with_bytes(state, bus, &[])
    }

    /// Like [`Emulator::emulate`], but decode from `bytes` when they hold
    /// the whole instruction (the bytes an SVM decode assist or KVM hands
    /// over); otherwise fetch from guest memory.
    pub fn emulate_with_bytes<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
        bytes: &[u8],
    ) -> Result<Completion, EmulateError> {
        let hints = Hints {
            access: None,
            bytes: (!bytes.is_empty()).then(|| InstructionBytes::new(bytes)),
        };
        self.emulate_hinted(state, bus, &hints)
    }

    /// Like [`Emulator::emulate`], with what the hardware reported with
    /// the exit ([`Hints`]): the instruction is decoded from the given
    /// bytes when they hold a whole instruction, and the faulting operand's
    /// page is not walked again when the given address fits it. A hint
    /// that does not fit is ignored: the emulator then fetches and walks
    /// as [`Emulator::emulate`] does, so no hint makes it touch memory
    /// that emulation without it would not.
    pub fn emulate_hinted<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
        hints: &Hints,
    ) -> Result<Completion, EmulateError> {
        self.emulate_traced(state, bus, hints, None)
            .map(|t| t.completion)
    }

    /// Carry out the string port instruction an I/O exit described
    /// without fetching or decoding it (the exit already says what it is);
    /// particulars that are not a valid INS/OUTS fall back to
    /// [`Emulator::emulate`]. The guest sees exactly what decoding would
    /// give it.
    pub fn emulate_port_string<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
        io: &PortString,
    ) -> Result<Completion, EmulateError> {
        self.emulate_traced(state, bus, &Hints::default(), Some(io))
            .map(|t| t.completion)
    }

    /// [`Emulator::emulate_hinted`], or with `port_string`
    /// [`Emulator::emulate_port_string`], reporting also what the
    /// instruction owes the guest after it ([`Traced`]): the data
    /// breakpoints it hit and whether it loaded SS. The exit loop uses
    /// this; the plain forms drop the report.
    pub fn emulate_traced<S: CpuState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
        hints: &Hints,
        port_string: Option<&PortString>,
    ) -> Result<Traced, EmulateError> {
        let mut ctx = Context::new(state, bus, self.max_phys_bits);
        ctx.instructions = self.instructions;
        ctx.breakpoints = self.breakpoints;
        if let Some(io) = port_string.filter(|io| io.is_valid()) {
            let completion = match ctx.port_string(io, self.max_rep_iterations)? {
                StringOutcome::Paused => Completion::Paused,
                StringOutcome::Done | StringOutcome::NotString => {
                    retire(&mut ctx, io.next_rip);
                    Completion::Retired
                }
            };
            return Ok(ctx.traced(completion));
        }
        let rip = ctx.state.rip();
        let given = hints.bytes.as_ref().and_then(|b| {
            decode::decode_given(ctx.mode, rip, b.as_slice())
                .ok()
                .flatten()
        });
        let d = match given {
            Some(d) => d,
            None => decode::fetch(&mut ctx)?,
        };
        if let Some(access) = &hints.access {
            ctx.apply_access_hint(&d, access);
        }
        let mut tries = 0;
        loop {
            match self.run(&mut ctx, &d) {
                Err(EmulateError::LockContended) if tries < LOCK_RETRIES => {
                    tries += 1;
                    ctx.breakpoint_hits = 0;
                }
                Err(e) => return Err(e),
                Ok(completion) => return Ok(ctx.traced(completion)),
            }
        }
    }

    fn run<S: CpuState, B: GuestBus>(
        &self,
        ctx: &mut Context<'_, S, B>,
        d: &decode::Decoded,
    ) -> Result<Completion, EmulateError> {
        if let Some(form) = d.plain_mov {
            ctx.plain_mov(d, form)?;
        } else {
            match ctx.string(d, self.max_rep_iterations)? {
                StringOutcome::Paused => return Ok(Completion::Paused),
                StringOutcome::Done => {}
                StringOutcome::NotString => {
                    if !ctx.execute(d)? {
                        return Err(ctx.unsupported(d));
                    }
                }
            }
        }
        let next = match ctx.mode.bitness() {
            64 => d.instr.next_ip(),
            _ if d.instr.code_size() == iced_x86::CodeSize::Code16 => d.instr.next_ip() & 0xffff,
            _ => d.instr.next_ip() & 0xffff_ffff,
        };
        let next = ctx.branch.take().unwrap_or(next);
        retire(ctx, next);
        if ctx.mov_ss_shadow {
            ctx.state.set_mov_ss_shadow();
        }
        Ok(Completion::Retired)
    }
}

/// Complete an instruction: RIP to `next`, and RF cleared, as hardware does.
fn retire<S: CpuState, B: GuestBus>(ctx: &mut Context<'_, S, B>, next: u64) {
    ctx.state.set_rip(next);
    let flags = ctx.state.rflags();
    if flags & RFLAGS_RF != 0 {
        ctx.state.set_rflags(flags & !RFLAGS_RF);
    }
}
