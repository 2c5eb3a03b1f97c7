//! One VNC connection: the handshake, the client's messages applied, and
//! updates sent when it asked and the screen changed.
//!
//! Runs on a thread of its own; whatever the client sends or fails to
//! read ends this connection only. A malformed message closes it; a
//! handshake not done in [`HANDSHAKE_TIMEOUT`] or an update not taken in
//! [`WRITE_TIMEOUT`] too. Keys the client still holds when it goes are
//! released.

use super::input::InputState;
use super::protocol::{
    server_init, ClientMessage, Event, PixelFormat, ProtocolError, Session, SERVER_VERSION,
};
use super::update::{changed_rects, fit, whole, Rect, UpdateMessage, ENCODING_DESKTOP_SIZE};
use super::Shared;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_devices::vga::render::Framebuffer;

/// How long a client may take from connecting to its ClientInit.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the thread looks for a new frame while the client is quiet.
const POLL: Duration = Duration::from_millis(20);

/// The name the desktop is given in ServerInit.
pub const DESKTOP_NAME: &str = "vmm";

/// An update the client asked for and has not had.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// All of `area`, not only what changed.
    full: bool,
    area: Rect,
}

/// Why a connection ended (logged).
#[derive(Debug)]
enum End {
    Io(std::io::Error),
    Protocol(ProtocolError),
    Closed,
    HandshakeTimeout,
    Stopped,
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        End::Protocol(e)
    }
}

/// One connection's state after the handshake.
struct Client<'a> {
    shared: &'a Shared,
    stream: TcpStream,
    format: PixelFormat,
    desktop_size: bool,
    /// The client's screen size.
    size: (usize, usize),
    pending: Option<Pending>,
    /// What the client shows (in the server's format), and the frame
    /// number it came from.
    sent: Option<Arc<Framebuffer>>,
    sent_generation: u64,
    input: InputState,
}

/// Serve the client on `stream` until it goes, errs or the server stops;
/// with `refuse`, tell it that reason and close.
pub(super) fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared, refuse: Option<&str>) {
    log::info!("vnc: {peer} connected");
    let mut client = Client {
        shared,
        stream,
        format: PixelFormat::SERVER,
        desktop_size: false,
        size: (0, 0),
        pending: None,
        sent: None,
        sent_generation: 0,
        input: InputState::new(),
    };
    let session = match refuse {
        Some(why) => Session::refusing(why),
        None => Session::new(),
    };
    let end = client.run(session);
    for e in client.input.release_all() {
        shared.keys.push(e);
    }
    match end {
        End::Closed | End::Stopped => log::info!("vnc: {peer} disconnected"),
        End::Io(e) => log::info!("vnc: {peer} dropped: {e}"),
        End::Protocol(e) => log::warn!("vnc: {peer} dropped: {e}"),
        End::HandshakeTimeout => log::warn!("vnc: {peer} dropped: no handshake in time"),
    }
}

