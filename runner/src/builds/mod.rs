//! Exercise builds: a repository in, a proven image version out ("continuous delivery for
//! exercises").
//!
//! `queued → building → testing → succeeded | failed | cancelled`. A build reads the repository
//! (an uploaded archive stored at submit time, or a git fetch), builds the image with the engine,
//! then proves it in a real sandbox with the exercise's limits: the check must fail on the
//! learner's starting files and pass with the reference solution. The version is the digest of
//! the repository, so the same content is never built twice.

pub mod archive;
pub mod dockerfile;
pub mod firewall;
pub mod git;
pub mod hooks;
pub mod isolation;
pub mod log;
pub mod manifest;
pub mod selftest;
pub mod versions;

use crate::domain::rfc3339;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use self::{
    archive::{Caps, Tree},
    log::BuildLog,
    manifest::Manifest,
};
use crate::{
    config::Settings,
    domain::{Invalid, Slug},
    engine::Engine,
    exercises::{ExerciseSpec, GitSource},
    lifecycle::BuildState,
    metrics::Metrics,
    store::{now_ms, BuildRecord, Store, VersionRecord},
};

/// The builds of exercise images: their queue, slots, cancellations and the build network's
/// verdict are this capability's own state; it gets only the infrastructure it uses. Built once
/// at launch.
pub struct Builds {
    pub settings: Settings,
    pub store: Store,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Bounds repositories being unpacked in memory at once.
    pub intake_slots: Arc<Semaphore>,
    /// Bounds concurrent builds; queued builds wait in the database.
    pub slots: Arc<Semaphore>,
    /// The last verdict on the build network's isolation from the host (`/readyz`).
    pub isolation: Mutex<Option<isolation::Report>>,
    /// Wakes the build worker when a build is queued.
    pub wake: tokio::sync::Notify,
    /// Cancellation of the builds running in this process.
    pub cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Builds hold it shared while the engine builds; removing an image holds it alone. The
    /// classic builder's cache hits are the untagged parents of earlier images, and removing an
    /// image prunes them: a build that hit one of them would fail with "unknown parent image ID".
    pub images: tokio::sync::RwLock<()>,
}

impl Builds {
    pub fn new(settings: &Settings, store: Store, engine: Engine, metrics: Arc<Metrics>) -> Arc<Builds> {
        Arc::new(Builds {
            settings: settings.clone(),
            store,
            engine,
            metrics,
            intake_slots: Arc::new(Semaphore::new(settings.max_concurrent_intakes)),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_builds)),
            isolation: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            cancels: Mutex::new(HashMap::new()),
            images: tokio::sync::RwLock::new(()),
        })
    }
}

/// Where a build's repository comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// An uploaded archive, stored normalised at `<data_dir>/builds/<id>.tar` until the build ends.
    Archive { bytes: u64 },
    Git {
        url: String,
        #[serde(rename = "ref")]
        git_ref: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
}

/// The self-test's two runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SelfTestReport {
    pub starting_files: Option<RunSummary>,
    pub solution: Option<RunSummary>,
    /// The manifest's `starting_files_pass`: the check was required to pass on the starting
    /// files too (a refactoring exercise), not to fail on them.
    #[serde(default)]
    pub starting_files_pass: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub passed: bool,
    pub exit_code: i64,
    pub duration_ms: u64,
}

/// A build as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Build {
    pub id: String,
    pub exercise: String,
    pub state: BuildState,
    pub source: serde_json::Value,
    pub version: Option<String>,
    pub image: Option<String>,
    /// The same content was built before: no rebuild happened.
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_test: Option<serde_json::Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

