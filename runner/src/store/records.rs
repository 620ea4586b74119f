//! Rows as the store reads them.

use anyhow::Context;
use sqlx::{any::AnyRow, Row};

use crate::domain::SessionState;

#[derive(Debug, Clone)]
pub struct ExerciseRecord {
    pub slug: String,
    pub image: String,
    /// JSON of [`crate::sessions::ExerciseSpec`].
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ExerciseRecord {
    pub const COLUMNS: &'static str = "slug, image, spec, created_at, updated_at";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(ExerciseRecord {
            slug: r.try_get("slug")?,
            image: r.try_get("image")?,
            spec: r.try_get("spec")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub learner: String,
    pub exercise: String,
    pub image: String,
    /// JSON of the [`crate::docker::SandboxSpec`] resolved when the session was created.
    pub spec: String,
    pub state: SessionState,
    pub failure_reason: Option<String>,
    pub container_id: Option<String>,
    pub created_at: i64,
    pub last_activity_at: i64,
    pub ended_at: Option<i64>,
}

impl SessionRecord {
    pub const COLUMNS: &'static str =
        "id, learner, exercise, image, spec, state, failure_reason, container_id, \
        created_at, last_activity_at, ended_at";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(SessionRecord {
            id: r.try_get("id")?,
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            image: r.try_get("image")?,
            spec: r.try_get("spec")?,
            state: SessionState::parse(&state)
                .with_context(|| format!("unknown session state {state:?}"))?,
            failure_reason: r.try_get("failure_reason")?,
            container_id: r.try_get("container_id")?,
            created_at: r.try_get("created_at")?,
            last_activity_at: r.try_get("last_activity_at")?,
            ended_at: r.try_get("ended_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WorkspaceRecord {
    pub learner: String,
    pub exercise: String,
    pub volume: String,
    pub size_mb: i64,
    pub created_at: i64,
    pub last_used_at: i64,
}

impl WorkspaceRecord {
    pub const COLUMNS: &'static str =
        "learner, exercise, volume, size_mb, created_at, last_used_at";
    pub const COLUMNS_W: &'static str =
        "w.learner AS learner, w.exercise AS exercise, w.volume AS volume, w.size_mb AS size_mb, \
         w.created_at AS created_at, w.last_used_at AS last_used_at";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(WorkspaceRecord {
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            volume: r.try_get("volume")?,
            size_mb: r.try_get("size_mb")?,
            created_at: r.try_get("created_at")?,
            last_used_at: r.try_get("last_used_at")?,
        })
    }
}
