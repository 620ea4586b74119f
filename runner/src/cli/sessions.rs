//! `runner sessions list|show|end`.

use clap::{builder::PossibleValuesParser, Subcommand};
use serde_json::Value;

use super::{client::Client, output, output::Mode, CliError, Exit};
use crate::lifecycle::SessionState;

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first.
    List {
        /// Only this learner's sessions.
        #[arg(long, value_name = "LEARNER")]
        learner: Option<String>,
        /// Only sessions of this exercise (its slug).
        #[arg(long, value_name = "SLUG")]
        exercise: Option<String>,
        /// Only sessions in this state.
        #[arg(long, value_name = "STATE", value_parser = PossibleValuesParser::new(SessionState::ALL.map(SessionState::as_str)))]
        state: Option<String>,
        /// At most this many (1-1000; the runner's default is 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Show one session: its state, limits, deadlines and (while it is live) a fresh IDE link.
    Show {
        /// The session's id (from `runner sessions list`).
        id: String,
    },
    /// End a session: its container is removed, the learner's workspace is kept.
    End {
        /// The session's id.
        id: String,
    },
}

/// The keys shown first for one session.
const FIRST: &[&str] =
    &["id", "learner", "exercise", "state", "failure_reason", "created_at", "expires_at", "ended_at"];

pub async fn run(client: &Client, out: Mode, command: SessionsCommand) -> Result<Exit, CliError> {
    match command {
        SessionsCommand::List { learner, exercise, state, limit } => {
            let query: Vec<(&str, String)> = [
                ("learner", learner),
                ("exercise", exercise),
                ("state", state),
                ("limit", limit.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            let reply = client.get(&["v1", "sessions"], &query).await?;
            out.print(&reply, |v| list_table(&v["sessions"]));
        }
        SessionsCommand::Show { id } => {
            let reply = client.get(&["v1", "sessions", &id], &[]).await?;
            out.print(&reply, |v| output::fields(v, FIRST));
        }
        SessionsCommand::End { id } => {
            let reply = client.delete(&["v1", "sessions", &id]).await?;
            out.print(&reply, |v| output::fields(v, FIRST));
        }
    }
    Ok(Exit::Success)
}

fn list_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                output::cell(&s["id"]),
                output::cell(&s["learner"]),
                output::cell(&s["exercise"]),
                output::cell(&s["state"]),
                output::when(&s["created_at"]),
                output::when(if s["state"] == "stopped" || s["state"] == "failed" {
                    &s["ended_at"]
                } else {
                    &s["expires_at"]
                }),
            ]
        })
        .collect();
    output::table(&["ID", "LEARNER", "EXERCISE", "STATE", "CREATED", "EXPIRES/ENDED"], &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn sessions_list_as_a_table() {
        let list = json!([
            {"id": "0b6c", "learner": "ada", "exercise": "fizz", "state": "running",
             "created_at": "2026-12-01T10:00:00.000Z", "expires_at": "2026-12-01T10:30:00.000Z"},
            {"id": "77aa", "learner": "grace", "exercise": "fizz", "state": "stopped",
             "created_at": "2026-12-01T09:00:00.000Z", "expires_at": null, "ended_at": "2026-12-01T09:05:00.000Z"},
        ]);
        assert_eq!(
            super::list_table(&list),
            "ID    LEARNER  EXERCISE  STATE    CREATED               EXPIRES/ENDED\n\
             0b6c  ada      fizz      running  2026-12-01T10:00:00Z  2026-12-01T10:30:00Z\n\
             77aa  grace    fizz      stopped  2026-12-01T09:00:00Z  2026-12-01T09:05:00Z"
        );
    }
}
