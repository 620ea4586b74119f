//! A step's status from what was observed, and the comparison of its output: pure.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The status of a run, its compile step or one test case: a small stable set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accepted,
    WrongAnswer,
    /// Past its CPU time.
    TimeLimit,
    /// Past its wall-clock time (sleeping, blocked, or starved).
    WallTimeLimit,
    /// The kernel OOM-killed a process of it (the cgroup's record).
    MemoryLimit,
    /// Stdout or stderr past `output_bytes`.
    OutputLimit,
    /// A non-zero exit or a signal (`exit_code`, `signal`).
    RuntimeError,
    CompileError,
    /// The runner could not run it (the engine failed); not the submission's fault.
    InternalError,
}

impl Verdict {
    pub const ALL: [Verdict; 9] = [
        Verdict::Accepted,
        Verdict::WrongAnswer,
        Verdict::TimeLimit,
        Verdict::WallTimeLimit,
        Verdict::MemoryLimit,
        Verdict::OutputLimit,
        Verdict::RuntimeError,
        Verdict::CompileError,
        Verdict::InternalError,
    ];
    pub fn parse(s: &str) -> Option<Verdict> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::WrongAnswer => "wrong_answer",
            Verdict::TimeLimit => "time_limit",
            Verdict::WallTimeLimit => "wall_time_limit",
            Verdict::MemoryLimit => "memory_limit",
            Verdict::OutputLimit => "output_limit",
            Verdict::RuntimeError => "runtime_error",
            Verdict::CompileError => "compile_error",
            Verdict::InternalError => "internal_error",
        }
    }
}

/// How stdout is compared with a test case's expected output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// Equal after trailing whitespace is removed from each line and trailing blank lines are
    /// dropped (what most judges call the default).
    #[default]
    Trimmed,
    /// Byte for byte.
    Exact,
    /// The same whitespace-separated tokens.
    Tokens,
}

/// Whether `actual` matches `expected` under `mode`.
pub fn compare(mode: Compare, actual: &str, expected: &str) -> bool {
    match mode {
        Compare::Exact => actual == expected,
        Compare::Tokens => actual.split_whitespace().eq(expected.split_whitespace()),
        Compare::Trimmed => {
            let lines = |s: &str| {
                let mut v: Vec<String> = s.lines().map(|l| l.trim_end().to_string()).collect();
                while v.last().is_some_and(|l| l.is_empty()) {
                    v.pop();
                }
                v
            };
            lines(actual) == lines(expected)
        }
    }
}

/// What the runner saw of one step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// The runner ended it at this limit (`TimeLimit` or `WallTimeLimit`).
    pub killed: Option<Verdict>,
    /// The cgroup's OOM-kill counter went up during it.
    pub oom: bool,
    /// Stdout or stderr went past the cap.
    pub output_cut: bool,
    /// The reader's own backstop deadline passed (the runner's kill did not end it).
    pub timed_out: bool,
    /// Its exit code, when it ended by itself.
    pub exit_code: Option<i64>,
}

/// The status of a step. An OOM kill wins over the exit code it causes (137), the runner's own
/// kills over what they cause, and `matched` (the comparison, when there is an expected output)
/// only decides a clean exit.
pub fn verdict(o: &Observed, matched: Option<bool>) -> Verdict {
    if o.oom {
        return Verdict::MemoryLimit;
    }
    if let Some(v) = o.killed {
        return v;
    }
    if o.output_cut {
        return Verdict::OutputLimit;
    }
    if o.timed_out {
        return Verdict::WallTimeLimit;
    }
    match o.exit_code {
        Some(0) => match matched {
            Some(false) => Verdict::WrongAnswer,
            _ => Verdict::Accepted,
        },
        Some(_) => Verdict::RuntimeError,
        None => Verdict::InternalError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons() {
        assert!(compare(Compare::Trimmed, "1 \n2\n\n", "1\n2"));
        assert!(!compare(Compare::Trimmed, "1\n2", "1\n3"));
        assert!(!compare(Compare::Trimmed, " 1\n", "1\n"), "leading space counts");
        assert!(!compare(Compare::Exact, "1\n", "1"));
        assert!(compare(Compare::Exact, "1\n", "1\n"));
        assert!(compare(Compare::Tokens, "1  2\n3", "1 2 3\n"));
    }

    #[test]
    fn the_cause_wins_over_its_consequences() {
        let oom = Observed { oom: true, exit_code: Some(137), ..Default::default() };
        assert_eq!(verdict(&oom, None), Verdict::MemoryLimit);
        let plain_137 = Observed { exit_code: Some(137), ..Default::default() };
        assert_eq!(verdict(&plain_137, None), Verdict::RuntimeError, "exit 137 alone is not a memory verdict");
        let cpu = Observed { killed: Some(Verdict::TimeLimit), ..Default::default() };
        assert_eq!(verdict(&cpu, Some(true)), Verdict::TimeLimit);
        let flood = Observed { output_cut: true, ..Default::default() };
        assert_eq!(verdict(&flood, None), Verdict::OutputLimit);
        let ok = Observed { exit_code: Some(0), ..Default::default() };
        assert_eq!(verdict(&ok, None), Verdict::Accepted);
        assert_eq!(verdict(&ok, Some(false)), Verdict::WrongAnswer);
        let crash = Observed { exit_code: Some(1), ..Default::default() };
        assert_eq!(verdict(&crash, Some(true)), Verdict::RuntimeError);
    }
}
