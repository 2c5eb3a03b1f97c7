//! Fuzz interprocessor interrupts between the local APICs of a 4-vCPU VM
//! (vmm-devices `lapic`, `apic_bus`, `interrupts`): any vCPU writes any
//! register of its APIC (the one register page answers for the vCPU that
//! runs, `lapic::CurrentCpu`), above all ICR values of every delivery mode,
//! shorthand, destination mode and destination (physical, logical flat and
//! cluster after LDR/DFR writes, broadcast), storms of the same ICR
//! (INIT and NMI storms at siblings included), EOIs, resets, and the
//! vCPUs acknowledging interrupts, taking NMIs, INITs and start-up IPIs in
//! between. The APICs offer x2APIC (vmm-devices `x2apic`): a vCPU may turn
//! it on (along the legal IA32_APIC_BASE transitions) and then read and
//! write any x2APIC MSR with any 64-bit value, the ICR with 32-bit
//! destinations and SELF IPI included; reads then go through the MSRs.
//!
//! Invariants: no panic; `pending()` announces exactly what
//! `acknowledge()` returns; every vector a vCPU takes from its APIC is 16
//! or more and was offered to the APICs by an ICR in a vector-carrying
//! mode (fixed, lowest priority) or by an LVT, and is then in service;
//! without an EOI a vCPU takes at most 15 vectors; an NMI only after an
//! NMI IPI; an INIT only after an INIT IPI; a start-up only on a vCPU that
//! waited for one, with a vector some start-up IPI carried, and the vCPU
//! runs after it (waits no more); the bootstrap processor never waits for
//! a start-up IPI.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vcpu::{apic_base_transition, InterruptSource, X2apicWrite};
use vmm_core::vm::Vm;
use vmm_devices::interrupts::CpuInterrupts;
use vmm_devices::lapic::{
    CurrentCpu, LapicCore, LocalApic, APIC_BASE_ENABLE, APIC_BASE_EXTD, LAPIC_BASE, LAPIC_LEN,
};
use vmm_devices::pic::PicPair;
use vmm_devices::x2apic::X2apic;

const CPUS: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    /// vCPU `cpu` writes a register of its APIC.
    Write {
        cpu: u8,
        reg: u8,
        value: u32,
    },
    /// vCPU `cpu` writes ICR high then ICR low.
    Icr {
        cpu: u8,
        high: u32,
        low: u32,
    },
    /// The same ICR low write `count` times (an INIT or NMI storm).
    Storm {
        cpu: u8,
        low: u32,
        count: u8,
    },
    /// vCPU `cpu` software-enables its APIC and sets its logical ID.
    Enable {
        cpu: u8,
        ldr: u8,
        cluster: bool,
    },
    Eoi(u8),
    /// vCPU `cpu` writes IA32_APIC_BASE with EXTD and enable set (refused
    /// from a disabled APIC, as on hardware).
    X2apicOn(u8),
    /// vCPU `cpu` writes x2APIC MSR 0x800 + `reg`.
    MsrWrite {
        cpu: u8,
        reg: u8,
        value: u64,
    },
    /// vCPU `cpu` takes what its inputs have (an interrupt, an NMI, an
    /// INIT, a start-up IPI).
    Take(u8),
    Reset,
}

struct Oracle {
    offered: [bool; 256],
    nmi_sent: bool,
    init_sent: bool,
    sipi_vectors: [bool; 256],
    acks_since_eoi: [u32; CPUS],
}

/// Record what a write of `value` to register `reg` may offer.
fn offer(o: &mut Oracle, cpu: usize, reg: u32, value: u32) {
    match reg {
        0x300 => match (value >> 8) & 7 {
            0 | 1 => o.offered[usize::from(value as u8)] = true,
            4 => o.nmi_sent = true,
            5 => o.init_sent = true,
            6 => o.sipi_vectors[usize::from(value as u8)] = true,
            _ => {}
        },
        0x2f0 | 0x320..=0x370 => o.offered[usize::from(value as u8)] = true,
        0x3f0 => o.offered[usize::from(value as u8)] = true,
        0xb0 => o.acks_since_eoi[cpu] = 0,
        _ => {}
    }
}

fn write(vm: &mut Vm, current: &CurrentCpu, o: &mut Oracle, cpu: usize, reg: u32, value: u32) {
    let reg = reg & 0xff0;
    // SELF IPI is an x2APIC MSR only; on the page it is reserved.
    if reg != 0x3f0 {
        offer(o, cpu, reg, value);
    }
    current.set(cpu);
    vm.mmio_write(LAPIC_BASE + u64::from(reg), &value.to_le_bytes());
}

