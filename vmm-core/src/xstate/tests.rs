use super::*;

/// A CPU answering CPUID from a table: leaf 1 ECX, leaf 0xD.0 EAX, and
/// the (size, offset) of components 2..=9 as a Skylake-SP reports them.
fn cpu(leaf1_ecx: u32, d0_eax: u32) -> impl Fn(u32, u32) -> CpuidResult {
    move |leaf, subleaf| match (leaf, subleaf) {
        (0, _) => CpuidResult {
            eax: 0xd,
            ..CpuidResult::default()
        },
        (1, _) => CpuidResult {
            ecx: leaf1_ecx,
            ..CpuidResult::default()
        },
        (0xd, 0) => CpuidResult {
            eax: d0_eax,
            ebx: 576,
            ecx: 2696,
            edx: 0,
        },
        (0xd, i) => {
            let (size, offset) = match i {
                2 => (256, 576),
                3 => (64, 960),
                4 => (64, 1024),
                5 => (64, 1088),
                6 => (512, 1152),
                7 => (1024, 1664),
                9 => (8, 2688),
                _ => (0, 0),
            };
            CpuidResult {
                eax: size,
                ebx: offset,
                ecx: 0,
                edx: 0,
            }
        }
        _ => CpuidResult::default(),
    }
}

const XSAVE: u32 = 1 << 26;

#[test]
fn without_xsave_the_model_is_fxsave_sized_and_refuses_xsetbv() {
    let model = XstateModel::from_cpuid(cpu(0, 0));
    assert!(!model.has_xsave());
    assert_eq!(model.area_size(), 512);
    let mut state = ExtendedState::new(model);
    assert!(!state.set_xcr(0, 1));
    assert_eq!(state.xcr0(), 1);
}

#[test]
fn the_model_offers_avx_and_avx512_but_not_mpx_pkru_or_amx() {
    // The host supports x87, SSE, AVX, MPX (3, 4), AVX-512 (5-7), PKRU (9).
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x2ff));
    assert_eq!(model.guest_mask(), 0xe7);
    // Standard format up to the end of Hi16_ZMM.
    assert_eq!(model.area_size(), 1664 + 1024);
    // AVX only: the area ends after the YMM upper halves.
    let avx = XstateModel::from_cpuid(cpu(XSAVE, 0x7));
    assert_eq!(avx.guest_mask(), 0x7);
    assert_eq!(avx.area_size(), 832);
}

#[test]
fn a_partial_avx512_host_gets_no_avx512() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x67));
    assert_eq!(model.guest_mask(), 0x7);
}

#[test]
fn xsetbv_accepts_what_hardware_accepts_and_nothing_else() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0xe7));
    let mut state = ExtendedState::new(model);
    for (value, ok) in [
        (0x1, true),
        (0x3, true),
        (0x7, true),
        (0xe7, true),
        (0x0, false),   // x87 must stay
        (0x2, false),   // x87 must stay
        (0x5, false),   // AVX without SSE
        (0x27, false),  // AVX-512 in part
        (0xe3, false),  // AVX-512 without AVX
        (0x207, false), // PKRU: not in the model
        (0x1f, false),  // MPX: not in the model
        (1 << 63, false),
    ] {
        assert_eq!(state.set_xcr(0, value), ok, "XCR0 {value:#x}");
    }
    assert_eq!(state.xcr0(), 0xe7);
    // Only XCR0 exists.
    assert!(!state.set_xcr(1, 1));
    state.reset();
    assert_eq!(state.xcr0(), 1);
}

