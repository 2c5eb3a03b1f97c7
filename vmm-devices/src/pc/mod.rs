//! One PC, assembled the same way on every host: RAM with the VGA hole, the
//! firmware, the i440FX/PIIX chipset ([`crate::platform`]), the PIIX3 IDE
//! controller at 00:01.1 with a CD-ROM drive and an optional disk, SeaBIOS's
//! fw_cfg, and (optionally) a kernel booted directly. [`Pc`] owns the VM,
//! its devices, the vCPU's interrupt inputs and its MSR file, and runs it a
//! slice at a time on any [`VcpuBackend`].
//!
//! A host supplies only what is its own: memory and time (its
//! [`vmm_core::host::Host`]), the media and console backends, and the
//! vCPU backend. The machine lives here, beside the devices it wires,
//! because it is their composition; it depends on `vmm-bios` for the
//! firmware side (image mapping, fw_cfg, ACPI, the Linux loader).

mod description;
mod direct_boot;
mod display;
mod error;
mod firmware;
mod fork;
#[cfg(test)]
mod tests;

pub use description::{DirectBoot, DisplayDescription, PcDescription, VirtioDevices};
pub use error::PcError;
pub use firmware::{check as check_firmware, MIN_PAM_IMAGE};
pub use fork::{ForkError, PcRam, CLONE_FLAG_CMOS, CLONE_INDEX_CMOS};

use crate::i8042::I8042;
use crate::ide::{Drive, IdeSlot, Piix3Ide};
use crate::interrupts::CpuInterrupts;
use crate::ivshmem::{Access, Doorbells, Ivshmem, IvshmemConfig};
use crate::kernel_lapic::KernelLapics;
use crate::msi::LapicMsi;
use crate::pci::i440fx::BiosRom;
use crate::pci::msix::MsiTarget;
use crate::pci::{InterruptPin, PciBus};
use crate::platform::{PcChipset, PcConfig, VGA_GRAPHICS_WINDOW};
use crate::rtc::BootDevice;
use crate::vga::{self, memory};
use crate::virtio::blk::VirtioBlk;
use crate::virtio::console::VirtioConsole;
use crate::virtio::net::VirtioNet;
use crate::virtio::rng::VirtioRng;
use crate::virtio::{VirtioDevice, VirtioPci};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use vmm_bios::bios_image::load_bios;
use vmm_bios::boot_order::{BootOrder, IdeDrive};
use vmm_bios::entry::EntryState;
use vmm_bios::fw_cfg::FwCfg;
use vmm_bios::seabios::{seabios_fw_cfg, SeabiosConfig};
use vmm_core::device::{SavedDevice, StateError};
use vmm_core::host::Host;
use vmm_core::memory::{BlockId, GuestMemory};
use vmm_core::snapshot::{self, RamFill, Snapshot, SnapshotError, SnapshotSink};
use vmm_core::vcpu::{self, ArchState, MsrFile, Prepared, RunOutcome, Slice, Turn, VcpuBackend};
use vmm_core::vm::Vm;

/// The least RAM a PC takes: the low 1 MiB and room for the firmware's
/// own use above it.
pub const MIN_RAM: u64 = 2 << 20;
/// The most RAM a PC takes: what fits below the 40-bit guest-physical
/// limit the CPU model reports (CPUID 0x8000_0008), with the first
/// [`RAM_BELOW_PCI_HOLE`] below the hole and the rest from 4 GiB up.
pub const MAX_RAM: u64 = (1 << 40) - (1 << 30);
/// RAM below 4 GiB ends where the PCI hole starts, at 3 GiB, as on QEMU's
/// i440FX PC with more than 3.5 GiB; RAM beyond that is mapped from
/// [`HIGH_RAM_BASE`].
pub const RAM_BELOW_PCI_HOLE: u64 = 3 << 30;
/// Where RAM above the PCI hole starts: 4 GiB.
pub const HIGH_RAM_BASE: u64 = 1 << 32;
/// The most vCPUs a PC takes.
pub const MAX_CPUS: usize = vcpu::MAX_VCPUS;

/// Where QEMU's PIIX4 puts the ACPI PM block; the FADT says the same, and a
/// guest without a BIOS finds it there from power-on.
pub const ACPI_PM_BASE: u16 = 0x600;

/// The PCI slot and function of the PIIX3 IDE controller.
pub const IDE_PCI: (u8, u8) = (1, 1);

