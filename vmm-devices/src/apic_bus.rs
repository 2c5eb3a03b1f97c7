//! The APIC bus: how an interrupt message reaches the local APICs of a
//! VM's vCPUs (Intel SDM vol. 3, 11.6 "Issuing Interprocessor Interrupts"
//! and 11.11 for MSIs).
//!
//! A message names a destination (physical: an APIC ID, 0xff for all;
//! logical: a mask in the flat model or a cluster and mask in the cluster
//! model, each APIC deciding by its own LDR and DFR, see
//! `LapicCore::matches`), or an IPI names a shorthand (self, all including
//! self, all excluding self). Delivery modes: fixed to every matching APIC;
//! lowest priority to the one matching enabled APIC with the lowest
//! processor priority (the first of equals); NMI; INIT (not the level
//! de-assert, which only resynchronises arbitration IDs); start-up with its
//! vector page; SMI and ExtINT are not modelled and go nowhere.
//!
//! Nothing here can fail or loop on guest values: every field of every
//! 64-bit ICR value is decoded into one of these cases, and a storm of
//! INITs or NMIs only sets flags the targets take one at a time.

use crate::lapic::LapicCore;
use alloc::sync::Arc;

/// What a message asks of the APICs it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, to every destination.
    Fixed,
    /// The vector, to the destination with the lowest priority.
    LowestPriority,
    /// System management interrupt: not modelled, dropped.
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT: the CPU goes to its INIT state.
    Init,
    /// INIT level de-assert: nothing (arbitration IDs only).
    InitDeassert,
    /// Start-up: a CPU waiting for one starts at the vector's page.
    StartUp,
    /// ExtINT, or the reserved mode 3: not modelled, dropped.
    Other,
}

impl DeliveryMode {
    /// Decode bits 10:8 of an ICR, redirection entry or MSI data, with
    /// the level (bit 14) and trigger (bit 15) bits of an ICR for INIT.
    pub fn decode(mode: u32, level_asserted: bool, level_triggered: bool) -> Self {
        match mode & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 if level_triggered && !level_asserted => Self::InitDeassert,
            5 => Self::Init,
            6 => Self::StartUp,
            _ => Self::Other,
        }
    }
}

/// Which APICs an IPI is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The destination field (physical or logical).
    Destination {
        /// The destination ID or logical mask: 8 bits from an xAPIC ICR,
        /// 32 from an x2APIC one.
        dest: u32,
        /// Logical destination mode.
        logical: bool,
        /// From an x2APIC ICR: `dest` is 32 bits wide (all ones for all).
        wide: bool,
    },
    /// The sender only.
    ToSelf,
    /// Every APIC, the sender included.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

/// An interprocessor interrupt as the ICR describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// The vector (fixed, lowest priority, start-up).
    pub vector: u8,
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// The destinations.
    pub target: Target,
}

impl Ipi {
    /// Decode an ICR write: `low` the value written to ICR low (0x300),
    /// `high` ICR high (0x310) as it is. Every value decodes to something.
    pub fn from_icr(low: u32, high: u32) -> Self {
        let mode = DeliveryMode::decode((low >> 8) & 7, low & (1 << 14) != 0, low & (1 << 15) != 0);
        let target = match (low >> 18) & 3 {
            0 => Target::Destination {
                dest: high >> 24,
                logical: low & (1 << 11) != 0,
                wide: false,
            },
            1 => Target::ToSelf,
            2 => Target::AllIncludingSelf,
            _ => Target::AllExcludingSelf,
        };
        Self {
            vector: low as u8,
            mode,
            target,
        }
    }

    /// Decode a write of the 64-bit x2APIC ICR (MSR 0x830): the low half
    /// as an xAPIC ICR low, the 32-bit destination in bits 63:32.
    pub fn from_x2apic_icr(icr: u64) -> Self {
        let mut ipi = Self::from_icr(icr as u32, 0);
        if let Target::Destination { logical, .. } = ipi.target {
            ipi.target = Target::Destination {
                dest: (icr >> 32) as u32,
                logical,
                wide: true,
            };
        }
        ipi
    }

    /// The x2APIC SELF IPI register's message: a fixed interrupt with
    /// `vector` to the sender.
    pub fn to_self(vector: u8) -> Self {
        Self {
            vector,
            mode: DeliveryMode::Fixed,
            target: Target::ToSelf,
        }
    }
}

