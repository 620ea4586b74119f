//! `runner deploy`, `runner rollback` and `runner run`: managed apps, with their steps or output
//! shown as they happen.

use serde_json::{json, Value};

use super::{client::Client, output, output::Mode, CliError, Exit};
use crate::lifecycle::DeployState;

const DEPLOY_FIRST: &[&str] = &["id", "app", "kind", "version", "state", "failure_reason", "previous_version"];

pub async fn deploy(client: &Client, out: Mode, app: &str, version: &str) -> Result<Exit, CliError> {
    let started = client.post_json(&["v1", "apps", app, "deploys"], &json!({ "version": version })).await?;
    follow_deploy(client, out, &started.value).await
}

pub async fn rollback(client: &Client, out: Mode, app: &str, to: Option<&str>) -> Result<Exit, CliError> {
    let body = match to {
        Some(v) => json!({ "version": v }),
        None => json!({}),
    };
    let started = client.post_json(&["v1", "apps", app, "rollback"], &body).await?;
    follow_deploy(client, out, &started.value).await
}

/// Follows a deploy's log to its end (stdout, or stderr under `--json`); exit 0 when it succeeded.
async fn follow_deploy(client: &Client, out: Mode, d: &Value) -> Result<Exit, CliError> {
    let id = d["id"].as_str().unwrap_or_default();
    eprintln!("{} {id}: {} to {}", output::cell(&d["kind"]), output::cell(&d["app"]), output::cell(&d["version"]));
    let r = client.open_stream(client.get_request(&["v1", "deploys", id, "logs"])).await?;
    if out.json {
        client.copy_stream(r, &mut std::io::stderr(), false, None).await?;
    } else {
        client.copy_stream(r, &mut std::io::stdout(), false, None).await?;
    }
    let done = client.get(&["v1", "deploys", id], &[]).await?;
    let ok = done.value["state"] == DeployState::Succeeded.as_str();
    if out.json {
        out.print(&done, |_| String::new());
    } else if ok {
        eprintln!("succeeded: {} runs {}", output::cell(&done.value["app"]), output::cell(&done.value["version"]));
    } else {
        eprintln!("{}", output::fields(&done.value, DEPLOY_FIRST));
    }
    Ok(if ok { Exit::Success } else { Exit::Failed })
}

/// Runs a one-off command, its output streamed; exits with the command's status (`exit_code`
/// under `--json`). The runner says `[exit 125]` when it could not start it, as `docker run` does.
pub async fn run_command(client: &Client, out: Mode, app: &str, command: Vec<String>) -> Result<Exit, CliError> {
    let req = client.post_request(&["v1", "apps", app, "commands"], &json!({ "command": command }));
    let r = client.open_stream(req).await?;
    let mut all = Vec::new();
    let tail = if out.json {
        client.copy_stream(r, &mut std::io::sink(), false, Some(&mut all)).await?
    } else {
        client.copy_stream(r, &mut std::io::stdout(), false, None).await?
    };
    let code = exit_code_of(&tail);
    if out.json {
        let output = String::from_utf8_lossy(&all);
        let output = output.strip_suffix(&format!("\n[exit {}]\n", code.unwrap_or(-1))).unwrap_or(&output);
        output::print_line(&json!({ "exit_code": code, "output": output }).to_string());
    }
    match code {
        Some(n) => Ok(Exit::Command(u8::try_from(n).unwrap_or(1))),
        None => {
            eprintln!("runner: the output ended without the command's exit status");
            Ok(Exit::Unavailable)
        }
    }
}

/// The `[exit N]` the runner ends a command's output with.
fn exit_code_of(tail: &str) -> Option<i64> {
    tail.lines().rev().find_map(|l| l.strip_prefix("[exit ")?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_commands_exit_status_is_its_last_line() {
        assert_eq!(super::exit_code_of("migrated\n\n[exit 0]\n"), Some(0));
        assert_eq!(super::exit_code_of("boom\n[error: no such image]\n[exit 125]\n"), Some(125));
        assert_eq!(super::exit_code_of("cut off mid-way"), None);
    }
}
