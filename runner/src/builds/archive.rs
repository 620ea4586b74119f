//! Intake of an exercise repository sent as a tar or tar.gz archive.
//!
//! The archive is read and checked entirely in memory and never unpacked on the host, so the host
//! cannot be made to follow a symlink an author planted (docs/ARCHITECTURE.md, invariant 4). Rejected: absolute
//! paths, `..`, symlinks that leave the tree, hard links, device files and FIFOs, duplicate paths,
//! and archives over the size and file-count caps (compressed and unpacked). What is accepted is a
//! normalised tree (owner root, mtime 0, modes 0644/0755) whose digest is the exercise version.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Component, Path},
};

use sha2::{Digest, Sha256};

use crate::domain::Invalid;

#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_unpacked_bytes: u64,
    pub max_files: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { max_unpacked_bytes: 128 * 1024 * 1024, max_files: 10_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { data: Vec<u8>, executable: bool },
    Dir,
    Symlink { target: String },
}

/// A checked repository tree: relative, normalised paths (no leading `./`, no trailing `/`).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

fn reject(message: impl Into<String>) -> Invalid {
    Invalid::new("invalid_archive", message)
}

/// What a tar reader's error means for the author, without its text: the `tar` crate quotes the
/// bytes it could not read, and random bytes sent as a tar must not come back in the answer.
fn not_a_tar(e: &std::io::Error) -> String {
    tracing::debug!(error = %e, "unreadable archive");
    "not a readable tar or tar.gz archive (send `tar -c .` or `tar -cz .` of the repository)".to_string()
}

/// A tar entry type in words (`Debug` would print the crate's variant names).
fn entry_kind(t: tar::EntryType) -> String {
    match t.as_byte() {
        b @ 0x20..=0x7e => format!("type '{}'", b as char),
        b => format!("type {b}"),
    }
}

/// Normalises an entry path, refusing anything that is not plainly inside the tree.
fn clean_path(raw: &Path) -> Result<Option<String>, Invalid> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => {
                let p = p.to_str().ok_or_else(|| reject("a path in the archive is not UTF-8".to_string()))?;
                if p.contains('\0') {
                    return Err(reject("NUL bytes are not allowed in paths".to_string()));
                }
                parts.push(p.to_string());
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(reject(format!("{}: '..' is not allowed in paths", raw.display()))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(reject(format!("{}: absolute paths are not allowed", raw.display())))
            }
        }
    }
    if parts.is_empty() {
        return Ok(None); // the root itself ("./")
    }
    let path = parts.join("/");
    if path.len() > 1024 || parts.iter().any(|p| p.len() > 255) {
        return Err(reject(format!("{path}: path too long")));
    }
    Ok(Some(path))
}

/// Whether a symlink at `link` pointing to `target` stays inside the tree (lexically).
fn symlink_stays_inside(link: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = link.split('/').collect();
    depth.pop(); // the link's own name
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            other => depth.push(other),
        }
    }
    true
}

