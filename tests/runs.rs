//! One-shot runs (`POST /v1/runs`): every status produced on purpose, a fresh sandbox per run,
//! bad input refused before anything starts, and a flood contained while the sessions API
//! answers. Needs Docker (fails loudly without it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PYTHON_IMAGE: &str = "exercise-runner/base:latest";

async fn with_python(app: &TestApp) {
    let runtime = json!({
        "image": PYTHON_IMAGE,
        "run": ["python3", "main.py"],
        "compile": ["python3", "-m", "py_compile", "main.py"],
    });
    let (status, v) = app.put("/v1/runtimes/python3", runtime).await;
    assert_eq!(status, 201, "{v}");
}

async fn run(app: &TestApp, body: Value) -> Value {
    let (status, v) = app.post("/v1/runs", body).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn run_py(app: &TestApp, source: &str, limits: Value) -> Value {
    run(app, json!({"runtime": "python3", "files": [{"path": "main.py", "content": source}], "limits": limits})).await
}

/// The run sandboxes of the app's instance: (name, id), prepared ones included.
fn all_run_containers(app: &TestApp) -> Vec<(String, String)> {
    let filter = format!("label=exercise-runner.instance={}", app.instance);
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}} {{.ID}}",
        "--filter",
        &filter,
        "--filter",
        "label=exercise-runner.run",
    ])
    .lines()
    .filter_map(|l| l.split_once(' ').map(|(n, i)| (n.to_string(), i.to_string())))
    .collect()
}

/// The sandboxes of runs (not the prepared ones waiting for a run).
fn run_containers(app: &TestApp) -> Vec<String> {
    all_run_containers(app).into_iter().filter(|(n, _)| !n.contains("-run-prep-")).map(|(_, id)| id).collect()
}

