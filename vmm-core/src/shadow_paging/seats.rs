//! One pager shared by the vCPUs of a VM.
//!
//! The vCPUs of one VM see one guest memory: a page table one of them
//! writes may be one a sibling's shadow tree was filled from. A pager per
//! vCPU write-protects only the tables its own fills walked, so a write by
//! another vCPU would go unseen. Sharing the pager makes the coherence
//! bookkeeping the VM's: every fill's dependencies, every write-protected
//! frame and every writable mapping are known to all, and a guest write by
//! any vCPU removes the dependent entries from every tree. Trees are keyed
//! by address space, so vCPUs on the same CR3 share one tree, as they
//! share one set of guest tables.
//!
//! What stays per vCPU is its *seat*: the root it runs on, and the TLB
//! flush epoch it last entered with (a removal by any vCPU bumps the
//! pager's epoch, so every vCPU flushes its own TLB, tagged by its own
//! ASID, before its next entry). A tree that another seat runs on is
//! evicted only when nothing else is left, and then that seat finds its
//! root gone and activates a new one at its next entry.
//!
//! [`SharedPager`] is a handle: the pager behind a lock, and the seat of
//! the vCPU that holds it. Locking it switches the pager to that seat.

use super::{ShadowConfig, ShadowPager};
use alloc::sync::Arc;
use spin::{Mutex, MutexGuard};

/// A seat's part of the pager while another seat is active.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Seat {
    current: Option<usize>,
    seen_epoch: u64,
}

impl ShadowPager {
    /// Make `seat` the active one: its root and TLB epoch in the pager's
    /// fields, the previous seat's put aside.
    pub(super) fn use_seat(&mut self, seat: usize) {
        if seat == self.seat {
            return;
        }
        let need = self.seat.max(seat) + 1;
        if self.seats.len() < need {
            self.seats.resize(need, Seat::default());
        }
        self.seats[self.seat] = Seat {
            current: self.current,
            seen_epoch: self.seen_epoch,
        };
        let next = self.seats[seat];
        self.current = next.current;
        self.seen_epoch = next.seen_epoch;
        self.seat = seat;
    }

    /// Whether a seat other than the active one runs on root `slot`.
    pub(super) fn seated_elsewhere(&self, slot: usize) -> bool {
        self.seats
            .iter()
            .enumerate()
            .any(|(i, s)| i != self.seat && s.current == Some(slot))
    }

    /// Root `slot` is gone: no inactive seat runs on it any more.
    pub(super) fn unseat(&mut self, slot: usize) {
        let active = self.seat;
        for (i, s) in self.seats.iter_mut().enumerate() {
            if i != active && s.current == Some(slot) {
                s.current = None;
            }
        }
    }
}

/// A vCPU's handle on its VM's shadow pager (see the module doc).
pub struct SharedPager {
    pager: Arc<Mutex<ShadowPager>>,
    seat: usize,
    /// The next seat [`SharedPager::share`] hands out (only the first
    /// handle's count is used).
    seats: Arc<Mutex<usize>>,
}

impl SharedPager {
    /// A new pager within `config`, and the first vCPU's handle on it.
    pub fn new(config: ShadowConfig) -> Self {
        Self {
            pager: Arc::new(Mutex::new(ShadowPager::new(config))),
            seat: 0,
            seats: Arc::new(Mutex::new(1)),
        }
    }

    /// A handle for another vCPU of the same VM: a seat of its own.
    /// Leaf tables no longer go out of sync from then on (see `unsync`).
    pub fn share(&self) -> Self {
        self.pager.lock().forbid_unsync();
        let mut next = self.seats.lock();
        let seat = *next;
        *next += 1;
        Self {
            pager: self.pager.clone(),
            seat,
            seats: self.seats.clone(),
        }
    }

    /// This handle's seat (0 for the first vCPU).
    pub fn seat(&self) -> usize {
        self.seat
    }

    /// The pager, switched to this handle's seat.
    pub fn lock(&self) -> MutexGuard<'_, ShadowPager> {
        let mut pager = self.pager.lock();
        pager.use_seat(self.seat);
        pager
    }
}