/// The PCI slot and function of the virtio disk, when there is one.
pub const VIRTIO_DISK_PCI: (u8, u8) = (4, 0);
/// The PCI slot and function of the virtio entropy device, when there is one.
pub const VIRTIO_RNG_PCI: (u8, u8) = (5, 0);
/// The PCI slot and function of the virtio console, when there is one.
pub const VIRTIO_CONSOLE_PCI: (u8, u8) = (6, 0);
/// The PCI slot and function of the virtio network card, when there is one.
pub const VIRTIO_NET_PCI: (u8, u8) = (7, 0);
/// The PCI slot and function of the shared-memory device
/// ([`Pc::add_ivshmem`]), when there is one.
pub const IVSHMEM_PCI: (u8, u8) = (8, 0);

/// The CD-ROM drive: secondary master, as on QEMU's PC.
const CDROM: IdeDrive = IdeDrive {
    channel: 1,
    unit: 0,
    cdrom: true,
};
/// The disk: primary master.
const DISK: IdeDrive = IdeDrive {
    channel: 0,
    unit: 0,
    cdrom: false,
};

/// What waits for one vCPU ([`Pc::wake_signals`]): a host that runs
/// vCPUs on threads of their own kicks a vCPU out of its guest, or wakes
/// it from a halt, when one of these appears.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeSignals {
    /// An external interrupt (local APIC or PIC).
    pub interrupt: bool,
    /// An NMI.
    pub nmi: bool,
    /// An INIT or a start-up IPI.
    pub init_or_sipi: bool,
    /// A machine reset another vCPU carried out.
    pub reset: bool,
}

impl WakeSignals {
    /// Whether `self` has a signal that `before` did not.
    pub fn newer_than(&self, before: &WakeSignals) -> bool {
        (self.interrupt && !before.interrupt)
            || (self.nmi && !before.nmi)
            || (self.init_or_sipi && !before.init_or_sipi)
            || (self.reset && !before.reset)
    }
}

/// A built PC: the VM with every device, ready to run on a vCPU backend.
pub struct Pc {
    vm: Vm,
    /// Each vCPU's MSR file, by vCPU index.
    msrs: Vec<MsrFile>,
    entry: Option<EntryState>,
    chipset: PcChipset,
    ram_block: BlockId,
    high_ram_block: Option<BlockId>,
}

impl Pc {
    /// Build the PC `desc` describes, with guest RAM from `host`.
    pub fn build(host: Arc<dyn Host>, desc: PcDescription<'_>) -> Result<Self, PcError> {
        Self::build_with_ram(host, desc, None)
    }

