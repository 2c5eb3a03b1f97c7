//! The tap backend moves frames both ways between the VMM and a host-side
//! server, inside a network namespace of its own (nothing touches the
//! machine's own network): the test re-runs itself under `ip netns exec`,
//! opens the tap there as `vmm --net tap=NAME` does, gives the interface
//! 10.9.0.1/24 and binds a UDP echo server to it. Playing the guest's card
//! (MAC 52:54:00:12:34:56, 10.9.0.2), it sends a UDP datagram in an
//! Ethernet frame; the server must get it, and its echo must come back
//! through the tap after the kernel's ARP request, which the "guest"
//! answers.
//!
//! Needs root, `ip` and /dev/net/tun; prints why and passes otherwise.

use host_glue_linux::tap::Tap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_devices::net::{NetBackend, MAX_FRAME};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 9, 0, 2];
const HOST_IP: [u8; 4] = [10, 9, 0, 1];
const CHILD: &str = "VMM_TAP_TEST_CHILD";

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame with an IPv4 packet of protocol `proto` (identified
/// by `id`) from the guest to the host, carrying `transport` (its header
/// and payload).
fn ipv4_frame(dst_mac: [u8; 6], proto: u8, id: u8, transport: &[u8]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + transport.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, id, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(transport);
    f
}

/// An Ethernet frame with an IPv4/UDP datagram from the guest to the host.
fn udp_frame(dst_mac: [u8; 6], port: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = 40000u16.to_be_bytes().to_vec();
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum
    udp.extend_from_slice(payload);
    ipv4_frame(dst_mac, 17, 1, &udp)
}

/// The guest's answer to an ARP request for its address, if `f` is one.
fn arp_reply(f: &[u8]) -> Option<Vec<u8>> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[20..22] != [0, 1] || f[38..42] != GUEST_IP {
        return None;
    }
    let (sha, spa) = (&f[22..28], &f[28..32]);
    let mut r = sha.to_vec();
    r.extend_from_slice(&GUEST_MAC);
    r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&GUEST_MAC);
    r.extend_from_slice(&GUEST_IP);
    r.extend_from_slice(sha);
    r.extend_from_slice(spa);
    Some(r)
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Inside the namespace: the whole exchange.
fn child() {
    let mut tap = Tap::open("vmmtap0").expect("open the tap in the namespace");
    assert!(ip(&["addr", "add", "10.9.0.1/24", "dev", "vmmtap0"]));
    assert!(ip(&["link", "set", "vmmtap0", "up"]));
    assert!(ip(&["link", "set", "lo", "up"]));
    let server = UdpSocket::bind("10.9.0.1:7777").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let host_mac = {
        let text = std::fs::read_to_string("/sys/class/net/vmmtap0/address").unwrap();
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(text.trim().split(':')) {
            *b = u8::from_str_radix(p, 16).unwrap();
        }
        m
    };
    let mut buf = vec![0u8; MAX_FRAME];
    // Drain what the kernel sent when the link came up (IPv6 neighbour
    // discovery and the like).
    std::thread::sleep(Duration::from_millis(200));
    while tap.recv(&mut buf).is_some() {}

    tap.send(&udp_frame(host_mac, 7777, b"hello from the guest"))
        .unwrap();
    let mut got = [0u8; 64];
    let (n, from) = server
        .recv_from(&mut got)
        .expect("the server got the datagram");
    assert_eq!(&got[..n], b"hello from the guest");
    assert_eq!(from.to_string(), "10.9.0.2:40000");
    server.send_to(b"echo from the host", from).unwrap();

    // The echo needs the guest's MAC: answer the kernel's ARP request,
    // then the datagram arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered_arp = false;
    loop {
        assert!(Instant::now() < deadline, "no echo through the tap");
        let Some(n) = tap.recv(&mut buf) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let f = &buf[..n];
        if let Some(reply) = arp_reply(f) {
            tap.send(&reply).unwrap();
            answered_arp = true;
            continue;
        }
        if f.len() > 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[0..6] == GUEST_MAC {
            assert_eq!(&f[42..], b"echo from the host");
            break;
        }
    }
    assert!(answered_arp);
    tcp_segmentation_left_to_the_host(&mut tap, host_mac, &mut buf);
    println!("TAP-NETNS: ok");
}

