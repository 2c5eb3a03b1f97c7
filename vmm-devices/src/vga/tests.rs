//! Tests of the adapter as a guest drives it and a person sees it.

use super::render::{Display, Framebuffer, TextScreen};
use super::*;

fn seq(v: &mut Card, i: u8, d: u8) {
    v.io_write(0x3c4, i);
    v.io_write(0x3c5, d);
}
fn gr(v: &mut Card, i: u8, d: u8) {
    v.io_write(0x3ce, i);
    v.io_write(0x3cf, d);
}
fn crtc(v: &mut Card, i: u8, d: u8) {
    v.io_write(0x3d4, i);
    v.io_write(0x3d5, d);
}
fn attr(v: &mut Card, i: u8, d: u8) {
    let _ = v.io_read(0x3da);
    v.io_write(0x3c0, i);
    v.io_write(0x3c0, d);
}
fn enable_screen(v: &mut Card) {
    let _ = v.io_read(0x3da);
    v.io_write(0x3c0, 0x20);
}
fn dac(v: &mut Card, i: u8, rgb: [u8; 3]) {
    v.io_write(0x3c8, i);
    for c in rgb {
        v.io_write(0x3c9, c);
    }
}

/// Mode 3 as a VGA BIOS programs it (the registers that matter).
fn mode3(v: &mut Card) {
    v.io_write(0x3c2, 0x67);
    for (i, d) in [(1, 0x00), (2, 0x03), (3, 0x00), (4, 0x02)] {
        seq(v, i, d);
    }
    for (i, d) in [
        (1, 0x4f),
        (7, 0x1f),
        (9, 0x4f),
        (0x0a, 0x0d),
        (0x12, 0x8f),
        (0x13, 0x28),
    ] {
        crtc(v, i, d);
    }
    for (i, d) in [(4, 0), (5, 0x10), (6, 0x0e), (8, 0xff)] {
        gr(v, i, d);
    }
    for i in 0..16 {
        attr(v, i, i);
    }
    attr(v, 0x10, 0x0c);
    attr(v, 0x12, 0x0f);
    enable_screen(v);
}

fn mode13(v: &mut Card) {
    v.io_write(0x3c2, 0x63);
    for (i, d) in [(1, 0x01), (2, 0x0f), (4, 0x0e)] {
        seq(v, i, d);
    }
    for (i, d) in [(1, 0x4f), (7, 0x1f), (9, 0x41), (0x12, 0x8f), (0x13, 0x28)] {
        crtc(v, i, d);
    }
    for (i, d) in [(5, 0x40), (6, 0x05), (8, 0xff)] {
        gr(v, i, d);
    }
    for i in 0..16 {
        attr(v, i, i);
    }
    attr(v, 0x10, 0x41);
    attr(v, 0x12, 0x0f);
    enable_screen(v);
}

fn mode12(v: &mut Card) {
    v.io_write(0x3c2, 0xe3);
    for (i, d) in [(1, 0x01), (2, 0x0f), (4, 0x06)] {
        seq(v, i, d);
    }
    for (i, d) in [(1, 0x4f), (7, 0x3e), (9, 0x40), (0x12, 0xdf), (0x13, 0x28)] {
        crtc(v, i, d);
    }
    for (i, d) in [(5, 0x00), (6, 0x05), (8, 0xff)] {
        gr(v, i, d);
    }
    for i in 0..16 {
        attr(v, i, i);
    }
    attr(v, 0x10, 0x01);
    attr(v, 0x12, 0x0f);
    enable_screen(v);
}

