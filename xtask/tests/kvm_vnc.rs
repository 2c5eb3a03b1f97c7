//! `vmm --display vnc=127.0.0.1:0` seen through a VNC client written here
//! (RFB 3.8 and 3.3, as a viewer speaks it): `vmm` runs the CD whose
//! ISOLINUX waits at its `boot:` prompt (`xtask::images::prompt_iso`) under
//! this machine's KVM, with COM1 on stdout as usual.
//!
//! The client does the handshake, asks for the whole screen and keeps
//! asking for what changed, as viewers do; it types `nosuchlabel` and
//! Enter as X keysyms, and ISOLINUX answers on the screen and on COM1. When
//! `vmm` is stopped, the picture the client holds must be the same pixels
//! as `--screenshot` writes. On the way, a 3.3 client is served too, a
//! client that speaks no RFB is dropped without disturbing the others,
//! and the banner says no password protects the server.
//!
//! `cargo xtask test` builds `vmm` and the CD and sets `VMM_TEST_VMM`,
//! `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

/// What the client shows: the screen as 0x00RRGGBB pixels.
struct Screen {
    width: usize,
    height: usize,
    pixels: Vec<u32>,
}

/// A minimal RFB client: 32-bit little-endian true colour, Raw and
/// DesktopSize.
struct Client {
    s: TcpStream,
    screen: Screen,
    name: String,
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    s.read_exact(&mut b).expect("the server's bytes");
    b
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Client {
    /// Connect and do the handshake as a client of `version` (3.3 or 3.8).
    fn connect(addr: SocketAddr, version: &[u8; 12]) -> Client {
        let mut s = TcpStream::connect(addr).expect("connect to the VNC server");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(read_n(&mut s, 12), b"RFB 003.008\n", "server version");
        s.write_all(version).unwrap();
        if version == b"RFB 003.003\n" {
            assert_eq!(be32(&read_n(&mut s, 4)), 1, "3.3: security type None");
        } else {
            assert_eq!(read_n(&mut s, 2), [1, 1], "one security type, None");
            s.write_all(&[1]).unwrap();
            assert_eq!(be32(&read_n(&mut s, 4)), 0, "SecurityResult OK");
        }
        s.write_all(&[1]).unwrap(); // ClientInit, shared
        let init = read_n(&mut s, 24);
        let (width, height) = (be16(&init[0..]), be16(&init[2..]));
        // 32 bpp, depth 24, little-endian, true colour, 255/255/255 at
        // 16/8/0.
        assert_eq!(
            &init[4..17],
            &[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0],
            "ServerInit pixel format"
        );
        let name_len = be32(&init[20..]) as usize;
        let name = String::from_utf8(read_n(&mut s, name_len)).unwrap();
        Client {
            s,
            screen: Screen {
                width,
                height,
                pixels: vec![0; width * height],
            },
            name,
        }
    }

    fn set_encodings(&mut self, list: &[i32]) {
        let mut m = vec![2, 0];
        m.extend((list.len() as u16).to_be_bytes());
        for e in list {
            m.extend(e.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    fn request(&mut self, incremental: bool) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend((self.screen.width as u16).to_be_bytes());
        m.extend((self.screen.height as u16).to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    fn key(&mut self, keysym: u32) {
        for down in [1, 0] {
            let mut m = vec![4, down, 0, 0];
            m.extend(keysym.to_be_bytes());
            self.s.write_all(&m).unwrap();
        }
    }

    /// Read one FramebufferUpdate into the screen; whether it resized it.
    fn update(&mut self) -> bool {
        let head = read_n(&mut self.s, 4);
        assert_eq!(head[0], 0, "a FramebufferUpdate");
        let mut resized = false;
        for _ in 0..be16(&head[2..]) {
            let r = read_n(&mut self.s, 12);
            let (x, y, w, h) = (be16(&r[0..]), be16(&r[2..]), be16(&r[4..]), be16(&r[6..]));
            match be32(&r[8..]) as i32 {
                0 => {
                    assert!(x + w <= self.screen.width && y + h <= self.screen.height);
                    let data = read_n(&mut self.s, w * h * 4);
                    for row in 0..h {
                        for col in 0..w {
                            let p = &data[(row * w + col) * 4..];
                            self.screen.pixels[(y + row) * self.screen.width + x + col] =
                                u32::from_le_bytes([p[0], p[1], p[2], 0]);
                        }
                    }
                }
                -223 => {
                    self.screen = Screen {
                        width: w,
                        height: h,
                        pixels: vec![0; w * h],
                    };
                    resized = true;
                }
                e => panic!("encoding {e} was not asked for"),
            }
        }
        resized
    }

    /// Keep the screen up to date, as a viewer does, until `done` holds
    /// for it or `timeout` passes.
    fn watch(&mut self, timeout: Duration, done: &dyn Fn(&Screen) -> bool) -> bool {
        let start = Instant::now();
        self.s
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut asked = false;
        while start.elapsed() < timeout {
            if done(&self.screen) {
                return true;
            }
            if !asked {
                self.request(true);
                asked = true;
            }
            let mut t = [0u8; 1];
            match self.s.peek(&mut t) {
                Ok(1) => {
                    self.s
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    if self.update() {
                        self.request(false);
                    } else {
                        asked = false;
                    }
                    self.s
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                }
                Ok(_) => panic!("the server closed the connection"),
                Err(_) => {}
            }
        }
        done(&self.screen)
    }
}

/// The guest's COM1 output and `vmm`'s stderr, collected as they come.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(&self, mut from: impl Read + Send + 'static) {
        let out = self.0.clone();
        std::thread::spawn(move || {
            // Raw chunks, not lines: a prompt has no newline after it.
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn wait_for(&self, what: &str, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let t = self.text();
            if t.contains(what) {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// Kills `vmm` if the test fails half-way.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_png(path: &Path) -> Screen {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let (width, height) = (info.width as usize, info.height as usize);
    let pixels = buf[..width * height * 3]
        .chunks_exact(3)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Screen {
        width,
        height,
        pixels,
    }
}

/// Lit pixels in rows `rows` of the screen.
fn lit(s: &Screen, rows: std::ops::Range<usize>) -> usize {
    rows.flat_map(|y| s.pixels[y * s.width..(y + 1) * s.width].iter())
        .filter(|p| **p != 0)
        .count()
}

#[test]
#[ignore = "boots the prompt CD under KVM and serves it over VNC: run through cargo xtask test"]
fn a_vnc_client_sees_isolinux_types_a_label_and_matches_the_screenshot() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let started = Instant::now();
    let iso = xtask::images::prompt_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let dir = std::env::temp_dir().join(format!("vmm-vnc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (shot, text) = (dir.join("shot.png"), dir.join("screen.txt"));
    let seabios = env_path("VMM_TEST_SEABIOS");
    let mut child = Command::new(env_path("VMM_TEST_VMM"))
        .args(["run", "--memory", "256M", "--serial", "stdio"])
        .arg("--display")
        .arg(format!("vnc=127.0.0.1:0,text={}", text.display()))
        .arg("--screenshot")
        .arg(&shot)
        .arg("--cdrom")
        .arg(&iso)
        .arg("--bios")
        .arg(&seabios)
        .arg("--vga-bios")
        .arg(seabios.with_file_name("vgabios-stdvga.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let (com1, stderr) = (Output::default(), Output::default());
    com1.collect(child.stdout.take().unwrap());
    stderr.collect(child.stderr.take().unwrap());
    let mut vmm = Vmm(child);
    let long = Duration::from_secs(120);

    // The banner says where, and that there is no password.
    let err = stderr
        .wait_for("(no password)", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no VNC banner: {}", stderr.text()));
    let addr: SocketAddr = err
        .lines()
        .find_map(|l| l.strip_prefix("vmm: VNC server on "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {err}"));
    assert!(addr.ip().is_loopback(), "{addr}");

    // A 3.8 client: the handshake, then the whole screen and its changes
    // until ISOLINUX's prompt is on COM1 and the screen has settled.
    let mut c = Client::connect(addr, b"RFB 003.008\n");
    assert_eq!(c.name, "vmm");
    c.set_encodings(&[0, -223]);
    c.request(false);
    let com = com1
        .wait_for("boot:", long)
        .unwrap_or_else(|| panic!("no ISOLINUX prompt on COM1: {}", com1.text()));
    assert!(com.contains("ISOLINUX 6"), "{com}");
    // An 80x25 text mode drawn with the VGA BIOS's 9x16 font.
    assert!(
        c.watch(long, &|s| (s.width, s.height) == (720, 400)
            && lit(s, 0..400) > 1000),
        "the client never saw the text screen: {}x{}",
        c.screen.width,
        c.screen.height
    );

    // Hostile neighbours: one that speaks no RFB is dropped; a 3.3 client
    // is served the same screen size.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_n(&mut junk, 12), b"RFB 003.008\n");
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = junk.read_to_end(&mut rest);
    assert!(rest.is_empty(), "junk got an answer: {rest:?}");
    let old = Client::connect(addr, b"RFB 003.003\n");
    assert_eq!((old.screen.width, old.screen.height), (720, 400));
    drop(old);

    // Type a label at the prompt: ISOLINUX echoes it and cannot find it.
    let before = lit(&c.screen, 0..400);
    for ch in "nosuchlabel".bytes() {
        c.key(ch.into());
    }
    c.key(0xff0d); // Return
    let com = com1
        .wait_for("nosuchlabel", long)
        .unwrap_or_else(|| panic!("the typed label is not on COM1: {}", com1.text()));
    // More is drawn on the client's screen: the label and the answer.
    assert!(
        c.watch(long, &|s| lit(s, 0..400) > before + 200),
        "the client's screen did not change after typing: {com}"
    );
    // ISOLINUX echoes the label as it is typed and answers after Return:
    // wait for the answer, not only the echo.
    let answered = |t: &str| {
        t.contains("Could not find kernel image: nosuchlabel")
            || t.contains("nosuchlabel... failed")
            || t.lines().filter(|l| l.starts_with("boot:")).count() >= 2
    };
    (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::read_to_string(&text)
                .ok()
                .filter(|t| t.contains("boot: nosuchlabel") && answered(t))
        })
        .unwrap_or_else(|| {
            panic!(
                "the VGA screen never showed the label and ISOLINUX's answer: {}",
                std::fs::read_to_string(&text).unwrap_or_default()
            )
        });
    // Let the screen settle (the second prompt drawn), then take what the
    // client holds.
    std::thread::sleep(Duration::from_secs(1));
    c.watch(Duration::from_secs(2), &|_| false);

    // Stopped: the screenshot is what the client shows, pixel for pixel.
    let pid = vmm.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = vmm.0.wait().unwrap();
    let err = stderr
        .wait_for("vmm: ended by signal 15", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{status:?}: {}", stderr.text()));
    assert!(!err.contains("panicked"), "{err}");
    let png = read_png(&shot);
    assert_eq!((png.width, png.height), (c.screen.width, c.screen.height));
    let differ = png
        .pixels
        .iter()
        .zip(&c.screen.pixels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differ, 0, "pixels that differ from the screenshot");
    println!(
        "vnc: {}x{} screen, {} lit pixels, {:.1} s",
        c.screen.width,
        c.screen.height,
        lit(&c.screen, 0..400),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
