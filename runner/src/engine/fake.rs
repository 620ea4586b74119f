//! A [`ContainerEngine`] without Docker, for fast unit tests of logic that takes an
//! [`super::Engine`]; what touches real containers is tested on the real engine (`tests/`).
//! It runs nothing: `exec` is answered by the test's script and every command is recorded; any
//! other call fails, saying that the fake does not do it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{
    Attached, BuildRequest, ByteSink, ContainerEngine, ContainerStatus, ExecIo, ExecOutput, ExecRequest, FoundSandbox,
    ImageInfo, LineSink, ManagedAppContainer, ManagedAppContainerInfo, NetworkFacts, SandboxOwner, WorkspaceMount,
};
use crate::domain::{Runtime, SandboxSpec};

type Script = Box<dyn FnMut(&ExecRequest) -> ExecOutput + Send>;

/// What one `sandbox_events` call answers: a stream of these items (which then ends), or an error.
pub type EventsAnswer = anyhow::Result<Vec<anyhow::Result<super::SandboxEvent>>>;

pub struct FakeEngine {
    script: Mutex<Script>,
    execs: Mutex<Vec<ExecRequest>>,
    /// Answers of successive `sandbox_events` calls, with the `since` each was asked for.
    events: Mutex<std::collections::VecDeque<EventsAnswer>>,
    events_since: Mutex<Vec<i64>>,
}

impl FakeEngine {
    /// An engine whose `exec` answers what `script` says for each command.
    pub fn answering(script: impl FnMut(&ExecRequest) -> ExecOutput + Send + 'static) -> Arc<FakeEngine> {
        Arc::new(FakeEngine {
            script: Mutex::new(Box::new(script)),
            execs: Mutex::new(Vec::new()),
            events: Mutex::default(),
            events_since: Mutex::default(),
        })
    }

    /// An engine whose successive `sandbox_events` calls answer `answers` in turn (then fail).
    pub fn with_events(answers: Vec<EventsAnswer>) -> Arc<FakeEngine> {
        let fake = FakeEngine::answering(|_| exited(0, ""));
        *fake.events.lock().expect("lock") = answers.into();
        fake
    }

    /// The `since` of every `sandbox_events` call so far.
    pub fn events_since(&self) -> Vec<i64> {
        self.events_since.lock().expect("lock").clone()
    }

    /// The commands run so far, in order.
    pub fn execs(&self) -> Vec<ExecRequest> {
        self.execs.lock().expect("lock").clone()
    }
}

/// A command that ran to its end with `exit_code`, printing `output`.
pub fn exited(exit_code: i64, output: &str) -> ExecOutput {
    ExecOutput { exit_code, output: output.to_string(), truncated: false, timed_out: false }
}

fn absent(call: &str) -> anyhow::Error {
    anyhow!("the fake engine does not do {call}")
}

#[async_trait]
impl ContainerEngine for FakeEngine {
    fn instance(&self) -> &str {
        "fake"
    }

    async fn ping(&self) -> anyhow::Result<()> {
        Err(absent("ping"))
    }

    async fn has_runtime(&self, _: &str) -> anyhow::Result<bool> {
        Err(absent("has_runtime"))
    }

    async fn create_sandbox(
        &self,
        _: &SandboxSpec,
        _: &SandboxOwner<'_>,
        _: WorkspaceMount<'_>,
        _: Runtime,
        _: &str,
    ) -> anyhow::Result<String> {
        Err(absent("create_sandbox"))
    }

    async fn start_container(&self, _: &str) -> anyhow::Result<()> {
        Err(absent("start_container"))
    }

    async fn remove_container(&self, _: &str) -> anyhow::Result<()> {
        Err(absent("remove_container"))
    }

    async fn container_status(&self, _: &str) -> anyhow::Result<Option<ContainerStatus>> {
        Err(absent("container_status"))
    }

    async fn list_sandboxes(&self) -> anyhow::Result<Vec<FoundSandbox>> {
        Err(absent("list_sandboxes"))
    }

    async fn running_selftests_and_apps(&self) -> anyhow::Result<Vec<super::OtherContainer>> {
        Err(absent("running_selftests_and_apps"))
    }

    async fn sandbox_events(&self, since: i64) -> anyhow::Result<super::SandboxEvents> {
        self.events_since.lock().expect("lock").push(since);
        let next = self.events.lock().expect("lock").pop_front();
        match next {
            Some(Ok(items)) => Ok(Box::pin(futures_util::stream::iter(items))),
            Some(Err(e)) => Err(e),
            None => Err(absent("more sandbox_events")),
        }
    }

    async fn list_selftest_containers(&self) -> anyhow::Result<Vec<String>> {
        Err(absent("list_selftest_containers"))
    }

