//! The values that cross the engine seam: what callers describe (a sandbox's owner, an app
//! container, a command, a build) and what the engine answers (an image, a container's status,
//! a command's output, a byte stream). Plain data and standard stream traits; no client
//! library's types.

use std::{collections::HashMap, pin::Pin, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{LABEL_BUILD, LABEL_POOL, LABEL_READER, LABEL_RUN, LABEL_SESSION};

// ---- what callers describe ----

/// What is mounted at the working directory.
#[derive(Debug, Clone, Copy)]
pub enum WorkspaceMount<'a> {
    /// A learner's persistent workspace volume.
    Volume(&'a str),
    /// The same volume, read-only: a reader sandbox's (the learner's files read without a session).
    ReadOnlyVolume(&'a str),
    /// A throwaway tmpfs of `Limits::workspace_mb` (self-tests of builds).
    Tmpfs,
}

/// Who a sandbox belongs to; becomes its labels and name.
#[derive(Debug, Clone)]
pub struct SandboxOwner<'a> {
    pub instance: &'a str,
    pub purpose: Purpose<'a>,
    pub learner: &'a str,
    pub exercise: &'a str,
}

/// Why a sandbox exists: a learner's session, a warm pool's ready sandbox (whose learner is not
/// known yet), the self-test of a build, or a short-lived reader of a learner's workspace (their
/// files listed or archived without a session: it runs nothing of the image's, only the
/// runner's `tar`, and goes away by itself).
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    Session(&'a str),
    Pool(&'a str),
    SelfTest(&'a str),
    Reader(&'a str),
    /// A one-shot run (`runs`): like a reader, it runs nothing of the image's but `sleep`.
    Run(&'a str),
}

impl Purpose<'_> {
    /// The container name. Deterministic, so a create racing another create of the same
    /// sandbox meets the engine's name conflict instead of making a second container.
    pub fn container_name(&self, instance: &str) -> String {
        match self {
            Purpose::Session(id) => sandbox_name(instance, id),
            Purpose::Pool(id) => pool_sandbox_name(instance, id),
            Purpose::SelfTest(build) => format!("exercise-runner-{instance}-selftest-{build}"),
            Purpose::Reader(id) => format!("exercise-runner-{instance}-reader-{id}"),
            Purpose::Run(id) => format!("exercise-runner-{instance}-run-{id}"),
        }
    }
}

/// The container name of a session's sandbox.
pub fn sandbox_name(instance: &str, session_id: &str) -> String {
    format!("exercise-runner-{instance}-{session_id}")
}

/// The container name of a pooled sandbox. It keeps this name after a learner claims it: labels
/// and names cannot change, so the session that owns it says so in the database
/// (`sessions.container_id`).
pub fn pool_sandbox_name(instance: &str, pool_id: &str) -> String {
    format!("exercise-runner-{instance}-pool-{pool_id}")
}

/// One container of a managed app: a service replica, a release (migration) or a one-off command.
pub struct ManagedAppContainer<'a> {
    pub instance: &'a str,
    pub app: &'a str,
    /// The service, or `release` / `run` for one-off containers.
    pub role: &'a str,
    pub version: &'a str,
    pub deploy: &'a str,
    /// The pinned image (`repo@sha256:...`).
    pub image: &'a str,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub port: Option<u16>,
    pub writable: &'a [String],
    /// (Docker volume name, mount path).
    pub volumes: Vec<(String, String)>,
    pub memory_mb: u64,
    pub network: &'a str,
    pub tty: bool,
}

/// A command to run inside a container.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub user: String,
    pub workdir: Option<String>,
    pub env: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    pub max_output: usize,
    /// Stderr kept by `exec_capture` (the rest is read and dropped).
    pub max_stderr: usize,
    /// `exec_capture` abandons the command past `max_stderr` too, as past `max_output` (a
    /// one-shot run's output limit), instead of reading and dropping the rest.
    pub stop_at_stderr_cap: bool,
    pub deadline: Duration,
}

impl ExecRequest {
    pub fn new(cmd: Vec<String>, user: &str) -> Self {
        ExecRequest {
            cmd,
            user: user.to_string(),
            workdir: None,
            env: vec![],
            stdin: None,
            max_output: 64 * 1024,
            max_stderr: 8 * 1024,
            stop_at_stderr_cap: false,
            deadline: Duration::from_secs(60),
        }
    }
}

/// Limits and labels of one `docker build`.
#[derive(Clone)]
pub struct BuildRequest<'a> {
    pub context_tar: Vec<u8>,
    pub tag: &'a str,
    pub labels: HashMap<String, String>,
    pub memory_mb: u64,
    pub cpus: f64,
    /// Most processes all `RUN` steps together may have at once; 0 for no limit.
    pub pids_limit: u64,
    /// Network of `RUN` steps.
    pub network: String,
}

// ---- what the engine answers ----

/// What the runner needs to know about an image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub working_dir: Option<String>,
    pub labels: HashMap<String, String>,
    /// `VOLUME`s the image declares: Docker would give each an anonymous volume with no size
    /// limit, on the host's disk.
    pub volumes: Vec<String>,
    /// `ONBUILD` triggers: instructions the engine runs when a build starts `FROM` this image.
    pub on_build: Vec<String>,
    /// The image's `repository:tag` names (as the engine lists them, `busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Its `HEALTHCHECK` when it is the base image's, which the runner can run itself.
    pub agent_health: Option<crate::domain::HealthProbe>,
}

