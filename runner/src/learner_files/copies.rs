//! Workspaces copied off their fleet node (docs/ARCHITECTURE.md, "Fleet"): a node that dies
//! or is drained costs a learner at most the work since the last copy.
//!
//! A copy is the workspace's `.tar.gz` as `tar` writes it inside the learner's sandbox, as the
//! learner (the same read as every other, invariant 4), kept in the fleet's database, one per
//! learner and exercise. It is taken when a session ends (before its sandbox is removed) and
//! every `RUNNER_WORKSPACE_COPY_SECS` for running sessions whose learner was active since the
//! last one. A session that starts on a node without the workspace (its node was lost or
//! drained) begins with it: `tar -x` inside the new sandbox, as the learner. A single host takes
//! no copies: its disk is where workspaces live.

use std::{sync::Arc, time::Duration};

use super::{tar, FilesError, LearnerFiles, TAR_SECS};
use crate::engine::ExecRequest;

impl LearnerFiles {
    /// Copies the working directory of a running sandbox off this node; the copy's size.
    pub async fn copy_from(
        &self,
        learner: &str,
        exercise: &str,
        container: &str,
        workdir: &str,
    ) -> Result<usize, FilesError> {
        let entries = self.tar_in(container, workdir, None).await?;
        let max = self.settings.workspace_read_max_bytes;
        let gz = tar::gzip(&tar::write_tar(&entries, tar::Times::Kept)?, max).map_err(|_| FilesError::TooLarge(max))?;
        self.store.put_copy(learner, exercise, &gz).await?;
        Ok(gz.len())
    }

    /// Unpacks the learner's last copy (if any) into a sandbox's working directory, as the
    /// learner; whether there was one.
    pub async fn restore_copy(
        &self,
        learner: &str,
        exercise: &str,
        container: &str,
        workdir: &str,
    ) -> anyhow::Result<bool> {
        let Some(copy) = self.store.copy_of(learner, exercise).await? else { return Ok(false) };
        let cmd = ["timeout", "-s", "KILL", &TAR_SECS.to_string(), "tar", "-x", "-z", "-f", "-", "-C", workdir]
            .map(str::to_string)
            .to_vec();
        let mut req = ExecRequest::new(cmd, &self.settings.sandbox_user);
        req.stdin = Some(copy.content);
        req.deadline = Duration::from_secs(TAR_SECS + 5);
        let out = self.engine.exec(container, req).await?;
        if out.exit_code != 0 {
            anyhow::bail!("unpacking the workspace's copy failed (exit {}): {}", out.exit_code, out.output.trim());
        }
        tracing::info!(learner, exercise, from_node = %copy.node, taken_at = copy.taken_at, "workspace restored from its copy");
        Ok(true)
    }

    /// One round of copies of this node's running sessions whose learner was active since.
    pub async fn copy_round(&self) -> anyhow::Result<usize> {
        let mut copied = 0;
        for (session, learner, exercise, container) in self.store.sessions_to_copy().await? {
            let Some(record) = self.store.session(&session).await? else { continue };
            let workdir = serde_json::from_str::<crate::domain::SandboxSpec>(&record.spec)
                .map(|s| s.workdir)
                .unwrap_or_else(|_| "/workspace".into());
            match self.copy_from(&learner, &exercise, &container, &workdir).await {
                Ok(_) => copied += 1,
                Err(e) => {
                    tracing::warn!(session, learner, error = %e, "could not copy a workspace off its node; will retry")
                }
            }
        }
        Ok(copied)
    }
}

/// The periodic copies (fleet nodes only).
pub async fn run(files: Arc<LearnerFiles>, period: Duration, cancel: tokio_util::sync::CancellationToken) {
    crate::rounds::every(period, crate::rounds::First::AfterPeriod, cancel, || {
        let files = files.clone();
        async move {
            if let Err(e) = files.copy_round().await {
                tracing::warn!(error = %format!("{e:#}"), "the workspace copy round failed; will retry");
            }
        }
    })
    .await;
}
