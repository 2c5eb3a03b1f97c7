//! A virtual Ethernet switch between VMs on one host, with no host network:
//! each VM's network card has a [`SwitchPort`] as its
//! [`NetBackend`].
//!
//! The switch learns which port each source MAC address sent from; a
//! frame to a learnt unicast address goes to that port only, any other
//! (broadcast, multicast, not learnt yet) to every port but the sender's.
//! Each port queues at most [`PORT_QUEUE_FRAMES`] frames for its VM; a
//! frame for a full queue is dropped (and counted), as a switch under
//! load drops. Frames are copied into the queue from the sending card's
//! buffer and out of it into the receiving card's: each card moves guest
//! memory only through its own VM's DMA guard, so no VM reaches another's
//! memory.

use crate::net::{check_length, NetBackend, NetError, ETH_HEADER};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;

/// Frames queued per port before new ones are dropped.
pub const PORT_QUEUE_FRAMES: usize = 256;
/// Learnt addresses kept (the oldest is forgotten first).
pub const MAX_ADDRESSES: usize = 1024;

#[derive(Default)]
struct Port {
    queue: VecDeque<Vec<u8>>,
    dropped: u64,
}

#[derive(Default)]
struct Inner {
    ports: Vec<Port>,
    /// (MAC, port), oldest first.
    table: VecDeque<([u8; 6], usize)>,
    forwarded: u64,
}

/// A switch; clone it to hand out ports.
#[derive(Clone, Default)]
pub struct VirtualSwitch {
    inner: Arc<Mutex<Inner>>,
}

impl core::fmt::Debug for VirtualSwitch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let i = self.inner.lock();
        f.debug_struct("VirtualSwitch")
            .field("ports", &i.ports.len())
            .field("forwarded", &i.forwarded)
            .finish()
    }
}

/// Counters of a switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Frames put in some port's queue.
    pub forwarded: u64,
    /// Frames dropped at full queues.
    pub dropped: u64,
    /// Addresses learnt.
    pub addresses: usize,
}

impl VirtualSwitch {
    /// A switch without ports.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new port.
    pub fn port(&self) -> SwitchPort {
        let mut i = self.inner.lock();
        i.ports.push(Port::default());
        SwitchPort {
            switch: self.inner.clone(),
            index: i.ports.len() - 1,
        }
    }

    /// The switch's counters.
    pub fn stats(&self) -> SwitchStats {
        let i = self.inner.lock();
        SwitchStats {
            forwarded: i.forwarded,
            dropped: i.ports.iter().map(|p| p.dropped).sum(),
            addresses: i.table.len(),
        }
    }
}

/// One port of a [`VirtualSwitch`]: a VM's network card's backend.
pub struct SwitchPort {
    switch: Arc<Mutex<Inner>>,
    index: usize,
}

impl core::fmt::Debug for SwitchPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SwitchPort")
            .field("index", &self.index)
            .finish()
    }
}

impl Inner {
    fn learn(&mut self, mac: [u8; 6], port: usize) {
        if mac[0] & 1 != 0 {
            return; // a group address is never a source
        }
        if let Some(e) = self.table.iter_mut().find(|(m, _)| *m == mac) {
            e.1 = port;
            return;
        }
        if self.table.len() >= MAX_ADDRESSES {
            self.table.pop_front();
        }
        self.table.push_back((mac, port));
    }

    fn deliver(&mut self, port: usize, frame: &[u8]) {
        let Some(p) = self.ports.get_mut(port) else {
            return;
        };
        if p.queue.len() >= PORT_QUEUE_FRAMES {
            p.dropped += 1;
        } else {
            p.queue.push_back(frame.to_vec());
            self.forwarded += 1;
        }
    }
}

impl NetBackend for SwitchPort {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        check_length(frame)?;
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        debug_assert!(frame.len() >= ETH_HEADER);
        let mut s = self.switch.lock();
        s.learn(src, self.index);
        let known = (dst[0] & 1 == 0)
            .then(|| s.table.iter().find(|(m, _)| *m == dst).map(|e| e.1))
            .flatten();
        match known {
            Some(p) if p == self.index => {} // back out of its own port: dropped
            Some(p) => s.deliver(p, frame),
            None => {
                for p in (0..s.ports.len()).filter(|&p| p != self.index) {
                    s.deliver(p, frame);
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self
            .switch
            .lock()
            .ports
            .get_mut(self.index)?
            .queue
            .pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MAX_FRAME;
    use alloc::vec;

    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, tag]);
        f
    }

    fn take(p: &mut SwitchPort) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME];
        p.recv(&mut buf).map(|n| buf[..n].to_vec())
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const BCAST: [u8; 6] = [0xff; 6];

    #[test]
    fn floods_until_it_learns_then_forwards_to_one_port() {
        let sw = VirtualSwitch::new();
        let (mut a, mut b, mut c) = (sw.port(), sw.port(), sw.port());
        a.send(&frame(BCAST, A, 1)).unwrap();
        assert_eq!(take(&mut b), Some(frame(BCAST, A, 1)));
        assert_eq!(take(&mut c), Some(frame(BCAST, A, 1)));
        assert_eq!(take(&mut a), None, "never back to the sender");
        // B answers A: A was learnt, so only A gets it.
        b.send(&frame(A, B, 2)).unwrap();
        assert_eq!(take(&mut a), Some(frame(A, B, 2)));
        assert_eq!(take(&mut c), None);
        // A to B, learnt too.
        a.send(&frame(B, A, 3)).unwrap();
        assert_eq!(take(&mut b), Some(frame(B, A, 3)));
        assert_eq!(take(&mut c), None);
        assert_eq!(sw.stats().addresses, 2);
        assert!(a.send(&[0; 5]).is_err(), "a runt is refused");
    }

    #[test]
    fn a_full_port_drops_and_counts() {
        let sw = VirtualSwitch::new();
        let (mut a, mut b) = (sw.port(), sw.port());
        for i in 0..PORT_QUEUE_FRAMES + 3 {
            a.send(&frame(BCAST, A, i as u8)).unwrap();
        }
        assert_eq!(sw.stats().dropped, 3);
        assert_eq!(take(&mut b), Some(frame(BCAST, A, 0)));
    }
}