fn text(v: &Card) -> TextScreen {
    match v.render() {
        Display::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}
fn picture(v: &Card) -> Framebuffer {
    match v.render() {
        Display::Graphics(f) => f,
        other => panic!(
            "expected graphics, got {:?}",
            core::mem::discriminant(&other)
        ),
    }
}

#[test]
fn mode3_text_write_appears_with_cursor() {
    let mut v = Card::new(1 << 20);
    mode3(&mut v);
    // 'A' white on blue at row 1, column 2: 0xb8000 + (80 + 2) * 2.
    let at = 0x18000 + (80 + 2) * 2;
    v.window_write(at, b'A');
    v.window_write(at + 1, 0x1f);
    crtc(&mut v, 0x0e, 0);
    crtc(&mut v, 0x0f, 82);
    let t = text(&v);
    assert_eq!((t.cols, t.rows), (80, 25));
    assert_eq!(t.cell(2, 1).unwrap().ch, b'A');
    assert_eq!(t.cell(2, 1).unwrap().attr, 0x1f);
    assert_eq!(t.cursor, Some((2, 1)));
    assert_eq!(v.window_read(at), b'A');
    // Mode 3 is served from the text shadow: the window can be RAM.
    assert_eq!(
        v.window_mapping(),
        WindowMapping::Linear {
            gpa: 0xb8000,
            len: 0x8000,
            vram_offset: 1 << 20,
        }
    );
    assert_eq!(v.vram()[(1 << 20) + (80 + 2) * 2], b'A');
    crtc(&mut v, 0x0a, 0x20);
    assert_eq!(text(&v).cursor, None);
}

#[test]
fn text_survives_a_font_load_through_the_planes() {
    let mut v = Card::new(1 << 20);
    mode3(&mut v);
    for (i, &b) in b"VGA".iter().enumerate() {
        v.window_write(0x18000 + 2 * i as u64, b);
        v.window_write(0x18000 + 2 * i as u64 + 1, 0x07);
    }
    // A VGA BIOS loading a font: plane 2 only, planar, at 0xa0000.
    seq(&mut v, 2, 0x04);
    seq(&mut v, 4, 0x07);
    gr(&mut v, 4, 0x02);
    gr(&mut v, 5, 0x00);
    gr(&mut v, 6, 0x04);
    // Plain writes to plane 2 alone: the window is a copy of plane 2 in
    // the shadow, RAM for the guest, so a font load does not exit.
    assert_eq!(v.vga().shadow(), Some(Shadow::Plane(2)));
    assert_eq!(
        v.window_mapping(),
        WindowMapping::Linear {
            gpa: 0xa0000,
            len: 0x10000,
            vram_offset: 1 << 20,
        }
    );
    v.window_write(u64::from(b'V') * 32, 0xff);
    assert_eq!(v.vram()[(1 << 20) + usize::from(b'V') * 32], 0xff);
    assert_eq!(v.window_read(u64::from(b'V') * 32), 0xff);
    // What a person sees already has the new glyph row, read from the
    // shadow (plane 2 itself is stale until the mode changes).
    dac(&mut v, 7, [0x2a, 0x2a, 0x2a]);
    let during = v.render_pixels().unwrap();
    // Anything but plain writes to one plane works on the planes again:
    // here a write mode 2 with the same map mask.
    gr(&mut v, 5, 0x02);
    assert_eq!(v.vga().shadow(), None);
    assert_eq!(v.window_mapping(), WindowMapping::Emulated);
    assert_eq!(
        memory::plane_byte(v.vram(), 2, usize::from(b'V') * 32),
        0xff
    );
    gr(&mut v, 5, 0x00);
    assert_eq!(v.vga().shadow(), Some(Shadow::Plane(2)));
    // The characters are in the planes while the shadow is off.
    gr(&mut v, 4, 0x00);
    assert_eq!(v.window_read(0), b'V');
    // Back to text: the text and the glyph row are where they belong.
    seq(&mut v, 2, 0x03);
    seq(&mut v, 4, 0x02);
    gr(&mut v, 5, 0x10);
    gr(&mut v, 6, 0x0e);
    assert!(matches!(v.window_mapping(), WindowMapping::Linear { .. }));
    assert!(text(&v).row_text(0).starts_with("VGA"));
    assert_eq!(
        memory::plane_byte(v.vram(), 2, usize::from(b'V') * 32),
        0xff
    );
    let f = v.render_pixels().unwrap();
    assert_eq!(f, during);
    assert_eq!((f.width, f.height), (720, 400));
    // The glyph's first row is all on: grey (colour 7) across 8 dots, the
    // ninth dot and the next row black.
    assert_eq!(f.pixel(0, 0), Some(0xaaaaaa));
    assert_eq!(f.pixel(7, 0), Some(0xaaaaaa));
    assert_eq!(f.pixel(8, 0), Some(0));
    assert_eq!(f.pixel(0, 1), Some(0));
}

#[test]
fn mode13_pixel_uses_dac_colour_and_maps_linearly() {
    let mut v = Card::new(1 << 20);
    mode13(&mut v);
    dac(&mut v, 5, [0x3f, 0, 0x20]);
    v.window_write(10 * 320 + 7, 5);
    let f = picture(&v);
    assert_eq!((f.width, f.height), (320, 200));
    assert_eq!(f.pixel(7, 10), Some(0xff0082));
    assert_eq!(f.pixel(8, 10), Some(0));
    assert!(matches!(
        v.window_mapping(),
        WindowMapping::Linear {
            gpa: 0xa0000,
            len: 0x10000,
            ..
        }
    ));
}

#[test]
fn mode12_planar_write_modes() {
    let mut v = Card::new(1 << 20);
    mode12(&mut v);
    dac(&mut v, 4, [0x2a, 0, 0]);
    // Write mode 2: colour 4 to the leftmost pixel only (bit mask 0x80).
    gr(&mut v, 5, 0x02);
    gr(&mut v, 8, 0x80);
    let _ = v.window_read(0);
    v.window_write(0, 4);
    let f = picture(&v);
    assert_eq!((f.width, f.height), (640, 480));
    assert_eq!(f.pixel(0, 0), Some(0xaa0000));
    assert_eq!(f.pixel(1, 0), Some(0));
    // Write mode 0 with set/reset on plane 0 for the second pixel.
    gr(&mut v, 5, 0x00);
    gr(&mut v, 0, 0x01);
    gr(&mut v, 1, 0x0f);
    gr(&mut v, 8, 0x40);
    let _ = v.window_read(0);
    v.window_write(0, 0);
    let f = picture(&v);
    assert_eq!(f.pixel(0, 0), Some(0xaa0000), "latches kept pixel 0");
    assert_eq!(v.registers().palette_to_dac(1), 1);
    // Read mode 1: colour compare finds colour 4 in pixel 0 only.
    gr(&mut v, 2, 4);
    gr(&mut v, 7, 0x0f);
    gr(&mut v, 5, 0x08);
    assert_eq!(v.window_read(0), 0x80);
    // Write mode 1 copies latches: byte 0 to byte 1.
    gr(&mut v, 5, 0x01);
    let _ = v.window_read(0);
    v.window_write(1, 0);
    assert_eq!(picture(&v).pixel(8, 0), Some(0xaa0000));
    assert_eq!(v.window_mapping(), WindowMapping::Emulated);
}

#[test]
fn mode12_writes_to_one_plane_go_through_the_plane_shadow() {
    let mut v = Card::new(1 << 20);
    mode12(&mut v);
    dac(&mut v, 4, [0x2a, 0, 0]);
    dac(&mut v, 6, [0, 0x2a, 0x2a]);
    // Plane 1 already has the leftmost pixel (colour 2).
    seq(&mut v, 2, 0x02);
    v.window_write(0, 0x80);
    // Plain writes to plane 2, reading plane 2: the shadow holds plane 2
    // and the window is RAM.
    seq(&mut v, 2, 0x04);
    gr(&mut v, 4, 0x02);
    assert_eq!(v.vga().shadow(), Some(Shadow::Plane(2)));
    assert!(matches!(
        v.window_mapping(),
        WindowMapping::Linear {
            gpa: 0xa0000,
            len: 0x10000,
            ..
        }
    ));
    v.window_write(0, 0xc0);
    assert_eq!(v.window_read(0), 0xc0);
    // The picture reads plane 2 from the shadow: colour 6 then colour 4.
    let f = picture(&v);
    assert_eq!(f.pixel(0, 0), Some(0x00aaaa));
    assert_eq!(f.pixel(1, 0), Some(0xaa0000));
    // Reading another plane ends the shadow: plane 2 is back in place.
    gr(&mut v, 4, 0x01);
    assert_eq!(v.vga().shadow(), None);
    assert_eq!(v.window_mapping(), WindowMapping::Emulated);
    assert_eq!(v.window_read(0), 0x80);
    assert_eq!(memory::plane_byte(v.vram(), 2, 0), 0xc0);
    assert_eq!(picture(&v), f);
}

#[test]
fn vbe_1024x768x32_lfb() {
    let mut v = Card::default();
    v.io_write16(VBE_PORT_INDEX, vbe::INDEX_ID);
    assert_eq!(v.io_read16(VBE_PORT_DATA), vbe::ID5);
    for (i, d) in [
        (vbe::INDEX_XRES, 1024),
        (vbe::INDEX_YRES, 768),
        (vbe::INDEX_BPP, 32),
    ] {
        v.io_write16(VBE_PORT_INDEX, i);
        v.io_write16(VBE_PORT_DATA, d);
    }
    v.io_write16(VBE_PORT_INDEX, vbe::INDEX_ENABLE);
    v.io_write16(VBE_PORT_DATA, vbe::ENABLED | vbe::LFB);
    let at = (767 * 1024 + 1023) * 4;
    for (i, b) in [0x33u8, 0x22, 0x11, 0].iter().enumerate() {
        v.lfb_write(at + i as u64, *b);
    }
    let f = picture(&v);
    assert_eq!((f.width, f.height), (1024, 768));
    assert_eq!(f.pixel(1023, 767), Some(0x112233));
    assert_eq!(f.pixel(0, 0), Some(0));
    // GETCAPS reports the maxima.
    v.io_write16(VBE_PORT_DATA, vbe::ENABLED | vbe::LFB | vbe::GETCAPS);
    v.io_write16(VBE_PORT_INDEX, vbe::INDEX_XRES);
    assert_eq!(v.io_read16(VBE_PORT_DATA), vbe::MAX_XRES);
    // The same registers through the MMIO BAR.
    let mut w = [0u8; 2];
    v.mmio_read(0x500 + 2 * u64::from(vbe::INDEX_YRES), &mut w);
    assert_eq!(u16::from_le_bytes(w), vbe::MAX_YRES);
}

#[test]
fn vbe_16bpp_banked_window() {
    let mut v = Card::default();
    for (i, d) in [
        (vbe::INDEX_XRES, 640u16),
        (vbe::INDEX_YRES, 480),
        (vbe::INDEX_BPP, 16),
    ] {
        v.mmio_write(0x500 + 2 * u64::from(i), &d.to_le_bytes());
    }
    v.mmio_write(
        0x500 + 2 * u64::from(vbe::INDEX_ENABLE),
        &vbe::ENABLED.to_le_bytes(),
    );
    v.mmio_write(0x500 + 2 * u64::from(vbe::INDEX_BANK), &1u16.to_le_bytes());
    // Bank 1 offset 0 is byte 65536: pixel 32768 = (128, 51) at 640 wide.
    v.window_write(0, 0x00);
    v.window_write(1, 0xf8);
    assert_eq!(picture(&v).pixel(128, 51), Some(0xff0000));
    assert!(matches!(
        v.window_mapping(),
        WindowMapping::Linear {
            vram_offset: 65536,
            ..
        }
    ));
}

#[test]
fn hostile_accesses_never_panic() {
    let mut v = Card::new(256 << 10);
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..200_000 {
        let r = next();
        let port = [
            0x1ce, 0x1cf, 0x3c0, 0x3c4, 0x3c5, 0x3ce, 0x3cf, 0x3d4, 0x3d5, 0x3c9, 0x3da,
        ][(r % 11) as usize];
        match (r >> 8) % 6 {
            0 => v.io_write(port, (r >> 16) as u8),
            1 => v.io_write16(port, (r >> 16) as u16),
            2 => {
                let _ = v.io_read(0x3b0 + ((r >> 16) % 0x30) as u16);
            }
            3 => v.window_write(u64::from(r >> 12), r as u8),
            4 => v.mmio_write(u64::from((r >> 12) % 0x1000), &r.to_le_bytes()),
            _ => {
                let _ = v.window_read(u64::from(r >> 12));
            }
        }
        if r % 997 == 0 {
            let _ = v.render();
        }
    }
    for p in 0..=u16::MAX {
        let _ = v.io_read(p);
        v.io_write(p, 0xff);
    }
    let _ = v.render();
}
