//! web-ide-proxy overhead: WebSocket echo round trips and throughput to the IDE agent in a real
//! sandbox, through the proxy (browser → runner → exec stream → agent) versus the same transport
//! without the proxy (exec stream → agent), measured side by side in one run.
//!
//!     cargo bench --bench ide_proxy                (needs scripts/host-setup.sh + build-base)
//!     BENCH_N=2000 BENCH_RUNTIME=runsc cargo bench --bench ide_proxy

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use runner::{
    config::{Secret, Settings},
    domain::Runtime,
    metrics::Metrics,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const TOKEN: &str = "bench-token";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Round trips one at a time, then a pipelined burst; returns (latencies, messages per second).
async fn measure<S>(ws: &mut S, n: usize) -> anyhow::Result<(Vec<Duration>, f64)>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let payload = "x".repeat(64);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::Text(payload.clone().into())).await?;
        loop {
            if let Some(Ok(Message::Text(_))) = ws.next().await {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    // Throughput: a window of 64 messages in flight.
    let total = n * 4;
    let t = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < total {
        while sent < total && sent - got < 64 {
            ws.feed(Message::Text(payload.clone().into())).await?;
            sent += 1;
        }
        ws.flush().await?;
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            got += 1;
        }
    }
    lat.sort();
    Ok((lat, total as f64 / t.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let runtime: Runtime = std::env::var("BENCH_RUNTIME").unwrap_or_else(|_| "runc".into()).parse()?;
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;
    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.api_token = Some(Secret::new(TOKEN));
    settings.instance = instance.clone();
    settings.runtime = runtime;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .put(format!("{base}/v1/exercises/bench-ide"))
        .bearer_auth(TOKEN)
        .json(&json!({"image": "exercise-runner/base:latest"}))
        .send()
        .await?
        .error_for_status()?;
    let s: Value = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(TOKEN)
        .json(&json!({"learner": "bench", "exercise": "bench-ide"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sid = s["id"].as_str().unwrap().to_string();
    let login = client.get(s["ide_url"].as_str().unwrap()).send().await?;
    let cookie = login.headers()["set-cookie"].to_str()?.split(';').next().unwrap().to_string();
    // Wait for the agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/ide/{sid}/api/info")).header("cookie", &cookie).send().await?.status() != 200 {
        anyhow::ensure!(Instant::now() < deadline, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without the proxy: the same exec-stream transport, straight to the agent.
    let engine = runner::docker::connect(&instance, Arc::new(Metrics::new())).await?;
    let container = engine.list_sandboxes().await?.into_iter().next().unwrap().id;
    let cmd = vec![runner::ide::AGENT_BIN.into(), "connect".into(), runner::ide::AGENT_SOCKET.into()];
    let io = engine.exec_stream(&container, cmd, "1000:1000").await?;
    let (mut direct, _) = tokio_tungstenite::client_async("ws://agent/api/echo", io).await?;
    let (d_lat, d_rate) = measure(&mut direct, n).await?;

    // Through the proxy, as a browser.
    let mut req = format!("ws://{}/ide/{sid}/api/echo", base.trim_start_matches("http://")).into_client_request()?;
    req.headers_mut().insert("cookie", cookie.parse()?);
    req.headers_mut().insert("origin", base.parse()?);
    let (mut proxied, _) = tokio_tungstenite::connect_async(req).await?;
    let (p_lat, p_rate) = measure(&mut proxied, n).await?;

    println!("WebSocket echo to the IDE agent, runtime {}, {n} round trips + {} pipelined", runtime.as_str(), n * 4);
    println!(
        "{:<34} p50 {:>6.3} ms  p99 {:>6.3} ms  {:>8.0} msg/s",
        "exec stream, no proxy",
        ms(pct(&d_lat, 0.5)),
        ms(pct(&d_lat, 0.99)),
        d_rate
    );
    println!(
        "{:<34} p50 {:>6.3} ms  p99 {:>6.3} ms  {:>8.0} msg/s",
        "through web-ide-proxy",
        ms(pct(&p_lat, 0.5)),
        ms(pct(&p_lat, 0.99)),
        p_rate
    );
    println!(
        "ratio proxy/direct: latency p50 {:.2}x p99 {:.2}x; throughput {:.2}x",
        ms(pct(&p_lat, 0.5)) / ms(pct(&d_lat, 0.5)),
        ms(pct(&p_lat, 0.99)) / ms(pct(&d_lat, 0.99)),
        p_rate / d_rate
    );
    let _ = direct.close(None).await;
    let _ = proxied.close(None).await;
    client.delete(format!("{base}/v1/sessions/{sid}")).bearer_auth(TOKEN).send().await?;
    let _ = tx.send(());
    server.await??;
    for c in engine.list_sandboxes().await? {
        engine.remove_container(&c.id).await?;
    }
    Ok(())
}
