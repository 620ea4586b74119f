//! Rows as the store reads them.

use anyhow::Context;
use sqlx::{any::AnyRow, Row};

use crate::lifecycle::{BuildState, SessionState};

#[derive(Debug, Clone)]
pub struct ExerciseRecord {
    pub slug: String,
    pub image: String,
    /// JSON of [`crate::sessions::ExerciseSpec`].
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every write: the compare-and-set token of [`crate::store::Store::write_exercise`].
    pub revision: i64,
}

impl ExerciseRecord {
    pub const COLUMNS: &'static str = "slug, image, spec, created_at, updated_at, revision";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(ExerciseRecord {
            slug: r.try_get("slug")?,
            image: r.try_get("image")?,
            spec: r.try_get("spec")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            revision: r.try_get("revision")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub learner: String,
    pub exercise: String,
    pub image: String,
    /// JSON of the [`crate::domain::SandboxSpec`] resolved when the session was created.
    pub spec: String,
    pub state: SessionState,
    pub failure_reason: Option<String>,
    pub container_id: Option<String>,
    pub created_at: i64,
    pub last_activity_at: i64,
    pub ended_at: Option<i64>,
    /// The fleet node whose engine runs its sandbox (`local` on a single host).
    pub node: String,
    /// The memory its sandbox's limits commit on that node.
    pub memory_mb: i64,
}

impl SessionRecord {
    pub const COLUMNS: &'static str = "id, learner, exercise, image, spec, state, failure_reason, container_id, \
        created_at, last_activity_at, ended_at, node, memory_mb";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(SessionRecord {
            id: r.try_get("id")?,
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            image: r.try_get("image")?,
            spec: r.try_get("spec")?,
            state: SessionState::parse(&state).with_context(|| format!("unknown session state {state:?}"))?,
            failure_reason: r.try_get("failure_reason")?,
            container_id: r.try_get("container_id")?,
            created_at: r.try_get("created_at")?,
            last_activity_at: r.try_get("last_activity_at")?,
            ended_at: r.try_get("ended_at")?,
            node: r.try_get("node")?,
            memory_mb: r.try_get("memory_mb")?,
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
    /// The fleet node whose disk holds it.
    pub node: String,
}

impl WorkspaceRecord {
    pub const COLUMNS: &'static str = "learner, exercise, volume, size_mb, created_at, last_used_at, node";
    pub const COLUMNS_W: &'static str =
        "w.learner AS learner, w.exercise AS exercise, w.volume AS volume, w.size_mb AS size_mb, \
         w.created_at AS created_at, w.last_used_at AS last_used_at, w.node AS node";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(WorkspaceRecord {
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            volume: r.try_get("volume")?,
            size_mb: r.try_get("size_mb")?,
            created_at: r.try_get("created_at")?,
            last_used_at: r.try_get("last_used_at")?,
            node: r.try_get("node")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct BuildRecord {
    pub id: String,
    pub exercise: String,
    pub state: BuildState,
    /// JSON of [`crate::builds::Source`].
    pub source: String,
    pub version: Option<String>,
    pub image: Option<String>,
    pub cached: bool,
    pub failure_reason: Option<String>,
    /// JSON of [`crate::builds::SelfTestReport`].
    pub self_test: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The fleet node that builds it (`None` until a git build is claimed).
    pub node: Option<String>,
}

impl BuildRecord {
    pub const COLUMNS: &'static str =
        "id, exercise, state, source, version, image, cached, failure_reason, self_test, \
        created_at, started_at, finished_at, node";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(BuildRecord {
            id: r.try_get("id")?,
            exercise: r.try_get("exercise")?,
            state: BuildState::parse(&state).with_context(|| format!("unknown build state {state:?}"))?,
            source: r.try_get("source")?,
            version: r.try_get("version")?,
            image: r.try_get("image")?,
            cached: r.try_get::<i64, _>("cached")? != 0,
            failure_reason: r.try_get("failure_reason")?,
            self_test: r.try_get("self_test")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            node: r.try_get("node")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub exercise: String,
    pub version: String,
    pub image: String,
    /// JSON of [`crate::builds::manifest::Manifest`].
    pub manifest: String,
    pub build_id: String,
    pub created_at: i64,
    pub published_at: Option<i64>,
}

impl VersionRecord {
    pub const COLUMNS: &'static str = "exercise, version, image, manifest, build_id, created_at, published_at";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(VersionRecord {
            exercise: r.try_get("exercise")?,
            version: r.try_get("version")?,
            image: r.try_get("image")?,
            manifest: r.try_get("manifest")?,
            build_id: r.try_get("build_id")?,
            created_at: r.try_get("created_at")?,
            published_at: r.try_get("published_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub id: String,
    pub session_id: String,
    pub passed: bool,
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: i64,
    pub created_at: i64,
}

impl CheckRecord {
    pub const COLUMNS: &'static str =
        "id, session_id, passed, exit_code, output, truncated, timed_out, duration_ms, created_at";
    pub fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(CheckRecord {
            id: r.try_get("id")?,
            session_id: r.try_get("session_id")?,
            passed: r.try_get::<i64, _>("passed")? != 0,
            exit_code: r.try_get("exit_code")?,
            output: r.try_get("output")?,
            truncated: r.try_get::<i64, _>("truncated")? != 0,
            timed_out: r.try_get::<i64, _>("timed_out")? != 0,
            duration_ms: r.try_get("duration_ms")?,
            created_at: r.try_get("created_at")?,
        })
    }
}
