//! Validated domain values. Each `parse` is the only way in, so a value that exists is valid.

use std::fmt;

mod cidr;
mod health;
mod image;
mod sandbox;
/// The session lifecycle lives with the others in [`crate::lifecycle`].
pub use crate::lifecycle::{SessionState, LOCAL_NODE};
pub use cidr::Cidr;
pub use health::{HealthProbe, AGENT_HEALTHCHECK};
pub use image::{in_registry, normalize_reference, registry_host, repository_name, ImageName};
pub use sandbox::{CheckSpec, Limits, PoolSpec, RunLimits, Runtime, SandboxSpec, NO_IDE, TESTS_DIR, TMPFS_PATHS};

/// A time column (milliseconds since the epoch) as the API shows it: RFC 3339, UTC, milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Input that breaks a rule: a stable code and a message naming the field and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Invalid { code, message: message.into() }
    }
}

/// An exercise slug: `[a-z0-9][a-z0-9-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Slug, Invalid> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(Slug(s.to_string()))
        } else {
            Err(Invalid::new("invalid_slug", format!("exercise slug {s:?} must match [a-z0-9][a-z0-9-]{{0,63}}")))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A learner id as the web app knows it: 1-128 printable characters from a safe set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct LearnerId(String);

impl LearnerId {
    pub fn parse(s: &str) -> Result<LearnerId, Invalid> {
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.@:+".contains(&c));
        if ok {
            Ok(LearnerId(s.to_string()))
        } else {
            Err(Invalid::new("invalid_learner", "learner must be 1-128 characters of letters, digits and - _ . @ : +"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LearnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "0", "python-basics-1", &"a".repeat(64)] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "../x", &"a".repeat(65), "é"] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn learners() {
        assert!(LearnerId::parse("user-42@example.org").is_ok());
        for bad in ["", "a b", "a/b", "x;rm", &"a".repeat(129)] {
            assert!(LearnerId::parse(bad).is_err(), "{bad}");
        }
    }
}
