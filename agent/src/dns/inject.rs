//! Putting a held-back DNS answer back on its way: the frame is sent out of the pod's host-side
//! interface through an `AF_PACKET` socket whose mark ([`DNS_REINJECT_MARK`]) lets it pass the
//! hold-back. The frame is byte-for-byte what the resolver sent.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use dataplane_common::DNS_REINJECT_MARK;

/// A raw packet socket for re-injection (created in the node's network namespace).
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mark = DNS_REINJECT_MARK;
        // SAFETY: valid option pointer and length.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                &mark as *const u32 as *const libc::c_void,
                std::mem::size_of::<u32>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Injector { fd })
    }

    /// Send `frame` (from its Ethernet header) out of interface `ifindex`. A TCP frame larger
    /// than the interface's MTU (a GSO super-packet: the stack hands a large DNS-over-TCP
    /// answer to TC as one frame and segments it later) is cut into MTU-sized segments first;
    /// a packet socket would refuse it whole, and the pod would wait for a retransmission.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        let mut frame = frame.to_vec();
        complete_checksum(&mut frame);
        // Below the smallest IPv6 MTU nothing needs the interface asked.
        if frame.len() > ETH_HLEN + 1280 {
            let mtu = self.mtu(ifindex)?;
            if frame.len() > ETH_HLEN + mtu {
                let segments = segment(&frame, mtu).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "a {}-byte frame that is not TCP exceeds the {mtu}-byte MTU",
                            frame.len()
                        ),
                    )
                })?;
                for s in &segments {
                    self.send_raw(ifindex, s)?;
                }
                return Ok(());
            }
        }
        self.send_raw(ifindex, &frame)
    }

    /// The MTU of `ifindex`, asked through this socket (so in its network namespace).
    fn mtu(&self, ifindex: u32) -> io::Result<usize> {
        // SAFETY: zeroed ifreq is a valid starting value; both ioctls fill it in place and
        // their results are checked. The request type is c_ulong in glibc and c_int in musl
        // (the static binaries of the container images).
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            ifr.ifr_ifru.ifru_ifindex = ifindex as i32;
            if libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFNAME as _, &mut ifr) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFMTU as _, &mut ifr) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(ifr.ifr_ifru.ifru_mtu.max(0) as usize)
        }
    }

    /// Send one frame; a full queue of the pod's veth (`ENOBUFS`, which a busy node gives) is
    /// retried a few times, a millisecond apart, before it is an error: the answer is the
    /// pod's, and its resolver would otherwise wait for a retransmission.
    fn send_raw(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match self.send_once(ifindex, frame) {
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                r => return r,
            }
        }
    }

    fn send_once(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_ll is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        if frame.len() >= 6 {
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

const ETH_HLEN: usize = 14;

/// Cut a TCP frame into frames whose IP packets fit `mtu`, as GSO would: the headers are
/// repeated (options included), sequence numbers advance, PSH and FIN stay on the last
/// segment and CWR on the first, lengths and checksums are recomputed, IPv4 ids increase.
/// `None` when the frame is not plain Ethernet + IPv4/IPv6 + TCP or the headers leave no room.
pub fn segment(frame: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    // The IP header (without extensions, which are rare on answers and not worth repeating)
    // and everything before it (Ethernet, VLAN tags), repeated as it is in every segment.
    let (ip, ipv4, ipv6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (ip.header().slice(), Some(ip.header().to_header()), None),
        Some(NetSlice::Ipv6(ip)) if ip.extensions().is_empty() => {
            (ip.header().slice(), None, Some(ip.header().to_header()))
        }
        _ => return None,
    };
    let link_len = ip.as_ptr() as usize - frame.as_ptr() as usize;
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        return None;
    };
    let tcp = t.to_header();
    let payload = t.payload();
    let ip_len = ip.len();
    let mss = mtu.checked_sub(ip_len + tcp.header_len())?;
    if mss == 0 || payload.is_empty() {
        return None;
    }
    let chunks: Vec<&[u8]> = payload.chunks(mss).collect();
    let last = chunks.len() - 1;
    let mut out = Vec::with_capacity(chunks.len());
    let mut seq = tcp.sequence_number;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut h = tcp.clone();
        h.sequence_number = seq;
        seq = seq.wrapping_add(chunk.len() as u32);
        if i != last {
            h.psh = false;
            h.fin = false;
        }
        if i != 0 {
            h.cwr = false;
        }
        let mut f = frame[..link_len].to_vec();
        if let Some(ip) = &ipv4 {
            let mut ip = ip.clone();
            ip.set_payload_len(h.header_len() + chunk.len()).ok()?;
            ip.identification = ip.identification.wrapping_add(i as u16);
            ip.header_checksum = ip.calc_header_checksum();
            h.checksum = h.calc_checksum_ipv4(&ip, chunk).ok()?;
            ip.write(&mut f).ok()?;
        } else if let Some(ip) = &ipv6 {
            let mut ip = ip.clone();
            ip.set_payload_length(h.header_len() + chunk.len()).ok()?;
            h.checksum = h.calc_checksum_ipv6(&ip, chunk).ok()?;
            ip.write(&mut f).ok()?;
        }
        h.write(&mut f).ok()?;
        f.extend_from_slice(chunk);
        out.push(f);
    }
    Some(out)
}

