//! 8254 PIT: every counter mode, latch and read-back, access modes, BCD,
//! gate and output through port 0x61, and IRQ 0 from host time. The test
//! host's clock is manual, so every tick is exact.

use std::sync::Arc;
use vmm_core::host::Host;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::pit::{Pit, PIT_HZ, PIT_PORTS, PORT_B};

struct Rig {
    vm: Vm,
    host: Arc<TestHost>,
    irq0: Arc<TestIrqLine>,
}

fn rig() -> Rig {
    let host = Arc::new(TestHost::new());
    // Start away from zero so that nothing depends on the origin.
    host.advance_ns(5_000_000_123);
    let irq0 = TestIrqLine::new();
    let vm = TestVmBuilder::new(host.clone(), 1)
        .device(Pit::new(irq0.clone()), &[PIT_PORTS, PORT_B], &[])
        .build()
        .unwrap();
    Rig { vm, host, irq0 }
}

/// Host nanoseconds for `ticks` PIT clocks, rounded up.
fn ns(ticks: u64) -> u64 {
    (ticks * 1_000_000_000).div_ceil(PIT_HZ)
}

impl Rig {
    fn out(&mut self, port: u16, v: u8) {
        self.vm.port_write(port, &[v]);
    }
    fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0];
        self.vm.port_read(port, &mut b);
        b[0]
    }
    /// Program counter `c` in `mode` with a 16-bit count (LSB then MSB).
    fn program(&mut self, c: u8, mode: u8, count: u16) {
        self.out(0x43, c << 6 | 0x30 | mode << 1);
        self.out(0x40 + u16::from(c), count as u8);
        self.out(0x40 + u16::from(c), (count >> 8) as u8);
    }
    fn read_count(&mut self, c: u8) -> u16 {
        let lo = self.inb(0x40 + u16::from(c));
        let hi = self.inb(0x40 + u16::from(c));
        u16::from_le_bytes([lo, hi])
    }
    fn advance(&mut self, ns: u64) {
        self.host.advance_ns(ns);
        self.vm.poll_timers();
    }
    fn out2(&mut self) -> bool {
        self.inb(0x61) & 0x20 != 0
    }
}

#[test]
fn mode0_interrupt_on_terminal_count() {
    let mut r = rig();
    r.program(0, 0, 1000);
    assert!(!r.irq0.level(), "OUT low after the count is written");
    r.advance(ns(400));
    assert_eq!(r.read_count(0), 600);
    r.advance(ns(599) - ns(400));
    assert!(!r.irq0.level());
    r.advance(ns(1001) - ns(599));
    assert!(r.irq0.level(), "OUT high at terminal count");
    assert_eq!(r.irq0.rising_edges(), 1);
    // The count wraps and OUT stays high: one interrupt only.
    r.advance(ns(70_000));
    assert_eq!(r.irq0.rising_edges(), 1);
    // Writing a new count drops OUT again.
    r.program(0, 0, 10);
    assert!(!r.irq0.level());
}

#[test]
fn mode0_timer_wakes_the_vm_at_terminal_count() {
    let mut r = rig();
    r.program(0, 0, 1193);
    let now = r.host.now_ns();
    let next = r.vm.poll_timers().expect("a deadline");
    assert!(
        next > now && next - now <= ns(1193) + 1,
        "deadline at terminal count"
    );
    r.host.set_now_ns(next);
    r.vm.poll_timers();
    assert!(r.irq0.level());
}

#[test]
fn mode1_one_shot_is_triggered_by_the_gate() {
    let mut r = rig();
    r.out(0x61, 0x00);
    r.program(2, 1, 100);
    assert!(r.out2(), "OUT high until triggered");
    r.advance(ns(500));
    assert!(r.out2(), "no gate edge, no count");
    r.out(0x61, 0x01);
    assert!(!r.out2(), "trigger: OUT low");
    r.advance(ns(99));
    assert!(!r.out2());
    r.advance(ns(101) - ns(99));
    assert!(r.out2(), "high at terminal count");
    // Retrigger.
    r.out(0x61, 0x00);
    r.out(0x61, 0x01);
    assert!(!r.out2());
}

