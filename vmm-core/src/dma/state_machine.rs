//! Checked device state machines: the state model and checking function of
//! Palacios's device monitor model.

use super::guard::{CheckedRange, DmaError, DmaGrant, DmaGuard, DmaRange};
use alloc::vec::Vec;
use core::fmt;

/// A DMA-capable device's states and transitions, and its checking function.
pub trait StateModel {
    /// The device's states as the guest drives it (idle, programmed,
    /// running, done, error, ...).
    type State: Copy + Eq + fmt::Debug;

    /// The device's name, for logs.
    fn name(&self) -> &str;

    /// Whether `from -> to` is a transition this device has at all.
    fn declared(&self, from: Self::State, to: Self::State) -> bool;

    /// Whether a device in `state` holds nothing of its current user (no
    /// transfer in flight, no interrupt pending, nothing buffered), so that
    /// it can be handed to another VM.
    fn is_reusable(&self, state: Self::State) -> bool;

    /// The device's own checking function, called for a declared transition
    /// whose planned ranges are all RAM of this VM. It may inspect guest
    /// memory through `guard` (descriptor tables). Returning an error denies
    /// the transition. The default approves.
    fn check(
        &mut self,
        from: Self::State,
        to: Self::State,
        plan: &[DmaRange],
        guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        let _ = (from, to, plan, guard);
        Ok(())
    }
}

/// Why a transition was denied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DenyReason {
    /// The model has no such transition.
    Undeclared,
    /// A planned range is not RAM of this VM (or is malformed).
    Dma(DmaError),
    /// The device's checking function said no.
    Device(&'static str),
}

/// A denied transition. The device's state is unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Denial<S> {
    /// The state the device stays in.
    pub from: S,
    /// The state that was asked for.
    pub to: S,
    /// Why.
    pub reason: DenyReason,
}

impl<S: fmt::Debug> core::error::Error for Denial<S> {}

impl<S: fmt::Debug> fmt::Display for Denial<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transition {:?} -> {:?} denied: ", self.from, self.to)?;
        match &self.reason {
            DenyReason::Undeclared => write!(f, "not a transition of this device"),
            DenyReason::Dma(e) => write!(f, "{e}"),
            DenyReason::Device(why) => write!(f, "{why}"),
        }
    }
}

/// A device state machine whose every transition is checked first.
pub struct CheckedStateMachine<M: StateModel> {
    model: M,
    state: M::State,
    grant: Option<DmaGrant>,
    denials: u64,
}

impl<M: StateModel> CheckedStateMachine<M> {
    /// A machine in `initial` state.
    pub fn new(model: M, initial: M::State) -> Self {
        Self {
            model,
            state: initial,
            grant: None,
            denials: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> M::State {
        self.state
    }

    /// The model (for its own bookkeeping).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Whether the device can change hands now.
    pub fn is_reusable(&self) -> bool {
        self.model.is_reusable(self.state)
    }

    /// The DMA grant of the current state, if the transition into it planned
    /// a DMA.
    pub fn grant(&self) -> Option<&DmaGrant> {
        self.grant.as_ref()
    }

    /// How many transitions were denied so far.
    pub fn denials(&self) -> u64 {
        self.denials
    }

    /// Ask to move to `to`, planning DMA to/from `plan` (empty when the
    /// transition moves no data). On approval the state changes and the
    /// grant becomes exactly `plan` (none if empty); on denial nothing
    /// changes and the denial is logged.
    pub fn request(
        &mut self,
        to: M::State,
        plan: &[DmaRange],
        guard: &DmaGuard<'_>,
    ) -> Result<(), Denial<M::State>> {
        self.decide(to, plan.to_vec(), |_| false, guard)
    }

    /// [`CheckedStateMachine::request`] for a plan whose ranges were
    /// checked already ([`DmaGuard::check`]): a range whose check is
    /// still current ([`DmaGuard::is_current`]) is not checked again, any
    /// other is, so the approval means the same as `request`'s.
    pub fn request_checked(
        &mut self,
        to: M::State,
        plan: &[CheckedRange],
        guard: &DmaGuard<'_>,
    ) -> Result<(), Denial<M::State>> {
        let ranges = plan.iter().map(CheckedRange::range).collect();
        let current = |i: usize| plan.get(i).is_some_and(|r| guard.is_current(r));
        self.decide(to, ranges, current, guard)
    }

    /// Judge `from -> to` with `plan` (range `i` already known RAM now when
    /// `checked(i)`), then move and grant, or count and log the denial.
    fn decide(
        &mut self,
        to: M::State,
        plan: Vec<DmaRange>,
        checked: impl Fn(usize) -> bool,
        guard: &DmaGuard<'_>,
    ) -> Result<(), Denial<M::State>> {
        let from = self.state;
        let verdict = self.judge(from, to, &plan, checked, guard);
        match verdict {
            Ok(()) => {
                self.state = to;
                // Every range was RAM of this map at this stamp (checked
                // now, or by a check that is still current).
                self.grant = if plan.is_empty() {
                    None
                } else {
                    Some(DmaGrant::new(guard.vm(), plan, guard.stamp()))
                };
                Ok(())
            }
            Err(reason) => {
                self.denials += 1;
                let denial = Denial { from, to, reason };
                log::warn!("{} (VM {}): {}", self.model.name(), guard.vm().0, denial);
                Err(denial)
            }
        }
    }

    fn judge(
        &mut self,
        from: M::State,
        to: M::State,
        plan: &[DmaRange],
        checked: impl Fn(usize) -> bool,
        guard: &DmaGuard<'_>,
    ) -> Result<(), DenyReason> {
        if !self.model.declared(from, to) {
            return Err(DenyReason::Undeclared);
        }
        for (i, range) in plan.iter().enumerate() {
            if !checked(i) {
                guard.check_range(range).map_err(DenyReason::Dma)?;
            }
        }
        self.model
            .check(from, to, plan, guard)
            .map_err(DenyReason::Device)
    }

    /// Force the machine back to `state` without a check, dropping any grant
    /// (device reset, which real hardware always honours).
    pub fn reset_to(&mut self, state: M::State) {
        self.state = state;
        self.grant = None;
    }
}
