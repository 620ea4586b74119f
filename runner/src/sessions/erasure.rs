//! A learner's erasure (`DELETE /v1/learners/{learner}`): their live sandboxes stopped, their
//! workspaces' files deleted, then every record of theirs in one transaction; the HTTP handler
//! then has `learner_files` delete their snapshots. What was told to webhooks before cannot be
//! recalled; everything the runner keeps is gone.

use serde::Serialize;

use super::{stop, SessionError, Sessions};
use crate::{
    domain::LearnerId,
    lifecycle::{EndReason, SessionState},
    store::{ErasedRecords, SessionFilter},
};

/// How often the erasure looks again for a session that started, or a workspace still in use,
/// while it ran, and how long it waits between two looks.
const ROUNDS: usize = 10;
const RETRY: std::time::Duration = std::time::Duration::from_millis(300);

/// What an erasure removed.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    /// Live sessions whose sandbox was stopped first.
    pub stopped_sessions: u64,
    /// Workspaces whose files were deleted.
    pub workspace_files: u64,
    /// Records deleted from the database.
    pub records: ErasedRecords,
}

pub async fn erase_learner(sessions: &Sessions, learner: &LearnerId) -> Result<Erasure, SessionError> {
    erase(sessions, learner, false).await
}

/// A fleet node's part of another runner's erasure: this node's sandboxes of the learner
/// stopped and this node's workspace files deleted; the records stay for the erasing runner to
/// delete once every node has done its part.
pub async fn erase_on_this_node(sessions: &Sessions, learner: &LearnerId) -> Result<Erasure, SessionError> {
    erase(sessions, learner, true).await
}

async fn erase(sessions: &Sessions, learner: &LearnerId, this_node_only: bool) -> Result<Erasure, SessionError> {
    let learner = learner.as_str();
    let node = sessions.store.node().to_string();
    let here = |n: &str| !this_node_only || n == node;
    let mut stopped = 0;
    let mut files = 0;
    let mut last_problem = None;
    for round in 0..ROUNDS {
        if round > 0 {
            // A sandbox still using a workspace (a start finishing, a file read in a reader
            // sandbox) goes away within moments.
            tokio::time::sleep(RETRY).await;
        }
        let unfinished = SessionFilter {
            learner: Some(learner.to_string()),
            states: SessionState::UNFINISHED.to_vec(),
            limit: 1000,
            ..Default::default()
        };
        for s in sessions.store.sessions(&unfinished).await?.into_iter().filter(|s| here(&s.node)) {
            stop(sessions, &s.id, EndReason::Operator, Some("the learner was erased")).await?;
            stopped += 1;
        }
        let mut in_use = false;
        for w in sessions.store.workspaces_of(learner).await?.into_iter().filter(|w| here(&w.node)) {
            match sessions.workspaces.destroy(&w.volume).await {
                Ok(()) => files += 1,
                Err(e) => {
                    tracing::info!(error = %format!("{e:#}"), "an erasure waits for a workspace in use");
                    last_problem = Some(format!("{e:#}"));
                    in_use = true;
                }
            }
        }
        if in_use {
            continue;
        }
        if this_node_only {
            return Ok(Erasure {
                stopped_sessions: stopped,
                workspace_files: files,
                records: ErasedRecords::default(),
            });
        }
        if let Some(records) = sessions.store.erase_learner(learner).await? {
            tracing::info!(stopped, files, ?records, "erased a learner");
            return Ok(Erasure { stopped_sessions: stopped, workspace_files: files, records });
        }
        last_problem = Some("a session started during the erasure".into());
    }
    Err(SessionError::Busy(format!(
        "the learner's data is still in use ({}); what could be removed was, try again",
        last_problem.unwrap_or_default()
    )))
}
