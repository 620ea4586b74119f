//! `runner exercises list|show|build|versions|publish` and `runner builds list|show|cancel`.

use std::{io::Write, path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{archive, client::Client, output, output::Mode, CliError, Exit};
use crate::lifecycle::BuildState;

#[derive(Subcommand)]
pub enum ExercisesCommand {
    /// List the exercises: slug, current version, image, title.
    List,
    /// Show one exercise: its image, limits, check, git source and current version.
    Show {
        /// The exercise's slug.
        slug: String,
    },
    /// Build an exercise from a directory, a git repository, or (with neither) its configured git
    /// source; follows the build's log and exits 0 when the build succeeded, 1 when it failed.
    Build {
        /// The exercise's slug (the one its exercise.toml names).
        slug: String,
        #[command(flatten)]
        source: BuildSource,
    },
    /// List an exercise's versions (built images), marking the current one.
    Versions {
        /// The exercise's slug.
        slug: String,
    },
    /// Publish a version (or roll back to an older one): new sessions get its image.
    Publish {
        /// The exercise's slug.
        slug: String,
        /// The version to publish (from `runner exercises versions SLUG`).
        version: String,
    },
}

/// Where a build's repository comes from.
#[derive(Args, Debug)]
pub struct BuildSource {
    /// Upload this directory (its files, directories and symlinks; `.git` left out) as a tar.
    #[arg(long, value_name = "PATH", conflicts_with = "git")]
    pub dir: Option<PathBuf>,
    /// Build from this git repository instead (the runner clones it).
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// The branch, tag or commit of --git (default: main).
    #[arg(long = "ref", value_name = "REF", requires = "git")]
    pub git_ref: Option<String>,
}

#[derive(Subcommand)]
pub enum BuildsCommand {
    /// List an exercise's builds, newest first.
    List {
        /// The exercise's slug.
        slug: String,
    },
    /// Show one build: state, version, image, self-test, failure reason.
    Show {
        /// The build's id (printed by `runner exercises build`, listed by `runner builds list`).
        id: String,
        /// Also print the build's log, following it while the build runs.
        #[arg(long)]
        logs: bool,
    },
    /// Cancel a queued or running build.
    Cancel {
        /// The build's id.
        id: String,
    },
}

const BUILD_FIRST: &[&str] = &["id", "exercise", "state", "failure_reason", "version", "image", "cached", "created_at"];
const EXERCISE_FIRST: &[&str] = &["slug", "title", "current_version", "image", "git", "auto_publish"];

pub async fn run(client: &Client, out: Mode, command: ExercisesCommand) -> Result<Exit, CliError> {
    match command {
        ExercisesCommand::List => {
            let reply = client.get(&["v1", "exercises"], &[]).await?;
            out.print(&reply, |v| exercises_table(&v["exercises"]));
        }
        ExercisesCommand::Show { slug } => {
            let reply = client.get(&["v1", "exercises", &slug], &[]).await?;
            out.print(&reply, |v| output::fields(v, EXERCISE_FIRST));
        }
        ExercisesCommand::Build { slug, source } => return build(client, out, &slug, source).await,
        ExercisesCommand::Versions { slug } => {
            let reply = client.get(&["v1", "exercises", &slug, "versions"], &[]).await?;
            out.print(&reply, |v| versions_table(&v["versions"]));
        }
        ExercisesCommand::Publish { slug, version } => {
            let path = ["v1", "exercises", &slug, "versions", &version, "publish"];
            let reply = client.post_json(&path, &json!({})).await?;
            out.print(&reply, |v| output::fields(v, EXERCISE_FIRST));
        }
    }
    Ok(Exit::Success)
}

pub async fn run_builds(client: &Client, out: Mode, command: BuildsCommand) -> Result<Exit, CliError> {
    match command {
        BuildsCommand::List { slug } => {
            let reply = client.get(&["v1", "exercises", &slug, "builds"], &[]).await?;
            out.print(&reply, |v| builds_table(&v["builds"]));
        }
        BuildsCommand::Show { id, logs: false } => {
            let reply = client.get(&["v1", "builds", &id], &[]).await?;
            out.print(&reply, |v| output::fields(v, BUILD_FIRST));
        }
        BuildsCommand::Show { id, logs: true } => {
            let reply = follow_build(client, out, &id).await?;
            out.print(&reply, |v| format!("\n{}", output::fields(v, BUILD_FIRST)));
        }
        BuildsCommand::Cancel { id } => {
            let reply = client.post_json(&["v1", "builds", &id, "cancel"], &json!({})).await?;
            out.print(&reply, |v| output::fields(v, BUILD_FIRST));
        }
    }
    Ok(Exit::Success)
}

async fn build(client: &Client, out: Mode, slug: &str, source: BuildSource) -> Result<Exit, CliError> {
    let path = ["v1", "exercises", slug, "builds"];
    let started = match (source.dir, source.git) {
        (Some(dir), _) => {
            let mut skipped = vec![];
            let tar = archive::tar_of_dir(&dir, &mut skipped)?;
            for s in skipped {
                eprintln!("runner: left out {s} (not a file, directory or symlink)");
            }
            client.post_tar(&path, tar).await?
        }
        (None, Some(url)) => {
            let mut git = json!({ "url": url });
            if let Some(r) = source.git_ref {
                git["ref"] = Value::String(r);
            }
            client.post_json(&path, &json!({ "git": git })).await?
        }
        (None, None) => client.post_json(&path, &json!({})).await.map_err(|e| match e {
            // The exercise has no git source of its own: say what the CLI takes instead.
            CliError::Api { status: 422, code, message, request_id, retry_after } => CliError::Api {
                status: 422,
                code,
                message: format!("{message}; or give --dir PATH or --git URL"),
                request_id,
                retry_after,
            },
            other => other,
        })?,
    };
    let id = started.value["id"].as_str().unwrap_or_default().to_string();
    eprintln!("build {id} of {slug}: {}", output::cell(&started.value["state"]));
    let done = follow_build(client, out, &id).await?;
    let b = &done.value;
    let ok = b["state"] == BuildState::Succeeded.as_str();
    if out.json {
        out.print(&done, |_| String::new());
    } else if ok {
        let cached = if b["cached"] == true { " (the same content was built before)" } else { "" };
        eprintln!("succeeded: version {} image {}{cached}", output::cell(&b["version"]), output::cell(&b["image"]));
    } else {
        eprintln!("{}: {}", output::cell(&b["state"]), output::cell(&b["failure_reason"]));
    }
    Ok(if ok { Exit::Success } else { Exit::Failed })
}

/// Prints a build's log as it is written (stdout, or stderr under `--json`) until the build ends;
/// the build as it ended.
async fn follow_build(client: &Client, out: Mode, id: &str) -> Result<super::client::Reply, CliError> {
    // The build must exist before its log is asked for: an unknown id is a 404, not an empty log.
    let first = client.get(&["v1", "builds", id], &[]).await?;
    let r = client.open_stream(client.get_request(&["v1", "builds", id, "logs"])).await?;
    if out.json {
        client.copy_stream(r, &mut std::io::stderr(), true, None).await?;
    } else {
        client.copy_stream(r, &mut std::io::stdout(), true, None).await?;
        let _ = std::io::stdout().flush();
    }
    if !is_active(&first.value) {
        return Ok(first);
    }
    // The log ends when the build does; a moment's lag between the two is allowed for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = client.get(&["v1", "builds", id], &[]).await?;
        if !is_active(&now.value) || tokio::time::Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_active(build: &Value) -> bool {
    build["state"].as_str().and_then(BuildState::parse).is_some_and(BuildState::is_active)
}

fn exercises_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(list)
        .map(|e| {
            vec![
                output::cell(&e["slug"]),
                output::cell(&e["current_version"]),
                output::cell(&e["image"]),
                output::cell(&e["title"]),
            ]
        })
        .collect();
    output::table(&["SLUG", "VERSION", "IMAGE", "TITLE"], &rows)
}

fn builds_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(list)
        .map(|b| {
            vec![
                output::cell(&b["id"]),
                output::cell(&b["state"]),
                output::cell(&b["version"]),
                output::when(&b["created_at"]),
                output::cell(&b["failure_reason"]),
            ]
        })
        .collect();
    output::table(&["ID", "STATE", "VERSION", "CREATED", "FAILURE"], &rows)
}

