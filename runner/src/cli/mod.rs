//! The `runner` command line: the service's own subcommands (`serve`, `ide-proxy`, `images`)
//! and a client of a running runner's API for its three users — operators (`sessions`, `deploy`,
//! `rollback`, `run`), exercise authors (`exercises`, `builds`) and the course site's developers.
//!
//! The client finds the runner and its token the way `runner serve` does (`target.rs`), prints
//! people's tables and `key: value` lines or, with `--json`, the API's JSON (`output.rs`), and ends
//! with an exit code scripts can rely on (`error.rs`).

mod apps;
mod archive;
mod client;
mod error;
mod exercises;
mod output;
mod sessions;
mod target;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

pub use error::{CliError, Exit};
pub use target::{Target, TokenSource, UrlSource};

/// The exit codes, as `--help` shows them (and the README's "Command line").
pub const EXIT_CODES: &str = "\
Exit codes of the client commands (sessions, exercises, builds, deploy, rollback, run):
  0  success
  1  the operation failed (a build failed, a deploy failed)
  2  usage error: bad arguments, or settings the CLI cannot use (no token found)
  3  not found (HTTP 404)
  4  refused, conflict or invalid (HTTP 4xx other than 404)
  5  the runner is unreachable or failed (HTTP 5xx)
`runner run` exits with the command's own status once the command ran.";

const TARGET_HELP: &str = "\
The runner and its token are found as `runner serve` finds its settings: --config FILE (or
RUNNER_CONFIG) under the RUNNER_* environment. URL: --url (RUNNER_URL), else RUNNER_PUBLIC_URL,
else http:// and RUNNER_LISTEN (0.0.0.0 as 127.0.0.1). Token: RUNNER_API_TOKEN, else the
api-token file `runner serve` wrote in RUNNER_DATA_DIR.";

/// exercise-runner: hardened Docker sandboxes for programming exercises.
#[derive(Parser)]
#[command(name = "runner", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// A TOML settings file under the RUNNER_* variables (keys: the variable names without
    /// RUNNER_, lower case; the environment wins). The client commands read it too.
    #[arg(long, global = true, env = "RUNNER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service (configuration from RUNNER_* environment variables and --config; see README).
    Serve,
    /// Run only the web IDE proxy (/ide/{session}/), against the same database and engine.
    IdeProxy,
    /// The fleet's Swarm task on a node: runs `runner serve` beside itself, privileged, on the
    /// node's engine, and follows it (deploy/fleet-stack.yml; see docs/ARCHITECTURE.md, "Fleet").
    FleetNode {
        /// Only check that the node's runner answers /healthz (the stack's health check).
        #[arg(long)]
        health: bool,
    },
    /// Manage the images sandboxes are made from.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Build exercise-runner/base:latest (making debian:bookworm-slim first when it is missing).
    BuildBase {
        /// Rebuild even when the image is up to date.
        #[arg(long)]
        force: bool,
        /// The ide-agent binary to put in the image (default: beside this binary).
        #[arg(long, value_name = "PATH")]
        ide_agent: Option<PathBuf>,
    },
}

