//! PCI configuration mechanism #1, BAR decoding, i440FX PAM shadowing and
//! PIIX3 PIRQ routing, driven through ports as a BIOS would.

use std::sync::Arc;
use vmm_core::device::DeviceContext;
use vmm_core::irq::IrqLine;
use vmm_core::memory::{Backing, BlockId};
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::pci::i440fx::{BiosRom, I440fx};
use vmm_devices::pci::piix3::{Piix3, PirqRouter};
use vmm_devices::pci::{
    Bar, BarKind, ConfigSpace, InterruptPin, PciBus, PciFunction, PciIds, RegionId, COMMAND_IO,
    COMMAND_MEMORY,
};

/// A test function: an I/O BAR of 16 ports and a 4 KiB memory BAR; reads
/// return the offset plus a BAR tag, writes are remembered.
struct Probe {
    config: ConfigSpace,
    last_write: Option<(RegionId, u64, u8)>,
    intx: Arc<dyn IrqLine>,
}

impl Probe {
    fn new(intx: Arc<dyn IrqLine>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1234,
            device: 0x5678,
            revision: 1,
            class: (0x01, 0x80, 0x00),
            subsystem: (0, 0),
        });
        config
            .set_bar(
                0,
                Bar {
                    kind: BarKind::Io,
                    size: 16,
                },
            )
            .unwrap();
        config
            .set_bar(
                1,
                Bar {
                    kind: BarKind::Memory32 {
                        prefetchable: false,
                    },
                    size: 0x1000,
                },
            )
            .unwrap();
        config.set_interrupt_pin(Some(InterruptPin::A));
        Self {
            config,
            last_write: None,
            intx,
        }
    }
}

impl PciFunction for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn io_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        data.fill(0);
        data[0] = 0x40 + offset as u8;
        assert_eq!(region, RegionId::Bar(0));
    }
    fn io_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        self.last_write = Some((region, offset, data[0]));
        self.intx.set_level(data[0] != 0);
    }
    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        data.fill(0);
        data[0] = 0x80 + offset as u8;
        assert_eq!(region, RegionId::Bar(1));
    }
}

const RAM: BlockId = BlockId(0);
const ROM: BlockId = BlockId(1);
const ROM_GPA: u64 = 0xfffe_0000;

struct Platform {
    vm: Vm,
    irq11: Arc<TestIrqLine>,
    gsi: Vec<Arc<TestIrqLine>>,
}

fn platform() -> Platform {
    let host = Arc::new(TestHost::new());
    let isa: Vec<Arc<TestIrqLine>> = (0..16).map(|_| TestIrqLine::new()).collect();
    let gsi: Vec<Arc<TestIrqLine>> = (0..4).map(|_| TestIrqLine::new()).collect();
    let router = PirqRouter::new(
        isa.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect(),
        gsi.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect(),
    );
    let mut bus = PciBus::new();
    bus.add(
        0,
        0,
        Box::new(I440fx::new(
            RAM,
            Some(BiosRom {
                block: ROM,
                offset: 0,
            }),
        )),
    )
    .unwrap();
    bus.add(1, 0, Box::new(Piix3::new(router.clone()))).unwrap();
    bus.add(
        1,
        1,
        Box::new(Probe::new(router.intx_line(1, InterruptPin::A))),
    )
    .unwrap();
    bus.add(
        3,
        0,
        Box::new(Probe::new(router.intx_line(3, InterruptPin::A))),
    )
    .unwrap();
    let rom: Vec<u8> = (0..0x2_0000u32).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    let vm = TestVmBuilder::new(host, 1)
        .ram(2 << 20)
        .rom(ROM_GPA, &rom)
        .mmio_hole(0xe000_0000, 0x1000_0000)
        .device(bus, &[PciBus::CONFIG_PORTS], &[])
        .build()
        .unwrap();
    // The block ids the bridge was built with.
    assert!(matches!(
        vm.memory().region_at(ROM_GPA).unwrap().read,
        Backing::Block { block: ROM, .. }
    ));
    Platform {
        irq11: isa[11].clone(),
        gsi,
        vm,
    }
}

fn address(dev: u8, func: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg & 0xfc)
}

fn cfg_read32(vm: &mut Vm, dev: u8, func: u8, reg: u8) -> u32 {
    vm.port_write(0xcf8, &address(dev, func, reg).to_le_bytes());
    let mut b = [0u8; 4];
    vm.port_read(0xcfc, &mut b);
    u32::from_le_bytes(b)
}

fn cfg_write32(vm: &mut Vm, dev: u8, func: u8, reg: u8, v: u32) {
    vm.port_write(0xcf8, &address(dev, func, reg).to_le_bytes());
    vm.port_write(0xcfc, &v.to_le_bytes());
}

