//! The PIIX3 PCI-to-ISA bridge, function 00:01.0, and the PIRQ router that
//! turns PCI INTx into ISA IRQs.
//!
//! PCI slot `d`, pin `p` (A = 0) drives PIRQ `(d + p) % 4` (the usual
//! swizzle). PIRQ routing registers 0x60-0x63 (PIRQRCA-D) choose the ISA
//! IRQ each PIRQ reaches: bit 7 set disables the route, bits 3:0 name the
//! IRQ (3-7, 9-12, 14, 15 are valid). Each PIRQ also reaches IOAPIC input
//! 16 + n, as on boards whose firmware describes the IOAPIC routing in ACPI.
//! INTx is level-triggered and shared: a PIRQ is high while any function on
//! it asserts its pin.

use super::{ConfigSpace, InterruptPin, PciFunction, PciIds};
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::DeviceContext;
use vmm_core::irq::IrqLine;

/// Offset of PIRQRCA; B, C and D follow.
pub const REG_PIRQRC: u8 = 0x60;

/// ISA IRQs a PIRQ may be routed to.
const ROUTABLE: u16 = 0b1101_1110_1111_1000;

struct PirqState {
    /// PIRQRCA-D as the guest wrote them.
    routes: [u8; 4],
    /// Per PIRQ, a bit per asserting INTx source.
    asserted: [u64; 4],
    /// Sources handed out so far.
    sources: u32,
    /// The ISA level each IRQ was last driven to from here.
    driven: u16,
}

/// Routes PCI INTx to ISA IRQs (per PIIX3 PIRQRC) and IOAPIC inputs 16-19.
pub struct PirqRouter {
    state: Mutex<PirqState>,
    isa: Vec<Arc<dyn IrqLine>>,
    ioapic: Vec<Arc<dyn IrqLine>>,
}

impl core::fmt::Debug for PirqRouter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PirqRouter")
            .field("routes", &self.routes())
            .finish()
    }
}

impl PirqRouter {
    /// A router driving `isa[irq]` for ISA IRQ `irq` (missing entries are
    /// not routable) and `ioapic[n]` for PIRQ `n` (may be empty).
    pub fn new(isa: Vec<Arc<dyn IrqLine>>, ioapic: Vec<Arc<dyn IrqLine>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PirqState {
                routes: [0x80; 4],
                asserted: [0; 4],
                sources: 0,
                driven: 0,
            }),
            isa,
            ioapic,
        })
    }

    /// The INTx line of the function in PCI slot `device` using `pin`.
    pub fn intx_line(self: &Arc<Self>, device: u8, pin: InterruptPin) -> Arc<dyn IrqLine> {
        let mut s = self.state.lock();
        let source = s.sources.min(63);
        s.sources = s.sources.saturating_add(1);
        Arc::new(IntxLine {
            router: self.clone(),
            pirq: usize::from((device & 0x1f).wrapping_add(pin as u8 - 1) % 4),
            bit: 1 << source,
        })
    }

    /// PIRQRCA-D as the guest programmed them.
    pub fn routes(&self) -> [u8; 4] {
        self.state.lock().routes
    }

    fn set_route(&self, pirq: usize, value: u8) {
        let mut s = self.state.lock();
        if let Some(r) = s.routes.get_mut(pirq) {
            *r = value & 0x8f;
        }
        self.drive(&mut s);
    }

    fn set_source(&self, pirq: usize, bit: u64, high: bool) {
        let mut s = self.state.lock();
        let Some(a) = s.asserted.get_mut(pirq) else {
            return;
        };
        let before = *a != 0;
        if high {
            *a |= bit;
        } else {
            *a &= !bit;
        }
        let after = *a != 0;
        if before != after {
            if let Some(line) = self.ioapic.get(pirq) {
                line.set_level(after);
            }
        }
        self.drive(&mut s);
    }

    /// Bring every ISA line this router drives to the level its routes say.
    fn drive(&self, s: &mut PirqState) {
        let mut want = 0u16;
        for (route, asserted) in s.routes.iter().zip(s.asserted) {
            let irq = route & 0xf;
            if route & 0x80 == 0 && asserted != 0 && ROUTABLE & (1 << irq) != 0 {
                want |= 1 << irq;
            }
        }
        let changed = want ^ s.driven;
        s.driven = want;
        for irq in 0..16 {
            if changed & (1 << irq) != 0 {
                if let Some(line) = self.isa.get(irq) {
                    line.set_level(want & (1 << irq) != 0);
                }
            }
        }
    }
}