    async fn list_run_containers(&self) -> anyhow::Result<Vec<super::NamedContainer>> {
        Err(absent("list_run_containers"))
    }

    async fn exec(&self, _container: &str, req: ExecRequest) -> anyhow::Result<ExecOutput> {
        let out = (self.script.lock().expect("lock"))(&req);
        self.execs.lock().expect("lock").push(req);
        Ok(out)
    }

    async fn exec_capture(&self, _: &str, _: ExecRequest) -> anyhow::Result<super::CapturedExec> {
        Err(absent("exec_capture"))
    }

    async fn exec_interactive(
        &self,
        _: &str,
        _: ExecRequest,
        _: tokio::sync::mpsc::Receiver<Vec<u8>>,
        _: &mut (dyn for<'b> FnMut(bool, &'b [u8]) -> bool + Send),
    ) -> anyhow::Result<(Option<i64>, bool)> {
        Err(absent("exec_interactive"))
    }

    async fn exec_stream(&self, _: &str, _: Vec<String>, _: &str) -> anyhow::Result<ExecIo> {
        Err(absent("exec_stream"))
    }

    async fn connect_in_netns(&self, _: &str, _: &str) -> anyhow::Result<Option<ExecIo>> {
        Ok(None)
    }

    async fn volume_options(&self, _: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
        Err(absent("volume_options"))
    }

    async fn create_volume(&self, _: &str, _: HashMap<String, String>) -> anyhow::Result<()> {
        Err(absent("create_volume"))
    }

    async fn ensure_app_volume(&self, _: &str, _: &str) -> anyhow::Result<()> {
        Err(absent("ensure_app_volume"))
    }

    async fn remove_volume(&self, _: &str) -> anyhow::Result<bool> {
        Err(absent("remove_volume"))
    }

    async fn list_workspace_volumes(&self) -> anyhow::Result<Vec<String>> {
        Err(absent("list_workspace_volumes"))
    }

    async fn image(&self, _: &str) -> anyhow::Result<Option<ImageInfo>> {
        Err(absent("image"))
    }

    async fn build_image(
        &self,
        _: BuildRequest<'_>,
        _: &CancellationToken,
        _: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        Err(absent("build_image"))
    }

    async fn import_rootfs(&self, _: Vec<u8>, _: &str, _: &str, _: &[&str]) -> anyhow::Result<()> {
        Err(absent("import_rootfs"))
    }

    async fn remove_image(&self, _: &str) -> anyhow::Result<bool> {
        Err(absent("remove_image"))
    }

    async fn pull(&self, _: &str, _: &str, _: Option<(&str, &str)>, _: &mut LineSink<'_>) -> anyhow::Result<()> {
        Err(absent("pull"))
    }

    async fn tag_image(&self, _: &str, _: &str, _: &str) -> anyhow::Result<()> {
        Err(absent("tag_image"))
    }

    async fn push(&self, _: &str, _: &str, _: Option<(&str, &str)>, _: &mut LineSink<'_>) -> anyhow::Result<()> {
        Err(absent("push"))
    }

    async fn exercise_images(&self) -> anyhow::Result<Vec<ImageInfo>> {
        Err(absent("exercise_images"))
    }

    async fn repo_digest(&self, _: &str, _: &str) -> anyhow::Result<Option<String>> {
        Err(absent("repo_digest"))
    }

    fn sweep_stale_builds(&self, _: Duration) -> usize {
        0
    }

    async fn network(&self, _: &str) -> anyhow::Result<Option<NetworkFacts>> {
        Err(absent("network"))
    }

    async fn ensure_build_network(&self) -> anyhow::Result<NetworkFacts> {
        Err(absent("ensure_build_network"))
    }

    async fn create_app_container(&self, _: &str, _: &ManagedAppContainer<'_>) -> anyhow::Result<String> {
        Err(absent("create_app_container"))
    }

    async fn attach(&self, _: &str) -> anyhow::Result<Attached> {
        Err(absent("attach"))
    }

    async fn resize_tty(&self, _: &str, _: u16, _: u16) -> anyhow::Result<()> {
        Err(absent("resize_tty"))
    }

    async fn wait_exit(&self, _: &str) -> anyhow::Result<i64> {
        Err(absent("wait_exit"))
    }

    async fn follow_logs(&self, _: &str, _: usize, _: &mut ByteSink<'_>) -> anyhow::Result<()> {
        Err(absent("follow_logs"))
    }

    async fn published_port(&self, _: &str, _: u16) -> anyhow::Result<Option<u16>> {
        Err(absent("published_port"))
    }

    async fn app_containers(&self, _: &str) -> anyhow::Result<Vec<ManagedAppContainerInfo>> {
        Err(absent("app_containers"))
    }
}
