//! A build's log: a file under `<data_dir>/builds/<id>.log`, capped, written as the build runs and
//! read by any number of followers (see `http::builds::logs`).

use std::{io::Write, path::PathBuf};

/// Lines past this size are dropped with a note: a runaway build cannot fill the disk.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

pub struct BuildLog {
    file: Option<std::fs::File>,
    written: u64,
    full: bool,
}

pub fn path(dir: &std::path::Path, build_id: &str) -> PathBuf {
    dir.join(format!("{build_id}.log"))
}

impl BuildLog {
    pub fn open(dir: &std::path::Path, build_id: &str) -> BuildLog {
        let _ = std::fs::create_dir_all(dir);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path(dir, build_id)).ok();
        let written = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        BuildLog { file, written, full: false }
    }

    /// Appends text (a line is ended with a newline when it lacks one).
    pub fn write(&mut self, text: &str) {
        if self.full {
            return;
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut text = text.to_string();
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
