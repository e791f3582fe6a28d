//! The embedded default sink: events appended as JSON lines to a file, rotated by size.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::Mutex;

use super::Event;
use super::relay::{EventSink, SinkError};

pub struct JsonLinesSink {
    path: PathBuf,
    rotate_bytes: u64,
    /// One writer at a time: lines of two batches must not interleave.
    lock: Mutex<()>,
}

impl JsonLinesSink {
    pub fn new(path: PathBuf, rotate_bytes: u64) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(Self {
            path,
            rotate_bytes,
            lock: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl EventSink for JsonLinesSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    async fn write(&self, events: &[Event]) -> Result<(), SinkError> {
        let mut lines = Vec::with_capacity(events.len() * 512);
        for event in events {
            serde_json::to_writer(&mut lines, event)
                .map_err(|e| SinkError::Rejected(e.to_string()))?;
            lines.push(b'\n');
        }
        let _guard = self.lock.lock().await;
        let (path, rotate_bytes) = (self.path.clone(), self.rotate_bytes);
        // Disk I/O off the async workers.
        let written =
            tokio::task::spawn_blocking(move || append(&path, rotate_bytes, &lines)).await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SinkError::Retryable(format!(
                "writing {}: {error}",
                self.path.display()
            ))),
            Err(error) => Err(SinkError::Retryable(format!("writer task failed: {error}"))),
        }
    }
}

/// Appends `lines` to `path`, first renaming a full file to `<stem>-<unix ms>[-n].jsonl` (a
/// name not yet taken: a rotation never overwrites earlier events).
fn append(path: &Path, rotate_bytes: u64, lines: &[u8]) -> std::io::Result<()> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > 0 && size + lines.len() as u64 > rotate_bytes {
        std::fs::rename(path, rotated_name(path))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(lines)?;
    // Durable before the outbox rows are deleted.
    file.sync_data()
}

fn rotated_name(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("events");
    let millis = crate::domain::now_millis();
    (0..)
        .map(|n| match n {
            0 => path.with_file_name(format!("{stem}-{millis}.jsonl")),
            n => path.with_file_name(format!("{stem}-{millis}-{n}.jsonl")),
        })
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| path.with_extension("jsonl.old"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_line_even_within_one_millisecond() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        for n in 0..20 {
            append(&path, 10, format!("{{\"n\":{n}}}\n").as_bytes()).expect("append");
        }
        let mut lines = 0;
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            lines += std::fs::read_to_string(entry.expect("entry").path())
                .expect("read")
                .lines()
                .count();
        }
        assert_eq!(lines, 20);
    }
}
