//! The ports a guest reaches without an exit, as a backend reads them.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// One guest's unhooked ports of one passed-through device: the ranges its
/// vCPU backend lets through the I/O permission map, and a generation that
/// moves on every change so the backend knows to rebuild the map.
///
/// The [`crate::dmm::Dmm`] owning the device writes it (the hooked list changed,
/// or the device changed hands, which changes the lists of both guests); the
/// backend reads it before every guest entry.
#[derive(Debug, Default)]
pub struct DirectPorts {
    ranges: spin::Mutex<Vec<(u16, u16)>>,
    generation: AtomicU64,
}

impl DirectPorts {
    /// An empty list: every port exits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts changes; starts at zero.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The `(first, count)` ranges the guest reaches directly.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        self.ranges.lock().clone()
    }

    /// Replace the list (a no-op, generation included, if it is the same).
    pub fn set(&self, ranges: &[(u16, u16)]) {
        let mut current = self.ranges.lock();
        if current.as_slice() == ranges {
            return;
        }
        current.clear();
        current.extend_from_slice(ranges);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether `port` is reached directly.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.lock().iter().any(|&(first, count)| {
            port >= first && u32::from(port) < u32::from(first) + u32::from(count)
        })
    }
}

/// Turn a sorted list of ports into `(first, count)` runs.
pub(crate) fn runs(ports: impl Iterator<Item = u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for p in ports {
        match out.last_mut() {
            Some((first, count))
                if u32::from(*first) + u32::from(*count) == u32::from(p) && *count < u16::MAX =>
            {
                *count += 1
            }
            _ => out.push((p, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_moves_the_generation_only_on_a_change() {
        let d = DirectPorts::new();
        assert_eq!(d.generation(), 0);
        d.set(&[(0x300, 4)]);
        assert_eq!(d.generation(), 1);
        d.set(&[(0x300, 4)]);
        assert_eq!(d.generation(), 1);
        assert!(d.contains(0x303));
        assert!(!d.contains(0x304));
        d.set(&[]);
        assert_eq!(d.generation(), 2);
        assert!(!d.contains(0x300));
    }

    #[test]
    fn runs_join_neighbours() {
        let r = runs([1u16, 2, 3, 7, 9, 10].into_iter());
        assert_eq!(r, alloc::vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(
            runs([0xfffeu16, 0xffff].into_iter()),
            alloc::vec![(0xfffe, 2)]
        );
    }
}
