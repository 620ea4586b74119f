//! `runner images build-base`: the sandbox base image every exercise image starts FROM.
//!
//! Its recipe (`exercise-images/base/`) is embedded in the binary. On a machine where no registry
//! can be reached, `debian:bookworm-slim` is first made from Debian's packages (debootstrap, then
//! imported as an image), so ordinary Dockerfiles build unchanged. Rebuilt only when the recipe
//! or the Debian image changed (a hash label on the image).

use std::process::Stdio;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::engine::{BuildRequest, Engine};

pub const BASE_IMAGE: &str = "exercise-runner/base:latest";
pub const DEBIAN_IMAGE: &str = "debian:bookworm-slim";
const RECIPE_LABEL: &str = "exercise-runner.recipe";

const RECIPE: &[(&str, &[u8], u32)] = &[
    ("Dockerfile", include_bytes!("../../exercise-images/base/Dockerfile"), 0o644),
    ("supervisord.conf", include_bytes!("../../exercise-images/base/supervisord.conf"), 0o644),
    ("sandbox-init", include_bytes!("../../exercise-images/base/sandbox-init"), 0o755),
    ("ide-agent.conf", include_bytes!("../../exercise-images/base/ide-agent.conf"), 0o644),
];

/// Where `build-base` looks for the IDE agent by default: beside this binary (cargo builds both
/// into the same target directory).
pub fn default_agent_path() -> Option<std::path::PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join("ide-agent"))
}

fn recipe_tar(agent: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let files = RECIPE.iter().copied().chain(std::iter::once(("ide-agent", agent, 0o755)));
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        b.append_data(&mut h, name, data).expect("tar in memory");
    }
    b.into_inner().expect("tar in memory")
}

/// Makes `debian:bookworm-slim` with debootstrap when it is missing (needs root).
async fn ensure_debian(engine: &Engine, say: &mut impl FnMut(&str)) -> anyhow::Result<()> {
    if engine.image(DEBIAN_IMAGE).await?.is_some() {
        return Ok(());
    }
    say(&format!("{DEBIAN_IMAGE} is missing: making it with debootstrap (about a minute)"));
    let dir = tempfile::Builder::new().prefix("exercise-runner-debootstrap-").tempdir()?;
    let mut cmd = tokio::process::Command::new("debootstrap");
    cmd.args(["--variant=minbase", "bookworm"]).arg(dir.path());
    if let Ok(mirror) = std::env::var("DEBIAN_MIRROR") {
        cmd.arg(mirror);
    }
    let status =
        cmd.stdout(Stdio::null()).status().await.context("running debootstrap (apt-get install debootstrap)")?;
    if !status.success() {
        bail!("debootstrap failed with {status}");
    }
    for sub in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let p = dir.path().join(sub);
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let out = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["--numeric-owner", "-c", "."])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running tar")?;
    if !out.status.success() {
        bail!("tar of the debootstrap tree failed");
    }
    let (repo, tag) = DEBIAN_IMAGE.split_once(':').expect("name:tag");
    engine.import_rootfs(out.stdout, repo, tag, &["CMD [\"bash\"]"]).await?;
    say(&format!("imported {DEBIAN_IMAGE}"));
    Ok(())
}

/// Builds the base image unless it is up to date; `force` rebuilds anyway.
pub async fn ensure(
    engine: &Engine,
    agent: &std::path::Path,
    force: bool,
    mut say: impl FnMut(&str) + Send,
) -> anyhow::Result<()> {
    let agent = std::fs::read(agent)
        .with_context(|| format!("reading the IDE agent at {} (cargo build -p ide-agent)", agent.display()))?;
    ensure_debian(engine, &mut say).await?;
    let debian = engine.image(DEBIAN_IMAGE).await?.context("the Debian image vanished")?;
    let context = recipe_tar(&agent);
    let mut h = Sha256::new();
    h.update(&context);
    h.update(debian.id.as_bytes());
    let recipe = hex::encode(h.finalize())[..16].to_string();
    if !force {
        if let Some(img) = engine.image(BASE_IMAGE).await? {
            if img.labels.get(RECIPE_LABEL) == Some(&recipe) {
                say(&format!("{BASE_IMAGE} is up to date"));
                return Ok(());
            }
        }
    }
    say(&format!("building {BASE_IMAGE}"));
    let req = BuildRequest {
        context_tar: context,
        tag: BASE_IMAGE,
        labels: [(RECIPE_LABEL.to_string(), recipe)].into(),
        memory_mb: 2048,
        cpus: 2.0,
        pids_limit: 4096,
        network: "default".into(),
    };
    engine.build_image(req, &CancellationToken::new(), &mut |line| say(line.trim_end())).await?;
    say(&format!("built {BASE_IMAGE}"));
    Ok(())
}
