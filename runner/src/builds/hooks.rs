//! Push hooks: a GitHub-style push event, signed with `X-Hub-Signature-256` (HMAC-SHA256 of the
//! body with the exercise's hook secret, or the runner's), queues a build of the pushed branch of
//! every exercise whose git source is that repository. Nothing is acted on before a signature
//! checks out.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::BuildError;
use super::Builds;
use crate::{domain::Slug, exercises::ExerciseSpec, store::BuildRecord};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("missing or invalid X-Hub-Signature-256")]
    BadSignature,
    #[error("the body is not a push event: {0}")]
    BadPayload(String),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC of `body` under `secret`, in constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: Option<String>,
    repository: Repository,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
}

pub struct HookOutcome {
    pub builds: Vec<BuildRecord>,
    pub ignored: Option<&'static str>,
}

/// Handles one delivery. `event` is `X-GitHub-Event` (`push` or `ping`).
pub async fn handle(
    builds: &Arc<Builds>,
    event: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<HookOutcome, HookError> {
    let signature = signature.ok_or(HookError::BadSignature)?;
    let global = builds.settings.git_hook_secret.as_ref().map(|s| s.expose().as_bytes().to_vec());
    if event == Some("ping") {
        // A ping proves the secret is set up; accept it when any known secret signs it.
        let mut secrets: Vec<Vec<u8>> = global.into_iter().collect();
        for r in builds.store.exercises().await.map_err(BuildError::from)? {
            if let Ok(spec) = serde_json::from_str::<ExerciseSpec>(&r.spec) {
                secrets.extend(spec.hook_secret.map(String::into_bytes));
            }
        }
        return if secrets.iter().any(|s| verify(s, body, signature)) {
            Ok(HookOutcome { builds: vec![], ignored: Some("ping") })
        } else {
            Err(HookError::BadSignature)
        };
    }
    let push: Push = match serde_json::from_slice(body) {
        Ok(p) => p,
        // Unsigned garbage is a 401 like any unsigned delivery; only a signed one learns more.
        Err(e) if global.as_ref().is_some_and(|g| verify(g, body, signature)) => {
            return Err(HookError::BadPayload(e.to_string()))
        }
        Err(_) => return Err(HookError::BadSignature),
    };
    let urls: Vec<String> =
        [&push.repository.clone_url, &push.repository.html_url, &push.repository.ssh_url, &push.repository.git_url]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
    let mut matched = Vec::new();
    let mut verified_any = global.as_ref().is_some_and(|g| verify(g, body, signature));
    for r in builds.store.exercises().await.map_err(BuildError::from)? {
        let Ok(spec) = serde_json::from_str::<ExerciseSpec>(&r.spec) else {
            continue;
        };
        let Some(git) = spec.git else { continue };
        let same_repo =
            urls.iter().any(|u| u == &git.url || u.trim_end_matches(".git") == git.url.trim_end_matches(".git"));
        if !same_repo {
            continue;
        }
        let ok = match (&spec.hook_secret, &global) {
            (Some(own), _) => verify(own.as_bytes(), body, signature),
            (None, Some(g)) => verify(g, body, signature),
            (None, None) => false,
        };
        if ok {
            verified_any = true;
            let pushed = push.git_ref.strip_prefix("refs/heads/").or_else(|| push.git_ref.strip_prefix("refs/tags/"));
            if pushed == Some(git.git_ref.as_str()) {
                matched.push((r.slug.clone(), git));
            }
        }
    }
    if !verified_any {
        return Err(HookError::BadSignature);
    }
    if matched.is_empty() {
        return Ok(HookOutcome { builds: vec![], ignored: Some("no exercise queued this repository and branch") });
    }
    let mut queued = Vec::new();
    for (slug, git) in matched {
        let slug = Slug::parse(&slug).map_err(BuildError::from)?;
        let commit = push.after.clone().filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
        queued.push(super::submit_git(builds, &slug, Some(git), commit).await?);
    }
    Ok(HookOutcome { builds: queued, ignored: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"body");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify(b"secret", b"body", &good));
        assert!(!verify(b"other", b"body", &good));
        assert!(!verify(b"secret", b"body2", &good));
        assert!(!verify(b"secret", b"body", "sha1=abc"));
        assert!(!verify(b"secret", b"body", "sha256=zz"));
    }
}
