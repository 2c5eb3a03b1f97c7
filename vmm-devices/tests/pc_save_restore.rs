//! The whole PC saved while it runs and restored into a fresh one: a
//! firmware-like script of device accesses runs through the shared exit
//! loop (`Pc::run` on the test host's replaying vCPU) until it is in the
//! middle of things (an ATAPI read a quarter transferred, the PIT counting,
//! the LAPIC timer armed, COM1 busy), the devices and RAM are saved and
//! restored into a second PC whose host clock reads something else, and
//! then both run the same rest of the script. They must answer every
//! access the same, send the same bytes out of COM1 and raise the same
//! interrupts; a PC that was not restored must not.

use std::sync::Arc;
use vmm_core::emulator::RegisterFile;
use vmm_core::test_host::{ReplayVcpu, TestHost};
use vmm_core::vcpu::{AccessTarget, DeviceAccess, RunOutcome, Slice};
use vmm_core::vm::VmId;
use vmm_devices::block::{MemoryImage, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use vmm_devices::pc::{Pc, PcDescription};
use vmm_devices::rtc::BootDevice;
use vmm_devices::uart::BufferBackend;

const RAM: u64 = 16 << 20;

fn firmware() -> Vec<u8> {
    let mut image = vec![0xf4; 64 << 10];
    let reset = image.len() - 16;
    image[reset..reset + 5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    image
}

fn iso() -> Vec<u8> {
    let mut iso = vec![0u8; 64 * CD_SECTOR_SIZE];
    for (i, b) in iso.iter_mut().enumerate() {
        *b = (i * 7 / 3) as u8;
    }
    iso[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
    iso
}

struct Rig {
    host: Arc<TestHost>,
    pc: Pc,
    com1: BufferBackend,
}

fn rig(clock: u64) -> Rig {
    rig_with(clock, false)
}

/// `full`: with the stdvga display and the virtio disk and entropy device.
fn rig_with(clock: u64, full: bool) -> Rig {
    rig_with_cpus(clock, full, 1)
}

/// [`rig_with`] with `cpus` vCPUs.
fn rig_with_cpus(clock: u64, full: bool, cpus: usize) -> Rig {
    let host = Arc::new(TestHost::new());
    host.set_now_ns(clock);
    let com1 = BufferBackend::new();
    let fw = firmware();
    let desc = PcDescription {
        cpu_model: vmm_core::vcpu::CpuModel::Qemu64,
        display: full.then_some(vmm_devices::pc::DisplayDescription {
            vga_bios: &[],
            vram_size: 256 << 10,
        }),
        test_devices: false,
        input: None,
        virtio: if full {
            vmm_devices::pc::VirtioDevices {
                disk: Some(Box::new(
                    MemoryImage::writable(
                        "vdisk",
                        vec![0x33; 64 * DISK_SECTOR_SIZE],
                        DISK_SECTOR_SIZE,
                    )
                    .unwrap(),
                )),
                rng: Some(Box::new(
                    vmm_devices::virtio::rng::DeterministicEntropy::new(7),
                )),
                ..Default::default()
            }
        } else {
            Default::default()
        },
        id: VmId(1),
        ram: RAM,
        cpus,
        x2apic: false,
        firmware: &fw,
        cdrom: Some(Box::new(
            MemoryImage::read_only("cd", iso(), CD_SECTOR_SIZE).unwrap(),
        )),
        disk: Some(Box::new(
            MemoryImage::writable("disk", vec![0x5a; 128 * DISK_SECTOR_SIZE], DISK_SECTOR_SIZE)
                .unwrap(),
        )),
        boot: vec![BootDevice::Cdrom, BootDevice::HardDisk],
        com1: Box::new(com1.clone()),
        debug_console: None,
        unix_seconds_at_host_zero: 1_767_225_600,
        direct_boot: None,
    };
    let pc = Pc::build(host.clone(), desc).unwrap();
    Rig { host, pc, com1 }
}

/// One step of the script.
#[derive(Clone, Debug)]
enum Step {
    /// Guest accesses, run through the exit loop.
    Exits(Vec<(DeviceAccess, Vec<u8>)>),
    /// Time passes on the host.
    Wait(u64),
    /// The vCPU takes whatever interrupts are pending.
    TakeInterrupts,
}

fn port(p: u16, size: u8, count: u32, write: bool) -> DeviceAccess {
    DeviceAccess {
        target: AccessTarget::Port(p),
        size,
        count,
        write,
    }
}

fn outb(p: u16, v: u8) -> (DeviceAccess, Vec<u8>) {
    (port(p, 1, 1, true), vec![v])
}
fn outw(p: u16, v: u16) -> (DeviceAccess, Vec<u8>) {
    (port(p, 2, 1, true), v.to_le_bytes().to_vec())
}
fn outl(p: u16, v: u32) -> (DeviceAccess, Vec<u8>) {
    (port(p, 4, 1, true), v.to_le_bytes().to_vec())
}
fn inb(p: u16) -> (DeviceAccess, Vec<u8>) {
    (port(p, 1, 1, false), vec![0])
}
fn inl(p: u16) -> (DeviceAccess, Vec<u8>) {
    (port(p, 4, 1, false), vec![0; 4])
}
fn insw(p: u16, words: u32) -> (DeviceAccess, Vec<u8>) {
    (port(p, 2, words, false), vec![0; words as usize * 2])
}
fn mmio_write(gpa: u64, v: u32) -> (DeviceAccess, Vec<u8>) {
    (
        DeviceAccess {
            target: AccessTarget::Memory(gpa),
            size: 4,
            count: 1,
            write: true,
        },
        v.to_le_bytes().to_vec(),
    )
}
fn mmio_read(gpa: u64) -> (DeviceAccess, Vec<u8>) {
    (
        DeviceAccess {
            target: AccessTarget::Memory(gpa),
            size: 4,
            count: 1,
            write: false,
        },
        vec![0; 4],
    )
}
fn pci(slot: u8, func: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(slot) << 11 | u32::from(func) << 8 | u32::from(reg)
}

/// What a BIOS does early: interrupt controllers, timers, CMOS, PCI,
/// fw_cfg, the serial port, the APICs, and the start of a CD read.
fn first_half() -> Vec<Step> {
    let mut e = vec![
        // PIC pair: ICW1-ICW4, everything but the timer and cascade masked.
        outb(0x20, 0x11),
        outb(0x21, 0x08),
        outb(0x21, 0x04),
        outb(0x21, 0x01),
        outb(0xa0, 0x11),
        outb(0xa1, 0x70),
        outb(0xa1, 0x02),
        outb(0xa1, 0x01),
        outb(0x21, 0xfa),
        outb(0xa1, 0x3f),
        // PIT channel 0, rate generator, divisor 11932 (100 Hz).
        outb(0x43, 0x34),
        outb(0x40, 0x9c),
        outb(0x40, 0x2e),
        // CMOS: status B, seconds, memory above 16 MiB.
        outb(0x70, 0x0b),
        inb(0x71),
        outb(0x70, 0x00),
        inb(0x71),
        outb(0x70, 0x34),
        inb(0x71),
        // PCI: the IDE function's I/O space on and its bus master at 0xc000.
        outl(0xcf8, pci(1, 1, 0x20)),
        outl(0xcfc, 0xc001),
        outl(0xcf8, pci(1, 1, 0x04)),
        outw(0xcfc, 0x0005),
        // Both channels' legacy ports decoded (IDETIM bit 15).
        outl(0xcf8, pci(1, 1, 0x40)),
        outl(0xcfc, 0x8000_8000),
        outl(0xcf8, pci(1, 1, 0x00)),
        inl(0xcfc),
        // fw_cfg: the signature.
        outw(0x510, 0x0000),
        inb(0x511),
        inb(0x511),
        // COM1: 8N1, FIFO on, a greeting.
        outb(0x3fb, 0x03),
        outb(0x3fa, 0x07),
        outb(0x3f9, 0x02),
    ];
    e.extend(b"PC save/restore\r\n".iter().map(|&c| outb(0x3f8, c)));
    e.extend([
        // LAPIC: software enable, timer one-shot on vector 0x40, counting.
        mmio_write(0xfee0_00f0, 0x1ff),
        mmio_write(0xfee0_03e0, 0x0b),
        mmio_write(0xfee0_0320, 0x40),
        mmio_write(0xfee0_0380, 0x0100_0000),
        // IOAPIC: pin 4 (COM1) to vector 0x34, unmasked.
        mmio_write(0xfec0_0000, 0x18),
        mmio_write(0xfec0_0010, 0x34),
        // The secondary master: ATAPI PACKET, READ(10) of sector 16.
        outb(0x176, 0xa0),
        outb(0x171, 0x00),
        outb(0x174, 0x00),
        outb(0x175, 0x08),
        outb(0x177, 0xa0),
        inb(0x177),
    ]);
    let packet: [u8; 12] = [0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0];
    for w in packet.chunks(2) {
        e.push(outw(0x170, u16::from_le_bytes([w[0], w[1]])));
    }
    e.push(inb(0x177));
    // A quarter of the sector.
    e.push(insw(0x170, 256));
    vec![Step::Exits(e), Step::Wait(3_000_000), Step::TakeInterrupts]
}

/// The rest: the other three quarters of the sector, status, the timers
/// read back and expiring, more serial output, an IDENTIFY on the disk.
fn second_half() -> Vec<Step> {
    let mut e = vec![
        insw(0x170, 768),
        inb(0x177),
        inb(0x172),
        // PIT: latch channel 0 and read it.
        outb(0x43, 0x00),
        inb(0x40),
        inb(0x40),
        // LAPIC current count, ISR/IRR words.
        mmio_read(0xfee0_0390),
        mmio_read(0xfee0_0200),
        // CMOS seconds again.
        outb(0x70, 0x00),
        inb(0x71),
        // COM1 line status and interrupt identification.
        inb(0x3fd),
        inb(0x3fa),
        // The primary master: IDENTIFY DEVICE, all of it.
        outb(0x1f6, 0xa0),
        outb(0x1f7, 0xec),
        inb(0x1f7),
        insw(0x1f0, 256),
        inb(0x1f7),
    ];
    e.extend(b"still here\r\n".iter().map(|&c| outb(0x3f8, c)));
    let mut steps = vec![Step::Exits(e)];
    for _ in 0..5 {
        steps.push(Step::Wait(7_000_000));
        steps.push(Step::TakeInterrupts);
        // End of interrupt to both PICs and the LAPIC.
        steps.push(Step::Exits(vec![
            outb(0x20, 0x20),
            mmio_write(0xfee0_00b0, 0),
            outb(0x43, 0x00),
            inb(0x40),
            inb(0x40),
        ]));
    }
    steps
}

/// Everything the guest saw: the data of every access, every interrupt
/// vector taken, and what COM1 sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    reads: Vec<Vec<u8>>,
    vectors: Vec<u8>,
    serial: Vec<u8>,
}

impl Rig {
    fn run(&mut self, steps: &[Step]) -> Seen {
        let mut seen = Seen::default();
        for step in steps {
            match step {
                Step::Exits(script) => {
                    let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), script.clone());
                    let slice = Slice {
                        max_exits: u64::MAX,
                        until_ns: None,
                    };
                    assert_eq!(self.pc.run(&mut cpu, slice), RunOutcome::SliceEnded);
                    assert_eq!(cpu.completed.len(), script.len(), "every access completed");
                    for ((access, _), data) in script.iter().zip(cpu.completed) {
                        if !access.write {
                            seen.reads.push(data);
                        }
                    }
                }
                Step::Wait(ns) => {
                    self.host.advance_ns(*ns);
                    self.pc.vm_mut().poll_timers();
                }
                Step::TakeInterrupts => {
                    while let Some(v) = self.pc.interrupts().acknowledge() {
                        seen.vectors.push(v);
                    }
                }
            }
        }
        seen.serial = self.com1.take_output();
        seen
    }

    /// Copy guest RAM from `other` (RAM is not device state).
    fn copy_ram_from(&mut self, other: &mut Rig) {
        let mut chunk = vec![0u8; 64 << 10];
        for gpa in (0..RAM).step_by(chunk.len()) {
            other.pc.vm_mut().guest_read(gpa, &mut chunk);
            self.pc.vm_mut().guest_write(gpa, &chunk);
        }
    }
}