impl Tree {
    /// Reads a tar or gzip-compressed tar (detected by its magic number).
    pub fn from_archive(bytes: &[u8], caps: Caps) -> Result<Tree, Invalid> {
        let limit = caps.max_unpacked_bytes + 64 * 1024 * 1024; // headers and padding on top of file data
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Self::from_reader(flate2::read::GzDecoder::new(bytes).take(limit), caps)
        } else {
            Self::from_reader(bytes.take(limit), caps)
        }
    }

    fn from_reader<R: Read>(reader: R, caps: Caps) -> Result<Tree, Invalid> {
        let mut archive = tar::Archive::new(reader);
        let mut tree = Tree::default();
        let mut total: u64 = 0;
        let entries = archive.entries().map_err(|e| reject(not_a_tar(&e)))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| reject(not_a_tar(&e)))?;
            let raw_path = entry.path().map_err(|e| reject(not_a_tar(&e)))?.into_owned();
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader
                    | tar::EntryType::XHeader
                    | tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
            ) {
                continue;
            }
            let Some(path) = clean_path(&raw_path)? else {
                continue;
            };
            if tree.nodes.len() >= caps.max_files {
                return Err(reject(format!("more than {} files", caps.max_files)));
            }
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.header().size().unwrap_or(u64::MAX);
                    total = total.saturating_add(size);
                    if total > caps.max_unpacked_bytes {
                        return Err(reject(format!("unpacked size over {} bytes", caps.max_unpacked_bytes)));
                    }
                    let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
                    (&mut entry)
                        .take(size)
                        .read_to_end(&mut data)
                        .map_err(|e| reject(format!("{path}: {}", not_a_tar(&e))))?;
                    if data.len() as u64 != size {
                        return Err(reject(format!("{path}: truncated archive")));
                    }
                    let mode = entry.header().mode().unwrap_or(0o644);
                    Node::File { data, executable: mode & 0o111 != 0 }
                }
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| reject(format!("{path}: {}", not_a_tar(&e))))?
                        .and_then(|t| t.to_str().map(str::to_string))
                        .ok_or_else(|| reject(format!("{path}: symlink without a UTF-8 target")))?;
                    if target.contains('\0') || !symlink_stays_inside(&path, &target) {
                        return Err(reject(format!("{path}: symlink to {target:?} points outside the repository")));
                    }
                    Node::Symlink { target }
                }
                tar::EntryType::Link => return Err(reject(format!("{path}: hard links are not allowed"))),
                tar::EntryType::Char | tar::EntryType::Block => {
                    return Err(reject(format!("{path}: device files are not allowed")))
                }
                tar::EntryType::Fifo => return Err(reject(format!("{path}: FIFOs are not allowed"))),
                other => {
                    return Err(reject(format!("{path}: entries of this type ({}) are not allowed", entry_kind(other))))
                }
            };
            if let Some(previous) = tree.nodes.get(&path) {
                if !(previous == &Node::Dir && node == Node::Dir) {
                    return Err(reject(format!("{path}: appears twice in the archive")));
                }
            }
            tree.nodes.insert(path, node);
        }
        if tree.nodes.is_empty() {
            return Err(reject("the archive is empty"));
        }
        // A file must not sit where a directory is needed, nor under a symlink.
        for path in tree.nodes.keys() {
            let mut prefix = String::new();
            for part in path.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p).unwrap_or(&[]) {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                match tree.nodes.get(&prefix) {
                    Some(Node::Dir) | None => {}
                    Some(_) => return Err(reject(format!("{path}: a parent of it is not a directory"))),
                }
            }
        }
        Ok(tree)
    }

    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.nodes.get(path) {
            Some(Node::File { data, .. }) => Some(data),
            _ => None,
        }
    }

    pub fn has_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes.keys().any(|p| p.starts_with(&prefix))
    }

    /// The content digest: the same tree gives the same digest, whatever the archive looked like.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (path, node) in &self.nodes {
            h.update(path.as_bytes());
            h.update([0]);
            match node {
                Node::File { data, executable } => {
                    h.update(if *executable { b"x" } else { b"f" });
                    h.update((data.len() as u64).to_le_bytes());
                    h.update(data);
                }
                Node::Dir => h.update(b"d"),
                Node::Symlink { target } => {
                    h.update(b"l");
                    h.update(target.as_bytes());
                }
            }
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// A normalised tar of the entries `keep` accepts, with paths rewritten by `rename`.
    pub fn to_tar(&self, mut select: impl FnMut(&str) -> Option<String>) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, node) in &self.nodes {
            let Some(name) = select(path) else { continue };
            if name.is_empty() {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            let result = match node {
                Node::File { data, executable } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(if *executable { 0o755 } else { 0o644 });
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, &name, data.as_slice())
                }
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, &name, std::io::empty())
                }
                Node::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, &name, target)
                }
            };
            result.expect("writing a tar to memory cannot fail for checked paths");
        }
        builder.into_inner().expect("finishing a tar in memory")
    }

    /// The whole tree as a normalised tar (what is stored for a queued build).
    pub fn to_full_tar(&self) -> Vec<u8> {
        self.to_tar(|p| Some(p.to_string()))
    }

    /// The files under `dir`, re-rooted at `dir`.
    pub fn subtree_tar(&self, dir: &str) -> Vec<u8> {
        let prefix = format!("{dir}/");
        self.to_tar(|p| p.strip_prefix(&prefix).map(str::to_string))
    }

    /// The Docker build context: everything but `exclude` (the solution) and VCS metadata.
    pub fn build_context_tar(&self, exclude: &str) -> Vec<u8> {
        let prefix = format!("{exclude}/");
        self.to_tar(|p| {
            let skipped = p == exclude || p.starts_with(&prefix) || p == ".git" || p.starts_with(".git/");
            (!skipped).then(|| p.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // Write the raw name so malicious paths reach the reader unaltered.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::*;

    #[test]
    fn accepts_a_plain_repository_and_normalises_it() {
        let t = tar_of(&[
            ("./", Directory, b"", None),
            ("./exercise.toml", Regular, b"slug = \"a\"", None),
            ("./exercise/main.py", Regular, b"print(1)", None),
            ("./exercise/link.py", Symlink, b"", Some("main.py")),
        ]);
        let tree = Tree::from_archive(&t, Caps::default()).unwrap();
        assert_eq!(tree.file("exercise.toml").unwrap(), b"slug = \"a\"");
        assert!(tree.has_dir("exercise"));
        // The same content packed differently has the same digest.
        let again = Tree::from_archive(&tree.to_full_tar(), Caps::default()).unwrap();
        assert_eq!(again.digest(), tree.digest());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        assert_eq!(Tree::from_archive(&gz.finish().unwrap(), Caps::default()).unwrap().digest(), tree.digest());
    }

    #[test]
    fn rejects_escapes_links_devices_and_bombs() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (tar_of(&[("../evil", Regular, b"x", None)]), "'..'"),
            (tar_of(&[("a/../../evil", Regular, b"x", None)]), "'..'"),
            (tar_of(&[("/etc/passwd", Regular, b"x", None)]), "absolute"),
            (tar_of(&[("link", Symlink, b"", Some("/etc/passwd"))]), "outside"),
            (tar_of(&[("a/link", Symlink, b"", Some("../../etc"))]), "outside"),
            (tar_of(&[("hard", Link, b"", Some("/etc/shadow"))]), "hard links"),
            (tar_of(&[("dev", Char, b"", None)]), "device"),
            (tar_of(&[("fifo", Fifo, b"", None)]), "FIFO"),
            (tar_of(&[("a", Regular, b"x", None), ("a", Regular, b"y", None)]), "twice"),
            (tar_of(&[("l", Symlink, b"", Some("sub")), ("l/x", Regular, b"y", None)]), "not a directory"),
            (b"definitely not a tar archive, just some text that is long enough".repeat(20), "archive"),
        ];
        for (bytes, needle) in cases {
            let e = Tree::from_archive(&bytes, Caps::default()).unwrap_err();
            assert_eq!(e.code, "invalid_archive");
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
        // A NUL byte in a (PAX) path is refused, not a crash.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(Regular);
        let mut pax = Vec::new();
        let rec = b"path=exercise/x\0y\n";
        pax.extend_from_slice(format!("{} ", rec.len() + 3).as_bytes());
        pax.extend_from_slice(rec);
        let mut ph = tar::Header::new_ustar();
        ph.set_entry_type(tar::EntryType::XHeader);
        ph.set_size(pax.len() as u64);
        ph.set_path("pax").unwrap();
        ph.set_cksum();
        b.append(&ph, pax.as_slice()).unwrap();
        h.set_path("placeholder").unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let e = Tree::from_archive(&b.into_inner().unwrap(), Caps::default()).unwrap_err();
        assert!(e.message.contains("NUL"), "{}", e.message);
        // Size and count caps, on the unpacked content.
        let big = tar_of(&[("big", Regular, &vec![0u8; 4096], None)]);
        let caps = Caps { max_unpacked_bytes: 1000, max_files: 10 };
        assert!(Tree::from_archive(&big, caps).unwrap_err().message.contains("unpacked size"));
        let many: Vec<(String, tar::EntryType, &[u8], Option<&str>)> =
            (0..20).map(|i| (format!("f{i}"), Regular, &b"x"[..], None)).collect();
        let many: Vec<_> = many.iter().map(|(p, k, d, l)| (p.as_str(), *k, *d, *l)).collect();
        assert!(Tree::from_archive(&tar_of(&many), caps).unwrap_err().message.contains("more than"));
        // A gzip bomb: small compressed, huge unpacked.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &tar_of(&[("zeros", Regular, &vec![0u8; 8 << 20], None)])).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        let caps = Caps { max_unpacked_bytes: 1 << 20, max_files: 10 };
        assert!(Tree::from_archive(&bomb, caps).is_err());
    }

    #[test]
    fn build_context_leaves_out_the_solution() {
        let t = tar_of(&[
            ("Dockerfile", Regular, b"FROM x", None),
            ("solution/main.py", Regular, b"answer", None),
            ("exercise/main.py", Regular, b"todo", None),
        ]);
        let tree = Tree::from_archive(&t, Caps::default()).unwrap();
        let ctx = Tree::from_archive(&tree.build_context_tar("solution"), Caps::default()).unwrap();
        assert!(ctx.file("solution/main.py").is_none());
        assert!(ctx.file("Dockerfile").is_some());
        let sol = Tree::from_archive(&tree.subtree_tar("solution"), Caps::default()).unwrap();
        assert_eq!(sol.file("main.py").unwrap(), b"answer");
    }
}
