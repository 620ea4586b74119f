//! The exercise registry: which image an exercise runs, with which limits and network.

use serde::{Deserialize, Serialize};

use crate::{
    config::{Limits, Settings},
    docker::{policy::TMPFS_PATHS, Engine, SandboxSpec},
    domain::{Invalid, Slug},
    store::{ExerciseRecord, Store},
};

/// Per-exercise overrides of the operator's default limits; each must stay within the caps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub tmpfs_mb: Option<u64>,
    pub workspace_mb: Option<u64>,
}

/// `PUT /v1/exercises/{slug}` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExerciseInput {
    pub image: String,
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
}

/// What is stored for an exercise (as JSON beside its image).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExerciseSpec {
    pub title: Option<String>,
    pub limits: LimitOverrides,
    pub network: bool,
    pub workdir: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exercise {
    pub slug: String,
    pub image: String,
    pub title: Option<String>,
    /// The limits a new session gets: the defaults with this exercise's overrides.
    pub limits: Limits,
    pub network: bool,
    pub workdir: String,
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
        memory_mb: o
            .memory_mb
            .unwrap_or(defaults.memory_mb)
            .min(caps.memory_mb),
        cpus: o.cpus.unwrap_or(defaults.cpus).min(caps.cpus),
        pids: o.pids.unwrap_or(defaults.pids).min(caps.pids),
        tmpfs_mb: o.tmpfs_mb.unwrap_or(defaults.tmpfs_mb).min(caps.tmpfs_mb),
        workspace_mb: o
            .workspace_mb
            .unwrap_or(defaults.workspace_mb)
            .min(caps.workspace_mb),
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
            Some(v) if v < min => Err(Invalid::new(
                "limit_too_small",
                format!("limits.{field} = {v} is below the minimum {min}"),
            )),
            Some(v) if v > cap => Err(Invalid::new(
                "limit_exceeds_cap",
                format!("limits.{field} = {v} exceeds the operator's cap {cap}"),
            )),
            _ => Ok(()),
        }
    }
    check("memory_mb", o.memory_mb, 16, caps.memory_mb)?;
    check("cpus", o.cpus, 0.01, caps.cpus)?;
    check("pids", o.pids, 8, caps.pids)?;
    check("tmpfs_mb", o.tmpfs_mb, 1, caps.tmpfs_mb)?;
    check("workspace_mb", o.workspace_mb, 8, caps.workspace_mb)?;
    if o.cpus.is_some_and(|c| !c.is_finite()) {
        return Err(Invalid::new(
            "invalid_limit",
            "limits.cpus must be a number",
        ));
    }
    Ok(())
}

fn check_image_reference(image: &str) -> Result<(), Invalid> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !image.starts_with(['-', '.', '/', ':']);
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "invalid_image",
            format!("image {image:?} is not a valid image reference"),
        ))
    }
}

pub fn check_workdir(dir: &str) -> Result<(), Invalid> {
    let ok = dir.starts_with('/')
        && dir.len() > 1
        && dir.len() <= 200
        && !dir.split('/').any(|c| c == ".." || c == ".")
        && !dir.ends_with('/')
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
        && !TMPFS_PATHS
            .iter()
            .any(|t| dir == *t || dir.starts_with(&format!("{t}/")))
        && ![
            "/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/lib",
        ]
        .iter()
        .any(|p| dir == *p || dir.starts_with(&format!("{p}/")));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new("invalid_workdir", format!("workdir {dir:?} must be an absolute, normalised path outside system and tmpfs directories")))
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn to_view(settings: &Settings, r: &ExerciseRecord) -> anyhow::Result<Exercise> {
    let spec: ExerciseSpec = serde_json::from_str(&r.spec)?;
    Ok(Exercise {
        slug: r.slug.clone(),
        image: r.image.clone(),
        title: spec.title,
        limits: effective_limits(&settings.default_limits, &settings.limit_caps, &spec.limits),
        network: spec.network,
        workdir: spec.workdir,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

/// Creates or updates an exercise. Returns the exercise and whether it was created.
/// Nothing is written unless every field is valid and the image exists locally.
pub async fn put(
    settings: &Settings,
    store: &Store,
    engine: &Engine,
    slug: &Slug,
    input: ExerciseInput,
) -> Result<(Exercise, bool), ExerciseError> {
    check_image_reference(&input.image)?;
    check_limits(&settings.limit_caps, &input.limits)?;
    if input.network && settings.sandbox_network.is_none() {
        return Err(Invalid::new(
            "network_not_allowed",
            "network: this runner does not allow sandboxes to have a network",
        )
        .into());
    }
    if let Some(t) = &input.title {
        if t.chars().count() > 200 {
            return Err(
                Invalid::new("invalid_title", "title must be at most 200 characters").into(),
            );
        }
    }
    if let Some(w) = &input.workdir {
        check_workdir(w)?;
    }
    let image = engine.image(&input.image).await?.ok_or_else(|| {
        Invalid::new(
            "image_not_found",
            format!(
                "image {:?} does not exist on the Docker engine",
                input.image
            ),
        )
    })?;
    let workdir = input
        .workdir
        .or(image.working_dir.filter(|w| check_workdir(w).is_ok()))
        .unwrap_or_else(|| "/workspace".to_string());
    let spec = ExerciseSpec {
        title: input.title,
        limits: input.limits,
        network: input.network,
        workdir,
    };
    let created = store
        .upsert_exercise(
            slug.as_str(),
            &input.image,
            &serde_json::to_string(&spec).map_err(anyhow::Error::from)?,
        )
        .await?;
    let record = store
        .exercise(slug.as_str())
        .await?
        .ok_or_else(|| anyhow::anyhow!("exercise vanished after write"))?;
    Ok((to_view(settings, &record)?, created))
}

/// The sandbox a new session of this exercise gets, under the operator's current settings.
pub fn sandbox_spec(settings: &Settings, r: &ExerciseRecord) -> anyhow::Result<SandboxSpec> {
    let spec: ExerciseSpec = serde_json::from_str(&r.spec)?;
    Ok(SandboxSpec {
        image: r.image.clone(),
        limits: effective_limits(&settings.default_limits, &settings.limit_caps, &spec.limits),
        network: if spec.network {
            settings.sandbox_network.clone()
        } else {
            None
        },
        workdir: spec.workdir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_against_caps() {
        let caps = Limits::DEFAULT_CAPS;
        assert!(check_limits(
            &caps,
            &LimitOverrides {
                memory_mb: Some(256),
                ..Default::default()
            }
        )
        .is_ok());
        let e = check_limits(
            &caps,
            &LimitOverrides {
                memory_mb: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, "limit_exceeds_cap");
        assert!(e.message.contains("memory_mb"));
        assert!(check_limits(
            &caps,
            &LimitOverrides {
                pids: Some(1),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn workdirs() {
        assert!(check_workdir("/workspace").is_ok());
        assert!(check_workdir("/home/learner/project").is_ok());
        for bad in [
            "",
            "/",
            "relative",
            "/tmp",
            "/tmp/x",
            "/a/../etc",
            "/etc",
            "/proc/1",
            "/a b",
        ] {
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
