//! A learner's files of an exercise, read without the host touching them (invariant 4): a
//! listing, one file, the whole workspace as a `.tar.gz`.
//!
//! Every read is `tar -c` run *inside a sandbox as the learner*, its stdout streamed back over
//! the engine's exec stream with a byte cap and parsed in memory on the host (`tar.rs`): a
//! planted symlink is an entry naming its target, a FIFO or device an entry without content —
//! nothing is followed or opened with the runner's privileges. The sandbox is the learner's live
//! one when a session runs; otherwise a short-lived *reader* made by the same hardening policy
//! with the workspace mounted read-only, no network, and only `sleep` as its program
//! (`Purpose::Reader`), removed right after (and by the engine, should the runner die first).
//! Reads are bounded ([`READ_SLOTS`] at once, a deadline, `RUNNER_WORKSPACE_READ_MAX_BYTES`).

pub mod copies;
pub mod snapshots;
pub mod tar;

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{
    config::Settings,
    domain::SessionState,
    engine::{Engine, ExecRequest, Purpose, SandboxOwner, WorkspaceMount},
    exercises::sandbox_spec,
    store::{SnapshotRecord, Store},
    workspaces::Workspaces,
};
use snapshots::{Reason, Retention, Snapshots};
use tar::{Entry, Kind, Listed, Times, WorkspacePath};

/// Reads running at once (each may start a reader sandbox: a container start, bounded like the
/// others, invariant 6).
pub const READ_SLOTS: usize = 2;

/// How long a read waits for a slot before the caller is told to come back (503).
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// How long `tar` may run inside the sandbox (killed there by `timeout`).
pub(crate) const TAR_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("learner {learner:?} has no workspace for exercise {exercise:?}")]
    WorkspaceNotFound { learner: String, exercise: String },
    #[error("no file {0:?} in the workspace")]
    FileNotFound(String),
    #[error("{path:?} is a {kind}, not a regular file: only regular files are served")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path:?} is {size} bytes, over the limit of {max} (RUNNER_WORKSPACE_FILE_MAX_BYTES)")]
    FileTooLarge { path: String, size: u64, max: usize },
    #[error("the workspace is over the limit of {0} bytes for one read (RUNNER_WORKSPACE_READ_MAX_BYTES); nothing was truncated")]
    TooLarge(usize),
    #[error("too many workspace reads are running; try again shortly")]
    Busy,
    #[error("no snapshot {0:?}")]
    SnapshotNotFound(String),
    #[error("the session of this workspace is {0}: start over once it runs (or after it ended)")]
    SessionBusy(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The listing of a workspace.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Listing {
    pub entries: Vec<Listed>,
    /// More entries than `RUNNER_WORKSPACE_LIST_MAX_ENTRIES` (the first ones, by path, are listed).
    pub truncated: bool,
}

/// Reading learners' files: its slots are its own state.
pub struct LearnerFiles {
    settings: Arc<Settings>,
    store: Store,
    engine: Engine,
    workspaces: Arc<Workspaces>,
    slots: Arc<Semaphore>,
    snapshots: Snapshots,
    /// Snapshots being taken after passing checks: an erasure waits for them.
    taking: tokio_util::task::TaskTracker,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub id: String,
    pub learner: String,
    pub exercise: String,
    pub session_id: Option<String>,
    pub check_id: Option<String>,
    pub reason: String,
    /// The sha256 of its deterministic tar: equal for the same files.
    pub sha256: String,
    /// Bytes stored (gzipped), shared by every snapshot of the same files.
    pub size_bytes: i64,
    pub created_at: String,
}

impl From<&SnapshotRecord> for SnapshotView {
    fn from(s: &SnapshotRecord) -> Self {
        SnapshotView {
            id: s.id.clone(),
            learner: s.learner.clone(),
            exercise: s.exercise.clone(),
            session_id: s.session_id.clone(),
            check_id: s.check_id.clone(),
            reason: s.reason.clone(),
            sha256: s.blob.clone(),
            size_bytes: s.size_bytes,
            created_at: crate::domain::rfc3339(s.created_at),
        }
    }
}

/// What a reset did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Reset {
    /// The files as they were, kept.
    pub snapshot: SnapshotView,
    /// The live session whose sandbox now holds the starting files, if one runs; without one
    /// the workspace was removed and the next session starts on a fresh one, as a new
    /// learner's does.
    pub session_id: Option<String>,
}

