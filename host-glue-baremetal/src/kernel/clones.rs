//! `clones=N`: fork VM 0 into N clones once its console prints the marker.
//!
//! The parent PC's RAM is frozen and shared copy-on-write
//! (`vmm_devices::pc::Pc::share_ram`): nested paging, or a clone's shadow pager, maps it
//! read-only in every clone, and a clone's first write to a page copies it
//! (`vmm_core::cow`). Each clone is a fresh PC built as the parent was (its
//! own console `[vm k]`, CD drive, network port and MAC, as many vCPUs),
//! on fresh vCPUs made as the parent's were (with shadow paging a pager of
//! its own whose caches start empty), with the parent's device state and
//! every vCPU's (`vmm_devices::pc::Pc::fork_from_vcpus`: a halted AP stays halted, one
//! waiting for its start-up IPI keeps waiting) and its identity
//! (`vmm_devices::pc::Pc::set_clone_identity`: its index in CMOS, a MAC and
//! disk serials derived from the parent's, as on the Linux host). The parent stays paused; the clones run like
//! any VM, and one that fails stops alone. When every VM stopped the host
//! checks that the parent's RAM is what it was at the fork
//! ([`Forked::check`]).

use super::backend::{Backend, Vcpu};
use super::pc::{self, Media, Options};
use super::{time, Guest, Machine};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use host_glue_baremetal::cmdline::Config;
use vmm_core::host::Host;
use vmm_core::vcpu::MsrFile;
use vmm_devices::net_switch::VirtualSwitch;
use vmm_devices::pc::PcRam;

/// How the parent PC was built, to build its clones the same way.
pub struct Recipe {
    /// The guest's name (`pc`, or a `pc_*` program's).
    pub name: &'static str,
    /// Its firmware.
    pub firmware: &'static [u8],
    /// Its media.
    pub media: Media<'static>,
    /// Its options (a clone's keyboard is nobody's and its console watched
    /// for nothing).
    pub options: Options,
}

/// The parent's RAM as the fork left it, to check at the end that no
/// clone's write reached it.
pub struct Forked {
    ram: PcRam,
    fingerprint: u64,
}

impl Forked {
    /// Print whether the parent's RAM is as it was at the fork (its
    /// fingerprint, [`PcRam::fingerprint`]); `false` if it changed.
    pub fn check(&self) -> bool {
        let now = self.ram.fingerprint();
        if now == self.fingerprint {
            crate::kprintln!(
                "vm 0: RAM shared with the clones unchanged since the fork ({} MiB, fingerprint {now:016x})",
                self.ram.len() >> 20
            );
            true
        } else {
            crate::kprintln!(
                "vm 0: RAM shared with the clones CHANGED since the fork (fingerprint {:016x}, now {now:016x})",
                self.fingerprint
            );
            false
        }
    }
}

