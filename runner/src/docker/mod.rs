//! The Docker engine behind the engine seam ([`crate::engine::ContainerEngine`]).
//!
//! Everything else in the runner talks about sandboxes, images and volumes through the seam;
//! only this module knows bollard, and no bollard type leaves it. Every container it creates is
//! configured by the hardening policy (`policy.rs`). Every call counts its failures in the
//! `runner_docker_errors_total` metric.

mod build_cgroup;
mod build_network;
mod events;
mod exec_io;
pub mod fleet_node;
mod images;
mod managed_apps;
mod netns;
mod policy;
mod swarm;

pub use policy::RUNSC_THREAD_ALLOWANCE;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

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
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{HealthProbe, Runtime, SandboxSpec},
    engine::{
        self, Attached, BuildRequest, ByteSink, CapturedExec, ContainerEngine, ContainerStatus, Engine, ExecIo,
        ExecOutput, ExecRequest, FoundSandbox, ImageInfo, LineSink, ManagedAppContainer, ManagedAppContainerInfo,
        NetworkFacts, OtherContainer, SandboxOwner, WorkspaceMount,
    },
    metrics::Metrics,
};

/// The runner's health probe a sandbox's label names (none when the engine runs its check).
fn labels_probe(labels: Option<&HashMap<String, String>>) -> Option<HealthProbe> {
    labels.and_then(|l| l.get(engine::LABEL_HEALTH)).and_then(|v| HealthProbe::from_label(v))
}

/// The Docker implementation of the engine seam ([`ContainerEngine`]).
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    instance: String,
    metrics: Arc<Metrics>,
    /// The engine's Unix socket, for the one call bollard cannot make (`docker build` with a
    /// cgroup parent); `None` when `DOCKER_HOST` names a remote engine.
    socket: Option<PathBuf>,
}

/// Connects to the local engine (`DOCKER_HOST` or the default socket): the [`Engine`] every
/// capability is given.
pub async fn connect(instance: &str, metrics: Arc<Metrics>) -> anyhow::Result<Engine> {
    Ok(Arc::new(DockerEngine::connect(instance, metrics).await?))
}

