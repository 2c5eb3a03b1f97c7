//! `--display vnc=ADDR:PORT`: the guest's screen served to VNC viewers
//! (RFB 3.3, 3.7 and 3.8, security type None), their keys and pointer sent
//! to the guest's PS/2 keyboard and mouse.
//!
//! No crate fit (checked 2026-12): `vnc` and `vnc-rs` are clients; `rfb`
//! (0.1.0) is MPL-2.0 and brings tokio "full" and `image`;
//! `rustvncserver` (2.2) needs Rust 1.90 (the workspace's is 1.88), a
//! multi-threaded tokio runtime, DES and zlib. What a VMM needs of RFB is
//! small (the handshake, six client messages, Raw rectangles and
//! DesktopSize), so it is written here on std: one listener thread, one
//! thread a client.
//!
//! - [`protocol`]: the handshake and the client's messages, a state
//!   machine over bytes (fuzzed: `fuzz/fuzz_targets/vnc_protocol.rs`).
//! - [`update`]: which tiles changed, and the `FramebufferUpdate` that
//!   carries them in the client's pixel format.
//! - [`input`]: X keysyms and pointer positions as PS/2 key presses and
//!   mouse motion.
//! - [`client`]: one connection, tying the three together.
//!
//! The vCPU's thread renders the screen between time slices (at most
//! every [`FRAME_EVERY`], and only while a client is connected) with the
//! same renderer as `--screenshot` (text modes drawn with the guest's
//! font), and publishes it when it changed; it never waits for a client.
//! Each client's thread sends what changed since that client's last
//! update, tile by tile, whenever the client has asked: a slow client
//! skips frames (it gets the newest), and one that does not read for
//! [`client::WRITE_TIMEOUT`] is dropped. Up to [`MAX_CLIENTS`] clients
//! share the screen and the keyboard (the ClientInit's shared flag is
//! ignored); more are refused with a reason. There is no authentication:
//! the server listens on loopback unless told otherwise (`vnc-public=`).

pub mod client;
pub mod input;
pub mod protocol;
pub mod update;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_devices::input::InputQueue;
use vmm_devices::pc::Pc;
use vmm_devices::vga::render::{Display, Framebuffer};

/// How often the screen is looked at while a client is connected.
pub const FRAME_EVERY: Duration = Duration::from_millis(40);

/// Most clients served at once; more are refused.
pub const MAX_CLIENTS: usize = 4;

/// Most connections being refused at once; more are closed unanswered.
const MAX_REFUSING: usize = 4;

/// The screen before the guest has drawn anything (and while it is blank
/// before any mode was seen): black, the size of a VGA's 640x480.
fn black(width: usize, height: usize) -> Framebuffer {
    Framebuffer {
        width,
        height,
        pixels: vec![0; width * height],
    }
}

/// Why the VNC server did not start.
#[derive(Debug)]
pub enum VncError {
    /// The address could not be listened on.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Display for VncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VncError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

impl std::error::Error for VncError {}

/// The newest frame and its number.
#[derive(Debug)]
struct Published {
    generation: u64,
    frame: Arc<Framebuffer>,
}

/// What the vCPU's thread and the client threads share.
#[derive(Debug)]
struct Shared {
    frame: Mutex<Published>,
    clients: AtomicUsize,
    refusing: AtomicUsize,
    stop: AtomicBool,
    keys: InputQueue,
}

impl Shared {
    fn current(&self) -> (u64, Arc<Framebuffer>) {
        let p = self.frame.lock().unwrap_or_else(|e| e.into_inner());
        (p.generation, p.frame.clone())
    }
}

/// The VNC server: its listener runs on a thread of its own; the vCPU's
/// thread calls [`VncServer::tick`] between time slices.
pub struct VncServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    last: Option<Option<Display>>,
    next: Instant,
}

