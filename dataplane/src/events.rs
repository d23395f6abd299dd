//! Reading [`FlowEvent`]s from the ring buffer, asynchronously (tokio `AsyncFd`) or by draining.

use std::io;

use aya::maps::{MapData, RingBuf};
use dataplane_common::FlowEvent;
use tokio::io::unix::AsyncFd;

/// Decode one ring-buffer record; `None` if it is not the size of a [`FlowEvent`] (a kernel/user
/// version mismatch, reported by the caller rather than misread).
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is Pod (any bit pattern valid); size checked; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FlowEvent) })
}

/// Consumer of the events ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records that did not decode (size mismatch).
    pub malformed: u64,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring, malformed: 0 }
    }

    /// Everything available now, without waiting.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(e) => out.push(e),
                None => self.malformed += 1,
            }
        }
        out
    }

    /// Wrap for async use (needs a tokio runtime).
    pub fn into_async(self) -> io::Result<AsyncEventReader> {
        // SAFETY: the ring buffer's fd is owned by `self`, which the AsyncFd owns, so it stays
        // open exactly as long as it is registered.
        let fd = unsafe { AsyncFd::register(self) }.map_err(io::Error::from)?;
        Ok(AsyncEventReader { fd })
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// [`EventReader`] driven by epoll readiness.
pub struct AsyncEventReader {
    fd: AsyncFd<EventReader>,
}

impl AsyncEventReader {
    /// Wait until at least one event is available and return all available.
    pub async fn next_batch(&mut self) -> io::Result<Vec<FlowEvent>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let batch = guard.get_inner_mut().drain();
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The inner reader.
    pub fn get_mut(&mut self) -> &mut EventReader {
        self.fd.get_mut()
    }
}
