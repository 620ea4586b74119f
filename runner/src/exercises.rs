//! The exercise registry: which image an exercise runs, with which limits and network.

use crate::domain::rfc3339;
use serde::{Deserialize, Serialize};

use crate::{
    config::Settings,
    domain::{CheckSpec, Invalid, Limits, PoolSpec, SandboxSpec, Slug, TMPFS_PATHS},
    engine::Engine,
    store::{ExerciseRecord, Store, Written},
};

/// Per-exercise overrides of the operator's default limits; each must stay within the caps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub tmpfs_mb: Option<u64>,
    pub workspace_mb: Option<u64>,
}

/// `PUT /v1/exercises/{slug}` body. With `image`, the exercise runs that local image (and the
/// limits, network, workdir and check given here). Without it, only the settings change; the
/// image then comes from published builds.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExerciseInput {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Opt into networking (the operator's `RUNNER_SANDBOX_NETWORK`); off by default.
    #[serde(default)]
    pub network: bool,
    /// Working directory, where the workspace is mounted. Default: the image's, else /workspace.
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub check: Option<CheckSpec>,
    /// Publish each successful build at once (default), or only on request.
    #[serde(default)]
    pub auto_publish: Option<bool>,
    /// Where push hooks and `{"git": {}}` builds fetch the repository from.
    #[serde(default)]
    pub git: Option<GitSource>,
    /// HMAC secret of push hooks for this exercise. Write-only: never shown.
    #[serde(default)]
    pub hook_secret: Option<String>,
    /// Warm pool of ready sandboxes (`{"min", "max"}`, `max` within the operator's cap).
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub url: String,
    #[serde(default = "default_ref", rename = "ref")]
    pub git_ref: String,
}

fn default_ref() -> String {
    "main".to_string()
}

fn default_true() -> bool {
    true
}

/// What is stored for an exercise (as JSON beside its image).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExerciseSpec {
    pub title: Option<String>,
    pub limits: LimitOverrides,
    pub network: bool,
    pub workdir: String,
    #[serde(default)]
    pub writable: Vec<String>,
    #[serde(default)]
    pub check: CheckSpec,
    #[serde(default = "default_true")]
    pub auto_publish: bool,
    #[serde(default)]
    pub git: Option<GitSource>,
    #[serde(default)]
    pub hook_secret: Option<String>,
    #[serde(default)]
    pub current_version: Option<String>,
    /// Set by `PUT` or the published manifest; the operator's default when `None`.
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

impl ExerciseSpec {
    /// The pool this exercise keeps: its own or the operator's default, within the cap.
    pub fn effective_pool(&self, settings: &Settings) -> PoolSpec {
        let p = self.pool.unwrap_or(settings.pool_default);
        let max = p.max.min(settings.pool_max_per_exercise);
        PoolSpec { min: p.min.min(max), max }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Exercise {
    pub slug: String,
    /// The image new sessions get; `null` until a version is published.
    pub image: Option<String>,
    pub title: Option<String>,
    pub current_version: Option<String>,
    /// The limits a new session gets: the defaults with this exercise's overrides.
    pub limits: Limits,
    pub network: bool,
    pub workdir: String,
    pub writable: Vec<String>,
    pub check: CheckSpec,
    pub auto_publish: bool,
    pub git: Option<GitSource>,
    /// Whether a hook secret is set (the secret itself is never shown).
    pub hook_secret_set: bool,
    /// The warm pool it keeps (`max: 0`: none).
    pub pool: PoolSpec,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExerciseError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub fn effective_limits(defaults: &Limits, caps: &Limits, o: &LimitOverrides) -> Limits {
    Limits {
        memory_mb: o.memory_mb.unwrap_or(defaults.memory_mb).min(caps.memory_mb),
        cpus: o.cpus.unwrap_or(defaults.cpus).min(caps.cpus),
        pids: o.pids.unwrap_or(defaults.pids).min(caps.pids),
        tmpfs_mb: o.tmpfs_mb.unwrap_or(defaults.tmpfs_mb).min(caps.tmpfs_mb),
        workspace_mb: o.workspace_mb.unwrap_or(defaults.workspace_mb).min(caps.workspace_mb),
    }
}

pub fn check_limits(caps: &Limits, o: &LimitOverrides) -> Result<(), Invalid> {
    fn check<T: PartialOrd + std::fmt::Display + Copy>(
        field: &str,
        v: Option<T>,
        min: T,
        cap: T,
    ) -> Result<(), Invalid> {
        match v {
            Some(v) if v < min => {
                Err(Invalid::new("limit_too_small", format!("limits.{field} = {v} is below the minimum {min}")))
            }
            Some(v) if v > cap => {
                Err(Invalid::new("limit_exceeds_cap", format!("limits.{field} = {v} exceeds the operator's cap {cap}")))
            }
            _ => Ok(()),
        }
    }
    check("memory_mb", o.memory_mb, 16, caps.memory_mb)?;
    check("cpus", o.cpus, 0.01, caps.cpus)?;
    check("pids", o.pids, 8, caps.pids)?;
    check("tmpfs_mb", o.tmpfs_mb, 1, caps.tmpfs_mb)?;
    check("workspace_mb", o.workspace_mb, 8, caps.workspace_mb)?;
    if o.cpus.is_some_and(|c| !c.is_finite()) {
        return Err(Invalid::new("invalid_limit", "limits.cpus must be a number"));
    }
    Ok(())
}

pub fn check_image_reference(image: &str) -> Result<(), Invalid> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !image.starts_with(['-', '.', '/', ':']);
    if ok {
        Ok(())
    } else {
        Err(Invalid::new("invalid_image", format!("image {image:?} is not a valid image reference")))
    }
}

pub fn check_workdir(dir: &str) -> Result<(), Invalid> {
    let ok = dir.starts_with('/')
        && dir.len() > 1
        && dir.len() <= 200
        && !dir.split('/').any(|c| c == ".." || c == ".")
        && !dir.ends_with('/')
        && dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
        && !TMPFS_PATHS.iter().any(|t| dir == *t || dir.starts_with(&format!("{t}/")))
        && !["/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/lib"]
            .iter()
            .any(|p| dir == *p || dir.starts_with(&format!("{p}/")));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "invalid_workdir",
            format!("workdir {dir:?} must be an absolute, normalised path outside system and tmpfs directories"),
        ))
    }
}

