//! Screenshots: the bare-metal host's (printed on its console by
//! `screenshot=`, see host-glue-baremetal's `screenshot` module), plain
//! QEMU's (`-vga std`, the monitor's `screendump`) as the reference, PNG
//! files, and the difference between two pictures.

use crate::system::{Error, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A picture: `width * height` pixels as 0x00RRGGBB, row by row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The pixels, row by row.
    pub pixels: Vec<u32>,
}

impl Image {
    /// Write the picture as an 8-bit RGB PNG at `path` (beside it first,
    /// then renamed over it).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let io = |e: &dyn std::fmt::Display| Error::msg(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("png.partial");
        let file = std::fs::File::create(&tmp).map_err(|e| io(&e))?;
        let mut encoder = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
            .collect();
        encoder
            .write_header()
            .and_then(|mut w| w.write_image_data(&data))
            .map_err(|e| io(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(&e))
    }

    /// Read an 8-bit RGB or RGBA PNG (or grey, palette: expanded).
    pub fn read_png(path: &Path) -> Result<Image> {
        let io = |e: &dyn std::fmt::Display| Error::msg(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| io(&e))?;
        let mut decoder = png::Decoder::new(BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|e| io(&e))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| io(&"picture too large"))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(|e| io(&e))?;
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Indexed => return Err(io(&"palette PNG not expanded")),
        };
        let (width, height) = (info.width as usize, info.height as usize);
        let pixels = buf[..info.buffer_size()]
            .chunks(info.line_size)
            .take(height)
            .flat_map(|row| {
                row.chunks(channels).take(width).map(|p| {
                    let (r, g, b) = if channels >= 3 {
                        (p[0], p[1], p[2])
                    } else {
                        (p[0], p[0], p[0])
                    };
                    u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b)
                })
            })
            .collect();
        Ok(Image {
            width,
            height,
            pixels,
        })
    }

    /// The share of pixels (0.0 to 1.0) that differ between `self` and
    /// `other` by more than `tolerance` in any colour channel; `None` when
    /// their sizes differ.
    pub fn difference(&self, other: &Image, tolerance: u8) -> Option<f64> {
        if (self.width, self.height) != (other.width, other.height) || self.pixels.is_empty() {
            return None;
        }
        let channel = |p: u32, shift: u32| ((p >> shift) & 0xff) as i32;
        let differ = self
            .pixels
            .iter()
            .zip(&other.pixels)
            .filter(|(a, b)| {
                [0, 8, 16]
                    .iter()
                    .any(|s| (channel(**a, *s) - channel(**b, *s)).abs() > i32::from(tolerance))
            })
            .count();
        Some(differ as f64 / self.pixels.len() as f64)
    }

    /// How many distinct colours the picture has (a blank screen has one).
    pub fn colours(&self) -> usize {
        let mut seen: Vec<u32> = self.pixels.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// The screenshot of VM `vm` the bare-metal host printed on `console`
/// (`screenshot=`): a `vm N screenshot: WxH` line, `vm N pixels: ` lines of
/// runs `COUNTxRRGGBB` (hexadecimal count and colour), and `vm N
/// screenshot end`. The last complete one if there are several; `None`
/// if there is none or it does not add up.
pub fn from_console(console: &str, vm: u32) -> Option<Image> {
    let head = format!("vm {vm} screenshot: ");
    let body = format!("vm {vm} pixels: ");
    let end = format!("vm {vm} screenshot end");
    let mut found = None;
    let mut current: Option<Image> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(size) = line.strip_prefix(&head) {
            current = size.split_once('x').and_then(|(w, h)| {
                Some(Image {
                    width: w.parse().ok()?,
                    height: h.parse().ok()?,
                    pixels: Vec::new(),
                })
            });
        } else if let Some(runs) = line.strip_prefix(&body) {
            let Some(image) = current.as_mut() else {
                continue;
            };
            for run in runs.split_whitespace() {
                let parsed = run.split_once('x').and_then(|(n, c)| {
                    Some((
                        usize::from_str_radix(n, 16).ok()?,
                        u32::from_str_radix(c, 16).ok()?,
                    ))
                });
                match parsed {
                    Some((n, c)) if image.pixels.len() + n <= image.width * image.height => {
                        image.pixels.extend(std::iter::repeat_n(c, n));
                    }
                    _ => {
                        current = None;
                        break;
                    }
                }
            }
        } else if line.starts_with(&end) {
            if let Some(image) = current.take() {
                if image.pixels.len() == image.width * image.height {
                    found = Some(image);
                }
            }
        }
    }
    found
}

