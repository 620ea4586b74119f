//! `exercise.toml`: what an exercise repository says about itself (see docs/AUTHORING.md).

use serde::{Deserialize, Serialize};

use crate::{
    domain::{CheckSpec, Invalid, Limits, PoolSpec, Slug},
    exercises::{check_limits, check_workdir, LimitOverrides},
};

pub const FILE: &str = "exercise.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    slug: String,
    title: String,
    check: Option<Vec<String>>,
    check_timeout_secs: Option<u64>,
    workdir: Option<String>,
    learner_files: Option<String>,
    hidden_tests: Option<String>,
    solution: Option<String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    writable: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    limits: LimitOverrides,
    /// A refactoring exercise: the starting files pass the check by design (exercism's
    /// `ledger`); the self-test then wants it to pass on both.
    #[serde(default)]
    starting_files_pass: bool,
    /// A warm pool of ready sandboxes (`[pool] min = 1, max = 4`); the operator's default when absent.
    pool: Option<PoolSpec>,
}

/// A parsed and validated manifest.
/// Where hidden tests are when the manifest does not say.
pub const DEFAULT_HIDDEN_TESTS: &str = "tests";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub slug: String,
    pub title: String,
    pub check: CheckSpec,
    pub workdir: String,
    pub learner_files: String,
    pub hidden_tests: String,
    pub solution: String,
    pub network: bool,
    pub writable: Vec<String>,
    pub limits: LimitOverrides,
    /// The starting files pass the check by design (refactoring exercises).
    #[serde(default)]
    pub starting_files_pass: bool,
    /// The exercise's warm pool, when the manifest asks for one (checked against the operator's
    /// cap when a build validates the tree).
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

fn field(name: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid::new("invalid_manifest", format!("{FILE}: {name}: {reason}"))
}

fn repo_dir(name: &str, v: Option<String>, default: &str) -> Result<String, Invalid> {
    let v = v.unwrap_or_else(|| default.to_string());
    let ok = !v.is_empty()
        && v.len() <= 100
        && !v.starts_with('/')
        && v.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b));
    if ok {
        Ok(v)
    } else {
        Err(field(name, format!("{v:?} must be a relative directory inside the repository")))
    }
}

impl Manifest {
    /// Parses and validates; every error names the field and the reason.
    pub fn parse(text: &str, caps: &Limits) -> Result<Manifest, Invalid> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
                    Invalid::new("invalid_manifest", format!("{FILE}: line {line_no} ({line}): {msg}"))
                }
                None => Invalid::new("invalid_manifest", format!("{FILE}: {msg}")),
            }
        })?;
        Slug::parse(&raw.slug).map_err(|e| field("slug", e.message))?;
        let title = raw.title.trim().to_string();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(field("title", "must be 1-200 characters"));
        }
        let command = raw.check.unwrap_or_else(|| CheckSpec::default().command);
        if command.is_empty()
            || command.len() > 64
            || command.iter().any(|a| a.is_empty() || a.len() > 4096 || a.contains('\0'))
        {
            return Err(field("check", "must be a non-empty list of non-empty arguments"));
        }
        let timeout_secs = raw.check_timeout_secs.unwrap_or(30);
        if !(1..=600).contains(&timeout_secs) {
            return Err(field("check_timeout_secs", "must be between 1 and 600"));
        }
        let workdir = raw.workdir.unwrap_or_else(|| "/workspace".into());
        check_workdir(&workdir).map_err(|e| field("workdir", e.message))?;
        for w in &raw.writable {
            check_workdir(w).map_err(|e| field("writable", e.message))?;
            if w == &workdir {
                return Err(field("writable", "the workdir is writable already"));
            }
        }
        if raw.writable.len() > 8 {
            return Err(field("writable", "at most 8 paths"));
        }
        for s in &raw.services {
            let ok =
                !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
            if !ok {
                return Err(field("services", format!("{s:?} is not a supervisord program name")));
            }
        }
        check_limits(caps, &raw.limits).map_err(|e| field("limits", e.message))?;
        if let Some(pool) = &raw.pool {
            pool.check(u32::MAX).map_err(|e| field("pool", e.message))?;
        }
        let learner_files = repo_dir("learner_files", raw.learner_files, "exercise")?;
        let hidden_tests = repo_dir("hidden_tests", raw.hidden_tests, DEFAULT_HIDDEN_TESTS)?;
        let solution = repo_dir("solution", raw.solution, "solution")?;
        Ok(Manifest {
            slug: raw.slug,
            title,
            check: CheckSpec { command, timeout_secs, services: raw.services },
            workdir,
            learner_files,
            hidden_tests,
            solution,
            network: raw.network,
            writable: raw.writable,
            limits: raw.limits,
            starting_files_pass: raw.starting_files_pass,
            pool: raw.pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest, Invalid> {
        Manifest::parse(s, &Limits::DEFAULT_CAPS)
    }

    #[test]
    fn defaults_fill_in() {
        let m = parse("slug = \"a\"\ntitle = \"A\"\n").unwrap();
        assert_eq!(m.check.command, vec!["make", "test"]);
        assert_eq!(m.workdir, "/workspace");
        assert_eq!(
            (m.learner_files.as_str(), m.hidden_tests.as_str(), m.solution.as_str()),
            ("exercise", "tests", "solution")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("title = \"A\"", "slug"),
            ("slug = \"A_B\"\ntitle = \"A\"", "slug"),
            ("slug = \"a\"\ntitle = \"\"", "title"),
            ("slug = \"a\"\ntitle = \"A\"\ncheck = []", "check"),
            ("slug = \"a\"\ntitle = \"A\"\nworkdir = \"/etc\"", "workdir"),
            ("slug = \"a\"\ntitle = \"A\"\nsolution = \"../x\"", "solution"),
            ("slug = \"a\"\ntitle = \"A\"\n[limits]\nmemory_mb = 99999999", "limits"),
            ("slug = \"a\"\ntitle = \"A\"\nservices = [\"a b\"]", "services"),
            ("slug = \"a\"\ntitle = \"A\"\nbogus = 1", "bogus"),
            ("slug = \"a\"\ntitle = \"A\"\n[pool]\nmin = 3\nmax = 1", "pool"),
            ("slug = \"a\"\ntitle = \"A\"\ncheck_timeout_secs = \"x\"", "check_timeout_secs"),
        ];
        for (text, name) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, "invalid_manifest");
            assert!(e.message.contains(name), "{text:?}: {}", e.message);
        }
    }
}
