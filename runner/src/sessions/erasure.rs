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

/// How often the erasure looks again for a session that started while it ran.
const ROUNDS: usize = 5;

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
    let learner = learner.as_str();
    let mut stopped = 0;
    let mut files = 0;
    for _ in 0..ROUNDS {
        let unfinished = SessionFilter {
            learner: Some(learner.to_string()),
            states: SessionState::UNFINISHED.to_vec(),
            limit: 1000,
            ..Default::default()
        };
        for s in sessions.store.sessions(&unfinished).await? {
            stop(sessions, &s.id, EndReason::Operator, Some("the learner was erased")).await?;
            stopped += 1;
        }
        for w in sessions.store.workspaces_of(learner).await? {
            sessions.workspaces.destroy(&w.volume).await?;
            files += 1;
        }
        if let Some(records) = sessions.store.erase_learner(learner).await? {
            tracing::info!(stopped, files, ?records, "erased a learner");
            return Ok(Erasure { stopped_sessions: stopped, workspace_files: files, records });
        }
        // A session started in between: stop it too.
    }
    Err(SessionError::Busy(
        "the learner kept starting sessions during the erasure: their sandboxes and files are gone, \
         their records not yet; try again"
            .into(),
    ))
}
