//! Fuzz interrupt delivery from the IOAPIC, the local APIC and the 8259
//! pair to the vCPU (vmm-devices `ioapic`, `lapic`, `interrupts`):
//! arbitrary redirection entries (every delivery mode: fixed, lowest
//! priority, SMI, NMI, INIT, ExtINT; vectors 0-15; level and edge), ICR
//! writes and storms of them (self, all, all-but-self, every mode), EOIs at
//! the LAPIC and the IOAPIC, TPR/CR8, SVR, LVT and timer writes, ISA and
//! PCI IRQ lines toggled, time passing, resets, and the vCPU acknowledging
//! interrupts and taking NMIs in between.
//!
//! Invariants, checked on the vCPU's side at every acknowledge:
//! `pending()` announces exactly what `acknowledge()` then returns; a
//! vector from the local APIC is 16 or more, was offered by some source in
//! a mode that carries a vector (fixed or lowest priority redirection
//! entry or ICR, or an LVT), is of a higher priority class than the task
//! priority, and is in service afterwards; without an EOI in between the
//! local APIC hands out at most 15 vectors (one per priority class) however
//! many interrupts are raised; an NMI reaches the vCPU only if an NMI
//! source was programmed; no panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::irq::IrqLine;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::interrupts::{CpuInterrupts, IsaInterrupts};
use vmm_devices::ioapic::{IoApic, IoApicCore, IOAPIC_BASE, IOAPIC_LEN, IOAPIC_PINS};
use vmm_devices::lapic::{LapicCore, LocalApic, LAPIC_BASE, LAPIC_LEN};
use vmm_devices::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Program half of a redirection entry through IOREGSEL/IOWIN.
    Redirection {
        pin: u8,
        high: bool,
        value: u32,
    },
    /// A whole entry: vector, delivery mode, level, mask, destination.
    Entry {
        pin: u8,
        vector: u8,
        mode: u8,
        level: bool,
        masked: bool,
        logical: bool,
        dest: u8,
    },
    /// Any IOAPIC register access.
    IoApicWrite {
        offset: u8,
        size: u8,
        value: u32,
    },
    IoApicEoi(u8),
    /// Any local APIC register (aligned 32-bit writes take effect).
    LapicWrite {
        reg: u8,
        value: u32,
    },
    LapicRead {
        reg: u8,
    },
    Icr {
        high: u32,
        low: u32,
    },
    /// The same ICR write `count` times.
    IcrStorm {
        low: u32,
        count: u8,
    },
    Eoi,
    Tpr(u8),
    Cr8(u8),
    Svr(u16),
    ApicBase(u64),
    /// ISA IRQ line (PIC and IOAPIC).
    Isa {
        irq: u8,
        level: bool,
    },
    /// IOAPIC input 16-23 (PCI).
    Gsi {
        pin: u8,
        level: bool,
    },
    /// PIC programming.
    Pic {
        port: u8,
        value: u8,
    },
    Advance {
        ns: u32,
    },
    Acknowledge,
    /// Acknowledge until nothing is left (bounded).
    Drain,
    Reset,
}

struct Oracle {
    offered: [bool; 256],
    nmi_possible: bool,
    acks_since_eoi: u32,
}

