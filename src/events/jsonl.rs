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

    /// Appends `lines` to the file (rotating it by size), off the async workers.
    async fn append_lines(&self, lines: Vec<u8>) -> Result<(), SinkError> {
        let _guard = self.lock.lock().await;
        let (path, rotate_bytes) = (self.path.clone(), self.rotate_bytes);
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
        self.append_lines(lines).await
    }

    /// The outbox payloads are the events' JSON already, as the service wrote them: written as
    /// they are, not encoded again (half of what the relay spent on an event). One that is not
    /// a single line (written by hand, say) is encoded from its event.
    async fn write_claimed(&self, events: &[Event], payloads: &[&str]) -> Result<(), SinkError> {
        debug_assert_eq!(events.len(), payloads.len(), "one payload per event");
        let mut lines = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum());
        for (event, payload) in events.iter().zip(payloads) {
            if payload.contains(['\n', '\r']) {
                serde_json::to_writer(&mut lines, event)
                    .map_err(|e| SinkError::Rejected(e.to_string()))?;
            } else {
                lines.extend_from_slice(payload.as_bytes());
            }
            lines.push(b'\n');
        }
        self.append_lines(lines).await
    }

    async fn erase(&self, brand: &str, pseudonyms: &[String]) -> anyhow::Result<u64> {
        // The writer's lock: no batch is appended to a file while it is being rewritten.
        let _guard = self.lock.lock().await;
        let (path, brand, pseudonyms) = (self.path.clone(), brand.to_owned(), pseudonyms.to_vec());
        Ok(
            tokio::task::spawn_blocking(move || erase_lines(&path, &brand, &pseudonyms))
                .await
                .context("the erasing task")?
                .with_context(|| format!("erasing from {}", self.path.display()))?,
        )
    }

    async fn count(
        &self,
        brand: &str,
        pseudonyms: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let _guard = self.lock.lock().await;
        let mut counts = std::collections::BTreeMap::new();
        for file in files(&self.path) {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for kind in text
                .lines()
                .filter_map(|line| about(line, brand, pseudonyms))
            {
                *counts.entry(kind).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

/// Whether a JSON line is an event of `brand` about one of `pseudonyms` (in its phone or
/// customer pseudonym), and its type.
fn about(line: &str, brand: &str, pseudonyms: &[String]) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let names = |field: &str| {
        event[field]
            .as_str()
            .is_some_and(|p| !p.is_empty() && pseudonyms.iter().any(|q| q == p))
    };
    (event["brand"] == brand && (names("phone_pseudonym") || names("customer_pseudonym")))
        .then(|| event["event_type"].as_str().unwrap_or_default().to_owned())
}

/// The current file and every rotated one beside it (`<stem>-<unix ms>[-n].jsonl`).
fn files(path: &Path) -> Vec<PathBuf> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("events")
        .to_owned();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|candidate| {
            candidate
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| {
                    name == format!("{stem}.jsonl")
                        || (name.starts_with(&format!("{stem}-")) && name.ends_with(".jsonl"))
                })
        })
        .collect();
    files.sort();
    files
}

/// Rewrites every file without the lines about `pseudonyms`: each through a temporary file
/// renamed over it, synced first. How many lines went.
fn erase_lines(path: &Path, brand: &str, pseudonyms: &[String]) -> std::io::Result<u64> {
    let mut removed = 0;
    for file in files(path) {
        let text = std::fs::read_to_string(&file)?;
        let mut kept = String::with_capacity(text.len());
        let mut dropped = 0;
        for line in text.lines() {
            if about(line, brand, pseudonyms).is_some() {
                dropped += 1;
            } else {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        if dropped == 0 {
            continue;
        }
        let temporary = file.with_extension("jsonl.erasing");
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(kept.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temporary, &file)?;
        removed += dropped;
    }
    Ok(removed)
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

    /// A claimed batch is written as its payloads, one line per event, each line decoding to
    /// its event; a payload spread over lines (valid JSON, written by hand) is encoded again.
    #[tokio::test]
    async fn claimed_payloads_are_written_as_they_are_one_line_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonLinesSink::new(dir.path().join("events.jsonl"), 1 << 20).expect("sink");
        let events: Vec<Event> = (0..3)
            .map(|n| crate::bench::relay::synthetic(n, 1_765_000_000_000))
            .collect();
        let compact: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).expect("json"))
            .collect();
        let pretty = serde_json::to_string_pretty(&events[2]).expect("json");
        let payloads = [compact[0].as_str(), compact[1].as_str(), pretty.as_str()];
        sink.write_claimed(&events, &payloads).await.expect("write");
        let text = std::fs::read_to_string(sink.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                compact[0].as_str(),
                compact[1].as_str(),
                compact[2].as_str()
            ]
        );
        for (line, event) in lines.iter().zip(&events) {
            assert_eq!(&serde_json::from_str::<Event>(line).expect("event"), event);
        }
    }
}
