//! The learner's files: a listing of the working directory, reading and saving one file. The
//! agent runs as the learner, so the kernel already confines it; these checks keep paths sane.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
const MAX_ENTRIES: usize = 5000;
const SKIPPED: [&str; 4] = ["lost+found", ".git", "node_modules", "__pycache__"];

#[derive(Serialize)]
pub struct Entry {
    pub path: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Every file and directory under `root` (not following symlinks), sorted by path.
pub fn list(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for e in read.flatten() {
            if out.len() >= MAX_ENTRIES {
                break;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            let rel = e.path().strip_prefix(root).map(|p| p.to_string_lossy().into_owned()).unwrap_or(name);
            if meta.is_dir() {
                stack.push(e.path());
                out.push(Entry { path: rel, kind: "dir", size: None });
            } else if meta.is_file() {
                out.push(Entry { path: rel, kind: "file", size: Some(meta.len()) });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A relative path inside the root, or None.
pub fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || rel.len() > 1024 || p.is_absolute() {
        return None;
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(p))
}