#[test]
fn a_pc_restored_mid_boot_goes_on_exactly_as_the_original() {
    let mut original = rig(5_000_000_000);
    let before = original.run(&first_half());
    assert!(
        before.serial.starts_with(b"PC save/restore"),
        "COM1 sent {:?}",
        String::from_utf8_lossy(&before.serial)
    );
    // The quarter sector read so far is the CD's sector 16.
    let quarter = before.reads.last().unwrap();
    assert_eq!(&quarter[..6], b"\x01CD001");
    assert!(!before.vectors.is_empty(), "the PIT interrupted");

    let saved = original.pc.save_devices().unwrap();
    let names: Vec<&str> = saved.iter().map(|d| d.name.as_str()).collect();
    // Every PC device (the PCI bus carries its functions: host bridge,
    // ISA bridge, PM and IDE with the command in flight).
    assert_eq!(
        names,
        [
            "pic", "pit", "rtc", "com1", "i8042", "port92", "post", "ioapic", "lapic", "pci",
            "fw_cfg"
        ]
    );
    let mut restored = rig(42_000_000_000);
    restored.pc.restore_devices(&saved).unwrap();
    restored.copy_ram_from(&mut original);

    let a = original.run(&second_half());
    let b = restored.run(&second_half());
    assert_eq!(a, b, "the restored PC answered differently");
    // What the rest of the script saw is the rest of the sector, an
    // IDENTIFY block, timer interrupts and the serial line.
    let rest = &a.reads[0];
    assert_eq!(rest.len(), 1536);
    assert_eq!(rest[..], iso()[16 * 2048 + 512..17 * 2048]);
    assert!(a.vectors.contains(&0x08), "PIT on IRQ 0: {:x?}", a.vectors);
    assert_eq!(a.serial, b"still here\r\n");

    // A PC that was not restored does not pass for the original.
    let mut fresh = rig(42_000_000_000);
    let c = fresh.run(&second_half());
    assert_ne!(a, c, "the script does not see the saved state");
}