    /// [`Pc::build`], with RAM from `shared` (copy-on-write) if given,
    /// else from `host`.
    fn build_with_ram(
        host: Arc<dyn Host>,
        desc: PcDescription<'_>,
        shared: Option<&PcRam>,
    ) -> Result<Self, PcError> {
        if !(1..=MAX_CPUS).contains(&desc.cpus) {
            return Err(PcError::CpuCount {
                cpus: desc.cpus,
                max: MAX_CPUS,
            });
        }
        let cpus = desc.cpus as u8;
        if !(MIN_RAM..=MAX_RAM).contains(&desc.ram) {
            return Err(PcError::RamSize {
                bytes: desc.ram,
                min: MIN_RAM,
                max: MAX_RAM,
            });
        }
        let mut memory = GuestMemory::new();
        let (ram_below_4g, ram_above_4g) = split_ram(desc.ram);
        let (ram_block, high_ram_block) = match shared {
            None => (
                add_ram(&mut memory, &*host, 0, ram_below_4g)?,
                match ram_above_4g {
                    0 => None,
                    len => Some(add_ram(&mut memory, &*host, HIGH_RAM_BASE, len)?),
                },
            ),
            Some(ram) => ram.add_to(&mut memory, &host, ram_below_4g, ram_above_4g)?,
        };
        // Without a display the graphics part of the VGA window is a hole
        // and the text part stays RAM; a display claims the whole window.
        let display = match &desc.display {
            None => {
                memory.unmap(VGA_GRAPHICS_WINDOW.0, VGA_GRAPHICS_WINDOW.1)?;
                None
            }
            Some(d) => {
                memory.unmap(vga::WINDOW_BASE, memory::WINDOW_SIZE)?;
                Some(display::memory(&mut memory, &*host, d)?)
            }
        };
        let bios = load_bios(&mut memory, &*host, &firmware::padded(desc.firmware))
            .map_err(PcError::Firmware)?;
        let mut vm = Vm::new(desc.id, host, memory);
        vm.set_cpu_model(desc.cpu_model);
        vm.set_vcpu_count(desc.cpus);

        let has_cdrom = desc.cdrom.is_some();
        let has_disk = desc.disk.is_some();
        let chipset = PcChipset::install(
            &mut vm,
            PcConfig {
                ram: ram_block,
                ram_below_4g,
                ram_above_4g,
                bios: bios
                    .pam_window()
                    .map(|(block, offset)| BiosRom { block, offset }),
                pam_power_on: desc.direct_boot.as_ref().map(|_| direct_boot::PAM_RAM),
                com1: desc.com1,
                debug_console: desc.debug_console,
                rtc_unix_seconds_at_host_zero: desc.unix_seconds_at_host_zero,
                boot_order: desc.boot.clone(),
                cpus,
                x2apic: desc.x2apic,
                acpi_pm_base: ACPI_PM_BASE,
                acpi_pm_on_pci: true,
            },
        )?;
        add_ide(&mut vm, &chipset, desc.cdrom, desc.disk)?;
        if let Some(input) = desc.input {
            if let Some(i8042) = vm.devices_mut().device_mut::<I8042>(chipset.i8042) {
                i8042.set_input(input);
            }
        }
        if let Some(parts) = display {
            display::add(&mut vm, &chipset, parts)?;
        }
        add_virtio(&mut vm, &chipset, desc.virtio)?;

        let drives = desc
            .boot
            .iter()
            .filter_map(|b| match b {
                BootDevice::Cdrom if has_cdrom => Some(CDROM),
                BootDevice::HardDisk if has_disk => Some(DISK),
                _ => None,
            })
            .collect();
        let order = BootOrder {
            ide_pci: IDE_PCI,
            drives,
        };
        let mut seabios = SeabiosConfig::new(cpus, order);
        if desc.display.is_some() {
            // The screen is the adapter's: no copy of it on COM1.
            seabios.serial_console = None;
            seabios.display = true;
        }
        let fw_cfg = FwCfg::new(seabios_fw_cfg(vm.memory(), &seabios)?);
        let ports = fw_cfg.port_ranges();
        let dev = vm.add_device(Box::new(fw_cfg))?;
        for (first, count) in ports {
            vm.claim_ports(dev, first, count)?;
        }

        if desc.test_devices {
            add_test_devices(&mut vm, &chipset)?;
        }

        let entry = match &desc.direct_boot {
            Some(kernel) => Some(direct_boot::load(
                &mut vm,
                ram_block,
                ram_below_4g,
                cpus,
                kernel,
            )?),
            None => None,
        };
        // On a PC the chipset turns the CPU's shutdown cycle into a reset.
        vm.set_triple_fault_resets(true);
        let wall = desc.unix_seconds_at_host_zero.max(0) as u64;
        let msrs = (0..desc.cpus)
            .map(|_| MsrFile::with_wall_clock(wall))
            .collect();
        Ok(Self {
            vm,
            msrs,
            entry,
            chipset,
            ram_block,
            high_ram_block,
        })
    }

    /// Run the PC's first (or only) vCPU on `vcpu` for at most `slice`:
    /// until it stops (it will not run again) or the slice ends (call again
    /// to go on). The same as [`Pc::run_vcpu`] with index 0.
    pub fn run<B: VcpuBackend>(&mut self, vcpu: &mut B, slice: Slice) -> RunOutcome {
        self.run_vcpu(0, vcpu, slice)
    }

    /// How many vCPUs the PC has.
    pub fn cpus(&self) -> usize {
        self.msrs.len()
    }

    /// Run vCPU `index` (0 the bootstrap processor, below [`Pc::cpus`]) on
    /// its backend `vcpu` for at most `slice`. A host with several vCPUs
    /// calls this for each in turn, one at a time: a vCPU that halts or
    /// waits for a start-up IPI ends its slice at once
    /// ([`Pc::all_parked`] says when all do), and one that sends another
    /// an IPI ends it at the next exit, so the other runs soon. An index
    /// out of range runs nothing and ends the slice.
    pub fn run_vcpu<B: VcpuBackend>(
        &mut self,
        index: usize,
        vcpu: &mut B,
        slice: Slice,
    ) -> RunOutcome {
        let (Some(msrs), Some(cpu)) = (self.msrs.get_mut(index), self.chipset.cpus.get(index))
        else {
            return RunOutcome::SliceEnded;
        };
        self.chipset.current_cpu.set(index);
        self.vm.set_current_vcpu(index);
        vcpu::run(vcpu, &mut self.vm, cpu, msrs, slice)
    }

