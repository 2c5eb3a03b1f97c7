//! Interrupt wiring of a PC: ISA IRQ lines that reach both the 8259 PIC
//! pair and the IOAPIC, and the vCPU's side, which asks whether an interrupt
//! is pending, which vector, and acknowledges it.
//!
//! ISA IRQ `n` drives PIC input `n` and IOAPIC input `n`, except IRQ 0,
//! which reaches IOAPIC input 2 (the interrupt source override every PC
//! firmware describes in its MADT). Several devices may share one IRQ: each
//! [`IsaInterrupts::line`] is its own source and the IRQ is high while any
//! source is.
//!
//! Lock order: PIRQ router, then PIC or IOAPIC, then local APIC; no path
//! takes them the other way round.

use crate::ioapic::IoApicCore;
use crate::kernel_lapic::LapicPlacement;
use crate::lapic::LapicCore;
use crate::pic::PicPair;
use crate::x2apic::X2apic;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use spin::Mutex;
use vmm_core::irq::IrqLine;

/// The IOAPIC input an ISA IRQ reaches.
pub fn isa_irq_to_gsi(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// The ISA interrupt lines of a PC.
#[derive(Debug)]
pub struct IsaInterrupts {
    pic: Arc<PicPair>,
    ioapic: Option<Arc<IoApicCore>>,
    /// Per IRQ, one bit per source that asserts it.
    sources: [AtomicU32; 16],
    /// Per IRQ, sources handed out.
    next_source: [AtomicU8; 16],
    /// Serialises level changes so PIC and IOAPIC see them in one order.
    lock: Mutex<()>,
}

impl IsaInterrupts {
    /// Lines feeding `pic` and, when there is one, `ioapic`.
    pub fn new(pic: Arc<PicPair>, ioapic: Option<Arc<IoApicCore>>) -> Arc<Self> {
        Arc::new(Self {
            pic,
            ioapic,
            sources: Default::default(),
            next_source: Default::default(),
            lock: Mutex::new(()),
        })
    }

    /// A new source on ISA IRQ `irq` (0-15; larger values are taken modulo
    /// 16). At most 32 sources are told apart per IRQ; more share the last.
    pub fn line(self: &Arc<Self>, irq: u8) -> Arc<dyn IrqLine> {
        let irq = irq & 0xf;
        let source = self.next_source[usize::from(irq)]
            .fetch_add(1, Ordering::Relaxed)
            .min(31);
        Arc::new(IsaLine {
            router: self.clone(),
            irq,
            bit: 1 << source,
        })
    }

    /// Whether ISA IRQ `irq` is high now.
    pub fn level(&self, irq: u8) -> bool {
        self.sources[usize::from(irq & 0xf)].load(Ordering::SeqCst) != 0
    }

    fn set_source(&self, irq: u8, bit: u32, high: bool) {
        let _guard = self.lock.lock();
        let slot = &self.sources[usize::from(irq)];
        let before = if high {
            slot.fetch_or(bit, Ordering::SeqCst)
        } else {
            slot.fetch_and(!bit, Ordering::SeqCst)
        };
        let after = slot.load(Ordering::SeqCst);
        // A source that pulses while others hold the line high makes no edge.
        if (before != 0) == (after != 0) {
            return;
        }
        let level = after != 0;
        self.pic.set_irq(irq, level);
        if let Some(io) = &self.ioapic {
            io.set_pin(isa_irq_to_gsi(irq), level);
        }
    }
}

struct IsaLine {
    router: Arc<IsaInterrupts>,
    irq: u8,
    bit: u32,
}

impl IrqLine for IsaLine {
    fn set_level(&self, high: bool) {
        self.router.set_source(self.irq, self.bit, high);
    }
}

/// What a vCPU backend asks before entering the guest: is an interrupt
/// pending, which vector, and take it. The local APIC's own interrupts come
/// first; the PIC's reach the CPU while the local APIC passes ExtINT
/// (disabled, or LINT0 in ExtINT mode, the power-on state of the BSP).
///
/// Once the host has the local APICs ([`crate::kernel_lapic`]) only the
/// PIC's ExtINT is left here, for the bootstrap processor (the one whose
/// LINT0 the PIC drives); whether that APIC passes it is the host's to
/// say (KVM's "ready for interrupt injection"), and INIT, start-up IPIs,
/// NMIs and the APIC MSRs are the host's too.
#[derive(Clone, Debug)]
pub struct CpuInterrupts {
    lapic: Arc<LapicCore>,
    pic: Arc<PicPair>,
    /// The local APIC's x2APIC MSRs, where the PC offers x2APIC.
    x2apic: Option<X2apic>,
    /// Where the local APICs are.
    placement: Arc<LapicPlacement>,
}

impl CpuInterrupts {
    /// The interrupt inputs of the vCPU with local APIC `lapic`.
    pub fn new(lapic: Arc<LapicCore>, pic: Arc<PicPair>) -> Self {
        Self {
            lapic,
            pic,
            x2apic: None,
            placement: LapicPlacement::new(),
        }
    }

    /// The same inputs, handing the local APIC's part to the host once
    /// `placement` says the local APICs are the host's.
    pub fn with_placement(self, placement: Arc<LapicPlacement>) -> Self {
        Self { placement, ..self }
    }

    /// Whether the local APIC is the host's (a split irqchip).
    pub fn lapic_in_kernel(&self) -> bool {
        self.placement.in_kernel()
    }

    /// With the host's local APICs: the PIC's vector, for the bootstrap
    /// processor only, taken if `take`.
    fn extint(&self, take: bool) -> Option<u8> {
        if self.lapic.id() != 0 || !self.pic.interrupt_pending() {
            return None;
        }
        if take {
            Some(self.pic.acknowledge())
        } else {
            self.pic.peek_vector()
        }
    }

    /// The same inputs, with the local APIC offering x2APIC through `x2apic`
    /// (which must be the interface of the same APIC).
    pub fn with_x2apic(self, x2apic: X2apic) -> Self {
        Self {
            x2apic: Some(x2apic),
            ..self
        }
    }

    /// The vector that [`CpuInterrupts::acknowledge`] would return now, if
    /// any (for backends that inject at the next interrupt window).
    pub fn pending(&self) -> Option<u8> {
        if self.lapic_in_kernel() {
            return self.extint(false);
        }
        if let Some(v) = self.lapic.deliverable() {
            return Some(v);
        }
        if self.lapic.accepts_pic() && self.pic.interrupt_pending() {
            return self.pic.peek_vector();
        }
        None
    }

    /// The CPU takes the interrupt (it has IF set and no interrupt shadow):
    /// the vector to inject. Moves the vector into service at the
    /// controller that sent it.
    pub fn acknowledge(&self) -> Option<u8> {
        if self.lapic_in_kernel() {
            return self.extint(true);
        }
        if let Some(v) = self.lapic.acknowledge() {
            return Some(v);
        }
        if self.lapic.accepts_pic() && self.pic.interrupt_pending() {
            return Some(self.pic.acknowledge());
        }
        None
    }

    /// Take a pending NMI (sent by the IOAPIC or an IPI).
    pub fn take_nmi(&self) -> bool {
        !self.lapic_in_kernel() && self.lapic.take_nmi()
    }

    /// The local APIC.
    pub fn lapic(&self) -> &Arc<LapicCore> {
        &self.lapic
    }

    /// The PIC pair.
    pub fn pic(&self) -> &Arc<PicPair> {
        &self.pic
    }
}

/// The exit loop asks a PC's vCPU interrupts through this.
impl vmm_core::vcpu::InterruptSource for CpuInterrupts {
    fn pending(&self) -> bool {
        CpuInterrupts::pending(self).is_some()
    }
    fn acknowledge(&self) -> Option<u8> {
        CpuInterrupts::acknowledge(self)
    }
    fn take_nmi(&self) -> bool {
        CpuInterrupts::take_nmi(self)
    }
    fn apic_base(&self) -> Option<u64> {
        (!self.lapic_in_kernel()).then(|| self.lapic.apic_base())
    }
    fn set_apic_base(&self, value: u64) {
        if !self.lapic_in_kernel() {
            self.lapic.set_apic_base(value);
        }
    }

    fn take_init(&self) -> bool {
        !self.lapic_in_kernel() && self.lapic.take_init()
    }

    fn nmi_pending(&self) -> bool {
        !self.lapic_in_kernel() && self.lapic.nmi_pending()
    }

    fn waiting_for_sipi(&self) -> bool {
        !self.lapic_in_kernel() && self.lapic.waiting_for_sipi()
    }

    fn take_sipi(&self) -> Option<u8> {
        if self.lapic_in_kernel() {
            return None;
        }
        self.lapic.take_sipi()
    }

    fn x2apic_capable(&self) -> bool {
        self.x2apic.is_some() && !self.lapic_in_kernel()
    }

    fn x2apic_read(&self, msr: u32, now: u64) -> Option<u64> {
        self.x2apic.as_ref()?.read(msr, now)
    }

    fn x2apic_write(&self, msr: u32, value: u64, now: u64) -> vmm_core::vcpu::X2apicWrite {
        match &self.x2apic {
            Some(x) => x.write(msr, value, now),
            None => vmm_core::vcpu::X2apicWrite::Fault,
        }
    }
}