#[test]
fn mode2_rate_generator_interrupts_every_period() {
    let mut r = rig();
    // 200 counts (168 us): above the PIT's minimum poll interval.
    r.program(0, 2, 200);
    assert!(r.irq0.level(), "OUT idles high");
    for period in 1..=5u64 {
        // Poll just after each period boundary.
        r.host.set_now_ns(r.host.now_ns() + ns(200));
        r.vm.poll_timers();
        // One edge when OUT first went high, then one per period.
        assert_eq!(
            u64::from(r.irq0.rising_edges()),
            1 + period,
            "period {period}"
        );
    }
}

#[test]
fn mode2_count_reloads() {
    let mut r = rig();
    r.program(0, 2, 100);
    r.advance(ns(30));
    let c = r.read_count(0);
    assert!((69..=70).contains(&c), "count {c}");
    r.advance(ns(100));
    let c2 = r.read_count(0);
    assert!((69..=70).contains(&c2), "reloaded, count {c2}");
}

#[test]
fn mode3_square_wave_on_counter_2_via_port_61() {
    let mut r = rig();
    r.out(0x61, 0x03);
    r.program(2, 3, 1000);
    assert!(r.out2(), "high for the first half");
    r.advance(ns(400));
    assert!(r.out2());
    r.advance(ns(600) - ns(400));
    assert!(!r.out2(), "low for the second half");
    r.advance(ns(1001) - ns(600));
    assert!(r.out2(), "high again in the next period");
    assert_eq!(r.inb(0x61) & 0x03, 0x03, "gate and speaker read back");
    // Gate low stops the counter with OUT high.
    r.advance(ns(1600) - ns(1001));
    assert!(!r.out2());
    r.out(0x61, 0x02);
    assert!(r.out2());
}

#[test]
fn mode3_irq0_edges_once_per_period() {
    let mut r = rig();
    r.program(0, 3, 0x2e9c);
    let start = r.irq0.rising_edges();
    for _ in 0..10 {
        let next = r.vm.poll_timers().unwrap();
        r.host.set_now_ns(next);
        r.vm.poll_timers();
    }
    assert_eq!(r.irq0.rising_edges() - start, 10);
}

#[test]
fn mode4_software_strobe_pulses_once() {
    let mut r = rig();
    r.out(0x61, 0x01);
    r.program(2, 4, 50);
    assert!(r.out2());
    r.advance(ns(50));
    assert!(!r.out2(), "one clock low at terminal count");
    r.advance(ns(52) - ns(50));
    assert!(r.out2());
    r.advance(ns(100_000));
    assert!(r.out2(), "no reload");
}

#[test]
fn mode5_hardware_strobe_waits_for_the_gate() {
    let mut r = rig();
    r.out(0x61, 0x00);
    r.program(2, 5, 20);
    r.advance(ns(100));
    assert!(r.out2());
    r.out(0x61, 0x01);
    r.advance(ns(20));
    assert!(!r.out2(), "strobe after the trigger");
    r.advance(ns(22) - ns(20));
    assert!(r.out2());
}

#[test]
fn counter_latch_freezes_the_read_value() {
    let mut r = rig();
    r.program(0, 2, 10_000);
    r.advance(ns(1000));
    r.out(0x43, 0x00);
    r.advance(ns(3000));
    let latched = r.read_count(0);
    assert!((8999..=9000).contains(&latched), "latched {latched}");
    let live = r.read_count(0);
    assert!((5999..=6000).contains(&live), "live {live}");
}

#[test]
fn read_back_latches_status_and_count() {
    let mut r = rig();
    r.program(1, 2, 500);
    r.advance(ns(100));
    // Read-back: latch count and status of counter 1.
    r.out(0x43, 0xc4);
    let status = r.inb(0x41);
    // OUT high, count loaded, LSB/MSB, mode 2, binary.
    assert_eq!(status, 0x80 | 0x30 | 0x04);
    let count = r.read_count(1);
    assert!((399..=400).contains(&count), "count {count}");
    // Status only of a counter whose count was never written: null count.
    r.out(0x43, 0x90);
    r.out(0x43, 0xe8);
    assert_eq!(r.inb(0x42) & 0x40, 0x40);
}

