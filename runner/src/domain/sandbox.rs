//! What a sandbox is made of, as values: its limits, the runtime, how the learner's work is
//! checked, and the whole resolved spec a session keeps. Plain data that the exercises, builds,
//! sessions and the Docker policy all speak; it depends on nothing of theirs.

use std::str::FromStr;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Where hidden tests live in every image built on the base image (checks see it as
/// `$EXERCISE_TESTS`).
pub const TESTS_DIR: &str = "/opt/exercise/tests";

/// The writable paths every sandbox gets, as tmpfs of `Limits::tmpfs_mb` each. The root
/// filesystem is read-only; these and the workspace are the only places a learner can write.
/// Docker copies the image's directory (content and mode) onto each tmpfs, so who may write to
/// `/run` is the image's decision, as on any system (the base image opens it to the learner).
pub const TMPFS_PATHS: [&str; 3] = ["/tmp", "/var/tmp", "/run"];

/// The container runtime that runs sandboxes. runc and crun are two implementations of the same
/// OCI runtime on the host's kernel (crun, in C, starts containers faster); runsc is gVisor, a
/// second kernel boundary. The hardening policy is the same under all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Crun,
    Runsc,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Runsc => "runsc",
        }
    }
}

impl FromStr for Runtime {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "runc" => Ok(Runtime::Runc),
            "crun" => Ok(Runtime::Crun),
            "runsc" | "gvisor" => Ok(Runtime::Runsc),
            other => bail!("unknown runtime {other:?} (expected runc, crun or runsc)"),
        }
    }
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: u64,
    /// Size of each tmpfs mounted at the writable paths (`/tmp`, `/var/tmp`, `/run`).
    pub tmpfs_mb: u64,
    /// Size of the learner's persistent workspace.
    pub workspace_mb: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits { memory_mb: 512, cpus: 1.0, pids: 256, tmpfs_mb: 64, workspace_mb: 512 };
    pub const DEFAULT_CAPS: Limits =
        Limits { memory_mb: 4096, cpus: 2.0, pids: 1024, tmpfs_mb: 512, workspace_mb: 4096 };
}

/// An exercise's warm pool: how many ready sandboxes to keep. The pool follows demand between the
/// two (recent claims per minute); `max: 0` is no pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default)]
    pub min: u32,
    #[serde(default)]
    pub max: u32,
}

impl PoolSpec {
    /// Refuses a pool whose `min` exceeds its `max`, or whose `max` exceeds the operator's cap.
    pub fn check(&self, cap: u32) -> Result<(), super::Invalid> {
        if self.min > self.max {
            return Err(super::Invalid::new(
                "invalid_pool",
                format!("pool.min = {} exceeds pool.max = {}", self.min, self.max),
            ));
        }
        if self.max > cap {
            return Err(super::Invalid::new(
                "pool_exceeds_cap",
                format!("pool.max = {} exceeds the operator's cap {cap} (RUNNER_POOL_MAX_PER_EXERCISE)", self.max),
            ));
        }
        Ok(())
    }

    /// How many ready sandboxes to keep given `recent_claims` in the last minute: as many as
    /// were claimed, between `min` and `max`.
    pub fn target(&self, recent_claims: u32) -> u32 {
        recent_claims.clamp(self.min, self.max.max(self.min))
    }
}

/// How the learner's work is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckSpec {
    /// Argument vector run in the working directory as the sandbox user.
    pub command: Vec<String>,
    /// 30 s when not given.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
    /// supervisord programs that must be RUNNING before the check runs.
    #[serde(default)]
    pub services: Vec<String>,
}

fn default_check_timeout() -> u64 {
    CheckSpec::default().timeout_secs
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec { command: vec!["make".into(), "test".into()], timeout_secs: 30, services: vec![] }
    }
}

/// Everything that decides how one sandbox runs, resolved when its session is created and kept
/// with the session so a recreated container is the same as the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub image: String,
    pub limits: Limits,
    /// Docker network to join; `None` means no network at all.
    pub network: Option<String>,
    /// Where the workspace volume is mounted, and the working directory of the sandbox.
    pub workdir: String,
    /// Extra paths that get a tmpfs (from the exercise manifest).
    #[serde(default)]
    pub writable: Vec<String>,
    /// How the learner's work is checked.
    #[serde(default)]
    pub check: CheckSpec,
    /// Whether the image runs the IDE agent (it is built on the sandbox base image, which labels
    /// it `exercise-runner.base`): sessions of other images have no `ide_url`.
    #[serde(default = "serde_true")]
    pub ide: bool,
}

/// What a session of an image without the IDE agent is told (the API's `ide_unavailable`, the
/// IDE link's page).
pub const NO_IDE: &str = "this exercise's image is not built on the sandbox base image (exercise-runner/base), \
    so it has no IDE agent; build the exercise FROM exercise-runner/base (docs/AUTHORING.md)";

fn serde_true() -> bool {
    true
}

/// The limits of each step of a run (the compile step and each test case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunLimits {
    /// CPU time in milliseconds (`time_limit` past it).
    pub time_ms: u64,
    /// Wall-clock time in milliseconds (`wall_time_limit` past it).
    pub wall_ms: u64,
    /// Memory (swap included) in MiB (`memory_limit` when the kernel OOM-kills).
    pub memory_mb: u64,
    /// Processes and threads at once.
    pub pids: u64,
    /// Bytes of stdout kept (`output_limit` past it); stderr is cut there too.
    pub output_bytes: usize,
}

impl RunLimits {
    pub const DEFAULT: RunLimits =
        RunLimits { time_ms: 2_000, wall_ms: 5_000, memory_mb: 128, pids: 32, output_bytes: 64 * 1024 };
}
