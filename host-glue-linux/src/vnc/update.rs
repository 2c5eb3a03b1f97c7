//! What a `FramebufferUpdate` carries: the tiles of the screen that differ
//! from what a client was last sent, as Raw rectangles in the client's
//! pixel format, and the DesktopSize pseudo-rectangle when the guest
//! changed mode.

use super::protocol::PixelFormat;
use vmm_devices::vga::render::Framebuffer;

/// Side of the square tiles the screen is compared in.
pub const TILE: usize = 32;

/// The Raw encoding.
pub const ENCODING_RAW: i32 = 0;

/// The DesktopSize pseudo-encoding.
pub const ENCODING_DESKTOP_SIZE: i32 = -223;

/// A rectangle of the screen, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

impl Rect {
    /// The part of `self` inside `other` (empty rectangles are width 0).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = (self.x + self.width).min(other.x + other.width);
        let bottom = (self.y + self.height).min(other.y + other.height);
        Rect {
            x,
            y,
            width: right.saturating_sub(x),
            height: bottom.saturating_sub(y),
        }
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        Rect {
            x,
            y,
            width: (self.x + self.width).max(other.x + other.width) - x,
            height: (self.y + self.height).max(other.y + other.height) - y,
        }
    }

    /// Whether it holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// The whole of `frame`.
pub fn whole(frame: &Framebuffer) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: frame.width,
        height: frame.height,
    }
}

/// The rectangles of `now` within `area` that differ from `before` (all
/// of `area` when there is no `before` or it has another size), in
/// tiles of [`TILE`] pixels, runs of changed tiles on a tile row merged.
pub fn changed_rects(before: Option<&Framebuffer>, now: &Framebuffer, area: Rect) -> Vec<Rect> {
    let area = area.intersect(&whole(now));
    if area.is_empty() || now.pixels.len() < now.width * now.height {
        return Vec::new();
    }
    let before = before.filter(|b| {
        b.width == now.width && b.height == now.height && b.pixels.len() == now.pixels.len()
    });
    let mut out = Vec::new();
    let mut ty = area.y;
    while ty < area.y + area.height {
        let th = TILE.min(area.y + area.height - ty);
        let mut run: Option<Rect> = None;
        let mut tx = area.x;
        while tx < area.x + area.width {
            let tw = TILE.min(area.x + area.width - tx);
            let dirty = match before {
                None => true,
                Some(b) => (ty..ty + th).any(|y| {
                    let row = y * now.width + tx..y * now.width + tx + tw;
                    b.pixels[row.clone()] != now.pixels[row]
                }),
            };
            match (&mut run, dirty) {
                (Some(r), true) => r.width += tw,
                (None, true) => {
                    run = Some(Rect {
                        x: tx,
                        y: ty,
                        width: tw,
                        height: th,
                    })
                }
                (Some(_), false) => out.extend(run.take()),
                (None, false) => {}
            }
            tx += tw;
        }
        out.extend(run);
        ty += th;
    }
    out
}

