//! The RFB protocol (RFC 6143) as the server reads it: the handshake
//! (versions 3.3, 3.7 and 3.8, security type None) and the client's
//! messages, as a state machine fed with whatever bytes the socket gave.
//!
//! Nothing here touches a socket or the machine: [`Session::feed`] takes
//! bytes and returns what they meant ([`Event`]), or the
//! [`ProtocolError`] that ends the connection. What the session holds is
//! bounded: at most one incomplete message ([`MAX_MESSAGE`] bytes, a
//! `SetEncodings` with 65535 entries) and a counter for the clipboard
//! text it skips, however long the client says that text is.

use std::fmt;

/// What the server sends first: the highest version it speaks.
pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";

/// The largest client message: `SetEncodings` with 65535 encodings.
pub const MAX_MESSAGE: usize = 4 + 65535 * 4;

/// RFB security type None.
pub const SECURITY_NONE: u8 = 1;

/// The protocol version a client chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 3.3: the server picks the security type.
    V3_3,
    /// 3.7: the client picks from a list; no result for None.
    V3_7,
    /// 3.8: as 3.7, with a security result and failure reasons.
    V3_8,
}

/// A client's pixel format (`PIXEL_FORMAT`, 16 bytes on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel on the wire: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Significant bits.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// True colour (`false`: a colour map, which this server does not do).
    pub true_colour: bool,
    /// Largest red value.
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Red's shift.
    pub red_shift: u8,
    /// Green's shift.
    pub green_shift: u8,
    /// Blue's shift.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's own format: 32 bits, depth 24, little-endian,
    /// 0x00RRGGBB (the renderer's pixels as they are).
    pub const SERVER: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Read the 16 bytes of a `PIXEL_FORMAT`.
    pub fn parse(b: &[u8; 16]) -> Self {
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: be16(4),
            green_max: be16(6),
            blue_max: be16(8),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    /// The 16 bytes of this `PIXEL_FORMAT`.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Whether this server can send pixels in this format: true colour
    /// at 8, 16 or 32 bits per pixel, every channel's shifted maximum
    /// inside the pixel.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let fits = |max: u16, shift: u8| {
            u32::from(shift) < u32::from(self.bits_per_pixel)
                && (u64::from(max) << shift) < (1u64 << self.bits_per_pixel)
        };
        if !self.true_colour
            || !matches!(self.bits_per_pixel, 8 | 16 | 32)
            || !fits(self.red_max, self.red_shift)
            || !fits(self.green_max, self.green_shift)
            || !fits(self.blue_max, self.blue_shift)
        {
            return Err(ProtocolError::UnsupportedPixelFormat(*self));
        }
        Ok(())
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8).max(1)
    }
}

/// One message from a client, after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Send pixels in this format from now on.
    SetPixelFormat(PixelFormat),
    /// The encodings the client takes, preferred first.
    SetEncodings(Vec<i32>),
    /// Send this part of the screen: all of it, or (`incremental`) what
    /// changed since the client last got it.
    FramebufferUpdateRequest {
        /// Only what changed.
        incremental: bool,
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// A key went down or up.
    Key {
        /// Down (`true`) or up.
        down: bool,
        /// Its X keysym.
        keysym: u32,
    },
    /// The pointer is at (`x`, `y`) with these buttons held.
    Pointer {
        /// Button mask: bit 0 left, 1 middle, 2 right, 3 and 4 the wheel.
        buttons: u8,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// The client's clipboard changed; its `len` bytes of text are
    /// skipped (the guest has no clipboard to give them to).
    CutText {
        /// Length of the text.
        len: u32,
    },
}

/// What bytes from the client meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Send these bytes back (the handshake's next step).
    Reply(Vec<u8>),
    /// The handshake is done: send `ServerInit`. `shared` is the
    /// client's wish (all clients share the screen here anyway).
    ClientInit {
        /// The ClientInit's shared flag.
        shared: bool,
    },
    /// A message.
    Message(ClientMessage),
}

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The client's ProtocolVersion is not `RFB 003.xxx\n`.
    BadVersion([u8; 12]),
    /// The client chose a security type this server did not offer.
    BadSecurityType(u8),
    /// The server refused the client (the reason was sent).
    Refused(String),
    /// A message type this server does not know.
    UnknownMessage(u8),
    /// A pixel format this server cannot send.
    UnsupportedPixelFormat(PixelFormat),
    /// Bytes after the session ended.
    Closed,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadVersion(v) => {
                write!(f, "not an RFB 3.x version: {:?}", String::from_utf8_lossy(v))
            }
            ProtocolError::BadSecurityType(t) => {
                write!(f, "security type {t} chosen, only None (1) offered")
            }
            ProtocolError::Refused(why) => write!(f, "refused: {why}"),
            ProtocolError::UnknownMessage(t) => write!(f, "unknown message type {t}"),
            ProtocolError::UnsupportedPixelFormat(p) => write!(
                f,
                "pixel format not supported ({} bpp, true colour {}): 8, 16 and 32 bpp true colour are",
                p.bits_per_pixel, p.true_colour
            ),
            ProtocolError::Closed => write!(f, "the session has ended"),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Version,
    Security(Version),
    ClientInit,
    Messages,
    Closed,
}