    /// The first half of vCPU `index`'s exit loop, for a host that runs
    /// each vCPU on its own thread ([`vcpu::prepare_entry`]): on
    /// [`Prepared::Enter`] the host runs the guest without holding the PC,
    /// then hands the exit to [`Pc::handle_vcpu_exit`]. `turn` is that
    /// vCPU's own. An index out of range ends its turn.
    pub fn prepare_vcpu<B: VcpuBackend>(
        &mut self,
        index: usize,
        vcpu: &mut B,
        turn: &mut Turn,
    ) -> Prepared {
        let (Some(msrs), Some(cpu)) = (self.msrs.get_mut(index), self.chipset.cpus.get(index))
        else {
            return Prepared::Return(RunOutcome::SliceEnded);
        };
        self.chipset.current_cpu.set(index);
        self.vm.set_current_vcpu(index);
        vcpu::prepare_entry(vcpu, &mut self.vm, cpu, msrs, turn, None)
    }

    /// The second half of vCPU `index`'s exit loop: handle the `exit` its
    /// guest just took ([`vcpu::handle_exit`]).
    pub fn handle_vcpu_exit<B: VcpuBackend>(
        &mut self,
        index: usize,
        vcpu: &mut B,
        turn: &mut Turn,
        exit: vcpu::Exit,
    ) -> Option<RunOutcome> {
        let (Some(msrs), Some(cpu)) = (self.msrs.get_mut(index), self.chipset.cpus.get(index))
        else {
            return Some(RunOutcome::SliceEnded);
        };
        self.chipset.current_cpu.set(index);
        self.vm.set_current_vcpu(index);
        vcpu::handle_exit(vcpu, &mut self.vm, cpu, msrs, turn, exit)
    }

    /// What waits for vCPU `index` that would make it leave a halt or
    /// take an interrupt ([`WakeSignals`]), without taking any of it.
    pub fn wake_signals(&self, index: usize) -> WakeSignals {
        let Some(cpu) = self.chipset.cpus.get(index) else {
            return WakeSignals::default();
        };
        WakeSignals {
            interrupt: cpu.pending().is_some(),
            nmi: cpu.lapic().nmi_pending(),
            init_or_sipi: cpu.lapic().init_or_sipi_pending(),
            reset: self.vm.vcpu_reset_pending(index),
        }
    }

    /// Whether every vCPU ended its last slice halted or waiting for a
    /// start-up IPI: the host may idle until [`Pc::next_timer`] (nothing
    /// else wakes them while none runs).
    pub fn all_parked(&self) -> bool {
        (0..self.cpus()).all(|i| self.vm.vcpu_parked(i))
    }

    /// When the next device timer is due (a host time), polling the timers
    /// that are due now; `None` when none is armed.
    pub fn next_timer(&mut self) -> Option<u64> {
        self.vm.poll_timers()
    }

    /// Have every device look at its host input now (a host thread saw
    /// some come: a frame on the network card's tap, bytes for COM1):
    /// every device's timer is asked again, as if each had been touched,
    /// and those due are served. Gives what [`Pc::next_timer`] gives.
    pub fn poll_every_device(&mut self) -> Option<u64> {
        self.vm.timers_changed();
        self.vm.poll_timers()
    }

    /// Sleep the host until the next device timer or `until`, whichever is
    /// first, when every vCPU is parked. With no device timer armed no
    /// vCPU can ever wake (nothing raises an interrupt while none runs):
    /// the VM stops with `StopReason::AllHalted`, as a lone vCPU's stops
    /// with `StopReason::Halted`.
    pub fn idle(&mut self, until: Option<u64>) {
        match self.vm.poll_timers() {
            Some(due) => {
                let wake = until.map_or(due, |u| u.min(due));
                self.vm.host().idle(Some(wake));
            }
            None => self.vm.stop(vmm_core::vm::StopReason::AllHalted),
        }
    }

    /// Save the state of every device (a snapshot also needs guest RAM and
    /// the vCPU's state: `vmm_core::vcpu::VcpuState`, with [`Pc::msrs`]).
    pub fn save_devices(&mut self) -> Result<Vec<SavedDevice>, StateError> {
        self.vm.save_devices()
    }

    /// Restore what [`Pc::save_devices`] saved, into this PC built from an
    /// equal description (its own media and consoles). On an error, devices
    /// before the one that refused are already restored: throw this PC
    /// away.
    pub fn restore_devices(&mut self, saved: &[SavedDevice]) -> Result<(), StateError> {
        self.vm.restore_devices(saved)
    }

