//! JSON lines: one flow record per line, to stdout or to a file rotated by size.
//!
//! Rotation renames `flows.jsonl` → `flows.jsonl.1` → ... → `flows.jsonl.<keep>` (the oldest
//! is deleted) and starts a new file. A record is written with one `write_all` of a complete
//! line, and rotation happens only between records, so no record is split or lost by it.
//! Files are mode 0600: records name pods, addresses, labels and policies.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::FlowRecord;

/// Where records go.
enum Target {
    Stdout(io::Stdout),
    File(PathBuf, File),
}

/// A JSON-lines writer.
pub struct JsonlWriter {
    target: Target,
    written: u64,
    max_bytes: u64,
    keep: usize,
    /// Records written.
    pub records: u64,
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Flow logs name pods, addresses, labels and policies: readable by the owner only.
const LOG_MODE: u32 = 0o600;

/// Open `path` for appending, created with [`LOG_MODE`]; a file that already exists with a
/// wider mode (written by an older build) is narrowed to it.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(LOG_MODE))?;
    }
    Ok(f)
}

impl JsonlWriter {
    /// Write to standard output.
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout(io::stdout()),
            written: 0,
            max_bytes: u64::MAX,
            keep: 0,
            records: 0,
        }
    }

    /// Append to `path`, rotating at `max_bytes` and keeping `keep` rotated files. Fails now,
    /// with the path in the message, if the file cannot be opened for writing.
    pub fn file(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        if max_bytes < 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "flow log {}: a size limit of {max_bytes} bytes is too small (at least 1024)",
                    path.display()
                ),
            ));
        }
        if keep == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "flow log {}: keep at least one rotated file, or records are lost at rotation",
                    path.display()
                ),
            ));
        }
        let f = open_log(path)
            .map_err(|e| io::Error::new(e.kind(), format!("flow log {}: {e}", path.display())))?;
        let written = f.metadata()?.len();
        Ok(Self {
            target: Target::File(path.to_owned(), f),
            written,
            max_bytes,
            keep,
            records: 0,
        })
    }

    /// Write one record.
    pub fn write(&mut self, r: &FlowRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        match &mut self.target {
            Target::Stdout(o) => o.lock().write_all(&line)?,
            Target::File(_, f) => f.write_all(&line)?,
        }
        self.written += line.len() as u64;
        self.records += 1;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let Target::File(path, _) = &self.target else {
            return Ok(());
        };
        let path = path.clone();
        let _ = std::fs::remove_file(rotated(&path, self.keep));
        for i in (1..self.keep).rev() {
            let from = rotated(&path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&path, i + 1))?;
            }
        }
        std::fs::rename(&path, rotated(&path, 1))?;
        let f = open_log(&path)?;
        self.target = Target::File(path, f);
        self.written = 0;
        Ok(())
    }

    /// Flush buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout(o) => o.flush(),
            Target::File(_, f) => f.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{Counts, FlowPeer, FlowRecord};

    fn rec(i: u64) -> FlowRecord {
        FlowRecord {
            version: 1,
            time: "2026-11-23T00:00:00.000Z".into(),
            start: "2026-11-23T00:00:00.000Z".into(),
            kind: "new".into(),
            verdict: "forwarded".into(),
            drop_reason: None,
            direction: "egress".into(),
            ip_version: 4,
            protocol: "TCP".into(),
            source: FlowPeer {
                ip: "10.0.0.1".into(),
                port: (i % 60000) as u16,
                ..Default::default()
            },
            destination: FlowPeer {
                ip: "10.0.0.2".into(),
                port: 80,
                ..Default::default()
            },
            decided_by: "default-allow".into(),
            feed: None,
            policy: None,
            rule_id: 0,
            packets: Counts {
                forward: i,
                reverse: 0,
            },
            bytes: Counts::default(),
            tcp_flags: vec![],
            dns_names: vec![],
            node: "n".into(),
            connections: None,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("septa-jsonl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotation_under_load_loses_no_record() {
        let d = dir("rot");
        let path = d.join("flows.jsonl");
        let mut w = JsonlWriter::file(&path, 64 * 1024, 1000).unwrap();
        for i in 0..20_000 {
            w.write(&rec(i)).unwrap();
        }
        w.flush().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut files = 0;
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            files += 1;
            assert!(
                std::fs::metadata(&p).unwrap().len() <= 64 * 1024,
                "{} over the limit",
                p.display()
            );
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let r: FlowRecord = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("split or bad line in {}: {e}", p.display()));
                assert!(seen.insert(r.packets.forward), "duplicate record");
            }
        }
        assert!(files > 10, "rotated: {files} files");
        assert_eq!(seen.len(), 20_000, "every record is in exactly one file");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn retention_keeps_only_the_newest_files() {
        let d = dir("keep");
        let path = d.join("flows.jsonl");
        let mut w = JsonlWriter::file(&path, 4096, 3).unwrap();
        for i in 0..5_000 {
            w.write(&rec(i)).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "flows.jsonl",
                "flows.jsonl.1",
                "flows.jsonl.2",
                "flows.jsonl.3"
            ]
        );
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(
            newest.contains("\"forward\":4999"),
            "the current file holds the latest records"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn logs_are_readable_by_the_owner_only_after_rotation_too() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let path = d.join("flows.jsonl");
        // Left by an older build with a wider mode.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut w = JsonlWriter::file(&path, 4096, 2).unwrap();
        for i in 0..100 {
            w.write(&rec(i)).unwrap();
        }
        for p in [path.clone(), rotated(&path, 1)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_configuration_fails_at_start_with_the_path() {
        let e = JsonlWriter::file(Path::new("/nonexistent/dir/flows.jsonl"), 1 << 20, 5)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/dir/flows.jsonl"), "{e}");
        assert!(JsonlWriter::file(Path::new("/tmp/x.jsonl"), 10, 5)
            .err()
            .unwrap()
            .to_string()
            .contains("too small"));
        assert!(JsonlWriter::file(Path::new("/tmp/x.jsonl"), 1 << 20, 0)
            .err()
            .unwrap()
            .to_string()
            .contains("keep at least one"));
    }
}
