//! The smallest useful embedding of `vmm-core`: a host, a VM with RAM, ROM
//! and one device, and guest accesses driven by hand the way a vCPU
//! backend drives them on every exit. Run it with
//! `cargo run -p vmm-examples --bin embed-minimal`.

use std::sync::Arc;
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use vmm_core::host::Host;
use vmm_core::irq::IrqLine;
use vmm_core::memory::GuestMemory;
use vmm_core::stats::ExitKind;
use vmm_core::test_host::{TestHost, TestIrqLine};
use vmm_core::vm::{Vm, VmId};

/// A one-register device: the guest writes a byte, the device keeps it and
/// raises its interrupt line; reading the register returns the byte and
/// lowers the line.
struct Mailbox {
    value: u8,
    irq: Arc<dyn IrqLine>,
}

impl Device for Mailbox {
    fn name(&self) -> &str {
        "mailbox"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}

impl PortIo for Mailbox {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0);
        data[0] = self.value;
        self.irq.set_level(false);
        IoOutcome::Done
    }
    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.value = data[0];
        self.irq.set_level(true);
        IoOutcome::Done
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The host: here the in-process test host; a kernel implements
    //    `vmm_core::host::Host` itself (three methods).
    let host = Arc::new(TestHost::new());

    // 2. The memory map: 16 MiB of RAM at 0, a 64 KiB ROM at the top of 4 GiB.
    let mut memory = GuestMemory::new();
    memory.add_ram(0, host.alloc_memory(16 << 20, 4096)?)?;
    let rom = memory.add_rom(0xffff_0000, host.alloc_memory(0x1_0000, 4096)?)?;
    memory.load_block(rom, 0xfff0, &[0xea, 0x5b, 0xe0, 0x00, 0xf0])?; // jmp f000:e05b

    // 3. The VM and its device.
    let mut vm = Vm::new(VmId(1), host.clone(), memory);
    let irq = TestIrqLine::new();
    let mailbox = vm.add_device(Box::new(Mailbox {
        value: 0,
        irq: irq.clone(),
    }))?;
    vm.claim_ports(mailbox, 0x500, 1)?;

    // 4. What a vCPU backend does on exits: count, then dispatch.
    vm.stats_mut().record(ExitKind::PortIo);
    vm.port_write(0x500, &[42]);
    println!(
        "after OUT 0x500, 42: irq line {}",
        if irq.level() { "high" } else { "low" }
    );
    let mut b = [0u8];
    vm.stats_mut().record(ExitKind::PortIo);
    vm.port_read(0x500, &mut b);
    println!(
        "IN 0x500 -> {} (irq line {})",
        b[0],
        if irq.level() { "high" } else { "low" }
    );
    vm.stats_mut().record(ExitKind::PortIo);
    vm.port_read(0x64, &mut b); // nobody answers: all-ones, counted
    println!("IN 0x64 (unhooked) -> {:#04x}", b[0]);
    let mut reset_vector = [0u8; 5];
    vm.guest_read(0xffff_fff0, &mut reset_vector);
    println!("reset vector bytes: {reset_vector:02x?}");

    // 5. What the user sees at the end.
    print!("{}", vm.stats());
    print!("{}", vm.devices().report());
    Ok(())
}
