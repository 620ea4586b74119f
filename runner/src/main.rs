use clap::{Parser, Subcommand};

/// exercise-runner: hardened Docker sandboxes for programming exercises.
#[derive(Parser)]
#[command(name = "runner", version, about)]
struct Cli {
    /// A TOML settings file under the RUNNER_* variables (keys: the variable names without
    /// RUNNER_, lower case; the environment wins).
    #[arg(long, global = true, env = "RUNNER_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (configuration from RUNNER_* environment variables and --config; see README).
    Serve,
    /// Run only the web IDE proxy (/ide/{session}/), against the same database and engine.
    IdeProxy,
    /// Deploy VERSION (an image tag) of a managed app, following its steps (RUNNER_URL, RUNNER_API_TOKEN).
    Deploy { app: String, version: String },
    /// Roll an app back to its previous successful version (or --to VERSION).
    Rollback {
        app: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Run a one-off command in the app's current image with its environment: runner run APP -- CMD...
    Run {
        app: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage the images sandboxes are made from.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build exercise-runner/base:latest (making debian:bookworm-slim first when it is missing).
    BuildBase {
        /// Rebuild even when the image is up to date.
        #[arg(long)]
        force: bool,
        /// The ide-agent binary to put in the image (default: beside this binary).
        #[arg(long)]
        ide_agent: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // An error ends the process with its chain of causes on one line, for operators (no
    // backtrace dump, whatever RUST_BACKTRACE says).
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let settings = runner::Settings::load(cli.config.as_deref())?;
            runner::telemetry::init(settings.log_json, settings.log_filter.as_deref());
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
            runner::launch(settings, listener, runner::shutdown_signal()).await
        }
        Command::Deploy { app, version } => {
            let ok = runner::cli::Client::from_env()?.deploy(&app, &version).await?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Rollback { app, to } => {
            let ok = runner::cli::Client::from_env()?.rollback(&app, to.as_deref()).await?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Run { app, command } => {
            let code = runner::cli::Client::from_env()?.run(&app, command).await?;
            std::process::exit(code);
        }
        Command::IdeProxy => {
            let settings = runner::Settings::load(cli.config.as_deref())?;
            runner::telemetry::init(settings.log_json, settings.log_filter.as_deref());
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
            runner::launch_ide_proxy(settings, listener, runner::shutdown_signal()).await
        }
        Command::Images { command: ImagesCommand::BuildBase { force, ide_agent } } => {
            runner::telemetry::init(false, std::env::var("RUNNER_LOG").ok().as_deref());
            let metrics = std::sync::Arc::new(runner::metrics::Metrics::new());
            let engine = runner::docker::connect("images", metrics).await?;
            let agent = ide_agent
                .or_else(runner::base_image::default_agent_path)
                .ok_or_else(|| anyhow::anyhow!("pass --ide-agent PATH"))?;
            runner::base_image::ensure(&engine, &agent, force, |line| eprintln!("[build-base] {line}")).await
        }
    }
}