pub fn to_view(r: &BuildRecord) -> Build {
    Build {
        id: r.id.clone(),
        exercise: r.exercise.clone(),
        state: r.state,
        source: serde_json::from_str(&r.source).unwrap_or_default(),
        version: r.version.clone(),
        image: r.image.clone(),
        cached: r.cached,
        failure_reason: r.failure_reason.clone(),
        self_test: r.self_test.as_deref().and_then(|s| serde_json::from_str(s).ok()),
        created_at: rfc3339(r.created_at),
        started_at: r.started_at.map(rfc3339),
        finished_at: r.finished_at.map(rfc3339),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("build {0:?} does not exist")]
    NotFound(String),
    #[error("exercise {0:?} does not exist")]
    ExerciseNotFound(String),
    #[error("version {1:?} of exercise {0:?} does not exist")]
    VersionNotFound(String, String),
    #[error("the image of version {1:?} of exercise {0:?} was removed; build it again")]
    VersionImageRemoved(String, String),
    #[error("build {0:?} has finished already")]
    Finished(String),
    #[error("{0} builds are waiting already; try again later")]
    QueueFull(u64),
    #[error("too many repositories are being unpacked; try again shortly")]
    IntakeBusy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub fn caps(builds: &Builds) -> Caps {
    Caps { max_unpacked_bytes: builds.settings.max_unpacked_bytes, max_files: builds.settings.max_archive_files }
}

/// Checks that a repository tree is an exercise for `slug`: a valid manifest naming it, a
/// Dockerfile, the learner files and the solution.
pub fn validate_tree(builds: &Builds, slug: &Slug, tree: &Tree) -> Result<Manifest, Invalid> {
    let text = tree.file(manifest::FILE).ok_or_else(|| {
        Invalid::new("invalid_manifest", format!("the repository has no {} at its root", manifest::FILE))
    })?;
    let text = std::str::from_utf8(text)
        .map_err(|_| Invalid::new("invalid_manifest", format!("{} is not UTF-8", manifest::FILE)))?;
    let m = Manifest::parse(text, &builds.settings.limit_caps)?;
    if m.slug != slug.as_str() {
        return Err(Invalid::new(
            "invalid_manifest",
            format!(
                "{}: slug: {:?} does not match the exercise {:?} it is built for",
                manifest::FILE,
                m.slug,
                slug.as_str()
            ),
        ));
    }
    if let Some(pool) = &m.pool {
        pool.check(builds.settings.pool_max_per_exercise)
            .map_err(|e| Invalid::new(e.code, format!("{}: pool: {}", manifest::FILE, e.message)))?;
    }
    if m.network && builds.settings.sandbox_network.is_none() {
        return Err(Invalid::new(
            "network_not_allowed",
            format!("{}: network: this runner does not allow sandboxes to have a network", manifest::FILE),
        ));
    }
    let Some(dockerfile) = tree.file("Dockerfile") else {
        return Err(Invalid::new("invalid_repository", "the repository has no Dockerfile at its root"));
    };
    let dockerfile = std::str::from_utf8(dockerfile)
        .map_err(|_| Invalid::new("invalid_dockerfile", "the Dockerfile is not UTF-8"))?;
    check_dockerfile(&builds.settings.build_base_images, dockerfile)?;
    for (field, dir) in [("learner_files", &m.learner_files), ("solution", &m.solution)] {
        if !tree.has_dir(dir) {
            return Err(Invalid::new(
                "invalid_repository",
                format!("{}: {field}: the directory {dir:?} is missing or empty", manifest::FILE),
            ));
        }
    }
    // Hidden tests are optional (a check may need none), but a directory named on purpose must
    // be there: a typo would otherwise ship an exercise whose check finds no tests.
    if m.hidden_tests != manifest::DEFAULT_HIDDEN_TESTS && !tree.has_dir(&m.hidden_tests) {
        return Err(Invalid::new(
            "invalid_repository",
            format!("{}: hidden_tests: the directory {:?} is missing or empty", manifest::FILE, m.hidden_tests),
        ));
    }
    // What learners get must not hold the tests or the solution.
    for (field, dir) in [("hidden_tests", &m.hidden_tests), ("solution", &m.solution)] {
        if dirs_overlap(&m.learner_files, dir) {
            return Err(Invalid::new(
                "invalid_manifest",
                format!(
                    "{}: learner_files {:?} and {field} {dir:?} overlap: learners would see the {field}",
                    manifest::FILE,
                    m.learner_files
                ),
            ));
        }
    }
    Ok(m)
}

/// The images the tree's Dockerfile uses from outside (the tree passed [`validate_tree`]).
fn tree_images(builds: &Builds, tree: &Tree) -> Result<dockerfile::Checked, Invalid> {
    let text = tree.file("Dockerfile").unwrap_or_default();
    check_dockerfile(&builds.settings.build_base_images, std::str::from_utf8(text).unwrap_or_default())
}

/// Whether one repository directory is the other or inside it (`""` and `"."` are the root).
fn dirs_overlap(a: &str, b: &str) -> bool {
    let parts =
        |p: &str| -> Vec<String> { p.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect() };
    let (a, b) = (parts(a), parts(b));
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Active builds one exercise may have: one author cannot take the whole queue.
pub const MAX_ACTIVE_PER_EXERCISE: usize = 3;

/// Refuses Dockerfiles that would make the engine fetch anything itself (see
/// [`dockerfile::check`]) or that use an image from outside the operator's list `allowed`
/// ([`dockerfile::check_allowed`]); what it returns lists the images the build uses from outside.
pub fn check_dockerfile(allowed: &[String], text: &str) -> Result<dockerfile::Checked, Invalid> {
    let checked = dockerfile::check(text)?;
    dockerfile::check_allowed(&checked, allowed)?;
    Ok(checked)
}

/// The label every exercise image carries (set by the build request, over anything the
/// Dockerfile says).
pub const LABEL_EXERCISE: &str = "exercise-runner.exercise";

/// Checks the images a Dockerfile uses from outside against the engine: each must already be
/// there under the very name the Dockerfile gives (a missing one would be pulled by the engine,
/// from the host's network namespace, and its triggers run unchecked; a lookup that found an
/// image only by searching image IDs is no match), must not be an exercise image (an exercise
/// whose slug is an allowed repository's, `exercise-runner/base:<version>`, holds its hidden
/// tests), and a `FROM` image's `ONBUILD` triggers must meet the same policy as the
/// Dockerfile's own lines. One answer for every way an image is not usable, so the check tells
/// an author nothing about the engine's images beyond the allowed ones.
pub async fn check_images(builds: &Builds, checked: &dockerfile::Checked) -> Result<(), BuildError> {
    for use_ in &checked.images {
        let found = builds.engine.image(&use_.name.full()).await?.filter(|info| {
            let named =
                info.repo_tags.iter().any(|t| crate::domain::normalize_reference(t).is_ok_and(|n| n == use_.name));
            named && !info.labels.contains_key(LABEL_EXERCISE)
        });
        let Some(info) = found else {
            return Err(Invalid::new(
                "invalid_dockerfile",
                format!(
                    "Dockerfile line {}: the image {} is not on this engine; builds use only images already there \
                     (the runner pulls nothing during a build), such as exercise-runner/base:latest",
                    use_.line, use_.reference
                ),
            )
            .into());
        };
        if use_.base {
            dockerfile::check_triggers(&use_.reference, use_.line, &info.on_build)?;
        }
    }
    Ok(())
}

async fn check_queue(builds: &Builds, slug: &Slug) -> Result<(), BuildError> {
    let active = builds.store.count_builds_in(BuildState::ACTIVE).await?;
    let mine = builds.store.builds_of(slug.as_str(), 100).await?.iter().filter(|b| b.state.is_active()).count();
    if active >= builds.settings.max_queued_builds as i64 || mine >= MAX_ACTIVE_PER_EXERCISE {
        builds.metrics.rejected_requests.with_label_values(&["build_queue"]).inc();
        return Err(BuildError::QueueFull(if mine >= MAX_ACTIVE_PER_EXERCISE {
            MAX_ACTIVE_PER_EXERCISE as u64
        } else {
            builds.settings.max_queued_builds
        }));
    }
    Ok(())
}

/// Queues a build of an uploaded archive. Nothing is written unless the archive is accepted.
pub async fn submit_archive(builds: &Arc<Builds>, slug: &Slug, body: bytes::Bytes) -> Result<BuildRecord, BuildError> {
    check_queue(builds, slug).await?;
    // Unpacking holds a whole repository in memory: a few at a time.
    let Ok(_slot) = builds.intake_slots.clone().try_acquire_owned() else {
        builds.metrics.rejected_requests.with_label_values(&["intake"]).inc();
        return Err(BuildError::IntakeBusy);
    };
    let caps = caps(builds);
    let tree =
        tokio::task::spawn_blocking(move || Tree::from_archive(&body, caps)).await.map_err(anyhow::Error::from)??;
    validate_tree(builds, slug, &tree)?;
    check_images(builds, &tree_images(builds, &tree)?).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let blob = tree.to_full_tar();
    let dir = builds.settings.builds_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(anyhow::Error::from)?;
    let path = dir.join(format!("{id}.tar"));
    tokio::fs::write(&path, &blob).await.map_err(anyhow::Error::from)?;
    let source = serde_json::to_string(&Source::Archive { bytes: blob.len() as u64 }).map_err(anyhow::Error::from)?;
    // The archive waits on this node's disk: this node builds it.
    if let Err(e) = builds.store.insert_build(&id, slug.as_str(), &source, true).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    builds.wake.notify_one();
    builds.store.build(&id).await?.ok_or(BuildError::NotFound(id))
}

/// Queues a build from git: the given source, or the exercise's configured one.
pub async fn submit_git(
    builds: &Arc<Builds>,
    slug: &Slug,
    source: Option<GitSource>,
    commit: Option<String>,
) -> Result<BuildRecord, BuildError> {
    check_queue(builds, slug).await?;
    let source = match source {
        Some(s) => s,
        None => {
            let r = builds
                .store
                .exercise(slug.as_str())
                .await?
                .ok_or_else(|| BuildError::ExerciseNotFound(slug.to_string()))?;
            let spec: ExerciseSpec = serde_json::from_str(&r.spec).map_err(anyhow::Error::from)?;
            spec.git.ok_or_else(|| {
                Invalid::new(
                    "invalid_body",
                    "send {\"git\": {\"url\": ..., \"ref\": ...}} or set the exercise's git source",
                )
            })?
        }
    };
    crate::exercises::check_git(&source, builds.settings.git_allow_local)?;
    // A redelivered hook (or a double click) joins the build already waiting for the same source.
    for b in builds.store.builds_of(slug.as_str(), 20).await? {
        if b.state == BuildState::Queued {
            if let Ok(Source::Git { url, git_ref, .. }) = serde_json::from_str::<Source>(&b.source) {
                if url == source.url && git_ref == source.git_ref {
                    return Ok(b);
                }
            }
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let src = Source::Git { url: source.url, git_ref: source.git_ref, commit };
    let src = serde_json::to_string(&src).map_err(anyhow::Error::from)?;
    builds.store.insert_build(&id, slug.as_str(), &src, false).await?;
    builds.wake.notify_one();
    builds.store.build(&id).await?.ok_or(BuildError::NotFound(id))
}

/// Cancels a queued or running build.
pub async fn cancel(builds: &Builds, id: &str) -> Result<BuildRecord, BuildError> {
    let b = builds.store.build(id).await?.ok_or_else(|| BuildError::NotFound(id.to_string()))?;
    if b.state.is_finished() {
        return Err(BuildError::Finished(id.to_string()));
    }
    let running_here = builds.cancels.lock().expect("lock").get(id).cloned();
    if builds
        .store
        .transition_build(id, &[BuildState::Queued], BuildState::Cancelled, Some("cancelled before it started"))
        .await?
    {
        let _ = tokio::fs::remove_file(builds.settings.builds_dir().join(format!("{id}.tar"))).await;
        BuildLog::open(&builds.settings.builds_dir(), id).step("cancelled before it started");
    } else if let Some(token) = running_here {
        token.cancel();
    } else {
        // Running in no process (a replica died): end it here.
        builds.store.transition_build(id, BuildState::RUNNING, BuildState::Cancelled, Some("cancelled")).await?;
    }
    // The running build notices the token within moments; report what the caller asked for.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = builds.store.build(id).await?.ok_or_else(|| BuildError::NotFound(id.to_string()))?;
        if b.state.is_finished() || tokio::time::Instant::now() > deadline {
            return Ok(b);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// At start: builds that were running when the runner stopped cannot be resumed mid-way; they
/// are marked failed with the reason. Queued builds stay queued and run. Leftover self-test
/// containers are removed.
pub async fn recover(builds: &Builds) -> anyhow::Result<()> {
    // This node's only: another node's builds run on.
    for b in builds.store.builds_here_in(BuildState::RUNNING).await? {
        tracing::warn!(build = %b.id, "build interrupted by a runner restart");
        builds
            .store
            .transition_build(
                &b.id,
                BuildState::RUNNING,
                BuildState::Failed,
                Some("interrupted by a runner restart; submit it again"),
            )
            .await?;
        BuildLog::open(&builds.settings.builds_dir(), &b.id).step("interrupted by a runner restart");
        let _ = tokio::fs::remove_file(builds.settings.builds_dir().join(format!("{}.tar", b.id))).await;
    }
    for c in builds.engine.list_selftest_containers().await? {
        builds.engine.remove_container(&c).await?;
    }
    Ok(())
}

/// The build worker: starts queued builds, oldest first, as build slots free up.
pub async fn run_worker(builds: Arc<Builds>, cancel: CancellationToken) {
    loop {
        loop {
            let Ok(permit) = builds.slots.clone().try_acquire_owned() else {
                break;
            };
            match claim_next(&builds).await {
                Ok(Some(build)) => {
                    tokio::spawn(run_build(builds.clone(), build, permit));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not claim a queued build");
                    break;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = builds.wake.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

async fn claim_next(builds: &Builds) -> anyhow::Result<Option<BuildRecord>> {
    for b in builds.store.builds_here_in(&[BuildState::Queued]).await? {
        // Conditional: with several replicas only one claims a build.
        if builds.store.take_build(&b.id).await?
            && builds.store.transition_build(&b.id, &[BuildState::Queued], BuildState::Building, None).await?
        {
            return builds.store.build(&b.id).await;
        }
    }
    Ok(None)
}

enum Stop {
    Cancelled,
    Failed(String),
}

async fn run_build(builds: Arc<Builds>, build: BuildRecord, _permit: OwnedSemaphorePermit) {
    let started = std::time::Instant::now();
    let token = CancellationToken::new();
    builds.cancels.lock().expect("lock").insert(build.id.clone(), token.clone());
    let mut log = BuildLog::open(&builds.settings.builds_dir(), &build.id);
    log.step(&format!("build {} of exercise {}", build.id, build.exercise));
    let timeout = builds.settings.build_timeout;
    let outcome = tokio::select! {
        _ = token.cancelled() => Err(Stop::Cancelled),
        r = tokio::time::timeout(timeout, build_steps(&builds, &build, &mut log, &token)) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if token.is_cancelled() => { let _ = e; Err(Stop::Cancelled) }
            Ok(Err(e)) => Err(Stop::Failed(format!("{e:#}"))),
            Err(_) => Err(Stop::Failed(format!("timed out after {} s", timeout.as_secs()))),
        },
    };
    // Whatever happened, no self-test container outlives its build.
    let name = crate::engine::Purpose::SelfTest(&build.id).container_name(builds.engine.instance());
    let _ = builds.engine.remove_container(&name).await;
    let (state, reason) = match outcome {
        Ok(()) => (BuildState::Succeeded, None),
        Err(Stop::Cancelled) => (BuildState::Cancelled, Some("cancelled".to_string())),
        Err(Stop::Failed(reason)) => (BuildState::Failed, Some(reason.chars().take(2000).collect::<String>())),
    };
    if let Some(r) = &reason {
        log.step(&format!("{state}: {r}"));
    } else {
        log.step(state.as_str());
    }
    if state != BuildState::Succeeded {
        remove_unpublished_image(&builds, &build.id).await;
    }
    if let Err(e) = builds.store.transition_build(&build.id, BuildState::RUNNING, state, reason.as_deref()).await {
        tracing::error!(build = %build.id, error = %format!("{e:#}"), "could not record the end of a build");
    }
    builds.metrics.builds.with_label_values(&[state.as_str()]).inc();
    builds.metrics.build_seconds.with_label_values(&[state.as_str()]).observe(started.elapsed().as_secs_f64());
    tracing::info!(build = %build.id, exercise = %build.exercise, state = state.as_str(), "build finished");
    let _ = tokio::fs::remove_file(builds.settings.builds_dir().join(format!("{}.tar", build.id))).await;
    builds.cancels.lock().expect("lock").remove(&build.id);
    builds.wake.notify_one();
}

/// A build that did not succeed leaves no image behind, unless a version (an earlier build of
/// the same content) owns it.
async fn remove_unpublished_image(builds: &Builds, build_id: &str) {
    let Ok(Some(b)) = builds.store.build(build_id).await else { return };
    let (Some(version), Some(image)) = (b.version, b.image) else { return };
    if b.cached || matches!(builds.store.version(&b.exercise, &version).await, Ok(Some(_))) {
        return;
    }
    let _alone = builds.images.write().await;
    if let Err(e) = builds.engine.remove_image(&image).await {
        tracing::warn!(build = build_id, error = %format!("{e:#}"), "could not remove the image of a failed build");
    }
}

async fn load_tree(builds: &Builds, build: &BuildRecord, log: &mut BuildLog) -> anyhow::Result<Tree> {
    let source: Source = serde_json::from_str(&build.source)?;
    match source {
        Source::Archive { .. } => {
            let bytes = tokio::fs::read(builds.settings.builds_dir().join(format!("{}.tar", build.id))).await?;
            Tree::from_archive(&bytes, caps(builds)).map_err(|e| anyhow::anyhow!(e.message))
        }
        Source::Git { url, git_ref, .. } => {
            log.step(&format!("fetching {url} at {git_ref}"));
            let scratch = tempfile::Builder::new().prefix("git-").tempdir_in(builds.settings.builds_dir())?;
            let src = GitSource { url, git_ref };
            let tree = git::fetch(&src, builds.settings.git_allow_local, caps(builds), scratch.path()).await;
            drop(scratch);
            tree
        }
    }
}

async fn build_steps(
    builds: &Arc<Builds>,
    build: &BuildRecord,
    log: &mut BuildLog,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let slug = Slug::parse(&build.exercise).map_err(|e| anyhow::anyhow!(e.message))?;
    let tree = load_tree(builds, build, log).await?;
    let manifest = validate_tree(builds, &slug, &tree).map_err(|e| anyhow::anyhow!(e.message))?;
    let version = tree.digest()[..12].to_string();
    let image = format!("exercise-runner/{}:{}", slug, version);
    log.step(&format!("version {version} ({image})"));

    let known = builds.store.version(slug.as_str(), &version).await?;
    let registry = builds.settings.fleet.registry();
    let cached = match (known, registry) {
        (Some(k), _) if builds.engine.image(&image).await?.is_some() => Some(k),
        // Proven on another node: its image is in the fleet's registry.
        (Some(k), Some(registry)) => {
            log.step(&format!("this content was built and proven before: pulling {image} from {}", registry.host));
            let mut sink = |line: &str| log.write(line);
            match crate::engine::registry::fetch(&*builds.engine, &registry, &image, &mut sink).await {
                Ok(()) => Some(k),
                Err(e) => {
                    log.write(&format!("could not pull it ({e:#}); building it again"));
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(known) = cached {
        log.step("this content was built and proven before: no rebuild (cached)");
        let self_test = builds.store.build(&known.build_id).await?.and_then(|b| b.self_test);
        builds.store.set_build_result(&build.id, &version, &image, true, self_test.as_deref()).await?;
    } else {
        // Again here: a git build's Dockerfile is first seen now, and an image may have changed
        // since the submit.
        let images = tree_images(builds, &tree).map_err(|e| anyhow::anyhow!(e.message))?;
        check_images(builds, &images).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if builds.settings.build_network != "none" {
            isolation::require(builds).await?;
        }
        log.step("docker build");
        let labels = HashMap::from([
            (LABEL_EXERCISE.to_string(), slug.to_string()),
            (crate::engine::LABEL_VERSION.to_string(), version.clone()),
        ]);
        let req = crate::engine::BuildRequest {
            context_tar: tree.build_context_tar(&manifest.solution),
            tag: &image,
            labels,
            memory_mb: builds.settings.build_memory_mb,
            cpus: builds.settings.build_cpus,
            pids_limit: builds.settings.build_pids_limit,
            network: builds.settings.build_network.clone(),
        };
        // Recorded before building, so whatever ends the build can remove what it made.
        builds.store.set_build_result(&build.id, &version, &image, false, None).await?;
        {
            let _shared = builds.images.read().await;
            let mut sink = |line: &str| log.write(line.trim_end_matches('\n'));
            if let Err(e) = builds.engine.build_image(req.clone(), token, &mut sink).await {
                // Another process (a second replica, an operator's prune) removed a cached parent
                // under this build: once more, without that cache entry.
                if !format!("{e:#}").contains("unknown parent image ID") || token.is_cancelled() {
                    return Err(e);
                }
                sink("the engine lost a cached layer under this build; building once more");
                builds.engine.build_image(req, token, &mut sink).await?;
            }
        }
        let info = builds.engine.image(&image).await?.ok_or_else(|| anyhow::anyhow!("the built image vanished"))?;
        crate::exercises::reject_unsafe_image(&info).map_err(|e| anyhow::anyhow!(e.message))?;
        if !info.on_build.is_empty() {
            // Whatever spelling got past the Dockerfile check: an exercise image is a possible
            // base of another author's build, and its triggers would run there.
            anyhow::bail!(
                "the image carries ONBUILD triggers {:?}; exercise images must not carry triggers into later builds",
                info.on_build
            );
        }
        builds.store.transition_build(&build.id, &[BuildState::Building], BuildState::Testing, None).await?;
        log.step("self-test: the check must fail on the starting files and pass with the solution");
        let report = selftest::run(builds, &build.id, &image, &manifest, &tree, log).await;
        let report_json = serde_json::to_string(&report.report)?;
        builds.store.set_build_result(&build.id, &version, &image, false, Some(&report_json)).await?;
        report.result?;
        // A version exists only once every node can have its image.
        if let Some(registry) = registry {
            log.step(&format!("pushing {image} to {}", registry.host));
            let mut sink = |line: &str| log.write(line);
            crate::engine::registry::share(&*builds.engine, &registry, &image, &mut sink).await?;
        }
        builds
            .store
            .insert_version(&VersionRecord {
                exercise: slug.to_string(),
                version: version.clone(),
                image: image.clone(),
                manifest: serde_json::to_string(&manifest)?,
                build_id: build.id.clone(),
                created_at: now_ms(),
                published_at: None,
            })
            .await?;
    }
    let auto = match builds.store.exercise(slug.as_str()).await? {
        Some(r) => serde_json::from_str::<ExerciseSpec>(&r.spec)?.auto_publish,
        None => true,
    };
    if auto {
        log.step(&format!("publishing version {version}"));
        versions::publish(builds, &slug, &version).await.map_err(|e| anyhow::anyhow!("publishing: {e}"))?;
    } else {
        log.step(&format!(
            "version {version} is ready; publish it with POST /v1/exercises/{slug}/versions/{version}/publish"
        ));
    }
    if let Err(e) = versions::collect_garbage(builds, &slug).await {
        log.write(&format!("warning: could not remove old versions: {e:#}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfiles_may_not_make_the_engine_fetch_urls() {
        let allowed = ["x".to_string()];
        let check_dockerfile = |text: &str| check_dockerfile(&allowed, text);
        assert!(check_dockerfile("FROM x\nADD app.tar /opt/\nCOPY a b\n").is_ok());
        let e = check_dockerfile("FROM y\n").unwrap_err();
        assert!(e.message.contains("RUNNER_BUILD_BASE_IMAGES: x"), "{}", e.message);
        for bad in [
            "FROM x\nADD http://127.0.0.1:8080/metrics /x\n",
            "FROM x\nadd HTTPS://example.org/a /x\n",
            "FROM x\nADD --chown=1 \\\n  http://10.0.0.1/a /x\n",
            "FROM x\nADD [\"http://127.0.0.1/a\", \"/x\"]\n",
            "FROM x\nADD git@github.com:a/b.git /x\n",
        ] {
            let e = check_dockerfile(bad).unwrap_err();
            assert_eq!(e.code, "invalid_dockerfile", "{bad}");
        }
    }
}