fn cfg_write8(vm: &mut Vm, dev: u8, func: u8, reg: u8, v: u8) {
    vm.port_write(0xcf8, &address(dev, func, reg).to_le_bytes());
    vm.port_write(0xcfc + u16::from(reg & 3), &[v]);
}

fn cfg_read8(vm: &mut Vm, dev: u8, func: u8, reg: u8) -> u8 {
    vm.port_write(0xcf8, &address(dev, func, reg).to_le_bytes());
    let mut b = [0u8];
    vm.port_read(0xcfc + u16::from(reg & 3), &mut b);
    b[0]
}

/// What the guest CPU reads at `gpa`.
fn mem8(vm: &mut Vm, gpa: u64) -> u8 {
    let mut b = [0u8];
    vm.guest_read(gpa, &mut b);
    b[0]
}

#[test]
fn mechanism_1_reads_ids_and_absent_functions_read_all_ones() {
    let mut p = platform();
    assert_eq!(cfg_read32(&mut p.vm, 0, 0, 0), 0x1237_8086);
    assert_eq!(cfg_read32(&mut p.vm, 1, 0, 0), 0x7000_8086);
    assert_eq!(cfg_read32(&mut p.vm, 2, 0, 0), 0xffff_ffff);
    assert_eq!(cfg_read32(&mut p.vm, 1, 2, 0), 0xffff_ffff);
    // Class code of the ISA bridge: 06 01 00.
    assert_eq!(cfg_read32(&mut p.vm, 1, 0, 8) >> 8, 0x06_0100);
    // Word access at 0xcfe reads the upper half of the dword.
    p.vm.port_write(0xcf8, &address(0, 0, 0).to_le_bytes());
    let mut w = [0u8; 2];
    p.vm.port_read(0xcfe, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1237);
    // The address register reads back what was written, low bits clear.
    p.vm.port_write(0xcf8, &0x8000_0a07u32.to_le_bytes());
    let mut a = [0u8; 4];
    p.vm.port_read(0xcf8, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x8000_0a04);
    // With the enable bit clear, data reads float.
    p.vm.port_write(0xcf8, &0u32.to_le_bytes());
    p.vm.port_read(0xcfc, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0xffff_ffff);
}

#[test]
fn multi_function_device_sets_header_type_bit_7() {
    let mut p = platform();
    assert_eq!(cfg_read8(&mut p.vm, 1, 0, 0x0e), 0x80);
    assert_eq!(cfg_read8(&mut p.vm, 0, 0, 0x0e), 0x00);
}

#[test]
fn bar_sizing_then_programming_routes_ports_and_mmio() {
    let mut p = platform();
    cfg_write32(&mut p.vm, 3, 0, 0x10, 0xffff_ffff);
    assert_eq!(
        cfg_read32(&mut p.vm, 3, 0, 0x10),
        0xffff_fff1,
        "16-port I/O BAR"
    );
    cfg_write32(&mut p.vm, 3, 0, 0x14, 0xffff_ffff);
    assert_eq!(
        cfg_read32(&mut p.vm, 3, 0, 0x14),
        0xffff_f000,
        "4 KiB memory BAR"
    );
    cfg_write32(&mut p.vm, 3, 0, 0x10, 0xc000);
    cfg_write32(&mut p.vm, 3, 0, 0x14, 0xe010_0000);
    // Decoding off: nothing answers.
    let mut b = [0u8];
    assert!(p.vm.devices().port_owner(0xc004).is_none());
    p.vm.port_read(0xc004, &mut b);
    assert_eq!(b[0], 0xff);
    cfg_write32(
        &mut p.vm,
        3,
        0,
        0x04,
        u32::from(COMMAND_IO | COMMAND_MEMORY),
    );
    p.vm.port_read(0xc004, &mut b);
    assert_eq!(b[0], 0x44);
    p.vm.mmio_read(0xe010_0008, &mut b);
    assert_eq!(b[0], 0x88);
    // Move the I/O BAR: the old ports go quiet, the new ones answer.
    cfg_write32(&mut p.vm, 3, 0, 0x10, 0xd000);
    assert!(p.vm.devices().port_owner(0xc004).is_none());
    p.vm.port_read(0xc004, &mut b);
    p.vm.port_read(0xd00f, &mut b);
    assert_eq!(b[0], 0x4f);
    // I/O decode off again.
    cfg_write32(&mut p.vm, 3, 0, 0x04, u32::from(COMMAND_MEMORY));
    assert!(p.vm.devices().port_owner(0xd000).is_none());
    p.vm.port_read(0xd000, &mut b);
    assert!(p.vm.stop_reason().is_none());
}

