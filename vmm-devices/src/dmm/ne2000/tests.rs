//! The NE2000 monitor driven through the device manager as a guest driver
//! drives the card (register sequences after the DP8390 datasheet and the
//! Linux `ne`/`8390` drivers), with recorded hardware behind it.

use super::*;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use vmm_core::dmm::{Dmm, PassthroughDevice, PortEvent, PortWindow, RecordingPorts, SharedDmm};
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::{Vm, VmId};

const BASE: u16 = 0x300;

struct Rig {
    hw: RecordingPorts,
    dmm: SharedDmm<Ne2000Monitor>,
    vms: Vec<Vm>,
    irqs: Vec<Arc<TestIrqLine>>,
}

fn rig(guests: u32) -> Rig {
    let host = Arc::new(TestHost::new());
    let hw = RecordingPorts::new();
    let dmm = Dmm::new(
        "ne2k",
        Box::new(hw.clone()),
        &[PortWindow::identity(BASE, NE2000_PORTS)],
    )
    .unwrap()
    .into_shared();
    let mut vms = Vec::new();
    let mut irqs = Vec::new();
    for i in 0..guests {
        let irq = TestIrqLine::new();
        let direct = dmm
            .lock()
            .add_guest(
                VmId(i),
                Ne2000Monitor::new(BASE, Ne2000Layout::NE2000),
                irq.clone(),
            )
            .unwrap();
        let mut vm = TestVmBuilder::new(host.clone(), i)
            .ram(1 << 20)
            .device(
                PassthroughDevice::new("ne2k", dmm.clone()),
                &[(BASE, NE2000_PORTS)],
                &[],
            )
            .build()
            .unwrap();
        vm.add_direct_ports(direct);
        vms.push(vm);
        irqs.push(irq);
    }
    Rig { hw, dmm, vms, irqs }
}

impl Rig {
    fn out(&mut self, vm: usize, off: u16, v: u8) {
        self.vms[vm].port_write(BASE + off, &[v]);
    }
    fn inb(&mut self, vm: usize, off: u16) -> u8 {
        let mut b = [0u8];
        self.vms[vm].port_read(BASE + off, &mut b);
        b[0]
    }
    fn state(&self, vm: u32) -> Ne2000State {
        self.dmm.lock().monitor(VmId(vm)).unwrap().state()
    }
    fn denials(&self, vm: u32) -> u64 {
        self.dmm.lock().monitor(VmId(vm)).unwrap().denials()
    }
    fn hooked(&self, vm: u32, off: u16) -> bool {
        self.dmm
            .lock()
            .monitor(VmId(vm))
            .unwrap()
            .is_hooked(BASE + off)
    }
    fn direct(&self, vm: u32, off: u16) -> bool {
        self.dmm
            .lock()
            .direct_ports(VmId(vm))
            .unwrap()
            .contains(BASE + off)
    }
    /// The last value the hardware got at `off`.
    fn hw_last(&self, off: u16) -> Option<u32> {
        self.hw.writes_to(BASE + off).last().copied()
    }
    /// The `8390` driver's initialisation, ring at `pstart..pstop`, station
    /// address 52:54:00:12:34:56; leaves the card stopped on page 0.
    fn init(&mut self, vm: usize, pstart: u8, pstop: u8) {
        self.out(vm, CR, 0x21);
        self.out(vm, DCR, 0x49);
        self.out(vm, RBCR0, 0);
        self.out(vm, RBCR1, 0);
        self.out(vm, RCR, 0x04);
        self.out(vm, TCR, 0x02);
        self.out(vm, PSTART, pstart);
        self.out(vm, PSTOP, pstop);
        self.out(vm, BNRY, pstart);
        self.out(vm, ISR, 0xff);
        self.out(vm, IMR, 0x00);
        self.out(vm, CR, 0x61);
        for (i, b) in [0x52u8, 0x54, 0, 0x12, 0x34, 0x56].into_iter().enumerate() {
            self.out(vm, 1 + i as u16, b);
        }
        self.out(vm, CURR, pstart + 1);
        self.out(vm, CR, 0x21);
    }
    fn start(&mut self, vm: usize) {
        self.out(vm, CR, 0x22);
        self.out(vm, TCR, 0x00);
    }
    fn remote(&mut self, vm: usize, start: u16, len: u16, cmd: u8) {
        self.out(vm, RBCR0, len as u8);
        self.out(vm, RBCR1, (len >> 8) as u8);
        self.out(vm, RSAR0, start as u8);
        self.out(vm, RSAR1, (start >> 8) as u8);
        self.out(vm, CR, cmd);
    }
    fn transmit(&mut self, vm: usize, tpsr: u8, len: u16) {
        self.out(vm, TPSR, tpsr);
        self.out(vm, TBCR0, len as u8);
        self.out(vm, TBCR1, (len >> 8) as u8);
        self.out(vm, CR, 0x26);
    }
}

