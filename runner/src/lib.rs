//! exercise-runner: hardened Docker sandboxes for programming exercises.
//!
//! See `docs/ARCHITECTURE.md` for the code map and the invariants.

pub mod alerts;
pub mod app;
pub mod base_image;
pub mod builds;
pub mod checks;
pub mod cli;
pub mod config;
pub mod deploys;
pub mod docker;
pub mod domain;
pub mod engine;
pub mod error;
pub mod exercises;
pub mod fleet;
pub mod http;
pub mod ide;
pub mod learner_files;
pub mod lifecycle;
pub mod metrics;
pub mod outbox;
pub mod rounds;
pub mod runs;
pub mod secret_box;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod webhooks;
pub mod workspaces;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::App;
pub use config::Settings;

/// Runs the service on `listener` until `shutdown` completes, then drains requests and stops the
/// background loops. Sandboxes keep running: the next start adopts them (invariant 2).
/// The API's and the IDE's connections send small writes (keystrokes, terminal output): with
/// Nagle's algorithm a write behind an unacknowledged one waits for the peer's delayed ACK.
fn without_nagle(listener: TcpListener) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

pub async fn launch(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    settings.resolve_secrets()?;
    if settings.public_url.is_empty() {
        settings.public_url = format!("http://{}", listener.local_addr()?);
    }
    let app = App::build(settings).await?;
    // A fleet node has one runner (`runner fleet-node` stops any other first): a start lease of
    // its sessions is a stopped runner's, and this start's reconciliation takes those starts
    // over now instead of once the leases lapse (a create answered during a rolling update).
    if app.fleet.enabled() {
        let released = app.store.release_start_leases_here().await.context("releasing a stopped runner's leases")?;
        if released > 0 {
            tracing::info!(sessions = released, "took over the starts a stopped runner of this node had leased");
        }
    }
    let report = sessions::reconcile::reconcile_once(&app.sessions).await.context("reconciling at start")?;
    tracing::info!(?report, "reconciled at start");
    builds::recover(&app.builds).await.context("recovering builds at start")?;
    app.runs.maintain().await.context("finishing the runs a stopped runner left, and removing their sandboxes")?;
    // Not fatal: sessions work without it; builds are refused and /readyz says why.
    let isolation = builds::isolation::refresh(&app.builds).await;
    tracing::info!(network = %isolation.network, mode = isolation.mode, isolated = isolation.ok, "build network checked");
    deploys::deploy::recover(&app.deploys).await.context("recovering deploys at start")?;
    let sealed = deploys::seal_legacy_secrets(&app.deploys).await.context("sealing stored app secrets")?;
    if sealed > 0 {
        tracing::info!(apps = sealed, "sealed the secrets of apps stored in clear by an older runner");
    }

    let cancel = app.shutdown.clone();
    let background = [
        tokio::spawn(sessions::reaper::run(app.sessions.clone(), cancel.clone())),
        tokio::spawn(sessions::reconcile::run(app.sessions.clone(), cancel.clone())),
        tokio::spawn(sessions::events::run(app.sessions.clone(), cancel.clone())),
        tokio::spawn(sessions::pool::run(app.sessions.clone(), cancel.clone())),
        tokio::spawn(sessions::health::run(app.sessions.clone(), cancel.clone())),
        tokio::spawn(builds::run_worker(app.builds.clone(), cancel.clone())),
        tokio::spawn(builds::isolation::run(app.builds.clone(), cancel.clone())),
        app.ide.spawn_background(cancel.clone()),
        tokio::spawn(deploys::supervise::run(app.deploys.clone(), cancel.clone())),
        tokio::spawn(usage::run(app.usage.clone(), cancel.clone())),
        outbox::spawn(app.outbox.clone(), cancel.clone()),
        tokio::spawn(app.files.clone().run_retention(cancel.clone())),
        tokio::spawn(runs::run(app.runs.clone(), cancel.clone())),
        tokio::spawn(fleet::run(app.fleet.clone(), cancel.clone())),
        tokio::spawn(fleet::images::run(app.fleet.clone(), cancel.clone())),
        tokio::spawn(alerts::run(
            app.alerts.clone(),
            alerts::Sources {
                usage: app.usage.clone(),
                sessions: app.sessions.clone(),
                store: app.store.clone(),
                engine: app.engine.clone(),
            },
            cancel.clone(),
        )),
    ];
    // A fleet node copies running sessions' workspaces off the node now and then.
    let copies = (app.fleet.enabled() && !app.settings.fleet.copy_every.is_zero()).then(|| {
        tokio::spawn(learner_files::copies::run(app.files.clone(), app.settings.fleet.copy_every, cancel.clone()))
    });
    let ingress = match app.settings.ingress_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the ingress to {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "ingress listening");
            let router = app.deploys.ingress.router();
            let stop = cancel.clone();
            Some(tokio::spawn(async move {
                let _ =
                    axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            }))
        }
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, instance = %app.settings.instance,
        runtime = app.settings.runtime.as_str(), "exercise-runner listening");
    let router = http::router::build_axum_router(app.clone());
    // Relays from the fleet's other runners, over TLS, when the fleet has its certificate.
    let relays = match (&app.fleet.tls, app.settings.fleet.listen) {
        (Some(tls), Some(addr)) => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding the fleet listener to {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "fleet listener (TLS) listening");
            Some(tokio::spawn(fleet::tls::serve(listener, tls.server_config()?, router.clone(), cancel.clone())))
        }
        _ => None,
    };
    let served = axum::serve(without_nagle(listener), router).with_graceful_shutdown(shutdown).await;
    cancel.cancel();
    for task in background.into_iter().chain(ingress).chain(copies).chain(relays) {
        let _ = task.await;
    }
    // Runs in flight end with the process: their leases are given up, so the next runner to
    // look finishes them at once instead of after `runs::LEASE`.
    if let Err(e) = app.runs.release().await {
        tracing::warn!(error = %format!("{e:#}"), "could not give up the leases of this runner's runs");
    }
    tracing::info!("exercise-runner stopped");
    served.context("serving HTTP")
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Runs only the web IDE proxy (`runner ide-proxy`): the same `/ide/{session}/` routes as
/// `runner serve`, against the same database and Docker engine, so the proxy can be scaled apart
/// from the API. It needs the same `RUNNER_IDE_SECRET` as the runners that issue `ide_url`s.
pub async fn launch_ide_proxy(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)?;
    settings.resolve_secrets()?;
    // Only what the proxy uses: sessions in the database, exec streams and checks on the
    // engine. No workspaces (no losetup), no builds, no apps.
    let metrics = Arc::new(metrics::Metrics::new());
    let store = store::Store::connect(settings.database_url.expose()).await?;
    let engine = docker::connect(&settings.instance, metrics.clone()).await?;
    let checks = checks::Checks::new(&settings, store.clone(), engine.clone(), metrics);
    let ide = ide::proxy(&settings, store, engine, checks, None);
    let cancel = CancellationToken::new();
    let background = ide.spawn_background(cancel.clone());
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(http::ops::healthz))
        .merge(ide.router())
        .layer(axum::middleware::from_fn(http::middleware::request_id));
    tracing::info!(addr = %listener.local_addr()?, "exercise-runner IDE proxy listening");
    let served = axum::serve(without_nagle(listener), router).with_graceful_shutdown(shutdown).await;
    cancel.cancel();
    let _ = background.await;
    served.context("serving HTTP")
}