#[test]
fn lsb_only_and_msb_only_access() {
    let mut r = rig();
    r.out(0x43, 0x14); // counter 0, LSB only, mode 2
    r.out(0x40, 200);
    r.advance(ns(50));
    let c = r.inb(0x40);
    assert!((149..=150).contains(&c), "lsb {c}");
    r.out(0x43, 0x24); // counter 0, MSB only, mode 2
    r.out(0x40, 0x02); // count 0x200
    r.advance(ns(0x100));
    assert_eq!(r.inb(0x40), 0x01, "MSB of 0x100");
}

#[test]
fn bcd_counting() {
    let mut r = rig();
    r.out(0x43, 0x31); // counter 0, LSB/MSB, mode 0, BCD
    r.out(0x40, 0x00);
    r.out(0x40, 0x10); // 1000 decimal
    r.advance(ns(1));
    assert_eq!(r.read_count(0), 0x0999);
    r.advance(ns(1000) - ns(1));
    assert!(r.irq0.level());
}

#[test]
fn linux_style_tsc_calibration_on_counter_2() {
    let mut r = rig();
    // Gate high, speaker off; mode 0, LSB/MSB; 50 ms worth of ticks.
    let latch = (PIT_HZ / 20) as u16;
    let port_b = r.inb(0x61);
    r.out(0x61, (port_b & !0x02) | 0x01);
    r.out(0x43, 0xb0);
    r.out(0x42, latch as u8);
    r.out(0x42, (latch >> 8) as u8);
    let mut loops = 0;
    while !r.out2() {
        r.host.advance_ns(1_000_000);
        loops += 1;
        assert!(loops < 100);
    }
    assert_eq!(loops, 50, "OUT2 rises after 50 ms");
}

#[test]
fn refresh_bit_toggles_with_time() {
    let mut r = rig();
    let a = r.inb(0x61) & 0x10;
    r.host.advance_ns(15_085);
    let b = r.inb(0x61) & 0x10;
    assert_ne!(a, b);
}

#[test]
fn mode2_new_count_takes_effect_at_the_end_of_the_period() {
    let mut r = rig();
    r.program(0, 2, 1000);
    r.advance(ns(300));
    // New count 500 while counting: this period still runs to 1000.
    r.out(0x40, 0xf4);
    r.out(0x40, 0x01);
    r.advance(ns(400) - ns(300));
    let c = r.read_count(0);
    assert!((599..=600).contains(&c), "old period continues: {c}");
    // Read-back status shows the count not yet loaded (null count).
    r.out(0x43, 0xe2);
    assert_eq!(r.inb(0x40) & 0x40, 0x40);
    // The timer wakes the VM at each rising edge: the old period's end,
    // then every 500 ticks.
    let t0 = r.host.now_ns() - ns(400);
    let mut deadlines = Vec::new();
    for _ in 0..3 {
        let next = r.vm.poll_timers().unwrap();
        deadlines.push(next - t0);
        let edges = r.irq0.rising_edges();
        r.host.set_now_ns(next);
        r.vm.poll_timers();
        assert_eq!(r.irq0.rising_edges(), edges + 1);
    }
    let ticks: Vec<u64> = deadlines
        .iter()
        .map(|d| d * PIT_HZ / 1_000_000_000)
        .collect();
    assert_eq!(ticks, [1000, 1500, 2000]);
    let c = r.read_count(0);
    assert!((499..=500).contains(&c), "new period of 500: {c}");
    r.out(0x43, 0xe2);
    assert_eq!(r.inb(0x40) & 0x40, 0x00, "loaded");
}

#[test]
fn the_fastest_rate_gives_at_most_one_edge_per_minimum_poll_interval() {
    let mut r = rig();
    // Count 2 in mode 2: about 600 kHz, faster than any world switch.
    r.program(0, 2, 2);
    let start = r.host.now_ns();
    while r.host.now_ns() < start + 1_000_000 {
        r.host.set_now_ns(r.host.now_ns() + 10_000);
        r.vm.poll_timers();
    }
    let edges = u64::from(r.irq0.rising_edges());
    // One edge when OUT first went high, then at most one per 100 us
    // (without the limit: one per 10 us poll).
    assert_eq!(vmm_devices::pit::MIN_POLL_NS, 100_000);
    assert!((2..=12).contains(&edges), "{edges} edges in 1 ms");
}