#[test]
fn initialisation_reaches_the_hardware_and_starting_over_a_good_ring_is_approved() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    r.start(0);
    assert_eq!(r.state(0), Ne2000State::Running);
    assert_eq!(r.hw_last(CR), Some(0x22));
    // Offsets 1 and 2 are PAR0/PAR1 on page 1 as well: look for the values.
    assert!(r.hw.writes_to(BASE + PSTART).contains(&0x46));
    assert!(r.hw.writes_to(BASE + PSTOP).contains(&0x80));
    assert_eq!(r.denials(0), 0);
    // Stop: Running -> Stopped, always honoured.
    r.out(0, CR, 0x21);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    assert_eq!(r.hw_last(CR), Some(0x21));
}

#[test]
fn a_ring_outside_card_memory_is_denied_and_the_card_stays_stopped() {
    let mut r = rig(1);
    // 0x80..0x90 is past the 16 KiB of buffer memory (0x4000-0x7fff).
    r.init(0, 0x80, 0x90);
    r.out(0, CR, 0x22);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    assert_eq!(r.denials(0), 1);
    let cr = r.hw_last(CR).unwrap() as u8;
    assert_eq!(cr & CR_STA, 0, "the start must not reach the card");
    assert_ne!(cr & CR_STP, 0);
}

#[test]
fn an_empty_ring_and_ring_pointers_outside_the_ring_are_denied() {
    let mut r = rig(1);
    r.init(0, 0x50, 0x50);
    r.out(0, CR, 0x22);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.out(0, CR, 0x61);
    r.out(0, CURR, 0x20);
    r.out(0, CR, 0x22);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    assert_eq!(r.denials(0), 1);
}

#[test]
fn monitor_mode_needs_no_ring_so_the_probe_sequence_starts() {
    // Linux's ne probe: RCR monitor mode, no ring, start + remote read of
    // the station-address PROM.
    let mut r = rig(1);
    r.out(0, CR, 0x21);
    r.out(0, DCR, 0x48);
    r.out(0, RCR, 0x20);
    r.remote(0, 0, 32, 0x0a);
    assert_eq!(r.state(0), Ne2000State::RemoteRead);
    assert_eq!(r.hw_last(CR), Some(0x0a));
    assert!(
        !r.hooked(0, DATA),
        "an approved remote DMA streams directly"
    );
    assert!(r.direct(0, DATA));
    assert_eq!(r.denials(0), 0);
}

#[test]
fn remote_dma_inside_card_memory_is_approved_and_ends_on_rdc() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.remote(0, 0x4000, 64, 0x12);
    assert_eq!(r.state(0), Ne2000State::RemoteWrite);
    assert!(!r.hooked(0, DATA));
    // The card finishes: ISR.RDC; the driver reads ISR (hooked).
    r.hw.set_read(BASE + ISR, u32::from(ISR_RDC));
    assert_eq!(r.inb(0, ISR) & ISR_RDC, ISR_RDC);
    assert_eq!(r.state(0), Ne2000State::Running);
    assert!(
        r.hooked(0, DATA),
        "no remote DMA: the data port is hooked again"
    );
    assert!(!r.direct(0, DATA));
}

#[test]
fn remote_dma_outside_card_memory_is_denied_and_the_data_port_is_dead() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.hw.clear();
    // 0x7f00 + 0x200 runs past the end of buffer memory.
    r.remote(0, 0x7f00, 0x200, 0x0a);
    assert_eq!(r.state(0), Ne2000State::Running);
    assert_eq!(r.denials(0), 1);
    assert_eq!(
        r.hw_last(CR).map(|c| c as u8 & CR_RD_MASK),
        Some(CR_RD_ABORT)
    );
    assert!(r.hooked(0, DATA));
    r.hw.set_read(BASE + DATA, 0x1234);
    let mut w = [0u8; 2];
    r.vms[0].port_read(BASE + DATA, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    r.vms[0].port_write(BASE + DATA, &[1, 2]);
    assert!(
        !r.hw.events().iter().any(|e| matches!(e,
            PortEvent::Read { port, .. } | PortEvent::Write { port, .. } if *port == BASE + DATA)),
        "nothing moved through the data port"
    );
    // A remote write to the PROM is refused too.
    r.remote(0, 0x0000, 0x10, 0x12);
    assert_eq!(r.denials(0), 2);
}