#[test]
fn cpuid_leaf_d_describes_exactly_what_is_saved() {
    let model = XstateModel::from_cpuid(cpu(XSAVE | (1 << 28), 0x2ff));
    let mut r = CpuidResult {
        eax: 0x2ff,
        ebx: 2696,
        ecx: 2696,
        edx: 0,
    };
    model.cpuid(0xd, 0, &mut r, true, 0x7);
    assert_eq!(r.eax, 0xe7);
    assert_eq!(r.ebx, 832, "size for the guest's XCR0, not the host's");
    assert_eq!(r.ecx, 2688, "size for everything the model has");
    // Sub-leaf 1: XSAVES (bit 3) and XFD (bit 4) withdrawn, no XSS bits.
    let mut r = CpuidResult {
        eax: 0x1f,
        ebx: 0,
        ecx: 0x1900,
        edx: 0,
    };
    model.cpuid(0xd, 1, &mut r, true, 0x7);
    assert_eq!((r.eax, r.ecx, r.edx), (0x7, 0, 0));
    assert_eq!(r.ebx, 576 + 256);
    // A component outside the model reads as absent.
    let mut r = CpuidResult {
        eax: 8,
        ebx: 2688,
        ecx: 0,
        edx: 0,
    };
    model.cpuid(0xd, 9, &mut r, true, 0x7);
    assert_eq!(r, CpuidResult::default());
}

#[test]
fn cpuid_osxsave_mirrors_the_guests_cr4_and_hidden_state_hides_features() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x3));
    let mut r = CpuidResult {
        ecx: XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX | LEAF1_ECX_FMA,
        ..CpuidResult::default()
    };
    model.cpuid(1, 0, &mut r, false, 1);
    assert_eq!(r.ecx, XSAVE, "no AVX state: no AVX, no FMA; OSXSAVE off");
    let mut r = CpuidResult {
        ecx: XSAVE,
        ..CpuidResult::default()
    };
    model.cpuid(1, 0, &mut r, true, 1);
    assert_eq!(r.ecx, XSAVE | LEAF1_ECX_OSXSAVE);
    let mut r = CpuidResult {
        ebx: LEAF7_EBX_AVX2 | LEAF7_EBX_MPX | (1 << 16),
        ecx: LEAF7_ECX_PKU,
        edx: 1 << 24,
        ..CpuidResult::default()
    };
    model.cpuid(7, 0, &mut r, true, 1);
    assert_eq!((r.ebx, r.ecx, r.edx), (0, 0, 0));
    // Without XSAVE at all, leaf 0xD is empty.
    let fx = XstateModel::from_cpuid(cpu(0, 0));
    let mut r = CpuidResult {
        eax: 7,
        ebx: 576,
        ..CpuidResult::default()
    };
    fx.cpuid(0xd, 0, &mut r, false, 1);
    assert_eq!(r, CpuidResult::default());
}

#[test]
fn registers_in_the_saved_area_follow_xstate_bv() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x7));
    let mut state = ExtendedState::new(model);
    assert_eq!(state.mxcsr(), 0x1f80);
    assert_eq!(state.xmm(3), 0);
    assert_eq!(state.ymm_upper(3), Some(0));
    // Stale bytes under a clear XSTATE_BV bit are not the register's value.
    state.guest.write(XMM_OFFSET + 16 * 5, &[0xee; 16]);
    assert_eq!(state.xmm(5), 0);
    state.set_xmm(3, 0x1234);
    assert_eq!(state.xmm(3), 0x1234);
    assert_eq!(state.xmm(5), 0, "the other registers are the initial zero");
    assert_eq!(state.guest.u64_at(XSTATE_BV_OFFSET), XCR0_SSE);
    state.set_ymm_upper(15, u128::MAX);
    assert_eq!(state.ymm_upper(15), Some(u128::MAX));
    assert_eq!(state.ymm_upper(0), Some(0));
    assert_eq!(state.guest.u64_at(XSTATE_BV_OFFSET), XCR0_SSE | XCR0_AVX);
    // Out of range: nothing.
    state.set_xmm(16, 1);
    assert_eq!(state.xmm(16), 0);
    assert_eq!(state.ymm_upper(16), None);
    state.reset();
    assert_eq!(state.xmm(3), 0);
    assert_eq!(state.ymm_upper(15), Some(0));
    assert_eq!(state.mxcsr(), 0x1f80);
}

