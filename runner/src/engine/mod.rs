//! The engine seam: what the runner asks of a container engine, in the runner's own words.
//!
//! Sessions, builds, checks, workspaces, the IDE and managed apps hold an [`Engine`] (a shared
//! `dyn ContainerEngine`) and speak only the values defined here. `crate::docker::DockerEngine`
//! is the one implementation: the only code that knows bollard, and where the hardening policy
//! (`docker/policy.rs`) is applied to every container it creates. The seam is a trait object,
//! not a type parameter, so capabilities stay plain structs and the next implementation (several
//! Docker hosts) or a fake for a unit test of pure logic plugs in without touching them.
//! Integration tests run on the real engine (docs/ARCHITECTURE.md, "Engine seam").
//!
//! Every call is idempotent where its doc says so, and every implementation counts its failures
//! in `runner_docker_errors_total` (a missing or conflicting object is an answer, not a failure).

pub mod registry;
mod values;

#[cfg(test)]
pub mod fake;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::domain::{Runtime, SandboxSpec};
pub use values::{
    pool_sandbox_name, sandbox_name, Attached, BuildRequest, ByteSink, CapturedExec, ContainerStatus, ExecIo,
    ExecOutput, ExecRequest, ExecStream, FoundSandbox, ImageInfo, LineSink, ManagedAppContainer,
    ManagedAppContainerInfo, NamedContainer, NetworkFacts, OtherContainer, Purpose, SandboxEvent, SandboxEventKind,
    SandboxEvents, SandboxOwner, WorkspaceMount,
};

/// The engine everyone holds: cheap to clone, shared by every capability.
pub type Engine = Arc<dyn ContainerEngine>;

/// The labels on everything the runner makes on the engine (invariant 2): how it finds its
/// own containers and volumes again, scoped by instance. Images can carry labels too, so the
/// ones that identify a sandbox are refused on exercise images ([`ImageInfo::spoofed_labels`]).
pub const LABEL_MANAGED: &str = "exercise-runner.managed";
pub const LABEL_INSTANCE: &str = "exercise-runner.instance";
pub const LABEL_SESSION: &str = "exercise-runner.session";
pub const LABEL_POOL: &str = "exercise-runner.pool";
/// A reader sandbox (`Purpose::Reader`): the learner's files read without a session.
pub const LABEL_READER: &str = "exercise-runner.reader";
/// A one-shot run's sandbox (`runs`), by run id.
pub const LABEL_RUN: &str = "exercise-runner.run";
/// Who runs a sandbox's health check: `engine`, or the runner's probe with its timing
/// ([`crate::domain::HealthProbe::to_label`]). Always set, so an image cannot say.
pub const LABEL_HEALTH: &str = "exercise-runner.health";
pub const LABEL_LEARNER: &str = "exercise-runner.learner";
pub const LABEL_EXERCISE: &str = "exercise-runner.exercise";
pub const LABEL_WORKSPACE: &str = "exercise-runner.workspace";
pub const LABEL_BUILD: &str = "exercise-runner.build";
pub const LABEL_APP: &str = "exercise-runner.app";
pub const LABEL_SERVICE: &str = "exercise-runner.service";
pub const LABEL_VERSION: &str = "exercise-runner.version";
pub const LABEL_DEPLOY: &str = "exercise-runner.deploy";
/// Set by the sandbox base image (and so inherited by every image built on it): it runs the IDE
/// agent and supervisord.
pub const LABEL_BASE: &str = "exercise-runner.base";

/// The network the runner manages for builds (`RUNNER_BUILD_NETWORK`'s default).
pub const MANAGED_NETWORK: &str = "exercise-runner-build";
/// Its bridge interface: fixed, so the firewall rules can name it before any build runs.
pub const MANAGED_BRIDGE: &str = "er-build0";

/// What the runner needs from a container engine. Object-safe (async methods through
/// `async_trait`, callbacks as `&mut dyn FnMut`), so it is held as [`Engine`].
#[async_trait]
pub trait ContainerEngine: Send + Sync {
    /// The runner instance this engine works for: the names and labels of everything it makes
    /// and lists are scoped by it, so several runners (or test runs) can share one engine.
    fn instance(&self) -> &str;

    async fn ping(&self) -> anyhow::Result<()>;

    /// Whether a runtime name (runc, runsc) is registered with the engine.
    async fn has_runtime(&self, name: &str) -> anyhow::Result<bool>;

    /// The availability (`active`, `pause`, `drain`) of the Swarm node this engine is, when it
    /// is a Swarm manager (a worker cannot read it); `None` outside a Swarm.
    async fn swarm_availability(&self) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    // ---- sandboxes and containers ----

