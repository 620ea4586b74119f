//! The learner's files as a tar stream, parsed in memory: the host never opens a path of the
//! workspace, it reads what `tar` inside a sandbox (running as the learner) wrote to its stdout.
//! A symlink is an entry naming its target, a FIFO or device an entry with no content; nothing
//! is followed or opened. Pure functions, unit-tested.

use std::io::{Read, Write};

use serde::Serialize;

use crate::domain::Invalid;

/// Longest path the API takes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// What ext4 puts in every fresh workspace (root's, unreadable to the learner): never shown.
const LOST_AND_FOUND: &str = "lost+found";

/// A path inside a workspace as the API takes it: relative, `/`-separated, no `.` or `..`
/// component, no empty component, no NUL, at most 4096 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    pub fn parse(s: &str) -> Result<WorkspacePath, Invalid> {
        let bad = |why: &str| Invalid::new("invalid_path", format!("path {s:?} {why}"));
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(bad("is longer than 4096 bytes"));
        }
        if s.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if s.starts_with('/') {
            return Err(bad("is absolute: paths are relative to the workspace"));
        }
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        for part in trimmed.split('/') {
            match part {
                "" => return Err(bad("has an empty component")),
                "." | ".." => return Err(bad("has a . or .. component")),
                _ => {}
            }
        }
        Ok(WorkspacePath(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its first component: what `tar` is asked to archive (it never follows a symlink named
    /// on its command line, so an entry deeper down exists only under real directories).
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// One entry of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: u64,
    /// A symlink's or hard link's target, as written (never resolved).
    pub link: Option<String>,
    /// A regular file's content.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// An entry as the listing shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub size: u64,
    /// Permission bits in octal (`"0644"`).
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl From<&Entry> for Listed {
    fn from(e: &Entry) -> Self {
        Listed {
            path: e.path.clone(),
            kind: e.kind,
            size: e.size(),
            mode: format!("{:04o}", e.mode & 0o7777),
            target: e.link.clone(),
        }
    }
}

/// The entries of a tar stream written by `tar -c -C <workdir> .` (or of one top-level name),
/// sorted by path. Names are checked as [`WorkspacePath`]s (a stream that names something
/// outside is refused, whoever wrote it); `lost+found` and anything of a kind tar has no word
/// for (sockets) is left out. `Err` when the stream is not a complete tar.
pub fn parse(stream: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let mut archive = tar::Archive::new(stream);
    let mut entries = Vec::new();
    for item in archive.entries()? {
        let mut item = item?;
        let raw = String::from_utf8_lossy(&item.path_bytes()).into_owned();
        let name = raw.trim_start_matches("./").trim_end_matches('/');
        if name.is_empty() || name == "." || name == LOST_AND_FOUND || name.starts_with("lost+found/") {
            continue;
        }
        let path =
            WorkspacePath::parse(name).map_err(|e| anyhow::anyhow!("the archive names {raw:?}: {}", e.message))?;
        let header = item.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::Hardlink,
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Char => Kind::CharDevice,
            tar::EntryType::Block => Kind::BlockDevice,
            _ => continue,
        };
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().unwrap_or(0);
        let link = match kind {
            Kind::Symlink | Kind::Hardlink => {
                item.link_name_bytes().map(|l| String::from_utf8_lossy(&l).trim_start_matches("./").to_string())
            }
            _ => None,
        };
        let mut data = Vec::new();
        if kind == Kind::File {
            item.read_to_end(&mut data)?;
        }
        entries.push(Entry { path: path.0, kind, mode, mtime, link, data });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// How [`write_tar`] writes times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// As the workspace had them (a download).
    Kept,
    /// All zero: the same files always make the same bytes (snapshots are content-addressed).
    Zeroed,
}

/// A tar of `entries` in their order (sorted by [`parse`]), owned by 0:0 with no names, devices
/// left out (extracting one as root would make a device node), links kept as links.
pub fn write_tar(entries: &[Entry], times: Times) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(if times == Times::Kept { e.mtime } else { 0 });
        h.set_size(0);
        match e.kind {
            Kind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size());
                b.append_data(&mut h, &e.path, e.data.as_slice())?;
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{}/", e.path), std::io::empty())?;
            }
            Kind::Symlink | Kind::Hardlink => {
                h.set_entry_type(if e.kind == Kind::Symlink { tar::EntryType::Symlink } else { tar::EntryType::Link });
                let link = e.link.as_deref().unwrap_or_default();
                // As written: the builder's path handling would turn `/` into `//`.
                if link.len() < 100 {
                    h.set_link_name_literal(link)?;
                    b.append_data(&mut h, &e.path, std::io::empty())?;
                } else {
                    b.append_link(&mut h, &e.path, link)?;
                }
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &e.path, std::io::empty())?;
            }
            Kind::CharDevice | Kind::BlockDevice => {}
        }
    }
    Ok(b.into_inner()?)
}

