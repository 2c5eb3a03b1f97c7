//! The whole i440FX-class chipset in one call, wired as on a PC: for
//! embedders that want a standard machine rather than picking devices one by
//! one (each device stays usable alone).
//!
//! [`PcChipset::install`] adds to a VM: the PIC pair (0x20, 0xa0, 0x4d0),
//! the PIT with port 0x61 (IRQ 0), the RTC/CMOS (0x70, IRQ 8), COM1
//! (0x3f8, IRQ 4), the i8042 (0x60/0x64, IRQ 1 and 12), port 0x92, the POST
//! port 0x80, the debug console (0xe9 and 0x402, when asked for), the ACPI PM block (SCI on
//! IRQ 9) with SMI command port 0xb2 (at a fixed base, or as the PIIX4 PM
//! function 00:01.3), the IOAPIC (0xfec00000), the local
//! APIC (0xfee00000) and PCI bus 0 (0xcf8-0xcff) with the i440FX host
//! bridge at 00:00.0 and the PIIX3 ISA bridge at 00:01.0. More PCI
//! functions (the PIIX IDE at 00:01.1, NICs) go in through
//! [`PcChipset::pci_bus`].

use crate::a20::A20Gate;
use crate::acpi_pm::{AcpiPm, PM_BLOCK_LEN, SMI_CMD_PORT};
use crate::debug_console::{DebugConsole, BOCHS_DEBUG_PORT, QEMU_DEBUG_PORT};
use crate::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use crate::interrupts::{CpuInterrupts, IsaInterrupts};
use crate::ioapic::{IoApic, IoApicCore, IOAPIC_BASE, IOAPIC_LEN};
use crate::kernel_lapic::LapicPlacement;
use crate::lapic::{CurrentCpu, LapicCore, LocalApic, LAPIC_BASE, LAPIC_LEN};
use crate::pci::i440fx::{BiosRom, I440fx};
use crate::pci::piix3::{Piix3, PirqRouter};
use crate::pci::piix4_pm::Piix4Pm;
use crate::pci::{PciBus, PciError};
use crate::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};
use crate::pit::{Pit, PIT_PORTS, PORT_B};
use crate::post_code::{PostCode, POST_PORT};
use crate::rtc::{BootDevice, Rtc, RTC_PORTS};
use crate::system_control::{SystemControlA, SYSTEM_CONTROL_PORT};
use crate::uart::{CharBackend, Uart, COM1, UART_PORTS};
use crate::x2apic::X2apic;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::device::{ClaimError, Device, DeviceId};
use vmm_core::irq::IrqLine;
use vmm_core::memory::BlockId;
use vmm_core::vm::Vm;

/// The legacy VGA window's graphics part, `0xa0000..0xb8000` as (start,
/// length), which a PC without a VGA device leaves a hole. The text-mode
/// part above, `0xb8000..0xc0000`, should stay RAM, as a card's text memory
/// would: guests read and write the text screen there (a Linux CD boot
/// touches about 1,000 words of it), and as a hole every access is an
/// emulated MMIO exit.
pub const VGA_GRAPHICS_WINDOW: (u64, u64) = (0xa_0000, 0x1_8000);

impl CharBackend for Box<dyn CharBackend> {
    fn write(&mut self, byte: u8) {
        (**self).write(byte);
    }
    fn read(&mut self) -> Option<u8> {
        (**self).read()
    }
    fn write_bytes(&mut self, bytes: &[u8]) {
        (**self).write_bytes(bytes);
    }
    fn has_input(&self) -> bool {
        (**self).has_input()
    }
    fn claim_input(&mut self, claim: bool) {
        (**self).claim_input(claim);
    }
    fn announces_input(&self) -> bool {
        (**self).announces_input()
    }
}