fn versions_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = rows_of(list)
        .map(|v| {
            vec![
                output::cell(&v["version"]),
                if v["current"] == true { "*".into() } else { String::new() },
                output::when(&v["created_at"]),
                output::when(&v["published_at"]),
                output::cell(&v["image"]),
            ]
        })
        .collect();
    output::table(&["VERSION", "CURRENT", "CREATED", "PUBLISHED", "IMAGE"], &rows)
}

fn rows_of(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().map(Vec::as_slice).unwrap_or_default().iter()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn exercises_builds_and_versions_as_tables() {
        let exercises = json!([
            {"slug": "python-fizzbuzz", "current_version": "v1a2b", "image": "exercise-runner/ex-python-fizzbuzz:v1a2b", "title": "FizzBuzz"},
            {"slug": "hello", "current_version": null, "image": null, "title": null},
        ]);
        assert_eq!(
            super::exercises_table(&exercises),
            "SLUG             VERSION  IMAGE                                     TITLE\n\
             python-fizzbuzz  v1a2b    exercise-runner/ex-python-fizzbuzz:v1a2b  FizzBuzz\n\
             hello            -        -                                         -"
        );
        let builds = json!([{"id": "b1", "state": "failed", "version": null, "created_at": "2026-12-01T10:00:00.000Z",
                             "failure_reason": "the check passes on the starting files"}]);
        assert_eq!(
            super::builds_table(&builds),
            "ID  STATE   VERSION  CREATED               FAILURE\n\
             b1  failed  -        2026-12-01T10:00:00Z  the check passes on the starting files"
        );
        let versions = json!([{"version": "v2", "current": true, "created_at": "2026-12-01T10:00:00.000Z",
                               "published_at": null, "image": "img:v2"}]);
        assert_eq!(
            super::versions_table(&versions),
            "VERSION  CURRENT  CREATED               PUBLISHED  IMAGE\n\
             v2       *        2026-12-01T10:00:00Z  -          img:v2"
        );
    }
}
