//! Output that survives its reader going away, and usage errors told apart from failures.

use std::io::{self, Write};

/// A writer for which a closed pipe (`septa diff a b | head`) is the end of the output, not
/// an error: once the reader is gone, writes are discarded and the command still finishes with
/// the exit code it computed.
pub struct PipeEnd<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> PipeEnd<W> {
    pub fn new(inner: W) -> Self {
        PipeEnd {
            inner,
            closed: false,
        }
    }

    /// Whether the reader has gone away.
    pub fn closed(&self) -> bool {
        self.closed
    }

    fn absorb<T>(&mut self, r: io::Result<T>, or: T) -> io::Result<T> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(or)
            }
            r => r,
        }
    }
}

impl<W: Write> Write for PipeEnd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let r = self.inner.write(buf);
        self.absorb(r, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.inner.flush();
        self.absorb(r, ())
    }
}

/// A command line that cannot be run as given (exit code 2, like the argument parser's own
/// errors), as opposed to a run that failed (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for a failed command: 2 for a usage error, else 1.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Gone;
    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        let mut w = PipeEnd::new(Gone);
        assert!(writeln!(w, "a").is_ok() && w.flush().is_ok() && w.closed());
        let mut v = PipeEnd::new(Vec::new());
        writeln!(v, "kept").unwrap();
        assert!(!v.closed());
        assert_eq!(v.inner, b"kept\n");
    }
}