/// Send `ipi` from the APIC of vCPU `from` to the APICs of `cores` (index
/// = vCPU index). Returns whether a CPU other than the sender was sent
/// something (the sender may then wait for it to answer).
pub fn send_ipi(cores: &[Arc<LapicCore>], from: usize, ipi: Ipi) -> bool {
    let Some(sender) = cores.get(from) else {
        return false;
    };
    if matches!(ipi.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && ipi.vector < 16 {
        // An illegal vector is the sender's error; nothing is sent.
        sender.send_error();
        return false;
    }
    let chosen = |i: usize, core: &LapicCore| match ipi.target {
        Target::Destination {
            dest,
            logical,
            wide,
        } => core.matches(dest, logical, wide),
        Target::ToSelf => i == from,
        Target::AllIncludingSelf => true,
        Target::AllExcludingSelf => i != from,
    };
    // The SDM calls modes other than fixed invalid with the self
    // shorthand; QEMU carries them out on the sender, and so does this.
    let mut others = false;
    if ipi.mode == DeliveryMode::LowestPriority {
        if let Some(i) = lowest_priority(cores, |i, c| chosen(i, c)) {
            others |= i != from;
            let _ = cores[i].deliver(ipi.vector, false);
        }
        return others;
    }
    for (i, core) in cores.iter().enumerate() {
        if !chosen(i, core) {
            continue;
        }
        if deliver_to(core, ipi.mode, ipi.vector, false) {
            others |= i != from;
        }
    }
    others
}

/// Deliver a message from an I/O APIC or an MSI (never INIT-deassert or
/// start-up in practice, but any mode is handled): `dest` physical or
/// logical, `level` for a level-triggered fixed interrupt. Returns whether
/// some APIC took it.
pub fn deliver_message(
    cores: &[Arc<LapicCore>],
    dest: u8,
    logical: bool,
    mode: DeliveryMode,
    vector: u8,
    level: bool,
) -> bool {
    if mode == DeliveryMode::LowestPriority {
        return match lowest_priority(cores, |_, c| c.matches(dest.into(), logical, false)) {
            Some(i) => cores[i].deliver(vector, level),
            None => false,
        };
    }
    let mut taken = false;
    for core in cores
        .iter()
        .filter(|c| c.matches(dest.into(), logical, false))
    {
        taken |= deliver_to(core, mode, vector, level);
    }
    taken
}

/// The enabled APIC among those `chosen` with the lowest processor
/// priority (the first of equals).
fn lowest_priority(
    cores: &[Arc<LapicCore>],
    chosen: impl Fn(usize, &LapicCore) -> bool,
) -> Option<usize> {
    cores
        .iter()
        .enumerate()
        .filter(|(i, c)| chosen(*i, c) && c.enabled())
        .min_by_key(|(_, c)| c.priority())
        .map(|(i, _)| i)
}

/// One APIC takes one message; whether it did.
fn deliver_to(core: &LapicCore, mode: DeliveryMode, vector: u8, level: bool) -> bool {
    match mode {
        DeliveryMode::Fixed | DeliveryMode::LowestPriority => core.deliver(vector, level),
        DeliveryMode::Nmi => {
            core.deliver_nmi();
            true
        }
        DeliveryMode::Init => {
            core.deliver_init();
            true
        }
        DeliveryMode::StartUp => {
            core.deliver_sipi(vector);
            true
        }
        DeliveryMode::InitDeassert | DeliveryMode::Smi | DeliveryMode::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn cpus(n: u8) -> Vec<Arc<LapicCore>> {
        (0..n).map(|i| LapicCore::new(i, i == 0)).collect()
    }

    fn enable(c: &LapicCore) {
        c.test_write(0xf0, 0x1ff);
    }

    #[test]
    fn fixed_physical_reaches_only_its_destination() {
        let c = cpus(4);
        c.iter().for_each(|c| enable(c));
        let ipi = Ipi::from_icr(0x40, 2 << 24);
        assert!(send_ipi(&c, 0, ipi));
        assert_eq!(c[2].deliverable(), Some(0x40));
        for i in [0, 1, 3] {
            assert_eq!(c[i].deliverable(), None, "cpu {i}");
        }
    }

    #[test]
    fn shorthands() {
        let c = cpus(3);
        c.iter().for_each(|c| enable(c));
        // All excluding self.
        send_ipi(&c, 1, Ipi::from_icr(0x50 | 3 << 18, 0));
        assert_eq!(c[0].acknowledge(), Some(0x50));
        assert_eq!(c[1].acknowledge(), None);
        assert_eq!(c[2].acknowledge(), Some(0x50));
        // All including self.
        send_ipi(&c, 1, Ipi::from_icr(0x61 | 2 << 18, 0));
        assert!(c.iter().all(|c| c.acknowledge() == Some(0x61)));
        // Self.
        assert!(!send_ipi(&c, 2, Ipi::from_icr(0x72 | 1 << 18, 0)));
        assert_eq!(c[2].acknowledge(), Some(0x72));
        assert_eq!(c[0].acknowledge(), None);
        // Broadcast physical 0xff.
        send_ipi(&c, 0, Ipi::from_icr(0x83, 0xff << 24));
        assert!(c.iter().all(|c| c.acknowledge() == Some(0x83)));
    }

    #[test]
    fn logical_flat_and_cluster() {
        let c = cpus(4);
        for (i, core) in c.iter().enumerate() {
            enable(core);
            core.test_write(0xd0, (1u32 << i) << 24);
        }
        // Flat: mask 0b1010 reaches CPUs 1 and 3.
        send_ipi(&c, 0, Ipi::from_icr(0x60 | 1 << 11, 0x0a << 24));
        let got: Vec<bool> = c.iter().map(|c| c.acknowledge() == Some(0x60)).collect();
        assert_eq!(got, [false, true, false, true]);
        // Cluster model: cluster 1 members 0b0011 reach CPUs with LDR 0x11
        // and 0x12, not cluster 0's.
        for (i, core) in c.iter().enumerate() {
            core.test_write(0xe0, 0x0fff_ffff);
            let ldr = if i < 2 { 0x10 | (1 << i) } else { 1 << (i - 2) };
            core.test_write(0xd0, (ldr as u32) << 24);
        }
        send_ipi(&c, 0, Ipi::from_icr(0x71 | 1 << 11, 0x13 << 24));
        let got: Vec<bool> = c.iter().map(|c| c.acknowledge() == Some(0x71)).collect();
        assert_eq!(got, [true, true, false, false]);
        // Cluster broadcast 0xf_: every cluster, member bits still apply.
        send_ipi(&c, 0, Ipi::from_icr(0x82 | 1 << 11, 0xf1 << 24));
        let got: Vec<bool> = c.iter().map(|c| c.acknowledge() == Some(0x82)).collect();
        assert_eq!(got, [true, false, true, false]);
    }

    #[test]
    fn lowest_priority_picks_one() {
        let c = cpus(3);
        c.iter().for_each(|c| enable(c));
        c[0].test_write(0x80, 0x40);
        c[1].test_write(0x80, 0x20);
        c[2].test_write(0x80, 0x30);
        send_ipi(&c, 0, Ipi::from_icr(0x70 | 1 << 8 | 2 << 18, 0));
        let got: Vec<bool> = c.iter().map(|c| c.deliverable().is_some()).collect();
        assert_eq!(got, [false, true, false]);
    }

    #[test]
    fn init_sipi_starts_an_ap_once() {
        let c = cpus(2);
        assert!(c[1].waiting_for_sipi());
        assert!(!c[0].waiting_for_sipi());
        // INIT assert, INIT de-assert, SIPI, SIPI.
        send_ipi(&c, 0, Ipi::from_icr(0x4500, 1 << 24));
        send_ipi(&c, 0, Ipi::from_icr(0x8500, 1 << 24));
        assert!(c[1].take_init());
        send_ipi(&c, 0, Ipi::from_icr(0x4608, 1 << 24));
        send_ipi(&c, 0, Ipi::from_icr(0x4609, 1 << 24));
        assert_eq!(c[1].take_sipi(), Some(0x08));
        assert!(!c[1].waiting_for_sipi());
        assert_eq!(c[1].take_sipi(), None);
        // A SIPI to a running CPU is ignored.
        send_ipi(&c, 0, Ipi::from_icr(0x460a, 1 << 24));
        assert_eq!(c[1].take_sipi(), None);
    }

    #[test]
    fn nmi_and_illegal_vectors() {
        let c = cpus(2);
        c.iter().for_each(|c| enable(c));
        send_ipi(&c, 0, Ipi::from_icr(0x400, 1 << 24));
        assert!(c[1].take_nmi());
        assert!(!c[0].take_nmi());
        // Fixed vector 5: the sender's error, nothing sent.
        assert!(!send_ipi(&c, 0, Ipi::from_icr(0x05, 1 << 24)));
        assert_eq!(c[1].deliverable(), None);
        // SMI goes nowhere.
        assert!(!send_ipi(&c, 0, Ipi::from_icr(0x200, 1 << 24)));
    }

    #[test]
    fn every_icr_value_decodes() {
        let c = cpus(3);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let from = (x >> 60) as usize % 4;
            send_ipi(&c, from, Ipi::from_icr(x as u32, (x >> 32) as u32));
        }
    }
}
