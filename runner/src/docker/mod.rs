//! The runner's only door to the Docker engine: a narrow interface in domain words.
//!
//! Everything else in the runner talks about sandboxes, images and volumes; only this module
//! knows bollard. Every call counts its failures in the `runner_docker_errors_total` metric.

pub mod apps;
pub mod build_cgroup;
pub mod build_network;
pub mod exec_io;
pub mod images;
pub mod policy;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use bollard::{
    container::{
        CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
        StartContainerOptions,
    },
    errors::Error as BollardError,
    exec::{CreateExecOptions, StartExecResults},
    models::ContainerStateStatusEnum,
    volume::{CreateVolumeOptions, ListVolumesOptions, RemoveVolumeOptions},
    Docker,
};
use futures_util::StreamExt;

use crate::{
    domain::{Runtime, SandboxSpec},
    metrics::Metrics,
};
pub use policy::SandboxOwner;

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    instance: String,
    metrics: Arc<Metrics>,
    /// The engine's Unix socket, for the one call bollard cannot make (`docker build` with a
    /// cgroup parent); `None` when `DOCKER_HOST` names a remote engine.
    socket: Option<PathBuf>,
}

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
}

impl ImageInfo {
    /// Labels the runner uses to recognise its own containers must not come from an image.
    pub fn spoofed_labels(&self) -> Vec<&str> {
        [policy::LABEL_SESSION, policy::LABEL_BUILD].into_iter().filter(|l| self.labels.contains_key(*l)).collect()
    }
}

/// A sandbox container as found on the engine.
#[derive(Debug, Clone)]
pub struct FoundSandbox {
    pub id: String,
    pub session_id: Option<String>,
    pub running: bool,
}

/// A running container that is not a session's sandbox (`Engine::running_selftests_and_apps`).
#[derive(Debug, Clone)]
pub enum OtherContainer {
    SelfTest { id: String, build: String, exercise: String },
    App { id: String, app: String, service: String },
}

/// Status of one container.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub running: bool,
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
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
    pub deadline: std::time::Duration,
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
            deadline: std::time::Duration::from_secs(60),
        }
    }
}

/// The result of a command run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
}

/// The engine's Unix socket, as bollard's local defaults pick it.
fn local_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