#[test]
fn re_aiming_a_running_remote_dma_is_judged() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.remote(0, 0x4000, 0x100, 0x12);
    r.hw.clear();
    // Inside: approved and forwarded.
    r.out(0, RSAR1, 0x50);
    assert_eq!(r.hw_last(RSAR1), Some(0x50));
    assert_eq!(r.state(0), Ne2000State::RemoteWrite);
    // Outside: denied, not forwarded, data port dead.
    r.out(0, RSAR1, 0x90);
    assert_eq!(r.hw_last(RSAR1), Some(0x50));
    assert_eq!(r.denials(0), 1);
    assert!(r.hooked(0, DATA));
}

#[test]
fn transmit_from_card_memory_is_approved_and_completes_when_txp_clears() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.transmit(0, 0x40, 60);
    assert_eq!(r.state(0), Ne2000State::Transmitting);
    assert_eq!(r.hw_last(CR), Some(0x26));
    assert!(!r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    // The card finished: CR.TXP reads clear.
    r.hw.set_read(BASE + CR, 0x22);
    r.inb(0, CR);
    assert_eq!(r.state(0), Ne2000State::Running);
}

#[test]
fn bad_transmits_are_denied_and_reported_as_a_transmit_error() {
    for (tpsr, len) in [
        (0x40u8, 0u16),
        (0x40, 1537),
        (0x7f, 600),
        (0x10, 60),
        (0x50, 60),
    ] {
        let mut r = rig(1);
        r.init(0, 0x46, 0x80);
        r.start(0);
        r.hw.set_read(BASE + ISR, 0);
        r.hw.set_read(BASE + TSR, 0);
        r.transmit(0, tpsr, len);
        assert_eq!(r.state(0), Ne2000State::Running, "tpsr {tpsr:#x} len {len}");
        assert_eq!(r.denials(0), 1, "tpsr {tpsr:#x} len {len}");
        assert_eq!(r.hw_last(CR).map(|c| c as u8 & CR_TXP), Some(0));
        assert_eq!(r.inb(0, ISR) & ISR_TXE, ISR_TXE);
        assert_eq!(r.inb(0, TSR) & TSR_ABT, TSR_ABT);
        assert!(!r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
        // Acknowledged, the error goes away.
        r.out(0, ISR, ISR_TXE);
        assert_eq!(r.inb(0, ISR) & ISR_TXE, 0);
    }
}

#[test]
fn transmitting_while_stopped_is_not_a_transition_of_the_card() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.out(0, TPSR, 0x40);
    r.out(0, TBCR0, 60);
    r.out(0, CR, 0x25);
    assert_eq!(r.denials(0), 0, "STP wins: the stop is honoured");
    r.out(0, CR, 0x06 | CR_RD_ABORT);
    // Start + TXP together: start approved, transmit judged from Running.
    assert_eq!(r.state(0), Ne2000State::Transmitting);
}

#[test]
fn moving_the_ring_while_receiving_is_judged() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.out(0, BNRY, 0x50);
    assert_eq!(r.hw_last(BNRY), Some(0x50));
    r.out(0, BNRY, 0x90);
    assert_eq!(
        r.hw_last(BNRY),
        Some(0x50),
        "BNRY outside the ring not forwarded"
    );
    r.out(0, PSTOP, 0xc0);
    assert!(!r.hw.writes_to(BASE + PSTOP).contains(&0xc0));
    assert_eq!(r.denials(0), 2);
    // Leaving monitor mode needs a good ring; entering it needs none.
    r.out(0, RCR, 0x20);
    assert_eq!(r.hw_last(RCR), Some(0x20));
}

#[test]
fn the_hooked_list_follows_the_page_and_the_remote_dma() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    // Page 0: TCR unhooked, the rest hooked.
    assert!(r.hooked(0, CR));
    assert!(r.hooked(0, PSTART));
    assert!(r.hooked(0, ISR));
    assert!(!r.hooked(0, TCR));
    assert!(r.direct(0, TCR));
    assert!(!r.direct(0, PSTART));
    // Page 1: PAR and MAR unhooked, CURR hooked.
    r.out(0, CR, 0x61);
    for off in (1..=6).chain(8..=15) {
        assert!(!r.hooked(0, off), "page 1 offset {off:#x}");
        assert!(r.direct(0, off), "page 1 offset {off:#x}");
    }
    assert!(r.hooked(0, CURR));
    // Page 2: all hooked; writes dropped.
    r.out(0, CR, 0xa1);
    assert!(r.hooked(0, 3));
    r.hw.clear();
    r.out(0, 3, 0x99);
    assert!(r.hw.writes_to(BASE + 3).is_empty());
    // Reset port always hooked.
    assert!(r.hooked(0, RESET));
    assert!(r.hooked(0, 0x1f));
}

