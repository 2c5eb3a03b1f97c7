//! Real devices passed through to guests under the device monitor model
//! (`vmm_core::dmm`): finding the device QEMU provides, the host's port
//! access to it, and wiring it into each VM.
//!
//! `passthrough=ne2k` on the command line: the ISA NE2000 QEMU provides
//! with `-device ne2k_isa` (I/O base 0x300) is shared by every VM. Each VM
//! gets the card's 32 ports at their real address; the hooked ones exit to
//! the VM's NE2000 monitor, the unhooked ones reach the card directly
//! through the SVM I/O permission map while the VM holds the card.
//!
//! Interrupts: the card's ISA IRQ (9) reaches the host through the 8259
//! PICs, reprogrammed here to vectors [`PIC_BASE`].. and masked but for the
//! card's line and the cascade. The host's handler masks the line, notes
//! the interrupt and acknowledges the PIC; between time slices the kernel
//! calls [`Passthrough::service_interrupts`], which gives it to the VM
//! holding the card (an edge on that VM's line, delivered as
//! [`GUEST_VECTOR`] to a guest program) and unmasks the line again once
//! the guest has acknowledged the card.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use host_glue_baremetal::cmdline::PassthroughKind;
use vmm_core::dmm::Monitor;
use vmm_core::dmm::{Dmm, PassthroughDevice, PhysicalPorts, PortWindow, SharedDmm};
use vmm_core::irq::IrqLine;
use vmm_core::vcpu::InterruptSource;
use vmm_core::vm::Vm;
use vmm_devices::dmm::ne2000::{Ne2000Layout, Ne2000Monitor, NE2000_PORTS};
use vmm_devices::dmm::piix_ide::{PiixIdeMonitor, BUS_MASTER_PORTS};

/// Where QEMU's `ne2k_isa` sits by default.
pub const NE2K_BASE: u16 = 0x300;

/// The card's ISA interrupt line (QEMU's `ne2k_isa` default).
pub const NE2K_IRQ: u8 = 9;
/// Where the reprogrammed 8259 pair puts IRQ 0 (IRQ 8 is `PIC_BASE + 8`).
pub const PIC_BASE: u8 = 0x50;
/// The host vector of the card's interrupt.
pub const IRQ_VECTOR: u8 = PIC_BASE + NE2K_IRQ;
/// The vector a guest program gets the card's interrupt on (what a PC's
/// slave PIC gives IRQ 9 under a BIOS).
pub const GUEST_VECTOR: u8 = 0x71;

/// Set by the host's interrupt handler, taken by `service_interrupts`.
static IRQ_SEEN: AtomicBool = AtomicBool::new(false);
/// The line is masked at the PIC until the guest acknowledged the card.
static IRQ_MASKED: AtomicBool = AtomicBool::new(false);

// The card's interrupt: save the caller-saved registers, call the handler,
// return.
core::arch::global_asm!(
    r#"
    .section .text
    .global dmm_irq_entry
dmm_irq_entry:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call dmm_physical_irq
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
"#
);

extern "C" {
    fn dmm_irq_entry();
}

/// The address of the card's interrupt handler, for the IDT.
pub fn irq_entry() -> u64 {
    dmm_irq_entry as *const () as u64
}