/// What the platform needs to know to build the chipset.
pub struct PcConfig {
    /// The guest RAM block, mapped at guest-physical 0 with block offset
    /// equal to the address (at least 1 MiB).
    pub ram: BlockId,
    /// Bytes of RAM below 4 GiB (for the CMOS memory fields).
    pub ram_below_4g: u64,
    /// Bytes of RAM from 4 GiB up.
    pub ram_above_4g: u64,
    /// The BIOS image behind 0xe0000-0xfffff, if any.
    pub bios: Option<BiosRom>,
    /// Initial PAM field for every area (see `pci::i440fx`); `None` keeps
    /// the power-on 0 (BIOS shadowing flow).
    pub pam_power_on: Option<u8>,
    /// COM1's host side.
    pub com1: Box<dyn CharBackend>,
    /// The debug console's host side, or `None` for no debug console. Then
    /// ports 0xe9 and 0x402 are unhooked and read all-ones, as on a PC (and
    /// on QEMU without `-debugcon`), so SeaBIOS sees no console there and
    /// skips its debug log: about 3,000 port writes, each a VM exit.
    pub debug_console: Option<Box<dyn CharBackend>>,
    /// Unix time when the host clock read 0.
    pub rtc_unix_seconds_at_host_zero: i64,
    /// Boot order for the BIOS.
    pub boot_order: Vec<BootDevice>,
    /// Number of CPUs (1 to `vmm_core::vcpu::MAX_VCPUS`; 0 counts as 1):
    /// a local APIC each (APIC IDs 0 to N-1, 0 the bootstrap processor),
    /// and the count in CMOS.
    pub cpus: u8,
    /// Base port of the ACPI PM block (QEMU uses 0x600; the FADT must say
    /// the same).
    pub acpi_pm_base: u16,
    /// Put the PM block in a PIIX4 PM function at 00:01.3 (PMBA preset to
    /// `acpi_pm_base`, which a BIOS may move) instead of at a fixed ISA
    /// address; the APM ports 0xb2/0xb3 come with it.
    pub acpi_pm_on_pci: bool,
    /// Offer x2APIC (CPUID and IA32_APIC_BASE.EXTD; registers as MSRs, see
    /// [`crate::x2apic`]). Off, the local APICs are xAPICs only.
    pub x2apic: bool,
}

/// Why the chipset could not be installed (a platform configuration
/// error, never guest input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// A port or MMIO claim failed.
    Claim(ClaimError),
    /// A PCI function could not be placed.
    Pci(PciError),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::Claim(e) => write!(f, "{e}"),
            PlatformError::Pci(e) => write!(f, "{e}"),
        }
    }
}

impl From<ClaimError> for PlatformError {
    fn from(e: ClaimError) -> Self {
        Self::Claim(e)
    }
}

impl From<PciError> for PlatformError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

/// Handles to an installed chipset.
#[derive(Debug)]
pub struct PcChipset {
    /// What the bootstrap processor's backend asks for interrupts (the
    /// same as `cpus[0]`).
    pub cpu: CpuInterrupts,
    /// Every vCPU's interrupt inputs, by vCPU index (= APIC ID).
    pub cpus: Vec<CpuInterrupts>,
    /// Which vCPU runs now: the local APIC register page answers as its
    /// APIC. Set it before running a vCPU.
    pub current_cpu: CurrentCpu,
    /// The ISA IRQ lines (hand `isa.line(n)` to more ISA devices).
    pub isa: Arc<IsaInterrupts>,
    /// The IOAPIC (IOAPIC inputs for devices beyond ISA).
    pub ioapic: Arc<IoApicCore>,
    /// Where the local APICs are: the device model's, or the host's once
    /// it installs its own ([`crate::kernel_lapic`]); MSI targets of
    /// functions added later share it.
    pub lapic_placement: Arc<LapicPlacement>,
    /// PCI INTx routing (hand `pirq.intx_line(slot, pin)` to PCI functions).
    pub pirq: Arc<PirqRouter>,
    /// The A20 gate.
    pub a20: A20Gate,
    /// The PCI bus device (`vm.devices_mut().device_mut::<PciBus>(id)`).
    pub pci_bus: DeviceId,
    /// The COM1 device.
    pub com1: DeviceId,
    /// The keyboard controller device (for host key input).
    pub i8042: DeviceId,
    /// The ACPI PM device, when it is not a PCI function.
    pub acpi_pm: Option<DeviceId>,
    /// The POST code device.
    pub post: DeviceId,
    /// The RTC device.
    pub rtc: DeviceId,
}

fn add(
    vm: &mut Vm,
    dev: impl Device,
    ports: &[(u16, u16)],
    mmio: &[(u64, u64)],
) -> Result<DeviceId, ClaimError> {
    let id = vm.add_device(Box::new(dev))?;
    for &(first, count) in ports {
        vm.claim_ports(id, first, count)?;
    }
    for &(gpa, len) in mmio {
        vm.claim_mmio(id, gpa, len)?;
    }
    Ok(id)
}

