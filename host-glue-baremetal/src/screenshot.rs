//! `screenshot=`: a PC's screen as pixels, printed on the host console for
//! the machine that runs the host (xtask turns it into a PNG file).
//!
//! The picture is printed as a `vm N screenshot: WxH` line, then `vm N
//! pixels: ` lines of runs `COUNTxRRGGBB` (count and colour in
//! hexadecimal, [`RUNS_PER_LINE`] runs a line), then `vm N screenshot end`.
//! A menu or a console is mostly long runs of one colour, so a 640x480
//! screen takes some tens of kilobytes rather than the 1.2 MB of its
//! bytes.
//!
//! [`Steady`] decides when: with `screenshot=steady` the first graphics
//! picture that stayed the same for [`STEADY_LOOKS`] looks in a row (a menu
//! drawn and waiting), with `screenshot=stop` the screen when the VM stops.

extern crate alloc;

use alloc::string::String;
use core::fmt::Write;

/// Runs of colour printed on one line.
pub const RUNS_PER_LINE: usize = 24;

/// Looks in a row that must find the same graphics picture.
pub const STEADY_LOOKS: u32 = 3;

/// The picture as runs `(count, colour)` in order, each `count` >= 1.
pub fn runs(pixels: &[u32]) -> impl Iterator<Item = (usize, u32)> + '_ {
    let mut at = 0;
    core::iter::from_fn(move || {
        let colour = *pixels.get(at)?;
        let len = pixels[at..].iter().take_while(|p| **p == colour).count();
        at += len;
        Some((len, colour))
    })
}

/// The console lines that carry `pixels` (`width` x `height`) of VM `vm`,
/// without line ends, handed to `out` one at a time.
pub fn lines(vm: u32, width: usize, height: usize, pixels: &[u32], mut out: impl FnMut(&str)) {
    let mut line = String::new();
    let _ = write!(line, "vm {vm} screenshot: {width}x{height}");
    out(&line);
    let mut in_line = 0;
    line.clear();
    for (count, colour) in runs(pixels) {
        if in_line == 0 {
            let _ = write!(line, "vm {vm} pixels:");
        }
        let _ = write!(line, " {count:x}x{:06x}", colour & 0x00ff_ffff);
        in_line += 1;
        if in_line == RUNS_PER_LINE {
            out(&line);
            line.clear();
            in_line = 0;
        }
    }
    if in_line > 0 {
        out(&line);
    }
    line.clear();
    let _ = write!(line, "vm {vm} screenshot end");
    out(&line);
}

/// When to print the screenshot (`screenshot=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum When {
    /// Never (the default).
    Never,
    /// The first graphics picture that stays the same for
    /// [`STEADY_LOOKS`] looks.
    Steady,
    /// When the VM stops, whatever the screen shows.
    Stop,
}

/// Watches a PC's screen for a steady graphics picture.
#[derive(Default, Debug)]
pub struct Steady {
    /// A hash of the last graphics picture seen and its size.
    last: Option<(u64, usize, usize)>,
    /// Looks in a row that saw it.
    looks: u32,
    /// Whether the screenshot was taken.
    pub taken: bool,
}

impl Steady {
    /// Look at the screen (`None`: a text mode or no picture). Returns
    /// true once, when the same graphics picture was seen for
    /// [`STEADY_LOOKS`] looks in a row.
    pub fn look(&mut self, picture: Option<(usize, usize, &[u32])>) -> bool {
        if self.taken {
            return false;
        }
        let Some((width, height, pixels)) = picture else {
            self.last = None;
            self.looks = 0;
            return false;
        };
        let key = (hash(pixels), width, height);
        if self.last == Some(key) {
            self.looks += 1;
        } else {
            self.last = Some(key);
            self.looks = 1;
        }
        // A single colour is a screen being cleared or not drawn yet.
        let drawn = pixels
            .first()
            .is_some_and(|p| pixels.iter().any(|q| q != p));
        if self.looks >= STEADY_LOOKS && drawn {
            self.taken = true;
        }
        self.taken
    }
}

/// FNV-1a over the pixels.
fn hash(pixels: &[u32]) -> u64 {
    pixels.iter().fold(0xcbf2_9ce4_8422_2325, |h, p| {
        (h ^ u64::from(*p)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn runs_cover_the_picture() {
        let px = [1, 1, 2, 3, 3, 3];
        let r: Vec<_> = runs(&px).collect();
        assert_eq!(r, [(2, 1), (1, 2), (3, 3)]);
        assert_eq!(runs(&[]).count(), 0);
    }

    #[test]
    fn lines_frame_the_runs() {
        let mut px = alloc::vec![0x00ff_0000u32; 30];
        px.extend((0..30).map(|i| i as u32));
        let mut out = Vec::new();
        lines(2, 6, 10, &px, |l| out.push(String::from(l)));
        assert_eq!(out[0], "vm 2 screenshot: 6x10");
        assert!(out[1].starts_with("vm 2 pixels: 1exff0000 1x000000 1x000001"));
        assert_eq!(out[1].split(' ').count(), 3 + RUNS_PER_LINE);
        assert_eq!(out.last().unwrap(), "vm 2 screenshot end");
        let total: usize = out[1..out.len() - 1]
            .iter()
            .flat_map(|l| l.split(' ').skip(3))
            .map(|r| usize::from_str_radix(r.split('x').next().unwrap(), 16).unwrap())
            .sum();
        assert_eq!(total, 60);
    }

    #[test]
    fn steady_waits_for_the_same_drawn_picture() {
        let mut s = Steady::default();
        let blank = [0u32; 4];
        let menu = [0u32, 1, 1, 0];
        assert!(!s.look(None));
        for _ in 0..5 {
            assert!(!s.look(Some((2, 2, &blank))), "one colour is not a picture");
        }
        assert!(!s.look(Some((2, 2, &menu))));
        assert!(!s.look(Some((2, 2, &menu))));
        assert!(!s.look(None), "back to text: start again");
        assert!(!s.look(Some((2, 2, &menu))));
        assert!(!s.look(Some((2, 2, &menu))));
        assert!(s.look(Some((2, 2, &menu))));
        assert!(s.taken);
        assert!(!s.look(Some((2, 2, &menu))), "once");
    }
}