/// How a client command reaches the runner and prints what it got.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
pub struct ClientOptions {
    /// The runner's base URL (default: RUNNER_PUBLIC_URL, else http:// and RUNNER_LISTEN).
    #[arg(long, global = true, env = "RUNNER_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Print the API's JSON (one document) on stdout instead of tables and lines; logs that are
    /// followed go to stderr.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands that talk to a running runner over its API.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Learners' sessions: list them, show one, end one.
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Sessions {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Exercises: list and show them, build one from a directory or git, list and publish versions.
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Exercises {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: exercises::ExercisesCommand,
    },
    /// Builds of exercises: list, show (with their log), cancel.
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Builds {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: exercises::BuildsCommand,
    },
    /// Deploy VERSION (an image tag) of a managed app, following its steps; exit 0 when it succeeded.
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Deploy {
        #[command(flatten)]
        options: ClientOptions,
        /// The managed app's name (as in PUT /v1/apps/{app}).
        app: String,
        /// The image tag to deploy.
        version: String,
    },
    /// Roll an app back to its previous successful version (or --to VERSION), following the steps.
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Rollback {
        #[command(flatten)]
        options: ClientOptions,
        /// The managed app's name.
        app: String,
        /// The version to roll back to (default: the one before the current one).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Run a one-off command in the app's current image with its environment:
    /// runner run APP -- CMD... (exits with the command's status).
    #[command(after_help = format!("{TARGET_HELP}\n\n{EXIT_CODES}"))]
    Run {
        #[command(flatten)]
        options: ClientOptions,
        /// The managed app's name.
        app: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

/// Runs a client command; what the process should exit with. Errors are printed here, for people.
pub async fn run(config: Option<&Path>, command: ClientCommand) -> Exit {
    let options = match &command {
        ClientCommand::Sessions { options, .. }
        | ClientCommand::Exercises { options, .. }
        | ClientCommand::Builds { options, .. }
        | ClientCommand::Deploy { options, .. }
        | ClientCommand::Rollback { options, .. }
        | ClientCommand::Run { options, .. } => options.clone(),
    };
    let outcome = async {
        let target = Target::from_environment(config, options.url.as_deref())?;
        let client = client::Client::new(target)?;
        let out = output::Mode { json: options.json };
        match command {
            ClientCommand::Sessions { command, .. } => sessions::run(&client, out, command).await,
            ClientCommand::Exercises { command, .. } => exercises::run(&client, out, command).await,
            ClientCommand::Builds { command, .. } => exercises::run_builds(&client, out, command).await,
            ClientCommand::Deploy { app, version, .. } => apps::deploy(&client, out, &app, &version).await,
            ClientCommand::Rollback { app, to, .. } => apps::rollback(&client, out, &app, to.as_deref()).await,
            ClientCommand::Run { app, command, .. } => apps::run_command(&client, out, &app, command).await,
        }
    }
    .await;
    match outcome {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("runner: {e}");
            e.exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("runner").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed_and_everything_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = vec![];
        walk(&cmd, "runner", &mut missing);
        assert!(missing.is_empty(), "without a description in --help: {missing:?}");
        let help = cmd.clone().render_help().to_string();
        for code in ["0  success", "3  not found", "5  the runner is unreachable"] {
            assert!(help.contains(code), "--help does not list exit code {code:?}:\n{help}");
        }
    }

    #[test]
    fn the_client_commands_parse_as_documented() {
        let cli =
            parse(&["sessions", "list", "--learner", "ada", "--state", "running", "--limit", "5", "--json"]).unwrap();
        let Command::Client(ClientCommand::Sessions { options, command }) = cli.command else { panic!("not sessions") };
        assert!(options.json);
        let sessions::SessionsCommand::List { learner, exercise, state, limit } = command else { panic!("not list") };
        assert_eq!(
            (learner.as_deref(), exercise, state.as_deref(), limit),
            (Some("ada"), None, Some("running"), Some(5))
        );

        // --json and --url are accepted before or after the nested subcommand.
        let cli = parse(&["exercises", "--json", "--url", "http://127.0.0.1:9", "list"]).unwrap();
        let Command::Client(ClientCommand::Exercises { options, .. }) = cli.command else { panic!() };
        assert!(options.json);
        assert_eq!(options.url.as_deref(), Some("http://127.0.0.1:9"));

        let cli = parse(&["exercises", "build", "fizz", "--git", "https://example.com/r.git", "--ref", "v2"]).unwrap();
        let Command::Client(ClientCommand::Exercises { command, .. }) = cli.command else { panic!() };
        let exercises::ExercisesCommand::Build { slug, source } = command else { panic!() };
        assert_eq!(slug, "fizz");
        assert_eq!(source.git.as_deref(), Some("https://example.com/r.git"));
        assert_eq!(source.git_ref.as_deref(), Some("v2"));
        assert!(parse(&["exercises", "build", "fizz"]).is_ok(), "no source: the exercise's git source");

        let cli = parse(&["run", "web", "--", "bin/rails", "db:migrate:status"]).unwrap();
        let Command::Client(ClientCommand::Run { app, command, .. }) = cli.command else { panic!() };
        assert_eq!((app.as_str(), command), ("web", vec!["bin/rails".to_string(), "db:migrate:status".to_string()]));
        assert!(parse(&["builds", "show", "b1", "--logs"]).is_ok());
        assert!(parse(&["rollback", "web", "--to", "v41"]).is_ok());
        assert!(parse(&["serve"]).is_ok());
    }

    #[test]
    fn usage_errors_are_clap_errors_that_exit_2() {
        for args in [
            &["sessions", "list", "--state", "sleeping"][..],
            &["sessions", "list", "--limit", "0"],
            &["sessions", "show"],
            &["exercises", "build", "fizz", "--dir", ".", "--git", "https://example.com/r.git"],
            &["exercises", "build", "fizz", "--ref", "main"],
            &["exercises", "publish", "fizz"],
            &["run", "web"],
            &["serve", "--json"],
        ] {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(e.exit_code(), i32::from(Exit::Usage.code()), "{args:?}: {e}");
        }
    }
}
