//! A build's log: a file under `<data_dir>/builds/<id>.log`, capped, written as the build runs and
//! read by any number of followers (see `http::builds::logs`).

use std::{io::Write, path::PathBuf};

/// Lines past this size are dropped with a note: a runaway build cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

pub struct BuildLog {
    file: Option<std::fs::File>,
    written: u64,
    full: bool,
    /// Values replaced by `[redacted]` wherever they appear (a deploy's secrets), longest first.
    redactions: Vec<String>,
}

/// Secret values shorter than this are not redacted: masking every "1" or "yes" in a log would
/// hide the log, not the secret.
pub const MIN_REDACTED_LEN: usize = 4;

pub fn path(dir: &std::path::Path, build_id: &str) -> PathBuf {
    dir.join(format!("{build_id}.log"))
}

impl BuildLog {
    pub fn open(dir: &std::path::Path, build_id: &str) -> BuildLog {
        let _ = std::fs::create_dir_all(dir);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path(dir, build_id)).ok();
        let written = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        BuildLog { file, written, full: false, redactions: Vec::new() }
    }

    /// From now on, every occurrence of these values is written as `[redacted]`.
    pub fn redact<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        self.redactions.extend(values.into_iter().filter(|v| v.len() >= MIN_REDACTED_LEN).map(str::to_string));
        self.redactions.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.redactions.dedup();
    }

    /// Appends text (a line is ended with a newline when it lacks one).
    pub fn write(&mut self, text: &str) {
        if self.full {
            return;
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut text = text.to_string();
        for secret in &self.redactions {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "[redacted]");
            }
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if self.written + text.len() as u64 > MAX_LOG_BYTES {
            let _ = f.write_all(b"[log truncated: over the size limit]\n");
            self.full = true;
            return;
        }
        if f.write_all(text.as_bytes()).is_ok() {
            self.written += text.len() as u64;
        }
    }

    /// A step heading, so people reading the log see where they are.
    pub fn step(&mut self, text: &str) {
        self.write(&format!("==> {text}"));
    }
}
