//! Fetching an exercise repository from git without checking it out on the host: a bare,
//! shallow clone, then `git archive` into the same in-memory intake as uploaded archives.

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context};
use tokio::{io::AsyncReadExt, process::Command};

use super::archive::{Caps, Tree};
use crate::exercises::GitSource;

const FETCH_TIMEOUT: Duration = Duration::from_secs(180);

fn git(dir: &std::path::Path, allow_local: bool) -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", dir)
        .args(["-c", "protocol.allow=never", "-c", "protocol.https.allow=always", "-c", "protocol.http.allow=always"]);
    if allow_local {
        cmd.args(["-c", "protocol.file.allow=always"]);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Fetches `source` into a checked tree. `scratch` is an empty directory the caller removes.
pub async fn fetch(
    source: &GitSource,
    allow_local: bool,
    caps: Caps,
    scratch: &std::path::Path,
) -> anyhow::Result<Tree> {
    crate::exercises::check_git(source, allow_local).map_err(|e| anyhow::anyhow!(e.message))?;
    let bare = scratch.join("repo.git");
    let out = tokio::time::timeout(
        FETCH_TIMEOUT,
        git(scratch, allow_local)
            .args(["clone", "--quiet", "--bare", "--depth", "1", "--single-branch", "--branch", &source.git_ref, "--"])
            .arg(&source.url)
            .arg(&bare)
            .output(),
    )
    .await
    .context("git clone timed out")?
    .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git clone of {} at {} failed: {}",
            source.url,
            source.git_ref,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut child = git(scratch, allow_local)
        .arg("-C")
        .arg(&bare)
        .args(["archive", "--format=tar", "HEAD"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let limit = caps.max_unpacked_bytes + 64 * 1024 * 1024;
    let mut tar = Vec::new();
    let mut stdout = child.stdout.take().expect("piped");
    (&mut stdout).take(limit + 1).read_to_end(&mut tar).await?;
    if tar.len() as u64 > limit {
        bail!("the repository is over the size limit of {} bytes", caps.max_unpacked_bytes);
    }
    let status = tokio::time::timeout(FETCH_TIMEOUT, child.wait()).await.context("git archive timed out")??;
    if !status.success() {
        bail!("git archive failed");
    }
    Tree::from_archive(&tar, caps).map_err(|e| anyhow::anyhow!(e.message))
}
