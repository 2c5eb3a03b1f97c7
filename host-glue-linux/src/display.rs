//! What `vmm` does with the guest's screen (`--display`): `none` (no
//! display adapter at all, the machine as before displays existed),
//! `text` (the text screen drawn in the terminal, keys typed there to the
//! guest's keyboard: [`crate::terminal`]), `vnc=ADDR:PORT` (served to VNC
//! viewers: [`crate::vnc`]), `png=PATH` (a PNG screenshot, the `png` crate) and `text=PATH` (a text
//! mode's rows as lines, for tests and scripts), written while the guest
//! runs whenever the screen changed since the last write (looked at every
//! [`SCREEN_EVERY`]) and once more when it stops. Each file is written
//! beside its path and renamed over it, so a reader never sees half of one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm_devices::pc::Pc;
use vmm_devices::vga::render::{Display, Framebuffer};

/// How often the screen is looked at while the guest runs.
pub const SCREEN_EVERY: Duration = Duration::from_secs(2);

/// Where the VGA BIOS comes from unless the user says otherwise.
pub const DEFAULT_VGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";

/// One place the screen goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScreenOutput {
    /// A PNG screenshot.
    Png(PathBuf),
    /// The rows of a text screen, one line each; in a graphics mode the
    /// single line `graphics WxH`, while blank `blank`.
    Text(PathBuf),
    /// The screen in this terminal, and its keys to the guest.
    Terminal,
    /// A VNC server on this address (no authentication), its clients'
    /// keys and pointer to the guest.
    Vnc(SocketAddr),
}

/// A `--display` value that is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisplayArgError {
    /// Not the syntax.
    Syntax(String),
    /// `vnc=` with an address that is not loopback.
    VncNotLoopback(SocketAddr),
}

impl fmt::Display for DisplayArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisplayArgError::Syntax(text) => write!(
                f,
                "--display {text:?}: expected none, or a comma-separated list of text, \
                 vnc=ADDR:PORT, png=PATH and text=PATH"
            ),
            DisplayArgError::VncNotLoopback(addr) => write!(
                f,
                "--display vnc={addr}: not a loopback address, and the VNC server has no \
                 authentication (anyone who reaches it sees the screen and types into the \
                 guest); say vnc-public={addr} if that is meant"
            ),
        }
    }
}

impl std::error::Error for DisplayArgError {}

/// A VNC address: `IP:PORT` (`[IPv6]:PORT`) or `localhost:PORT`.
fn parse_vnc_addr(text: &str) -> Option<SocketAddr> {
    if let Some(port) = text.strip_prefix("localhost:") {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port.parse().ok()?,
        ));
    }
    text.parse().ok()
}

/// Parse `--display`: `none`, or a comma-separated list of `text` (the
/// terminal), `vnc=ADDR:PORT` (a loopback address; `vnc-public=ADDR:PORT`
/// for any other), `png=PATH` and `text=PATH`. An empty list is `none`:
/// no display adapter.
pub fn parse_display(text: &str) -> Result<Vec<ScreenOutput>, DisplayArgError> {
    if text == "none" {
        return Ok(Vec::new());
    }
    let bad = || DisplayArgError::Syntax(text.into());
    text.split(',')
        .map(|part| match part.split_once('=') {
            None if part == "text" => Ok(ScreenOutput::Terminal),
            Some(("png", p)) if !p.is_empty() => Ok(ScreenOutput::Png(p.into())),
            Some(("text", p)) if !p.is_empty() => Ok(ScreenOutput::Text(p.into())),
            Some((kind @ ("vnc" | "vnc-public"), a)) => {
                let addr = parse_vnc_addr(a).ok_or_else(bad)?;
                if kind == "vnc" && !addr.ip().is_loopback() {
                    return Err(DisplayArgError::VncNotLoopback(addr));
                }
                Ok(ScreenOutput::Vnc(addr))
            }
            _ => Err(bad()),
        })
        .collect()
}

/// Encode `frame` as an 8-bit RGB PNG.
pub fn png_bytes(frame: &Framebuffer) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let w = u32::try_from(frame.width).unwrap_or(0);
        let h = u32::try_from(frame.height).unwrap_or(0);
        let mut encoder = png::Encoder::new(&mut out, w.max(1), h.max(1));
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        let mut data = Vec::with_capacity(frame.pixels.len() * 3);
        for p in &frame.pixels {
            data.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
        }
        // A 0x0 picture is written as one black pixel.
        if frame.pixels.is_empty() {
            data = vec![0; 3];
        }
        writer.write_image_data(&data)?;
    }
    Ok(out)
}

/// The text dump of `display`: rows with trailing blanks cut.
pub fn text_dump(display: Option<&Display>) -> String {
    match display {
        Some(Display::Text(t)) => t
            .lines()
            .iter()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect(),
        Some(Display::Graphics(f)) => format!("graphics {}x{}\n", f.width, f.height),
        Some(Display::Blank) | None => "blank\n".into(),
    }
}