    /// Move the vCPU to a fresh one and the devices through their saved
    /// state: the vCPU's whole state goes from `from` to `to`
    /// ([`vcpu::move_state`]), and every device is saved and restored in
    /// place. The round trip of the hosts' `state_roundtrip` debug option,
    /// which checks that what a snapshot keeps is all the machine needs.
    pub fn move_vcpu<A: ArchState, B: ArchState>(
        &mut self,
        from: &mut A,
        to: &mut B,
    ) -> Result<(), StateError> {
        self.move_vcpu_at(0, from, to)
    }

    /// [`Pc::move_vcpu`] for vCPU `index` (its MSR file goes with it).
    pub fn move_vcpu_at<A: ArchState, B: ArchState>(
        &mut self,
        index: usize,
        from: &mut A,
        to: &mut B,
    ) -> Result<(), StateError> {
        let saved = self.save_devices()?;
        self.restore_devices(&saved)?;
        let i = index.min(self.msrs.len() - 1);
        vcpu::move_state(from, to, &mut self.msrs[i])
    }

    /// Write a whole-machine snapshot of this paused one-vCPU PC to
    /// `sink`: [`Pc::snapshot_vcpus`] with its one vCPU `vcpu` (a PC with
    /// more is refused, [`SnapshotError::VcpuCount`]).
    pub fn snapshot<B: ArchState, S: SnapshotSink>(
        &mut self,
        vcpu: &mut B,
        sink: &mut S,
    ) -> Result<(), SnapshotError> {
        self.snapshot_vcpus(&mut [vcpu as &mut dyn ArchState], sink)
    }

    /// Write a whole-machine snapshot of this paused PC to `sink`: every
    /// device's state, every vCPU's (`vcpus[i]` is vCPU `i`, one per vCPU
    /// of the PC, with its MSR file and the exit loop's halt and reset
    /// state), the memory map and every RAM block (guest RAM, shadow RAM,
    /// video memory), in the format of `docs/SNAPSHOT.md`. The guest sees
    /// no difference and may run on. Refused, naming the device, when one
    /// cannot save its state (a pass-through device).
    pub fn snapshot_vcpus<S: SnapshotSink>(
        &mut self,
        vcpus: &mut [&mut dyn ArchState],
        sink: &mut S,
    ) -> Result<(), SnapshotError> {
        let saved = snapshot::payload::capture_vcpus(&self.vm, vcpus, &self.msrs)?;
        snapshot::write_snapshot(&mut self.vm, &saved, sink)
    }

    /// Restore the snapshot `file` into this one-vCPU PC, built from an
    /// equal description (its own media, consoles and host memory), and
    /// `vcpu`: [`Pc::restore_vcpus`] with one vCPU.
    pub fn restore<B: ArchState>(
        &mut self,
        file: &[u8],
        vcpu: &mut B,
        ram: RamFill,
    ) -> Result<(), SnapshotError> {
        self.restore_vcpus(file, &mut [vcpu as &mut dyn ArchState], ram)
    }

    /// Restore the snapshot `file` into this PC, built from an equal
    /// description (its own media, consoles and host memory), and its
    /// vCPUs `vcpus` (`vcpus[i]` is vCPU `i`): the file is parsed and
    /// every section checked (version, checksums, machine shape with the
    /// vCPU count, blocks), then devices, vCPUs and RAM are restored all
    /// or nothing. On an error this PC and the vCPUs are as they were.
    /// `ram` says whether RAM is copied from `file` or the host maps the
    /// pages itself ([`RamFill::Host`], see [`Snapshot::page_file_offset`]).
    pub fn restore_vcpus(
        &mut self,
        file: &[u8],
        vcpus: &mut [&mut dyn ArchState],
        ram: RamFill,
    ) -> Result<(), SnapshotError> {
        let snapshot = Snapshot::parse(file)?;
        self.restore_parsed_vcpus(&snapshot, vcpus, ram)
    }

    /// [`Pc::restore`] of a snapshot already parsed.
    pub fn restore_parsed<B: ArchState>(
        &mut self,
        snapshot: &Snapshot<'_>,
        vcpu: &mut B,
        ram: RamFill,
    ) -> Result<(), SnapshotError> {
        self.restore_parsed_vcpus(snapshot, &mut [vcpu as &mut dyn ArchState], ram)
    }

    /// [`Pc::restore_vcpus`] of a snapshot already parsed.
    pub fn restore_parsed_vcpus(
        &mut self,
        snapshot: &Snapshot<'_>,
        vcpus: &mut [&mut dyn ArchState],
        ram: RamFill,
    ) -> Result<(), SnapshotError> {
        snapshot.check(&mut self.vm)?;
        snapshot.apply(&mut self.vm, vcpus, &mut self.msrs, ram)
    }

