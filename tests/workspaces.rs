//! A learner's files read through the API without a live session (issue 12): a listing, one
//! file, the `.tar.gz` — read inside a sandbox as the learner, never by the host (invariant 4).

mod common;

use std::io::Read;

use common::*;
use serde_json::{json, Value};

/// A raw GET: (status, content type, body bytes).
async fn fetch(app: &TestApp, path: &str) -> (u16, String, Vec<u8>) {
    let r = app.client.get(app.url(path)).bearer_auth(TOKEN).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("a JSON error: {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// (path, entry type, link target, content) of every entry of a `.tar.gz`.
fn untar(gz: &[u8]) -> Vec<(String, tar::EntryType, Option<String>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        let kind = e.header().entry_type();
        let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, kind, link, data));
    }
    out
}

/// Starts a session of `exercise` for `learner`, runs `script` in its sandbox as the learner,
/// ends the session; returns the session id.
async fn work_then_leave(app: &TestApp, learner: &str, exercise: &str, script: &str) -> String {
    let s = app.session(learner, exercise).await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    let (code, out) = sandbox_exec(&c, script);
    assert_eq!(code, 0, "{out}");
    let (status, v) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200, "{v}");
    id
}

/// The containers made for an instance since `since` (a Unix time), from the engine's events:
/// a reader sandbox removed again still shows here.
fn containers_created_since(instance: &str, since: &str) -> usize {
    let now = unix_now();
    docker(&[
        "events",
        "--since",
        since,
        "--until",
        &now,
        "--filter",
        &format!("label=exercise-runner.instance={instance}"),
        "--filter",
        "event=create",
        "--format",
        "{{.ID}}",
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .count()
}

/// Now as the engine's `--since`/`--until` take it (seconds with nanoseconds).
fn unix_now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_in_a_session_are_listed_read_and_archived_after_it_ended() {
    let app = spawn_app().await;
    app.exercise("files", json!({})).await;
    work_then_leave(
        &app,
        "ada",
        "files",
        "cd /workspace && echo 'print(42)' > main.py && mkdir -p src/deep && printf 'a\\nb\\n' > src/deep/notes.txt \
         && chmod 755 main.py && printf '\\000\\001\\377' > blob.bin",
    )
    .await;
    assert!(app.containers().is_empty(), "the session's sandbox is gone");

    let (status, listing) = app.get("/v1/workspaces/ada/files").await;
    assert_eq!(status, 200, "{listing}");
    let entries = listing["entries"].as_array().unwrap();
    let find = |p: &str| entries.iter().find(|e| e["path"] == p).unwrap_or_else(|| panic!("{p} in {listing}")).clone();
    assert_eq!(find("main.py")["type"], "file");
    assert_eq!(find("main.py")["size"], 10);
    assert_eq!(find("main.py")["mode"], "0755");
    assert_eq!(find("src")["type"], "dir");
    assert_eq!(find("src/deep/notes.txt")["size"], 4);
    assert!(!entries.iter().any(|e| e["path"].as_str().unwrap().starts_with("lost+found")), "{listing}");
    assert_eq!(listing["truncated"], false);

    let (status, ct, body) = fetch(&app, "/v1/workspaces/ada/files/files/src/deep/notes.txt").await;
    assert_eq!((status, ct.as_str()), (200, "application/octet-stream"));
    assert_eq!(body, b"a\nb\n");
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/files/files/blob.bin").await;
    assert_eq!((status, body.as_slice()), (200, &b"\x00\x01\xff"[..]), "bytes, not text");
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/files/files/nope.txt").await;
    assert_eq!((status, error_code(&body).as_str()), (404, "file_not_found"));
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/files/files/src").await;
    assert_eq!((status, error_code(&body).as_str()), (422, "not_a_regular_file"));

    let (status, ct, gz) = fetch(&app, "/v1/workspaces/ada/files/archive").await;
    assert_eq!((status, ct.as_str()), (200, "application/gzip"));
    let files = untar(&gz);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, ["blob.bin", "main.py", "src", "src/deep", "src/deep/notes.txt"], "sorted, no lost+found");
    assert_eq!(files[1].3, b"print(42)\n");

    // Every reader sandbox went away again, and the workspace still comes back to a session.
    assert!(app.containers().is_empty(), "no reader left behind: {:?}", app.containers());
    let s = app.session("ada", "files").await;
    let c = session_container(&app.instance, s["id"].as_str().unwrap()).unwrap();
    assert_eq!(sandbox_exec(&c, "cat /workspace/main.py"), (0, "print(42)\n".to_string()));
    // With the session live, the same reads go through its sandbox.
    learner_writes(&c, "/workspace/live.txt", "while it runs\n");
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/files/files/live.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"while it runs\n"[..]));
    assert_eq!(app.containers().len(), 1, "no reader while a session runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_and_fifos_stay_entries_and_the_host_reads_nothing_outside() {
    let app = spawn_app().await;
    app.exercise("links", json!({})).await;
    work_then_leave(
        &app,
        "mallory",
        "links",
        "cd /workspace && ln -s /etc/shadow x && ln -s / root && mkfifo pipe && echo mine > real \
         && ln -s real good && mkdir d && ln -s ../../../../etc/passwd d/up",
    )
    .await;

    let (status, listing) = app.get("/v1/workspaces/mallory/links").await;
    assert_eq!(status, 200, "{listing}");
    let kinds: Vec<(String, String, Value)> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().into(), e["type"].as_str().unwrap().into(), e["target"].clone()))
        .collect();
    assert!(kinds.contains(&("x".into(), "symlink".into(), json!("/etc/shadow"))), "{kinds:?}");
    assert!(kinds.contains(&("root".into(), "symlink".into(), json!("/"))), "{kinds:?}");
    assert!(kinds.contains(&("pipe".into(), "fifo".into(), Value::Null)), "{kinds:?}");
    assert!(!kinds.iter().any(|k| k.0.starts_with("root/")), "nothing under the link to /: {kinds:?}");

    // The file route refuses links and FIFOs, and finds nothing through a linked directory.
    for (path, status, code) in [
        ("x", 422, "not_a_regular_file"),
        ("good", 422, "not_a_regular_file"),
        ("pipe", 422, "not_a_regular_file"),
        ("d/up", 422, "not_a_regular_file"),
        ("root/etc/passwd", 404, "file_not_found"),
        ("root/etc/shadow", 404, "file_not_found"),
    ] {
        let (got, _, body) = fetch(&app, &format!("/v1/workspaces/mallory/links/files/{path}")).await;
        assert_eq!((got, error_code(&body).as_str()), (status, code), "{path}");
    }
    let (status, _, body) = fetch(&app, "/v1/workspaces/mallory/links/files/real").await;
    assert_eq!((status, body.as_slice()), (200, &b"mine\n"[..]));

    // The archive holds the links as links and the FIFO as a FIFO, with no content of anything outside.
    let (status, _, gz) = fetch(&app, "/v1/workspaces/mallory/links/archive").await;
    assert_eq!(status, 200);
    let files = untar(&gz);
    let get = |p: &str| files.iter().find(|f| f.0 == p).unwrap_or_else(|| panic!("{p}: {files:?}"));
    assert_eq!((get("x").1, get("x").2.as_deref()), (tar::EntryType::Symlink, Some("/etc/shadow")));
    assert_eq!((get("root").1, get("root").2.as_deref()), (tar::EntryType::Symlink, Some("/")));
    assert_eq!(get("pipe").1, tar::EntryType::Fifo);
    assert!(files.iter().all(|f| f.3.is_empty() || f.0 == "real"), "only real has content: {files:?}");
    assert!(!files.iter().any(|f| f.0.starts_with("root/") || f.0.contains("etc")), "{files:?}");
    assert!(app.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_over_the_caps_are_refused_with_a_clear_error_never_cut() {
    let app = spawn_app_with(|s| {
        s.workspace_read_max_bytes = 64 * 1024;
        s.workspace_file_max_bytes = 1024;
        s.workspace_list_max_entries = 3;
    })
    .await;
    app.exercise("caps", json!({})).await;
    work_then_leave(
        &app,
        "ada",
        "caps",
        "cd /workspace && head -c 2048 /dev/zero > two-k && touch a b c d && mkdir big && head -c 200000 /dev/urandom > big/noise",
    )
    .await;
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/caps/files/two-k").await;
    assert_eq!((status, error_code(&body).as_str()), (413, "file_too_large"));
    assert!(String::from_utf8_lossy(&body).contains("RUNNER_WORKSPACE_FILE_MAX_BYTES"));
    let (status, _, body) = fetch(&app, "/v1/workspaces/ada/caps/archive").await;
    assert_eq!((status, error_code(&body).as_str()), (413, "workspace_too_large"));
    assert!(String::from_utf8_lossy(&body).contains("RUNNER_WORKSPACE_READ_MAX_BYTES"));
    // A small file outside the big directory is still served (only its own top-level name is read).
    let (status, _, _) = fetch(&app, "/v1/workspaces/ada/caps/files/a").await;
    assert_eq!(status, 200);
    let (status, v) = app.get("/v1/workspaces/ada/caps").await;
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("workspace_too_large")), "{v}");
    // Under the caps again, a listing past its entry cap says so.
    app.session("ada", "caps").await;
    let (_, list) = app.get("/v1/sessions?learner=ada&state=running").await;
    let c = session_container(&app.instance, list["sessions"][0]["id"].as_str().unwrap()).unwrap();
    assert_eq!(sandbox_exec(&c, "rm -r /workspace/big").0, 0);
    let (status, v) = app.get("/v1/workspaces/ada/caps").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["entries"].as_array().unwrap().len(), v["truncated"].as_bool()), (3, Some(true)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_unknown_learners_are_4xx_json_errors_that_start_nothing() {
    let app = spawn_app().await;
    app.exercise("bad", json!({})).await;
    work_then_leave(&app, "ada", "bad", "echo x > /workspace/a").await;
    let since = unix_now();
    for (path, status, code) in [
        ("/v1/workspaces/ada/bad/files/..%2F..%2Fetc%2Fpasswd", 422, "invalid_path"),
        ("/v1/workspaces/ada/bad/files/a%2F..%2F..%2Fb", 422, "invalid_path"),
        ("/v1/workspaces/ada/bad/files/%2Fetc%2Fshadow", 422, "invalid_path"),
        ("/v1/workspaces/ada/bad/files/a%00b", 422, "invalid_path"),
        ("/v1/workspaces/nobody/bad/files/a", 404, "workspace_not_found"),
        ("/v1/workspaces/nobody/bad", 404, "workspace_not_found"),
        ("/v1/workspaces/nobody/bad/archive", 404, "workspace_not_found"),
        ("/v1/workspaces/ada/other/archive", 404, "workspace_not_found"),
        ("/v1/workspaces/a%20b/bad", 422, "invalid_learner"),
        ("/v1/workspaces/ada/Bad!/archive", 422, "invalid_slug"),
    ] {
        let (got, ct, body) = fetch(&app, path).await;
        assert_eq!((got, error_code(&body).as_str()), (status, code), "{path}: {}", String::from_utf8_lossy(&body));
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
    }
    assert_eq!(containers_created_since(&app.instance, &since), 0, "bad input started no sandbox");
    assert!(app.containers().is_empty());
}

/// An image on the sandbox base image with one starting file (`answer.txt`: TODO), seeded into
/// a new workspace by `sandbox-init`.
fn seeded_image() -> &'static str {
    const TAG: &str = "exercise-runner-test/seeded:latest";
    let dockerfile = "FROM exercise-runner/base:latest\nUSER 0\n\
        RUN mkdir -p /opt/exercise/learner && echo TODO > /opt/exercise/learner/answer.txt \
        && chmod -R a+rX /opt/exercise\nUSER 1000:1000\n";
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "--network", "none", "-t", TAG, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "building the seeded test image");
    TAG
}