/// Fill in the transport checksum. A held frame may carry a partial one (the sender's stack
/// left it to checksum offload, which a packet socket does not do), and the pod would drop it.
pub fn complete_checksum(frame: &mut [u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let base = frame.as_ptr() as usize;
    let fix = {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        match (&p.net, &p.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
                let h = u.to_header();
                h.calc_checksum_ipv4(&ip.header().to_header(), u.payload())
                    .ok()
                    .map(|c| {
                        (
                            u.slice().as_ptr() as usize - base + 6,
                            if c == 0 { 0xffff } else { c },
                        )
                    })
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) => {
                let h = u.to_header();
                h.calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                    .ok()
                    .map(|c| {
                        (
                            u.slice().as_ptr() as usize - base + 6,
                            if c == 0 { 0xffff } else { c },
                        )
                    })
            }
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => t
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                .ok()
                .map(|c| (t.slice().as_ptr() as usize - base + 16, c)),
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => t
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                .ok()
                .map(|c| (t.slice().as_ptr() as usize - base + 16, c)),
            _ => None,
        }
    };
    if let Some((at, c)) = fix {
        if at + 2 <= frame.len() {
            frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3,000-byte DNS-over-TCP answer as one frame, IPv4 (with TCP options) and IPv6.
    fn big_answer(v6: bool) -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let eth = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6]);
        let b = if v6 {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            eth.ipv4([192, 0, 2, 53], [10, 0, 0, 1], 64)
        };
        let mut f = Vec::new();
        b.tcp(53, 40000, 0xffff_fff0, 1000)
            .ack(1)
            .psh()
            .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
            .unwrap()
            .write(&mut f, &payload)
            .unwrap();
        (f, payload)
    }

    #[test]
    fn oversized_tcp_frames_are_cut_into_valid_segments() {
        for v6 in [false, true] {
            let (frame, payload) = big_answer(v6);
            let segs = segment(&frame, 1500).expect("segmentable");
            assert_eq!(segs.len(), 3, "v6={v6}");
            let mut joined = Vec::new();
            let mut seq = 0xffff_fff0u32;
            for (i, s) in segs.iter().enumerate() {
                assert!(s.len() - ETH_HLEN <= 1500, "fits the MTU");
                assert_eq!(&s[..14], &frame[..14], "link header repeated");
                let p = etherparse::SlicedPacket::from_ethernet(s).unwrap();
                let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else {
                    panic!("tcp")
                };
                assert_eq!(t.sequence_number(), seq, "sequence wraps through u32");
                seq = seq.wrapping_add(t.payload().len() as u32);
                assert_eq!(t.psh(), i == 2, "PSH on the last segment only");
                assert_eq!(
                    t.options(),
                    etherparse::TcpSlice::from_slice(&frame[14 + if v6 { 40 } else { 20 }..])
                        .unwrap()
                        .options()
                );
                // Checksums verify: recomputing them changes nothing.
                let mut again = s.clone();
                complete_checksum(&mut again);
                assert_eq!(&again, s);
                if let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net {
                    let h = ip.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    assert_eq!(h.total_len as usize, s.len() - ETH_HLEN);
                }
                joined.extend_from_slice(t.payload());
            }
            assert_eq!(joined, payload, "the payload survives whole and in order");
        }
        // Not TCP, or no room for data: not segmentable.
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([192, 0, 2, 53], [10, 0, 0, 1], 64)
            .udp(53, 40000)
            .write(&mut udp, &[0u8; 3000])
            .unwrap();
        assert!(segment(&udp, 1500).is_none());
        assert!(segment(&big_answer(false).0, 40).is_none());
        assert!(segment(&[0u8; 10], 1500).is_none());
    }

    #[test]
    fn partial_checksums_are_completed() {
        for tcp in [false, true] {
            let mut good = Vec::new();
            let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(
                [192, 0, 2, 53],
                [10, 0, 0, 1],
                64,
            );
            if tcp {
                b.tcp(53, 40000, 7, 1000)
                    .ack(1)
                    .write(&mut good, b"\x00\x03abc")
                    .unwrap();
            } else {
                b.udp(53, 40000).write(&mut good, b"answer").unwrap();
            }
            let at = 14 + 20 + if tcp { 16 } else { 6 };
            let mut broken = good.clone();
            broken[at] ^= 0x5a;
            broken[at + 1] ^= 0xa5;
            complete_checksum(&mut broken);
            assert_eq!(broken, good, "tcp={tcp}");
        }
        // Not IP: untouched.
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        let before = arp.clone();
        complete_checksum(&mut arp);
        assert_eq!(arp, before);
    }
}