#[test]
fn without_avx_there_are_no_ymm_registers() {
    let mut state = ExtendedState::new(XstateModel::from_cpuid(cpu(0, 0)));
    assert_eq!(state.ymm_upper(0), None);
    state.set_xmm(0, 7);
    assert_eq!(state.xmm(0), 7, "FXSAVE areas have no XSTATE_BV");
}

#[test]
fn two_vcpus_never_share_an_area() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x7));
    let mut a = ExtendedState::new(model.clone());
    let b = ExtendedState::new(model);
    a.set_xmm(0, 0xa1a1);
    assert_eq!(b.xmm(0), 0);
}

#[test]
fn xsetbv_checks_osxsave_then_cpl_then_the_value() {
    use crate::emulator::Exception;
    let mut state = ExtendedState::new(XstateModel::from_cpuid(cpu(XSAVE, 0x7)));
    assert_eq!(state.xsetbv(0, 7, false, 0), Err(Exception::InvalidOpcode));
    assert_eq!(
        state.xsetbv(0, 7, true, 3),
        Err(Exception::GeneralProtection(0))
    );
    assert_eq!(
        state.xsetbv(1, 7, true, 0),
        Err(Exception::GeneralProtection(0))
    );
    assert_eq!(
        state.xsetbv(0, 5, true, 0),
        Err(Exception::GeneralProtection(0))
    );
    assert_eq!(state.xcr0(), 1, "nothing refused changed XCR0");
    assert_eq!(state.xsetbv(0, 7, true, 0), Ok(()));
    assert_eq!(state.xcr0(), 7);
}

#[test]
fn the_image_round_trips_and_bad_images_are_refused_unchanged() {
    let model = XstateModel::from_cpuid(cpu(XSAVE, 0x7));
    let mut a = ExtendedState::new(model.clone());
    assert!(a.set_xcr(0, 7));
    a.set_xmm(3, 0x1234);
    a.set_ymm_upper(15, 0x5678);
    let image = a.image();
    assert_eq!(image.xcr0, 7);
    assert_eq!(image.mxcsr(), MXCSR_INIT);
    assert_eq!(image.xstate_bv(), XCR0_SSE | XCR0_AVX);
    assert_eq!(image.area.len(), model.area_size());
    let mut b = ExtendedState::new(model.clone());
    b.set_image(&image).unwrap();
    assert_eq!(b.image(), image);
    assert_eq!(
        (b.xcr0(), b.xmm(3), b.ymm_upper(15)),
        (7, 0x1234, Some(0x5678))
    );
    let fresh = ExtendedState::new(model).image();
    let refused = |f: fn(&mut XsaveImage)| {
        let mut bad = image.clone();
        f(&mut bad);
        let mut c = ExtendedState::new(XstateModel::from_cpuid(cpu(XSAVE, 0x7)));
        assert!(c.set_image(&bad).is_err(), "{:x?}", bad.xcr0);
        assert_eq!(c.image(), fresh);
    };
    // XCR0 without x87, with AVX-512 the model lacks; AVX state beyond the
    // area; a component the model lacks; XCOMP_BV set; reserved MXCSR.
    refused(|x| x.xcr0 = 6);
    refused(|x| x.xcr0 = 0xe7);
    refused(|x| x.area.truncate(600));
    refused(|x| x.area[512] |= 1 << 5);
    refused(|x| x.area[527] = 0x80);
    refused(|x| x.area[26] = 1);
}

#[test]
fn an_fxsave_image_gets_a_header() {
    let model = XstateModel::from_cpuid(cpu(0, 0));
    let mut a = ExtendedState::new(model.clone());
    a.set_xmm(0, 9);
    let image = a.image();
    assert_eq!(image.area.len(), 576);
    assert_eq!(image.xstate_bv(), 3);
    let mut b = ExtendedState::new(model);
    b.set_image(&image).unwrap();
    assert_eq!(b.xmm(0), 9);
    let mut avx = image.clone();
    avx.xcr0 = 7;
    assert!(b.set_image(&avx).is_err());
}