    /// Move every vCPU to a fresh one and the devices through their saved
    /// state, the vCPUs through the very bytes a snapshot's vCPU section
    /// holds: each of `from` (`from[i]` is vCPU `i`) is captured with its
    /// MSR file and exit-loop state, the records are encoded and decoded,
    /// every device is saved and restored in place, and `to[i]` (its
    /// general registers scrambled first) takes vCPU `i`'s state. The
    /// round trip of the bare-metal host's `state_roundtrip` with several
    /// vCPUs; on an error the vCPUs of `to` are unusable.
    pub fn move_vcpus(
        &mut self,
        from: &mut [&mut dyn ArchState],
        to: &mut [&mut dyn ArchState],
    ) -> Result<(), SnapshotError> {
        let saved = snapshot::payload::capture_vcpus(&self.vm, from, &self.msrs)?;
        let bytes = snapshot::payload::encode_vcpus(&saved)?;
        let saved = snapshot::payload::decode_vcpus(snapshot::FORMAT_VERSION, &bytes)?;
        if to.len() != saved.len() {
            return Err(SnapshotError::VcpuCount {
                vm: saved.len(),
                given: to.len(),
            });
        }
        let devices = self.save_devices()?;
        self.restore_devices(&devices)?;
        for (i, (v, to)) in saved.iter().zip(to.iter_mut()).enumerate() {
            for r in 0..16 {
                to.set_gpr(r, 0xdead_0000_0000_0000 | r as u64);
            }
            to.set_rip(0xdead_beef);
            v.state.apply(&mut **to, &mut self.msrs[i])?;
            self.vm.set_vcpu_exit_state(i, v.exit);
        }
        Ok(())
    }

    /// The first vCPU's MSR file (part of its saved state).
    pub fn msrs(&self) -> &MsrFile {
        &self.msrs[0]
    }

    /// The first vCPU's MSR file, to restore it.
    pub fn msrs_mut(&mut self) -> &mut MsrFile {
        &mut self.msrs[0]
    }

    /// vCPU `index`'s MSR file, if there is that vCPU.
    pub fn vcpu_msrs_mut(&mut self, index: usize) -> Option<&mut MsrFile> {
        self.msrs.get_mut(index)
    }

    /// The host pressed the power button: the guest's ACPI sees
    /// PWRBTN_STS in the PIIX4 PM function, with an SCI if it enabled
    /// one; an ACPI guest then shuts down and powers off.
    pub fn press_power_button(&mut self) {
        self.chipset.press_power_button(&mut self.vm);
    }

    /// Give the PC a region of memory shared with other VMs: `memory` (the
    /// host's view of the region, which other VMs' PCs get views of too)
    /// becomes a device block, and the ivshmem function at
    /// [`IVSHMEM_PCI`] maps it at its BAR 2, for `access`, as peer `peer`
    /// of `doorbells` (see [`crate::ivshmem`]). Call before the PC runs.
    pub fn add_ivshmem(
        &mut self,
        memory: Box<dyn vmm_core::host::HostMemory>,
        access: Access,
        peer: u16,
        doorbells: Doorbells,
    ) -> Result<(), PcError> {
        let size = memory.as_slice().len() as u64;
        let block = self.vm.memory_mut().add_device_block(memory)?;
        let function = Ivshmem::new(
            IvshmemConfig {
                block,
                size,
                access,
                peer,
                doorbells,
            },
            self.chipset.pirq.intx_line(IVSHMEM_PCI.0, InterruptPin::A),
            LapicMsi::with_placement(
                self.chipset
                    .cpus
                    .iter()
                    .map(|c| c.lapic().clone())
                    .collect(),
                self.chipset.lapic_placement.clone(),
            ),
        )
        .map_err(PcError::SharedMemory)?;
        let Some(bus) = self
            .vm
            .devices_mut()
            .device_mut::<PciBus>(self.chipset.pci_bus)
        else {
            return Err(PcError::MissingPciBus);
        };
        bus.add(IVSHMEM_PCI.0, IVSHMEM_PCI.1, Box::new(function))?;
        Ok(())
    }

    /// Hand the local APICs to the host (a split irqchip, see
    /// [`crate::kernel_lapic`]): from now on the I/O APIC's messages and
    /// every MSI go to `lapics`, and each vCPU's interrupt inputs keep
    /// only the PIC's ExtINT. Call once, before the guest runs; `false`
    /// if the host already had them (nothing changes).
    pub fn use_kernel_lapics(&mut self, lapics: Arc<dyn KernelLapics>) -> bool {
        if !self.chipset.lapic_placement.use_kernel(lapics) {
            return false;
        }
        self.chipset.ioapic.publish_routes();
        true
    }

