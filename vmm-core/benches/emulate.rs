//! Cost of instruction emulation on an MMIO exit, 64-bit guest with 4-level
//! paging, through a test VM's device manager:
//!
//! - `mov_mmio_eax`: fetch + decode + emulate `mov [rbx], eax` to MMIO,
//!   again and again from the same vCPU (its translation and decode
//!   caches warm, as for the LAPIC EOI write of every interrupt);
//! - `mov_mmio_eax_hinted`: the same with the write's guest-physical
//!   address as a nested page fault or EPT violation reports it
//!   (`Hints::access`), the path of an MMIO exit under nested paging: no
//!   walk for the operand;
//! - `mov_mmio_eax_hinted_cold`: the same for an instruction the vCPU has
//!   not emulated before (its translation and decode caches emptied
//!   before each call: a full walk and decode);
//! - `rep_movsb_4k_mmio`: `rep movsb` of 4 KiB from RAM to MMIO, emulated
//!   to completion (several bounded calls);
//! - `iced_decode_mov`: iced-x86 decoding the same `mov` bytes alone, the
//!   floor under the first case.
//!
//! Protocol: no arguments runs every case and prints `CASE: X ns/op`;
//! `--list` prints the case names; `--case NAME --iters N` runs one case N
//! times (for callgrind). Other arguments (`--bench`) are ignored.

mod protocol;

use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Instruction};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress};
use vmm_core::emulator::{AccessHint, Completion, Emulator, Hints, RegisterFile};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const MMIO: u64 = 0xf000_0000;
const PML4: u64 = 0x3f_0000;
const CODE: u64 = 0x1000;

/// A device register file that swallows writes and reads zeros.
struct Sink;

impl Device for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
}

impl Mmio for Sink {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0);
        IoOutcome::Done
    }
    fn mmio_write(&mut self, _: &mut DeviceContext<'_>, _: MmioAddress, data: &[u8]) -> IoOutcome {
        black_box(data);
        IoOutcome::Done
    }
}

struct Setup {
    vm: Vm,
    cpu: RegisterFile,
    code: Vec<u8>,
}

fn setup(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Setup {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x40_0000)
        .device(Sink, &[], &[(MMIO, 0x2000)])
        .build()
        .expect("vm");
    let m = vm.memory_mut();
    let pd = PML4 + 0x2000;
    let pd_high = PML4 + 0x3000;
    m.write_u64(PML4, (PML4 + 0x1000) | 3).expect("pml4");
    m.write_u64(PML4 + 0x1000, pd | 3).expect("pdpt");
    m.write_u64(PML4 + 0x1000 + 8 * 3, pd_high | 3)
        .expect("pdpt");
    m.write_u64(pd, 0x83).expect("pd");
    m.write_u64(pd_high + 8 * ((MMIO >> 21) & 511), MMIO | 0x83)
        .expect("pd");
    let mut a = CodeAssembler::new(64).expect("asm");
    f(&mut a).expect("asm");
    let code = a.assemble(CODE).expect("assemble");
    m.write(CODE, &code).expect("code");
    let mut cpu = RegisterFile::long_mode(PML4);
    cpu.rip = CODE;
    Setup { vm, cpu, code }
}

type Case = (&'static str, fn(u64) -> f64, &'static str);

