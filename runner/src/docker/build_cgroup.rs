//! A pids limit for `docker build`: a cgroup the runner makes for one build, with `pids.max`
//! set, named to the engine as the build's cgroup parent. Every `RUN` step's container is created
//! inside it, so a fork bomb in an author's Dockerfile stops at the limit instead of exhausting
//! the host's process table. (The build API has no pids option; `cgroupparent` is how
//! `docker build --cgroup-parent` does it.)
//!
//! Works with the engine's `cgroupfs` driver on cgroup v1 (checked on these machines) and v2;
//! needs the engine on this host and the runner running as root, like the workspace volumes.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where build cgroups live, relative to each hierarchy's root.
const PARENT: &str = "exercise-runner-build";

/// One build's cgroup. Removed by [`BuildCgroup::remove`] once the build has ended, or in the
/// background when dropped (a build future dropped by its timeout); what a crash leaves behind
/// is swept by [`sweep_stale`].
#[derive(Debug)]
pub struct BuildCgroup {
    /// The path given to the engine as `cgroupparent`, e.g. `/exercise-runner-build/<name>`.
    parent: String,
    removed: bool,
}

fn v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// Directories of the hierarchies a cgroup path exists in: each v1 controller mount (the
/// engine's runtime creates the parent in all of them), or the single v2 tree.
fn hierarchies() -> Vec<PathBuf> {
    if v2() {
        return vec![PathBuf::from(CGROUP_ROOT)];
    }
    let Ok(dir) = std::fs::read_dir(CGROUP_ROOT) else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) // not the cpu -> cpu,cpuacct symlinks
        .map(|e| e.path())
        .collect()
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn mkdir(path: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the cgroup {}", path.display())),
    }
}

impl BuildCgroup {
    /// Makes the cgroup `exercise-runner-build/<name>` with at most `pids_max` processes.
    /// `name` must be unique among running builds (the build id).
    pub fn create(name: &str, pids_max: u64, cgroup_driver: &str) -> anyhow::Result<BuildCgroup> {
        if cgroup_driver != "cgroupfs" {
            bail!(
                "the build pids limit needs the engine's cgroupfs cgroup driver (this engine uses {cgroup_driver:?}); \
                 set RUNNER_BUILD_PIDS_LIMIT=0 to build without one"
            );
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            bail!("invalid build cgroup name {name:?}");
        }
        let hint = "the build pids limit needs the runner to run as root next to the engine; \
                    set RUNNER_BUILD_PIDS_LIMIT=0 to build without one";
        let dir = if v2() {
            let root = Path::new(CGROUP_ROOT);
            let parent = root.join(PARENT);
            // The pids controller must be delegated down to the build's cgroup.
            write(&root.join("cgroup.subtree_control"), "+pids").context(hint)?;
            mkdir(&parent).context(hint)?;
            write(&parent.join("cgroup.subtree_control"), "+pids").context(hint)?;
            parent.join(name)
        } else {
            let pids = Path::new(CGROUP_ROOT).join("pids");
            if !pids.is_dir() {
                bail!("no pids cgroup hierarchy at {}; {hint}", pids.display());
            }
            mkdir(&pids.join(PARENT)).context(hint)?;
            pids.join(PARENT).join(name)
        };
        mkdir(&dir).context(hint)?;
        let cg = BuildCgroup { parent: format!("/{PARENT}/{name}"), removed: false };
        write(&dir.join("pids.max"), &pids_max.to_string()).context(hint)?; // dropping `cg` removes it
        Ok(cg)
    }

    /// The value for the build's `cgroupparent`.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// Removes the cgroup from every hierarchy once the build's containers are gone (the engine
    /// removes them as the build ends; a moment's retry covers the last one's teardown).
    pub async fn remove(mut self) {
        self.removed = true;
        remove_eventually(&self.parent).await;
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let parent = std::mem::take(&mut self.parent);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { remove_eventually(&parent).await });
            }
            Err(_) => {
                remove_now(&parent);
            }
        }
    }
}

/// Removes a build cgroup (relative to each hierarchy's root) where it is empty; whether it is
/// gone everywhere.
fn remove_now(parent: &str) -> bool {
    let mut all = true;
    for h in hierarchies() {
        match std::fs::remove_dir(h.join(parent.trim_start_matches('/'))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => all = false,
        }
    }
    all
}

async fn remove_eventually(parent: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !remove_now(parent) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(cgroup = %parent, "build cgroup still busy; left for the sweep");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes build cgroups left by builds that cannot be running any more: older than
/// `older_than` (more than the longest a build may take) and empty. Cgroups of running builds
/// are younger, and rmdir refuses cgroups with processes or children anyway.
pub fn sweep_stale(older_than: Duration) -> usize {
    let mut removed = 0;
    for h in hierarchies() {
        let Ok(dir) = std::fs::read_dir(h.join(PARENT)) else { continue };
        for entry in dir.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > older_than));
            if old && entry.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