/// Gzip of `bytes`; `Err` past `max` bytes of output.
pub fn gzip(bytes: &[u8], max: usize) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    let out = enc.finish()?;
    anyhow::ensure!(out.len() <= max, "the compressed archive is over {max} bytes");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_without_dot_components_or_nul() {
        for good in ["a", "src/main.py", "a/b/c.txt", ".hidden", "dir/", "x..y", "-rf"] {
            assert!(WorkspacePath::parse(good).is_ok(), "{good}");
        }
        assert_eq!(WorkspacePath::parse("dir/").unwrap().as_str(), "dir");
        assert_eq!(WorkspacePath::parse("src/a/b").unwrap().top(), "src");
        for bad in ["", "/etc/shadow", "../x", "a/../../x", "a/./b", "a//b", ".", "..", "a\0b", "/"] {
            let e = WorkspacePath::parse(bad).unwrap_err();
            assert_eq!(e.code, "invalid_path", "{bad:?}");
        }
        assert!(WorkspacePath::parse(&"a".repeat(4097)).is_err());
    }

    fn stream(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h
    }

    #[test]
    fn a_stream_is_parsed_without_following_anything_and_lost_and_found_is_left_out() {
        let tar = stream(|b| {
            b.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), "./", std::io::empty()).unwrap();
            b.append_data(&mut header(tar::EntryType::Directory, 0, 0o700), "./lost+found/", std::io::empty()).unwrap();
            b.append_data(&mut header(tar::EntryType::Regular, 3, 0o644), "./b.txt", &b"hi\n"[..]).unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0, 0o777), "./x", "/etc/shadow").unwrap();
            b.append_data(&mut header(tar::EntryType::Fifo, 0, 0o644), "./pipe", std::io::empty()).unwrap();
            b.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), "./a/", std::io::empty()).unwrap();
        });
        let entries = parse(&tar).unwrap();
        let names: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [("a", Kind::Dir), ("b.txt", Kind::File), ("pipe", Kind::Fifo), ("x", Kind::Symlink)],
            "sorted, lost+found and the root left out"
        );
        assert_eq!(entries[1].data, b"hi\n");
        assert_eq!(entries[3].link.as_deref(), Some("/etc/shadow"));
        let listed = Listed::from(&entries[1]);
        assert_eq!((listed.size, listed.mode.as_str()), (3, "0644"));
    }

    #[test]
    fn a_stream_naming_something_outside_is_refused() {
        for name in ["../../etc/passwd", "/etc/passwd", "a/../../b"] {
            // Written raw: the builder itself refuses such names.
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(&[b'x'; 512]);
            bytes.extend_from_slice(&[0; 1024]);
            assert!(parse(&bytes).is_err(), "{name}");
        }
    }

    #[test]
    fn snapshots_of_the_same_files_are_the_same_bytes_whatever_the_times() {
        let entry = |mtime| Entry {
            path: "a.txt".into(),
            kind: Kind::File,
            mode: 0o644,
            mtime,
            link: None,
            data: b"42\n".to_vec(),
        };
        let one = write_tar(&[entry(1)], Times::Zeroed).unwrap();
        let two = write_tar(&[entry(2)], Times::Zeroed).unwrap();
        assert_eq!(one, two);
        assert_ne!(write_tar(&[entry(1)], Times::Kept).unwrap(), write_tar(&[entry(2)], Times::Kept).unwrap());
        // What is written parses back to the same entries (times zeroed).
        assert_eq!(parse(&one).unwrap(), vec![entry(0)]);
        // Links are written as they were (the builder's path handling would make `/` into `//`).
        for target in ["/", "/etc/shadow", "../../x", &"d/".repeat(60)] {
            let link = Entry { kind: Kind::Symlink, link: Some(target.to_string()), data: vec![], ..entry(0) };
            let back = parse(&write_tar(std::slice::from_ref(&link), Times::Zeroed).unwrap()).unwrap();
            assert_eq!(back[0].link.as_deref(), Some(target), "{target}");
        }
        let dev = Entry { kind: Kind::CharDevice, data: vec![], ..entry(0) };
        assert!(parse(&write_tar(&[dev], Times::Zeroed).unwrap()).unwrap().is_empty(), "no device nodes");
    }
}