/// Write a PNG of `pc`'s screen to `path` (a 640x480 black picture while
/// the screen is blank or the machine has no display): `--screenshot`.
pub fn write_screenshot(pc: &Pc, path: &Path) -> Result<(), String> {
    let frame = pc.screenshot().unwrap_or(Framebuffer {
        width: 640,
        height: 480,
        pixels: vec![0; 640 * 480],
    });
    let bytes = png_bytes(&frame).map_err(|e| e.to_string())?;
    write_atomically(path, &bytes).map_err(|e| e.to_string())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes the screen to its outputs when it changed.
pub struct ScreenWriter {
    outputs: Vec<ScreenOutput>,
    last: Option<Option<Display>>,
    /// Writes that failed (each output's first failure is logged).
    failed: bool,
}

impl ScreenWriter {
    /// A writer for `outputs`.
    pub fn new(outputs: Vec<ScreenOutput>) -> Self {
        Self {
            outputs,
            last: None,
            failed: false,
        }
    }

    /// Look at `pc`'s screen and write it if it changed since the last
    /// write (or was never written).
    pub fn update(&mut self, pc: &Pc) {
        if self.outputs.is_empty() {
            return;
        }
        let now = pc.display();
        if self.last.as_ref() == Some(&now) {
            return;
        }
        for out in &self.outputs {
            let result = match out {
                ScreenOutput::Terminal | ScreenOutput::Vnc(_) => Ok(()),
                ScreenOutput::Png(p) => {
                    let frame = pc.screenshot().unwrap_or(Framebuffer {
                        width: 640,
                        height: 480,
                        pixels: vec![0; 640 * 480],
                    });
                    png_bytes(&frame)
                        .map_err(|e| e.to_string())
                        .and_then(|b| write_atomically(p, &b).map_err(|e| e.to_string()))
                        .map_err(|e| (p, e))
                }
                ScreenOutput::Text(p) => write_atomically(p, text_dump(now.as_ref()).as_bytes())
                    .map_err(|e| (p, e.to_string())),
            };
            if let Err((path, e)) = result {
                if !self.failed {
                    log::warn!("--display: cannot write {}: {e}", path.display());
                }
                self.failed = true;
            }
        }
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_devices::vga::render::{Cell, TextScreen};

    #[test]
    fn display_values_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_display("none").unwrap(), vec![]);
        assert_eq!(
            parse_display("png=/tmp/s.png,text=s.txt").unwrap(),
            vec![
                ScreenOutput::Png("/tmp/s.png".into()),
                ScreenOutput::Text("s.txt".into())
            ]
        );
        assert_eq!(
            parse_display("text,png=a.png").unwrap(),
            vec![ScreenOutput::Terminal, ScreenOutput::Png("a.png".into())]
        );
        assert_eq!(
            parse_display("vnc=127.0.0.1:5900,png=a.png").unwrap(),
            vec![
                ScreenOutput::Vnc("127.0.0.1:5900".parse().unwrap()),
                ScreenOutput::Png("a.png".into())
            ]
        );
        assert_eq!(
            parse_display("vnc=localhost:0").unwrap(),
            vec![ScreenOutput::Vnc("127.0.0.1:0".parse().unwrap())]
        );
        assert_eq!(
            parse_display("vnc=[::1]:5901").unwrap(),
            vec![ScreenOutput::Vnc("[::1]:5901".parse().unwrap())]
        );
        // Another address only when said so: there is no password.
        let e = parse_display("vnc=0.0.0.0:5900").unwrap_err().to_string();
        assert!(
            e.contains("no authentication") && e.contains("vnc-public=0.0.0.0:5900"),
            "{e}"
        );
        assert_eq!(
            parse_display("vnc-public=0.0.0.0:5900").unwrap(),
            vec![ScreenOutput::Vnc("0.0.0.0:5900".parse().unwrap())]
        );
        for bad in [
            "",
            "png",
            "png=",
            "vnc=1",
            "vnc=:5900",
            "vnc",
            "png=a,",
            "texts",
        ] {
            let e = parse_display(bad).unwrap_err().to_string();
            assert!(e.contains("png=PATH"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_png_decodes_to_the_same_pixels() {
        let frame = Framebuffer {
            width: 3,
            height: 2,
            pixels: vec![0xff0000, 0x00ff00, 0x0000ff, 0, 0x123456, 0xffffff],
        };
        let bytes = png_bytes(&frame).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..6], &[0xff, 0, 0, 0, 0xff, 0]);
        assert_eq!(&buf[12..15], &[0x12, 0x34, 0x56]);
    }

    #[test]
    fn the_text_dump_has_one_line_a_row() {
        let mut cells = vec![Cell::default(); 4 * 2];
        cells[0].ch = b'O';
        cells[1].ch = b'K';
        let t = TextScreen {
            cols: 4,
            rows: 2,
            cells,
            cursor: None,
        };
        assert_eq!(text_dump(Some(&Display::Text(t))), "OK\n\n");
        assert_eq!(text_dump(None), "blank\n");
    }
}
