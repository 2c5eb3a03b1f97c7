//! TCP segmentation offload for virtio-net's transmit side (virtio 1.2,
//! 5.1.6.2): a driver that negotiated `VIRTIO_NET_F_HOST_TSO4`/`TSO6`
//! hands the device one TCP packet of up to 64 KiB with a GSO header
//! (`gso_type`, `gso_size`, the MSS), and the device sends it as frames
//! of at most `gso_size` bytes of payload each, as a NIC with TSO does.
//!
//! The device cuts the packet itself, so every backend (a tap, the
//! bare-metal host's switch, a test buffer) sees ordinary frames. It does
//! not trust the header's `hdr_len`: it reads the Ethernet (with one VLAN
//! tag), IPv4 or IPv6 (with hop-by-hop, routing and destination-option
//! headers) and TCP headers from the frame, and refuses a packet whose
//! headers do not say TCP over the IP version the GSO type names, do not
//! fit, or say it is an IP fragment. Each frame gets the headers with its
//! own lengths, IPv4 identification (+1 per frame) and header checksum,
//! TCP sequence number and a full TCP checksum; FIN and PSH stay on the
//! last frame only and CWR on the first only (as Linux's own software
//! segmentation does).

use crate::net::{internet_checksum, ones_complement_add};
use alloc::vec::Vec;

/// GSO type: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// GSO type: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// GSO type flag: the packet carries ECN (CWR on its first frame only).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// IPv6 extension headers walked before the TCP header, at most.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Why a GSO packet was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsoError {
    /// The GSO type is not TCP over IPv4 or IPv6.
    UnknownType(u8),
    /// `gso_size` is 0.
    NoSegmentSize,
    /// The headers are not Ethernet, IP of the GSO type's version and
    /// TCP, or do not fit in the packet.
    BadHeaders,
    /// The IP header says the packet is a fragment.
    Fragment,
    /// A frame of `gso_size` bytes of payload would be longer than IP
    /// allows.
    SegmentTooLong,
}

impl core::fmt::Display for TsoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownType(t) => write!(f, "GSO type {t:#x} is not TCP"),
            Self::NoSegmentSize => f.write_str("GSO segment size 0"),
            Self::BadHeaders => f.write_str("headers are not Ethernet, IP and TCP"),
            Self::Fragment => f.write_str("an IP fragment"),
            Self::SegmentTooLong => f.write_str("segments longer than IP allows"),
        }
    }
}

/// Where the headers of a TCP packet are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Offset of the IP header.
    ip: usize,
    /// IPv4 (else IPv6).
    v4: bool,
    /// Offset of the TCP header.
    tcp: usize,
    /// Offset of the payload (the end of the headers).
    payload: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The headers of `packet`, which its GSO type says is TCP over IPv4
/// (`v4`) or IPv6.
fn layout(packet: &[u8], v4: bool) -> Result<Layout, TsoError> {
    let mut ip = 14;
    let mut ethertype = be16(packet, 12).ok_or(TsoError::BadHeaders)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(packet, 16).ok_or(TsoError::BadHeaders)?;
        ip = 18;
    }
    let tcp = if v4 {
        if ethertype != ETHERTYPE_IPV4 {
            return Err(TsoError::BadHeaders);
        }
        let first = *packet.get(ip).ok_or(TsoError::BadHeaders)?;
        let ihl = usize::from(first & 0xf) * 4;
        if first >> 4 != 4 || ihl < 20 || packet.len() < ip + ihl {
            return Err(TsoError::BadHeaders);
        }
        if packet[ip + 9] != IPPROTO_TCP {
            return Err(TsoError::BadHeaders);
        }
        // More fragments, or a fragment offset.
        if be16(packet, ip + 6).ok_or(TsoError::BadHeaders)? & 0x3fff != 0 {
            return Err(TsoError::Fragment);
        }
        ip + ihl
    } else {
        if ethertype != ETHERTYPE_IPV6 || packet.len() < ip + 40 || packet[ip] >> 4 != 6 {
            return Err(TsoError::BadHeaders);
        }
        let mut next = packet[ip + 6];
        let mut at = ip + 40;
        let mut walked = 0;
        while next != IPPROTO_TCP {
            match next {
                // Hop-by-hop options, routing, destination options.
                0 | 43 | 60 if walked < MAX_EXTENSION_HEADERS => {
                    let len = usize::from(*packet.get(at + 1).ok_or(TsoError::BadHeaders)?);
                    next = packet[at];
                    at += (len + 1) * 8;
                    walked += 1;
                }
                44 => return Err(TsoError::Fragment),
                _ => return Err(TsoError::BadHeaders),
            }
        }
        at
    };
    let offset = *packet.get(tcp + 12).ok_or(TsoError::BadHeaders)?;
    let tcp_len = usize::from(offset >> 4) * 4;
    if tcp_len < 20 || packet.len() < tcp + tcp_len {
        return Err(TsoError::BadHeaders);
    }
    Ok(Layout {
        ip,
        v4,
        tcp,
        payload: tcp + tcp_len,
    })
}

