//! A split virtqueue (virtio 1.2, 2.7) on the device side, every access
//! through the DMA guard.
//!
//! # States
//!
//! The queue is a [`CheckedStateMachine`] of [`QueueState`]:
//!
//! ```text
//!   Disabled --enable: rings checked--> Ready --chain taken--> Serving
//!      ^                                  ^                       |
//!      +--------- reset (any state) ------+-----chain used--------+
//! ```
//!
//! Enabling checks the layout: the size a power of two no larger than the
//! device's maximum, the descriptor table 16-byte aligned, the available
//! ring 2-byte and the used ring 4-byte aligned, and all three RAM of this
//! VM. `Ready` holds a grant for the used ring alone (the device writes used
//! elements and `avail_event` there, nothing else); `Serving` holds one for
//! the used ring and exactly the RAM buffers of the chain being served, each
//! in its direction. Descriptors and the available ring are only ever read,
//! through [`DmaGuard::inspect`], which refuses anything but RAM.
//!
//! # Errors
//!
//! A malformed queue ([`QueueError`]: the available index moved more than
//! the queue size, a bad head, a malformed chain, a ring that stopped being
//! RAM) stops the queue; the transport sets DEVICE_NEEDS_RESET and tells the
//! driver with a configuration change interrupt, as the specification asks
//! (2.1.2). A buffer that is not RAM fails only its request.

use super::chain::{self, ChainError, DescriptorChain};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, Ordering};
use vmm_core::dma::{
    CheckedRange, CheckedStateMachine, DmaDirection, DmaError, DmaGrant, DmaGuard, DmaRange,
    StateModel,
};

/// Available ring flag: the driver does not want interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// The largest queue size of a split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Where a queue's rings are, as the driver programmed them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingLayout {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

impl RingLayout {
    /// Bytes of the descriptor table.
    pub fn desc_len(&self) -> u64 {
        16 * u64::from(self.size)
    }

    /// Bytes of the available ring, `used_event` included.
    pub fn avail_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Bytes of the used ring, `avail_event` included.
    pub fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// The used ring as a DMA range the device writes.
    pub fn used_range(&self) -> DmaRange {
        DmaRange {
            gpa: self.used,
            len: self.used_len(),
            dir: DmaDirection::ToGuest,
        }
    }
}

/// A queue's state as its checked state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    /// Not enabled (power-on, reset).
    Disabled,
    /// Enabled; the grant covers the used ring.
    Ready,
    /// A chain is being served; the grant covers the used ring and the
    /// chain's buffers.
    Serving,
}

/// Why a queue was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is not enabled.
    NotReady,
    /// Enabling was refused: the layout is wrong or not RAM.
    BadLayout(&'static str),
    /// A ring is not RAM of this VM (any more).
    RingNotRam {
        /// The address that could not be read or written.
        gpa: u64,
    },
    /// The available index moved by more than the queue size.
    AvailIndexJump {
        /// The index the device expected next.
        from: u16,
        /// The index the driver published.
        to: u16,
    },
    /// A malformed descriptor chain.
    Chain(ChainError),
    /// A buffer the device was about to touch is not covered by its grant
    /// (the memory map changed under it).
    Dma(DmaError),
}

impl From<ChainError> for QueueError {
    fn from(e: ChainError) -> Self {
        QueueError::Chain(e)
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::NotReady => write!(f, "queue not enabled"),
            QueueError::BadLayout(why) => write!(f, "queue layout refused: {why}"),
            QueueError::RingNotRam { gpa } => write!(f, "ring at {gpa:#x} is not RAM"),
            QueueError::AvailIndexJump { from, to } => {
                write!(f, "available index moved from {from} to {to}")
            }
            QueueError::Chain(e) => write!(f, "{e}"),
            QueueError::Dma(e) => write!(f, "{e}"),
        }
    }
}

/// The queue's state model: which transitions exist and what the checking
/// function looks at.
#[derive(Debug)]
pub struct QueueModel {
    layout: RingLayout,
    max_size: u16,
}

impl StateModel for QueueModel {
    type State = QueueState;

    fn name(&self) -> &str {
        "virtqueue"
    }

    fn declared(&self, from: QueueState, to: QueueState) -> bool {
        matches!(
            (from, to),
            (QueueState::Disabled, QueueState::Ready)
                | (QueueState::Ready, QueueState::Serving)
                | (QueueState::Serving, QueueState::Ready)
        )
    }

