//! `runner exercises build SLUG --dir PATH`: the directory as the tar the runner takes in.

use std::path::Path;

use super::CliError;

/// A tar of `dir`: its files, directories and symlinks (as links, never followed), paths
/// relative to it, modes kept and times zeroed, `.git` left out. Anything else (a socket, a FIFO)
/// is skipped and named in `skipped`; the runner checks the rest (escaping links, size caps).
pub fn tar_of_dir(dir: &Path, skipped: &mut Vec<String>) -> Result<Vec<u8>, CliError> {
    let meta = std::fs::metadata(dir).map_err(|e| CliError::Setup(format!("--dir {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(CliError::Setup(format!("--dir {}: not a directory", dir.display())));
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, dir, skipped).map_err(|e| CliError::Setup(format!("reading {}: {e}", dir.display())))?;
    b.into_inner().map_err(|e| CliError::Setup(format!("making the archive: {e}")))
}

fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, dir: &Path, skipped: &mut Vec<String>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).expect("under the root");
        if rel == Path::new(".git") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_mode(meta.permissions().mode() & 0o777);
        if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, rel, std::io::empty())?;
            walk(b, root, &path, skipped)?;
        } else if meta.is_file() {
            let data = std::fs::read(&path)?;
            h.set_size(data.len() as u64);
            b.append_data(&mut h, rel, data.as_slice())?;
        } else if meta.file_type().is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, rel, std::fs::read_link(&path)?)?;
        } else {
            skipped.push(rel.display().to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_becomes_a_tar_without_git_and_with_links_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("exercise/src")).unwrap();
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        std::fs::write(root.join("exercise.toml"), "slug = \"x\"\n").unwrap();
        std::fs::write(root.join("exercise/src/main.py"), "print(1)\n").unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref: main\n").unwrap();
        std::os::unix::fs::symlink("src/main.py", root.join("exercise/link.py")).unwrap();
        let mut skipped = vec![];
        let tar = tar_of_dir(root, &mut skipped).unwrap();
        assert!(skipped.is_empty());
        let mut names = vec![];
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == "exercise/link.py" {
                assert_eq!(e.link_name().unwrap().unwrap().display().to_string(), "src/main.py");
            }
            names.push(name);
        }
        assert_eq!(names, ["exercise", "exercise/link.py", "exercise/src", "exercise/src/main.py", "exercise.toml"]);

        let e = tar_of_dir(&root.join("missing"), &mut skipped).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = tar_of_dir(&root.join("exercise.toml"), &mut skipped).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
