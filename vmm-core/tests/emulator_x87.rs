//! x87 stores through the emulator against the host's FPU: random 80-bit
//! values (normals, denormals and pseudo-denormals, unnormals, infinities,
//! NaNs, values at the edges of each destination's range) stored with
//! FST/FSTP (single, double, extended), FIST/FISTP and FISTTP (16, 32, 64
//! bits) under every rounding control with exceptions masked. The bytes
//! stored and the status word (IE, OE, UE, PE, SF, C1, TOP) must be the
//! host's. Then the cases hardware answers without a store: an empty
//! ST(0), unmasked exceptions, #NM and #MF.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{
    Completion, EmulateError, Emulator, Exception, RegisterFile, X87Registers,
};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const DEST: u64 = 0x2000;
/// The status-word bits the comparison covers: IE, OE, UE, PE, SF, ES, C1,
/// TOP, B (C0, C2 and C3 are undefined after a store; DE is not raised by
/// stores from an 80-bit register).
const COMPARED: u16 = 0x1 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x200 | 0x3800 | 0x8000;

#[derive(Clone, Copy, Debug)]
enum Form {
    Fstp32,
    Fst64,
    Fstp64,
    Fstp80,
    Fistp16,
    Fist32,
    Fistp64,
    Fisttp16,
    Fisttp32,
    Fisttp64,
}

const FORMS: [Form; 10] = [
    Form::Fstp32,
    Form::Fst64,
    Form::Fstp64,
    Form::Fstp80,
    Form::Fistp16,
    Form::Fist32,
    Form::Fistp64,
    Form::Fisttp16,
    Form::Fisttp32,
    Form::Fisttp64,
];

impl Form {
    fn len(self) -> usize {
        match self {
            Form::Fistp16 | Form::Fisttp16 => 2,
            Form::Fstp32 | Form::Fist32 | Form::Fisttp32 => 4,
            Form::Fstp80 => 10,
            _ => 8,
        }
    }

    fn assemble(self, a: &mut CodeAssembler, at: u32) -> Result<(), IcedError> {
        match self {
            Form::Fstp32 => a.fstp(dword_ptr(at)),
            Form::Fst64 => a.fst(qword_ptr(at)),
            Form::Fstp64 => a.fstp(qword_ptr(at)),
            Form::Fstp80 => a.fstp(tword_ptr(at)),
            Form::Fistp16 => a.fistp(word_ptr(at)),
            Form::Fist32 => a.fist(dword_ptr(at)),
            Form::Fistp64 => a.fistp(qword_ptr(at)),
            Form::Fisttp16 => a.fisttp(word_ptr(at)),
            Form::Fisttp32 => a.fisttp(dword_ptr(at)),
            Form::Fisttp64 => a.fisttp(qword_ptr(at)),
        }
    }

    /// Run the store on the host FPU: FNINIT, FLDCW `fcw`, FLD the value,
    /// the store; the bytes stored and FNSTSW after.
    fn native(self, value: &[u8; 10], fcw: u16) -> ([u8; 10], u16) {
        let mut out = [0u8; 10];
        let mut sw = 0u16;
        let (v, o, s, c) = (value.as_ptr(), out.as_mut_ptr(), &mut sw as *mut u16, &fcw);
        macro_rules! run {
            ($store:literal) => {
                // SAFETY: the FPU is reinitialised first and left clean
                // (FNCLEX, FNINIT); every exception is masked by `fcw`
                // (the caller masks all six), so no #MF can follow; the
                // pointers are to live locals of the sizes accessed.
                unsafe {
                    std::arch::asm!(
                        "fninit",
                        "fldcw word ptr [{c}]",
                        "fld tbyte ptr [{v}]",
                        $store,
                        "fnstsw word ptr [{s}]",
                        "fnclex",
                        "fninit",
                        v = in(reg) v,
                        o = in(reg) o,
                        s = in(reg) s,
                        c = in(reg) c,
                        options(nostack),
                    )
                }
            };
        }
        match self {
            Form::Fstp32 => run!("fstp dword ptr [{o}]"),
            Form::Fst64 => run!("fst qword ptr [{o}]"),
            Form::Fstp64 => run!("fstp qword ptr [{o}]"),
            Form::Fstp80 => run!("fstp tbyte ptr [{o}]"),
            Form::Fistp16 => run!("fistp word ptr [{o}]"),
            Form::Fist32 => run!("fist dword ptr [{o}]"),
            Form::Fistp64 => run!("fistp qword ptr [{o}]"),
            Form::Fisttp16 => run!("fisttp word ptr [{o}]"),
            Form::Fisttp32 => run!("fisttp dword ptr [{o}]"),
            Form::Fisttp64 => run!("fisttp qword ptr [{o}]"),
        }
        (out, sw)
    }
}

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap()
}

