//! The results log: one JSON line per finished job (and per stale job removed at start-up),
//! appended to a file that survives restarts. Bounded: a line that would take the file past
//! its limit first moves it to `<path>.1` (replacing an older one), so at most twice the limit
//! is ever kept.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The default limit of the live file.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ResultsLog {
    path: PathBuf,
    max_bytes: u64,
}

impl ResultsLog {
    pub fn new(path: &Path, max_bytes: u64) -> ResultsLog {
        ResultsLog {
            path: path.to_owned(),
            max_bytes,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `record` as one line, rotating first if it would not fit.
    /// [`ResultsLog::append`], a failure logged (the daemon carries on without its log).
    pub fn append_or_warn(&self, record: &serde_json::Value) {
        if let Err(e) = self.append(record) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot append to the results log");
        }
    }

    pub fn append(&self, record: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).expect("a JSON value serializes");
        line.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, old)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        // One write of a whole line: concurrent appenders (O_APPEND) never interleave lines.
        f.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_rotates_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/results.jsonl");
        let log = ResultsLog::new(&p, 100);
        for i in 0..10 {
            log.append(&serde_json::json!({"job_id": i.to_string(), "pad": "x".repeat(20)}))
                .unwrap();
            let live = std::fs::metadata(&p).unwrap().len();
            assert!(live <= 100, "live file {live} bytes after {i}");
        }
        let live = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(dir.path().join("sub/results.jsonl.1")).unwrap();
        // Every line is whole JSON, and the newest is in the live file.
        for l in live.lines().chain(old.lines()) {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(live.lines().last().unwrap().contains("\"9\""));
        assert!(!old.is_empty());
    }
}