fn mov_mmio_eax(iters: u64) -> f64 {
    let mut s = setup(|a| a.mov(dword_ptr(rbx), eax));
    s.cpu.gprs[3] = MMIO + 0x40;
    let emu = Emulator::default();
    let start = Instant::now();
    for _ in 0..iters {
        s.cpu.rip = CODE;
        let r = emu.emulate(&mut s.cpu, &mut s.vm);
        assert_eq!(black_box(r), Ok(Completion::Retired));
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

fn mov_mmio_eax_hinted(iters: u64) -> f64 {
    let mut s = setup(|a| a.mov(dword_ptr(rbx), eax));
    s.cpu.gprs[3] = MMIO + 0x40;
    let emu = Emulator::default();
    let hints = Hints {
        access: Some(AccessHint {
            gpa: MMIO + 0x40,
            write: true,
            linear: None,
        }),
        bytes: None,
    };
    let start = Instant::now();
    for _ in 0..iters {
        s.cpu.rip = CODE;
        let r = emu.emulate_hinted(&mut s.cpu, &mut s.vm, &hints);
        assert_eq!(black_box(r), Ok(Completion::Retired));
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// The hinted case for an instruction the vCPU has not emulated before:
/// its translation and decode caches emptied before each call.
fn mov_mmio_eax_hinted_cold(iters: u64) -> f64 {
    let mut s = setup(|a| a.mov(dword_ptr(rbx), eax));
    s.cpu.gprs[3] = MMIO + 0x40;
    let emu = Emulator::default();
    let hints = Hints {
        access: Some(AccessHint {
            gpa: MMIO + 0x40,
            write: true,
            linear: None,
        }),
        bytes: None,
    };
    let start = Instant::now();
    for _ in 0..iters {
        s.cpu.rip = CODE;
        s.cpu.translation_cache.clear();
        s.cpu.decode_cache.clear();
        let r = emu.emulate_hinted(&mut s.cpu, &mut s.vm, &hints);
        assert_eq!(black_box(r), Ok(Completion::Retired));
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

fn rep_movsb_4k(iters: u64) -> f64 {
    let mut s = setup(|a| a.rep().movsb());
    let emu = Emulator::default();
    let start = Instant::now();
    for _ in 0..iters {
        s.cpu.rip = CODE;
        s.cpu.gprs[1] = 4096;
        s.cpu.gprs[6] = 0x10_0000;
        s.cpu.gprs[7] = MMIO;
        while emu.emulate(&mut s.cpu, &mut s.vm) == Ok(Completion::Paused) {}
        assert_eq!(black_box(s.cpu.gprs[1]), 0);
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

fn iced_decode(iters: u64) -> f64 {
    let s = setup(|a| a.mov(dword_ptr(rbx), eax));
    let bytes = s.code.clone();
    let mut instr = Instruction::default();
    let start = Instant::now();
    for _ in 0..iters {
        let mut d = Decoder::with_ip(64, black_box(&bytes), CODE, DecoderOptions::NONE);
        d.decode_out(&mut instr);
        black_box(&instr);
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

const CASES: &[Case] = &[
    ("mov_mmio_eax", mov_mmio_eax, ""),
    ("mov_mmio_eax_hinted", mov_mmio_eax_hinted, ""),
    ("mov_mmio_eax_hinted_cold", mov_mmio_eax_hinted_cold, ""),
    ("rep_movsb_4k_mmio", rep_movsb_4k, "4k"),
    ("iced_decode_mov", iced_decode, ""),
];

fn main() {
    match protocol::request() {
        protocol::Request::List => {
            for (name, _, _) in CASES {
                println!("{name}");
            }
        }
        protocol::Request::One { case, iters } => match CASES.iter().find(|(n, _, _)| *n == case) {
            Some((_, f, _)) => {
                f(iters.unwrap_or(1));
            }
            None => {
                eprintln!("unknown case {case}");
                std::process::exit(2);
            }
        },
        protocol::Request::All => {
            for (name, f, kind) in CASES {
                // Warm up, then size the run to about 0.3 s.
                let probe = f(100).max(1.0);
                let iters = ((3e8 / probe) as u64).clamp(100, 10_000_000);
                let ns = f(iters);
                if *kind == "4k" {
                    let mib_s = 4096.0 / ns * 1e9 / (1024.0 * 1024.0);
                    println!(
                        "{name}: {ns:.1} ns/op ({:.2} ns/byte, {mib_s:.1} MiB/s)",
                        ns / 4096.0
                    );
                } else {
                    println!("{name}: {ns:.1} ns/op");
                }
            }
        }
    }
}