    fn is_reusable(&self, state: QueueState) -> bool {
        state != QueueState::Serving
    }

    fn check(
        &mut self,
        from: QueueState,
        _to: QueueState,
        plan: &[DmaRange],
        guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        let l = &self.layout;
        // Every grant of an enabled queue starts with exactly its used ring.
        if plan.first() != Some(&l.used_range()) {
            return Err("plan does not start with the used ring");
        }
        if from != QueueState::Disabled {
            return Ok(());
        }
        if l.size == 0 || !l.size.is_power_of_two() || l.size > self.max_size {
            return Err("queue size is not a power of two up to the maximum");
        }
        if !l.desc.is_multiple_of(16) || !l.avail.is_multiple_of(2) || !l.used.is_multiple_of(4) {
            return Err("ring misaligned");
        }
        for (gpa, len) in [(l.desc, l.desc_len()), (l.avail, l.avail_len())] {
            let r = DmaRange {
                gpa,
                len,
                dir: DmaDirection::FromGuest,
            };
            guard
                .check_range(&r)
                .map_err(|_| "descriptor table or available ring is not RAM")?;
        }
        Ok(())
    }
}

/// What a queue's saved state holds: its layout, whether it is enabled
/// with which ring features, and the device's indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// Size, as programmed.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Enabled.
    pub enabled: bool,
    /// Event-idx negotiated.
    pub event_idx: bool,
    /// Indirect descriptors negotiated.
    pub indirect: bool,
    /// The next available index the device takes.
    pub next_avail: u16,
    /// The next used index the device writes.
    pub next_used: u16,
    /// The used index at the last interrupt decision.
    pub signalled_used: u16,
}

/// One split virtqueue, device side.
pub struct Virtqueue {
    machine: CheckedStateMachine<QueueModel>,
    /// The layout being programmed (takes effect at enable).
    pending: RingLayout,
    next_avail: u16,
    next_used: u16,
    /// `next_used` when the driver was last considered for an interrupt.
    signalled_used: u16,
    /// The available index as last read.
    seen_avail: u16,
    event_idx: bool,
    indirect: bool,
    /// Number of chains served.
    served: u64,
}

impl fmt::Debug for Virtqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Virtqueue")
            .field("state", &self.machine.state())
            .field("layout", &self.layout())
            .field("next_avail", &self.next_avail)
            .field("next_used", &self.next_used)
            .finish()
    }
}

impl Virtqueue {
    /// A disabled queue of at most `max_size` entries (a power of two); its
    /// size reads `max_size` until the driver lowers it.
    pub fn new(max_size: u16) -> Self {
        let max_size = max_size.clamp(1, MAX_QUEUE_SIZE);
        let pending = RingLayout {
            size: max_size,
            ..RingLayout::default()
        };
        Self {
            machine: CheckedStateMachine::new(
                QueueModel {
                    layout: pending,
                    max_size,
                },
                QueueState::Disabled,
            ),
            pending,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            seen_avail: 0,
            event_idx: false,
            indirect: false,
            served: 0,
        }
    }

    /// The largest size the device supports.
    pub fn max_size(&self) -> u16 {
        self.machine.model().max_size
    }

    /// The layout the driver programmed (the one in effect once enabled).
    pub fn layout(&self) -> RingLayout {
        if self.is_enabled() {
            self.machine.model().layout
        } else {
            self.pending
        }
    }

    /// The state.
    pub fn state(&self) -> QueueState {
        self.machine.state()
    }

    /// Whether the queue is enabled.
    pub fn is_enabled(&self) -> bool {
        self.machine.state() != QueueState::Disabled
    }

    /// Chains served since the last reset.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Transitions the queue's checking function denied.
    pub fn denials(&self) -> u64 {
        self.machine.denials()
    }

    /// Program part of the layout (ignored once enabled, as the driver must
    /// not change it then).
    pub fn program(&mut self, f: impl FnOnce(&mut RingLayout)) {
        if !self.is_enabled() {
            f(&mut self.pending);
        }
    }

    /// Back to the power-on state: disabled, no grant, indices zero.
    pub fn reset(&mut self) {
        let max_size = self.max_size();
        *self = Self::new(max_size);
    }