/// An Ethernet + IPv4 + TCP frame from the guest to the host's port 8888
/// (no options), with `payload`; the TCP checksum field holds `csum`.
fn tcp_frame(
    host_mac: [u8; 6],
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    csum: u16,
) -> Vec<u8> {
    let mut tcp = 40001u16.to_be_bytes().to_vec();
    tcp.extend_from_slice(&8888u16.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff]);
    tcp.extend_from_slice(&csum.to_be_bytes());
    tcp.extend_from_slice(&[0, 0]);
    tcp.extend_from_slice(payload);
    ipv4_frame(host_mac, 6, 2, &tcp)
}

/// The one's complement sum of the TCP pseudo-header for `tcp_len` bytes
/// of TCP (header and payload), folded but not inverted.
fn pseudo_sum(tcp_len: usize) -> u32 {
    let mut p = GUEST_IP.to_vec();
    p.extend_from_slice(&HOST_IP);
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    u32::from(!checksum(&p))
}

/// A whole TCP checksum over the frame's TCP part.
fn tcp_checksum(frame: &[u8]) -> u16 {
    let tcp = &frame[34..];
    let mut data = vec![];
    let p = pseudo_sum(tcp.len()) as u16;
    data.extend_from_slice(&p.to_be_bytes());
    data.extend_from_slice(tcp);
    checksum(&data)
}

/// What `--net tap` does with a guest's TSO: the guest connects to a
/// host TCP server by hand (SYN, the host's SYN-ACK, ACK), then hands the
/// tap one 20,000-byte TCP packet with a virtio-net header asking for
/// 1,448-byte segments and a checksum left partial, as virtio-net passes
/// it on from a driver with `HOST_TSO4`. The server must read the 20,000
/// bytes in order. A header the kernel cannot honour (GSO with no segment
/// size) is refused as an error, not sent.
fn tcp_segmentation_left_to_the_host(tap: &mut Tap, host_mac: [u8; 6], buf: &mut [u8]) {
    use std::io::Read;
    use vmm_devices::net::Offload;
    let listener = std::net::TcpListener::bind("10.9.0.1:8888").unwrap();
    const LEN: usize = 20_000;
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = vec![0u8; LEN];
        conn.read_exact(&mut got).map(|_| got)
    });
    let mut syn = tcp_frame(host_mac, 1000, 0, 0x02, &[], 0);
    let c = tcp_checksum(&syn);
    syn[50..52].copy_from_slice(&c.to_be_bytes());
    tap.send(&syn).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let server_seq = loop {
        assert!(Instant::now() < deadline, "no SYN-ACK through the tap");
        let Some(n) = tap.recv(buf) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let f = &buf[..n];
        if let Some(reply) = arp_reply(f) {
            tap.send(&reply).unwrap();
            continue;
        }
        if n >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[47] & 0x12 == 0x12 {
            break u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
        }
    };
    let mut ack = tcp_frame(host_mac, 1001, server_seq + 1, 0x10, &[], 0);
    let c = tcp_checksum(&ack);
    ack[50..52].copy_from_slice(&c.to_be_bytes());
    tap.send(&ack).unwrap();
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();
    let partial = pseudo_sum(20 + LEN) as u16;
    let packet = tcp_frame(host_mac, 1001, server_seq + 1, 0x18, &payload, partial);
    let offload = Offload {
        needs_csum: true,
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let refused = tap.send_offloaded(
        &packet,
        &Offload {
            gso_size: 0,
            ..offload
        },
    );
    assert!(
        refused.is_err(),
        "a GSO packet with no segment size was taken"
    );
    tap.send_offloaded(&packet, &offload).unwrap();
    let got = server
        .join()
        .unwrap()
        .expect("the server read the 20,000 bytes");
    assert!(got == payload, "the server read other bytes");
}

#[test]
fn frames_cross_a_tap_in_a_network_namespace() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let have_ip = Command::new("ip").arg("-V").output().is_ok();
    if !root || !have_ip || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs root, ip and /dev/net/tun");
        return;
    }
    let ns = format!("vmmtap{}", std::process::id());
    assert!(ip(&["netns", "add", &ns]), "ip netns add {ns}");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "frames_cross_a_tap_in_a_network_namespace",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let _ = ip(&["netns", "del", &ns]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("TAP-NETNS: ok"), "{text}");
}