/// Fork `guests[0]` into `config.clones` clones, appended as VMs 1 to
/// `config.clones`, each with the parent's vCPU count and paging.
pub fn fork(
    guests: &mut Vec<Guest<'_>>,
    recipe: &Recipe,
    config: &Config,
    host: &Arc<dyn Host>,
    backend: &Backend,
    switch: Option<&VirtualSwitch>,
) -> Result<Forked, String> {
    let count = config.clones;
    let guest_mem = config.guest_mem;
    let started = time::now_ns();
    let heap_before = super::heap::usage().used;
    let (first, _) = guests.split_at_mut(1);
    let parent = &mut first[0];
    let Machine::Pc(parent_pc) = &mut parent.machine else {
        return Err(String::from("VM 0 is not a PC"));
    };
    let exits = parent_pc.vm().stats().total();
    let ram = parent_pc.share_ram().map_err(|e| format!("{e}"))?;
    let mut made: Vec<Guest<'_>> = Vec::new();
    for k in 1..=count {
        let options = Options {
            input: None,
            watches: Vec::new(),
            ..recipe.options.clone()
        };
        let mut clone = pc::build(
            host.clone(),
            k,
            guest_mem,
            recipe.firmware,
            recipe.media,
            options,
            switch.map(VirtualSwitch::port),
            Some(&ram),
        )
        .map_err(|e| format!("VM {k}: {e}"))?;
        let mut vcpus = super::make_vcpus_for(clone.vm(), clone.cpus(), backend, config, k);
        Vcpu::fork_all(&mut parent.vcpus, parent_pc, &mut clone, &mut vcpus)
            .map_err(|e| format!("VM {k}: {e}"))?;
        // k is 1..=64 (`clones=` takes at most 64): the CMOS index, and a
        // MAC and disk serials of its own (`vmm_devices::clone_identity`).
        if let Some(index) = u8::try_from(k).ok().and_then(core::num::NonZeroU8::new) {
            clone.set_clone_identity(index);
        }
        made.push(Guest {
            name: recipe.name,
            machine: Machine::Pc(Box::new(clone)),
            vcpus,
            msrs: MsrFile::with_wall_clock(pc::RTC_EPOCH as u64),
            stopped: None,
            next_roundtrip: 0,
            roundtrips: 0,
            keys: None,
            screen: Vec::new(),
            next_screen_ns: 0,
            shot: super::Steady::default(),
            next_shot_ns: 0,
            planted: super::gdb::Planted::default(),
            forked: None,
        });
    }
    parent.forked = Some(count);
    let took = time::now_ns() - started;
    let grew = super::heap::usage().used.saturating_sub(heap_before);
    crate::kprintln!(
        "vmm: VM 0 forked after {exits} exits into {count} clones in {} us ({} us per clone); {} MiB of RAM shared copy-on-write; host heap grew by {} KiB ({} KiB per clone)",
        took / 1000,
        took / 1000 / u64::from(count.max(1)),
        ram.len() >> 20,
        grew / 1024,
        grew / 1024 / u64::from(count.max(1))
    );
    guests.extend(made);
    let fingerprint = ram.fingerprint();
    Ok(Forked { ram, fingerprint })
}

/// The host pages a guest's shadow page tables hold (its vCPUs share one
/// pager), if it runs with shadow paging.
fn shadow_pages(g: &Guest<'_>) -> Option<u64> {
    g.vcpus
        .first()
        .and_then(Vcpu::shadow_stats)
        .map(|s| s.pages_in_use)
}

/// For a PC whose RAM is shared copy-on-write: the pages it copied and the
/// host memory it holds of its own for them (and, with shadow paging, what
/// its shadow page tables hold besides).
pub fn print_private_memory(g: &Guest<'_>) {
    let Machine::Pc(pc) = &g.machine else {
        return;
    };
    if !pc.vm().memory().has_shared_blocks() {
        return;
    }
    let (bytes, pages) = pc.private_memory();
    let tables = shadow_pages(g).map_or(String::new(), |p| {
        format!(", and {} KiB of shadow page tables", p * 4)
    });
    crate::kprintln!(
        "vm {}: copy-on-write: {pages} pages copied, {} KiB private{tables}",
        pc.vm().id().0,
        bytes / 1024
    );
}

/// `clone_report_ms=`: the clones' private memory `ms` after the fork, as
/// one line: least, mean and most per clone, and the pages copied in all.
pub fn print_report(guests: &[Guest<'_>], ms: u64) {
    let figures: Vec<(u64, u64)> = guests
        .iter()
        .skip(1)
        .filter_map(|g| match &g.machine {
            Machine::Pc(pc) => Some(pc.private_memory()),
            Machine::Program { .. } => None,
        })
        .collect();
    let n = figures.len().max(1) as u64;
    let bytes = figures.iter().map(|f| f.0);
    crate::kprintln!(
        "vmm: {ms} ms after the fork, private memory per clone ({} clones): min {} KiB, mean {} KiB, max {} KiB; {} pages copied in all",
        figures.len(),
        bytes.clone().min().unwrap_or(0) / 1024,
        bytes.clone().sum::<u64>() / n / 1024,
        bytes.max().unwrap_or(0) / 1024,
        figures.iter().map(|f| f.1).sum::<u64>()
    );
    let tables: Vec<u64> = guests.iter().skip(1).filter_map(shadow_pages).collect();
    if !tables.is_empty() {
        crate::kprintln!(
            "vmm: {ms} ms after the fork, shadow page tables per clone: min {} KiB, mean {} KiB, max {} KiB",
            tables.iter().min().unwrap_or(&0) * 4,
            tables.iter().sum::<u64>() * 4 / tables.len() as u64,
            tables.iter().max().unwrap_or(&0) * 4
        );
    }
}
