//! Differential test of the instruction emulator against the host CPU.
//!
//! Every instruction form the emulator supports in 64-bit mode is taken
//! from iced-x86's opcode tables (legacy encodings valid in 64-bit mode with
//! a memory operand, for the supported mnemonics, with and without LOCK
//! where LOCK is legal), plus the string instructions in every size, REP
//! kind and address size. For each form, thousands of cases are built with
//! random operands (registers, addressing modes: base, base+index*scale,
//! RIP-relative, absolute, 32-bit addressing with junk in the upper halves,
//! page-straddling addresses), random flags and random memory, assembled
//! with iced's `CodeAssembler`, then:
//!
//! - run natively on the host: the bytes sit between a prologue that loads
//!   all GPRs, XMM registers and RFLAGS from a state block and an epilogue
//!   that saves them back, in mmap'd executable memory; the memory operand
//!   points into an ordinary mmap'd buffer;
//! - run through the emulator in a 64-bit-mode guest whose page tables map
//!   the same linear addresses to a memory-backed MMIO device of a test VM,
//!   with a small REP bound so that paused REP instructions are resumed.
//!
//! All 16 GPRs, RFLAGS (minus the flags the manuals leave undefined for the
//! mnemonic), all 16 XMM registers, RIP and the memory window must match.
//! The run prints how many forms and cases were compared. `EMU_DIFF_CASES`
//! sets the number of cases per form (default 2000 in release builds, 50 in
//! debug builds); `EMU_DIFF_ONLY=text` limits the run to forms whose name
//! contains `text`; `EMU_DIFF_STRICT=1` compares the flags the manuals
//! leave undefined too (what this host's processor gives).

use iced_x86::code_asm::*;
use iced_x86::{
    Code, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind, OpKind, Register, RepPrefixKind,
};
use std::sync::Arc;
use vmm_core::device::{Device, DeviceContext, DeviceId, IoOutcome, Mmio, MmioAddress};
use vmm_core::emulator::{undefined_flags, Completion, Emulator, RegisterFile};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

/// The data buffer: native memory and, in the guest, MMIO at the same
/// address (identity-mapped).
const DATA: u64 = 0x1000_0000;
const DATA_LEN: usize = 0x10000;
/// The part of the buffer that is randomised and compared.
const WIN_LO: u64 = DATA + 0x7000;
const WIN_HI: u64 = DATA + 0xd000;
/// Where memory operands point.
const TARGET_LO: u64 = DATA + 0x8000;
const TARGET_HI: u64 = DATA + 0xb000;
const STACK: u64 = DATA + 0xc800;
/// The code page (native), mapped in the guest to `CODE_GPA` in RAM.
const CODE: u64 = 0x2000_0000;
const CODE_GPA: u64 = 0x10_0000;
/// The native state block.
const STATE: u64 = 0x3000_0000;
const ST_FLAGS: u64 = STATE + 128;
const ST_HOSTRSP: u64 = STATE + 136;
const ST_XMM: u64 = STATE + 256;
const PML4: u64 = 0x1000;
const RSP: usize = 4;
/// Flags the test randomises; IF and bit 1 are always set in user space.
const RANDOM_FLAGS: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800;
const FIXED_FLAGS: u64 = 0x202;
/// The flags compared (status flags and DF).
const COMPARED_FLAGS: u64 = RANDOM_FLAGS;

// ---------------------------------------------------------------------
// Randomness

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// A value biased towards the edges where flags change.
    fn interesting(&mut self) -> u64 {
        const EDGES: [u64; 14] = [
            0,
            1,
            u64::MAX,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ];
        match self.below(4) {
            0 => EDGES[self.below(EDGES.len() as u64) as usize],
            1 => self.below(16),
            _ => self.next(),
        }
    }
}

// ---------------------------------------------------------------------
// The native side

fn map_fixed(addr: u64, len: usize, exec: bool) {
    let prot = libc::PROT_READ | libc::PROT_WRITE | if exec { libc::PROT_EXEC } else { 0 };
    // SAFETY: an anonymous private mapping at an address nothing else uses
    // (MAP_FIXED_NOREPLACE fails instead of replacing an existing mapping).
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "mmap at {addr:#x} failed");
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct NativeState {
    gprs: [u64; 16],
    flags: u64,
    host_rsp: u64,
    _pad: [u64; 14],
    /// YMM0..YMM15 as (low, high) halves.
    ymm: [[u128; 2]; 16],
}

struct Native {
    prologue: Vec<u8>,
    epilogue: Vec<u8>,
}

const G64: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const YMM: [AsmRegisterYmm; 16] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15,
];

impl Native {
    fn new() -> Self {
        map_fixed(DATA, DATA_LEN, false);
        map_fixed(CODE, 0x2000, true);
        map_fixed(STATE, 0x1000, false);
        let mut a = CodeAssembler::new(64).unwrap();
        for r in [rbx, rbp, r12, r13, r14, r15] {
            a.push(r).unwrap();
        }
        a.mov(qword_ptr(ST_HOSTRSP), rsp).unwrap();
        a.push(qword_ptr(ST_FLAGS)).unwrap();
        a.popfq().unwrap();
        for (i, y) in YMM.iter().enumerate() {
            a.vmovdqu(*y, ymmword_ptr(ST_XMM + 32 * i as u64)).unwrap();
        }
        for (i, g) in G64.iter().enumerate() {
            a.mov(*g, qword_ptr(STATE + 8 * i as u64)).unwrap();
        }
        let prologue = a.assemble(CODE).unwrap();

        let mut a = CodeAssembler::new(64).unwrap();
        for (i, g) in G64.iter().enumerate() {
            a.mov(qword_ptr(STATE + 8 * i as u64), *g).unwrap();
        }
        for (i, y) in YMM.iter().enumerate() {
            a.vmovdqu(ymmword_ptr(ST_XMM + 32 * i as u64), *y).unwrap();
        }
        a.mov(rsp, qword_ptr(ST_HOSTRSP)).unwrap();
        a.pushfq().unwrap();
        a.pop(qword_ptr(ST_FLAGS)).unwrap();
        a.cld().unwrap();
        for r in [r15, r14, r13, r12, rbp, rbx] {
            a.pop(r).unwrap();
        }
        a.ret().unwrap();
        // Position-independent: absolute addresses only.
        let epilogue = a.assemble(0).unwrap();
        Self { prologue, epilogue }
    }