/// One client's side of the protocol, from the server's view.
#[derive(Debug)]
pub struct Session {
    state: State,
    buf: Vec<u8>,
    /// Clipboard bytes still to skip.
    skip: u64,
    refuse: Option<String>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// The reason string of a 3.3 failure or a 3.8 security result.
fn reason(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

impl Session {
    /// A session waiting for the client's version ([`SERVER_VERSION`]
    /// has been sent).
    pub fn new() -> Self {
        Self {
            state: State::Version,
            buf: Vec::new(),
            skip: 0,
            refuse: None,
        }
    }

    /// A session that tells the client `why` it is refused, in the form
    /// its version understands, then ends.
    pub fn refusing(why: &str) -> Self {
        Self {
            refuse: Some(why.into()),
            ..Self::new()
        }
    }

    /// Whether the handshake is done and messages flow.
    pub fn ready(&self) -> bool {
        self.state == State::Messages
    }

    /// Bytes held for an incomplete message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take `bytes` from the client; what they complete, in order. An
    /// error ends the session (later calls fail with
    /// [`ProtocolError::Closed`]) and drops the events before it: use
    /// [`Session::feed_into`] to keep them (a refusal's reply is one).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        self.feed_into(bytes, &mut events)?;
        Ok(events)
    }

    /// As [`Session::feed`], appending to `events` and keeping the events
    /// that came before an error (a refusal's reply among them).
    pub fn feed_into(
        &mut self,
        bytes: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let result = self.take(bytes, events);
        if result.is_err() {
            self.state = State::Closed;
            self.buf = Vec::new();
        }
        result
    }

    fn take(&mut self, mut bytes: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        if self.state == State::Closed {
            return Err(ProtocolError::Closed);
        }
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
            }
            // Take no more than the item being read needs, so the buffer
            // never grows past MAX_MESSAGE.
            let need = self.need();
            if self.buf.len() < need {
                if bytes.is_empty() {
                    return Ok(());
                }
                let n = (need - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                continue;
            }
            if let Some(e) = self.step()? {
                events.push(e);
            }
            if self.state == State::Closed {
                return Err(ProtocolError::Refused(
                    self.refuse.clone().unwrap_or_default(),
                ));
            }
        }
    }

    /// How many bytes the item being read needs, as far as the buffer
    /// tells (at least one more than the buffer when that is unknown).
    fn need(&self) -> usize {
        match self.state {
            State::Version => 12,
            State::Security(_) | State::ClientInit => 1,
            State::Closed => 0,
            State::Messages => match self.buf.first() {
                None => 1,
                Some(0) => 20,
                Some(2) => match self.buf.get(2..4) {
                    Some(n) => 4 + 4 * usize::from(u16::from_be_bytes([n[0], n[1]])),
                    None => 4,
                },
                Some(3) => 10,
                Some(4) => 8,
                Some(5) => 6,
                Some(6) => 8,
                // Unknown: one byte is enough to say so.
                Some(_) => 1,
            },
        }
    }

    /// Act on the whole item in the buffer (and empty it): what it
    /// meant, if anything.
    fn step(&mut self) -> Result<Option<Event>, ProtocolError> {
        let b = std::mem::take(&mut self.buf);
        let event = match self.state {
            State::Closed => return Err(ProtocolError::Closed),
            State::Version => {
                let v: [u8; 12] = b[..12].try_into().unwrap_or([0; 12]);
                let version = parse_version(&v)?;
                if let Some(why) = &self.refuse {
                    let mut reply = match version {
                        Version::V3_3 => 0u32.to_be_bytes().to_vec(),
                        Version::V3_7 | Version::V3_8 => vec![0],
                    };
                    reply.extend(reason(why));
                    self.state = State::Closed;
                    Some(Event::Reply(reply))
                } else if version == Version::V3_3 {
                    self.state = State::ClientInit;
                    Some(Event::Reply(
                        u32::from(SECURITY_NONE).to_be_bytes().to_vec(),
                    ))
                } else {
                    self.state = State::Security(version);
                    Some(Event::Reply(vec![1, SECURITY_NONE]))
                }
            }
            State::Security(version) => {
                if b[0] != SECURITY_NONE {
                    return Err(ProtocolError::BadSecurityType(b[0]));
                }
                self.state = State::ClientInit;
                match version {
                    Version::V3_8 => Some(Event::Reply(0u32.to_be_bytes().to_vec())),
                    _ => None,
                }
            }
            State::ClientInit => {
                self.state = State::Messages;
                Some(Event::ClientInit { shared: b[0] != 0 })
            }
            State::Messages => Some(Event::Message(self.message(&b)?)),
        };
        Ok(event)
    }