async fn snapshot_files(app: &TestApp, path: &str) -> Vec<(String, Vec<u8>)> {
    let (status, ct, gz) = fetch(app, path).await;
    assert_eq!((status, ct.as_str()), (200, "application/gzip"), "{}", String::from_utf8_lossy(&gz));
    untar(&gz).into_iter().filter(|f| f.1 == tar::EntryType::Regular).map(|f| (f.0, f.3)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_over_restores_the_starting_files_and_keeps_the_old_ones_with_and_without_a_session() {
    let app = spawn_app().await;
    let (status, v) = app.put("/v1/exercises/over", json!({"image": seeded_image()})).await;
    assert!(status == 201 || status == 200, "{v}");

    // With a live session: its sandbox gets the starting files back at once.
    let s = app.session("ada", "over").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    assert_eq!(sandbox_exec(&c, "cat /workspace/answer.txt"), (0, "TODO\n".into()), "seeded");
    assert_eq!(sandbox_exec(&c, "cd /workspace && echo 42 > answer.txt && mkdir lib && echo x > lib/extra.py").0, 0);
    let (status, reset) = app.post("/v1/workspaces/ada/over/reset", json!({})).await;
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["session_id"], id.as_str());
    assert_eq!(reset["snapshot"]["reason"], "reset");
    assert_eq!(sandbox_exec(&c, "cat /workspace/answer.txt"), (0, "TODO\n".into()), "back to the start");
    assert_ne!(sandbox_exec(&c, "test -e /workspace/lib").0, 0, "the learner's other files are gone");
    let kept = snapshot_files(&app, &format!("/v1/snapshots/{}", reset["snapshot"]["id"].as_str().unwrap())).await;
    assert_eq!(kept, [("answer.txt".to_string(), b"42\n".to_vec()), ("lib/extra.py".to_string(), b"x\n".to_vec())]);

    // Without one: the workspace starts over as a new learner's, on the next session.
    assert_eq!(sandbox_exec(&c, "echo mine > /workspace/mine.txt").0, 0);
    app.delete(&format!("/v1/sessions/{id}")).await;
    let (status, reset) = app.post("/v1/workspaces/ada/over/reset", json!({})).await;
    assert_eq!(status, 200, "{reset}");
    assert!(reset["session_id"].is_null(), "{reset}");
    assert!(app.containers().is_empty(), "no sandbox left: {:?}", app.containers());
    let kept = snapshot_files(&app, &format!("/v1/snapshots/{}", reset["snapshot"]["id"].as_str().unwrap())).await;
    assert_eq!(kept, [("answer.txt".to_string(), b"TODO\n".to_vec()), ("mine.txt".to_string(), b"mine\n".to_vec())]);
    let next = app.session("ada", "over").await;
    let c = session_container(&app.instance, next["id"].as_str().unwrap()).unwrap();
    assert_eq!(sandbox_exec(&c, "ls -A /workspace | grep -v lost+found"), (0, "answer.txt\n".into()));
    assert_eq!(sandbox_exec(&c, "cat /workspace/answer.txt"), (0, "TODO\n".into()));

    // Both resets are listed; nothing is reset for a learner without a workspace.
    let (_, list) = app.get("/v1/workspaces/ada/over/snapshots").await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2, "{list}");
    let (status, v) = app.post("/v1/workspaces/nobody/over/reset", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("workspace_not_found")));
    let (status, v) = app.get("/v1/snapshots/00000000-0000-0000-0000-000000000000").await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("snapshot_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_check_keeps_a_snapshot_readable_by_check_id_and_identical_ones_share_one_blob() {
    let app = spawn_app().await;
    app.exercise("snap", json!({"check": {"command": ["sh", "-c", "grep -qx 42 answer.txt"], "timeout_secs": 10}}))
        .await;
    let s = app.session("ada", "snap").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    learner_writes(&c, "/workspace/answer.txt", "41\n");
    let (status, failed) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, failed["passed"].as_bool()), (201, Some(false)), "{failed}");
    learner_writes(&c, "/workspace/answer.txt", "42\n");
    let mut passed = Vec::new();
    for _ in 0..2 {
        let (status, check) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
        assert_eq!((status, check["passed"].as_bool()), (201, Some(true)), "{check}");
        passed.push(check["id"].as_str().unwrap().to_string());
    }
    for check in &passed {
        let path = format!("/v1/sessions/{id}/checks/{check}/snapshot");
        // Taken after the check answered, in the background: polled with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while fetch(&app, &path).await.0 != 200 {
            assert!(std::time::Instant::now() < deadline, "no snapshot of check {check} within 20 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(snapshot_files(&app, &path).await, [("answer.txt".to_string(), b"42\n".to_vec())]);
    }
    let (_, list) = app.get("/v1/workspaces/ada/snap/snapshots").await;
    let rows = list["snapshots"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one per passing check, none for the failing one: {list}");
    assert!(rows.iter().all(|r| r["reason"] == "check_passed"));
    assert_eq!(rows[0]["sha256"], rows[1]["sha256"], "identical files, one blob: {list}");
    let blobs = walk_files(&app.data_dir.join("snapshots"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let (status, v) = app.get(&format!("/v1/sessions/{id}/checks/{}/snapshot", failed["id"].as_str().unwrap())).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("snapshot_not_found")));
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