    fn insn_ip(&self) -> u64 {
        CODE + self.prologue.len() as u64
    }

    fn code(&self, insn: &[u8]) -> Vec<u8> {
        let mut c = self.prologue.clone();
        c.extend_from_slice(insn);
        c.extend_from_slice(&self.epilogue);
        c
    }

    /// Run `insn` on the host with the case's registers and memory.
    fn run(&self, insn: &[u8], case: &Case) -> (Machine, Vec<u8>) {
        let code = self.code(insn);
        let st = NativeState {
            gprs: case.m.gprs,
            flags: case.m.flags,
            host_rsp: 0,
            _pad: [0; 14],
            ymm: std::array::from_fn(|i| [case.m.xmm[i], case.m.ymm_hi[i]]),
        };
        // SAFETY: CODE, STATE and DATA are this test's own mappings of at
        // least the sizes written; nothing else touches them while the one
        // test thread that owns `Native` runs.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), CODE as *mut u8, code.len());
            std::ptr::write(STATE as *mut NativeState, st);
            std::ptr::copy_nonoverlapping(
                case.window.as_ptr(),
                WIN_LO as *mut u8,
                case.window.len(),
            );
        }
        // SAFETY: the code is prologue + one instruction + epilogue: it
        // preserves the callee-saved registers, restores RSP and clears DF
        // before returning; the instruction's memory operands were built to
        // stay inside the DATA mapping.
        let f: extern "sysv64" fn() = unsafe { std::mem::transmute(CODE as usize) };
        f();
        // SAFETY: as above, reading back our own mappings.
        let (st, window) = unsafe {
            let st = std::ptr::read(STATE as *const NativeState);
            let w = std::slice::from_raw_parts(WIN_LO as *const u8, (WIN_HI - WIN_LO) as usize)
                .to_vec();
            (st, w)
        };
        (
            Machine {
                gprs: st.gprs,
                flags: st.flags,
                xmm: std::array::from_fn(|i| st.ymm[i][0]),
                ymm_hi: std::array::from_fn(|i| st.ymm[i][1]),
            },
            window,
        )
    }
}

/// The host thread's FS and GS bases (64-bit mode ignores the other
/// segment bases).
fn host_segment_bases() -> (u64, u64) {
    let (mut fs_base, mut gs_base) = (0u64, 0u64);
    const ARCH_GET_FS: libc::c_long = 0x1003;
    const ARCH_GET_GS: libc::c_long = 0x1004;
    // SAFETY: arch_prctl GET_FS/GET_GS store one u64 through the pointer,
    // which points at a live local.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut fs_base as *mut u64),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_arch_prctl, ARCH_GET_GS, &mut gs_base as *mut u64),
            0
        );
    }
    (fs_base, gs_base)
}

static SEGMENT_BASES: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

fn segment_base(seg: Register) -> u64 {
    let (fs_base, gs_base) = *SEGMENT_BASES.get_or_init(host_segment_bases);
    match seg {
        Register::FS => fs_base,
        Register::GS => gs_base,
        _ => 0,
    }
}

// ---------------------------------------------------------------------
// The emulated side

/// An MMIO device backed by plain memory, addressed by offset.
struct MemoryDevice {
    bytes: Vec<u8>,
    accesses: u64,
}

impl Device for MemoryDevice {
    fn name(&self) -> &str {
        "memory-backed-mmio"
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
}

impl Mmio for MemoryDevice {
    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        self.accesses += 1;
        let off = gpa.offset() as usize;
        match self.bytes.get(off..off + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.accesses += 1;
        let off = gpa.offset() as usize;
        if let Some(dst) = self.bytes.get_mut(off..off + data.len()) {
            dst.copy_from_slice(data);
        }
        IoOutcome::Done
    }
}

struct Guest {
    vm: Vm,
    dev: DeviceId,
}

impl Guest {
    fn new() -> Self {
        let dev = MemoryDevice {
            bytes: vec![0; DATA_LEN],
            accesses: 0,
        };
        let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
            .ram(0x20_0000)
            .device(dev, &[], &[(DATA, DATA_LEN as u64)])
            .build()
            .unwrap();
        // 4-level tables: PML4 -> PDPT -> PD -> one PT for the data, one
        // for the code.
        let mem = vm.memory_mut();
        let (pdpt, pd, pt_data, pt_code) = (0x2000u64, 0x3000u64, 0x4000u64, 0x5000u64);
        mem.write_u64(PML4, pdpt | 3).unwrap();
        mem.write_u64(pdpt, pd | 3).unwrap();
        mem.write_u64(pd + 8 * ((DATA >> 21) & 511), pt_data | 3)
            .unwrap();
        mem.write_u64(pd + 8 * ((CODE >> 21) & 511), pt_code | 3)
            .unwrap();
        for i in 0..(DATA_LEN as u64 / 4096) {
            mem.write_u64(pt_data + 8 * i, (DATA + i * 4096) | 3)
                .unwrap();
        }
        for i in 0..2 {
            mem.write_u64(pt_code + 8 * i, (CODE_GPA + i * 4096) | 3)
                .unwrap();
        }
        Self {
            vm,
            dev: DeviceId(0),
        }
    }

    fn device(&mut self) -> &mut MemoryDevice {
        self.vm
            .devices_mut()
            .device_mut::<MemoryDevice>(self.dev)
            .unwrap()
    }