#[cfg(test)]
mod tests {
    /// The integration tests and benchmarks live in the workspace's top-level `tests/` and
    /// `benches/`, outside this package, so cargo does not discover them: each file must be a
    /// `[[test]]` (or `[[bench]]`) of `runner/Cargo.toml`, or it would silently never run.
    #[test]
    fn every_integration_test_and_bench_file_is_a_target() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest: toml::Table = std::fs::read_to_string(here.join("Cargo.toml")).unwrap().parse().unwrap();
        for (kind, dir) in [("test", "tests"), ("bench", "benches")] {
            let listed: Vec<String> = manifest
                .get(kind)
                .and_then(|t| t.as_array())
                .map(|targets| targets.iter().filter_map(|t| t.get("path")?.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let mut files: Vec<String> = std::fs::read_dir(here.join("..").join(dir))
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".rs"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no files in {dir}/");
            for f in files {
                let path = format!("../{dir}/{f}");
                assert!(listed.contains(&path), "{path} is not a [[{kind}]] of runner/Cargo.toml: it would never run");
            }
        }
    }

    /// The imports among the runner's top-level modules (outside `#[cfg(test)]`).
    fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let modules: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|n| n.trim_end_matches(".rs").to_string())
            .filter(|n| n != "main" && n != "lib")
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        fn sources(path: &std::path::Path, out: &mut Vec<String>) {
            if path.is_dir() {
                for e in std::fs::read_dir(path).unwrap() {
                    sources(&e.unwrap().path(), out);
                }
            } else if path.is_file() && path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                out.push(code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n"));
            }
        }
        let mut graph = std::collections::BTreeMap::new();
        for m in &modules {
            let mut texts = vec![];
            sources(&src.join(format!("{m}.rs")), &mut texts);
            sources(&src.join(m), &mut texts);
            let mut deps = std::collections::BTreeSet::new();
            for text in texts {
                // `crate::name` and the top-level names of `use crate::{a, b::c, …};`.
                for (i, _) in text.match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    if let Some(group) = rest.strip_prefix('{') {
                        let mut depth = 0;
                        let mut name = String::new();
                        let mut at_start = true;
                        for c in group.chars() {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => at_start = true,
                                c if at_start && (c.is_ascii_alphanumeric() || c == '_') => name.push(c),
                                _ if at_start && !name.is_empty() => {
                                    deps.insert(std::mem::take(&mut name));
                                    at_start = false;
                                }
                                _ => {}
                            }
                        }
                        if !name.is_empty() {
                            deps.insert(name);
                        }
                    } else {
                        let name: String =
                            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        deps.insert(name);
                    }
                }
            }
            deps.retain(|d| d != m && modules.contains(d));
            graph.insert(m.clone(), deps);
        }
        graph
    }

    /// docs/ARCHITECTURE.md's "Module dependencies" block is the code's, and the code has no cycle.
    #[test]
    fn the_module_graph_is_acyclic_and_documented() {
        let graph = module_graph();
        // Kahn's algorithm: a module whose imports are all placed can be placed.
        let mut placed = std::collections::BTreeSet::new();
        while placed.len() < graph.len() {
            let next: Vec<&String> = graph
                .iter()
                .filter(|(m, d)| !placed.contains(*m) && d.iter().all(|x| placed.contains(x)))
                .map(|(m, _)| m)
                .collect();
            assert!(
                !next.is_empty(),
                "an import cycle among: {:?}",
                graph.keys().filter(|m| !placed.contains(*m)).collect::<Vec<_>>()
            );
            placed.extend(next.into_iter().cloned());
        }
        let doc =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md"))
                .unwrap();
        let section =
            doc.split("## Module dependencies").nth(1).expect("the section").split("```").nth(1).expect("its block");
        let mut documented = std::collections::BTreeMap::new();
        for line in section.lines().filter(|l| l.contains('→')) {
            let (module, rest) = line.split_once('→').unwrap();
            let deps: std::collections::BTreeSet<String> = rest
                .split("  (")
                .next()
                .unwrap()
                .split(',')
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty())
                .collect();
            documented.insert(module.trim().to_string(), deps);
        }
        for (m, deps) in &graph {
            assert_eq!(documented.get(m), Some(deps), "docs/ARCHITECTURE.md, Module dependencies: the line of `{m}`");
        }
        for m in documented.keys() {
            assert!(graph.contains_key(m), "docs/ARCHITECTURE.md lists `{m}`, which is not a module");
        }
    }
}