impl VncServer {
    /// Listen on `addr` (port 0: any free port, see
    /// [`VncServer::local_addr`]); keys and pointer go to `keys`.
    pub fn start(addr: SocketAddr, keys: InputQueue) -> Result<Self, VncError> {
        let bind = |source| VncError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let shared = Arc::new(Shared {
            frame: Mutex::new(Published {
                generation: 0,
                frame: Arc::new(black(640, 480)),
            }),
            clients: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            keys,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("vnc-listen".into())
            .spawn(move || listen(listener, s))
            .map_err(bind)?;
        Ok(Self {
            shared,
            addr: local,
            last: None,
            next: Instant::now(),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Acquire)
    }

    /// Look at `pc`'s screen (while a client is connected, at most every
    /// [`FRAME_EVERY`]) and publish it to the clients if it changed.
    pub fn tick(&mut self, pc: &Pc) {
        if self.clients() == 0 {
            self.last = None;
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + FRAME_EVERY;
        let display = pc.display();
        if self.last.as_ref() == Some(&display) {
            return;
        }
        let (_, before) = self.shared.current();
        let frame = match &display {
            Some(Display::Graphics(f)) => f.clone(),
            Some(Display::Text(_)) => pc
                .screenshot()
                .unwrap_or_else(|| black(before.width, before.height)),
            Some(Display::Blank) | None => black(before.width, before.height),
        };
        self.last = Some(display);
        self.publish(frame);
    }

    /// Publish `frame` (tests; [`VncServer::tick`] renders the guest's).
    pub fn publish(&self, frame: Framebuffer) {
        let mut p = self.shared.frame.lock().unwrap_or_else(|e| e.into_inner());
        if p.generation == 0 || *p.frame != frame {
            p.generation += 1;
            p.frame = Arc::new(frame);
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Start the server `outputs` ask for (`--display vnc=`), if any, and
/// say where it listens on stderr; keys and pointer go to `keys`.
pub fn start_for(
    outputs: &[crate::display::ScreenOutput],
    keys: &InputQueue,
) -> Result<Option<VncServer>, VncError> {
    let Some(addr) = outputs.iter().find_map(|o| match o {
        crate::display::ScreenOutput::Vnc(a) => Some(*a),
        _ => None,
    }) else {
        return Ok(None);
    };
    let server = VncServer::start(addr, keys.clone())?;
    // CR LF: the terminal may be in raw mode.
    eprint!(
        "vmm: VNC server on {} (no password)\r\n",
        server.local_addr()
    );
    Ok(Some(server))
}

/// Accept clients until the server is dropped.
fn listen(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                log::warn!("vnc: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let refuse = shared.clients.load(Ordering::Acquire) >= MAX_CLIENTS;
        let counter = if refuse {
            &shared.refusing
        } else {
            &shared.clients
        };
        if refuse && counter.load(Ordering::Acquire) >= MAX_REFUSING {
            drop(stream);
            continue;
        }
        counter.fetch_add(1, Ordering::AcqRel);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vnc-client".into())
            .spawn(move || {
                let counter = if refuse { &s.refusing } else { &s.clients };
                let _count = Count(counter);
                let why =
                    refuse.then(|| format!("{MAX_CLIENTS} VNC clients are connected already"));
                client::serve(stream, peer, &s, why.as_deref());
            });
        if spawned.is_err() {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Decrements its counter when dropped (the client thread ends, however).
struct Count<'a>(&'a AtomicUsize);

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// A 3.8 client through ServerInit; the size it was told.
    fn connect(addr: SocketAddr) -> (TcpStream, (u16, u16)) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_n(&mut s, 12), b"RFB 003.008\n");
        s.write_all(b"RFB 003.008\n\x01\x01").unwrap();
        assert_eq!(read_n(&mut s, 6), [1, 1, 0, 0, 0, 0]);
        let init = read_n(&mut s, 24);
        let name = read_n(&mut s, 3);
        assert_eq!(name, b"vmm");
        let size = (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        );
        (s, size)
    }

    fn request(s: &mut TcpStream, incremental: bool, w: u16, h: u16) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend(w.to_be_bytes());
        m.extend(h.to_be_bytes());
        s.write_all(&m).unwrap();
    }

    /// One update's rectangles: (x, y, w, h, encoding), pixels skipped.
    fn update(s: &mut TcpStream) -> Vec<(u16, u16, u16, u16, i32)> {
        let head = read_n(s, 4);
        assert_eq!(head[0], 0);
        let n = u16::from_be_bytes([head[2], head[3]]);
        (0..n)
            .map(|_| {
                let r = read_n(s, 12);
                let be = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
                let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                if enc == 0 {
                    read_n(s, usize::from(be(4)) * usize::from(be(6)) * 4);
                }
                (be(0), be(2), be(4), be(6), enc)
            })
            .collect()
    }

    fn wait_clients(server: &VncServer, n: usize) {
        let start = Instant::now();
        while server.clients() != n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} clients",
                server.clients()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn clients_get_the_screen_its_changes_and_its_new_size() {
        let keys = InputQueue::new();
        let server = VncServer::start("127.0.0.1:0".parse().unwrap(), keys.clone()).unwrap();
        server.publish(black(64, 48));
        let (mut c, size) = connect(server.local_addr());
        assert_eq!(size, (64, 48));
        request(&mut c, false, 64, 48);
        let all: u32 = update(&mut c)
            .iter()
            .map(|r| u32::from(r.2) * u32::from(r.3))
            .sum();
        assert_eq!(all, 64 * 48);
        // One pixel changes: one tile comes.
        let mut f = black(64, 48);
        f.pixels[40 * 64 + 40] = 0xffffff;
        request(&mut c, true, 64, 48);
        server.publish(f);
        assert_eq!(update(&mut c), vec![(32, 32, 32, 16, 0)]);
        // A key typed reaches the keyboard's queue.
        c.write_all(&[4, 1, 0, 0, 0, 0, 0, b'a', 4, 0, 0, 0, 0, 0, 0, b'a'])
            .unwrap();
        // The mode changes: DesktopSize for a client that takes it.
        c.write_all(&[2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21])
            .unwrap();
        request(&mut c, true, 64, 48);
        server.publish(black(80, 40));
        assert_eq!(update(&mut c), vec![(0, 0, 80, 40, -223)]);
        request(&mut c, true, 80, 40);
        assert_eq!(update(&mut c), vec![(0, 0, 80, 32, 0), (0, 32, 80, 8, 0)]);
        assert_eq!(keys.len(), 2, "a press and a release");
        drop(c);
        wait_clients(&server, 0);
    }

    #[test]
    fn a_broken_client_goes_alone_and_a_fifth_is_refused() {
        let server = VncServer::start("127.0.0.1:0".parse().unwrap(), InputQueue::new()).unwrap();
        server.publish(black(32, 32));
        let (mut good, _) = connect(server.local_addr());
        // A message type that does not exist: that client is closed.
        let (mut bad, _) = connect(server.local_addr());
        bad.write_all(&[0xfe, 1, 2, 3]).unwrap();
        assert_eq!(bad.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed");
        // A client that never reads, however much changes (it holds a
        // request): the server goes on publishing and serving the others.
        let (mut slow, _) = connect(server.local_addr());
        for i in 0..50 {
            request(&mut slow, false, 32, 32);
            server.publish(Framebuffer {
                width: 32,
                height: 32,
                pixels: vec![i; 32 * 32],
            });
        }
        request(&mut good, false, 32, 32);
        assert_eq!(update(&mut good), vec![(0, 0, 32, 32, 0)]);
        // Four served (good, slow and two more): a fifth is told why.
        let _third = connect(server.local_addr());
        let _fourth = connect(server.local_addr());
        wait_clients(&server, 4);
        let mut fifth = TcpStream::connect(server.local_addr()).unwrap();
        fifth
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(read_n(&mut fifth, 12), b"RFB 003.008\n");
        fifth.write_all(b"RFB 003.008\n").unwrap();
        let mut rest = Vec::new();
        fifth.read_to_end(&mut rest).unwrap();
        assert_eq!(rest[0], 0, "no security types");
        assert!(
            String::from_utf8_lossy(&rest[5..]).contains("4 VNC clients are connected"),
            "{rest:?}"
        );
    }
}