/// The x87 state FNINIT, FLDCW `fcw` and FLD `value` leave: TOP 7, ST(0)
/// valid.
fn loaded(value: &[u8; 10], fcw: u16) -> X87Registers {
    let mut x = X87Registers {
        fcw,
        fsw: 7 << 11,
        ftw: 1 << 7,
        ..X87Registers::default()
    };
    x.st[0] = *value;
    x
}

fn cpu(vm: &mut Vm, form: Form, x87: X87Registers) -> RegisterFile {
    let mut a = CodeAssembler::new(32).unwrap();
    form.assemble(&mut a, DEST as u32).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    cpu.control.cr0 |= 1 << 5; // NE
    cpu.x87 = Some(x87);
    cpu
}

/// Emulate `form` storing `value` under `fcw`: the bytes at DEST and the
/// status word after.
fn emulated(form: Form, value: &[u8; 10], fcw: u16) -> ([u8; 10], u16) {
    let mut vm = vm();
    vm.memory_mut().write(DEST, &[0; 10]).unwrap();
    let mut c = cpu(&mut vm, form, loaded(value, fcw));
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Ok(Completion::Retired),
        "{form:?}"
    );
    let mut out = [0u8; 10];
    vm.memory().read(DEST, &mut out[..form.len()]).unwrap();
    (out, c.x87.unwrap().fsw)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A random 80-bit value, biased toward the edges of each format.
fn value(rng: &mut Rng) -> [u8; 10] {
    let r = rng.next();
    let exp: u16 = match r % 12 {
        0 => 0,
        1 => 0x7fff,
        2 => 16383 + (r >> 8) as u16 % 64,            // integers
        3 => 16383 + 127 + ((r >> 8) % 5) as u16 - 2, // single's top
        4 => 16383 - 126 - ((r >> 8) % 30) as u16,    // single's bottom
        5 => 16383 + 1023 + ((r >> 8) % 5) as u16 - 2,
        6 => 16383 - 1022 - ((r >> 8) % 60) as u16,
        7 => 16383 + 62 + ((r >> 8) % 3) as u16, // 64-bit integers' edge
        8 => 16383 + 14 + ((r >> 8) % 3) as u16, // 16-bit integers' edge
        9 => 16383 + 30 + ((r >> 8) % 3) as u16, // 32-bit integers' edge
        10 => 16383 - 1 - ((r >> 8) % 3) as u16, // halves
        _ => (r >> 8) as u16 & 0x7fff,
    };
    let mut mant = rng.next();
    match r >> 40 & 7 {
        0 => mant &= !0xffff_ffff,                     // short significands
        1 => mant &= !0x7fff_ffff_ffff_f800 | 1 << 63, // few bits
        2 => mant &= !(1 << 63),                       // unnormal / denormal
        _ => mant |= 1 << 63,
    }
    let sign = (r >> 50 & 1) as u16;
    let mut v = [0u8; 10];
    v[..8].copy_from_slice(&mant.to_le_bytes());
    v[8..].copy_from_slice(&(exp | sign << 15).to_le_bytes());
    v
}