/// Cut `packet` (an Ethernet frame holding one TCP packet, without the
/// virtio header) into frames of at most `mss` bytes of TCP payload, and
/// hand each to `send` in order. `gso_type` is the header's, ECN flag
/// included. The frames are built in `scratch`. Returns how many frames
/// were handed on.
pub fn segment(
    packet: &[u8],
    gso_type: u8,
    mss: u16,
    scratch: &mut Vec<u8>,
    mut send: impl FnMut(&[u8]),
) -> Result<usize, TsoError> {
    let v4 = match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 => true,
        VIRTIO_NET_HDR_GSO_TCPV6 => false,
        other => return Err(TsoError::UnknownType(other)),
    };
    if mss == 0 {
        return Err(TsoError::NoSegmentSize);
    }
    let l = layout(packet, v4)?;
    let (headers, payload) = packet.split_at(l.payload);
    if headers.len() - l.ip + payload.len().min(usize::from(mss)) > 0xffff {
        return Err(TsoError::SegmentTooLong);
    }
    let seq = u32::from_be_bytes([
        packet[l.tcp + 4],
        packet[l.tcp + 5],
        packet[l.tcp + 6],
        packet[l.tcp + 7],
    ]);
    let id = be16(packet, l.ip + 4).unwrap_or(0);
    let flags = packet[l.tcp + 13];
    let pieces = payload.len().div_ceil(usize::from(mss)).max(1);
    let mut chunks = payload.chunks(usize::from(mss));
    for i in 0..pieces {
        let part = chunks.next().unwrap_or(&[]);
        scratch.clear();
        scratch.extend_from_slice(headers);
        scratch.extend_from_slice(part);
        let frame = scratch.as_mut_slice();
        let tcp_len = frame.len() - l.tcp;
        // Lengths and the IP header's checksum.
        if l.v4 {
            let total = (frame.len() - l.ip) as u16;
            frame[l.ip + 2..l.ip + 4].copy_from_slice(&total.to_be_bytes());
            let id = id.wrapping_add(i as u16);
            frame[l.ip + 4..l.ip + 6].copy_from_slice(&id.to_be_bytes());
            frame[l.ip + 10..l.ip + 12].copy_from_slice(&[0, 0]);
            let sum = internet_checksum(ones_complement_add(0, &frame[l.ip..l.tcp]));
            frame[l.ip + 10..l.ip + 12].copy_from_slice(&sum.to_be_bytes());
        } else {
            let payload_len = (frame.len() - l.ip - 40) as u16;
            frame[l.ip + 4..l.ip + 6].copy_from_slice(&payload_len.to_be_bytes());
        }
        // Sequence number and flags.
        let seq = seq.wrapping_add((i * usize::from(mss)) as u32);
        frame[l.tcp + 4..l.tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i + 1 < pieces {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        frame[l.tcp + 13] = f;
        // The TCP checksum over the pseudo-header and the segment.
        frame[l.tcp + 16..l.tcp + 18].copy_from_slice(&[0, 0]);
        let mut sum = if l.v4 {
            ones_complement_add(0, &frame[l.ip + 12..l.ip + 20])
        } else {
            ones_complement_add(0, &frame[l.ip + 8..l.ip + 40])
        };
        sum += tcp_len as u64 + u64::from(IPPROTO_TCP);
        let sum = internet_checksum(ones_complement_add(sum, &frame[l.tcp..]));
        frame[l.tcp + 16..l.tcp + 18].copy_from_slice(&sum.to_be_bytes());
        send(frame);
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Whether `frame`'s IPv4 header and TCP segment check out.
    fn sums_hold(frame: &[u8], ip: usize, v4: bool) -> bool {
        let l = layout(frame, v4).unwrap();
        let ip_ok = !v4 || internet_checksum(ones_complement_add(0, &frame[ip..l.tcp])) == 0;
        let tcp_len = (frame.len() - l.tcp) as u64;
        let pseudo = if v4 {
            ones_complement_add(0, &frame[ip + 12..ip + 20])
        } else {
            ones_complement_add(0, &frame[ip + 8..ip + 40])
        };
        let tcp_ok =
            internet_checksum(ones_complement_add(pseudo + tcp_len + 6, &frame[l.tcp..])) == 0;
        ip_ok && tcp_ok
    }

    /// An Ethernet + IPv4 (or IPv6) + TCP packet with `payload` bytes of
    /// data, FIN|PSH|CWR|ACK set, sequence 0xfffffff0.
    fn packet(v4: bool, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        if v4 {
            p.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            p.extend(ip);
        } else {
            p.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
            ip.extend((0..32).map(|i| i as u8));
            p.extend(ip);
        }
        let mut tcp = vec![0x30, 0x39, 0x00, 0x50, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1];
        tcp.extend_from_slice(&[0x80, TCP_FIN | TCP_PSH | TCP_CWR | 0x10, 0xff, 0xff]);
        tcp.extend_from_slice(&[0xab, 0xcd, 0, 0]);
        // 12 bytes of options: data offset 8 words.
        tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend(tcp);
        p.extend((0..payload).map(|i| (i * 7) as u8));
        p
    }

    fn cut(p: &[u8], gso: u8, mss: u16) -> Result<Vec<Vec<u8>>, TsoError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        segment(p, gso, mss, &mut scratch, |f| out.push(f.to_vec()))?;
        Ok(out)
    }

    #[test]
    fn an_ipv4_packet_is_cut_into_frames_with_their_own_headers() {
        let p = packet(true, 3000);
        let frames = cut(&p, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1448).unwrap();
        assert_eq!(frames.len(), 3);
        let headers = 14 + 20 + 32;
        let mut data = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let len = [1448, 1448, 104][i];
            assert_eq!(f.len(), headers + len);
            assert_eq!(
                be16(f, 16).unwrap() as usize,
                20 + 32 + len,
                "IP total length"
            );
            assert_eq!(be16(f, 18).unwrap(), 0x1234 + i as u16, "IP identification");
            let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1448 * i as u32));
            let flags = f[47];
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "FIN, PSH on the last"
            );
            assert_eq!(flags & 0x10, 0x10, "ACK on every frame");
            assert_eq!(f[34 + 20..headers], p[34 + 20..headers], "options kept");
            assert!(sums_hold(f, 14, true), "frame {i}");
            data.extend_from_slice(&f[headers..]);
        }
        assert_eq!(data, p[headers..]);
    }

    #[test]
    fn an_ipv6_packet_with_a_vlan_tag_and_an_extension_header_is_cut() {
        let plain = packet(false, 2000);
        // A VLAN tag, and a hop-by-hop header of 8 bytes before TCP.
        let mut p = plain[..12].to_vec();
        p.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        p.extend_from_slice(&plain[12..14 + 40]);
        let ip = 18;
        p[ip + 6] = 0;
        p.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&plain[14 + 40..]);
        let frames = cut(&p, VIRTIO_NET_HDR_GSO_TCPV6, 1000).unwrap();
        assert_eq!(frames.len(), 2);
        for f in &frames {
            let tcp_and_data = f.len() - (ip + 48);
            assert_eq!(be16(f, ip + 4).unwrap() as usize, 8 + tcp_and_data);
            assert!(sums_hold(f, ip, false));
        }
        assert_eq!(frames[1].len() - (ip + 48 + 32), 1000);
    }

    #[test]
    fn a_packet_that_fits_one_frame_is_sent_whole_with_its_checksums() {
        let p = packet(true, 100);
        let frames = cut(&p, VIRTIO_NET_HDR_GSO_TCPV4, 1448).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), p.len());
        assert_eq!(frames[0][47], p[47], "every flag kept");
        assert!(sums_hold(&frames[0], 14, true));
        let empty = packet(true, 0);
        assert_eq!(
            cut(&empty, VIRTIO_NET_HDR_GSO_TCPV4, 1448).unwrap().len(),
            1
        );
    }

    #[test]
    fn packets_that_are_not_what_the_gso_type_says_are_refused() {
        let v4 = packet(true, 3000);
        let v6 = packet(false, 3000);
        assert_eq!(cut(&v4, 3, 1448), Err(TsoError::UnknownType(3)), "UDP");
        assert_eq!(
            cut(&v4, VIRTIO_NET_HDR_GSO_TCPV4, 0),
            Err(TsoError::NoSegmentSize)
        );
        assert_eq!(
            cut(&v6, VIRTIO_NET_HDR_GSO_TCPV4, 1448),
            Err(TsoError::BadHeaders)
        );
        assert_eq!(
            cut(&v4, VIRTIO_NET_HDR_GSO_TCPV6, 1448),
            Err(TsoError::BadHeaders)
        );
        let mut udp = v4.clone();
        udp[23] = 17;
        assert_eq!(
            cut(&udp, VIRTIO_NET_HDR_GSO_TCPV4, 1448),
            Err(TsoError::BadHeaders)
        );
        let mut fragment = v4.clone();
        fragment[20] = 0x20;
        assert_eq!(
            cut(&fragment, VIRTIO_NET_HDR_GSO_TCPV4, 1448),
            Err(TsoError::Fragment)
        );
        let mut long_ihl = v4.clone();
        long_ihl[14] = 0x4f;
        long_ihl.truncate(14 + 40);
        assert_eq!(
            cut(&long_ihl, VIRTIO_NET_HDR_GSO_TCPV4, 1448),
            Err(TsoError::BadHeaders)
        );
        for n in 0..66 {
            assert!(
                cut(&v4[..n], VIRTIO_NET_HDR_GSO_TCPV4, 1448).is_err(),
                "cut at {n}"
            );
        }
        let mut looped = v6.clone();
        looped[14 + 6] = 60;
        assert!(cut(&looped, VIRTIO_NET_HDR_GSO_TCPV6, 1448).is_err());
    }
}