fn read(vm: &mut Vm, current: &CurrentCpu, cpus: &[CpuInterrupts], cpu: usize, reg: u32) -> u32 {
    if cpus[cpu].lapic().x2apic_mode() {
        let now = vm.host().now_ns();
        return cpus[cpu].x2apic_read(0x800 + (reg >> 4), now).unwrap_or(0) as u32;
    }
    current.set(cpu);
    let mut b = [0u8; 4];
    vm.mmio_read(LAPIC_BASE + u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

fn take(vm: &mut Vm, current: &CurrentCpu, cpus: &[CpuInterrupts], o: &mut Oracle, i: usize) {
    let cpu = &cpus[i];
    if cpu.take_init() {
        assert!(o.init_sent, "INIT with no INIT IPI sent");
        assert!(i == 0 || cpu.waiting_for_sipi(), "AP {i} runs after INIT");
        o.acks_since_eoi[i] = 0;
    }
    if i == 0 {
        assert!(!cpu.waiting_for_sipi(), "the BSP waits for a start-up IPI");
    }
    if cpu.waiting_for_sipi() {
        if let Some(v) = cpu.take_sipi() {
            assert!(
                o.sipi_vectors[usize::from(v)],
                "start-up vector {v:#x} nobody sent"
            );
            assert!(
                !cpu.waiting_for_sipi(),
                "vCPU {i} still waits after its SIPI"
            );
        }
        return;
    }
    assert_eq!(
        cpu.take_sipi(),
        None,
        "a start-up IPI for a running vCPU {i}"
    );
    let tpr = read(vm, current, cpus, i, 0x80) as u8;
    let from_lapic = cpu.lapic().deliverable();
    let pending = cpu.pending();
    let got = cpu.acknowledge();
    assert_eq!(pending, got, "pending() and acknowledge() disagree");
    if let (Some(v), Some(l)) = (got, from_lapic) {
        assert_eq!(v, l);
        assert!(v >= 16, "vCPU {i} got reserved vector {v}");
        assert!(o.offered[usize::from(v)], "vector {v:#x} nobody offered");
        assert!(v >> 4 > tpr >> 4, "vector {v:#x} under TPR {tpr:#x}");
        let isr = read(vm, current, cpus, i, 0x100 + u32::from(v >> 5) * 0x10);
        assert_ne!(isr & 1 << (v & 31), 0, "vector {v:#x} not in service");
        o.acks_since_eoi[i] += 1;
        assert!(o.acks_since_eoi[i] <= 15, "15 vectors without an EOI");
    }
    if InterruptSource::take_nmi(cpu) {
        assert!(o.nmi_sent, "NMI with no NMI IPI sent");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let host = Arc::new(TestHost::new());
    let pic = PicPair::new();
    let lapics: Vec<Arc<LapicCore>> = (0..CPUS as u8).map(|i| LapicCore::new(i, i == 0)).collect();
    let all = Arc::new(lapics.clone());
    let cpus: Vec<CpuInterrupts> = lapics
        .iter()
        .enumerate()
        .map(|(i, l)| {
            CpuInterrupts::new(l.clone(), pic.clone()).with_x2apic(X2apic::new(
                all.clone(),
                i,
                None,
            ))
        })
        .collect();
    let current = CurrentCpu::new();
    let Ok(mut vm) = TestVmBuilder::new(host.clone(), 1)
        .ram(0x1000)
        .device(
            LocalApic::new_smp(lapics.clone(), current.clone(), None),
            &[],
            &[(LAPIC_BASE, LAPIC_LEN)],
        )
        .build()
    else {
        return;
    };
    let mut o = Oracle {
        offered: [false; 256],
        nmi_sent: false,
        init_sent: false,
        sipi_vectors: [false; 256],
        acks_since_eoi: [0; CPUS],
    };
    // The power-on LVTs carry vector 0 (masked).
    o.offered[0] = true;
    let cpu = |c: u8| usize::from(c) % CPUS;
    for op in ops.into_iter().take(1024) {
        match op {
            Op::Write { cpu: c, reg, value } => write(
                &mut vm,
                &current,
                &mut o,
                cpu(c),
                u32::from(reg) << 4,
                value,
            ),
            Op::Icr { cpu: c, high, low } => {
                write(&mut vm, &current, &mut o, cpu(c), 0x310, high);
                write(&mut vm, &current, &mut o, cpu(c), 0x300, low);
            }
            Op::Storm { cpu: c, low, count } => {
                for _ in 0..count {
                    write(&mut vm, &current, &mut o, cpu(c), 0x300, low);
                }
            }
            Op::Enable {
                cpu: c,
                ldr,
                cluster,
            } => {
                let i = cpu(c);
                write(&mut vm, &current, &mut o, i, 0xf0, 0x1ff);
                write(
                    &mut vm,
                    &current,
                    &mut o,
                    i,
                    0xe0,
                    if cluster { 0x0fff_ffff } else { u32::MAX },
                );
                write(&mut vm, &current, &mut o, i, 0xd0, u32::from(ldr) << 24);
            }
            Op::Eoi(c) => write(&mut vm, &current, &mut o, cpu(c), 0xb0, 0),
            Op::X2apicOn(c) => {
                let lapic = &lapics[cpu(c)];
                let base = lapic.apic_base();
                let want = base | APIC_BASE_ENABLE | APIC_BASE_EXTD;
                if let Some(new) = apic_base_transition(base, want, true) {
                    lapic.set_apic_base(new);
                }
            }
            Op::MsrWrite { cpu: c, reg, value } => {
                let i = cpu(c);
                let reg = u32::from(reg) << 4;
                if reg != 0xb0 {
                    offer(&mut o, i, reg, value as u32);
                }
                let now = vm.host().now_ns();
                let done = cpus[i].x2apic_write(0x800 + (reg >> 4), value, now);
                if reg == 0xb0 && done != X2apicWrite::Fault {
                    o.acks_since_eoi[i] = 0;
                }
            }
            Op::Take(c) => take(&mut vm, &current, &cpus, &mut o, cpu(c)),
            Op::Reset => {
                vm.reset_devices();
                o.acks_since_eoi = [0; CPUS];
            }
        }
    }
});