#[test]
fn bars_outside_the_windows_or_clashing_are_not_decoded() {
    let mut p = platform();
    // Both probes at the same I/O base: the second one is not decoded.
    for dev in [1u8, 3] {
        let func = if dev == 1 { 1 } else { 0 };
        cfg_write32(&mut p.vm, dev, func, 0x10, 0xc000);
        cfg_write32(
            &mut p.vm,
            dev,
            func,
            0x04,
            u32::from(COMMAND_IO | COMMAND_MEMORY),
        );
    }
    // Memory BARs left at 0 lie over RAM: not claimed, the VM keeps running.
    assert!(p.vm.stop_reason().is_none());
    // A legacy port below the I/O window is not claimed either.
    cfg_write32(&mut p.vm, 3, 0, 0x10, 0x3f8);
    let mut b = [0u8];
    assert!(p.vm.devices().port_owner(0x3f8).is_none());
    p.vm.port_read(0x3f8, &mut b);
    p.vm.port_read(0xc001, &mut b);
    assert_eq!(b[0], 0x41, "the first probe now decodes 0xc000 alone");
}

#[test]
fn status_error_bits_are_write_one_to_clear_and_ids_read_only() {
    let mut p = platform();
    cfg_write32(&mut p.vm, 3, 0, 0, 0);
    assert_eq!(cfg_read32(&mut p.vm, 3, 0, 0), 0x5678_1234);
    // Interrupt line is read/write, pin is read-only.
    cfg_write32(&mut p.vm, 3, 0, 0x3c, 0x0000_ff0b);
    assert_eq!(cfg_read32(&mut p.vm, 3, 0, 0x3c) & 0xffff, 0x010b);
}

#[test]
fn pam_switches_bios_area_between_rom_shadow_and_write_protect() {
    let mut p = platform();
    let rom_byte = |off: u64| (off % 251) as u8 ^ 0x5a;
    // Any PCI access powers the bridge on: PAM = 0, the BIOS area reads ROM.
    cfg_read32(&mut p.vm, 0, 0, 0);
    assert_eq!(mem8(&mut p.vm, 0xf_0010), rom_byte(0x1_0010));
    assert_eq!(mem8(&mut p.vm, 0xe_0003), rom_byte(3));
    // Writes to the ROM side are dropped.
    p.vm.guest_write(0xf_0010, &[0x11]);
    assert_eq!(mem8(&mut p.vm, 0xf_0010), rom_byte(0x1_0010));
    // 0xc0000-0xdffff reads open bus.
    assert_eq!(mem8(&mut p.vm, 0xc_0000), 0xff);

    // Shadowing: reads from ROM, writes to RAM (WE only).
    cfg_write8(&mut p.vm, 0, 0, 0x59, 0x20);
    p.vm.guest_write(0xf_0010, &[0x11]);
    assert_eq!(
        mem8(&mut p.vm, 0xf_0010),
        rom_byte(0x1_0010),
        "reads still ROM"
    );
    // Read-only DRAM: the copy is visible, writes are dropped.
    cfg_write8(&mut p.vm, 0, 0, 0x59, 0x10);
    assert_eq!(mem8(&mut p.vm, 0xf_0010), 0x11);
    p.vm.guest_write(0xf_0010, &[0x22]);
    assert_eq!(mem8(&mut p.vm, 0xf_0010), 0x11);
    // Read-write DRAM.
    cfg_write8(&mut p.vm, 0, 0, 0x59, 0x30);
    p.vm.guest_write(0xf_0010, &[0x22]);
    assert_eq!(mem8(&mut p.vm, 0xf_0010), 0x22);
    assert_eq!(cfg_read8(&mut p.vm, 0, 0, 0x59), 0x30);
    // The other 0xe0000 areas are untouched by PAM0.
    assert_eq!(mem8(&mut p.vm, 0xe_0003), rom_byte(3));

    // PAM1 high nibble: 0xc4000-0xc7fff only.
    cfg_write8(&mut p.vm, 0, 0, 0x5a, 0x30);
    p.vm.guest_write(0xc_4000, &[0x33]);
    assert_eq!(mem8(&mut p.vm, 0xc_4000), 0x33);
    assert_eq!(mem8(&mut p.vm, 0xc_0000), 0xff);
    // Reserved bits of PAM registers read back as zero.
    cfg_write8(&mut p.vm, 0, 0, 0x5b, 0xff);
    assert_eq!(cfg_read8(&mut p.vm, 0, 0, 0x5b), 0x33);
    assert!(p.vm.stop_reason().is_none());
}