    /// Every doorbell of the PC's PCI functions now
    /// ([`crate::pci::Doorbell`]: the virtio queue notifies), sorted.
    pub fn doorbells(&self) -> Vec<crate::pci::Doorbell> {
        let mut out = Vec::new();
        if let Some(bus) = self.vm.devices().device::<PciBus>(self.chipset.pci_bus) {
            bus.doorbells(&mut out);
        }
        out.sort_unstable();
        out
    }

    /// Whether the local APICs are the host's ([`Pc::use_kernel_lapics`]).
    pub fn lapics_in_kernel(&self) -> bool {
        self.chipset.lapic_placement.in_kernel()
    }

    /// The VM: memory, devices, statistics.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The VM, to create a vCPU for it or attach more devices (a
    /// passthrough device, say) before it runs.
    pub fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// With direct kernel boot, the CPU state the kernel starts in (the
    /// host sets its vCPU to it before the first run); otherwise `None`,
    /// and the vCPU starts at the reset vector, in the firmware.
    pub fn entry(&self) -> Option<&EntryState> {
        self.entry.as_ref()
    }

    /// The first vCPU's interrupt inputs (local APIC and PIC).
    pub fn interrupts(&self) -> &CpuInterrupts {
        &self.chipset.cpu
    }

    /// vCPU `index`'s interrupt inputs, if there is that vCPU.
    pub fn vcpu_interrupts(&self, index: usize) -> Option<&CpuInterrupts> {
        self.chipset.cpus.get(index)
    }

    /// The chipset's handles: ISA and IOAPIC lines, PCI INTx routing, and
    /// the ids of COM1, the i8042, the PCI bus, the RTC and the POST port.
    pub fn chipset(&self) -> &PcChipset {
        &self.chipset
    }

    /// The block of guest RAM below the PCI hole, mapped at guest-physical
    /// 0: all of the RAM up to [`RAM_BELOW_PCI_HOLE`].
    pub fn ram_block(&self) -> BlockId {
        self.ram_block
    }

    /// The block of guest RAM beyond [`RAM_BELOW_PCI_HOLE`], mapped from
    /// [`HIGH_RAM_BASE`]; `None` in a PC with no more RAM than that.
    pub fn high_ram_block(&self) -> Option<BlockId> {
        self.high_ram_block
    }

    /// Let the keyboard and mouse take what the host's input backend
    /// ([`PcDescription::input`]) has, and interrupt the guest for it.
    /// Hosts call this between time slices; the guest's own accesses to
    /// the i8042 pull input too.
    pub fn poll_input(&mut self) {
        if let Some(i8042) = self
            .vm
            .devices_mut()
            .device_mut::<I8042>(self.chipset.i8042)
        {
            i8042.poll_input();
        }
    }

    /// Deliver one input event at once (tests, an API call).
    pub fn input_event(&mut self, event: crate::input::InputEvent) {
        if let Some(i8042) = self
            .vm
            .devices_mut()
            .device_mut::<I8042>(self.chipset.i8042)
        {
            i8042.input_event(event);
        }
    }

    /// What the display shows now, or `None` without a display: the
    /// adapter's state drawn from its video memory.
    pub fn display(&self) -> Option<vga::render::Display> {
        display::render(&self.vm, &self.chipset)
    }

    /// What the display shows as pixels (a text mode drawn with the
    /// guest's font), for a screenshot; `None` without a display or while
    /// the screen is blank.
    pub fn screenshot(&self) -> Option<vga::render::Framebuffer> {
        display::pixels(&self.vm, &self.chipset)
    }

    /// The screen as lines of text when the display is in a text mode
    /// (characters only, trailing blanks kept); `None` without a display
    /// or in a graphics mode.
    pub fn screen_text(&self) -> Option<Vec<alloc::string::String>> {
        match self.display()? {
            vga::render::Display::Text(t) => Some(t.lines()),
            _ => None,
        }
    }
}