    /// Creates a sandbox under the one hardening policy, by its deterministic name
    /// ([`Purpose::container_name`]); a retried or racing create gets the same container.
    /// Callers describe the sandbox in domain terms; the engine's configuration is its own.
    async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        owner: &SandboxOwner<'_>,
        workspace: WorkspaceMount<'_>,
        runtime: Runtime,
        user: &str,
    ) -> anyhow::Result<String>;

    /// Starts a container; starting a running one is fine.
    async fn start_container(&self, id: &str) -> anyhow::Result<()>;

    /// Removes a container and its anonymous volumes, running or not; a missing one is fine.
    /// Returns once the container is gone, also when another caller's removal was in progress.
    async fn remove_container(&self, id_or_name: &str) -> anyhow::Result<()>;

    /// The container's status; `None` when there is no such container.
    async fn container_status(&self, id_or_name: &str) -> anyhow::Result<Option<ContainerStatus>>;

    /// All sandbox containers of this instance, running or not: sessions' and pools' (only those
    /// named as the runner names them: labels can come from an image, names cannot).
    async fn list_sandboxes(&self) -> anyhow::Result<Vec<FoundSandbox>>;

    /// Build self-test containers of this instance, running or not.
    async fn list_selftest_containers(&self) -> anyhow::Result<Vec<String>>;

    /// The containers of one-shot runs of this instance (running runs' and prepared ones).
    async fn list_run_containers(&self) -> anyhow::Result<Vec<NamedContainer>>;

    /// The running containers of this instance that are not sessions' sandboxes (builds'
    /// self-tests, managed apps' containers), in one call, for their usage figures.
    async fn running_selftests_and_apps(&self) -> anyhow::Result<Vec<OtherContainer>>;

    /// The OOM kills and exits of this instance's sandboxes from `since_nano` on (a moment
    /// already past replays what happened since), then as they happen.
    async fn sandbox_events(&self, since_nano: i64) -> anyhow::Result<SandboxEvents>;

    /// Runs a command (an argument vector, never a shell string built from input) in a running
    /// container, feeding it `stdin`, and collects its output up to `max_output` bytes. Past the
    /// deadline the output is abandoned and `timed_out` set (callers also bound the command
    /// inside the sandbox with `timeout`, so it does not outlive the deadline).
    async fn exec(&self, container: &str, req: ExecRequest) -> anyhow::Result<ExecOutput>;

    /// Runs a command as [`Self::exec`] does, keeping its stdout as bytes (up to `max_output`;
    /// past it the command is abandoned and `truncated` set) apart from its stderr.
    async fn exec_capture(&self, container: &str, req: ExecRequest) -> anyhow::Result<CapturedExec>;

    /// Runs a command as [`Self::exec`] does, its stdin fed from `input` as chunks arrive (the
    /// channel's end closes stdin), each chunk of its output handed to `sink` as it comes
    /// (`true` for stderr); `sink` answering false abandons the command. Answers the exit code
    /// (None when abandoned or past the deadline) and whether the deadline passed.
    async fn exec_interactive(
        &self,
        container: &str,
        req: ExecRequest,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        sink: &mut (dyn for<'b> FnMut(bool, &'b [u8]) -> bool + Send),
    ) -> anyhow::Result<(Option<i64>, bool)>;

    /// Starts `cmd` in a running container and returns its stdin/stdout as one byte stream.
    async fn exec_stream(&self, container: &str, cmd: Vec<String>, user: &str) -> anyhow::Result<ExecIo>;

    /// A stream to the abstract Unix socket `name` inside a running sandbox's own network
    /// namespace, entered from the host (as Kubernetes' CRI port-forward enters a pod's): no
    /// exec, and no file of the sandbox touched. `Ok(None)` when that namespace holds nothing of
    /// the sandbox's on this host (gVisor keeps its network stack inside the sandbox) or the
    /// engine is not on this host; then only [`Self::exec_stream`] reaches it.
    async fn connect_in_netns(&self, container: &str, name: &str) -> anyhow::Result<Option<ExecIo>>;

    // ---- volumes ----

    /// The driver options of a volume, when it exists.
    async fn volume_options(&self, name: &str) -> anyhow::Result<Option<HashMap<String, String>>>;

    /// Creates a workspace volume (`local` driver, labelled as this instance's workspace).
    async fn create_volume(&self, name: &str, driver_opts: HashMap<String, String>) -> anyhow::Result<()>;

    /// Creates an app's named volume (labelled as the app's) unless it exists.
    async fn ensure_app_volume(&self, name: &str, app: &str) -> anyhow::Result<()>;

    /// Removes a volume. Returns false when a container still uses it (then nothing changes).
    async fn remove_volume(&self, name: &str) -> anyhow::Result<bool>;

    /// Names of the workspace volumes of this instance (never an app's volumes).
    async fn list_workspace_volumes(&self) -> anyhow::Result<Vec<String>>;

    // ---- images and builds ----

    /// The image, when it exists on the engine.
    async fn image(&self, reference: &str) -> anyhow::Result<Option<ImageInfo>>;

    /// Builds an image from a tar context, sending each line of output to `log`. Every `RUN`
    /// step runs under the request's memory, CPU and pids limits. Cancelling the token stops
    /// the build.
    async fn build_image(
        &self,
        req: BuildRequest<'_>,
        cancel: &CancellationToken,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()>;

    /// Imports a root filesystem tar as an image (`docker import`), e.g. a debootstrap tree.
    async fn import_rootfs(&self, rootfs_tar: Vec<u8>, repo: &str, tag: &str, changes: &[&str]) -> anyhow::Result<()>;

    /// Removes an image by tag; a missing one, or one a container still uses, is left alone.
    /// Returns whether it was removed.
    async fn remove_image(&self, reference: &str) -> anyhow::Result<bool>;

    /// Pulls `repo:tag`, with credentials (user, password) when given, reporting progress lines.
    async fn pull(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()>;

    /// Names image `source` also `repo:tag` (`docker tag`).
    async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> anyhow::Result<()>;

    /// Pushes `repo:tag` to its registry, with credentials (user, password) when given,
    /// reporting progress lines.
    async fn push(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()>;

    /// The images built for exercises (labelled `exercise-runner.exercise`) on this engine.
    async fn exercise_images(&self) -> anyhow::Result<Vec<ImageInfo>>;

    /// The content-addressed reference of a pulled image (`repo@sha256:...`), to pin deploys to.
    async fn repo_digest(&self, reference: &str, repo: &str) -> anyhow::Result<Option<String>>;

    /// Removes what builds interrupted by a crash left on the host, older than `older_than`
    /// (more than the longest a build may take): the Docker engine's build cgroups. How many.
    fn sweep_stale_builds(&self, older_than: Duration) -> usize;

    // ---- the build network ----

    /// A network by name (`default` is the engine's default bridge, as for `docker build`).
    async fn network(&self, name: &str) -> anyhow::Result<Option<NetworkFacts>>;

    /// Makes the runner's build network ([`MANAGED_NETWORK`] on bridge [`MANAGED_BRIDGE`])
    /// unless it exists; refuses a network of that name that is not the runner's. Idempotent,
    /// also against another runner creating it at the same moment.
    async fn ensure_build_network(&self) -> anyhow::Result<NetworkFacts>;

    // ---- managed apps ----

    /// Creates a managed app's container by name under the app policy; a container of that name
    /// that exists already is the answer. Idempotent.
    async fn create_app_container(&self, name: &str, c: &ManagedAppContainer<'_>) -> anyhow::Result<String>;

    /// Attaches to a created container's stdio (before starting it, so no output is missed).
    async fn attach(&self, id: &str) -> anyhow::Result<Attached>;

    async fn resize_tty(&self, id: &str, cols: u16, rows: u16) -> anyhow::Result<()>;

    /// Waits for a container to exit; its exit code.
    async fn wait_exit(&self, id: &str) -> anyhow::Result<i64>;

    /// Streams a container's output (stdout and stderr) from the start, following it while it
    /// runs, to `sink`, up to `max` bytes.
    async fn follow_logs(&self, id: &str, max: usize, sink: &mut ByteSink<'_>) -> anyhow::Result<()>;

    /// The 127.0.0.1 port a container's `port/tcp` is published on.
    async fn published_port(&self, id: &str, port: u16) -> anyhow::Result<Option<u16>>;

    /// The containers of one app (all its deploys), running or not.
    async fn app_containers(&self, app: &str) -> anyhow::Result<Vec<ManagedAppContainerInfo>>;
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }

    /// The seam stays true: no code outside `docker/` names bollard (comments and unit test
    /// modules may), and only the wiring that builds the engine names `docker` (`app.rs`,
    /// `lib.rs`, `main.rs`).
    #[test]
    fn bollard_stays_behind_the_seam_and_only_the_wiring_names_docker() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let wiring = ["app.rs", "lib.rs", "main.rs"].map(|f| src.join(f));
        let mut leaks = Vec::new();
        for path in files.iter().filter(|p| !p.starts_with(src.join("docker"))) {
            let text = std::fs::read_to_string(path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // The one mention allowed: the log filter that keeps bollard's debug output
                // (Docker API bodies, app secrets) out of the logs.
                let code = code.replace("\"bollard=info\"", "");
                let names_docker = code.contains("crate::docker") || code.contains("docker::");
                if code.contains("bollard") || (names_docker && !wiring.contains(path)) {
                    leaks.push(format!("{}:{}: {}", path.strip_prefix(&src).unwrap().display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "past the engine seam (docs/ARCHITECTURE.md, \"Engine seam\"):\n{}",
            leaks.join("\n")
        );
    }
}