    /// Enable the queue with the programmed layout and the negotiated ring
    /// features. Refused (and the queue stays disabled) unless the layout
    /// is valid and RAM of this VM.
    pub fn enable(
        &mut self,
        guard: &DmaGuard<'_>,
        event_idx: bool,
        indirect: bool,
    ) -> Result<(), QueueError> {
        if self.is_enabled() {
            return Ok(());
        }
        self.machine.model_mut().layout = self.pending;
        let plan = [self.pending.used_range()];
        self.machine
            .request(QueueState::Ready, &plan, guard)
            .map_err(|d| match d.reason {
                vmm_core::dma::DenyReason::Device(why) => QueueError::BadLayout(why),
                vmm_core::dma::DenyReason::Dma(_) => QueueError::BadLayout("used ring is not RAM"),
                vmm_core::dma::DenyReason::Undeclared => QueueError::NotReady,
            })?;
        self.event_idx = event_idx;
        self.indirect = indirect;
        self.next_avail = 0;
        self.seen_avail = 0;
        self.next_used = 0;
        self.signalled_used = 0;
        Ok(())
    }

    fn read_u16(guard: &DmaGuard<'_>, gpa: u64) -> Result<u16, QueueError> {
        let mut b = [0u8; 2];
        guard
            .inspect(gpa, &mut b)
            .map_err(|_| QueueError::RingNotRam { gpa })?;
        Ok(u16::from_le_bytes(b))
    }

    fn write_used(
        &self,
        guard: &mut DmaGuard<'_>,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), QueueError> {
        let grant = self.machine.grant().ok_or(QueueError::NotReady)?;
        guard
            .write(grant, gpa, data)
            .map_err(|_| QueueError::RingNotRam { gpa })
    }

    /// Take the next available chain, if any, and move to `Serving` with a
    /// grant for its RAM buffers. `Ok(None)` when the ring is empty.
    /// `avail_event` is left as it is: while the device is taking chains
    /// the driver need not notify it of more (QEMU does the same); the
    /// device calls [`Virtqueue::arm_notify`] when it stops.
    pub fn pop(&mut self, guard: &mut DmaGuard<'_>) -> Result<Option<DescriptorChain>, QueueError> {
        if self.machine.state() != QueueState::Ready {
            return Err(QueueError::NotReady);
        }
        let l = self.machine.model().layout;
        let avail_idx = Self::read_u16(guard, l.avail + 2)?;
        self.seen_avail = avail_idx;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > l.size {
            return Err(QueueError::AvailIndexJump {
                from: self.next_avail,
                to: avail_idx,
            });
        }
        if pending == 0 {
            return Ok(None);
        }
        let slot = self.next_avail % l.size;
        let head = Self::read_u16(guard, l.avail + 4 + 2 * u64::from(slot))?;
        let chain = chain::walk(guard, l.desc, l.size, head, self.indirect)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The used ring, checked here once per chain, and the buffers as
        // the walk checked them: the transition takes those checks (the
        // guard holds the map, so they are still current) instead of
        // making its own.
        let used = guard
            .check(l.used_range())
            .map_err(|_| QueueError::RingNotRam { gpa: l.used })?;
        let mut plan: Vec<CheckedRange> = Vec::with_capacity(chain.segments.len() + 1);
        plan.push(used);
        plan.extend(chain.plan());
        self.machine
            .request_checked(QueueState::Serving, &plan, guard)
            .map_err(|_| QueueError::RingNotRam { gpa: l.used })?;
        Ok(Some(chain))
    }

    /// The device stops taking chains: with event-idx, `avail_event`
    /// becomes the next chain it would take, so the driver notifies when it
    /// makes that one available; then the available index is read again.
    /// `Ok(true)` when it moved since [`Virtqueue::pop`] or
    /// [`Virtqueue::peek_writable`] last read it: a chain made available
    /// before the driver could see the new `avail_event` may come without
    /// a notify, so the caller looks again. Without event-idx the driver
    /// notifies every time (the device never sets
    /// `VIRTQ_USED_F_NO_NOTIFY`): `Ok(false)`.
    pub fn arm_notify(&mut self, guard: &mut DmaGuard<'_>) -> Result<bool, QueueError> {
        if !self.event_idx || self.machine.state() != QueueState::Ready {
            return Ok(false);
        }
        let l = self.machine.model().layout;
        let at = l.used + 6 + 8 * u64::from(l.size) - 2;
        self.write_used(guard, at, &self.next_avail.to_le_bytes())?;
        // The write above before the read below, as the driver orders its
        // index write before its read of `avail_event` (x86 keeps stores
        // behind later loads without a full fence).
        fence(Ordering::SeqCst);
        Ok(Self::read_u16(guard, l.avail + 2)? != self.seen_avail)
    }