#[test]
fn a_saved_pc_is_refused_by_a_pc_of_another_shape() {
    let mut original = rig(1_000);
    original.run(&first_half());
    let mut saved = original.pc.save_devices().unwrap();
    saved.pop();
    let mut other = rig(1_000);
    assert!(other.pc.restore_devices(&saved).is_err());
}

/// The device (video) memory block of a PC with a display.
fn vram(pc: &mut Pc) -> &mut [u8] {
    let id = pc.vm().memory().blocks().find(|b| b.device).unwrap().id;
    pc.vm_mut().memory_mut().block_bytes_all_mut(id).unwrap()
}

#[test]
fn a_whole_pc_snapshot_restores_devices_vcpu_video_memory_and_ram() {
    let mut original = rig_with(5_000_000_000, true);
    original.run(&first_half());
    vram(&mut original.pc)[0x1234] = 0x5c;
    original.pc.vm_mut().guest_write(0x8000, b"guest RAM");
    let mut cpu = ReplayVcpu::new(RegisterFile::long_mode(0x4000), Vec::new());
    cpu.regs.gprs[3] = 0xb0b;
    cpu.regs.rip = 0x4000;
    let mut file = vmm_core::snapshot::VecSink::default();
    original.pc.snapshot(&mut cpu, &mut file).unwrap();
    let file = file.0;
    let snap = vmm_core::snapshot::Snapshot::parse(&file).unwrap();
    let names: Vec<&str> = snap.devices.iter().map(|d| d.name.as_str()).collect();
    assert!(names.contains(&"pci"), "{names:?}");

    // Refusals leave a fresh PC as it was and say why.
    let mut restored = rig_with(42_000_000_000, true);
    let mut target = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    for (bad, why) in [
        (file[..file.len() / 2].to_vec(), "truncated in the memory"),
        (
            {
                let mut f = file.clone();
                let at = snap.page_data_offset as usize + 5;
                f[at] ^= 1;
                f
            },
            "section memory checksum mismatch",
        ),
    ] {
        let e = restored
            .pc
            .restore(&bad, &mut target, vmm_core::snapshot::RamFill::Copy)
            .unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!(target.regs.gprs[3], 0);
        assert_eq!(vram(&mut restored.pc)[0x1234], 0);
    }
    // A PC without the display is another machine.
    let mut plain = rig(42_000_000_000);
    let e = plain
        .pc
        .restore(&file, &mut target, vmm_core::snapshot::RamFill::Copy)
        .unwrap_err();
    assert!(e.to_string().contains("machine mismatch"), "{e}");

    restored
        .pc
        .restore(&file, &mut target, vmm_core::snapshot::RamFill::Copy)
        .unwrap();
    assert_eq!(target.regs.gprs[3], 0xb0b);
    assert_eq!(target.regs.rip, 0x4000);
    assert_eq!(vram(&mut restored.pc)[0x1234], 0x5c);
    let mut ram = [0u8; 9];
    restored.pc.vm_mut().guest_read(0x8000, &mut ram);
    assert_eq!(&ram, b"guest RAM");
    let a = original.run(&second_half());
    let b = restored.run(&second_half());
    assert_eq!(a, b, "the restored PC answered differently");
}