/// Boot `iso` in plain QEMU (TCG, `-vga std`, the i440FX PC, SeaBIOS)
/// without a window and take its screen with QMP's `screendump`
/// every 300 ms until a graphics picture (not the 720x400 of a text mode)
/// with more than one colour is the same in three dumps in a row; then stop
/// QEMU and return the picture. `work` is a scratch path prefix (monitor
/// socket, dumps).
pub fn qemu_reference(iso: &Path, work: &Path, timeout: Duration) -> Result<Image> {
    let socket = work.with_extension("monitor");
    let dump = work.with_extension("dump.png");
    let _ = std::fs::remove_file(&socket);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "pc", "-m", "256", "-vga", "std", "-display", "none",
        ])
        .args(["-serial", "null", "-parallel", "none", "-net", "none"])
        .arg("-cdrom")
        .arg(iso)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    let result = (|| {
        let start = Instant::now();
        let monitor = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(Error::msg(format!("QEMU's monitor: {e}"))),
            }
        };
        monitor
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| Error::msg(format!("QEMU's monitor: {e}")))?;
        let mut reader =
            BufReader::new(monitor.try_clone().map_err(|e| Error::msg(e.to_string()))?);
        let mut writer = monitor;
        let mut qmp = |command: &str| -> Result<()> {
            writeln!(writer, "{command}").map_err(|e| Error::msg(format!("QMP: {e}")))?;
            wait_for_answer(&mut reader)
        };
        qmp(r#"{"execute": "qmp_capabilities"}"#)?;
        let dump_text = dump
            .to_str()
            .filter(|s| !s.contains(['"', '\\']))
            .ok_or_else(|| Error::msg(format!("{}: not a plain path", dump.display())))?
            .to_string();
        let mut last: Option<Image> = None;
        let mut same = 0;
        while start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(300));
            let _ = std::fs::remove_file(&dump);
            qmp(&format!(
                r#"{{"execute": "screendump", "arguments": {{"filename": "{dump_text}", "format": "png"}}}}"#
            ))?;
            let Ok(image) = Image::read_png(&dump) else {
                continue;
            };
            let graphics = (image.width, image.height) != (720, 400) && image.colours() > 1;
            if graphics && last.as_ref() == Some(&image) {
                same += 1;
                if same == 3 {
                    return Ok(image);
                }
            } else {
                same = 1;
                last = graphics.then_some(image);
            }
        }
        Err(Error::msg(format!(
            "QEMU showed no steady graphics picture within {timeout:?}"
        )))
    })();
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        eprintln!("qemu: {err}");
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&dump);
    result
}

/// Read QMP's lines (the greeting, events) up to the answer to the
/// command just sent: a `return` or an `error` (an error is returned).
fn wait_for_answer(reader: &mut impl BufRead) -> Result<()> {
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(Error::msg("QMP: QEMU closed the connection")),
            Ok(_) if line.starts_with(r#"{"return""#) => return Ok(()),
            Ok(_) if line.starts_with(r#"{"error""#) => {
                return Err(Error::msg(format!("QMP: {}", line.trim())))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::msg(format!("QMP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_screenshot_reads_back_and_a_broken_one_is_refused() {
        let console = "noise\nvm 0 screenshot: 3x2\nvm 0 pixels: 2xff0000 1x00ff00\n\
                       vm 0 pixels: 3x000000\nvm 0 screenshot end\n";
        let image = from_console(console, 0).unwrap();
        assert_eq!((image.width, image.height), (3, 2));
        assert_eq!(image.pixels, [0xff0000, 0xff0000, 0xff00, 0, 0, 0]);
        assert!(from_console(console, 1).is_none());
        let short = "vm 0 screenshot: 3x2\nvm 0 pixels: 2xff0000\nvm 0 screenshot end\n";
        assert!(from_console(short, 0).is_none());
        let long = "vm 0 screenshot: 1x1\nvm 0 pixels: 2xff0000\nvm 0 screenshot end\n";
        assert!(from_console(long, 0).is_none());
    }

    #[test]
    fn difference_counts_pixels_beyond_the_tolerance() {
        let a = Image {
            width: 2,
            height: 2,
            pixels: vec![0, 0x101010, 0xffffff, 0x808080],
        };
        let mut b = a.clone();
        assert_eq!(a.difference(&b, 0), Some(0.0));
        b.pixels[1] = 0x101012;
        b.pixels[2] = 0;
        assert_eq!(a.difference(&b, 0), Some(0.5));
        assert_eq!(a.difference(&b, 2), Some(0.25));
        let c = Image {
            width: 4,
            height: 1,
            pixels: a.pixels.clone(),
        };
        assert_eq!(a.difference(&c, 0), None);
    }

    #[test]
    fn png_round_trip() {
        let a = Image {
            width: 3,
            height: 1,
            pixels: vec![0x123456, 0xabcdef, 0],
        };
        let path = std::env::temp_dir().join(format!("xtask-png-{}.png", std::process::id()));
        a.write_png(&path).unwrap();
        assert_eq!(Image::read_png(&path).unwrap(), a);
        let _ = std::fs::remove_file(&path);
    }
}