#[test]
fn reading_the_reset_port_resets_the_model() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.remote(0, 0x4000, 8, 0x12);
    r.inb(0, RESET);
    assert_eq!(r.state(0), Ne2000State::Stopped);
    assert!(r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
}

#[test]
fn unhooked_ports_are_counted_when_they_exit_anyway() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    let before = r.dmm.lock().stats(VmId(0)).unwrap();
    r.out(0, TCR, 0);
    let after = r.dmm.lock().stats(VmId(0)).unwrap();
    assert_eq!(after.unhooked_exits, before.unhooked_exits + 1);
    assert_eq!(after.hooked_exits, before.hooked_exits);
    assert_eq!(r.hw_last(TCR), Some(0));
}

#[test]
fn a_second_guest_waits_while_the_card_runs_and_takes_it_once_stopped() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.start(0);
    assert_eq!(r.dmm.lock().holder(), Some(VmId(0)));
    // Guest 1 touches the card: blocked, nothing reaches the hardware.
    r.hw.clear();
    assert!(
        r.vms[1].port_write(BASE + CR, &[0x21]).is_retry(),
        "the access must be retried"
    );
    assert!(r.hw.events().is_empty());
    assert_eq!(r.dmm.lock().stats(VmId(1)).unwrap().blocked, 1);
    assert_eq!(r.dmm.lock().waiters(), alloc::vec![VmId(1)]);
    // Guest 0's direct ports are its own; guest 1 has none.
    assert!(r.direct(0, TCR));
    assert!(!r.direct(1, TCR));
    // Guest 0 stops the card: reusable. Guest 1's retry takes it.
    r.out(0, CR, 0x21);
    assert!(!r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(1)));
    assert!(!r.direct(0, TCR), "the old holder loses direct access");
    assert!(r.direct(1, TCR));
    // The card memory was scrubbed with a remote write of zeros over
    // 0x4000-0x7fff before guest 1 got it.
    let zeros = r.hw.writes_to(BASE + DATA);
    assert_eq!(zeros.len(), 0x4000 / 2);
    assert!(zeros.iter().all(|v| *v == 0));
    // Guest 0 wants it back: it waits until guest 1 stops again.
    r.init(1, 0x46, 0x80);
    r.start(1);
    assert!(r.vms[0].port_write(BASE + CR, &[0x22]).is_retry());
    r.out(1, CR, 0x21);
    assert!(!r.vms[0].port_write(BASE + CR, &[0x22]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(0)));
    // Guest 0's configuration was put back before its command.
    assert!(r.hw.writes_to(BASE + PSTART).contains(&0x46));
    assert_eq!(r.state(0), Ne2000State::Running);
}

#[test]
fn a_blocked_read_returns_to_the_guest_only_on_retry() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.start(0);
    let mut b = [0u8];
    assert!(r.vms[1].port_read(BASE + ISR, &mut b).is_retry());
}

