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

    /// Send `frame` (from its Ethernet header) out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        let mut frame = frame.to_vec();
        complete_checksum(&mut frame);
        let frame = frame.as_slice();
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