    fn message(&mut self, b: &[u8]) -> Result<ClientMessage, ProtocolError> {
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(match b[0] {
            0 => {
                let mut pf = [0u8; 16];
                pf.copy_from_slice(&b[4..20]);
                ClientMessage::SetPixelFormat(PixelFormat::parse(&pf))
            }
            2 => ClientMessage::SetEncodings(
                b[4..]
                    .chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            3 => ClientMessage::FramebufferUpdateRequest {
                incremental: b[1] != 0,
                x: be16(2),
                y: be16(4),
                width: be16(6),
                height: be16(8),
            },
            4 => ClientMessage::Key {
                down: b[1] != 0,
                keysym: be32(4),
            },
            5 => ClientMessage::Pointer {
                buttons: b[1],
                x: be16(2),
                y: be16(4),
            },
            6 => {
                let len = be32(4);
                self.skip = u64::from(len);
                ClientMessage::CutText { len }
            }
            t => return Err(ProtocolError::UnknownMessage(t)),
        })
    }
}

/// Read a client's ProtocolVersion: `RFB 003.00N\n` (3.3, 3.7, 3.8;
/// other minor versions are treated as the nearest lower one, 3.889 from
/// Apple's viewer as 3.8).
pub fn parse_version(v: &[u8; 12]) -> Result<Version, ProtocolError> {
    let digits = |r: std::ops::Range<usize>| {
        v[r].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (major, minor) = match (&v[..4], v[7], v[11], digits(4..7), digits(8..11)) {
        (b"RFB ", b'.', b'\n', Some(major), Some(minor)) => (major, minor),
        _ => return Err(ProtocolError::BadVersion(*v)),
    };
    if major != 3 {
        return Err(ProtocolError::BadVersion(*v));
    }
    Ok(match minor {
        0..=6 => Version::V3_3,
        7 => Version::V3_7,
        _ => Version::V3_8,
    })
}

/// `ServerInit`: the screen's size, the server's pixel format and the
/// desktop's name.
pub fn server_init(width: u16, height: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + name.len());
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&PixelFormat::SERVER.to_bytes());
    out.extend(reason(name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(version: &[u8; 12]) -> (Session, Vec<Event>) {
        let mut s = Session::new();
        let mut events = s.feed(version).unwrap();
        if version != b"RFB 003.003\n" {
            events.extend(s.feed(&[SECURITY_NONE]).unwrap());
        }
        events.extend(s.feed(&[1]).unwrap());
        assert!(s.ready());
        (s, events)
    }

    #[test]
    fn a_3_8_handshake_offers_none_and_reports_success() {
        let (_, events) = handshake(b"RFB 003.008\n");
        assert_eq!(
            events,
            vec![
                Event::Reply(vec![1, 1]),
                Event::Reply(vec![0, 0, 0, 0]),
                Event::ClientInit { shared: true }
            ]
        );
    }

    #[test]
    fn a_3_7_handshake_has_no_security_result() {
        let (_, events) = handshake(b"RFB 003.007\n");
        assert_eq!(
            events,
            vec![Event::Reply(vec![1, 1]), Event::ClientInit { shared: true }]
        );
    }

    #[test]
    fn a_3_3_client_is_told_the_security_type() {
        let (_, events) = handshake(b"RFB 003.003\n");
        assert_eq!(
            events,
            vec![
                Event::Reply(vec![0, 0, 0, 1]),
                Event::ClientInit { shared: true }
            ]
        );
        // Apple's 3.889 speaks 3.8; 3.5 gets 3.3.
        assert_eq!(parse_version(b"RFB 003.889\n"), Ok(Version::V3_8));
        assert_eq!(parse_version(b"RFB 003.005\n"), Ok(Version::V3_3));
    }

    #[test]
    fn bad_versions_and_security_types_end_the_session() {
        for v in [
            b"RFB 004.000\n",
            b"HTTP/1.1 200",
            b"RFB 003.00x\n",
            b"RFB 003.008 ",
        ] {
            let mut s = Session::new();
            assert!(
                matches!(s.feed(v), Err(ProtocolError::BadVersion(_))),
                "{v:?}"
            );
            assert_eq!(s.feed(b"x"), Err(ProtocolError::Closed));
        }
        let mut s = Session::new();
        s.feed(b"RFB 003.008\n").unwrap();
        assert_eq!(s.feed(&[2]), Err(ProtocolError::BadSecurityType(2)));
    }

    #[test]
    fn a_refused_client_is_told_why_in_its_version() {
        let mut s = Session::refusing("busy");
        let mut events = Vec::new();
        let e = s.feed_into(b"RFB 003.008\n", &mut events).unwrap_err();
        assert_eq!(e, ProtocolError::Refused("busy".into()));
        assert_eq!(
            events,
            vec![Event::Reply(vec![0, 0, 0, 0, 4, b'b', b'u', b's', b'y'])]
        );
        let mut s = Session::refusing("busy");
        let mut events = Vec::new();
        s.feed_into(b"RFB 003.003\n", &mut events).unwrap_err();
        assert_eq!(
            events,
            vec![Event::Reply(vec![
                0, 0, 0, 0, 0, 0, 0, 4, b'b', b'u', b's', b'y'
            ])]
        );
    }

    #[test]
    fn messages_split_anywhere_parse_the_same() {
        let mut wire = Vec::new();
        wire.extend([0, 0, 0, 0]);
        let pf16 = PixelFormat {
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
        wire.extend(pf16.to_bytes());
        wire.extend([2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21]);
        wire.extend([3, 1, 0, 1, 0, 2, 0, 3, 0, 4]);
        wire.extend([4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
        wire.extend([5, 1, 0, 10, 0, 20]);
        wire.extend([6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        wire.extend([4, 0, 0, 0, 0, 0, 0, b'q']);
        let expected = vec![
            ClientMessage::SetPixelFormat(pf16),
            ClientMessage::SetEncodings(vec![0, -223]),
            ClientMessage::FramebufferUpdateRequest {
                incremental: true,
                x: 1,
                y: 2,
                width: 3,
                height: 4,
            },
            ClientMessage::Key {
                down: true,
                keysym: 0xff0d,
            },
            ClientMessage::Pointer {
                buttons: 1,
                x: 10,
                y: 20,
            },
            ClientMessage::CutText { len: 3 },
            ClientMessage::Key {
                down: false,
                keysym: b'q'.into(),
            },
        ];
        for chunk in [1, 2, 3, 7, wire.len()] {
            let (mut s, _) = handshake(b"RFB 003.008\n");
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                for e in s.feed(c).unwrap() {
                    match e {
                        Event::Message(m) => got.push(m),
                        other => panic!("{other:?}"),
                    }
                }
            }
            assert_eq!(got, expected, "chunks of {chunk}");
            assert_eq!(s.buffered(), 0);
        }
    }

    #[test]
    fn an_unknown_message_ends_the_session_and_long_clipboards_are_not_kept() {
        let (mut s, _) = handshake(b"RFB 003.008\n");
        // Four gigabytes of clipboard announced, a megabyte sent: skipped,
        // nothing held.
        s.feed(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
        for _ in 0..16 {
            assert_eq!(s.feed(&[b'x'; 65536]).unwrap(), vec![]);
            assert_eq!(s.buffered(), 0);
        }
        let (mut s, _) = handshake(b"RFB 003.008\n");
        assert_eq!(s.feed(&[7, 0, 0]), Err(ProtocolError::UnknownMessage(7)));
        // A SetEncodings of 65535 entries is held whole, no more.
        let (mut s, _) = handshake(b"RFB 003.008\n");
        s.feed(&[2, 0, 0xff, 0xff]).unwrap();
        assert_eq!(s.feed(&vec![0; MAX_MESSAGE - 5]).unwrap(), vec![]);
        assert_eq!(s.buffered(), MAX_MESSAGE - 1);
        match &s.feed(&[0]).unwrap()[..] {
            [Event::Message(ClientMessage::SetEncodings(e))] => assert_eq!(e.len(), 65535),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn pixel_formats_this_server_can_send() {
        assert_eq!(PixelFormat::SERVER.check(), Ok(()));
        assert_eq!(
            PixelFormat::parse(&PixelFormat::SERVER.to_bytes()),
            PixelFormat::SERVER
        );
        let colour_map = PixelFormat {
            true_colour: false,
            bits_per_pixel: 8,
            ..PixelFormat::SERVER
        };
        assert!(colour_map.check().is_err());
        let bpp24 = PixelFormat {
            bits_per_pixel: 24,
            ..PixelFormat::SERVER
        };
        assert!(bpp24.check().is_err());
        let overflowing = PixelFormat {
            bits_per_pixel: 16,
            ..PixelFormat::SERVER
        };
        assert!(overflowing.check().is_err());
    }
}