fn outb(port: u16, value: u8) {
    // SAFETY: only the 8259 PICs' ports (0x20/0x21/0xa0/0xa1), which this
    // module programs; no memory is touched.
    unsafe { x86::io::outb(port, value) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { x86::io::inb(port) }
}

/// Mask (true) or unmask the card's line at the slave PIC.
fn mask_line(masked: bool) {
    let bit = 1u8 << (NE2K_IRQ - 8);
    let mask = inb(0xa1);
    outb(0xa1, if masked { mask | bit } else { mask & !bit });
    IRQ_MASKED.store(masked, Ordering::Release);
}

/// Called by the stub: note the interrupt, mask the line (it may be level
/// triggered and stays high until the guest acknowledges the card), end
/// the interrupt at both PICs.
#[no_mangle]
extern "C" fn dmm_physical_irq() {
    IRQ_SEEN.store(true, Ordering::Release);
    mask_line(true);
    outb(0xa0, 0x20);
    outb(0x20, 0x20);
}

/// Program both 8259s (vectors from [`PIC_BASE`]), mask every line but the
/// cascade and the card's, and let the local APIC take the PIC's interrupts
/// (LINT0 in ExtINT mode, as in the MP specification's virtual-wire mode).
fn route_card_irq() {
    outb(0x20, 0x11); // ICW1: edge, cascade, ICW4
    outb(0xa0, 0x11);
    outb(0x21, PIC_BASE); // ICW2: vectors
    outb(0xa1, PIC_BASE + 8);
    outb(0x21, 0x04); // ICW3: slave on IRQ 2
    outb(0xa1, 0x02);
    outb(0x21, 0x01); // ICW4: 8086 mode
    outb(0xa1, 0x01);
    outb(0x21, !0x04); // master: only the cascade
    outb(0xa1, 0xff);
    const LVT_LINT0: u64 = 0xfee0_0350;
    // SAFETY: the local APIC's LVT LINT0 register at 0xFEE00350, which the
    // boot page tables identity-map; an aligned 32-bit store sets delivery
    // mode ExtINT, unmasked, and touches nothing else.
    unsafe { core::ptr::write_volatile(LVT_LINT0 as *mut u32, 0x700) };
    mask_line(false);
    log::info!(
        "passthrough: IRQ {NE2K_IRQ} routed to host vector {IRQ_VECTOR:#x}, given to the holder"
    );
}

/// A guest program's interrupt controller: one line, latched on its rising
/// edge, delivered as [`GUEST_VECTOR`]. (A PC VM has its own PICs; the
/// card's interrupt is not wired into them yet.)
#[derive(Default)]
pub struct LineInterrupts {
    latched: AtomicBool,
}

impl IrqLine for LineInterrupts {
    fn set_level(&self, high: bool) {
        if high {
            self.latched.store(true, Ordering::Release);
        }
    }
}

impl InterruptSource for LineInterrupts {
    fn pending(&self) -> bool {
        self.latched.load(Ordering::Acquire)
    }

    fn acknowledge(&self) -> Option<u8> {
        self.latched
            .swap(false, Ordering::AcqRel)
            .then_some(GUEST_VECTOR)
    }

    fn take_nmi(&self) -> bool {
        false
    }
}

/// [`LineInterrupts`] as the VM's interrupt source, shared with the DMM,
/// which raises it.
struct SharedLine(Arc<LineInterrupts>);

impl InterruptSource for SharedLine {
    fn pending(&self) -> bool {
        self.0.pending()
    }
    fn acknowledge(&self) -> Option<u8> {
        self.0.acknowledge()
    }
    fn take_nmi(&self) -> bool {
        self.0.take_nmi()
    }
}

/// The host's own `in`/`out` on the ports of a passed-through device.
struct HostPorts;

impl PhysicalPorts for HostPorts {
    // `port` lies in the window of a device this kernel found and handed to
    // the DMM, which alone drives it. Reading a device register has no
    // effect on memory the kernel uses; writes that would make the device
    // touch memory (remote DMA, transmit, bus-master starts) are approved by
    // the device's monitor first, and the ISA NE2000 only ever touches its
    // own buffer memory.
    fn read(&mut self, port: u16, data: &mut [u8]) {
        match data.len() {
            // SAFETY: see above.
            1 => data[0] = unsafe { x86::io::inb(port) },
            2 => {
                // SAFETY: see above.
                let v = unsafe { x86::io::inw(port) };
                data.copy_from_slice(&v.to_le_bytes());
            }
            4 => {
                // SAFETY: see above.
                let v = unsafe { x86::io::inl(port) };
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        match *data {
            // SAFETY: see above.
            [b] => unsafe { x86::io::outb(port, b) },
            // SAFETY: see above.
            [a, b] => unsafe { x86::io::outw(port, u16::from_le_bytes([a, b])) },
            // SAFETY: see above.
            [a, b, c, d] => unsafe { x86::io::outl(port, u32::from_le_bytes([a, b, c, d])) },
            _ => {}
        }
    }
}

/// Whether an NE2000 answers at `base`: a reset sets ISR.RST, and CR reads
/// back what was written.
fn probe_ne2000(base: u16) -> bool {
    let mut hw = HostPorts;
    let mut b = [0u8];
    // Reading the reset port resets the card; writing it ends the reset.
    hw.read(base + 0x1f, &mut b);
    hw.write(base + 0x1f, &b);
    let mut reset = false;
    for _ in 0..10_000 {
        hw.read(base + 0x07, &mut b);
        if b[0] & 0x80 != 0 {
            reset = true;
            break;
        }
    }
    hw.write(base, &[0x21]);
    hw.read(base, &mut b);
    reset && b[0] == 0x21
}

/// Where a guest program sees the bus-master block (`guest::BUS_MASTER_BASE`).
pub const GUEST_BUS_MASTER: u16 = 0xc000;

/// Read a 32-bit PCI configuration register (mechanism #1).
fn pci_read(bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
    let address = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev & 0x1f) << 11)
        | (u32::from(func & 7) << 8)
        | u32::from(reg & 0xfc);
    // SAFETY: the PCI configuration ports 0xCF8/0xCFC; selecting and reading
    // a configuration register touches no memory.
    unsafe {
        x86::io::outl(0xcf8, address);
        x86::io::inl(0xcfc)
    }
}

/// Write a 32-bit PCI configuration register.
fn pci_write(bus: u8, dev: u8, func: u8, reg: u8, value: u32) {
    let address = 0x8000_0000
        | (u32::from(bus) << 16)
        | (u32::from(dev & 0x1f) << 11)
        | (u32::from(func & 7) << 8)
        | u32::from(reg & 0xfc);
    // SAFETY: the PCI configuration ports; only the IDE function's command
    // register is written (I/O space and bus mastering on), which lets the
    // controller do the DMA that its monitor approves.
    unsafe {
        x86::io::outl(0xcf8, address);
        x86::io::outl(0xcfc, value);
    }
}

/// Find the PIIX IDE function on bus 0; enable its I/O decoding and bus
/// mastering; return its bus-master block's port.
fn find_piix_ide() -> Option<u16> {
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let id = pci_read(0, dev, func, 0);
            // Intel PIIX3 (0x7010) or PIIX4 (0x7111) IDE.
            if id != 0x7010_8086 && id != 0x7111_8086 {
                continue;
            }
            let bar4 = pci_read(0, dev, func, 0x20);
            let base = u16::try_from(bar4 & 0xfff0).ok().filter(|b| *b != 0)?;
            let command = pci_read(0, dev, func, 0x04);
            pci_write(0, dev, func, 0x04, command | 0x05);
            log::info!(
                "passthrough: PIIX IDE at 00:{dev:02x}.{func}, bus-master block at port {base:#x}"
            );
            return Some(base);
        }
    }
    None
}