#[test]
fn a_device_refusing_its_state_rolls_every_device_and_the_map_back() {
    let mut original = rig_with(5_000_000_000, true);
    original.run(&first_half());
    let mut saved = original.pc.save_devices().unwrap();
    // The last device (fw_cfg) refuses bytes that do not decode, after
    // every device before it (the PCI bus with its claims, the host
    // bridge's PAM map) took the saved state.
    saved.last_mut().unwrap().bytes = vec![0xff; 3];
    let mut target = rig_with(42_000_000_000, true);
    target.run(&[Step::Wait(1_000)]);
    let map = format!("{:?}", target.pc.vm().memory());
    let before = target.pc.save_devices().unwrap();
    let e = target
        .pc
        .vm_mut()
        .restore_devices_or_keep(&saved)
        .unwrap_err();
    assert!(e.to_string().starts_with("fw_cfg: "), "{e}");
    assert_eq!(target.pc.save_devices().unwrap(), before);
    assert_eq!(format!("{:?}", target.pc.vm().memory()), map);
    assert!(target.pc.vm().stop_reason().is_none());
}

#[test]
fn a_pc_with_several_vcpus_snapshots_and_restores_every_vcpu() {
    use vmm_core::snapshot::{RamFill, SnapshotError, VecSink};
    use vmm_core::vcpu::ArchState;
    use vmm_core::vm::VcpuExitState;
    let mut rig = rig_with_cpus(5_000_000_000, false, 2);
    // Both PCs past their power-on state (as in the tests above).
    rig.run(&[Step::Wait(1_000)]);
    let mut bsp = ReplayVcpu::new(RegisterFile::long_mode(0x4000), Vec::new());
    bsp.regs.gprs[3] = 0xb5b;
    bsp.regs.rip = 0x4000;
    let mut ap = ReplayVcpu::new(RegisterFile::long_mode(0x6000), Vec::new());
    ap.regs.gprs[3] = 0xa9a;
    ap.regs.rip = 0x6000;
    rig.pc.vm_mut().set_vcpu_exit_state(
        1,
        VcpuExitState {
            halted: Some((0x6001, false)),
            reset: None,
        },
    );
    // The one-vCPU form is refused for two vCPUs, nothing written.
    let mut file = VecSink::default();
    let e = rig.pc.snapshot(&mut bsp, &mut file).unwrap_err();
    assert_eq!(e, SnapshotError::VcpuCount { vm: 2, given: 1 }, "{e}");
    assert!(
        e.to_string()
            .contains("the VM has 2 vCPUs and 1 were given"),
        "{e}"
    );
    assert!(file.0.is_empty(), "nothing written");
    rig.pc
        .snapshot_vcpus(&mut [&mut bsp as &mut dyn ArchState, &mut ap], &mut file)
        .unwrap();
    let file = file.0;

    // Into a PC built the same way: both vCPUs, in order, the AP halted.
    let mut target = rig_with_cpus(42_000_000_000, false, 2);
    target.run(&[Step::Wait(1_000)]);
    let mut t0 = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    let mut t1 = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    target
        .pc
        .restore_vcpus(
            &file,
            &mut [&mut t0 as &mut dyn ArchState, &mut t1],
            RamFill::Copy,
        )
        .unwrap();
    assert_eq!((t0.regs.rip, t0.regs.gprs[3]), (0x4000, 0xb5b));
    assert_eq!((t1.regs.rip, t1.regs.gprs[3]), (0x6000, 0xa9a));
    assert_eq!(
        target.pc.vm().vcpu_exit_state(1).unwrap().halted,
        Some((0x6001, false))
    );
    assert_eq!(target.pc.vm().vcpu_exit_state(0).unwrap().halted, None);

    // A one-vCPU PC is another machine.
    let mut one = rig_with_cpus(42_000_000_000, false, 1);
    one.run(&[Step::Wait(1_000)]);
    let mut t = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    let e = one.pc.restore(&file, &mut t, RamFill::Copy).unwrap_err();
    assert!(
        e.to_string()
            .contains("machine mismatch: vCPU count: the VM has 0x1, the snapshot 0x2"),
        "{e}"
    );
    assert_eq!(t.regs.gprs[3], 0);
}