#[test]
fn stores_match_the_host_fpu() {
    let mut rng = Rng(0x87_5eed_0001);
    let mut compared = 0;
    let mut failures = Vec::new();
    for _ in 0..1500 {
        let v = value(&mut rng);
        for form in FORMS {
            for rc in 0..4u16 {
                // Every exception masked; precision control varies (it
                // does not apply to stores).
                let fcw = 0x3f | (rng.next() as u16 & 0x300) | rc << 10 | 0x40;
                let (n_bytes, n_sw) = form.native(&v, fcw);
                let (e_bytes, e_sw) = emulated(form, &v, fcw);
                let len = form.len();
                compared += 1;
                if n_bytes[..len] != e_bytes[..len] || n_sw & COMPARED != e_sw & COMPARED {
                    failures.push(format!(
                        "{form:?} of {:02x?} fcw {fcw:#06x}: host {:02x?} sw {:#06x}, emulated {:02x?} sw {:#06x}",
                        v,
                        &n_bytes[..len],
                        n_sw & COMPARED,
                        &e_bytes[..len],
                        e_sw & COMPARED
                    ));
                }
            }
        }
    }
    println!("x87 stores: {compared} cases compared with the host FPU");
    for f in failures.iter().take(20) {
        println!("MISMATCH {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} differ",
        failures.len()
    );
}

#[test]
fn an_empty_st0_stores_the_indefinite_when_masked_and_nothing_when_not() {
    // Masked: the indefinite, IE and SF, and FSTP still pops.
    let mut vm = vm();
    let mut x = loaded(&[0; 10], 0x37f);
    x.ftw = 0;
    let mut c = cpu(&mut vm, Form::Fstp32, x);
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(vm.memory().read_u32(DEST).unwrap(), 0xffc0_0000);
    let fsw = c.x87.unwrap().fsw;
    assert_eq!(fsw & 0x41, 0x41, "IE and SF");
    assert_eq!(fsw & 0x3800, 0, "popped: TOP 7 + 1");

    // Unmasked IE: nothing stored, nothing popped, ES and B set.
    let mut vm = self::vm();
    vm.memory_mut().write_u32(DEST, 0x1234_5678).unwrap();
    let mut x = loaded(&[0; 10], 0x37e);
    x.ftw = 0;
    let mut c = cpu(&mut vm, Form::Fistp16, x);
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(vm.memory().read_u32(DEST).unwrap(), 0x1234_5678);
    let fsw = c.x87.unwrap().fsw;
    assert_eq!(fsw & 0x80c1, 0x80c1, "IE, SF, ES, B");
    assert_eq!(fsw & 0x3800, 7 << 11, "not popped");
}

#[test]
fn unmasked_overflow_leaves_the_destination_and_the_next_store_faults() {
    let mut vm = vm();
    vm.memory_mut().write_u32(DEST, 0x1234_5678).unwrap();
    // 2^200 does not fit a single; OE unmasked.
    let mut v = [0u8; 10];
    v[7] = 0x80;
    v[8..].copy_from_slice(&(16383u16 + 200).to_le_bytes());
    let mut c = cpu(&mut vm, Form::Fstp32, loaded(&v, 0x377));
    c.control.cr0 |= 1 << 5;
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(vm.memory().read_u32(DEST).unwrap(), 0x1234_5678);
    let x = c.x87.unwrap();
    assert_eq!(x.fsw & 0x8088, 0x8088, "OE, ES, B");
    // The pending exception: the next store is #MF, changing nothing.
    c.rip = 0x1000;
    let before = c.clone();
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::MathFault))
    );
    assert_eq!(c, before);
}

#[test]
fn em_or_ts_is_device_not_available_and_fnstsw_does_not_wait() {
    let mut vm = vm();
    let mut a = CodeAssembler::new(32).unwrap();
    a.fnstsw(word_ptr(DEST as u32)).unwrap();
    a.fnstcw(word_ptr(DEST as u32 + 2)).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut c = RegisterFile::protected_flat32();
    c.rip = 0x1000;
    c.control.cr0 |= 1 << 5;
    // An unmasked exception pending: FNSTSW and FNSTCW still run.
    c.x87 = Some(X87Registers {
        fcw: 0x0372,
        fsw: 0x8081 | 5 << 11,
        ..X87Registers::default()
    });
    let em = Emulator::default();
    assert_eq!(em.emulate(&mut c, &mut vm), Ok(Completion::Retired));
    assert_eq!(em.emulate(&mut c, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u16(DEST).unwrap(), 0x8081 | 5 << 11);
    assert_eq!(vm.memory().read_u16(DEST + 2).unwrap(), 0x0372);

    let mut c = cpu(&mut vm, Form::Fst64, loaded(&[0; 10], 0x37f));
    c.control.cr0 |= 1 << 3; // TS
    assert_eq!(
        Emulator::default().emulate(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::DeviceNotAvailable))
    );
}