/// A physical device shared by the VMs.
pub enum Passthrough {
    /// The ISA NE2000.
    Ne2k(SharedDmm<Ne2000Monitor>),
    /// The PIIX IDE primary channel.
    Ide(SharedDmm<PiixIdeMonitor>),
}

impl Passthrough {
    /// Find the device `kind` names and put it under a DMM.
    pub fn setup(kind: PassthroughKind) -> Result<Self, String> {
        match kind {
            PassthroughKind::Ne2k => {
                if !probe_ne2000(NE2K_BASE) {
                    return Err(format!(
                        "passthrough=ne2k: no NE2000 at port {NE2K_BASE:#x} \
                         (QEMU needs -device ne2k_isa,netdev=...)"
                    ));
                }
                log::info!("passthrough: NE2000 found at port {NE2K_BASE:#x}");
                route_card_irq();
                let dmm = Dmm::new(
                    "ne2k",
                    Box::new(HostPorts),
                    &[PortWindow::identity(NE2K_BASE, NE2000_PORTS)],
                )
                .map_err(|e| format!("{e}"))?;
                Ok(Self::Ne2k(dmm.into_shared()))
            }
            PassthroughKind::Ide => {
                let bm = find_piix_ide().ok_or_else(|| {
                    String::from("passthrough=ide: no PIIX IDE controller on PCI bus 0")
                })?;
                let dmm = Dmm::new(
                    "ide0",
                    Box::new(HostPorts),
                    &[
                        PortWindow {
                            guest: GUEST_BUS_MASTER,
                            host: bm,
                            count: BUS_MASTER_PORTS,
                        },
                        PortWindow::identity(0x1f0, 8),
                        PortWindow::identity(0x3f6, 1),
                    ],
                )
                .map_err(|e| format!("{e}"))?;
                Ok(Self::Ide(dmm.into_shared()))
            }
        }
    }

