//! Learners' workspaces: one per learner and exercise, kept across sessions until retention ends.
//!
//! With the `loop` driver a workspace is a sparse ext4 image file under `<data_dir>/workspaces`,
//! attached to a loop device and mounted into the sandbox as a Docker `local` volume of type ext4:
//! a writer stops at the image size ("No space left on device"), so a learner cannot fill the
//! host's disk (overlay2 on ext4 has no `--storage-opt size=`). The loop device and the volume
//! exist only while a session uses the workspace; the image file holds the files in between.
//!
//! The host never mounts the image itself nor reads or writes a path inside it
//! (docs/ARCHITECTURE.md, invariant 4): it only creates, attaches and deletes the image file, with argument vectors.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::{process::Command, sync::Mutex};

use crate::{config::WorkspaceDriver, engine::Engine, store::Store};

pub struct Workspaces {
    driver: WorkspaceDriver,
    dir: PathBuf,
    owner: (u32, u32),
    engine: Engine,
    store: Store,
    /// Loop attach and volume create are serialised: `losetup -f` races with itself.
    lock: Mutex<()>,
    /// Reads in progress, per volume ([`ReadHold`]): a held volume is not detached nor destroyed
    /// between its reader's attach and the reader sandbox's mount.
    reads: std::sync::Mutex<HashMap<String, usize>>,
}

/// A volume attached for a read of the workspace without a session (a reader sandbox). While it
/// is held, a session ending on that workspace, another read finishing and an erasure leave the
/// volume attached (an erasure waits and tries again); once the reader sandbox has it mounted,
/// the engine refuses to remove it anyway. Held in this process only: another runner replica
/// sharing the host (a rolling update) does not see it.
pub struct ReadHold<'a> {
    workspaces: &'a Workspaces,
    volume: String,
}

impl ReadHold<'_> {
    pub fn volume(&self) -> &str {
        &self.volume
    }
}

impl Drop for ReadHold<'_> {
    fn drop(&mut self) {
        let mut reads = self.workspaces.reads.lock().expect("lock");
        if let Some(n) = reads.get_mut(&self.volume) {
            *n -= 1;
            if *n == 0 {
                reads.remove(&self.volume);
            }
        }
    }
}

/// Held while attaching, detaching or creating workspaces: this process's mutex plus an advisory
/// lock on `<dir>/.lock`, which serialises the other runner replicas sharing the directory.
struct Exclusive<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    _file: std::fs::File,
}

/// How every workspace volume's name begins.
pub const VOLUME_PREFIX: &str = "exercise-runner-ws-";

/// How the volume of a pooled sandbox's workspace is named (`…pool-<pool id>`). A claim keeps
/// the name: the learner's workspace record names the volume.
pub const POOL_VOLUME_PREFIX: &str = "exercise-runner-ws-pool-";

pub fn pool_volume_name(pool_id: &str) -> String {
    format!("{POOL_VOLUME_PREFIX}{pool_id}")
}

