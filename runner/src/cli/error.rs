//! What a client command ends with: its exit code, and an error written for people.

use std::fmt;

/// The exit codes scripts can rely on (`EXIT_CODES` in `--help`, the README's "Command line").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// The operation ran and failed: a build or a deploy failed, a command exited non-zero.
    Failed,
    /// Bad arguments (clap exits with 2 itself), or settings the CLI cannot use.
    Usage,
    /// HTTP 404.
    NotFound,
    /// HTTP 4xx other than 404: refused (401, 429), conflict (409), invalid (400, 413, 415, 422).
    Refused,
    /// The runner could not be reached, broke the connection, or answered 5xx.
    Unavailable,
    /// `runner run`: the command ran, and this is its own exit status (as `ssh` and `docker run`
    /// pass it on).
    Command(u8),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Refused => 4,
            Exit::Unavailable => 5,
            Exit::Command(status) => status,
        }
    }

    /// The exit code of an HTTP error status.
    pub fn of_status(status: u16) -> Exit {
        match status {
            404 => Exit::NotFound,
            400..=499 => Exit::Refused,
            // 5xx, and anything a runner never answers (a proxy's odd status).
            _ => Exit::Unavailable,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[derive(Debug)]
pub enum CliError {
    /// The API answered with an error: its status and the body's `error` object.
    Api { status: u16, code: Option<String>, message: String, request_id: Option<String>, retry_after: Option<u64> },
    /// No answer: the connection was refused, timed out or broke (`url` and where it came from).
    Unreachable { url: String, source: String, cause: String },
    /// The CLI cannot work with what it was given: its settings, the token, a directory.
    Setup(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Api { status, .. } => Exit::of_status(*status),
            CliError::Unreachable { .. } => Exit::Unavailable,
            CliError::Setup(_) => Exit::Usage,
        }
    }

    /// The error of a response with an error status, from its body (`{"error": {code, message,
    /// request_id}}`), or its status line when the body is not the runner's (a proxy's page).
    pub fn from_response(status: u16, reason: &str, retry_after: Option<u64>, body: &str) -> CliError {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let e = &v["error"];
        let text = |k: &str| e[k].as_str().map(str::to_string);
        let message = text("message").unwrap_or_else(|| {
            let first: String =
                body.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(120).collect();
            if first.trim().is_empty() {
                format!("the runner answered {status} {reason}")
            } else {
                format!("the runner answered {status} {reason}: {first}")
            }
        });
        CliError::Api { status, code: text("code"), message, request_id: text("request_id"), retry_after }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api { status, code, message, request_id, retry_after } => {
                write!(f, "{message} (")?;
                if let Some(code) = code {
                    write!(f, "{code}, ")?;
                }
                write!(f, "HTTP {status}")?;
                if let Some(id) = request_id {
                    write!(f, ", request {id}")?;
                }
                write!(f, ")")?;
                if let Some(secs) = retry_after {
                    write!(f, "; try again in {secs} s")?;
                }
                Ok(())
            }
            CliError::Unreachable { url, source, cause } => {
                write!(f, "cannot reach the runner at {url} ({source}): {cause}")
            }
            CliError::Setup(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        for (status, code) in [
            (404, 3),
            (400, 4),
            (401, 4),
            (409, 4),
            (413, 4),
            (415, 4),
            (422, 4),
            (429, 4),
            (500, 5),
            (502, 5),
            (503, 5),
        ] {
            assert_eq!(Exit::of_status(status).code(), code, "HTTP {status}");
        }
        let codes: Vec<u8> =
            [Exit::Success, Exit::Failed, Exit::Usage, Exit::NotFound, Exit::Refused, Exit::Unavailable]
                .map(Exit::code)
                .to_vec();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
        let unreachable = CliError::Unreachable { url: "u".into(), source: "s".into(), cause: "c".into() };
        assert_eq!(unreachable.exit(), Exit::Unavailable);
        assert_eq!(CliError::Setup("no token".into()).exit(), Exit::Usage);
        // The same table is the one --help and the README show.
        for (code, words) in
            [(0, "success"), (1, "failed"), (2, "usage"), (3, "not found"), (4, "refused"), (5, "unreachable")]
        {
            assert!(
                super::super::EXIT_CODES
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(words)),
                "EXIT_CODES: {code} {words}"
            );
        }
        let readme = include_str!("../../../README.md");
        assert!(readme.contains(super::super::EXIT_CODES), "README's Command line section shows EXIT_CODES verbatim");
    }

    #[test]
    fn api_errors_read_as_sentences_with_their_code() {
        let body = r#"{"error": {"code": "session_not_found", "message": "session \"x\" does not exist", "request_id": "r-1"}}"#;
        let e = CliError::from_response(404, "Not Found", None, body);
        assert_eq!(e.to_string(), "session \"x\" does not exist (session_not_found, HTTP 404, request r-1)");
        assert_eq!(e.exit(), Exit::NotFound);
        let e = CliError::from_response(
            503,
            "Service Unavailable",
            Some(30),
            r#"{"error": {"code": "build_queue_full", "message": "the build queue is full"}}"#,
        );
        assert_eq!(e.to_string(), "the build queue is full (build_queue_full, HTTP 503); try again in 30 s");
        // A body that is not the runner's: its status line and a clean first line, nothing more.
        let e = CliError::from_response(502, "Bad Gateway", None, "<html>\x1b[31mupstream down</html>\nsecond line");
        assert_eq!(e.to_string(), "the runner answered 502 Bad Gateway: <html>[31mupstream down</html> (HTTP 502)");
        assert_eq!(
            CliError::from_response(500, "Internal Server Error", None, "").to_string(),
            "the runner answered 500 Internal Server Error (HTTP 500)"
        );
    }
}
