//! `--display vnc=ADDR:PORT`: the guest's screen served to VNC viewers
//! (RFB 3.3, 3.7 and 3.8, security type None), their keys and pointer sent
//! to the guest's PS/2 keyboard and mouse.
//!
//! No crate fit (checked 2026-12): `vnc` and `vnc-rs` are clients; `rfb`
//! (0.1.0) is MPL-2.0 and brings tokio "full" and `image`;
//! `rustvncserver` (2.2) needs Rust 1.90 (the workspace's is 1.86), a
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
