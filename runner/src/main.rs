use clap::{Parser, Subcommand};

/// exercise-runner: hardened Docker sandboxes for programming exercises.
#[derive(Parser)]
#[command(name = "runner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (configuration from RUNNER_* environment variables; see README).
    Serve,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            let settings = runner::Settings::from_env()?;
            runner::telemetry::init(settings.log_json);
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
            runner::launch(settings, listener, runner::shutdown_signal()).await
        }
    }
}
