//! ide-agent: the browser IDE inside every sandbox built on the base image.
//!
//! `ide-agent serve` is started by supervisord as the learner. It listens on a Unix socket (the
//! sandbox has no network) and serves the learner's files and terminals on real PTYs (the page comes from the proxy).
//! `ide-agent connect SOCKET` joins its stdin/stdout to that socket: the runner's web-ide-proxy
//! runs it through `docker exec`, whose stdio streams work under runc and gVisor alike. The agent
//! also listens on an abstract Unix socket ([`NETNS_SOCKET`]), which belongs to the sandbox's
//! network namespace rather than to any file: under runc the proxy connects to it from inside that
//! namespace, without an exec.
//! `ide-agent health` is the base image's health check (the agent answers, no service is stuck);
//! with `--wait-ms N` it polls until healthy or N ms passed, so the runner learns that a sandbox
//! just started is ready with one exec instead of one per poll.
//! `ide-agent wake-supervisord` is the base image's way around supervisord's first second of
//! idling (`ready.rs`).

mod files;
mod health;
mod ready;
mod socket;
mod terminals;
mod web;

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;

pub const DEFAULT_SOCKET: &str = "/run/ide-agent/agent.sock";
/// The abstract socket's name (no file: it lives in the network namespace). Keep in step with
/// `runner::ide::AGENT_NETNS_SOCKET`.
pub const NETNS_SOCKET: &str = "exercise-runner/ide-agent";

pub struct Agent {
    pub root: PathBuf,
    pub terminals: terminals::Terminals,
}

fn usage() -> ! {
    eprintln!(
        "usage: ide-agent serve [--socket PATH] [--root DIR]\n       ide-agent connect [SOCKET]\n       ide-agent health [--wait-ms N]\n       ide-agent wake-supervisord"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let mut socket = PathBuf::from(DEFAULT_SOCKET);
            let mut root = std::env::current_dir()?;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--socket" => socket = it.next().unwrap_or_else(|| usage()).into(),
                    "--root" => root = it.next().unwrap_or_else(|| usage()).into(),
                    _ => usage(),
                }
            }
            tracing_subscriber::fmt().with_writer(std::io::stderr).init();
            serve(socket, root).await
        }
        Some("connect") => connect(args.get(1).map(String::as_str).unwrap_or(DEFAULT_SOCKET)).await,
        Some("health") => {
            let wait = match args.get(1..) {
                Some([flag, ms]) if flag == "--wait-ms" => ms.parse().unwrap_or_else(|_| usage()),
                Some([]) | None => 0,
                Some(_) => usage(),
            };
            health::wait(DEFAULT_SOCKET, health::SUPERVISOR_SOCKET, std::time::Duration::from_millis(wait)).await
        }
        Some("wake-supervisord") => {
            ready::wake_supervisord(health::SUPERVISOR_SOCKET, std::time::Duration::from_secs(10)).await;
            Ok(())
        }
        _ => usage(),
    }
}

async fn serve(socket: PathBuf, root: PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let agent = Arc::new(Agent { root: root.canonicalize()?, terminals: terminals::Terminals::default() });
    tracing::info!(socket = %socket.display(), root = %agent.root.display(), "ide-agent listening");
    let app = web::router(agent);
    // The abstract socket is a shortcut for the proxy; without it the file socket still serves.
    match bind_abstract(NETNS_SOCKET) {
        Ok(netns) => {
            tracing::info!(name = NETNS_SOCKET, "ide-agent listening on the abstract socket too");
            use std::future::IntoFuture;
            tokio::try_join!(
                axum::serve(socket::Listener(listener), app.clone()).into_future(),
                axum::serve(socket::Listener(netns), app).into_future()
            )?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "no abstract socket: the proxy reaches this agent through exec only");
            axum::serve(socket::Listener(listener), app).await?;
        }
    }
    Ok(())
}

fn bind_abstract(name: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Pipes stdin to the socket and the socket to stdout until either side ends.
async fn connect(socket: &str) -> anyhow::Result<()> {
    // An agent still starting (the sandbox just came up) is waited for here, inside the sandbox,
    // instead of with a new exec per retry from the host.
    let stream = ready::connect(socket, ready::CONNECT_WAIT).await?;
    let (mut from_agent, mut to_agent) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        let _ = tokio::io::copy(&mut stdin, &mut to_agent).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_agent).await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_agent, &mut stdout).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
    };
    // The agent closing its side ends the connection; stdin closing only half-closes it.
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
    }
    Ok(())
}