impl ImageInfo {
    /// Labels the runner uses to recognise its own containers must not come from an image.
    pub fn spoofed_labels(&self) -> Vec<&str> {
        [LABEL_SESSION, LABEL_BUILD, LABEL_POOL, LABEL_READER, LABEL_RUN]
            .into_iter()
            .filter(|l| self.labels.contains_key(*l))
            .collect()
    }
}

/// A sandbox container as found on the engine.
#[derive(Debug, Clone)]
pub struct FoundSandbox {
    pub id: String,
    /// The session it was made for (a session's sandbox).
    pub session_id: Option<String>,
    /// The pooled sandbox it was made as (a pool's; claimed or not, the database says).
    pub pool_id: Option<String>,
    pub running: bool,
    /// Its image's health check has failed its retries (images on the base image have one).
    pub unhealthy: bool,
    /// The health check the runner runs for it instead of the engine (from its label).
    pub probe: Option<crate::domain::HealthProbe>,
}

/// Status of one container.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub running: bool,
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
}

/// The result of a command run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
}

/// A command's output as bytes, its stdout kept apart from its stderr (an archive streamed out
/// of a sandbox): stdout up to the request's `max_output`, stderr up to its `max_stderr`.
#[derive(Debug, Clone)]
pub struct CapturedExec {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Stdout went past `max_output` (the rest was not kept).
    pub truncated: bool,
    /// Stderr went past `max_stderr`.
    pub stderr_truncated: bool,
    pub timed_out: bool,
}

/// An app container as found on the engine.
#[derive(Debug, Clone)]
pub struct ManagedAppContainerInfo {
    pub id: String,
    pub service: String,
    pub version: String,
    pub deploy: String,
    pub running: bool,
}

/// A network on the engine, as the build isolation needs to know it.
#[derive(Debug, Clone)]
pub struct NetworkFacts {
    pub name: String,
    pub driver: String,
    /// The host interface of a bridge network.
    pub bridge: Option<String>,
    pub managed: bool,
}

/// A container's attached stdio (a TTY console): its output as bytes, its input as a writer.
pub struct Attached {
    pub output: Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// A process in a container as one byte stream: writes go to its stdin, reads come from its
/// stdout (its stderr is the engine's to log). How the web-ide-proxy reaches the agent in a
/// sandbox whose network is off.
pub trait ExecStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ExecStream for T {}

/// The stream [`super::ContainerEngine::exec_stream`] and [`super::ContainerEngine::connect_in_netns`] answer.
pub type ExecIo = Box<dyn ExecStream>;

/// Where a call sends its progress as it comes, a line at a time (build and pull output).
/// A named type rather than `dyn FnMut(&str)` spelled out in each signature: `async_trait`
/// would give that `&str` the method's lifetime instead of any lifetime.
pub type LineSink<'a> = dyn FnMut(&str) + Send + 'a;

/// Where a call sends a container's output as it comes, in chunks of bytes.
pub type ByteSink<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// Something the engine reports about one of this instance's sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    pub container: String,
    /// Its session (the label), for session sandboxes; `None` for self-tests and pooled sandboxes.
    pub session: Option<String>,
    /// Its pooled sandbox (the label), for a pool's sandboxes, claimed or not.
    pub pool: Option<String>,
    pub kind: SandboxEventKind,
    /// When the engine saw it, in nanoseconds since the epoch: where a follower resumes after
    /// losing the stream, skipping what it has seen.
    pub time_nano: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxEventKind {
    /// The kernel killed a process of the sandbox at its memory limit.
    Oom,
    /// The sandbox's main process ended (a stop, a crash, an OOM kill of PID 1).
    Died { exit_code: Option<i64> },
}

/// The engine's events, as they come; ends (or fails) when the engine goes away.
pub type SandboxEvents = Pin<Box<dyn Stream<Item = anyhow::Result<SandboxEvent>> + Send>>;

/// A container found by its purpose's name (a self-test's, a one-shot run's).
#[derive(Debug, Clone)]
pub struct NamedContainer {
    pub id: String,
    /// Its name after the purpose's prefix (`exercise-runner-<instance>-run-`): the build's or
    /// run's id.
    pub suffix: String,
    /// When the engine made it (Unix seconds).
    pub created: i64,
}

/// A running container that is not a session's sandbox (`ContainerEngine::running_selftests_and_apps`).
#[derive(Debug, Clone)]
pub enum OtherContainer {
    SelfTest { id: String, build: String, exercise: String },
    App { id: String, app: String, service: String },
}