impl Client<'_> {
    fn run(&mut self, mut session: Session) -> End {
        let started = Instant::now();
        let setup = (|| {
            self.stream.set_nodelay(true)?;
            self.stream.set_read_timeout(Some(POLL))?;
            self.stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            self.stream.write_all(SERVER_VERSION)
        })();
        if let Err(e) = setup {
            return End::Io(e);
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return End::Stopped;
            }
            if !session.ready() && started.elapsed() > HANDSHAKE_TIMEOUT {
                return End::HandshakeTimeout;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return End::Closed,
                Ok(n) => {
                    let mut events = Vec::new();
                    let result = session.feed_into(&buf[..n], &mut events);
                    // A refusal's reply comes before its error.
                    for e in events {
                        if let Err(end) = self.event(e) {
                            return end;
                        }
                    }
                    if let Err(e) = result {
                        return End::Protocol(e);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return End::Io(e),
            }
            if session.ready() {
                if let Err(end) = self.send_update() {
                    return end;
                }
            }
        }
    }

    fn event(&mut self, e: Event) -> Result<(), End> {
        match e {
            Event::Reply(bytes) => self.stream.write_all(&bytes)?,
            Event::ClientInit { .. } => {
                // The guest's first frame, if the vCPU's thread is about
                // to publish it.
                let deadline = Instant::now() + Duration::from_secs(1);
                while self.shared.current().0 == 0 && Instant::now() < deadline {
                    std::thread::sleep(POLL);
                }
                let (_, frame) = self.shared.current();
                let w = frame.width.min(usize::from(u16::MAX));
                let h = frame.height.min(usize::from(u16::MAX));
                self.size = (w, h);
                self.stream
                    .write_all(&server_init(w as u16, h as u16, DESKTOP_NAME))?;
            }
            Event::Message(m) => self.message(m)?,
        }
        Ok(())
    }

    fn message(&mut self, m: ClientMessage) -> Result<(), End> {
        match m {
            ClientMessage::SetPixelFormat(pf) => {
                pf.check()?;
                self.format = pf;
            }
            ClientMessage::SetEncodings(list) => {
                self.desktop_size = list.contains(&ENCODING_DESKTOP_SIZE);
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
                self.pending = Some(match self.pending {
                    Some(p) => Pending {
                        full: p.full || !incremental,
                        area: p.area.union(&area),
                    },
                    None => Pending {
                        full: !incremental,
                        area,
                    },
                });
            }
            ClientMessage::Key { down, keysym } => {
                for e in self.input.key_event(down, keysym) {
                    // A full queue drops the event, as a keyboard does.
                    self.shared.keys.push(e);
                }
            }
            ClientMessage::Pointer { buttons, x, y } => {
                for e in self.input.pointer_event(buttons, x, y) {
                    self.shared.keys.push(e);
                }
            }
            ClientMessage::CutText { .. } => {}
        }
        Ok(())
    }

    /// Answer the pending request if there is something to send.
    fn send_update(&mut self) -> Result<(), End> {
        let Some(pending) = self.pending else {
            return Ok(());
        };
        let (generation, mut frame) = self.shared.current();
        if !pending.full && generation == self.sent_generation {
            return Ok(());
        }
        if (frame.width, frame.height) != self.size {
            if self.desktop_size {
                // The guest changed mode: the client resizes and asks
                // again; all of the new screen goes then.
                let mut m = UpdateMessage::new();
                let (w, h) = (
                    frame.width.min(usize::from(u16::MAX)),
                    frame.height.min(usize::from(u16::MAX)),
                );
                m.desktop_size(w, h);
                self.stream.write_all(&m.into_bytes())?;
                self.size = (w, h);
                self.sent = None;
                self.sent_generation = 0;
                self.pending = None;
                return Ok(());
            }
            // A client that cannot resize sees the new mode cut or
            // padded to its size.
            frame = Arc::new(fit(&frame, self.size.0, self.size.1));
        }
        let before = if pending.full {
            None
        } else {
            self.sent.as_deref()
        };
        let rects = changed_rects(before, &frame, pending.area);
        self.sent_generation = generation;
        if rects.is_empty() && !pending.full {
            return Ok(());
        }
        let mut m = UpdateMessage::new();
        for r in &rects {
            m.raw(&frame, *r, &self.format);
        }
        self.stream.write_all(&m.into_bytes())?;
        self.pending = None;
        // What the client shows now: the whole frame when it asked for
        // all of it, else its old picture with these rectangles.
        self.sent = Some(match self.sent.take() {
            Some(mut old)
                if pending.area.intersect(&whole(&frame)) != whole(&frame)
                    && (old.width, old.height) == (frame.width, frame.height) =>
            {
                let o = Arc::make_mut(&mut old);
                for r in &rects {
                    for y in r.y..r.y + r.height {
                        let row = y * frame.width + r.x..y * frame.width + r.x + r.width;
                        o.pixels[row.clone()].copy_from_slice(&frame.pixels[row]);
                    }
                }
                old
            }
            _ => frame,
        });
        Ok(())
    }
}