pub(crate) fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and agrees on an API
    /// version the engine speaks (Debian's docker.io speaks 1.41).
    pub async fn connect(instance: &str, metrics: Arc<Metrics>) -> anyhow::Result<Engine> {
        let docker = Docker::connect_with_local_defaults().context("connecting to the Docker engine")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("the Docker engine is not reachable (is dockerd running? run scripts/host-setup.sh)")?;
        Ok(Engine { docker, instance: instance.to_string(), metrics, socket: local_socket() })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn count<T>(&self, op: &'static str, r: Result<T, BollardError>) -> Result<T, BollardError> {
        if let Err(e) = &r {
            if !is_status(e, 404) && !is_status(e, 409) && !is_status(e, 304) {
                self.metrics.docker_errors.with_label_values(&[op]).inc();
            }
        }
        r
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let r = self.docker.ping().await;
        self.count("ping", r)?;
        Ok(())
    }

    /// Whether a runtime name (runc, runsc) is registered with the engine.
    pub async fn has_runtime(&self, name: &str) -> anyhow::Result<bool> {
        let r = self.docker.info().await;
        let info = self.count("info", r)?;
        Ok(info.runtimes.is_some_and(|r| r.contains_key(name)))
    }

    /// The image, when it exists locally.
    pub async fn image(&self, reference: &str) -> anyhow::Result<Option<ImageInfo>> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => Ok(Some(ImageInfo {
                id: img.id.unwrap_or_default(),
                repo_tags: img.repo_tags.clone().unwrap_or_default(),
                labels: img.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default(),
                volumes: img
                    .config
                    .as_ref()
                    .and_then(|c| c.volumes.as_ref())
                    .map(|v| v.keys().cloned().collect())
                    .unwrap_or_default(),
                on_build: img.config.as_ref().and_then(|c| c.on_build.clone()).unwrap_or_default(),
                working_dir: img.config.and_then(|c| c.working_dir).filter(|w| !w.is_empty()),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_image", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Creates a sandbox under the one hardening policy (`policy::sandbox_container`), by its
    /// deterministic name; a retried or racing create gets the same container. Callers describe
    /// the sandbox in domain terms; the Docker configuration never leaves this module.
    pub async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        owner: &SandboxOwner<'_>,
        workspace: policy::WorkspaceMount<'_>,
        runtime: Runtime,
        user: &str,
    ) -> anyhow::Result<String> {
        let config = policy::sandbox_container(spec, owner, workspace, runtime, user);
        self.create_container(&owner.purpose.container_name(owner.instance), config).await
    }

    /// Creates a managed app's container under the app policy (`policy::app_container`).
    pub async fn create_app_container(&self, name: &str, c: &policy::AppContainer<'_>) -> anyhow::Result<String> {
        self.create_container(name, policy::app_container(c)).await
    }

    /// Creates a container by name; when a container of that name exists already (a retried or
    /// racing create), returns that one instead. Idempotent.
    async fn create_container(&self, name: &str, config: bollard::container::Config<String>) -> anyhow::Result<String> {
        for _ in 0..2 {
            let opts = CreateContainerOptions { name: name.to_string(), platform: None };
            match self.docker.create_container(Some(opts), config.clone()).await {
                Ok(r) => return Ok(r.id),
                Err(e) if is_status(&e, 409) => {
                    let existing = self.docker.inspect_container(name, None::<InspectContainerOptions>).await;
                    let existing = match existing {
                        Ok(c) => c,
                        Err(e) if is_status(&e, 404) => continue, // gone meanwhile: create again
                        Err(e) => return Err(self.count("inspect_container", Err::<(), _>(e)).unwrap_err().into()),
                    };
                    let status = existing.state.as_ref().and_then(|s| s.status);
                    let dying =
                        matches!(status, Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD));
                    if !dying {
                        return Ok(existing.id.unwrap_or_default());
                    }
                    // The name still belongs to a container on its way out: wait, then create.
                    self.remove_container(name).await?;
                }
                Err(e) => {
                    return Err(self.count("create_container", Err::<(), _>(e)).unwrap_err())
                        .with_context(|| format!("creating container {name}"))
                }
            }
        }
        anyhow::bail!("creating container {name}: the name stayed taken by a container being removed")
    }

    /// Starts a container; starting a running one is fine.
    pub async fn start_container(&self, id: &str) -> anyhow::Result<()> {
        match self.docker.start_container(id, None::<StartContainerOptions<String>>).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(self.count("start_container", Err::<(), _>(e)).unwrap_err())
                .with_context(|| format!("starting container {id}")),
        }
    }

    /// Removes a container and its anonymous volumes, running or not; a missing one is fine.
    /// Returns once the container is gone, also when another caller's removal was in progress.
    pub async fn remove_container(&self, id_or_name: &str) -> anyhow::Result<()> {
        let opts = RemoveContainerOptions { force: true, v: true, link: false };
        match self.docker.remove_container(id_or_name, Some(opts)).await {
            Ok(()) => return Ok(()),
            Err(e) if is_status(&e, 404) => return Ok(()),
            // 409: a removal is already in progress; wait for it below.
            Err(e) if is_status(&e, 409) => {}
            Err(e) => {
                return Err(self.count("remove_container", Err::<(), _>(e)).unwrap_err())
                    .with_context(|| format!("removing container {id_or_name}"))
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.container_status(id_or_name).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("container {id_or_name} is still being removed after 30 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn container_status(&self, id_or_name: &str) -> anyhow::Result<Option<ContainerStatus>> {
        match self.docker.inspect_container(id_or_name, None::<InspectContainerOptions>).await {
            Ok(c) => {
                let st = c.state.unwrap_or_default();
                Ok(Some(ContainerStatus {
                    running: st.running.unwrap_or(false),
                    oom_killed: st.oom_killed.unwrap_or(false),
                    exit_code: st.exit_code,
                }))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_container", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// All sandbox containers of this runner instance, running or not.
    pub async fn list_sandboxes(&self) -> anyhow::Result<Vec<FoundSandbox>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", policy::LABEL_MANAGED), format!("{}={}", policy::LABEL_INSTANCE, self.instance)],
        )]);
        let opts = ListContainersOptions { all: true, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let list = self.count("list_containers", r)?;
        Ok(list
            .into_iter()
            // Labels can come from an image; the name cannot. Only a container with the name the
            // runner gives a session's sandbox is one.
            .filter(|c| {
                let session = c.labels.as_ref().and_then(|l| l.get(policy::LABEL_SESSION));
                let names = c.names.as_deref().unwrap_or_default();
                session.is_some_and(|s| {
                    let expected = format!("/{}", policy::sandbox_name(&self.instance, s));
                    names.contains(&expected)
                })
            })
            .map(|c| FoundSandbox {
                id: c.id.unwrap_or_default(),
                session_id: c.labels.and_then(|mut l| l.remove(policy::LABEL_SESSION)),
                running: c.state.as_deref() == Some("running"),
            })
            .collect())
    }

    /// Runs a command (an argument vector, never a shell string built from input) in a running
    /// container, feeding it `stdin`, and collects its output up to `max_output` bytes. Past the
    /// deadline the output is abandoned and `timed_out` set (callers also bound the command
    /// inside the sandbox with `timeout`, so it does not outlive the deadline).
    pub async fn exec(&self, container: &str, req: ExecRequest) -> anyhow::Result<ExecOutput> {
        let opts = CreateExecOptions {
            cmd: Some(req.cmd),
            user: Some(req.user),
            working_dir: req.workdir,
            env: (!req.env.is_empty()).then_some(req.env),
            attach_stdin: Some(req.stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let r = self.docker.create_exec(container, opts).await;
        let exec = self.count("create_exec", r)?;
        let r = self.docker.start_exec(&exec.id, None).await;
        let mut output = Vec::new();
        let mut truncated = false;
        let mut timed_out = false;
        if let StartExecResults::Attached { output: mut stream, mut input } = self.count("start_exec", r)? {
            if let Some(data) = req.stdin {
                use tokio::io::AsyncWriteExt;
                input.write_all(&data).await.context("writing to the command's stdin")?;
                input.shutdown().await.context("closing the command's stdin")?;
            }
            let deadline = tokio::time::Instant::now() + req.deadline;
            loop {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(chunk)) => {
                        let bytes = chunk?.into_bytes();
                        let room = req.max_output.saturating_sub(output.len());
                        if bytes.len() > room {
                            truncated = true;
                        }
                        output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                }
            }
        }
        let r = self.docker.inspect_exec(&exec.id).await;
        let exit_code = if timed_out { None } else { self.count("inspect_exec", r)?.exit_code };
        Ok(ExecOutput {
            exit_code: exit_code.unwrap_or(-1),
            output: String::from_utf8_lossy(&output).into_owned(),
            truncated,
            timed_out,
        })
    }

    /// Starts `cmd` in a running container and returns its stdin/stdout as one byte stream.
    pub async fn exec_stream(&self, container: &str, cmd: Vec<String>, user: &str) -> anyhow::Result<exec_io::ExecIo> {
        let opts = CreateExecOptions {
            cmd: Some(cmd),
            user: Some(user.to_string()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let r = self.docker.create_exec(container, opts).await;
        let exec = self.count("create_exec", r)?;
        let r = self.docker.start_exec(&exec.id, None).await;
        match self.count("start_exec", r)? {
            StartExecResults::Attached { output, input } => Ok(exec_io::ExecIo::new(output, input)),
            StartExecResults::Detached => anyhow::bail!("the exec did not attach"),
        }
    }

    /// Build containers of this instance (self-tests), running or not.
    pub async fn list_selftest_containers(&self) -> anyhow::Result<Vec<String>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", policy::LABEL_INSTANCE, self.instance), policy::LABEL_BUILD.to_string()],
        )]);
        let opts = ListContainersOptions { all: true, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let prefix = format!("/{}", policy::Purpose::SelfTest("").container_name(&self.instance));
        Ok(self
            .count("list_containers", r)?
            .into_iter()
            .filter(|c| c.names.as_deref().unwrap_or_default().iter().any(|n| n.starts_with(&prefix)))
            .filter_map(|c| c.id)
            .collect())
    }

    /// The running containers of this instance that are not sessions' sandboxes — builds'
    /// self-tests and managed apps' containers — in one list call, for their usage figures.
    /// Recognised by their names (labels alone can come from an image).
    pub async fn running_selftests_and_apps(&self) -> anyhow::Result<Vec<OtherContainer>> {
        let filters = HashMap::from([
            ("label".to_string(), vec![format!("{}={}", policy::LABEL_INSTANCE, self.instance)]),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let opts = ListContainersOptions { all: false, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let selftest = format!("/{}", policy::Purpose::SelfTest("").container_name(&self.instance));
        let app = format!("/exercise-runner-{}-app-", self.instance);
        Ok(self
            .count("list_containers", r)?
            .into_iter()
            .filter_map(|c| {
                let names = c.names.as_deref().unwrap_or_default();
                let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default();
                let id = c.id.clone()?;
                if names.iter().any(|n| n.starts_with(&selftest)) {
                    Some(OtherContainer::SelfTest {
                        id,
                        build: label(policy::LABEL_BUILD),
                        exercise: label(policy::LABEL_EXERCISE),
                    })
                } else if names.iter().any(|n| n.starts_with(&app)) {
                    Some(OtherContainer::App {
                        id,
                        app: label(policy::LABEL_APP),
                        service: label(policy::LABEL_SERVICE),
                    })
                } else {
                    None
                }
            })
            .collect())
    }

    // ---- volumes ----

    /// The driver options of a volume, when it exists.
    pub async fn volume_options(&self, name: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(v.options)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_volume", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    pub async fn create_volume(&self, name: &str, driver_opts: HashMap<String, String>) -> anyhow::Result<()> {
        let labels = HashMap::from([
            (policy::LABEL_MANAGED.to_string(), "true".to_string()),
            (policy::LABEL_INSTANCE.to_string(), self.instance.clone()),
            (policy::LABEL_WORKSPACE.to_string(), name.to_string()),
        ]);
        let opts = CreateVolumeOptions { name: name.to_string(), driver: "local".to_string(), driver_opts, labels };
        let r = self.docker.create_volume(opts).await;
        self.count("create_volume", r).with_context(|| format!("creating volume {name}"))?;
        Ok(())
    }

    /// Creates an app's named volume (labelled as the app's) unless it exists.
    pub async fn ensure_app_volume(&self, name: &str, app: &str) -> anyhow::Result<()> {
        if self.volume_options(name).await?.is_some() {
            return Ok(());
        }
        let labels = HashMap::from([
            (policy::LABEL_MANAGED.to_string(), "true".to_string()),
            (policy::LABEL_INSTANCE.to_string(), self.instance.clone()),
            (policy::LABEL_APP.to_string(), app.to_string()),
        ]);
        let opts = CreateVolumeOptions {
            name: name.to_string(),
            driver: "local".to_string(),
            driver_opts: HashMap::new(),
            labels,
        };
        let r = self.docker.create_volume(opts).await;
        self.count("create_volume", r).with_context(|| format!("creating volume {name}"))?;
        Ok(())
    }

    /// Removes a volume. Returns false when a container still uses it (then nothing changes).
    pub async fn remove_volume(&self, name: &str) -> anyhow::Result<bool> {
        match self.docker.remove_volume(name, Some(RemoveVolumeOptions { force: false })).await {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.count("remove_volume", Err::<(), _>(e)).unwrap_err())
                .with_context(|| format!("removing volume {name}")),
        }
    }

    /// Names of the workspace volumes of this instance.
    pub async fn list_workspace_volumes(&self) -> anyhow::Result<Vec<String>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", policy::LABEL_MANAGED),
                format!("{}={}", policy::LABEL_INSTANCE, self.instance),
                // Only workspaces: app volumes hold an app's data and are never "orphans".
                policy::LABEL_WORKSPACE.to_string(),
            ],
        )]);
        let r = self.docker.list_volumes(Some(ListVolumesOptions { filters })).await;
        let list = self.count("list_volumes", r)?;
        Ok(list.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
    }
}