/// A VM whose memory from 0x8000 on (up to 0x1_0000) has nothing behind
/// it.
fn vm_with_hole() -> Vm {
    let mut vm = vm();
    vm.memory_mut().unmap(0x8000, 0x8000).unwrap();
    vm
}

fn run_at(
    vm: &mut Vm,
    x87: X87Registers,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Result<Completion, EmulateError>, RegisterFile) {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut c = RegisterFile::protected_flat32();
    c.rip = 0x1000;
    c.control.cr0 |= 1 << 5;
    c.x87 = Some(x87);
    let r = Emulator::default().emulate(&mut c, vm);
    (r, c)
}

#[test]
fn environment_and_state_saves_into_a_hole_keep_only_their_effects() {
    let mut vm = vm_with_hole();
    let pi = {
        let mut v = [0u8; 10];
        v[..8].copy_from_slice(&0xc90f_daa2_2168_c235u64.to_le_bytes());
        v[8..].copy_from_slice(&0x4000u16.to_le_bytes());
        v
    };
    // FNSTENV masks every exception.
    let (r, c) = run_at(&mut vm, loaded(&pi, 0x0360), |a| {
        a.fnstenv(dword_ptr(0x9000))
    });
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(c.x87.unwrap().fcw, 0x037f);
    // FNSAVE reinitialises (the registers' bytes stay, every tag empty).
    let (r, c) = run_at(&mut vm, loaded(&pi, 0x0c7f), |a| {
        a.fnsave(dword_ptr(0x9000))
    });
    assert_eq!(r, Ok(Completion::Retired));
    let x = c.x87.unwrap();
    assert_eq!((x.fcw, x.fsw, x.ftw), (0x037f, 0, 0));
    assert_eq!(x.st[0], pi);
    // FBSTP of pi: 3, inexact (not rounded up to nearest), popped.
    let (r, c) = run_at(&mut vm, loaded(&pi, 0x037f), |a| a.fbstp(tword_ptr(0x9000)));
    assert_eq!(r, Ok(Completion::Retired));
    let x = c.x87.unwrap();
    assert_eq!(x.fsw & 0x3a21, 0x0020, "PE, no C1, TOP 7 + 1");
    assert_eq!(x.ftw, 0);
    // FBSTP of 10^19: beyond 18 digits, IE (masked), popped.
    let mut big = [0u8; 10];
    big[..8].copy_from_slice(&(10_000_000_000_000_000_000u64).to_le_bytes());
    big[8..].copy_from_slice(&(16383u16 + 63).to_le_bytes());
    let (r, c) = run_at(&mut vm, loaded(&big, 0x037f), |a| {
        a.fbstp(tword_ptr(0x9000))
    });
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(c.x87.unwrap().fsw & 1, 1, "IE");
    // FXSAVE: no effect; a misaligned area is #GP(0).
    let (r, c) = run_at(&mut vm, loaded(&pi, 0x037f), |a| {
        a.fxsave(zmmword_ptr(0x9000))
    });
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(c.x87, Some(loaded(&pi, 0x037f)));
    let (r, _) = run_at(&mut vm, loaded(&pi, 0x037f), |a| {
        a.fxsave(zmmword_ptr(0x9008))
    });
    assert_eq!(
        r,
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    // Partly in RAM: not carried out.
    let (r, _) = run_at(&mut vm, loaded(&pi, 0x037f), |a| {
        a.fnsave(dword_ptr(0x7ff0))
    });
    assert!(matches!(r, Err(EmulateError::Unsupported { .. })), "{r:?}");
}