/// The engine's Unix socket, as bollard's local defaults pick it.
fn local_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl DockerEngine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and agrees on an API
    /// version the engine speaks (Debian's docker.io speaks 1.41).
    async fn connect(instance: &str, metrics: Arc<Metrics>) -> anyhow::Result<DockerEngine> {
        let docker = Docker::connect_with_local_defaults().context("connecting to the Docker engine")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("the Docker engine is not reachable (is dockerd running? run scripts/host-setup.sh)")?;
        Ok(DockerEngine { docker, instance: instance.to_string(), metrics, socket: local_socket() })
    }

    fn count<T>(&self, op: &'static str, r: Result<T, BollardError>) -> Result<T, BollardError> {
        if let Err(e) = &r {
            if !is_status(e, 404) && !is_status(e, 409) && !is_status(e, 304) {
                self.metrics.docker_errors.with_label_values(&[op]).inc();
            }
        }
        r
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let r = self.docker.ping().await;
        self.count("ping", r)?;
        Ok(())
    }

    /// Whether a runtime name (runc, runsc) is registered with the engine.
    async fn has_runtime(&self, name: &str) -> anyhow::Result<bool> {
        let r = self.docker.info().await;
        let info = self.count("info", r)?;
        Ok(info.runtimes.is_some_and(|r| r.contains_key(name)))
    }

    /// The image, when it exists locally.
    async fn image(&self, reference: &str) -> anyhow::Result<Option<ImageInfo>> {
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
                agent_health: img.config.as_ref().and_then(|c| c.healthcheck.as_ref()).and_then(|h| {
                    HealthProbe::from_image(
                        h.test.as_deref().unwrap_or_default(),
                        h.interval.unwrap_or(0),
                        h.timeout.unwrap_or(0),
                        h.start_period.unwrap_or(0),
                        h.retries.unwrap_or(0),
                    )
                }),
                working_dir: img.config.and_then(|c| c.working_dir).filter(|w| !w.is_empty()),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_image", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Creates a sandbox under the one hardening policy (`policy::sandbox_container`), by its
    /// deterministic name; a retried or racing create gets the same container. Callers describe
    /// the sandbox in domain terms; the Docker configuration never leaves this module.
    async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        owner: &SandboxOwner<'_>,
        workspace: WorkspaceMount<'_>,
        runtime: Runtime,
        user: &str,
    ) -> anyhow::Result<String> {
        // Under runc and crun the runner reaches the agent in the sandbox's network namespace, so
        // it runs the base image's health check itself, without an exec per probe; under gVisor
        // (or a remote engine) the engine runs it (docs/ARCHITECTURE.md, "Health").
        // A one-shot run's or a reader's sandbox runs no agent and is never probed: its image is
        // not looked up for a probe (one engine call less per container).
        let probed = !matches!(owner.purpose, engine::Purpose::Run(_) | engine::Purpose::Reader(_));
        let probe = if probed && self.socket.is_some() && netns::runtime_shares_host_kernel(runtime.as_str()) {
            self.image(&spec.image).await.ok().flatten().and_then(|i| i.agent_health)
        } else {
            None
        };
        let config = policy::sandbox_container(spec, owner, workspace, runtime, user, probe);
        let id = self.create_container(&owner.purpose.container_name(owner.instance), config).await?;
        // The engine makes a named volume it lacks on the spot, empty, unlabelled and without the
        // workspace's size limit: a workspace removed between its preparation and this create
        // (an erasure, a reset racing a start) must not come back as one. Once the container
        // exists its volume cannot be removed, so a check now is a check for good.
        if let WorkspaceMount::Volume(v) | WorkspaceMount::ReadOnlyVolume(v) = workspace {
            // Made up by this very create: unlabelled, and new. An older unlabelled volume may
            // hold a learner's files (a session that ran on one before this check): kept.
            let just_made = |created: Option<&str>| {
                created
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .is_some_and(|c| chrono::Utc::now().signed_duration_since(c) < chrono::Duration::seconds(60))
            };
            let made_up = match self.docker.inspect_volume(v).await {
                Ok(vol) if vol.labels.contains_key(engine::LABEL_WORKSPACE) => return Ok(id),
                Ok(vol) => Some(just_made(vol.created_at.as_deref())),
                Err(_) => None,
            };
            let _ = self.remove_container(&id).await;
            match made_up {
                Some(true) => {
                    let _ = self.docker.remove_volume(v, None).await;
                    anyhow::bail!("the workspace volume {v} was removed before its sandbox was made; start again")
                }
                Some(false) => anyhow::bail!(
                    "the workspace volume {v} was not made by the runner (no {} label); it is kept for an operator \
                     to look at (docker volume inspect {v})",
                    engine::LABEL_WORKSPACE
                ),
                None => anyhow::bail!("the workspace volume {v} could not be read before its sandbox started"),
            }
        }
        Ok(id)
    }

    /// Creates a managed app's container under the app policy (`policy::app_container`).
    async fn create_app_container(&self, name: &str, c: &ManagedAppContainer<'_>) -> anyhow::Result<String> {
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
    async fn start_container(&self, id: &str) -> anyhow::Result<()> {
        match self.docker.start_container(id, None::<StartContainerOptions<String>>).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(self.count("start_container", Err::<(), _>(e)).unwrap_err())
                .with_context(|| format!("starting container {id}")),
        }
    }

    /// Removes a container and its anonymous volumes, running or not; a missing one is fine.
    /// Returns once the container is gone, also when another caller's removal was in progress.
    async fn remove_container(&self, id_or_name: &str) -> anyhow::Result<()> {
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

    async fn container_status(&self, id_or_name: &str) -> anyhow::Result<Option<ContainerStatus>> {
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
    async fn list_sandboxes(&self) -> anyhow::Result<Vec<FoundSandbox>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", engine::LABEL_MANAGED), format!("{}={}", engine::LABEL_INSTANCE, self.instance)],
        )]);
        let opts = ListContainersOptions { all: true, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let list = self.count("list_containers", r)?;
        Ok(list
            .into_iter()
            // Labels can come from an image; the name cannot. Only a container with the name the
            // runner gives a session's (or a pool's) sandbox is one.
            .filter_map(|c| {
                let names = c.names.as_deref().unwrap_or_default();
                let labels = c.labels.as_ref();
                let named = |label: &str, name: &dyn Fn(&str) -> String| {
                    labels.and_then(|l| l.get(label)).filter(|v| names.contains(&format!("/{}", name(v)))).cloned()
                };
                let session_id = named(engine::LABEL_SESSION, &|s| engine::sandbox_name(&self.instance, s));
                let pool_id = named(engine::LABEL_POOL, &|p| engine::pool_sandbox_name(&self.instance, p));
                (session_id.is_some() || pool_id.is_some()).then_some((c, session_id, pool_id))
            })
            .map(|(c, session_id, pool_id)| FoundSandbox {
                id: c.id.unwrap_or_default(),
                session_id,
                pool_id,
                running: c.state.as_deref() == Some("running"),
                // The list's status line is how the engine reports health without an inspect
                // per container: "Up 3 minutes (unhealthy)".
                unhealthy: c.status.as_deref().is_some_and(|s| s.ends_with("(unhealthy)")),
                probe: labels_probe(c.labels.as_ref()),
            })
            .collect())
    }

    /// Runs a command (an argument vector, never a shell string built from input) in a running
    /// container, feeding it `stdin`, and collects its output up to `max_output` bytes. Past the
    /// deadline the output is abandoned and `timed_out` set (callers also bound the command
    /// inside the sandbox with `timeout`, so it does not outlive the deadline).
    async fn exec(&self, container: &str, req: ExecRequest) -> anyhow::Result<ExecOutput> {
        let max = req.max_output;
        let mut output = Vec::new();
        let mut truncated = false;
        let (exit_code, timed_out) = self
            .exec_read(container, req, &mut |_, bytes| {
                let room = max.saturating_sub(output.len());
                truncated |= bytes.len() > room;
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                true
            })
            .await?;
        Ok(ExecOutput {
            exit_code: exit_code.unwrap_or(-1),
            output: String::from_utf8_lossy(&output).into_owned(),
            truncated,
            timed_out,
        })
    }

    /// Runs a command as [`Self::exec`] does, its stdout kept as bytes apart from its stderr.
    /// Past `max_output` bytes of stdout the command is abandoned (`truncated`): the caller
    /// refuses what is over its cap rather than holding it. Stderr past `max_stderr` is read and
    /// dropped (`stderr_truncated`).
    async fn exec_capture(&self, container: &str, req: ExecRequest) -> anyhow::Result<CapturedExec> {
        let (max, max_stderr, stop_at_stderr_cap) = (req.max_output, req.max_stderr, req.stop_at_stderr_cap);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (mut truncated, mut stderr_truncated) = (false, false);
        let (exit_code, timed_out) = self
            .exec_read(container, req, &mut |is_stderr, bytes| {
                if is_stderr {
                    let room = max_stderr.saturating_sub(stderr.len());
                    stderr_truncated |= bytes.len() > room;
                    stderr.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    return !(stderr_truncated && stop_at_stderr_cap);
                }
                if stdout.len() + bytes.len() > max {
                    let room = max - stdout.len();
                    stdout.extend_from_slice(&bytes[..room]);
                    truncated = true;
                    return false;
                }
                stdout.extend_from_slice(bytes);
                true
            })
            .await?;
        Ok(CapturedExec {
            exit_code: exit_code.unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            truncated,
            stderr_truncated,
            timed_out,
        })
    }

    /// The one reader of every exec: creates and starts `req.cmd`, writes its stdin while its
    /// output is read (a command that answers as it reads cannot block on a full pipe), and hands
    /// each chunk of output to `sink` (`true`: stderr) until the command ends, `sink` returns
    /// false, or the deadline passes. The exit code when the command ended by itself; whether
    /// the deadline passed.
    async fn exec_read(
        &self,
        container: &str,
        req: ExecRequest,
        sink: &mut (dyn FnMut(bool, &[u8]) -> bool + Send),
    ) -> anyhow::Result<(Option<i64>, bool)> {
        self.exec_read_from(container, req, None, sink).await
    }

    /// `exec_read` with stdin from `req.stdin` (written at once) or from `input` (as it comes).
    async fn exec_read_from(
        &self,
        container: &str,
        mut req: ExecRequest,
        input_stream: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        sink: &mut (dyn FnMut(bool, &[u8]) -> bool + Send),
    ) -> anyhow::Result<(Option<i64>, bool)> {
        use bollard::container::LogOutput;
        enum Stdin {
            Bytes(Vec<u8>),
            Stream(tokio::sync::mpsc::Receiver<Vec<u8>>),
        }
        let stdin = match (req.stdin.take(), input_stream) {
            (Some(b), _) => Some(Stdin::Bytes(b)),
            (None, Some(rx)) => Some(Stdin::Stream(rx)),
            (None, None) => None,
        };
        let opts = CreateExecOptions {
            cmd: Some(req.cmd),
            user: Some(req.user),
            working_dir: req.workdir,
            env: (!req.env.is_empty()).then_some(req.env),
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let r = self.docker.create_exec(container, opts).await;
        let exec = self.count("create_exec", r)?;
        let r = self.docker.start_exec(&exec.id, None).await;
        let (mut timed_out, mut stopped) = (false, false);
        if let StartExecResults::Attached { output: mut stream, mut input } = self.count("start_exec", r)? {
            let writer = stdin.map(|stdin| {
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    // A command that ends without reading all of it closes the pipe: not an error.
                    match stdin {
                        Stdin::Bytes(data) => {
                            let _ = input.write_all(&data).await;
                        }
                        Stdin::Stream(mut rx) => {
                            while let Some(chunk) = rx.recv().await {
                                if input.write_all(&chunk).await.is_err() || input.flush().await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = input.shutdown().await;
                })
            });
            let deadline = tokio::time::Instant::now() + req.deadline;
            loop {
                let (is_stderr, message) = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(chunk)) => match chunk? {
                        LogOutput::StdErr { message } => (true, message),
                        LogOutput::StdOut { message } | LogOutput::Console { message } => (false, message),
                        LogOutput::StdIn { .. } => continue,
                    },
                };
                if !sink(is_stderr, &message) {
                    stopped = true;
                    break;
                }
            }
            if let Some(w) = writer {
                w.abort();
            }
        }
        if timed_out || stopped {
            return Ok((None, timed_out));
        }
        let r = self.docker.inspect_exec(&exec.id).await;
        Ok((self.count("inspect_exec", r)?.exit_code, false))
    }

    /// Starts `cmd` in a running container and returns its stdin/stdout as one byte stream.
    async fn exec_stream(&self, container: &str, cmd: Vec<String>, user: &str) -> anyhow::Result<ExecIo> {
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
            StartExecResults::Attached { output, input } => Ok(Box::new(exec_io::DockerExecIo::new(output, input))),
            StartExecResults::Detached => anyhow::bail!("the exec did not attach"),
        }
    }

    async fn connect_in_netns(&self, container: &str, name: &str) -> anyhow::Result<Option<ExecIo>> {
        // A remote engine's namespace files are on its host, not this one.
        if self.socket.is_none() {
            return Ok(None);
        }
        let r = self.docker.inspect_container(container, None::<InspectContainerOptions>).await;
        let c = self.count("inspect_container", r)?;
        let runtime = c.host_config.and_then(|h| h.runtime).unwrap_or_default();
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running || !netns::runtime_shares_host_kernel(&runtime) {
            return Ok(None);
        }
        let pid = c.state.as_ref().and_then(|s| s.pid).filter(|p| *p > 0);
        let (Some(pid), Some(id)) = (pid, c.id) else { return Ok(None) };
        Ok(Some(Box::new(netns::connect(pid as u32, &id, name).await?)))
    }

    /// Build containers of this instance (self-tests), running or not.
    async fn list_selftest_containers(&self) -> anyhow::Result<Vec<String>> {
        let found = self.list_named(engine::LABEL_BUILD, engine::Purpose::SelfTest("")).await?;
        Ok(found.into_iter().map(|c| c.id).collect())
    }

    async fn list_run_containers(&self) -> anyhow::Result<Vec<engine::NamedContainer>> {
        self.list_named(engine::LABEL_RUN, engine::Purpose::Run("")).await
    }

    /// This instance's containers carrying `label` and named as `purpose`'s are (labels alone
    /// can come from an image; names cannot): their ids, each with the rest of its name after
    /// the purpose's prefix (the build's or run's id) and its creation time.
    async fn list_named(
        &self,
        label: &str,
        purpose: engine::Purpose<'_>,
    ) -> anyhow::Result<Vec<engine::NamedContainer>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", engine::LABEL_INSTANCE, self.instance), label.to_string()],
        )]);
        let opts = ListContainersOptions { all: true, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let prefix = format!("/{}", purpose.container_name(&self.instance));
        Ok(self
            .count("list_containers", r)?
            .into_iter()
            .filter_map(|c| {
                let rest = c.names.as_deref().unwrap_or_default().iter().find_map(|n| n.strip_prefix(&prefix))?;
                Some(engine::NamedContainer { suffix: rest.to_string(), created: c.created.unwrap_or(0), id: c.id? })
            })
            .collect())
    }

    /// The running containers of this instance that are not sessions' sandboxes — builds'
    /// self-tests and managed apps' containers — in one list call, for their usage figures.
    /// Recognised by their names (labels alone can come from an image).
    async fn running_selftests_and_apps(&self) -> anyhow::Result<Vec<OtherContainer>> {
        let filters = HashMap::from([
            ("label".to_string(), vec![format!("{}={}", engine::LABEL_INSTANCE, self.instance)]),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let opts = ListContainersOptions { all: false, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let selftest = format!("/{}", engine::Purpose::SelfTest("").container_name(&self.instance));
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
                        build: label(engine::LABEL_BUILD),
                        exercise: label(engine::LABEL_EXERCISE),
                    })
                } else if names.iter().any(|n| n.starts_with(&app)) {
                    Some(OtherContainer::App {
                        id,
                        app: label(engine::LABEL_APP),
                        service: label(engine::LABEL_SERVICE),
                    })
                } else {
                    None
                }
            })
            .collect())
    }

    // ---- volumes ----

    /// The driver options of a volume, when it exists.
    async fn volume_options(&self, name: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(v.options)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_volume", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    async fn create_volume(&self, name: &str, driver_opts: HashMap<String, String>) -> anyhow::Result<()> {
        let labels = HashMap::from([
            (engine::LABEL_MANAGED.to_string(), "true".to_string()),
            (engine::LABEL_INSTANCE.to_string(), self.instance.clone()),
            (engine::LABEL_WORKSPACE.to_string(), name.to_string()),
        ]);
        let opts = CreateVolumeOptions { name: name.to_string(), driver: "local".to_string(), driver_opts, labels };
        let r = self.docker.create_volume(opts).await;
        self.count("create_volume", r).with_context(|| format!("creating volume {name}"))?;
        Ok(())
    }

    /// Creates an app's named volume (labelled as the app's) unless it exists.
    async fn ensure_app_volume(&self, name: &str, app: &str) -> anyhow::Result<()> {
        if self.volume_options(name).await?.is_some() {
            return Ok(());
        }
        let labels = HashMap::from([
            (engine::LABEL_MANAGED.to_string(), "true".to_string()),
            (engine::LABEL_INSTANCE.to_string(), self.instance.clone()),
            (engine::LABEL_APP.to_string(), app.to_string()),
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
    async fn remove_volume(&self, name: &str) -> anyhow::Result<bool> {
        match self.docker.remove_volume(name, Some(RemoveVolumeOptions { force: false })).await {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.count("remove_volume", Err::<(), _>(e)).unwrap_err())
                .with_context(|| format!("removing volume {name}")),
        }
    }

    /// Names of the workspace volumes of this instance.
    async fn list_workspace_volumes(&self) -> anyhow::Result<Vec<String>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", engine::LABEL_MANAGED),
                format!("{}={}", engine::LABEL_INSTANCE, self.instance),
                // Only workspaces: app volumes hold an app's data and are never "orphans".
                engine::LABEL_WORKSPACE.to_string(),
            ],
        )]);
        let r = self.docker.list_volumes(Some(ListVolumesOptions { filters })).await;
        let list = self.count("list_volumes", r)?;
        Ok(list.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
    }
}