/// Empties the working directory (`$1`; `lost+found` is root's and stays) and copies the
/// starting files in as the learner, as `sandbox-init` seeds a new workspace. A fixed script:
/// its one input is an argument, never part of the text.
const RESET_SCRIPT: &str = "set -eu\n\
cd -- \"$1\"\n\
find . -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf -- {} \\;\n\
if [ -d /opt/exercise/learner ]; then cp -R -p /opt/exercise/learner/. ./; fi\n";

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::File => "regular file",
        Kind::Dir => "directory",
        Kind::Symlink => "symbolic link",
        Kind::Hardlink => "hard link",
        Kind::Fifo => "FIFO",
        Kind::CharDevice => "character device",
        Kind::BlockDevice => "block device",
    }
}

impl LearnerFiles {
    pub fn new(settings: Arc<Settings>, store: Store, engine: Engine, workspaces: Arc<Workspaces>) -> Arc<Self> {
        let retention = Retention {
            per_learner: settings.snapshots_per_learner,
            max_total_bytes: settings.snapshots_max_bytes,
            max_age: settings.snapshot_retention,
        };
        // A fleet node keeps the blobs in the fleet's database, where every runner reads them.
        let shared = settings.fleet.node != crate::domain::LOCAL_NODE;
        let snapshots = Snapshots::new(settings.data_dir.join("snapshots"), shared, store.clone(), retention);
        Arc::new(LearnerFiles {
            settings,
            store,
            engine,
            workspaces,
            slots: Arc::new(Semaphore::new(READ_SLOTS)),
            snapshots,
            taking: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Starts the learner over: their files are kept as a snapshot (refused when they cannot
    /// be: nothing of the learner's is lost), then the live sandbox's working directory is
    /// emptied and given the starting files, or, without a live session, the workspace is
    /// removed (the next session seeds a fresh one).
    pub async fn reset(&self, learner: &str, exercise: &str) -> Result<Reset, FilesError> {
        let entries = self.read(learner, exercise, None).await?;
        let live = self.store.live_session_for(learner, exercise).await?;
        let snapshot = self
            .snapshots
            .keep(learner, exercise, live.as_ref().map(|s| s.id.as_str()), None, Reason::Reset, &entries)
            .await?;
        match live {
            Some(session) => {
                let (SessionState::Running, Some(container)) = (session.state, &session.container_id) else {
                    return Err(FilesError::SessionBusy(session.state.as_str().to_string()));
                };
                let spec: crate::domain::SandboxSpec =
                    serde_json::from_str(&session.spec).map_err(anyhow::Error::from)?;
                let cmd = ["sh", "-c", RESET_SCRIPT, "reset", &spec.workdir].map(str::to_string).to_vec();
                let mut req = ExecRequest::new(cmd, &self.settings.sandbox_user);
                req.deadline = Duration::from_secs(TAR_SECS);
                let out = self.engine.exec(container, req).await?;
                if out.exit_code != 0 {
                    return Err(anyhow::anyhow!(
                        "resetting the workspace failed (exit {}): {}",
                        out.exit_code,
                        out.output.trim()
                    )
                    .into());
                }
                Ok(Reset { snapshot: (&snapshot).into(), session_id: Some(session.id) })
            }
            None => {
                let Some(record) = self.store.workspace(learner, exercise).await? else {
                    return Ok(Reset { snapshot: (&snapshot).into(), session_id: None });
                };
                self.workspaces
                    .destroy(&record.volume)
                    .await
                    .map_err(|e| FilesError::SessionBusy(format!("in use ({e:#})")))?;
                Ok(Reset { snapshot: (&snapshot).into(), session_id: None })
            }
        }
    }

    /// After a session's check passed (its record written): a snapshot of the learner's files,
    /// in a task of its own so the check's answer does not wait; a failure is logged.
    pub fn snapshot_after_pass(self: &Arc<Self>, session_id: &str, check_id: &str) {
        let (files, session_id, check_id) = (self.clone(), session_id.to_string(), check_id.to_string());
        self.taking.spawn(async move {
            let taken = async {
                let session =
                    files.store.session(&session_id).await?.ok_or_else(|| anyhow::anyhow!("no such session"))?;
                let entries =
                    files.read(&session.learner, &session.exercise, None).await.map_err(anyhow::Error::from)?;
                files
                    .snapshots
                    .keep(
                        &session.learner,
                        &session.exercise,
                        Some(&session_id),
                        Some(&check_id),
                        Reason::CheckPassed,
                        &entries,
                    )
                    .await
            };
            if let Err(e) = taken.await {
                tracing::warn!(session = %session_id, check = %check_id, error = %format!("{e:#}"), "could not keep a snapshot of a passing check");
            }
        });
    }

    /// Deletes every snapshot of a learner (their erasure, after their sessions ended), once the
    /// snapshots being taken now are written; returns how many.
    pub async fn erase_learner(&self, learner: &str) -> Result<u64, FilesError> {
        self.taking.close();
        self.taking.wait().await;
        self.taking.reopen();
        Ok(self.snapshots.erase_learner(learner).await?)
    }

    /// Applies snapshot retention every hour, so snapshots past their age go even when no new
    /// one is taken (taking one applies it too).
    pub async fn run_retention(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let period = std::time::Duration::from_secs(3600);
        crate::rounds::every(period, crate::rounds::First::Now, cancel, || {
            let files = self.clone();
            async move {
                if let Err(e) = files.snapshots.prune("").await {
                    tracing::warn!(error = %format!("{e:#}"), "could not apply snapshot retention");
                }
            }
        })
        .await
    }

    /// A snapshot's record and `.tar.gz`.
    pub async fn snapshot(&self, id: &str) -> Result<(SnapshotRecord, Vec<u8>), FilesError> {
        let record = self.store.snapshot(id).await?.ok_or_else(|| FilesError::SnapshotNotFound(id.to_string()))?;
        let blob = self.snapshots.blob(&record).await?;
        Ok((record, blob))
    }

    /// The snapshot taken when a session's check passed.
    pub async fn snapshot_of_check(&self, session: &str, check: &str) -> Result<(SnapshotRecord, Vec<u8>), FilesError> {
        let record = self
            .store
            .snapshot_of_check(session, check)
            .await?
            .ok_or_else(|| FilesError::SnapshotNotFound(check.to_string()))?;
        let blob = self.snapshots.blob(&record).await?;
        Ok((record, blob))
    }

    pub async fn snapshots_of(&self, learner: &str, exercise: &str) -> Result<Vec<SnapshotRecord>, FilesError> {
        Ok(self.store.snapshots_of(learner, exercise).await?)
    }

    pub async fn list(&self, learner: &str, exercise: &str) -> Result<Listing, FilesError> {
        let entries = self.read(learner, exercise, None).await?;
        let max = self.settings.workspace_list_max_entries;
        Ok(Listing { truncated: entries.len() > max, entries: entries.iter().take(max).map(Listed::from).collect() })
    }

    /// One regular file's content. A symlink, FIFO or device at that path is refused, and so is
    /// a path through a symlinked directory (`tar` archives the first component without
    /// following it, so nothing deeper exists in the stream).
    pub async fn file(&self, learner: &str, exercise: &str, path: &WorkspacePath) -> Result<Vec<u8>, FilesError> {
        let entries = self.read(learner, exercise, Some(path)).await?;
        let entry = entries
            .into_iter()
            .find(|e| e.path == path.as_str())
            .ok_or_else(|| FilesError::FileNotFound(path.as_str().to_string()))?;
        if entry.kind != Kind::File {
            return Err(FilesError::NotAFile { path: entry.path, kind: kind_word(entry.kind) });
        }
        let max = self.settings.workspace_file_max_bytes;
        if entry.data.len() > max {
            return Err(FilesError::FileTooLarge { size: entry.size(), path: entry.path, max });
        }
        Ok(entry.data)
    }

    /// The whole workspace as a `.tar.gz` (times kept, owners 0:0, links as links, no devices).
    pub async fn archive(&self, learner: &str, exercise: &str) -> Result<Vec<u8>, FilesError> {
        let entries = self.read(learner, exercise, None).await?;
        let max = self.settings.workspace_read_max_bytes;
        let tar = tar::write_tar(&entries, Times::Kept)?;
        tar::gzip(&tar, max).map_err(|_| FilesError::TooLarge(max))
    }

    /// The entries of the workspace (or of its top-level name `top`), read by `tar` inside the
    /// learner's running sandbox or a reader sandbox.
    pub async fn read(
        &self,
        learner: &str,
        exercise: &str,
        top: Option<&WorkspacePath>,
    ) -> Result<Vec<Entry>, FilesError> {
        match self.read_once(learner, exercise, top).await {
            // The workspace went while it was read (the learner was erased, or retention ended):
            // what the reader found broken is that it is gone.
            Err(FilesError::Internal(e)) if self.store.workspace(learner, exercise).await?.is_none() => {
                tracing::debug!(error = %format!("{e:#}"), "a workspace went while it was read");
                Err(FilesError::WorkspaceNotFound { learner: learner.into(), exercise: exercise.into() })
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        learner: &str,
        exercise: &str,
        top: Option<&WorkspacePath>,
    ) -> Result<Vec<Entry>, FilesError> {
        let not_found = || FilesError::WorkspaceNotFound { learner: learner.into(), exercise: exercise.into() };
        if self.store.workspace(learner, exercise).await?.is_none() {
            return Err(not_found());
        }
        let _slot = tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| FilesError::Busy)?
            .map_err(|e| anyhow::anyhow!(e))?;
        if let Some(session) = self.store.live_session_for(learner, exercise).await? {
            if let (SessionState::Running, Some(container)) = (session.state, &session.container_id) {
                let spec: crate::domain::SandboxSpec =
                    serde_json::from_str(&session.spec).map_err(anyhow::Error::from)?;
                match self.tar_in(container, &spec.workdir, top).await {
                    Err(FilesError::Internal(e)) => {
                        // The sandbox may be going (its session stopping): read the workspace in a
                        // reader sandbox instead, unless the session still runs there.
                        let now = self.store.session(&session.id).await?;
                        if now.is_some_and(|s| s.state == SessionState::Running) {
                            return Err(FilesError::Internal(e));
                        }
                    }
                    done => return done,
                }
            }
        }
        let record = self
            .store
            .exercise(exercise)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the workspace's exercise {exercise:?} is gone"))?;
        let mut spec = sandbox_spec(&self.settings, &record)?;
        spec.network = None;
        spec.ide = false;
        let Some(hold) = self.workspaces.attach_existing(learner, exercise).await? else { return Err(not_found()) };
        let volume = hold.volume().to_string();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let owner = SandboxOwner { instance: self.engine.instance(), purpose: Purpose::Reader(&id), learner, exercise };
        let s = &self.settings;
        let made = self
            .engine
            .create_sandbox(&spec, &owner, WorkspaceMount::ReadOnlyVolume(&volume), s.runtime, &s.sandbox_user)
            .await;
        let result = match made {
            Ok(container) => {
                let read = match self.engine.start_container(&container).await {
                    Ok(()) => self.tar_in(&container, &spec.workdir, top).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = self.engine.remove_container(&container).await {
                    tracing::warn!(container, error = %format!("{e:#}"), "could not remove a reader sandbox; it ends by itself");
                }
                read
            }
            Err(e) => Err(e.into()),
        };
        // The volume goes again unless a session started on it meanwhile (then it is in use and
        // stays, or that session's start holds it) or another read holds it.
        drop(hold);
        if self.store.live_session_for(learner, exercise).await?.is_none() {
            if let Err(e) = self.workspaces.detach_after_read(&volume).await {
                tracing::warn!(volume, error = %format!("{e:#}"), "could not release a workspace after reading it");
            }
        }
        result
    }

    /// `tar -c` of the working directory (or one top-level name in it) as the sandbox user,
    /// parsed here. A stream over the cap is refused, never cut.
    async fn tar_in(
        &self,
        container: &str,
        workdir: &str,
        top: Option<&WorkspacePath>,
    ) -> Result<Vec<Entry>, FilesError> {
        let mut cmd: Vec<String> =
            ["timeout", "-s", "KILL", &TAR_SECS.to_string(), "tar", "-c", "-f", "-", "-C", workdir, "--"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        cmd.push(top.map_or(".", |p| p.top()).to_string());
        let mut req = ExecRequest::new(cmd, &self.settings.sandbox_user);
        req.max_output = self.settings.workspace_read_max_bytes;
        req.deadline = Duration::from_secs(TAR_SECS + 5);
        let out = self.engine.exec_capture(container, req).await?;
        if out.truncated {
            return Err(FilesError::TooLarge(self.settings.workspace_read_max_bytes));
        }
        if out.timed_out {
            return Err(anyhow::anyhow!("reading the workspace took longer than {TAR_SECS} s").into());
        }
        // tar says what it could not read (the learner's own unreadable files, `lost+found`) and
        // exits non-zero, but the archive of the rest is complete: a stream that does not parse
        // to its end is the failure.
        let entries = tar::parse(&out.stdout).map_err(|e| {
            anyhow::anyhow!(
                "the workspace's archive did not parse ({e:#}); tar exited {}: {}",
                out.exit_code,
                out.stderr.trim()
            )
        })?;
        if out.exit_code != 0 {
            tracing::debug!(exit_code = out.exit_code, stderr = %out.stderr.trim(), "tar read the workspace with warnings");
        }
        Ok(entries)
    }
}