pub fn to_view(settings: &Settings, r: &ExerciseRecord) -> anyhow::Result<Exercise> {
    let spec: ExerciseSpec = serde_json::from_str(&r.spec)?;
    let pool = spec.effective_pool(settings);
    Ok(Exercise {
        slug: r.slug.clone(),
        image: (!r.image.is_empty()).then(|| r.image.clone()),
        title: spec.title,
        current_version: spec.current_version,
        limits: effective_limits(&settings.default_limits, &settings.limit_caps, &spec.limits),
        network: spec.network,
        workdir: spec.workdir,
        writable: spec.writable,
        check: spec.check,
        auto_publish: spec.auto_publish,
        git: spec.git,
        hook_secret_set: spec.hook_secret.is_some(),
        pool,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

pub fn check_check(c: &CheckSpec) -> Result<(), Invalid> {
    let bad = |m: &str| Invalid::new("invalid_check", format!("check: {m}"));
    if c.command.is_empty() || c.command.len() > 64 || c.command.iter().any(|a| a.is_empty() || a.contains('\0')) {
        return Err(bad("command must be a non-empty list of non-empty arguments"));
    }
    if !(1..=600).contains(&c.timeout_secs) {
        return Err(bad("timeout_secs must be between 1 and 600"));
    }
    Ok(())
}

/// Images that would escape the sandbox's limits or impersonate the runner's own containers.
pub fn reject_unsafe_image(info: &crate::engine::ImageInfo) -> Result<(), Invalid> {
    if !info.volumes.is_empty() {
        return Err(Invalid::new(
            "image_declares_volumes",
            format!(
                "the image declares VOLUME {:?}: each would be an unbounded volume on the host's disk; \
                 remove the VOLUME lines (list such paths in `writable` for a sized tmpfs)",
                info.volumes
            ),
        ));
    }
    let spoofed = info.spoofed_labels();
    if !spoofed.is_empty() {
        return Err(Invalid::new(
            "image_spoofs_labels",
            format!("the image carries the runner's own labels {spoofed:?}"),
        ));
    }
    Ok(())
}

pub fn check_git(g: &GitSource, allow_local: bool) -> Result<(), Invalid> {
    let url_ok = g.url.len() <= 1000
        && !g.url.starts_with('-')
        && !g.url.chars().any(|c| c.is_control() || c.is_whitespace())
        && (g.url.starts_with("https://")
            || g.url.starts_with("http://")
            || (allow_local && (g.url.starts_with("file:///") || g.url.starts_with('/'))));
    if !url_ok {
        return Err(Invalid::new(
            "invalid_git_url",
            format!("git.url {:?} must be an http(s) URL{}", g.url, if allow_local { " or a local path" } else { "" }),
        ));
    }
    let ref_ok = !g.git_ref.is_empty()
        && g.git_ref.len() <= 200
        && !g.git_ref.starts_with('-')
        && !g.git_ref.contains("..")
        && g.git_ref.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    if !ref_ok {
        return Err(Invalid::new(
            "invalid_git_ref",
            format!("git.ref {:?} is not a branch, tag or commit name", g.git_ref),
        ));
    }
    Ok(())
}

/// Creates or updates an exercise. Returns the exercise and whether it was created.
/// Nothing is written unless every field is valid and the image (when given) exists locally.
pub async fn put(
    settings: &Settings,
    store: &Store,
    engine: &Engine,
    slug: &Slug,
    input: ExerciseInput,
) -> Result<(Exercise, bool), ExerciseError> {
    check_limits(&settings.limit_caps, &input.limits)?;
    if let Some(p) = &input.pool {
        p.check(settings.pool_max_per_exercise)?;
    }
    if input.network && settings.sandbox_network.is_none() {
        return Err(Invalid::new(
            "network_not_allowed",
            "network: this runner does not allow sandboxes to have a network",
        )
        .into());
    }
    if let Some(t) = &input.title {
        if t.chars().count() > 200 {
            return Err(Invalid::new("invalid_title", "title must be at most 200 characters").into());
        }
    }
    if let Some(w) = &input.workdir {
        check_workdir(w)?;
    }
    if let Some(c) = &input.check {
        check_check(c)?;
    }
    if let Some(g) = &input.git {
        check_git(g, settings.git_allow_local)?;
    }
    if input.hook_secret.as_ref().is_some_and(|s| s.len() < 16 || s.len() > 256) {
        return Err(Invalid::new("invalid_hook_secret", "hook_secret must be 16-256 characters").into());
    }
    let image_info = match &input.image {
        Some(reference) => {
            check_image_reference(reference)?;
            let info = engine.image(reference).await?.ok_or_else(|| {
                Invalid::new("image_not_found", format!("image {reference:?} does not exist on the Docker engine"))
            })?;
            reject_unsafe_image(&info)?;
            Some((reference.clone(), info))
        }
        None => None,
    };
    // Read, merge, write if nobody wrote in between; else again (concurrent PUTs of one exercise
    // all land, none is lost, none fails).
    for _ in 0..crate::store::MAX_WRITE_ATTEMPTS {
        let existing = store.exercise(slug.as_str()).await?;
        let mut spec: ExerciseSpec = match &existing {
            Some(r) => serde_json::from_str(&r.spec).map_err(anyhow::Error::from)?,
            None => ExerciseSpec { workdir: "/workspace".into(), auto_publish: true, ..Default::default() },
        };
        let mut image = existing.as_ref().map(|r| r.image.clone()).unwrap_or_default();
        if let Some((reference, info)) = &image_info {
            image = reference.clone();
            spec.limits = input.limits.clone();
            spec.network = input.network;
            spec.workdir = input
                .workdir
                .clone()
                .or(info.working_dir.clone().filter(|w| check_workdir(w).is_ok()))
                .unwrap_or_else(|| "/workspace".to_string());
            spec.check = input.check.clone().unwrap_or_default();
            spec.writable = vec![];
            spec.current_version = None;
        }
        if input.title.is_some() {
            spec.title = input.title.clone();
        }
        if let Some(a) = input.auto_publish {
            spec.auto_publish = a;
        }
        if input.git.is_some() {
            spec.git = input.git.clone();
        }
        if input.hook_secret.is_some() {
            spec.hook_secret = input.hook_secret.clone();
        }
        if input.pool.is_some() {
            spec.pool = input.pool;
        }
        let spec_json = serde_json::to_string(&spec).map_err(anyhow::Error::from)?;
        let written = store.write_exercise(slug.as_str(), &image, &spec_json, existing.map(|r| r.revision)).await?;
        if written == Written::Conflict {
            continue;
        }
        let record =
            store.exercise(slug.as_str()).await?.ok_or_else(|| anyhow::anyhow!("exercise vanished after write"))?;
        return Ok((to_view(settings, &record)?, written == Written::Created));
    }
    Err(anyhow::anyhow!("exercise {slug}: too many concurrent writes").into())
}

/// The sandbox a new session of this exercise gets, under the operator's current settings.
pub fn sandbox_spec(settings: &Settings, r: &ExerciseRecord) -> anyhow::Result<SandboxSpec> {
    let spec: ExerciseSpec = serde_json::from_str(&r.spec)?;
    Ok(SandboxSpec {
        image: r.image.clone(),
        limits: effective_limits(&settings.default_limits, &settings.limit_caps, &spec.limits),
        network: if spec.network { settings.sandbox_network.clone() } else { None },
        workdir: spec.workdir,
        writable: spec.writable,
        check: spec.check,
        ide: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_against_caps() {
        let caps = Limits::DEFAULT_CAPS;
        assert!(check_limits(&caps, &LimitOverrides { memory_mb: Some(256), ..Default::default() }).is_ok());
        let e = check_limits(&caps, &LimitOverrides { memory_mb: Some(1 << 20), ..Default::default() }).unwrap_err();
        assert_eq!(e.code, "limit_exceeds_cap");
        assert!(e.message.contains("memory_mb"));
        assert!(check_limits(&caps, &LimitOverrides { pids: Some(1), ..Default::default() }).is_err());
    }

    #[test]
    fn workdirs() {
        assert!(check_workdir("/workspace").is_ok());
        assert!(check_workdir("/home/learner/project").is_ok());
        for bad in ["", "/", "relative", "/tmp", "/tmp/x", "/a/../etc", "/etc", "/proc/1", "/a b"] {
            assert!(check_workdir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_references() {
        assert!(check_image_reference("exercise-runner/busybox:latest").is_ok());
        assert!(check_image_reference("localhost:5000/a/b@sha256:abc").is_ok());
        for bad in ["", "-x", "a b", "a;b", "$(x)"] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
    }
}
