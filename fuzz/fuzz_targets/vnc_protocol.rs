//! Fuzz the VNC server's reading of a client (`host_glue_linux::vnc`): any
//! bytes, cut into any chunks, through the RFB session (handshake and
//! messages), with every message applied as the server applies it: pixel
//! formats checked and used to encode a frame, update requests turned into
//! rectangles, keys and pointer events translated.
//!
//! Oracle: no panic; the session never holds more than one message
//! (`MAX_MESSAGE` bytes); the events and the error are the same however
//! the bytes are chunked; rectangles stay inside the frame; an update's
//! size is what its rectangles and the pixel format say; keys released are
//! keys that were pressed, and releasing all leaves nothing held.
#![no_main]

use host_glue_linux::vnc::input::InputState;
use host_glue_linux::vnc::protocol::{ClientMessage, Event, Session, MAX_MESSAGE};
use host_glue_linux::vnc::update::{changed_rects, whole, Rect, UpdateMessage};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use vmm_devices::input::InputEvent;
use vmm_devices::vga::render::Framebuffer;

fn run(data: &[u8], chunk: usize) -> (Vec<Event>, Option<String>) {
    let mut s = Session::new();
    let mut events = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        let r = s.feed_into(c, &mut events);
        assert!(s.buffered() <= MAX_MESSAGE, "{} bytes held", s.buffered());
        if let Err(e) = r {
            return (events, Some(e.to_string()));
        }
    }
    (events, None)
}

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (chunk, data) = input;
    let whole_run = run(&data, data.len());
    let chunked = run(&data, usize::from(chunk % 17) + 1);
    assert_eq!(whole_run, chunked, "chunking changed the meaning");

    let before = Framebuffer {
        width: 37,
        height: 21,
        pixels: (0..37 * 21).map(|i| i * 0x010203).collect(),
    };
    let mut now = before.clone();
    now.pixels[5] ^= 0xffffff;
    let mut input = InputState::new();
    let mut held = BTreeSet::new();
    for e in whole_run.0 {
        let Event::Message(m) = e else { continue };
        match m {
            ClientMessage::SetPixelFormat(pf) => {
                if pf.check().is_ok() {
                    let mut u = UpdateMessage::new();
                    u.raw(&now, whole(&now), &pf);
                    let len = u.into_bytes().len();
                    assert_eq!(len, 4 + 12 + 37 * 21 * pf.bytes_per_pixel());
                }
            }
            ClientMessage::FramebufferUpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                let area = Rect {
                    x: x.into(),
                    y: y.into(),
                    width: width.into(),
                    height: height.into(),
                };
                let prev = (!incremental).then_some(&before);
                for r in changed_rects(prev, &now, area) {
                    assert_eq!(r.intersect(&whole(&now)), r, "{r:?} outside the frame");
                    assert!(!r.is_empty());
                }
            }
            ClientMessage::Key { down, keysym } => {
                for ev in input.key_event(down, keysym) {
                    if let InputEvent::Key { key, pressed } = ev {
                        if pressed {
                            held.insert(key.0);
                        } else if !down {
                            assert!(held.remove(&key.0), "released {key:?} never pressed");
                        }
                    }
                }
            }
            ClientMessage::Pointer { buttons, x, y } => {
                let _ = input.pointer_event(buttons, x, y);
            }
            ClientMessage::SetEncodings(_) | ClientMessage::CutText { .. } => {}
        }
    }
    for ev in input.release_all() {
        if let InputEvent::Key { key, pressed } = ev {
            assert!(!pressed);
            held.remove(&key.0);
        }
    }
    // Shift pressed around a character is released with it; what the
    // client held is released at the end.
    held.retain(|k| *k != 0x12 && *k != 0x59);
    assert!(held.is_empty(), "still held: {held:?}");
});