/// The seam, method by method: each is the inherent call of the same name (in this file,
/// `apps.rs`, `images.rs` or `build_network.rs`, by subject).
#[async_trait::async_trait]
impl ContainerEngine for DockerEngine {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn ping(&self) -> anyhow::Result<()> {
        DockerEngine::ping(self).await
    }

    async fn has_runtime(&self, name: &str) -> anyhow::Result<bool> {
        DockerEngine::has_runtime(self, name).await
    }

    async fn swarm_availability(&self) -> anyhow::Result<Option<String>> {
        DockerEngine::swarm_node_availability(self).await
    }

    async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        owner: &SandboxOwner<'_>,
        workspace: WorkspaceMount<'_>,
        runtime: Runtime,
        user: &str,
    ) -> anyhow::Result<String> {
        DockerEngine::create_sandbox(self, spec, owner, workspace, runtime, user).await
    }

    async fn start_container(&self, id: &str) -> anyhow::Result<()> {
        DockerEngine::start_container(self, id).await
    }

    async fn remove_container(&self, id_or_name: &str) -> anyhow::Result<()> {
        DockerEngine::remove_container(self, id_or_name).await
    }

    async fn container_status(&self, id_or_name: &str) -> anyhow::Result<Option<ContainerStatus>> {
        DockerEngine::container_status(self, id_or_name).await
    }

    async fn list_sandboxes(&self) -> anyhow::Result<Vec<FoundSandbox>> {
        DockerEngine::list_sandboxes(self).await
    }

    async fn list_selftest_containers(&self) -> anyhow::Result<Vec<String>> {
        DockerEngine::list_selftest_containers(self).await
    }

    async fn list_run_containers(&self) -> anyhow::Result<Vec<engine::NamedContainer>> {
        DockerEngine::list_run_containers(self).await
    }

    async fn running_selftests_and_apps(&self) -> anyhow::Result<Vec<engine::OtherContainer>> {
        DockerEngine::running_selftests_and_apps(self).await
    }

    async fn sandbox_events(&self, since_nano: i64) -> anyhow::Result<engine::SandboxEvents> {
        Ok(DockerEngine::sandbox_events(self, since_nano))
    }

    async fn exec(&self, container: &str, req: ExecRequest) -> anyhow::Result<ExecOutput> {
        DockerEngine::exec(self, container, req).await
    }

    async fn exec_capture(&self, container: &str, req: ExecRequest) -> anyhow::Result<CapturedExec> {
        DockerEngine::exec_capture(self, container, req).await
    }

    async fn exec_interactive(
        &self,
        container: &str,
        req: ExecRequest,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        sink: &mut (dyn for<'b> FnMut(bool, &'b [u8]) -> bool + Send),
    ) -> anyhow::Result<(Option<i64>, bool)> {
        self.exec_read_from(container, req, Some(input), sink).await
    }

    async fn exec_stream(&self, container: &str, cmd: Vec<String>, user: &str) -> anyhow::Result<ExecIo> {
        DockerEngine::exec_stream(self, container, cmd, user).await
    }

    async fn connect_in_netns(&self, container: &str, name: &str) -> anyhow::Result<Option<ExecIo>> {
        DockerEngine::connect_in_netns(self, container, name).await
    }

    async fn volume_options(&self, name: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
        DockerEngine::volume_options(self, name).await
    }

    async fn create_volume(&self, name: &str, driver_opts: HashMap<String, String>) -> anyhow::Result<()> {
        DockerEngine::create_volume(self, name, driver_opts).await
    }

    async fn ensure_app_volume(&self, name: &str, app: &str) -> anyhow::Result<()> {
        DockerEngine::ensure_app_volume(self, name, app).await
    }

    async fn remove_volume(&self, name: &str) -> anyhow::Result<bool> {
        DockerEngine::remove_volume(self, name).await
    }

    async fn list_workspace_volumes(&self) -> anyhow::Result<Vec<String>> {
        DockerEngine::list_workspace_volumes(self).await
    }

    async fn image(&self, reference: &str) -> anyhow::Result<Option<ImageInfo>> {
        DockerEngine::image(self, reference).await
    }

    async fn build_image(
        &self,
        req: BuildRequest<'_>,
        cancel: &CancellationToken,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        DockerEngine::build_image(self, req, cancel, log).await
    }

    async fn import_rootfs(&self, rootfs_tar: Vec<u8>, repo: &str, tag: &str, changes: &[&str]) -> anyhow::Result<()> {
        DockerEngine::import_rootfs(self, rootfs_tar, repo, tag, changes).await
    }

    async fn remove_image(&self, reference: &str) -> anyhow::Result<bool> {
        DockerEngine::remove_image(self, reference).await
    }

    async fn pull(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        DockerEngine::pull(self, repo, tag, auth, log).await
    }

    async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> anyhow::Result<()> {
        DockerEngine::tag_image(self, source, repo, tag).await
    }

    async fn push(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        DockerEngine::push(self, repo, tag, auth, log).await
    }

    async fn exercise_images(&self) -> anyhow::Result<Vec<ImageInfo>> {
        DockerEngine::exercise_images(self).await
    }

    async fn repo_digest(&self, reference: &str, repo: &str) -> anyhow::Result<Option<String>> {
        DockerEngine::repo_digest(self, reference, repo).await
    }

    fn sweep_stale_builds(&self, older_than: Duration) -> usize {
        build_cgroup::sweep_stale(older_than)
    }

    async fn network(&self, name: &str) -> anyhow::Result<Option<NetworkFacts>> {
        DockerEngine::network(self, name).await
    }

    async fn ensure_build_network(&self) -> anyhow::Result<NetworkFacts> {
        DockerEngine::ensure_build_network(self).await
    }

    async fn create_app_container(&self, name: &str, c: &ManagedAppContainer<'_>) -> anyhow::Result<String> {
        DockerEngine::create_app_container(self, name, c).await
    }

    async fn attach(&self, id: &str) -> anyhow::Result<Attached> {
        DockerEngine::attach(self, id).await
    }

    async fn resize_tty(&self, id: &str, cols: u16, rows: u16) -> anyhow::Result<()> {
        DockerEngine::resize_tty(self, id, cols, rows).await
    }

    async fn wait_exit(&self, id: &str) -> anyhow::Result<i64> {
        DockerEngine::wait_exit(self, id).await
    }

    async fn follow_logs(&self, id: &str, max: usize, sink: &mut ByteSink<'_>) -> anyhow::Result<()> {
        DockerEngine::follow_logs(self, id, max, sink).await
    }

    async fn published_port(&self, id: &str, port: u16) -> anyhow::Result<Option<u16>> {
        DockerEngine::published_port(self, id, port).await
    }

    async fn app_containers(&self, app: &str) -> anyhow::Result<Vec<ManagedAppContainerInfo>> {
        DockerEngine::app_containers(self, app).await
    }
}