#[test]
fn interrupts_go_to_the_holder_and_an_unacknowledged_one_keeps_the_card() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.out(0, IMR, 0x01);
    r.start(0);
    assert_eq!(r.dmm.lock().physical_interrupt(), Some(VmId(0)));
    assert_eq!(r.irqs[0].rising_edges(), 1);
    assert_eq!(r.irqs[1].rising_edges(), 0);
    // Stopped but not acknowledged: still not reusable.
    r.out(0, CR, 0x21);
    r.hw.set_read(BASE + ISR, 0x01);
    assert!(r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    // Acknowledged (the card's ISR reads clear): reusable.
    r.hw.set_read(BASE + ISR, 0);
    r.out(0, ISR, 0x01);
    assert!(r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    assert!(!r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    assert_eq!(r.dmm.lock().physical_interrupt(), Some(VmId(1)));
    assert_eq!(r.irqs[1].rising_edges(), 1);
    assert_eq!(r.dmm.lock().stats(VmId(1)).unwrap().interrupts, 1);
}

#[test]
fn every_declared_transition_and_no_other() {
    use Ne2000State::*;
    let m = Ne2000Model {
        layout: Ne2000Layout::NE2000,
        plan: Ne2000Plan::Nothing,
    };
    let all = [Stopped, Running, RemoteRead, RemoteWrite, Transmitting];
    let mut declared = 0;
    for from in all {
        for to in all {
            if m.declared(from, to) {
                declared += 1;
            }
        }
    }
    assert_eq!(declared, 17);
    assert!(!m.declared(Stopped, Transmitting));
    assert!(!m.declared(Stopped, Stopped));
    assert!(!m.declared(RemoteRead, RemoteWrite));
    assert!(!m.declared(Transmitting, RemoteRead));
    assert!(m.is_reusable(Stopped));
    for s in [Running, RemoteRead, RemoteWrite, Transmitting] {
        assert!(!m.is_reusable(s));
    }
}

#[test]
fn a_holder_that_left_the_card_reusable_yields_to_a_waiting_guest() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.start(0);
    assert!(r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    // Guest 0 stops the card and, before guest 1 retries, touches it
    // again: guest 1 was first in line, so guest 0 now waits.
    r.out(0, CR, 0x21);
    assert!(r.vms[0].port_write(BASE + CR, &[0x21]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(1)));
    assert!(r.direct(1, TCR) && !r.direct(0, TCR));
    // Guest 1 was handed a stopped, reusable card but keeps it until it has
    // used it: guest 0's retry still waits.
    assert!(r.vms[0].port_write(BASE + CR, &[0x21]).is_retry());
    assert!(!r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    assert_eq!(r.dmm.lock().stats(VmId(1)).unwrap().acquisitions, 1);
}

#[test]
fn a_guest_that_stops_for_good_gives_the_card_up_and_the_next_gets_it_scrubbed() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.dmm.lock().guest_stopped(VmId(0));
    assert_eq!(r.dmm.lock().holder(), None);
    assert!(!r.direct(0, TCR));
    r.hw.clear();
    assert!(!r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(1)));
    assert_eq!(r.hw.writes_to(BASE + DATA).len(), 0x4000 / 2, "scrubbed");
}

#[test]
fn the_vm_sees_its_pass_through_ports_change_generation() {
    let mut r = rig(2);
    let g0 = r.vms[0].direct_ports_generation();
    r.init(0, 0x46, 0x80);
    assert_ne!(r.vms[0].direct_ports_generation(), g0);
    let g1 = r.vms[1].direct_ports_generation();
    assert!(!r.vms[1].port_write(BASE + CR, &[0x21]).is_retry());
    assert_ne!(
        r.vms[1].direct_ports_generation(),
        g1,
        "the new holder's map changes"
    );
    assert!(r.vms[0]
        .direct_ports()
        .iter()
        .all(|d| d.ranges().is_empty()));
}

#[test]
fn a_finished_transmit_is_seen_in_isr_or_before_the_next_command() {
    let mut r = rig(1);
    r.init(0, 0x46, 0x80);
    r.start(0);
    r.transmit(0, 0x40, 60);
    r.hw.set_read(BASE + ISR, u32::from(ISR_PTX));
    assert_eq!(r.inb(0, ISR) & ISR_PTX, ISR_PTX);
    assert_eq!(r.state(0), Ne2000State::Running);
    // Or: the next command finds CR.TXP clear and a remote read may start.
    r.transmit(0, 0x40, 60);
    r.hw.set_read(BASE + CR, 0x22);
    r.remote(0, 0x4600, 4, 0x0a);
    assert_eq!(r.state(0), Ne2000State::RemoteRead);
    assert_eq!(r.denials(0), 0);
}

#[test]
fn an_access_that_takes_the_card_is_not_an_unhooked_exit() {
    let mut r = rig(2);
    r.init(0, 0x46, 0x80);
    r.start(0);
    // Guest 1 writes TCR (unhooked on page 0) while guest 0 holds the card.
    assert!(r.vms[1].port_write(BASE + TCR, &[0]).is_retry());
    r.out(0, CR, 0x21);
    assert!(!r.vms[1].port_write(BASE + TCR, &[0]).is_retry());
    let s = r.dmm.lock().stats(VmId(1)).unwrap();
    assert_eq!((s.unhooked_exits, s.acquisitions, s.blocked), (0, 1, 1));
    // Once it holds the card, an unhooked port that exits is counted.
    r.vms[1].port_write(BASE + TCR, &[0]);
    assert_eq!(r.dmm.lock().stats(VmId(1)).unwrap().unhooked_exits, 1);
}