impl PirqRouter {
    /// Per PIRQ, the INTx sources asserting it (for a saved state).
    fn asserted(&self) -> [u64; 4] {
        self.state.lock().asserted
    }

    /// Take restored routes and asserted sources, and drive every output
    /// (the ISA lines and IOAPIC inputs of the restoring machine start
    /// low) to the level they give.
    fn restore(&self, routes: [u8; 4], asserted: [u64; 4]) {
        let mut s = self.state.lock();
        s.routes = routes.map(|r| r & 0x8f);
        s.asserted = asserted;
        s.driven = 0;
        for (pirq, a) in asserted.iter().enumerate() {
            if let Some(line) = self.ioapic.get(pirq) {
                line.set_level(*a != 0);
            }
        }
        self.drive(&mut s);
    }
}

/// One function's INTx pin, as handed out by [`PirqRouter::intx_line`].
struct IntxLine {
    router: Arc<PirqRouter>,
    pirq: usize,
    bit: u64,
}

impl IrqLine for IntxLine {
    fn set_level(&self, high: bool) {
        self.router.set_source(self.pirq, self.bit, high);
    }
}

/// The PIIX3 ISA bridge function.
#[derive(Debug)]
pub struct Piix3 {
    config: ConfigSpace,
    router: Arc<PirqRouter>,
}

impl Piix3 {
    /// The bridge, programming `router` from its PIRQRC registers.
    pub fn new(router: Arc<PirqRouter>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x7000,
            revision: 0x00,
            class: (0x06, 0x01, 0x00),
            subsystem: (0, 0),
        });
        // Device-specific registers (ISA clock, PIRQ routing, TOM, MBIRQ,
        // APIC base, deterministic latency, SMI): storage the BIOS may write.
        for off in (0x40..=0xfc).step_by(4) {
            config.set_write_mask(off, 4, 0xffff_ffff);
        }
        config.set_write_mask(REG_PIRQRC, 4, 0x8f8f_8f8f);
        config.set_u32(REG_PIRQRC, 0x8080_8080);
        // Bus master and special cycles are always on, I/O and memory too.
        config.set_u16(super::REG_COMMAND, 0x0007);
        config.set_write_mask(super::REG_COMMAND, 2, 0);
        config.set_u16(super::REG_STATUS, 0x0200);
        config.snapshot_power_on();
        Self { config, router }
    }

    fn push_routes(&self) {
        for n in 0..4u8 {
            self.router
                .set_route(usize::from(n), self.config.read_u8(REG_PIRQRC + n));
        }
    }
}

/// Saved state of the PIIX3 ISA bridge, version
/// [`PIIX3_STATE_VERSION`]: configuration space (PIRQ routes among it) and,
/// per PIRQ, the PCI INTx sources asserting it. The [`PirqRouter`] it
/// shares with the PCI functions' lines is saved here, once.
#[derive(serde::Serialize, serde::Deserialize)]
struct Piix3State {
    config: Vec<u8>,
    asserted: [u64; 4],
}

/// Format version of the [`Piix3`]'s saved state.
pub const PIIX3_STATE_VERSION: u32 = 1;

impl SaveRestore for Piix3 {
    fn state_version(&self) -> u32 {
        PIIX3_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&Piix3State {
            config: self.config.save_bytes(),
            asserted: self.router.asserted(),
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: Piix3State = save_restore::decode_version(version, PIIX3_STATE_VERSION, bytes)?;
        self.config.restore_bytes(&s.config)?;
        let routes = [0u8, 1, 2, 3].map(|n| self.config.read_u8(REG_PIRQRC + n));
        self.router.restore(routes, s.asserted);
        Ok(())
    }
}

impl PciFunction for Piix3 {
    fn name(&self) -> &str {
        "piix3"
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        let _ = ctx;
        self.config.write(offset, data);
        let end = usize::from(offset) + data.len();
        if usize::from(offset) < usize::from(REG_PIRQRC) + 4 && end > usize::from(REG_PIRQRC) {
            self.push_routes();
        }
    }
    fn reset(&mut self) {
        self.config.reset();
        self.push_routes();
    }
}