/// The PIIX3 IDE function at 00:01.1: the CD-ROM drive (always there, with
/// `cdrom` as its medium) on the secondary master, `disk` on the primary
/// master.
/// QEMU's `pc-testdev` and `isa-debug-exit` (port 0xf4), for test suites
/// that drive the VMM from inside the guest.
fn add_test_devices(vm: &mut Vm, chipset: &PcChipset) -> Result<(), PcError> {
    use crate::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
    use crate::pc_testdev::{self as testdev, PcTestDevice};
    let lines = (0..testdev::ISA_LINES as u8)
        .map(|irq| chipset.isa.line(irq))
        .collect();
    let dev = vm.add_device(Box::new(PcTestDevice::new(lines)))?;
    vm.claim_ports(dev, testdev::DATA_PORT, 4)?;
    vm.claim_ports(dev, testdev::FLUSH_PORT, 4)?;
    vm.claim_ports(dev, testdev::DATA_BYTE_PORT, 4)?;
    vm.claim_ports(dev, testdev::IRQ_PORT, testdev::IRQ_PORT_COUNT)?;
    vm.claim_mmio(dev, testdev::IOMEM_BASE, testdev::IOMEM_LEN)?;
    let exit = vm.add_device(Box::new(DebugExit))?;
    vm.claim_ports(exit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT)?;
    Ok(())
}

/// How `ram` bytes of RAM split around the PCI hole: (below 4 GiB, above).
pub fn split_ram(ram: u64) -> (u64, u64) {
    let below = ram.min(RAM_BELOW_PCI_HOLE);
    (below, ram - below)
}

/// Allocate `len` bytes of RAM from `host` and map them at `gpa`.
fn add_ram(
    memory: &mut GuestMemory,
    host: &dyn Host,
    gpa: u64,
    len: u64,
) -> Result<BlockId, PcError> {
    let bytes = usize::try_from(len).map_err(|_| PcError::RamSize {
        bytes: len,
        min: MIN_RAM,
        max: MAX_RAM,
    })?;
    let block = host.alloc_memory(bytes, 2 << 20).map_err(PcError::Ram)?;
    Ok(memory.add_ram(gpa, block)?)
}

fn add_ide(
    vm: &mut Vm,
    chipset: &PcChipset,
    cdrom: Option<Box<dyn crate::block::BlockBackend>>,
    disk: Option<Box<dyn crate::block::BlockBackend>>,
) -> Result<(), PcError> {
    let mut ide = Piix3Ide::new(
        Box::new(chipset.isa.line(14)),
        Box::new(chipset.isa.line(15)),
    );
    let drive_err = |drive| move |error| PcError::Drive { drive, error };
    let cd = Drive::cdrom(cdrom).map_err(drive_err("CD-ROM"))?;
    ide.controller_mut()
        .attach(IdeSlot::SecondaryMaster, cd)
        .map_err(drive_err("CD-ROM"))?;
    if let Some(image) = disk {
        let disk = Drive::disk(image).map_err(drive_err("disk"))?;
        ide.controller_mut()
            .attach(IdeSlot::PrimaryMaster, disk)
            .map_err(drive_err("disk"))?;
    }
    let bus: Option<&mut PciBus> = vm.devices_mut().device_mut::<PciBus>(chipset.pci_bus);
    match bus {
        Some(bus) => bus.add(IDE_PCI.0, IDE_PCI.1, Box::new(ide))?,
        None => return Err(PcError::MissingPciBus),
    }
    Ok(())
}

/// The virtio devices asked for, each on its own PCI slot, with MSIs to the
/// local APIC and INTx pin A through the PIRQ router.
fn add_virtio(vm: &mut Vm, chipset: &PcChipset, devices: VirtioDevices) -> Result<(), PcError> {
    let mut functions: Vec<((u8, u8), Box<dyn VirtioDevice>)> = Vec::new();
    if let Some(disk) = devices.disk {
        let blk = VirtioBlk::new(disk).map_err(PcError::VirtioDisk)?;
        functions.push((VIRTIO_DISK_PCI, Box::new(blk)));
    }
    if let Some(source) = devices.rng {
        functions.push((VIRTIO_RNG_PCI, Box::new(VirtioRng::new(source))));
    }
    if let Some(backend) = devices.console {
        functions.push((VIRTIO_CONSOLE_PCI, Box::new(VirtioConsole::new(backend))));
    }
    if let Some((backend, mac)) = devices.net {
        functions.push((VIRTIO_NET_PCI, Box::new(VirtioNet::new(backend, mac))));
    }
    if functions.is_empty() {
        return Ok(());
    }
    let lapics = chipset.cpus.iter().map(|c| c.lapic().clone()).collect();
    let msi: Arc<dyn MsiTarget> = LapicMsi::with_placement(lapics, chipset.lapic_placement.clone());
    let Some(bus) = vm.devices_mut().device_mut::<PciBus>(chipset.pci_bus) else {
        return Err(PcError::MissingPciBus);
    };
    for ((slot, function), device) in functions {
        let intx = chipset.pirq.intx_line(slot, InterruptPin::A);
        bus.add(
            slot,
            function,
            Box::new(VirtioPci::new(device, intx, msi.clone())),
        )?;
    }
    Ok(())
}