    /// Give `vm` the device: a monitor of its own, the ports claimed in its
    /// device manager, its unhooked list wired to its backend, and the
    /// card's interrupt on the returned interrupt source (for a VM without
    /// interrupt controllers of its own: a guest program).
    pub fn attach(&self, vm: &mut Vm) -> Result<Box<dyn InterruptSource + Send>, String> {
        match self {
            Self::Ne2k(dmm) => {
                let monitor = Ne2000Monitor::new(NE2K_BASE, Ne2000Layout::QEMU);
                let line = Arc::new(LineInterrupts::default());
                let direct = dmm
                    .lock()
                    .add_guest(vm.id(), monitor, line.clone())
                    .map_err(|e| format!("{e}"))?;
                let dev = PassthroughDevice::new("ne2k", dmm.clone());
                let claims = dev.port_claims();
                let id = vm.add_device(Box::new(dev)).map_err(|e| format!("{e}"))?;
                for (first, count) in claims {
                    vm.claim_ports(id, first, count)
                        .map_err(|e| format!("{e}"))?;
                }
                vm.add_direct_ports(direct);
                Ok(Box::new(SharedLine(line)))
            }
            Self::Ide(dmm) => {
                // The VM's emulated IDE controller gives the ports up.
                if let Some(emulated) = vm.devices().port_owner(0x1f0) {
                    for (first, count) in
                        [(0x1f0, 8), (0x3f6, 1), (0x170, 8), (0x376, 1), (0xc000, 16)]
                    {
                        let _ = vm.devices_mut().release_ports(emulated, first, count);
                    }
                }
                let table = vm
                    .host()
                    .alloc_memory(0x1_0000, 0x1_0000)
                    .map_err(|e| format!("PRD table memory: {e}"))?;
                let monitor = PiixIdeMonitor::new(GUEST_BUS_MASTER, table)
                    .map_err(|e| format!("{e}"))?
                    .with_reset_port(0x3f6)
                    .with_command_port(0x1f7);
                let line = Arc::new(LineInterrupts::default());
                let direct = dmm
                    .lock()
                    .add_guest(vm.id(), monitor, line.clone())
                    .map_err(|e| format!("{e}"))?;
                let dev = PassthroughDevice::new("ide0", dmm.clone());
                let claims = dev.port_claims();
                let id = vm.add_device(Box::new(dev)).map_err(|e| format!("{e}"))?;
                for (first, count) in claims {
                    vm.claim_ports(id, first, count)
                        .map_err(|e| format!("{e}"))?;
                }
                vm.add_direct_ports(direct);
                Ok(Box::new(SharedLine(line)))
            }
        }
    }

    /// Give an interrupt the card raised to the VM holding it; unmask the
    /// line once that VM has acknowledged the card. Called between time
    /// slices.
    pub fn service_interrupts(&self) {
        match self {
            // The IDE channel's interrupt is not routed: its guests poll.
            Self::Ide(_) => {}
            Self::Ne2k(dmm) => {
                let mut d = dmm.lock();
                if IRQ_SEEN.swap(false, Ordering::AcqRel) {
                    d.physical_interrupt();
                }
                let acknowledged = d
                    .holder()
                    .and_then(|h| d.monitor(h))
                    .is_none_or(|m| !m.irq_pending());
                if IRQ_MASKED.load(Ordering::Acquire) && acknowledged {
                    mask_line(false);
                }
            }
        }
    }

    /// `vm` stopped: if it held the device, the next guest in line gets it.
    pub fn guest_stopped(&self, vm: &Vm) {
        match self {
            Self::Ne2k(dmm) => dmm.lock().guest_stopped(vm.id()),
            Self::Ide(dmm) => dmm.lock().guest_stopped(vm.id()),
        }
    }

    /// One line about `vm`'s use of the device: exits on hooked and
    /// unhooked ports, waits, interrupts, hand-overs, denied transitions.
    pub fn report(&self, vm: &Vm) -> Option<String> {
        match self {
            Self::Ne2k(dmm) => report_line(&dmm.lock(), vm),
            Self::Ide(dmm) => report_line(&dmm.lock(), vm),
        }
    }
}

fn report_line<M: Monitor>(d: &Dmm<M>, vm: &Vm) -> Option<String> {
    let stats = d.stats(vm.id())?;
    let denials = d.monitor(vm.id()).map_or(0, |m| m.denials());
    Some(format!(
        "vm {} dmm {}: {stats}, denied transitions {denials}",
        vm.id().0,
        d.name()
    ))
}