impl PcChipset {
    /// Build the chipset and add it to `vm` with its claims.
    pub fn install(vm: &mut Vm, config: PcConfig) -> Result<Self, PlatformError> {
        let pic = PicPair::new();
        let count = config.cpus.clamp(1, vmm_core::vcpu::MAX_VCPUS as u8);
        let lapics: Vec<Arc<LapicCore>> = (0..count).map(|i| LapicCore::new(i, i == 0)).collect();
        let lapic_placement = LapicPlacement::new();
        let ioapic = IoApicCore::with_placement(lapics.clone(), lapic_placement.clone());
        let current_cpu = CurrentCpu::new();
        let isa = IsaInterrupts::new(pic.clone(), Some(ioapic.clone()));
        let pirq = PirqRouter::new(
            (0..16)
                .map(|i| isa.line(i))
                .collect::<Vec<Arc<dyn IrqLine>>>(),
            (16..20).map(|g| ioapic.line(g)).collect(),
        );
        let a20 = A20Gate::new();

        let mut bus = PciBus::new();
        let mut host_bridge = I440fx::new(config.ram, config.bios);
        if let Some(field) = config.pam_power_on {
            host_bridge = host_bridge.with_power_on_pam(field);
        }
        bus.add(0, 0, Box::new(host_bridge))?;
        bus.add(1, 0, Box::new(Piix3::new(pirq.clone())))?;

        let mut rtc = Rtc::new(isa.line(8), config.rtc_unix_seconds_at_host_zero);
        rtc.set_memory(config.ram_below_4g, config.ram_above_4g);
        rtc.set_boot_order(&config.boot_order);
        rtc.set_cpu_count(count);

        add(
            vm,
            Pic::new(pic.clone()),
            &[MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS],
            &[],
        )?;
        add(vm, Pit::new(isa.line(0)), &[PIT_PORTS, PORT_B], &[])?;
        let rtc = add(vm, rtc, &[RTC_PORTS], &[])?;
        let com1 = add(
            vm,
            Uart::new("com1", config.com1, isa.line(COM1.1)),
            &[(COM1.0, UART_PORTS)],
            &[],
        )?;
        let i8042 = add(
            vm,
            I8042::new(a20.clone(), isa.line(1), isa.line(12)),
            &[(DATA_PORT, 1), (COMMAND_PORT, 1)],
            &[],
        )?;
        add(
            vm,
            SystemControlA::new(a20.clone()),
            &[(SYSTEM_CONTROL_PORT, 1)],
            &[],
        )?;
        let post = add(vm, PostCode::new(), &[(POST_PORT, 1)], &[])?;
        if let Some(backend) = config.debug_console {
            add(
                vm,
                DebugConsole::new(backend),
                &[(BOCHS_DEBUG_PORT, 1), (QEMU_DEBUG_PORT, 1)],
                &[],
            )?;
        }
        let acpi_pm = if config.acpi_pm_on_pci {
            bus.add(
                1,
                3,
                Box::new(Piix4Pm::new(isa.line(9), Some(config.acpi_pm_base))),
            )?;
            None
        } else {
            Some(add(
                vm,
                AcpiPm::new(isa.line(9)),
                &[(config.acpi_pm_base, PM_BLOCK_LEN), (SMI_CMD_PORT, 1)],
                &[],
            )?)
        };
        add(
            vm,
            IoApic::new(ioapic.clone()),
            &[],
            &[(IOAPIC_BASE, IOAPIC_LEN)],
        )?;
        add(
            vm,
            LocalApic::new_smp(lapics.clone(), current_cpu.clone(), Some(ioapic.clone())),
            &[],
            &[(LAPIC_BASE, LAPIC_LEN)],
        )?;
        let pci_bus = add(vm, bus, &[PciBus::CONFIG_PORTS], &[])?;
        let all = Arc::new(lapics.clone());
        let eoi: Arc<dyn crate::lapic::EoiBroadcast> = ioapic.clone();
        let cpus: Vec<CpuInterrupts> = lapics
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let cpu =
                    CpuInterrupts::new(l, pic.clone()).with_placement(lapic_placement.clone());
                if config.x2apic {
                    cpu.with_x2apic(X2apic::new(all.clone(), i, Some(eoi.clone())))
                } else {
                    cpu
                }
            })
            .collect();
        Ok(Self {
            cpu: cpus[0].clone(),
            cpus,
            current_cpu,
            isa,
            ioapic,
            lapic_placement,
            pirq,
            a20,
            pci_bus,
            com1,
            i8042,
            acpi_pm,
            post,
            rtc,
        })
    }
}

impl PcChipset {
    /// The host pressed the power button: the guest's ACPI sees it.
    pub fn press_power_button(&self, vm: &mut Vm) {
        let devices = vm.devices_mut();
        if let Some(id) = self.acpi_pm {
            if let Some(pm) = devices.device_mut::<AcpiPm>(id) {
                pm.press_power_button();
            }
        } else if let Some(f) = devices
            .device_mut::<PciBus>(self.pci_bus)
            .and_then(|bus| bus.function_mut::<Piix4Pm>(1, 3))
        {
            f.pm_mut().press_power_button();
        }
    }
}
