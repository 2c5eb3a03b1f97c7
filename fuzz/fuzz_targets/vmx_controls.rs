//! Fuzz the VMX control derivation with arbitrary capability MSRs (what a
//! buggy or hostile firmware, or a nested hypervisor, could report).
//! Invariants: no panic; every derived control word keeps the bits the CPU
//! says must be one and sets nothing the CPU says may not be one; the
//! controls this backend cannot work without are present; CR0/CR4 values
//! applied through the fixed bits honour FIXED0 and FIXED1; the
//! preemption timer's rate is IA32_VMX_MISC's when its control is on.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm_core::vmx::capabilities::{pin, proc, proc2, CapabilityMsrs, Controls};

#[derive(Arbitrary, Debug)]
struct Input {
    basic: u64,
    pin: u64,
    proc: u64,
    exit: u64,
    entry: u64,
    proc2: u64,
    ept_vpid: u64,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    misc: u64,
    guest_cr0: u64,
    guest_cr4: u64,
}

fn within(value: u32, msr: u64) -> bool {
    let must = msr as u32;
    let may = (msr >> 32) as u32;
    value & must == must && value & !may == 0
}

fuzz_target!(|i: Input| {
    let caps = CapabilityMsrs {
        basic: i.basic,
        pin: i.pin,
        proc: i.proc,
        exit: i.exit,
        entry: i.entry,
        proc2: i.proc2,
        ept_vpid: i.ept_vpid,
        cr0_fixed0: i.cr0_fixed0,
        cr0_fixed1: i.cr0_fixed1,
        cr4_fixed0: i.cr4_fixed0,
        cr4_fixed1: i.cr4_fixed1,
        misc: i.misc,
    };
    if let Ok(c) = Controls::derive(&caps) {
        assert!(within(c.pin, caps.pin), "{c:x?} {caps:x?}");
        assert!(within(c.proc, caps.proc), "{c:x?} {caps:x?}");
        assert!(within(c.exit, caps.exit), "{c:x?} {caps:x?}");
        assert_eq!(
            c.proc2 & !((caps.proc2 >> 32) as u32),
            0,
            "{c:x?} {caps:x?}"
        );
        assert_ne!(c.pin & pin::EXTERNAL_INTERRUPT_EXITING, 0);
        assert_ne!(c.proc & proc::HLT_EXITING, 0);
        assert_ne!(c.proc & proc::USE_IO_BITMAPS, 0);
        assert_ne!(c.proc2 & proc2::ENABLE_EPT, 0);
        assert_ne!(c.proc2 & proc2::UNRESTRICTED_GUEST, 0);
        // The preemption timer: on exactly when the pin control is, at the
        // rate IA32_VMX_MISC[4:0] gives.
        assert_eq!(
            c.preemption_timer_shift,
            (c.pin & pin::PREEMPTION_TIMER != 0).then_some((i.misc & 0x1f) as u8)
        );
    }
    for (fixed, guest) in [
        (caps.guest_cr0(), i.guest_cr0),
        (caps.guest_cr4(), i.guest_cr4),
    ] {
        let v = fixed.apply(guest);
        assert_eq!(
            v & fixed.must_be_one & fixed.may_be_one,
            fixed.must_be_one & fixed.may_be_one
        );
        assert_eq!(v & !fixed.may_be_one, 0);
    }
});