    /// The device-writable bytes of the chain `ahead` places after the next
    /// one [`Virtqueue::pop`] would take, without taking anything (a
    /// receive queue looking for room for an item that spans chains).
    /// `Ok(None)` when fewer chains are available.
    pub fn peek_writable(
        &mut self,
        guard: &DmaGuard<'_>,
        ahead: u16,
    ) -> Result<Option<u64>, QueueError> {
        if self.machine.state() != QueueState::Ready {
            return Err(QueueError::NotReady);
        }
        let l = self.machine.model().layout;
        let avail_idx = Self::read_u16(guard, l.avail + 2)?;
        self.seen_avail = avail_idx;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > l.size {
            return Err(QueueError::AvailIndexJump {
                from: self.next_avail,
                to: avail_idx,
            });
        }
        if ahead >= pending {
            return Ok(None);
        }
        let slot = self.next_avail.wrapping_add(ahead) % l.size;
        let head = Self::read_u16(guard, l.avail + 4 + 2 * u64::from(slot))?;
        let chain = chain::walk(guard, l.desc, l.size, head, self.indirect)?;
        Ok(Some(chain.writable_len()))
    }

    /// The grant of the chain being served (its RAM buffers and the used
    /// ring).
    pub fn grant(&self) -> Option<&DmaGrant> {
        match self.machine.state() {
            QueueState::Serving => self.machine.grant(),
            _ => None,
        }
    }

    /// Put the chain being served in the used ring with `written` bytes
    /// written into its buffers, and go back to `Ready`.
    pub fn push(
        &mut self,
        guard: &mut DmaGuard<'_>,
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        if self.machine.state() != QueueState::Serving {
            return Err(QueueError::NotReady);
        }
        let l = self.machine.model().layout;
        let slot = self.next_used % l.size;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&written.to_le_bytes());
        self.write_used(guard, l.used + 4 + 8 * u64::from(slot), &elem)?;
        self.next_used = self.next_used.wrapping_add(1);
        self.write_used(guard, l.used + 2, &self.next_used.to_le_bytes())?;
        self.served += 1;
        self.machine
            .request(QueueState::Ready, &[l.used_range()], guard)
            .map_err(|_| QueueError::RingNotRam { gpa: l.used })
    }

    /// Whether the driver wants an interrupt for what was used since the
    /// last time this was asked: with event-idx, whether the used index
    /// passed `used_event`; without, unless the driver set
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`. False when nothing was used.
    pub fn needs_interrupt(&mut self, guard: &DmaGuard<'_>) -> bool {
        let old = self.signalled_used;
        let new = self.next_used;
        self.signalled_used = new;
        if old == new || !self.is_enabled() {
            return false;
        }
        let l = self.machine.model().layout;
        if self.event_idx {
            match Self::read_u16(guard, l.avail + 4 + 2 * u64::from(l.size)) {
                // vring_need_event: new - event - 1 < new - old (mod 2^16).
                Ok(event) => new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old),
                Err(_) => true,
            }
        } else {
            match Self::read_u16(guard, l.avail) {
                Ok(flags) => flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => true,
            }
        }
    }

    /// The queue's state, for a snapshot (between two device calls, so no
    /// chain is being served).
    pub fn snapshot(&self) -> QueueSnapshot {
        let l = self.layout();
        QueueSnapshot {
            size: l.size,
            desc: l.desc,
            avail: l.avail,
            used: l.used,
            enabled: self.is_enabled(),
            event_idx: self.event_idx,
            indirect: self.indirect,
            next_avail: self.next_avail,
            next_used: self.next_used,
            signalled_used: self.signalled_used,
        }
    }

    /// A queue of at most `max_size` entries in the state `s` describes,
    /// enabled again (its layout checked as at enable) if it was.
    pub fn restored(
        max_size: u16,
        s: &QueueSnapshot,
        guard: &DmaGuard<'_>,
    ) -> Result<Self, QueueError> {
        let mut q = Self::new(max_size);
        q.program(|l| {
            l.size = s.size;
            l.desc = s.desc;
            l.avail = s.avail;
            l.used = s.used;
        });
        if s.enabled {
            q.enable(guard, s.event_idx, s.indirect)?;
            q.next_avail = s.next_avail;
            q.next_used = s.next_used;
            q.signalled_used = s.signalled_used;
        }
        Ok(q)
    }
}