    /// Run the instruction at `ip` (inside `code` placed at CODE) through
    /// the emulator until it retires.
    fn run(
        &mut self,
        code: &[u8],
        ip: u64,
        case: &Case,
        rep_bound: u64,
    ) -> Result<(Machine, u64, Vec<u8>), String> {
        self.vm.memory_mut().write(CODE_GPA, code).unwrap();
        let off = (WIN_LO - DATA) as usize;
        let window = case.window.clone();
        self.device().bytes[off..off + window.len()].copy_from_slice(&window);
        let mut cpu = RegisterFile::long_mode(PML4);
        cpu.gprs = case.m.gprs;
        cpu.rflags = case.m.flags;
        cpu.xmm = case.m.xmm;
        cpu.ymm_upper = case.m.ymm_hi;
        cpu.rip = ip;
        cpu.segments[vmm_core::emulator::Segment::Fs as usize].base = segment_base(Register::FS);
        cpu.segments[vmm_core::emulator::Segment::Gs as usize].base = segment_base(Register::GS);
        let emu = Emulator {
            max_rep_iterations: rep_bound,
            ..Emulator::default()
        };
        let mut calls = 0;
        loop {
            calls += 1;
            match emu.emulate(&mut cpu, &mut self.vm) {
                Ok(Completion::Retired) => break,
                Ok(Completion::Paused) if calls < 100_000 => {
                    if cpu.rip != ip {
                        return Err("paused REP moved RIP".into());
                    }
                }
                Ok(Completion::Paused) => return Err("REP never finished".into()),
                Err(e) => return Err(format!("emulator error: {e}")),
            }
        }
        let w = self.device().bytes[off..off + window.len()].to_vec();
        Ok((
            Machine {
                gprs: cpu.gprs,
                flags: cpu.rflags,
                xmm: cpu.xmm,
                ymm_hi: cpu.ymm_upper,
            },
            cpu.rip,
            w,
        ))
    }
}

// ---------------------------------------------------------------------
// Cases and forms

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Machine {
    gprs: [u64; 16],
    flags: u64,
    xmm: [u128; 16],
    /// Bits 255:128 of the YMM registers.
    ymm_hi: [u128; 16],
}

#[derive(Clone)]
struct Case {
    m: Machine,
    window: Vec<u8>,
}

impl Case {
    fn random(rng: &mut Rng) -> Self {
        let mut gprs = [0u64; 16];
        for g in gprs.iter_mut() {
            *g = rng.interesting();
        }
        gprs[RSP] = STACK;
        let mut ymm_hi = [0u128; 16];
        for y in ymm_hi.iter_mut() {
            *y = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        }
        let mut xmm = [0u128; 16];
        for x in xmm.iter_mut() {
            *x = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        }
        let mut window = vec![0u8; (WIN_HI - WIN_LO) as usize];
        for chunk in window.chunks_mut(8) {
            let v = rng.interesting().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Self {
            m: Machine {
                gprs,
                flags: (rng.next() & RANDOM_FLAGS) | FIXED_FLAGS,
                xmm,
                ymm_hi,
            },
            window,
        }
    }

    fn mem(&self, addr: u64, len: usize) -> u64 {
        let off = (addr - WIN_LO) as usize;
        let mut b = [0u8; 8];
        b[..len.min(8)].copy_from_slice(&self.window[off..off + len.min(8)]);
        u64::from_le_bytes(b)
    }
}

#[derive(Clone, Copy)]
enum StringKind {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

#[derive(Clone)]
enum FormKind {
    /// A form from iced's opcode tables.
    Table { code: Code, lock: bool },
    /// A string instruction.
    String {
        kind: StringKind,
        size: u32,
        rep: RepPrefixKind,
        address_size: u32,
        segment: Register,
    },
}

#[derive(Clone)]
struct Form {
    name: String,
    kind: FormKind,
    mnemonic: Mnemonic,
}

const SUPPORTED: &[Mnemonic] = &[
    Mnemonic::Mov,
    Mnemonic::Movnti,
    Mnemonic::Movzx,
    Mnemonic::Movsx,
    Mnemonic::Movsxd,
    Mnemonic::Add,
    Mnemonic::Or,
    Mnemonic::Adc,
    Mnemonic::Sbb,
    Mnemonic::And,
    Mnemonic::Sub,
    Mnemonic::Xor,
    Mnemonic::Cmp,
    Mnemonic::Test,
    Mnemonic::Inc,
    Mnemonic::Dec,
    Mnemonic::Not,
    Mnemonic::Neg,
    Mnemonic::Xchg,
    Mnemonic::Xadd,
    Mnemonic::Cmpxchg,
    Mnemonic::Cmpxchg8b,
    Mnemonic::Cmpxchg16b,
    Mnemonic::Bt,
    Mnemonic::Bts,
    Mnemonic::Btr,
    Mnemonic::Btc,
    Mnemonic::Seto,
    Mnemonic::Setno,
    Mnemonic::Setb,
    Mnemonic::Setae,
    Mnemonic::Sete,
    Mnemonic::Setne,
    Mnemonic::Setbe,
    Mnemonic::Seta,
    Mnemonic::Sets,
    Mnemonic::Setns,
    Mnemonic::Setp,
    Mnemonic::Setnp,
    Mnemonic::Setl,
    Mnemonic::Setge,
    Mnemonic::Setle,
    Mnemonic::Setg,
    Mnemonic::Push,
    Mnemonic::Pop,
    Mnemonic::Movd,
    Mnemonic::Movq,
    Mnemonic::Movdqa,
    Mnemonic::Movdqu,
    Mnemonic::Movaps,
    Mnemonic::Movups,
    Mnemonic::Movapd,
    Mnemonic::Movupd,
    Mnemonic::Movntdq,
    Mnemonic::Movntps,
    Mnemonic::Movntpd,
    Mnemonic::Movntdqa,
    Mnemonic::Lddqu,
    Mnemonic::Vmovd,
    Mnemonic::Vmovq,
    Mnemonic::Vmovdqa,
    Mnemonic::Vmovdqu,
    Mnemonic::Vmovaps,
    Mnemonic::Vmovups,
    Mnemonic::Vmovapd,
    Mnemonic::Vmovupd,
    Mnemonic::Vmovntdq,
    Mnemonic::Vmovntps,
    Mnemonic::Vmovntpd,
    Mnemonic::Vmovntdqa,
    Mnemonic::Vlddqu,
    Mnemonic::Rol,
    Mnemonic::Ror,
    Mnemonic::Rcl,
    Mnemonic::Rcr,
    Mnemonic::Shl,
    Mnemonic::Sal,
    Mnemonic::Shr,
    Mnemonic::Sar,
    Mnemonic::Clflush,
    Mnemonic::Clflushopt,
    Mnemonic::Clwb,
    Mnemonic::Prefetchnta,
    Mnemonic::Prefetcht0,
    Mnemonic::Prefetcht1,
    Mnemonic::Prefetcht2,
    Mnemonic::Prefetchw,
    Mnemonic::Cmovo,
    Mnemonic::Cmovno,
    Mnemonic::Cmovb,
    Mnemonic::Cmovae,
    Mnemonic::Cmove,
    Mnemonic::Cmovne,
    Mnemonic::Cmovbe,
    Mnemonic::Cmova,
    Mnemonic::Cmovs,
    Mnemonic::Cmovns,
    Mnemonic::Cmovp,
    Mnemonic::Cmovnp,
    Mnemonic::Cmovl,
    Mnemonic::Cmovge,
    Mnemonic::Cmovle,
    Mnemonic::Cmovg,
    Mnemonic::Mul,
    Mnemonic::Imul,
    Mnemonic::Div,
    Mnemonic::Idiv,
    Mnemonic::Bsf,
    Mnemonic::Bsr,
    Mnemonic::Tzcnt,
    Mnemonic::Lzcnt,
    Mnemonic::Popcnt,
    Mnemonic::Shld,
    Mnemonic::Shrd,
    Mnemonic::Movbe,
    // No access, but its memory operand's effective address (run-on).
    Mnemonic::Lea,
];

fn is_memory_kind(k: OpCodeOperandKind) -> bool {
    matches!(
        k,
        OpCodeOperandKind::mem
            | OpCodeOperandKind::mem_offs
            | OpCodeOperandKind::r8_or_mem
            | OpCodeOperandKind::r16_or_mem
            | OpCodeOperandKind::r32_or_mem
            | OpCodeOperandKind::r64_or_mem
            | OpCodeOperandKind::xmm_or_mem
            | OpCodeOperandKind::ymm_or_mem
    )
}

fn is_generated_kind(k: OpCodeOperandKind) -> bool {
    use OpCodeOperandKind as K;
    is_memory_kind(k)
        || matches!(
            k,
            K::r8_reg
                | K::r16_reg
                | K::r32_reg
                | K::r64_reg
                | K::xmm_reg
                | K::ymm_reg
                | K::al
                | K::ax
                | K::eax
                | K::rax
                | K::cl
                | K::imm8
                | K::imm8_const_1
                | K::imm8sex16
                | K::imm8sex32
                | K::imm8sex64
                | K::imm16
                | K::imm32
                | K::imm32sex64
                | K::imm64
        )
}

fn table_forms() -> Vec<Form> {
    let mut forms = Vec::new();
    for code in Code::values() {
        let info = code.op_code();
        if !info.is_instruction()
            || !info.mode64()
            || !matches!(info.encoding(), EncodingKind::Legacy | EncodingKind::VEX)
            || !SUPPORTED.contains(&code.mnemonic())
        {
            continue;
        }
        let kinds: Vec<_> = (0..info.op_count()).map(|i| info.op_kind(i)).collect();
        if kinds.iter().filter(|k| is_memory_kind(**k)).count() != 1
            || !kinds.iter().all(|k| is_generated_kind(*k))
        {
            continue;
        }
        let name = format!("{code:?}");
        forms.push(Form {
            name: name.clone(),
            kind: FormKind::Table { code, lock: false },
            mnemonic: code.mnemonic(),
        });
        if info.can_use_lock_prefix()
            && !matches!(
                kinds.first(),
                Some(
                    OpCodeOperandKind::r8_reg
                        | OpCodeOperandKind::r16_reg
                        | OpCodeOperandKind::r32_reg
                        | OpCodeOperandKind::r64_reg
                )
            )
        {
            forms.push(Form {
                name: format!("lock {name}"),
                kind: FormKind::Table { code, lock: true },
                mnemonic: code.mnemonic(),
            });
        }
    }
    forms
}

fn string_forms() -> Vec<Form> {
    let mut forms = Vec::new();
    let kinds = [
        (StringKind::Movs, "movs", Mnemonic::Movsb),
        (StringKind::Stos, "stos", Mnemonic::Stosb),
        (StringKind::Lods, "lods", Mnemonic::Lodsb),
        (StringKind::Cmps, "cmps", Mnemonic::Cmpsb),
        (StringKind::Scas, "scas", Mnemonic::Scasb),
    ];
    for (kind, name, mnemonic) in kinds {
        let reps: &[(RepPrefixKind, &str)] = if matches!(kind, StringKind::Cmps | StringKind::Scas)
        {
            &[
                (RepPrefixKind::None, ""),
                (RepPrefixKind::Repe, "repe "),
                (RepPrefixKind::Repne, "repne "),
            ]
        } else {
            &[(RepPrefixKind::None, ""), (RepPrefixKind::Repe, "rep ")]
        };
        for &(rep, rep_name) in reps {
            for size in [1u32, 2, 4, 8] {
                for address_size in [64u32, 32] {
                    let suffix = match size {
                        1 => "b",
                        2 => "w",
                        4 => "d",
                        _ => "q",
                    };
                    forms.push(Form {
                        name: format!("{rep_name}{name}{suffix} a{address_size}"),
                        kind: FormKind::String {
                            kind,
                            size,
                            rep,
                            address_size,
                            segment: Register::None,
                        },
                        mnemonic,
                    });
                    // A source segment override (FS, whose base is the
                    // host thread's TLS pointer).
                    let overridable =
                        matches!(kind, StringKind::Movs | StringKind::Lods | StringKind::Cmps);
                    if overridable && address_size == 64 {
                        forms.push(Form {
                            name: format!("{rep_name}{name}{suffix} fs: a{address_size}"),
                            kind: FormKind::String {
                                kind,
                                size,
                                rep,
                                address_size,
                                segment: Register::FS,
                            },
                            mnemonic,
                        });
                    }
                }
            }
        }
    }
    forms
}

fn gpr_register(index: usize, size: u32) -> Register {
    let base = match size {
        1 => {
            // Low bytes: AL, CL, DL, BL, SPL.., R8L..
            return if index < 4 {
                [Register::AL, Register::CL, Register::DL, Register::BL][index]
            } else {
                Register::try_from(Register::SPL as usize + index - 4).unwrap()
            };
        }
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    Register::try_from(base as usize + index).unwrap()
}

/// A random GPR index other than RSP and those in `avoid`.
fn pick_gpr(rng: &mut Rng, avoid: &[usize]) -> usize {
    loop {
        let i = rng.below(16) as usize;
        if i != RSP && !avoid.contains(&i) {
            return i;
        }
    }
}

/// Build one random instruction of a table form, adjusting the case's
/// registers so that its memory operand lands in the target area.
fn build_table(code: Code, lock: bool, rng: &mut Rng, case: &mut Case) -> Option<Instruction> {
    let info = code.op_code();
    let mnemonic = code.mnemonic();
    let mut ins = Instruction::default();
    ins.set_code(code);
    ins.set_has_lock_prefix(lock);
    let kinds: Vec<_> = (0..info.op_count()).map(|i| info.op_kind(i)).collect();
    let mem_size = ins.memory_size().size().max(1) as u64;
    let aligned16 = matches!(
        mnemonic,
        Mnemonic::Movdqa
            | Mnemonic::Movaps
            | Mnemonic::Movapd
            | Mnemonic::Movntdq
            | Mnemonic::Movntps
            | Mnemonic::Movntpd
            | Mnemonic::Movntdqa
            | Mnemonic::Cmpxchg16b
            | Mnemonic::Vmovdqa
            | Mnemonic::Vmovaps
            | Mnemonic::Vmovapd
            | Mnemonic::Vmovntdq
            | Mnemonic::Vmovntps
            | Mnemonic::Vmovntpd
            | Mnemonic::Vmovntdqa
    );
    let natural = lock || mnemonic == Mnemonic::Xchg;
    // The target address.
    let mut target = if rng.chance(4) {
        // Straddle (or touch) a page boundary.
        let page = (TARGET_LO + 4096 * rng.below(2)) & !4095;
        page + 4096 - rng.below(16).min(15) - 1
    } else {
        TARGET_LO + rng.below(TARGET_HI - TARGET_LO - 64)
    };
    if aligned16 {
        target &= !(mem_size.max(16) - 1);
    } else if natural {
        target &= !(mem_size.next_power_of_two() - 1);
    }
    let mut used = Vec::new();
    for (n, k) in kinds.iter().enumerate() {
        let n = n as u32;
        if *k == OpCodeOperandKind::mem_offs {
            ins.set_op_kind(n, OpKind::Memory);
            ins.set_memory_displacement64(target);
            ins.set_memory_displ_size(8);
        } else if is_memory_kind(*k) {
            ins.set_op_kind(n, OpKind::Memory);
            let disp: i64 = match rng.below(3) {
                0 => 0,
                1 => rng.below(256) as i64 - 128,
                _ => rng.below(0x10000) as i64 - 0x8000,
            };
            match rng.below(8) {
                // RIP-relative.
                0 => {
                    ins.set_memory_base(Register::RIP);
                    ins.set_memory_displacement64(target);
                }
                // Absolute, 64-bit or 32-bit addressing.
                1 => {
                    ins.set_memory_displacement64(target);
                    ins.set_memory_displ_size(if rng.chance(2) { 8 } else { 4 });
                }
                // 32-bit addressing, junk in the upper halves.
                2 | 3 => {
                    let b = pick_gpr(rng, &[]);
                    used.push(b);
                    let scale = 1u64 << rng.below(4);
                    let with_index = rng.chance(2);
                    let mut rest = target.wrapping_sub(disp as u64);
                    if with_index {
                        let x = pick_gpr(rng, &[b]);
                        used.push(x);
                        let xv = rng.below(64);
                        rest = rest.wrapping_sub(xv * scale);
                        case.m.gprs[x] = (rng.next() << 32) | xv;
                        ins.set_memory_index(gpr_register(x, 4));
                        ins.set_memory_index_scale(scale as u32);
                    }
                    case.m.gprs[b] = (rng.next() << 32) | (rest & 0xffff_ffff);
                    ins.set_memory_base(gpr_register(b, 4));
                    ins.set_memory_displacement64(disp as u32 as u64);
                    ins.set_memory_displ_size(if disp == 0 {
                        0
                    } else if (-128..128).contains(&disp) {
                        1
                    } else {
                        4
                    });
                }
                // 64-bit base (+ index * scale) + displacement.
                _ => {
                    let b = pick_gpr(rng, &[]);
                    used.push(b);
                    // Now and then through FS or GS, whose bases count.
                    let seg = match rng.below(8) {
                        0 => Register::FS,
                        1 => Register::GS,
                        _ => Register::None,
                    };
                    ins.set_segment_prefix(seg);
                    let mut rest = target
                        .wrapping_sub(disp as u64)
                        .wrapping_sub(segment_base(seg));
                    if rng.chance(2) {
                        let x = pick_gpr(rng, &[b]);
                        used.push(x);
                        let scale = 1u64 << rng.below(4);
                        let xv = rng.below(64).wrapping_sub(32);
                        rest = rest.wrapping_sub(xv.wrapping_mul(scale));
                        case.m.gprs[x] = xv;
                        ins.set_memory_index(gpr_register(x, 8));
                        ins.set_memory_index_scale(scale as u32);
                    }
                    case.m.gprs[b] = rest;
                    ins.set_memory_base(gpr_register(b, 8));
                    ins.set_memory_displacement64(disp as u64);
                    ins.set_memory_displ_size(if disp == 0 {
                        0
                    } else if (-128..128).contains(&disp) {
                        1
                    } else {
                        4
                    });
                }
            }
        }
    }
    let is_bt = matches!(
        mnemonic,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    );
    for (n, k) in kinds.iter().enumerate() {
        let n = n as u32;
        use OpCodeOperandKind as K;
        match k {
            K::r8_reg | K::r16_reg | K::r32_reg | K::r64_reg => {
                let size = match k {
                    K::r8_reg => 1,
                    K::r16_reg => 2,
                    K::r32_reg => 4,
                    _ => 8,
                };
                let avoid: &[usize] = if is_bt { &used } else { &[] };
                let r = pick_gpr(rng, avoid);
                let reg = if size == 1 && r < 4 && rng.chance(3) {
                    // AH, CH, DH, BH (encodable only without REX).
                    Register::try_from(Register::AH as usize + r).unwrap()
                } else {
                    gpr_register(r, size)
                };
                if is_bt {
                    // A small signed bit offset, so the access stays nearby.
                    case.m.gprs[r] = (rng.below(1024) as i64 - 512) as u64;
                }
                ins.set_op_kind(n, OpKind::Register);
                ins.set_op_register(n, reg);
            }
            K::ymm_reg => {
                ins.set_op_kind(n, OpKind::Register);
                ins.set_op_register(
                    n,
                    Register::try_from(Register::YMM0 as usize + rng.below(16) as usize).unwrap(),
                );
            }
            K::xmm_reg => {
                ins.set_op_kind(n, OpKind::Register);
                ins.set_op_register(
                    n,
                    Register::try_from(Register::XMM0 as usize + rng.below(16) as usize).unwrap(),
                );
            }
            K::al | K::ax | K::eax | K::rax | K::cl => {
                let reg = match k {
                    K::al => Register::AL,
                    K::ax => Register::AX,
                    K::eax => Register::EAX,
                    K::rax => Register::RAX,
                    _ => Register::CL,
                };
                ins.set_op_kind(n, OpKind::Register);
                ins.set_op_register(n, reg);
            }
            K::imm8 => {
                ins.set_op_kind(n, OpKind::Immediate8);
                ins.set_immediate8(rng.interesting() as u8);
            }
            K::imm8_const_1 => {
                ins.set_op_kind(n, OpKind::Immediate8);
                ins.set_immediate8(1);
            }
            K::imm8sex16 => {
                ins.set_op_kind(n, OpKind::Immediate8to16);
                ins.set_immediate8to16(rng.interesting() as i8 as i16);
            }
            K::imm8sex32 => {
                ins.set_op_kind(n, OpKind::Immediate8to32);
                ins.set_immediate8to32(rng.interesting() as i8 as i32);
            }
            K::imm8sex64 => {
                ins.set_op_kind(n, OpKind::Immediate8to64);
                ins.set_immediate8to64(rng.interesting() as i8 as i64);
            }
            K::imm16 => {
                ins.set_op_kind(n, OpKind::Immediate16);
                ins.set_immediate16(rng.interesting() as u16);
            }
            K::imm32 => {
                ins.set_op_kind(n, OpKind::Immediate32);
                ins.set_immediate32(rng.interesting() as u32);
            }
            K::imm32sex64 => {
                ins.set_op_kind(n, OpKind::Immediate32to64);
                ins.set_immediate32to64(rng.interesting() as i32 as i64);
            }
            K::imm64 => {
                ins.set_op_kind(n, OpKind::Immediate64);
                ins.set_immediate64(rng.interesting());
            }
            _ => {}
        }
    }
    // Make compare-exchanges succeed half of the time.
    if rng.chance(2) && !used.contains(&0) && !used.contains(&2) {
        match mnemonic {
            Mnemonic::Cmpxchg => {
                let v = case.mem(target, mem_size as usize);
                let m = if mem_size >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (mem_size * 8)) - 1
                };
                case.m.gprs[0] = (case.m.gprs[0] & !m) | v;
            }
            Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => {
                let half = (mem_size / 2) as usize;
                let lo = case.mem(target, half);
                let hi = case.mem(target + half as u64, half);
                case.m.gprs[0] = lo;
                case.m.gprs[2] = hi;
            }
            _ => {}
        }
    }
    // A 16-bit double shift by more than 16 has an undefined result (and
    // by 16 an OF that differs from the rule for 32 and 64 bits).
    if matches!(mnemonic, Mnemonic::Shld | Mnemonic::Shrd) && mem_size == 2 {
        if ins.op_kind(2) == OpKind::Immediate8 {
            ins.set_immediate8(ins.immediate8() % 16);
        } else {
            case.m.gprs[1] = (case.m.gprs[1] & !0xff) | rng.below(16);
        }
    }
    if matches!(mnemonic, Mnemonic::Div | Mnemonic::Idiv) {
        if used.contains(&0) || used.contains(&2) {
            return None;
        }
        divisible(
            mnemonic == Mnemonic::Idiv,
            mem_size as usize,
            target,
            rng,
            case,
        );
    }
    // A case whose fix-ups changed an addressing register is dropped later
    // by `address_in_window`.
    Some(ins)
}

/// Give a DIV or IDIV of `size` bytes with its divisor at `target` a
/// dividend (AX, DX:AX, EDX:EAX or RDX:RAX) and a non-zero divisor whose
/// quotient fits, so that the host does not fault: a random quotient
/// (edges included) and remainder make the dividend.
fn divisible(signed: bool, size: usize, target: u64, rng: &mut Rng, case: &mut Case) {
    let bits = size as u32 * 8;
    let m = if size >= 8 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let sext = |v: u64| -> i128 { i128::from(((v << (64 - bits)) as i64) >> (64 - bits)) };
    let mut divisor = case.mem(target, size) & m;
    if divisor == 0 {
        divisor = rng.interesting() & m;
        if divisor == 0 {
            divisor = 1;
        }
    }
    let q = rng.interesting() & m;
    let dividend: u128 = if signed {
        let d = sext(divisor);
        let q = sext(q);
        let r = (rng.next() as i128).rem_euclid(d.abs());
        let p = q * d;
        (if p < 0 { p - r } else { p + r }) as u128
    } else {
        let r = u128::from(rng.next()) % u128::from(divisor);
        u128::from(q) * u128::from(divisor) + r
    };
    let off = (target - WIN_LO) as usize;
    case.window[off..off + size].copy_from_slice(&divisor.to_le_bytes()[..size]);
    let low = dividend as u64 & m;
    let high = (dividend >> bits) as u64 & m;
    if size == 1 {
        case.m.gprs[0] = (case.m.gprs[0] & !0xffff) | (high << 8) | low;
    } else {
        case.m.gprs[0] = (case.m.gprs[0] & !m) | low;
        case.m.gprs[2] = (case.m.gprs[2] & !m) | high;
    }
}

fn build_string(
    kind: StringKind,
    size: u32,
    rep: RepPrefixKind,
    address_size: u32,
    segment: Register,
    rng: &mut Rng,
    case: &mut Case,
) -> Instruction {
    let ins = match (kind, size) {
        (StringKind::Movs, 1) => Instruction::with_movsb(address_size, segment, rep),
        (StringKind::Movs, 2) => Instruction::with_movsw(address_size, segment, rep),
        (StringKind::Movs, 4) => Instruction::with_movsd(address_size, segment, rep),
        (StringKind::Movs, _) => Instruction::with_movsq(address_size, segment, rep),
        (StringKind::Stos, 1) => Instruction::with_stosb(address_size, rep),
        (StringKind::Stos, 2) => Instruction::with_stosw(address_size, rep),
        (StringKind::Stos, 4) => Instruction::with_stosd(address_size, rep),
        (StringKind::Stos, _) => Instruction::with_stosq(address_size, rep),
        (StringKind::Lods, 1) => Instruction::with_lodsb(address_size, segment, rep),
        (StringKind::Lods, 2) => Instruction::with_lodsw(address_size, segment, rep),
        (StringKind::Lods, 4) => Instruction::with_lodsd(address_size, segment, rep),
        (StringKind::Lods, _) => Instruction::with_lodsq(address_size, segment, rep),
        (StringKind::Cmps, 1) => Instruction::with_cmpsb(address_size, segment, rep),
        (StringKind::Cmps, 2) => Instruction::with_cmpsw(address_size, segment, rep),
        (StringKind::Cmps, 4) => Instruction::with_cmpsd(address_size, segment, rep),
        (StringKind::Cmps, _) => Instruction::with_cmpsq(address_size, segment, rep),
        (StringKind::Scas, 1) => Instruction::with_scasb(address_size, rep),
        (StringKind::Scas, 2) => Instruction::with_scasw(address_size, rep),
        (StringKind::Scas, 4) => Instruction::with_scasd(address_size, rep),
        (StringKind::Scas, _) => Instruction::with_scasq(address_size, rep),
    }
    .unwrap();
    let junk = |rng: &mut Rng| {
        if address_size == 32 {
            rng.next() << 32
        } else {
            0
        }
    };
    let src = DATA + 0x9000 + rng.below(0x400);
    let dst = DATA + 0xa400 + rng.below(0x400);
    case.m.gprs[6] = src.wrapping_sub(segment_base(segment)) | junk(rng);
    case.m.gprs[7] = dst | junk(rng);
    case.m.gprs[1] = rng.below(48) | junk(rng);
    if rng.chance(8) {
        case.m.gprs[1] &= !0xffff_ffff;
    }
    // Comparisons: make the strings mostly equal so REPE runs on.
    if matches!(kind, StringKind::Cmps) && rng.chance(2) {
        let (s, d) = (
            (src - WIN_LO) as usize - 0x200,
            (dst - WIN_LO) as usize - 0x200,
        );
        let copy = case.window[s..s + 0x800].to_vec();
        case.window[d..d + 0x800].copy_from_slice(&copy);
        let flip = d + rng.below(0x800) as usize;
        case.window[flip] ^= 1 << rng.below(8);
    }
    if matches!(kind, StringKind::Scas) && rng.chance(2) {
        let d = (dst - WIN_LO) as usize - 0x200;
        let v = case.m.gprs[0].to_le_bytes();
        for (i, b) in case.window[d..d + 0x800].iter_mut().enumerate() {
            *b = v[i % size as usize];
        }
        let flip = d + rng.below(0x800) as usize;
        case.window[flip] ^= 1 << rng.below(8);
    }
    ins
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_diff(native: &Machine, emu: &Machine, mask: u64, nw: &[u8], ew: &[u8]) -> String {
    let mut s = String::new();
    for i in 0..16 {
        if native.gprs[i] != emu.gprs[i] {
            s += &format!(
                " gpr{i}: native {:#x} emulated {:#x};",
                native.gprs[i], emu.gprs[i]
            );
        }
        if native.ymm_hi[i] != emu.ymm_hi[i] {
            s += &format!(
                " ymm{i}[255:128]: native {:#x} emulated {:#x};",
                native.ymm_hi[i], emu.ymm_hi[i]
            );
        }
        if native.xmm[i] != emu.xmm[i] {
            s += &format!(
                " xmm{i}: native {:#x} emulated {:#x};",
                native.xmm[i], emu.xmm[i]
            );
        }
    }
    if native.flags & mask != emu.flags & mask {
        s += &format!(
            " flags: native {:#x} emulated {:#x};",
            native.flags & mask,
            emu.flags & mask
        );
    }
    if let Some(i) = (0..nw.len()).find(|&i| nw[i] != ew[i]) {
        s += &format!(
            " memory at {:#x}: native {:02x} emulated {:02x};",
            WIN_LO + i as u64,
            nw[i],
            ew[i]
        );
    }
    s
}

/// Whether the host CPU is Intel's.
fn host_is_intel() -> bool {
    let r = vmm_core::host_cpu::cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"GenuineIntel"
}

/// A REP string form with a 32-bit address size (67h in 64-bit mode)
/// whose case starts with ECX = 0: no iteration runs.
fn zero_count_a32_rep(kind: &FormKind, case: &Case) -> bool {
    matches!(
        kind,
        FormKind::String {
            rep: RepPrefixKind::Repe | RepPrefixKind::Repne,
            address_size: 32,
            ..
        }
    ) && case.m.gprs[1] as u32 == 0
}

/// Where the vendors differ, the emulator does what AMD processors (and
/// QEMU's TCG) do, as for undefined flags: a REP string instruction with a
/// 32-bit address size and ECX = 0 leaves RCX, RSI and RDI alone. Intel
/// processors clear the upper halves of those the instruction uses even
/// then. On an Intel host, take the native upper half (zero) where the
/// emulated lower half agrees, so only real differences remain.
fn intel_zero_count_upper_halves(native: &Machine, emulated: &mut Machine) {
    for r in [1, 6, 7] {
        let (n, e) = (native.gprs[r], emulated.gprs[r]);
        if n >> 32 == 0 && n == e & 0xffff_ffff {
            emulated.gprs[r] = n;
        }
    }
}

#[test]
fn emulator_matches_host_cpu() {
    let cases_per_form: u64 = std::env::var("EMU_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 50 } else { 2000 });
    let only = std::env::var("EMU_DIFF_ONLY").ok();
    let strict = std::env::var_os("EMU_DIFF_STRICT").is_some();
    let native = Native::new();
    let intel = host_is_intel();
    let mut guest = Guest::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut forms = table_forms();
    forms.extend(string_forms());
    let mut failures = Vec::new();
    let mut compared_forms = 0;
    let mut mnemonics = std::collections::BTreeSet::new();
    let mut compared_cases = 0u64;
    let mut skipped_cases = 0u64;
    let ip = native.insn_ip();
    for form in &forms {
        if only.as_deref().is_some_and(|o| !form.name.contains(o)) {
            continue;
        }
        let mut form_cases = 0;
        let mut failed = false;
        for _ in 0..cases_per_form {
            let mut case = Case::random(&mut rng);
            let ins = match &form.kind {
                FormKind::Table { code, lock } => build_table(*code, *lock, &mut rng, &mut case),
                FormKind::String {
                    kind,
                    size,
                    rep,
                    address_size,
                    segment,
                } => Some(build_string(
                    *kind,
                    *size,
                    *rep,
                    *address_size,
                    *segment,
                    &mut rng,
                    &mut case,
                )),
            };
            let Some(ins) = ins else { continue };
            let mut a = CodeAssembler::new(64).unwrap();
            a.add_instruction(ins).unwrap();
            let Ok(bytes) = a.assemble(ip) else {
                // Not encodable (AH with a REX register): another case.
                skipped_cases += 1;
                continue;
            };
            // A register operand that doubles as an address register may
            // have been given a value that moves the address out of the
            // buffer; check the address the way the decoder sees it.
            if !address_in_window(&bytes, ip, &case) {
                skipped_cases += 1;
                continue;
            }
            let (n, nw) = native.run(&bytes, &case);
            let code = native.code(&bytes);
            let rep_bound = 1 + rng.below(8);
            let mut mask = if strict {
                COMPARED_FLAGS | FIXED_FLAGS
            } else {
                COMPARED_FLAGS & !undefined_flags(form.mnemonic) | FIXED_FLAGS
            };
            // Shifts and rotates by one define OF.
            if form.name.ends_with("_1") {
                mask |= 0x800;
            }
            match guest.run(&code, ip, &case, rep_bound) {
                Ok((mut e, rip, ew)) => {
                    if intel && zero_count_a32_rep(&form.kind, &case) {
                        intel_zero_count_upper_halves(&n, &mut e);
                    }
                    let ok = n.gprs == e.gprs
                        && n.xmm == e.xmm
                        && n.ymm_hi == e.ymm_hi
                        && n.flags & mask == e.flags & mask
                        && nw == ew
                        && rip == ip + bytes.len() as u64;
                    if !ok {
                        failures.push(format!(
                            "{}: [{}] in {:#x?} flags {:#x}:{}{}",
                            form.name,
                            hex(&bytes),
                            case.m.gprs,
                            case.m.flags,
                            describe_diff(&n, &e, mask, &nw, &ew),
                            if rip != ip + bytes.len() as u64 {
                                " rip differs"
                            } else {
                                ""
                            }
                        ));
                        failed = true;
                    }
                }
                Err(e) => {
                    failures.push(format!("{}: [{}]: {e}", form.name, hex(&bytes)));
                    failed = true;
                }
            }
            form_cases += 1;
            if failed {
                break;
            }
        }
        compared_cases += form_cases;
        if form_cases > 0 {
            compared_forms += 1;
            mnemonics.insert(format!("{:?}", form.mnemonic));
        }
    }
    println!(
        "emulator differential test: {compared_forms} forms, {compared_cases} cases compared against the host CPU ({skipped_cases} unencodable or out-of-buffer cases skipped)"
    );
    println!(
        "mnemonics covered ({}): {}",
        mnemonics.len(),
        mnemonics.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    // The emulated side really went through the device manager to MMIO.
    let mmio_accesses = guest.device().accesses;
    println!("MMIO accesses seen by the memory-backed device: {mmio_accesses}");
    assert!(mmio_accesses >= compared_cases / 2);
    for f in &failures {
        println!("MISMATCH {f}");
    }
    assert!(
        failures.is_empty(),
        "{} forms differ from the host CPU",
        failures.len()
    );
    assert!(
        compared_forms >= 200 || only.is_some(),
        "only {compared_forms} forms compared"
    );
}

/// Decode the instruction and check that its memory operand (computed from
/// the case's registers) lies inside the compared window.
fn address_in_window(bytes: &[u8], ip: u64, case: &Case) -> bool {
    let mut dec = iced_x86::Decoder::with_ip(64, bytes, ip, iced_x86::DecoderOptions::NONE);
    let ins = dec.decode();
    let mut ok = true;
    for n in 0..ins.op_count() {
        if ins.op_kind(n) != OpKind::Memory {
            continue;
        }
        let reg = |r: Register| -> u64 {
            if r == Register::None || r == Register::RIP || r == Register::EIP {
                return 0;
            }
            let full = r.full_register();
            let idx = full as usize - Register::RAX as usize;
            let v = case.m.gprs[idx];
            if r.size() == 4 {
                v & 0xffff_ffff
            } else {
                v
            }
        };
        let mut ea = ins
            .memory_displacement64()
            .wrapping_add(reg(ins.memory_base()))
            .wrapping_add(
                reg(ins.memory_index()).wrapping_mul(u64::from(ins.memory_index_scale())),
            );
        if ins.memory_base().size() == 4
            || ins.memory_index().size() == 4
            || (ins.memory_displ_size() == 4 && ins.memory_base() == Register::None)
        {
            ea &= 0xffff_ffff;
        }
        let ea = ea.wrapping_add(segment_base(ins.segment_prefix()));
        // Bit tests reach up to 64 bytes either side.
        ok &= ea >= WIN_LO + 0x100 && ea + 16 <= WIN_HI - 0x100;
    }
    ok
}