async fn no_run_sandbox_left(app: &TestApp) {
    eventually(Duration::from_secs(20), "every run's sandbox removed after its result", || {
        run_containers(app).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_is_produced_on_purpose() {
    require_docker();
    let app = spawn_app().await;
    with_python(&app).await;

    // Compile once, then each test case on it: right, wrong, and a crash.
    let source = "import sys\nn = int(sys.stdin.read())\nif n < 0: raise SystemExit(3)\nprint(n * 2)\n";
    let v = run(
        &app,
        json!({"runtime": "python3", "files": [{"path": "main.py", "content": source}], "tests": [
            {"stdin": "21", "expected_output": "42\n"},
            {"stdin": "2", "expected_output": "5"},
            {"stdin": "-1", "expected_output": "x"},
        ]}),
    )
    .await;
    assert_eq!(v["compile"]["status"], "accepted", "{v}");
    let statuses: Vec<&str> = v["tests"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "wrong_answer", "runtime_error"], "{v}");
    assert_eq!(v["status"], "wrong_answer", "the first failed test case's: {v}");
    assert_eq!(v["tests"][0]["stdout"], "42\n");
    assert_eq!(v["tests"][2]["exit_code"], 3);
    assert!(v["tests"][0]["wall_ms"].as_u64().unwrap() > 0 && v["tests"][0]["memory_kb"].as_u64().unwrap() > 0, "{v}");

    // The compile step runs under the operator's caps, not the test cases' limits.
    let slow = json!({"image": PYTHON_IMAGE, "run": ["python3", "main.py"],
        "compile": ["python3", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"]});
    assert_eq!(app.put("/v1/runtimes/slow-compiler", slow).await.0, 201);
    let v = run(
        &app,
        json!({"runtime": "slow-compiler", "files": [{"path": "main.py", "content": "print(1)"}],
            "limits": {"time_ms": 100}}),
    )
    .await;
    assert_eq!((v["compile"]["status"].as_str(), v["status"].as_str()), (Some("accepted"), Some("accepted")), "{v}");
    assert!(v["compile"]["time_ms"].as_u64().unwrap() >= 300, "{v}");

    let v = run_py(&app, "def broken(:\n", json!({})).await;
    assert_eq!(v["status"], "compile_error", "{v}");
    assert!(v["compile"]["stderr"].as_str().unwrap().contains("SyntaxError"), "{v}");
    assert_eq!(v["tests"], json!([]), "nothing runs after a failed compile: {v}");

    let v = run_py(&app, "while True:\n    pass\n", json!({"time_ms": 300, "wall_ms": 10000})).await;
    assert_eq!(v["status"], "time_limit", "{v}");
    let cpu = v["tests"][0]["time_ms"].as_u64().unwrap();
    assert!((300..5000).contains(&cpu), "CPU time measured around the limit: {v}");

    let v = run_py(&app, "import time\ntime.sleep(60)\n", json!({"wall_ms": 500})).await;
    assert_eq!(v["status"], "wall_time_limit", "{v}");
    assert!(v["tests"][0]["time_ms"].as_u64().unwrap() < 300, "sleeping uses no CPU: {v}");

    let v = run_py(&app, "x = b'x' * (400 * 1024 * 1024)\n", json!({"memory_mb": 64})).await;
    assert_eq!(v["status"], "memory_limit", "from the cgroup's OOM record: {v}");

    let v = run_py(&app, "while True:\n    print('y' * 1000)\n", json!({"output_bytes": 10000})).await;
    assert_eq!(v["status"], "output_limit", "{v}");
    assert_eq!(v["tests"][0]["truncated"], true);
    assert!(v["tests"][0]["stdout"].as_str().unwrap().len() <= 10000, "{v}");

    // A flood on stderr is stopped at the cap as one on stdout is, not left to the wall limit.
    let v = run_py(&app, "import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", json!({"output_bytes": 10000}))
        .await;
    assert_eq!(v["status"], "output_limit", "{v}");
    assert!(v["tests"][0]["wall_ms"].as_u64().unwrap() < 4000, "{v}");

    // A flood on stderr is stopped at the cap as one on stdout is, not left to the wall limit.
    let flood = "import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n";
    let v = run_py(&app, flood, json!({"output_bytes": 10000, "wall_ms": 10000})).await;
    assert_eq!(v["status"], "output_limit", "{v}");
    assert!(v["tests"][0]["wall_ms"].as_u64().unwrap() < 5000, "stopped at the cap: {v}");

    let v = run_py(&app, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", json!({})).await;
    assert_eq!(v["status"], "runtime_error", "{v}");
    assert_eq!(v["tests"][0]["signal"], 11, "{v}");

    no_run_sandbox_left(&app).await;
    // The next run's sandbox is made ahead of time (and counted so); still one per run.
    let prepared = all_run_containers(&app).len();
    assert!((1..=2 * 4).contains(&prepared), "{prepared} prepared");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_run_sandboxes_total{source=\"prepared\"}"), "{metrics}");
}

/// A run that leaves a file and a background process behind: the next run sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_one_run_is_visible_to_the_next() {
    require_docker();
    let app = spawn_app().await;
    with_python(&app).await;
    let leave = "import subprocess\nopen('left.txt', 'w').write('x')\nopen('/tmp/left.txt', 'w').write('x')\n\
        subprocess.Popen(['sleep', '1000'], start_new_session=True)\nprint('left')\n";
    let v = run_py(&app, leave, json!({})).await;
    assert_eq!(v["status"], "accepted", "{v}");
    let look = "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit()]\n\
        cmds = [open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode() for p in procs]\n\
        print(os.path.exists('left.txt'), os.path.exists('/tmp/left.txt'), any('sleep 1000' in c for c in cmds))\n\
        print(os.getuid(), open('/proc/self/status').read().count('CapEff:\\t0000000000000000'))\n";
    let v = run_py(&app, look, json!({})).await;
    assert_eq!(v["tests"][0]["stdout"], "False False False\n1000 1\n", "{v}");
    // Within one run too: a test case's background process does not reach the next test case.
    let both = r#"import os, subprocess, sys
if sys.argv[1] == 'leave':
    subprocess.Popen(['sleep', '1000'], start_new_session=True)
    print('left')
else:
    procs = [p for p in os.listdir('/proc') if p.isdigit()]
    print(any(b'sleep\x001000' in open(f'/proc/{p}/cmdline', 'rb').read() for p in procs))
"#;
    let v = run(
        &app,
        json!({"runtime": "python3", "files": [{"path": "main.py", "content": both}],
            "tests": [{"args": ["leave"]}, {"args": ["look"], "expected_output": "False"}]}),
    )
    .await;
    assert_eq!(v["status"], "accepted", "{v}");
    // And the sandbox is the sandbox policy's: no network, a read-only root.
    let probe =
        "import socket\ntry:\n    open('/etc/x', 'w')\n    print('root writable')\nexcept OSError:\n    print('ro')\n\
        print([n for _, n in socket.if_nameindex()])\n";
    let v = run_py(&app, probe, json!({})).await;
    assert_eq!(v["tests"][0]["stdout"], "ro\n['lo']\n", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_starts_nothing() {
    require_docker();
    let app = spawn_app_with(|s| s.runs.max_files_bytes = 1000).await;
    with_python(&app).await;
    let file = |path: &str, content: &str| json!({"runtime": "python3", "files": [{"path": path, "content": content}]});
    let cases = [
        (json!({"runtime": "cobol", "files": []}), 404, "runtime_not_found"),
        (file("../../etc/passwd", "x"), 422, "invalid_run"),
        (file("/etc/passwd", "x"), 422, "invalid_run"),
        (file("main.py", &"x".repeat(2000)), 422, "invalid_run"),
        (json!({"runtime": "python3", "limits": {"memory_mb": 100000}}), 422, "invalid_run"),
        (json!({"runtime": "python3", "limits": {"time_ms": 99999999}}), 422, "invalid_run"),
        (json!({"runtime": "python3", "limits": {"memroy_mb": 1}}), 422, "invalid_body"),
        (json!({"runtime": "python3", "stdin": "x", "tests": [{"stdin": "y"}]}), 422, "invalid_run"),
        (
            json!({"runtime": "python3", "files": [{"path": "a", "content": ""}, {"path": "a/b", "content": ""}]}),
            422,
            "invalid_run",
        ),
        (json!({"runtime": "python3", "tests": [{"args": ["a\0b"]}]}), 422, "invalid_run"),
    ];
    for (body, status, code) in cases {
        let (got, v) = app.post("/v1/runs", body.clone()).await;
        assert_eq!((got, v["error"]["code"].as_str().unwrap_or_default()), (status, code), "{body} → {v}");
    }
    let runtimes = [
        (json!({"image": "no-such-image:1", "run": ["x"]}), "image_not_found"),
        (json!({"image": "Not An Image!", "run": ["x"]}), "invalid_image"),
        (json!({"image": PYTHON_IMAGE, "run": []}), "invalid_runtime"),
    ];
    for (body, code) in runtimes {
        let (got, v) = app.put("/v1/runtimes/other", body).await;
        assert_eq!((got, v["error"]["code"].as_str().unwrap_or_default()), (422, code), "{v}");
    }
    assert_eq!(app.put("/v1/runtimes/Bad Name", json!({"image": PYTHON_IMAGE, "run": ["x"]})).await.0, 422);
    assert_eq!(app.get("/v1/runtimes/other").await.0, 404, "a refused runtime is not stored");
    assert_eq!(app.get("/v1/runtimes").await.1["runtimes"].as_array().unwrap().len(), 1);
    assert!(all_run_containers(&app).is_empty(), "a refused run made no sandbox (nor prepared one)");
}

/// A fork bomb stops at the pids limit, and a flood of 100 runs at once is bounded (a few run,
/// some wait, the rest are told to come back) while the sessions API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fork_bomb_and_a_flood_of_runs_are_contained() {
    require_docker();
    let app = spawn_app_with(|s| {
        s.runs.max_concurrent = 2;
        s.runs.max_queued = 6;
    })
    .await;
    with_python(&app).await;
    let bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let v = run_py(&app, bomb, json!({"pids": 16, "wall_ms": 2000})).await;
    let status = v["status"].as_str().unwrap();
    assert!(["time_limit", "wall_time_limit"].contains(&status), "{v}");
    // And a test case after a fork bomb still runs (in the same sandbox once the bomb is ended,
    // or in a new one when the bomb left no room to end it).
    let both = format!(
        "import sys\nif sys.argv[1] == 'bomb':\n{}\nprint('ok')\n",
        bomb.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    );
    let v = run(
        &app,
        json!({"runtime": "python3", "files": [{"path": "main.py", "content": both}],
            "limits": {"pids": 16, "wall_ms": 2000},
            "tests": [{"args": ["bomb"]}, {"args": ["fine"], "expected_output": "ok"}]}),
    )
    .await;
    assert_eq!(v["tests"][1]["status"], "accepted", "{v}");

    let flood = futures_util::future::join_all((0..100).map(|i| {
        let client = app.client.clone();
        let url = app.url("/v1/runs");
        async move {
            let body = json!({"runtime": "python3", "files": [{"path": "main.py", "content": format!("print({i})")}]});
            let r = client.post(url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|h| h.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        }
    }));
    let sessions_api = async {
        let mut answered = 0;
        for _ in 0..10 {
            let (status, _) = app.get("/v1/sessions").await;
            assert_eq!(status, 200);
            answered += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    };
    let (answers, answered) = tokio::join!(flood, sessions_api);
    assert_eq!(answered, 10);
    let done = answers.iter().filter(|(s, _, v)| *s == 200 && v["status"] == "accepted").count();
    let refused = answers
        .iter()
        .filter(|(s, retry, v)| *s == 429 && retry.is_some() && v["error"]["code"] == "runs_queue_full")
        .count();
    assert_eq!(done + refused, 100, "each run either ran or was told to come back: {answers:?}");
    assert!(done >= 2 && refused >= 50, "{done} ran, {refused} refused");
    let metrics = app.get("/metrics").await.1;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("runner_runs_total{runtime=\"python3\",status=\"accepted\"}"), "{metrics}");
    no_run_sandbox_left(&app).await;
}

/// `"wait": false`: 202 with the run's URL at once, the result read there when done, and
/// `run.finished` told (signed) to a webhook that asks for it; the run is listed for its learner
/// and erased with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_is_not_waited_for_is_read_at_its_url_and_told_to_the_web_app() {
    require_docker();
    let app = spawn_app().await;
    with_python(&app).await;
    let receiver = EventReceiver::start(Answer::Ok).await;
    let hook = json!({"url": receiver.url, "secret": RECEIVER_SECRET, "events": ["run.finished"]});
    assert_eq!(app.put("/v1/webhooks/site", hook).await.0, 201);

    let body = json!({"runtime": "python3", "wait": false, "learner": "ada",
        "files": [{"path": "main.py", "content": "print(input()[::-1])"}],
        "tests": [{"stdin": "abc", "expected_output": "cba"}]});
    let r = app.client.post(app.url("/v1/runs")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["url"], location);
    let done = poll_run(&app, &location).await;
    assert_eq!(done["status"], "accepted", "{done}");
    assert_eq!(done["tests"][0]["stdout"], "cba\n");
    assert_eq!(done["learner"], "ada");

    let events = receiver.wait_for(Duration::from_secs(20), "run.finished", |e| !e.is_empty()).await;
    assert_eq!(events[0]["type"], "run.finished");
    assert_eq!(events[0]["data"]["run"], v["id"]);
    assert_eq!(events[0]["data"]["status"], "accepted");
    assert_eq!(events[0]["data"]["url"], location);

    // A run that is waited for is not told: its caller has the answer.
    run(&app, json!({"runtime": "python3", "files": [{"path": "main.py", "content": "print(1)"}]})).await;
    let (_, list) = app.get("/v1/runs?learner=ada").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(app.get("/v1/runs").await.1["runs"].as_array().unwrap().len(), 2);

    let (status, erased) = app.delete("/v1/learners/ada").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["removed"]["records"]["runs"], 1, "{erased}");
    assert_eq!(app.get(&location).await.0, 404, "erased with the learner");
    assert_eq!(app.get("/v1/runs/nope").await.1["error"]["code"], "run_not_found");
    let count = |events: &[Value]| events.iter().filter(|e| e["type"] == "run.finished").count();
    assert_eq!(count(&receiver.events()), 1, "only the run that asked was told");
}

async fn poll_run(app: &TestApp, url: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = app.get(url).await;
        assert_eq!(status, 200, "{v}");
        if v["state"] == "finished" {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A run of an exercise's current image with the caller's command, and the refusals around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exercise_image_runs_the_command_given_and_sources_are_checked() {
    require_docker();
    let app = spawn_app().await;
    with_python(&app).await;
    let (status, v) = app.put("/v1/exercises/sums", json!({"image": PYTHON_IMAGE})).await;
    assert_eq!(status, 201, "{v}");
    let v = run(
        &app,
        json!({"exercise": "sums", "run": ["sh", "sum.sh"],
            "files": [{"path": "sum.sh", "content": "read a b; echo $((a + b))"}],
            "tests": [{"stdin": "2 3", "expected_output": "5"}, {"stdin": "1 1", "expected_output": "3"}]}),
    )
    .await;
    assert_eq!(v["exercise"], "sums");
    assert_eq!(v["status"], "wrong_answer", "{v}");
    assert_eq!(v["tests"][0]["status"], "accepted", "{v}");

    // A program the image does not have is the runner's `internal_error`, not the code's fault.
    let v = run(&app, json!({"exercise": "sums", "run": ["no-such-program"]})).await;
    assert_eq!(v["status"], "internal_error", "{v}");
    // The same when the step also writes the files (one exec for both).
    let v = run(
        &app,
        json!({"exercise": "sums", "run": ["no-such-program"], "files": [{"path": "a.txt", "content": "a"}]}),
    )
    .await;
    assert_eq!(v["status"], "internal_error", "{v}");
    assert!(v["tests"][0]["stderr"].as_str().unwrap_or_default().contains("no-such-program"), "{v}");
    // A program that exits 127 itself is the code's: a runtime error.
    let v = run(
        &app,
        json!({"exercise": "sums", "run": ["sh", "x.sh"], "files": [{"path": "x.sh", "content": "exit 127"}]}),
    )
    .await;
    assert_eq!((v["status"].as_str(), v["tests"][0]["exit_code"].as_i64()), (Some("runtime_error"), Some(127)), "{v}");

    let cases = [
        (json!({"exercise": "nope", "run": ["sh"]}), 404, "exercise_not_found"),
        (json!({"exercise": "sums"}), 422, "invalid_run"),
        (json!({"exercise": "sums", "run": []}), 422, "invalid_run"),
        (json!({"runtime": "python3", "run": ["sh"]}), 422, "invalid_run"),
        (json!({"runtime": "python3", "exercise": "sums", "run": ["sh"]}), 422, "invalid_run"),
        (json!({"files": []}), 422, "invalid_run"),
        (json!({"runtime": "python3", "learner": "not a learner id!"}), 422, "invalid_run"),
    ];
    for (body, status, code) in cases {
        let (got, v) = app.post("/v1/runs", body.clone()).await;
        assert_eq!((got, v["error"]["code"].as_str().unwrap_or_default()), (status, code), "{body} → {v}");
    }
    no_run_sandbox_left(&app).await;
}

/// Per token: past its runs' rate, 429 `runs_rate_limited` with `Retry-After`, nothing started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_starts_runs_too_fast_is_told_when_to_come_back() {
    require_docker();
    let app = spawn_app_with(|s| {
        s.runs.rate_per_min = 1;
        s.runs.rate_burst = 2;
    })
    .await;
    with_python(&app).await;
    let body = json!({"runtime": "python3", "files": [{"path": "main.py", "content": "print(1)"}]});
    run(&app, body.clone()).await;
    run(&app, body.clone()).await;
    let r = app.client.post(app.url("/v1/runs")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "runs_rate_limited");
    assert_eq!(app.get("/v1/runs").await.1["runs"].as_array().unwrap().len(), 2, "the refused run is not recorded");
}

/// A runner stopped with a run in flight: the next one finishes it as `internal_error` and
/// removes its sandbox; nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_when_the_runner_stops_is_finished_by_the_next_one() {
    require_docker();
    let mut app = spawn_app().await;
    with_python(&app).await;
    let body = json!({"runtime": "python3", "wait": false, "limits": {"wall_ms": 20000},
        "files": [{"path": "main.py", "content": "import time\ntime.sleep(60)"}]});
    let (status, v) = app.post("/v1/runs", body).await;
    assert_eq!(status, 202, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.get(&url).await.1["state"] != "running" {
        assert!(std::time::Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(Duration::from_secs(20), "the run's sandbox", || (!run_containers(&app).is_empty()).then_some(())).await;
    app.stop_server().await;
    let again = start(test_settings(&app.data_dir, &app.instance)).await;
    let v = poll_run(&again, &url).await;
    assert_eq!(v["status"], "internal_error", "{v}");
    assert!(v["tests"][0]["stderr"].as_str().unwrap().contains("stopped"), "{v}");
    eventually(Duration::from_secs(20), "no run sandbox left, prepared ones included", || {
        all_run_containers(&again).is_empty().then_some(())
    })
    .await;
    drop(again);
    drop(app);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn attach(app: &TestApp, stream_url: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}{stream_url}", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("attaching to the run's stream").0
}

/// Reads the stream's messages into `seen` until `pred` holds of all seen (or the stream ends).
async fn read_until(ws: &mut Ws, seen: &mut Vec<Value>, pred: impl Fn(&[Value]) -> bool) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while !pred(seen) {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next()).await;
        match msg.unwrap_or_else(|_| panic!("the stream said nothing more; seen {seen:?}")) {
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("stream error {e}; seen {seen:?}"),
        }
    }
}

fn output_of(seen: &[Value], kind: &str) -> String {
    seen.iter().filter(|v| v["type"] == kind).map(|v| v["data"].as_str().unwrap()).collect()
}

fn last_exit(seen: &[Value]) -> Option<&Value> {
    seen.iter().find(|v| v["type"] == "exit")
}

/// The interactive form: stdin streamed in as the program asks, its output streamed out, a
/// signal delivered, the final status at the end; output capped; closing the socket ends a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_run_streams_stdin_and_output_and_takes_signals() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    require_docker();
    let app = spawn_app().await;
    with_python(&app).await;
    let source = r#"import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: (print("interrupted", flush=True), sys.exit(4)))
name = input("name? ")
print(f"hello {name}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
print("waiting", flush=True)
time.sleep(30)
"#;
    let body = |source: &str| {
        json!({"runtime": "python3", "interactive": true, "limits": {"wall_ms": 15000, "output_bytes": 5000},
            "files": [{"path": "main.py", "content": source}]})
    };
    let (status, v) = app.post("/v1/runs", body(source)).await;
    assert_eq!(status, 202, "{v}");
    let stream_url = v["stream_url"].as_str().unwrap().to_string();
    let mut ws = attach(&app, &stream_url).await;
    let mut seen = vec![];
    read_until(&mut ws, &mut seen, |s| output_of(s, "stdout").contains("name?")).await;
    let kinds: Vec<&str> = seen.iter().take(2).map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "compile"], "{seen:?}");
    ws.send(Message::Text(json!({"type": "stdin", "data": "ada\n"}).to_string().into())).await.unwrap();
    read_until(&mut ws, &mut seen, |s| output_of(s, "stdout").contains("waiting")).await;
    assert!(output_of(&seen, "stdout").contains("hello ada"), "{seen:?}");
    read_until(&mut ws, &mut seen, |s| output_of(s, "stderr").contains("to stderr")).await;
    ws.send(Message::Text(json!({"type": "signal", "signal": "interrupt"}).to_string().into())).await.unwrap();
    read_until(&mut ws, &mut seen, |s| last_exit(s).is_some()).await;
    let exit = last_exit(&seen).unwrap_or_else(|| panic!("no exit: {seen:?}"));
    assert_eq!(exit["status"], "runtime_error", "{exit}");
    assert_eq!(exit["tests"][0]["exit_code"], 4, "the program's SIGINT handler ran: {exit}");
    assert!(output_of(&seen, "stdout").contains("interrupted"));
    let id = exit["id"].as_str().unwrap();
    let (_, stored) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(stored["state"], "finished");
    assert!(stored["tests"][0]["stdout"].as_str().unwrap().contains("hello ada"), "{stored}");
    {
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
        let mut req = format!("{}{stream_url}", app.base.replace("http://", "ws://")).into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let again = tokio_tungstenite::connect_async(req).await;
        assert!(matches!(again, Err(Error::Http(r)) if r.status() == 409), "a finished run cannot be attached to");
    }

    // Output past the cap ends the program: output_limit.
    let (_, v) = app.post("/v1/runs", body("while True:\n    print('y' * 100, flush=True)\n")).await;
    let mut ws = attach(&app, v["stream_url"].as_str().unwrap()).await;
    let mut seen = vec![];
    read_until(&mut ws, &mut seen, |s| last_exit(s).is_some()).await;
    assert_eq!(last_exit(&seen).unwrap()["status"], "output_limit");
    assert!(output_of(&seen, "stdout").len() <= 5000);

    // A client that goes away ends its run (killed, recorded).
    let (_, v) = app.post("/v1/runs", body("import time\nprint('up', flush=True)\ntime.sleep(60)\n")).await;
    let url = v["url"].as_str().unwrap().to_string();
    let mut ws = attach(&app, v["stream_url"].as_str().unwrap()).await;
    let mut seen = vec![];
    read_until(&mut ws, &mut seen, |s| output_of(s, "stdout").contains("up")).await;
    drop(ws);
    let done = poll_run(&app, &url).await;
    assert_eq!(done["tests"][0]["signal"], 9, "{done}");

    // Nobody attaches: 404 for an unknown run; bad requests are 4xx before anything starts.
    assert_eq!(app.get("/v1/runs/nope/stream").await.0, 400, "not a WebSocket handshake");
    let bad = json!({"runtime": "python3", "interactive": true, "tests": [{"stdin": "x"}]});
    assert_eq!(app.post("/v1/runs", bad).await.0, 422);
    no_run_sandbox_left(&app).await;
}

/// The same verdicts under gVisor (`RUNNER_DOCKER_RUNTIME=runsc`): the submission runs in
/// gVisor's kernel, the runner reads the sandbox's cgroup from the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_under_gvisor_get_the_same_verdicts() {
    require_docker();
    let app = spawn_app_with(|s| s.runtime = runner::domain::Runtime::Runsc).await;
    with_python(&app).await;
    let v = run_py(&app, "import os\nprint(os.getuid(), open('/proc/version').read()[:5])\n", json!({})).await;
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["tests"][0]["stdout"], "1000 Linux\n", "{v}");
    let v = run_py(&app, "while True:\n    pass\n", json!({"time_ms": 300, "wall_ms": 10000})).await;
    assert_eq!(v["status"], "time_limit", "{v}");
    let v = run_py(&app, "import time\ntime.sleep(60)\n", json!({"wall_ms": 800})).await;
    assert_eq!(v["status"], "wall_time_limit", "{v}");
    let v = run_py(&app, "while True:\n    print('y' * 1000)\n", json!({"output_bytes": 10000})).await;
    assert_eq!(v["status"], "output_limit", "{v}");
    let v = run_py(&app, "x = b'x' * (400 * 1024 * 1024)\n", json!({"memory_mb": 128})).await;
    assert_eq!(v["status"], "memory_limit", "{v}");
    // gVisor's OOM kill takes the whole sandbox: the next test case gets a new one.
    let both = "import sys\nif sys.argv[1] == 'bomb':\n    x = b'x' * (400 << 20)\nprint('ok')\n";
    let v = run(
        &app,
        json!({"runtime": "python3", "files": [{"path": "main.py", "content": both}], "limits": {"memory_mb": 128},
            "tests": [{"args": ["bomb"]}, {"args": ["fine"], "expected_output": "ok"}]}),
    )
    .await;
    let statuses: Vec<&str> = v["tests"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["memory_limit", "accepted"], "{v}");
    let v = run(
        &app,
        json!({"runtime": "python3", "files": [{"path": "main.py", "content": "print(input())"}],
            "tests": [{"stdin": "a", "expected_output": "a"}, {"stdin": "b", "expected_output": "c"}]}),
    )
    .await;
    assert_eq!(v["status"], "wrong_answer", "{v}");
    no_run_sandbox_left(&app).await;
}