fn lapic_reg(vm: &mut Vm, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    vm.mmio_read(LAPIC_BASE + u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

fn lapic_write(vm: &mut Vm, o: &mut Oracle, reg: u32, value: u32) {
    let reg = reg & 0xff0;
    match reg {
        0x300 => match (value >> 8) & 7 {
            0 | 1 => o.offered[usize::from(value as u8)] = true,
            4 => o.nmi_possible = true,
            _ => {}
        },
        0x2f0 | 0x320..=0x370 => o.offered[usize::from(value as u8)] = true,
        0xb0 => o.acks_since_eoi = 0,
        _ => {}
    }
    vm.mmio_write(LAPIC_BASE + u64::from(reg), &value.to_le_bytes());
}

fn ioapic_write(vm: &mut Vm, ioapic: &IoApicCore, o: &mut Oracle, offset: u64, data: &[u8]) {
    // Mark what the entries offer before the write (an unmask delivers at
    // once) and after it.
    mark_entries(ioapic, o);
    if offset == 0x10 && data.len() == 4 {
        let mut sel = [0u8];
        vm.mmio_read(IOAPIC_BASE, &mut sel);
        let r = sel[0];
        if (0x10..0x40).contains(&r) && r.is_multiple_of(2) {
            let pin = usize::from((r - 0x10) / 2);
            let old = ioapic.redirection(pin).unwrap();
            let v = u32::from_le_bytes(data.try_into().unwrap());
            mark(o, (old & !0xffff_ffff) | u64::from(v));
        }
    }
    vm.mmio_write(IOAPIC_BASE + offset, data);
    mark_entries(ioapic, o);
}

fn mark(o: &mut Oracle, e: u64) {
    match (e >> 8) & 7 {
        0 | 1 => o.offered[usize::from(e as u8)] = true,
        4 => o.nmi_possible = true,
        _ => {}
    }
}

fn mark_entries(ioapic: &IoApicCore, o: &mut Oracle) {
    for pin in 0..IOAPIC_PINS {
        mark(o, ioapic.redirection(pin).unwrap());
    }
}

fn acknowledge(vm: &mut Vm, cpu: &CpuInterrupts, o: &mut Oracle) -> Option<u8> {
    let tpr = lapic_reg(vm, 0x80) as u8;
    let from_lapic = cpu.lapic().deliverable();
    let pending = cpu.pending();
    let got = cpu.acknowledge();
    assert_eq!(pending, got, "pending() and acknowledge() disagree");
    if let (Some(v), Some(l)) = (got, from_lapic) {
        assert_eq!(v, l);
        assert!(v >= 16, "LAPIC delivered reserved vector {v}");
        assert!(o.offered[usize::from(v)], "vector {v:#x} nobody offered");
        assert!(v >> 4 > tpr >> 4, "vector {v:#x} under TPR {tpr:#x}");
        let isr = lapic_reg(vm, 0x100 + u32::from(v >> 5) * 0x10);
        assert_ne!(isr & 1 << (v & 31), 0, "vector {v:#x} not in service");
        o.acks_since_eoi += 1;
        assert!(
            o.acks_since_eoi <= 15,
            "{} LAPIC vectors without an EOI",
            o.acks_since_eoi
        );
    }
    if cpu.take_nmi() {
        assert!(o.nmi_possible, "NMI with no NMI source programmed");
    }
    got
}

fuzz_target!(|ops: Vec<Op>| {
    let host = Arc::new(TestHost::new());
    let pic = PicPair::new();
    let lapic = LapicCore::new_bsp();
    let ioapic = IoApicCore::new(vec![lapic.clone()]);
    let isa = IsaInterrupts::new(pic.clone(), Some(ioapic.clone()));
    let isa_lines: Vec<Arc<dyn IrqLine>> = (0..16).map(|i| isa.line(i)).collect();
    let gsi_lines: Vec<Arc<dyn IrqLine>> = (16..24).map(|g| ioapic.line(g)).collect();
    let cpu = CpuInterrupts::new(lapic.clone(), pic.clone());
    let Ok(mut vm) = TestVmBuilder::new(host.clone(), 1)
        .ram(0x1000)
        .device(
            Pic::new(pic.clone()),
            &[MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS],
            &[],
        )
        .device(
            IoApic::new(ioapic.clone()),
            &[],
            &[(IOAPIC_BASE, IOAPIC_LEN)],
        )
        .device(
            LocalApic::new(lapic.clone(), Some(ioapic.clone())),
            &[],
            &[(LAPIC_BASE, LAPIC_LEN)],
        )
        .build()
    else {
        return;
    };
    let mut o = Oracle {
        offered: [false; 256],
        nmi_possible: false,
        acks_since_eoi: 0,
    };
    // The power-on LVTs carry vector 0 (masked); mark what they hold.
    for reg in [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
        let v = lapic_reg(&mut vm, reg);
        o.offered[usize::from(v as u8)] = true;
    }

    for op in ops.into_iter().take(1024) {
        match op {
            Op::Redirection { pin, high, value } => {
                let reg = 0x10 + (pin % IOAPIC_PINS as u8) * 2 + u8::from(high);
                ioapic_write(&mut vm, &ioapic, &mut o, 0, &[reg]);
                ioapic_write(&mut vm, &ioapic, &mut o, 0x10, &value.to_le_bytes());
            }
            Op::Entry {
                pin,
                vector,
                mode,
                level,
                masked,
                logical,
                dest,
            } => {
                let reg = 0x10 + (pin % IOAPIC_PINS as u8) * 2;
                let low = u32::from(vector)
                    | u32::from(mode & 7) << 8
                    | u32::from(logical) << 11
                    | u32::from(level) << 15
                    | u32::from(masked) << 16;
                ioapic_write(&mut vm, &ioapic, &mut o, 0, &[reg + 1]);
                ioapic_write(
                    &mut vm,
                    &ioapic,
                    &mut o,
                    0x10,
                    &(u32::from(dest) << 24).to_le_bytes(),
                );
                ioapic_write(&mut vm, &ioapic, &mut o, 0, &[reg]);
                ioapic_write(&mut vm, &ioapic, &mut o, 0x10, &low.to_le_bytes());
            }
            Op::IoApicWrite {
                offset,
                size,
                value,
            } => {
                let n = [1, 2, 4][usize::from(size % 3)];
                ioapic_write(
                    &mut vm,
                    &ioapic,
                    &mut o,
                    u64::from(offset),
                    &value.to_le_bytes()[..n],
                );
            }
            Op::IoApicEoi(v) => {
                ioapic_write(&mut vm, &ioapic, &mut o, 0x40, &u32::from(v).to_le_bytes())
            }
            Op::LapicWrite { reg, value } => {
                lapic_write(&mut vm, &mut o, u32::from(reg) << 4, value)
            }
            Op::LapicRead { reg } => {
                let _ = lapic_reg(&mut vm, u32::from(reg) << 4);
            }
            Op::Icr { high, low } => {
                lapic_write(&mut vm, &mut o, 0x310, high);
                lapic_write(&mut vm, &mut o, 0x300, low);
            }
            Op::IcrStorm { low, count } => {
                for _ in 0..count {
                    lapic_write(&mut vm, &mut o, 0x300, low);
                }
            }
            Op::Eoi => lapic_write(&mut vm, &mut o, 0xb0, 0),
            Op::Tpr(v) => lapic_write(&mut vm, &mut o, 0x80, u32::from(v)),
            Op::Cr8(v) => lapic.set_cr8(u64::from(v)),
            Op::Svr(v) => lapic_write(&mut vm, &mut o, 0xf0, u32::from(v)),
            // As the exit loop writes it: checked first (this PC has no
            // x2APIC, so EXTD is reserved).
            Op::ApicBase(v) => {
                if let Some(new) = vmm_core::vcpu::apic_base_write(lapic.apic_base(), v) {
                    lapic.set_apic_base(new);
                }
            }
            Op::Isa { irq, level } => isa_lines[usize::from(irq & 15)].set_level(level),
            Op::Gsi { pin, level } => gsi_lines[usize::from(pin & 7)].set_level(level),
            Op::Pic { port, value } => {
                let ports = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
                vm.port_write(ports[usize::from(port) % ports.len()], &[value]);
            }
            Op::Advance { ns } => {
                host.advance_ns(u64::from(ns) * 16);
                vm.poll_timers();
            }
            Op::Acknowledge => {
                acknowledge(&mut vm, &cpu, &mut o);
            }
            Op::Drain => {
                for _ in 0..64 {
                    if acknowledge(&mut vm, &cpu, &mut o).is_none() {
                        break;
                    }
                }
            }
            Op::Reset => {
                vm.devices_mut().reset_all();
                let _ = vm.take_reset_request();
                o.acks_since_eoi = 0;
            }
        }
    }
});