/// The volume name of a workspace: stable for a learner, exercise and runner instance.
pub fn volume_name(instance: &str, learner: &str, exercise: &str) -> String {
    let digest = Sha256::digest(format!("{instance}\0{learner}\0{exercise}").as_bytes());
    format!("{VOLUME_PREFIX}{}", &hex::encode(digest)[..32])
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed? scripts/host-setup.sh installs it)"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Workspaces {
    pub fn new(driver: WorkspaceDriver, dir: PathBuf, sandbox_user: &str, engine: Engine, store: Store) -> Arc<Self> {
        let mut ids = sandbox_user.split(':').map(|s| s.parse::<u32>().ok());
        let uid = ids.next().flatten().unwrap_or(1000);
        let gid = ids.next().flatten().unwrap_or(uid);
        Arc::new(Workspaces {
            driver,
            dir,
            owner: (uid, gid),
            engine,
            store,
            lock: Mutex::new(()),
            reads: std::sync::Mutex::default(),
        })
    }

    async fn exclusive(&self) -> anyhow::Result<Exclusive<'_>> {
        let guard = self.lock.lock().await;
        tokio::fs::create_dir_all(&self.dir).await?;
        let path = self.dir.join(".lock");
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.lock()?; // released when the file is closed
            Ok(file)
        })
        .await?
        .context("locking the workspace directory")?;
        Ok(Exclusive { _guard: guard, _file: file })
    }

    fn image_path(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.ext4"))
    }

    /// Checks that this machine can provide workspaces with the configured driver.
    pub async fn check(&self) -> anyhow::Result<()> {
        if self.driver == WorkspaceDriver::Loop {
            tokio::fs::create_dir_all(&self.dir).await.with_context(|| format!("creating {}", self.dir.display()))?;
            run("losetup", &["--version"]).await.context("the loop workspace driver needs losetup")?;
            run("mkfs.ext4", &["-V"]).await.context("the loop workspace driver needs mkfs.ext4")?;
        }
        Ok(())
    }

    /// Makes the workspace of a learner and exercise ready to mount; returns the volume name (the
    /// one their workspace record names: derived from learner and exercise for a workspace made
    /// for them, a pool's for one that came with a claimed pooled sandbox).
    pub async fn prepare(&self, learner: &str, exercise: &str, size_mb: u64) -> anyhow::Result<String> {
        let volume = volume_name(self.engine.instance(), learner, exercise);
        let record = self.store.claim_workspace(learner, exercise, &volume, size_mb as i64).await?;
        self.attach_volume(&record.volume, record.size_mb as u64).await?;
        Ok(record.volume)
    }

    /// Makes an existing workspace ready to mount for reading its files without a session (a
    /// reader sandbox); its volume, or `None` when the learner has no workspace there. Nothing is
    /// created and the retention clock is not reset.
    pub async fn attach_existing(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<ReadHold<'_>>> {
        let Some(record) = self.store.workspace(learner, exercise).await? else { return Ok(None) };
        // Held before the attach: a detach that sees the hold leaves the volume be.
        let hold = self.hold_for_read(record.volume);
        self.attach_volume(&hold.volume, record.size_mb as u64).await?;
        Ok(Some(hold))
    }

    fn hold_for_read(&self, volume: String) -> ReadHold<'_> {
        *self.reads.lock().expect("lock").entry(volume.clone()).or_default() += 1;
        ReadHold { workspaces: self, volume }
    }

    fn read_in_progress(&self, volume: &str) -> bool {
        self.reads.lock().expect("lock").contains_key(volume)
    }

    /// After a read without a session: drops the volume and loop device again, as
    /// [`Self::release`] does, without counting the read as use.
    pub async fn detach_after_read(&self, volume: &str) -> anyhow::Result<()> {
        if self.driver == WorkspaceDriver::Volume {
            return Ok(());
        }
        let _guard = self.exclusive().await?;
        self.detach(volume).await.map(|_| ())
    }

    /// Makes a pooled sandbox's fresh workspace ready to mount (its row in `pool_sandboxes`
    /// names the volume; a claim hands it to the learner).
    pub async fn prepare_pooled(&self, volume: &str, size_mb: u64) -> anyhow::Result<()> {
        self.attach_volume(volume, size_mb).await
    }

    async fn attach_volume(&self, volume: &str, size_mb: u64) -> anyhow::Result<()> {
        let volume = volume.to_string();
        let _guard = self.exclusive().await?;
        match self.driver {
            WorkspaceDriver::Volume => {
                if self.engine.volume_options(&volume).await?.is_none() {
                    self.engine.create_volume(&volume, HashMap::new()).await?;
                }
            }
            WorkspaceDriver::Loop => {
                let image = self.image_path(&volume);
                if tokio::fs::metadata(&image).await.is_err() {
                    self.make_image(&image, size_mb).await?;
                }
                let device = self.attach(&image).await?;
                let want =
                    HashMap::from([("type".to_string(), "ext4".to_string()), ("device".to_string(), device.clone())]);
                match self.engine.volume_options(&volume).await? {
                    Some(opts) if opts.get("device") == Some(&device) => {}
                    Some(_) => {
                        // A volume left from before a reboot points at another loop device.
                        if !self.engine.remove_volume(&volume).await? {
                            bail!("workspace volume {volume} is in use with a stale device");
                        }
                        self.engine.create_volume(&volume, want).await?;
                    }
                    None => self.engine.create_volume(&volume, want).await?,
                }
            }
        }
        Ok(())
    }

    async fn make_image(&self, image: &std::path::Path, size_mb: u64) -> anyhow::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let tmp = image.with_extension("ext4.new");
        let file = tokio::fs::File::create(&tmp).await?;
        file.set_len(size_mb * 1024 * 1024).await?;
        drop(file);
        let owner = format!("root_owner={}:{}", self.owner.0, self.owner.1);
        let tmp_str = tmp.to_str().context("workspace path is not UTF-8")?;
        if let Err(e) = run("mkfs.ext4", &["-q", "-F", "-m", "0", "-E", &owner, "-L", "workspace", tmp_str]).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, image).await?;
        Ok(())
    }

    /// The loop device backing an image file, attaching one when none is.
    async fn attach(&self, image: &std::path::Path) -> anyhow::Result<String> {
        let path = image.to_str().context("workspace path is not UTF-8")?;
        if let Some(dev) = Self::attached_device(path).await? {
            return Ok(dev);
        }
        Ok(run("losetup", &["-f", "--show", path]).await?.trim().to_string())
    }

    async fn attached_device(path: &str) -> anyhow::Result<Option<String>> {
        let out = run("losetup", &["-j", path]).await?;
        Ok(out.lines().next().and_then(|l| l.split(':').next()).map(|d| d.trim().to_string()).filter(|d| !d.is_empty()))
    }

    /// After the last session of a workspace ended: drop the volume and the loop device, keep
    /// the files. A volume still in use (a new session already started) is left alone.
    pub async fn release(&self, learner: &str, exercise: &str) -> anyhow::Result<()> {
        let Some(record) = self.store.workspace(learner, exercise).await? else { return Ok(()) };
        let volume = record.volume;
        self.store.touch_workspace(learner, exercise).await?;
        if self.driver == WorkspaceDriver::Volume {
            return Ok(());
        }
        let _guard = self.exclusive().await?;
        self.detach(&volume).await.map(|_| ())
    }

    /// Removes the volume and its loop device; false (nothing done) while a container uses it or
    /// a read holds it.
    async fn detach(&self, volume: &str) -> anyhow::Result<bool> {
        if self.read_in_progress(volume) || !self.engine.remove_volume(volume).await? {
            return Ok(false);
        }
        let image = self.image_path(volume);
        if let Some(path) = image.to_str() {
            if let Some(dev) = Self::attached_device(path).await? {
                run("losetup", &["-d", &dev]).await?;
            }
        }
        Ok(true)
    }

    /// Deletes a workspace and its files for good (retention ended).
    pub async fn destroy(&self, volume: &str) -> anyhow::Result<()> {
        let _guard = self.exclusive().await?;
        if self.read_in_progress(volume) {
            bail!("workspace volume {volume} is being read");
        }
        match self.driver {
            WorkspaceDriver::Volume => {
                if !self.engine.remove_volume(volume).await? {
                    bail!("workspace volume {volume} is in use");
                }
            }
            WorkspaceDriver::Loop => {
                self.detach(volume).await?;
                if self.engine.volume_options(volume).await?.is_some() {
                    bail!("workspace volume {volume} is in use");
                }
                match tokio::fs::remove_file(self.image_path(volume)).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.store.delete_workspace(volume).await
    }

    /// Removes workspaces unused for longer than the retention; returns how many.
    pub async fn remove_expired(&self, retention: std::time::Duration) -> anyhow::Result<usize> {
        let before = crate::store::now_ms() - retention.as_millis() as i64;
        let stale = self.store.stale_workspaces(before).await?;
        let mut removed = 0;
        for w in stale {
            match self.destroy(&w.volume).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(volume = %w.volume, error = %e, "could not remove an expired workspace")
                }
            }
        }
        Ok(removed)
    }

    /// A fleet node's files of workspaces that moved to another node (their learner's session
    /// started there, from the fleet's copy): deleted, as the record no longer names them. A
    /// volume no record names at all is kept (a learner's files are never guessed away).
    async fn remove_moved_away(&self, known: &std::collections::HashSet<String>) -> anyhow::Result<usize> {
        if self.driver != WorkspaceDriver::Loop || self.store.node() == crate::store::LOCAL_NODE {
            return Ok(0);
        }
        let mut here = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = dir.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(".ext4").filter(|v| v.starts_with(VOLUME_PREFIX) && !known.contains(*v))
            {
                here.push(v.to_string());
            }
        }
        let mut removed = 0;
        for v in self.store.volumes_moved_away(&here).await? {
            let _guard = self.exclusive().await?;
            // Mounted by a sandbox here (a session that has not ended yet): next round.
            self.detach(&v).await?;
            if self.engine.volume_options(&v).await?.is_some() {
                continue;
            }
            match tokio::fs::remove_file(self.image_path(&v)).await {
                Ok(()) => {
                    tracing::info!(volume = %v, "removed the files of a workspace that moved to another node");
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// Volumes of this instance that no workspace record knows of (left by a crash between
    /// volume create and record write, or by a deleted database): removed.
    pub async fn remove_orphan_volumes(&self) -> anyhow::Result<usize> {
        // Docker first, then the database: a workspace's record (or pooled sandbox's row) is
        // written before its volume is made, so every volume listed here is known by the time
        // the records are read, unless it is an orphan.
        let volumes = self.engine.list_workspace_volumes().await?;
        let known: std::collections::HashSet<String> = self.store.workspace_volumes().await?.into_iter().collect();
        let mut removed = self.remove_moved_away(&known).await?;
        for v in volumes {
            if !known.contains(&v) {
                let _guard = self.exclusive().await?;
                let detached = self.detach(&v).await?;
                // A pooled sandbox's workspace that no row or learner names (a crash between
                // discarding its row and its files) was never a learner's: its files go too.
                if detached && v.starts_with(POOL_VOLUME_PREFIX) {
                    let _ = tokio::fs::remove_file(self.image_path(&v)).await;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{exited, FakeEngine};

    /// Found by the erasure race test: a session's end (or another read finishing) detached a
    /// workspace a reader had just attached, before its reader sandbox mounted it, and the read
    /// answered 500. The fake engine has no volumes: reaching it is an error, so `Ok(false)`
    /// and the "being read" refusal show the engine was left alone.
    #[tokio::test]
    async fn a_volume_being_read_is_neither_detached_nor_destroyed_until_its_last_read_ends() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display());
        let store = Store::connect(&url).await.unwrap();
        let engine: Engine = FakeEngine::answering(|_| exited(0, ""));
        let ws = Workspaces::new(WorkspaceDriver::Loop, dir.path().join("workspaces"), "1000:1000", engine, store);
        let (first, second) = (ws.hold_for_read("v".into()), ws.hold_for_read("v".into()));
        assert!(!ws.detach("v").await.unwrap(), "held: not detached");
        let refused = ws.destroy("v").await.unwrap_err();
        assert!(format!("{refused:#}").contains("being read"), "{refused:#}");
        drop(first);
        assert!(!ws.detach("v").await.unwrap(), "still held by the second read");
        drop(second);
        assert!(ws.detach("v").await.is_err(), "no read left: the engine is asked (and the fake has no volumes)");
        assert!(ws.reads.lock().unwrap().is_empty());
    }
}
