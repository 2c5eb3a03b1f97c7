//! Lists of shadow leaves kept in one arena: the coherence bookkeeping's
//! records (what depends on a guest entry, which leaves map a frame) are
//! nodes of singly linked lists in one vector, each list named by the
//! index of its first node, and a removed node goes on a free list for the
//! next record.
//!
//! A record is made on nearly every fill and prefetch and dropped on every
//! guest page-table write, so a vector per list would cost a heap
//! allocation for each new list and a free for each emptied one (on the
//! bare-metal host a first-fit heap walks its free list for both, touching
//! a host page per block, and QEMU's TCG refills its software TLB for
//! each after every world switch). Here the arena grows only to the
//! largest number of records alive at once.

use super::coherence::Leaf;
use alloc::vec::Vec;

/// Marks the end of a list.
const NIL: u32 = u32::MAX;

/// One list: the index of its first node, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Head(u32);

impl Default for Head {
    fn default() -> Self {
        Self(NIL)
    }
}

impl Head {
    /// Whether the list has no node.
    pub(super) fn is_empty(self) -> bool {
        self.0 == NIL
    }
}

#[derive(Clone, Copy)]
struct Node {
    leaf: Leaf,
    next: u32,
}

/// The arena every list lives in.
pub(super) struct LeafLists {
    nodes: Vec<Node>,
    /// The first free node (linked through `next`).
    free: u32,
}

impl Default for LeafLists {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
        }
    }
}

impl LeafLists {
    fn node(&self, at: u32) -> Option<&Node> {
        self.nodes.get(at as usize)
    }

    /// Put `leaf` at the front of a list whose first node is `next`;
    /// returns the new node's index (or `next` unchanged if the arena is
    /// full, which 2^32 records cannot be before the host's memory is).
    fn alloc(&mut self, leaf: Leaf, next: u32) -> u32 {
        let node = Node { leaf, next };
        if let Some(slot) = self.nodes.get_mut(self.free as usize) {
            let at = self.free;
            self.free = slot.next;
            *slot = node;
            return at;
        }
        let at = self.nodes.len();
        if at >= NIL as usize {
            return next;
        }
        self.nodes.push(node);
        at as u32
    }

    /// Give node `at` back; returns its successor.
    fn release(&mut self, at: u32) -> u32 {
        let free = self.free;
        match self.nodes.get_mut(at as usize) {
            Some(n) => {
                let next = n.next;
                n.next = free;
                self.free = at;
                next
            }
            None => NIL,
        }
    }

    /// The leaves of `head`, front first.
    pub(super) fn iter(&self, head: Head) -> impl Iterator<Item = Leaf> + '_ {
        let mut at = head.0;
        core::iter::from_fn(move || {
            let n = self.node(at)?;
            at = n.next;
            Some(n.leaf)
        })
    }

    /// Whether any leaf of `head` satisfies `f`.
    pub(super) fn any(&self, head: Head, f: impl FnMut(Leaf) -> bool) -> bool {
        self.iter(head).any(f)
    }

    /// Add `leaf` to `head` unless it is there already; `true` if added.
    pub(super) fn insert(&mut self, head: &mut Head, leaf: Leaf) -> bool {
        if self.any(*head, |l| l == leaf) {
            return false;
        }
        head.0 = self.alloc(leaf, head.0);
        true
    }

    /// Move every leaf of `head` to `out`, emptying it.
    pub(super) fn drain(&mut self, head: &mut Head, out: &mut Vec<Leaf>) {
        let mut at = core::mem::take(head).0;
        while let Some(n) = self.node(at) {
            out.push(n.leaf);
            at = self.release(at);
        }
    }

    /// Keep the leaves of `head` for which `keep` says so, giving the
    /// others' nodes back (in list order).
    pub(super) fn retain(&mut self, head: &mut Head, mut keep: impl FnMut(&Leaf) -> bool) {
        let mut prev = NIL;
        let mut at = head.0;
        while let Some(n) = self.node(at).copied() {
            if keep(&n.leaf) {
                prev = at;
                at = n.next;
                continue;
            }
            let next = self.release(at);
            match self.nodes.get_mut(prev as usize) {
                Some(p) => p.next = next,
                None => head.0 = next,
            }
            at = next;
        }
    }

    /// Forget every list.
    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.free = NIL;
    }

    /// Nodes in use (for tests).
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        let mut free = 0;
        let mut at = self.free;
        while let Some(n) = self.node(at) {
            free += 1;
            at = n.next;
        }
        self.nodes.len() - free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(page: u64) -> Leaf {
        Leaf {
            root: 1,
            page,
            shift: 12,
        }
    }

    #[test]
    fn lists_share_one_arena_and_reuse_freed_nodes() {
        let mut lists = LeafLists::default();
        let (mut a, mut b) = (Head::default(), Head::default());
        assert!(lists.insert(&mut a, leaf(0x1000)));
        assert!(!lists.insert(&mut a, leaf(0x1000)), "no duplicates");
        assert!(lists.insert(&mut a, leaf(0x2000)));
        assert!(lists.insert(&mut b, leaf(0x3000)));
        assert_eq!(lists.iter(a).count(), 2);
        assert!(lists.any(b, |l| l.page == 0x3000));
        let mut out = Vec::new();
        lists.drain(&mut a, &mut out);
        assert!(a.is_empty());
        out.sort_by_key(|l| l.page);
        assert_eq!(out, [leaf(0x1000), leaf(0x2000)]);
        assert_eq!(lists.live(), 1);
        // The freed nodes are used again: the arena does not grow.
        assert!(lists.insert(&mut a, leaf(0x4000)));
        assert!(lists.insert(&mut b, leaf(0x5000)));
        assert_eq!(lists.nodes.len(), 3);
        assert_eq!(
            lists.iter(b).map(|l| l.page).collect::<Vec<_>>(),
            [0x5000, 0x3000]
        );
    }

    #[test]
    fn retain_unlinks_the_front_middle_and_back() {
        let mut lists = LeafLists::default();
        let mut h = Head::default();
        for p in 1..=5u64 {
            lists.insert(&mut h, leaf(p << 12));
        }
        // Front first: 5, 4, 3, 2, 1.
        lists.retain(&mut h, |l| l.page == 0x4000 || l.page == 0x2000);
        assert_eq!(
            lists.iter(h).map(|l| l.page).collect::<Vec<_>>(),
            [0x4000, 0x2000]
        );
        assert_eq!(lists.live(), 2);
        lists.retain(&mut h, |_| false);
        assert!(h.is_empty());
        assert_eq!(lists.live(), 0);
    }
}
