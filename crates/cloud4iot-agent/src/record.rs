//! `--record`: the CSV trace of every reading of a device of a known class, written by a
//! thread of its own so a slow disk (an SD card) never stalls the agent's loop.
//!
//! Bounded twice: the loop hands lines over through a bounded channel (a line that finds
//! it full is dropped and counted, as a full radio queue drops readings), and the file is
//! rotated when it reaches its size cap: `FILE` becomes `FILE.1` (replacing the previous
//! `FILE.1`) and a new `FILE` starts with the CSV header. The trace never takes more than
//! about twice the cap on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use cloud4iot_core::simulate::{CSV_HEADER, Sighting};

use crate::metrics::Metrics;

/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;
/// The writer flushes after this long without a new line (a crash loses at most this).
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// The loop's end of the trace. Dropping it lets the writer flush and stop.
pub struct Recorder {
    tx: Option<SyncSender<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
    metrics: Metrics,
}

impl Recorder {
    /// Opens `path` for appending (with the CSV header when new or empty) and starts the
    /// writer thread. `max_bytes` is the size at which it rotates.
    pub fn open(path: &Path, max_bytes: u64, metrics: Metrics) -> std::io::Result<Recorder> {
        let file = Trace::open(path.to_path_buf(), max_bytes)?;
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("record".into())
            .spawn(move || file.run(rx))?;
        Ok(Recorder {
            tx: Some(tx),
            writer: Some(writer),
            metrics,
        })
    }

    /// Queues one line; never blocks. A full queue drops it (counted); after a write
    /// error the writer is gone and nothing more is recorded.
    pub fn record(&mut self, line: &Sighting) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line.to_csv()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped_records.inc();
            }
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread's file.
struct Trace {
    path: PathBuf,
    max_bytes: u64,
    out: BufWriter<File>,
    written: u64,
}

impl Trace {
    fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Trace> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        let mut trace = Trace {
            path,
            max_bytes,
            out: BufWriter::new(file),
            written,
        };
        if written == 0 {
            trace.line(CSV_HEADER)?;
        }
        Ok(trace)
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.out, "{line}")?;
        self.written += line.len() as u64 + 1;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        *self = Trace::open(self.path.clone(), self.max_bytes)?;
        Ok(())
    }

    fn run(mut self, rx: Receiver<String>) {
        loop {
            let result = match rx.recv_timeout(FLUSH_AFTER) {
                Ok(line) => {
                    let rotate = self.written + line.len() as u64 + 1 > self.max_bytes
                        && self.written > CSV_HEADER.len() as u64 + 1;
                    (if rotate { self.rotate() } else { Ok(()) }).and_then(|()| self.line(&line))
                }
                Err(RecvTimeoutError::Timeout) => self.out.flush(),
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            };
            if let Err(e) = result {
                tracing::warn!(path = %self.path.display(), error = %e, "recording the trace failed; recording stops");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(i: i64) -> Sighting {
        Sighting {
            time: jiff::Timestamp::from_second(1_800_000_000 + i).unwrap(),
            gateway: "gw-home-1".into(),
            device: "C4:7C:8D:6A:12:34".into(),
            class: "omh-bracelet".into(),
            rssi: -60,
        }
    }

    #[test]
    fn the_trace_rotates_at_its_cap_and_each_file_starts_with_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.csv");
        let cap = 2_000;
        {
            let mut r = Recorder::open(&path, cap, Metrics::default()).unwrap();
            for i in 0..200 {
                r.record(&sighting(i));
                if i % 50 == 0 {
                    // Let the writer keep up: this test is about the cap, not the queue.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("trace.csv.1")).unwrap();
        for text in [&now, &old] {
            assert!(text.len() as u64 <= cap, "{} bytes", text.len());
            assert_eq!(text.lines().next(), Some(CSV_HEADER));
            assert!(text.lines().count() > 1);
        }
        assert!(
            now.ends_with(&format!("{}\n", sighting(199).to_csv())),
            "the newest line is in FILE"
        );
        let parsed = cloud4iot_core::simulate::parse_csv(&now).unwrap();
        assert!(!parsed.is_empty());
    }
}
