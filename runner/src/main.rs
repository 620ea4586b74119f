use std::path::Path;

use clap::Parser;
use runner::cli::{Cli, Command, ImagesCommand};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Usage errors end inside `parse` with clap's message and exit code 2.
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command {
        // The client prints its own errors and picks its exit code (runner::cli::EXIT_CODES).
        Command::Client(command) => return runner::cli::run(config, command).await.into(),
        Command::Serve => serve(config).await,
        Command::IdeProxy => ide_proxy(config).await,
        Command::FleetNode { health } => return fleet_node(health).await,
        Command::Images { command: ImagesCommand::BuildBase { force, ide_agent } } => {
            build_base(force, ide_agent).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, for operators (no backtrace dump, whatever
            // RUST_BACKTRACE says).
            eprintln!("runner: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = runner::Settings::load(config)?;
    runner::telemetry::init(settings.log_json, settings.log_filter.as_deref());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
    runner::launch(settings, listener, runner::shutdown_signal()).await
}

async fn ide_proxy(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = runner::Settings::load(config)?;
    runner::telemetry::init(settings.log_json, settings.log_filter.as_deref());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
    runner::launch_ide_proxy(settings, listener, runner::shutdown_signal()).await
}

async fn fleet_node(health: bool) -> std::process::ExitCode {
    let port = std::env::var("RUNNER_LISTEN")
        .ok()
        .and_then(|l| l.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .unwrap_or(8080);
    let result = if health {
        runner::docker::fleet_node::health(port).await.map(|()| 0)
    } else {
        runner::docker::fleet_node::run(runner::shutdown_signal()).await
    };
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("runner fleet-node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn build_base(force: bool, ide_agent: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    runner::telemetry::init(false, std::env::var("RUNNER_LOG").ok().as_deref());
    let metrics = std::sync::Arc::new(runner::metrics::Metrics::new());
    let engine = runner::docker::connect("images", metrics).await?;
    let agent = ide_agent
        .or_else(runner::base_image::default_agent_path)
        .ok_or_else(|| anyhow::anyhow!("pass --ide-agent PATH"))?;
    runner::base_image::ensure(&engine, &agent, force, |line| eprintln!("[build-base] {line}")).await
}
