//! Putting a held-back DNS answer back on its way: the frame is sent out of the pod's host-side
//! interface through an `AF_PACKET` socket whose mark ([`DNS_REINJECT_MARK`]) lets it pass the
//! hold-back. The frame is byte-for-byte what the resolver sent.

use std::{io, os::fd::{AsRawFd, FromRawFd, OwnedFd}};

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