#[test]
fn bus_reset_restores_rom_view() {
    let mut p = platform();
    cfg_write8(&mut p.vm, 0, 0, 0x59, 0x30);
    p.vm.guest_write(0xf_0000, &[0x99]);
    assert_eq!(mem8(&mut p.vm, 0xf_0000), 0x99);
    p.vm.devices_mut().reset_all();
    cfg_read32(&mut p.vm, 0, 0, 0);
    assert_eq!(cfg_read8(&mut p.vm, 0, 0, 0x59), 0);
    assert_ne!(mem8(&mut p.vm, 0xf_0000), 0x99);
}

/// A VM reset (what the exit loop does on 0xCF9, the 8042's reset line or
/// a PC's triple fault) puts the BIOS ROM back over its shadow RAM at
/// once: the CPU's first fetch after reset (F000:FFF0, then the BIOS at
/// 0xF0000) comes before any PCI access.
#[test]
fn a_vm_reset_maps_the_bios_rom_back_before_any_pci_access() {
    let mut p = platform();
    cfg_write8(&mut p.vm, 0, 0, 0x59, 0x30);
    p.vm.guest_write(0xf_0000, &[0x99]);
    assert_eq!(mem8(&mut p.vm, 0xf_0000), 0x99);
    p.vm.reset_devices();
    let rom_byte = |off: u64| (off % 251) as u8 ^ 0x5a;
    assert_eq!(mem8(&mut p.vm, 0xf_0000), rom_byte(0x1_0000));
    assert_eq!(cfg_read8(&mut p.vm, 0, 0, 0x59), 0);
}

#[test]
fn pirq_routing_delivers_intx_to_the_programmed_isa_irq() {
    let mut p = platform();
    // Probe at slot 3 pin A -> PIRQ (3 + 0) % 4 = D.
    cfg_write32(&mut p.vm, 3, 0, 0x10, 0xc000);
    cfg_write32(&mut p.vm, 3, 0, 0x04, u32::from(COMMAND_IO));
    p.vm.port_write(0xc000, &[1]);
    assert!(!p.irq11.level(), "PIRQD is disabled at power-on");
    assert!(p.gsi[3].level(), "IOAPIC input 19 sees PIRQD");
    cfg_write8(&mut p.vm, 1, 0, 0x63, 11);
    assert!(p.irq11.level(), "routing PIRQD to IRQ 11 raises it");
    p.vm.port_write(0xc000, &[0]);
    assert!(!p.irq11.level());
    p.vm.port_write(0xc000, &[1]);
    assert!(p.irq11.level());
    // Disable the route while asserted: IRQ 11 drops.
    cfg_write8(&mut p.vm, 1, 0, 0x63, 0x80 | 11);
    assert!(!p.irq11.level());
    assert_eq!(cfg_read8(&mut p.vm, 1, 0, 0x63), 0x8b);
}

#[test]
fn reset_control_register_requests_a_reset() {
    let mut p = platform();
    p.vm.port_write(0xcf9, &[0x02]);
    assert!(!p.vm.take_reset_request());
    p.vm.port_write(0xcf9, &[0x06]);
    assert!(p.vm.take_reset_request());
    // A byte write to 0xcf9 does not disturb the address register.
    p.vm.port_write(0xcf8, &address(0, 0, 0).to_le_bytes());
    p.vm.port_write(0xcf9, &[0x00]);
    let mut b = [0u8; 4];
    p.vm.port_read(0xcfc, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1237_8086);
}

#[test]
fn accesses_running_past_the_data_dword_float_the_excess() {
    let mut p = platform();
    p.vm.port_write(0xcf8, &address(0, 0, 0).to_le_bytes());
    let mut w = [0u8; 2];
    p.vm.port_read(0xcff, &mut w);
    assert_eq!(w, [0x12, 0xff], "byte 3 of the ID dword, then nothing");
    // A partial access to 0xcf8 is not the address register.
    let mut b = [0u8; 1];
    p.vm.port_read(0xcf8, &mut b);
    assert_eq!(b[0], 0xff);
    p.vm.port_write(0xcf8, &[0x00]);
    p.vm.port_read(0xcfc, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x8086, "address register unchanged");
}

#[test]
fn platform_changes_through_function_mut_take_effect() {
    let mut p = platform();
    cfg_read32(&mut p.vm, 0, 0, 0);
    // The platform programs the probe's BAR and decoding behind the guest's
    // back (as a direct-boot loader stands in for the BIOS).
    let bus =
        p.vm.devices_mut()
            .device_mut::<PciBus>(vmm_core::device::DeviceId(0))
            .unwrap();
    let probe = bus.function_mut::<Probe>(3, 0).unwrap();
    probe.config.set_u32(0x10, 0xc101);
    probe.config.set_u16(0x04, COMMAND_IO);
    // The next timer poll (the run loop does one per exit) applies it.
    p.vm.poll_timers();
    let mut b = [0u8];
    p.vm.port_read(0xc102, &mut b);
    assert_eq!(b[0], 0x42);
}