/// Write 0x00RRGGBB `pixel` to `out` in `format`.
pub fn put_pixel(out: &mut Vec<u8>, format: &PixelFormat, pixel: u32) {
    let channel = |value: u32, max: u16, shift: u8| -> u32 {
        (((value & 0xff) * u32::from(max) + 127) / 255) << shift
    };
    let v = channel(pixel >> 16, format.red_max, format.red_shift)
        | channel(pixel >> 8, format.green_max, format.green_shift)
        | channel(pixel, format.blue_max, format.blue_shift);
    match (format.bits_per_pixel, format.big_endian) {
        (32, false) => out.extend_from_slice(&v.to_le_bytes()),
        (32, true) => out.extend_from_slice(&v.to_be_bytes()),
        (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
        (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
        _ => out.push(v as u8),
    }
}

/// A `FramebufferUpdate` being built.
#[derive(Debug, Default)]
pub struct UpdateMessage {
    rects: u16,
    body: Vec<u8>,
}

impl UpdateMessage {
    /// An update with no rectangle yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rectangles so far.
    pub fn rects(&self) -> u16 {
        self.rects
    }

    fn header(&mut self, r: Rect, encoding: i32) {
        for v in [r.x, r.y, r.width, r.height] {
            self.body
                .extend_from_slice(&u16::try_from(v).unwrap_or(u16::MAX).to_be_bytes());
        }
        self.body.extend_from_slice(&encoding.to_be_bytes());
        self.rects += 1;
    }

    /// Add `r` of `frame` as a Raw rectangle in `format` (a rectangle
    /// that is not inside `frame` is left out).
    pub fn raw(&mut self, frame: &Framebuffer, r: Rect, format: &PixelFormat) {
        if r.intersect(&whole(frame)) != r || r.is_empty() || self.rects == u16::MAX {
            return;
        }
        self.header(r, ENCODING_RAW);
        self.body
            .reserve(r.width * r.height * format.bytes_per_pixel());
        for y in r.y..r.y + r.height {
            let row = &frame.pixels[y * frame.width + r.x..y * frame.width + r.x + r.width];
            for &p in row {
                put_pixel(&mut self.body, format, p);
            }
        }
    }

    /// Add the DesktopSize pseudo-rectangle: the screen is now
    /// `width` x `height`.
    pub fn desktop_size(&mut self, width: usize, height: usize) {
        self.header(
            Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
            ENCODING_DESKTOP_SIZE,
        );
    }

    /// The message's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.rects.to_be_bytes());
        out.extend(self.body);
        out
    }
}

/// `frame` cut or padded (black) to `width` x `height`: what a client
/// that cannot change its screen size is shown after a mode change.
pub fn fit(frame: &Framebuffer, width: usize, height: usize) -> Framebuffer {
    if frame.width == width && frame.height == height {
        return frame.clone();
    }
    let mut pixels = vec![0; width * height];
    for y in 0..height.min(frame.height) {
        let n = width.min(frame.width);
        let from = y * frame.width;
        if let Some(src) = frame.pixels.get(from..from + n) {
            pixels[y * width..y * width + n].copy_from_slice(src);
        }
    }
    Framebuffer {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: usize, height: usize, fill: u32) -> Framebuffer {
        Framebuffer {
            width,
            height,
            pixels: vec![fill; width * height],
        }
    }

    #[test]
    fn only_the_tiles_that_changed_are_sent() {
        let before = frame(100, 70, 0);
        let mut now = before.clone();
        // One pixel in the second tile of the first row, two in the last
        // row's first and second tiles (merged into one run).
        now.pixels[5 * 100 + 40] = 0xffffff;
        now.pixels[65 * 100 + 3] = 1;
        now.pixels[65 * 100 + 33] = 1;
        let rects = changed_rects(Some(&before), &now, whole(&now));
        assert_eq!(
            rects,
            vec![
                Rect {
                    x: 32,
                    y: 0,
                    width: 32,
                    height: 32
                },
                Rect {
                    x: 0,
                    y: 64,
                    width: 64,
                    height: 6
                },
            ]
        );
        assert_eq!(changed_rects(Some(&now), &now, whole(&now)), vec![]);
        // Without a previous frame, or after a mode change: everything.
        let all = changed_rects(None, &now, whole(&now));
        let area: usize = all.iter().map(|r| r.width * r.height).sum();
        assert_eq!(area, 100 * 70);
        let small = frame(50, 50, 0);
        assert_eq!(changed_rects(Some(&small), &now, whole(&now)).len(), 3);
        // Only inside the requested area.
        let part = Rect {
            x: 0,
            y: 60,
            width: 10,
            height: 100,
        };
        assert_eq!(
            changed_rects(Some(&before), &now, part),
            vec![Rect {
                x: 0,
                y: 60,
                width: 10,
                height: 10
            }]
        );
    }

    #[test]
    fn pixels_are_written_in_the_clients_format() {
        let mut out = Vec::new();
        put_pixel(&mut out, &PixelFormat::SERVER, 0x123456);
        assert_eq!(out, [0x56, 0x34, 0x12, 0]);
        let rgb565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        out.clear();
        put_pixel(&mut out, &rgb565, 0xff0000);
        put_pixel(&mut out, &rgb565, 0x00ff00);
        put_pixel(&mut out, &rgb565, 0xffffff);
        assert_eq!(out, [0xf8, 0x00, 0x07, 0xe0, 0xff, 0xff]);
    }

    #[test]
    fn an_update_message_has_its_rectangles_and_pixels() {
        let mut f = frame(4, 2, 0x0000ff);
        f.pixels[7] = 0xff0000;
        let mut m = UpdateMessage::new();
        m.desktop_size(4, 2);
        m.raw(
            &f,
            Rect {
                x: 2,
                y: 1,
                width: 2,
                height: 1,
            },
            &PixelFormat::SERVER,
        );
        // Outside the frame: left out.
        m.raw(
            &f,
            Rect {
                x: 3,
                y: 1,
                width: 2,
                height: 1,
            },
            &PixelFormat::SERVER,
        );
        let b = m.into_bytes();
        assert_eq!(&b[..4], &[0, 0, 0, 2]);
        assert_eq!(&b[4..16], &[0, 0, 0, 0, 0, 4, 0, 2, 0xff, 0xff, 0xff, 0x21]);
        assert_eq!(&b[16..28], &[0, 2, 0, 1, 0, 2, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&b[28..], &[0xff, 0, 0, 0, 0, 0, 0xff, 0]);
        assert_eq!(b.len(), 36);
    }

    #[test]
    fn a_frame_is_fitted_to_a_fixed_size_client() {
        let f = frame(3, 3, 7);
        let g = fit(&f, 2, 4);
        assert_eq!(g.pixels, vec![7, 7, 7, 7, 7, 7, 0, 0]);
    }
}
