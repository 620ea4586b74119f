//! Exercise images: builds from repositories, the self-test, versions, push hooks and checks.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const BUILD_DEADLINE: Duration = Duration::from_secs(900);

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../exercise-images/examples")
}

fn session_of(app: &TestApp, s: &Value) -> String {
    session_container(&app.instance, s["id"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_build_prove_themselves_and_check_learners_work() {
    let app = spawn_app_with(|s| s.max_concurrent_builds = 2).await;
    let names = ["python-fizzbuzz", "shell-wordcount", "redis-counter"];
    let mut builds = Vec::new();
    for name in names {
        let (status, b) = app.submit_build(name, tar_dir(&examples().join(name))).await;
        assert_eq!(status, 202, "{name}: {b}");
        assert!(matches!(b["state"].as_str(), Some("queued" | "building")), "{b}");
        builds.push(b["id"].as_str().unwrap().to_string());
    }
    for (name, id) in names.iter().zip(&builds) {
        let b = app.wait_build(id, BUILD_DEADLINE).await;
        assert_eq!(b["state"], "succeeded", "{name}: {b}\n{}", app.build_log(id).await);
        let version = b["version"].as_str().unwrap();
        assert_eq!(b["image"], format!("exercise-runner/{name}:{version}"));
        assert_eq!(b["self_test"]["starting_files"]["passed"], false, "{b}");
        assert_eq!(b["self_test"]["solution"]["passed"], true, "{b}");
        let log = app.build_log(id).await;
        assert!(log.contains("docker build") && log.contains("self-test") && log.contains("succeeded"), "{log}");
        let (_, e) = app.get(&format!("/v1/exercises/{name}")).await;
        assert_eq!(e["current_version"], version, "published automatically: {e}");

        // A learner's session: the untouched exercise fails its check, the solution passes.
        let s = app.session("ada", name).await;
        assert_eq!(s["image"], b["image"]);
        let c = session_of(&app, &s);
        let sid = s["id"].as_str().unwrap();
        let (status, check) = app.post(&format!("/v1/sessions/{sid}/checks"), json!({})).await;
        assert_eq!(status, 201, "{check}");
        assert_eq!(check["passed"], false, "{name}: {check}");
        assert_ne!(check["exit_code"], 0);
        assert!(!check["output"].as_str().unwrap().is_empty());
        let solution = examples().join(name).join("solution");
        for f in std::fs::read_dir(&solution).unwrap() {
            let f = f.unwrap();
            let content = std::fs::read_to_string(f.path()).unwrap();
            learner_writes(&c, &format!("/workspace/{}", f.file_name().to_str().unwrap()), &content);
        }
        let (_, check) = app.post(&format!("/v1/sessions/{sid}/checks"), json!({})).await;
        assert_eq!(check["passed"], true, "{name}: {check}");
        assert_eq!(check["exit_code"], 0);
        let (_, list) = app.get(&format!("/v1/sessions/{sid}/checks")).await;
        assert_eq!(list["checks"].as_array().unwrap().len(), 2);
        // Hidden tests are in the image, not in the learner's workspace; the solution is nowhere.
        assert_ne!(sandbox_exec(&c, "ls /opt/exercise/tests | grep -q . && ls -a /workspace | grep -q '^tests$'").0, 0);
        assert_ne!(
            sandbox_exec(&c, "find / -path /proc -prune -o -name 'solution' -print 2>/dev/null | grep -q .").0,
            0
        );
    }

    // A seeding cut short (the sandbox stopped mid-copy leaves its marker) is finished at the
    // next start: the missing starting file comes back and the marker goes.
    let seeded =
        |c: &str| sandbox_exec(c, "test -f /workspace/README.md && test ! -e /workspace/.sandbox-seeding").0 == 0;
    let s = app.session("bob", "shell-wordcount").await;
    let c = session_of(&app, &s);
    eventually(Duration::from_secs(15), "the first seeding", || seeded(&c).then_some(())).await;
    assert_eq!(sandbox_exec(&c, "rm /workspace/README.md && : > /workspace/.sandbox-seeding").0, 0);
    app.delete(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())).await;
    let s = app.session("bob", "shell-wordcount").await;
    let c = session_of(&app, &s);
    eventually(Duration::from_secs(15), "the interrupted seeding to be finished", || seeded(&c).then_some(())).await;

    // The same content again: the same version, no rebuild.
    let (_, again) = app.submit_build("shell-wordcount", tar_dir(&examples().join("shell-wordcount"))).await;
    let again = app.wait_build(again["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["cached"], true);
    let (_, first) = app.get(&format!("/v1/builds/{}", builds[1])).await;
    assert_eq!(again["version"], first["version"]);
    assert!(app.build_log(again["id"].as_str().unwrap()).await.contains("no rebuild"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_dockerfile_fails_with_its_log() {
    let app = spawn_app().await;
    let repo = quick_exercise("broken", &[("Dockerfile", &format!("FROM {IMAGE}\nRUN echo building && exit 7\n"))]);
    let (status, b) = app.submit_build("broken", repo).await;
    assert_eq!(status, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed");
    assert!(b["failure_reason"].as_str().unwrap().contains("Dockerfile failed"), "{b}");
    let log = app.build_log(b["id"].as_str().unwrap()).await;
    assert!(log.contains("building") && log.contains("returned a non-zero code: 7"), "{log}");
    let (status, _) = app.get("/v1/exercises/broken").await;
    assert_eq!(status, 404, "a failed first build publishes nothing");
}

/// An author's `RUN` step that forks without end stops at the build's pids limit (a cgroup the
/// runner makes for the build and removes after it), instead of filling the host's process table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_a_dockerfile_stops_at_the_build_pids_limit() {
    let app = spawn_app_with(|s| s.build_pids_limit = 48).await;
    // 200 background sleeps: far more than the limit, few enough for the host either way.
    let bomb = "RUN i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo spawned $i";
    let repo = quick_exercise("forky", &[("Dockerfile", &format!("FROM {IMAGE}\n{bomb}\n"))]);
    let (status, b) = app.submit_build("forky", repo).await;
    assert_eq!(status, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    let log = app.build_log(b["id"].as_str().unwrap()).await;
    assert_eq!(b["state"], "failed", "{log}");
    assert!(log.contains("can't fork"), "the shell must have been refused a fork: {log}");
    assert!(!log.contains("spawned 200"), "{log}");
    // The log names the build's cgroup; it is gone from every hierarchy once the build ended.
    let cgroup = log
        .split("(cgroup ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the log names no build cgroup: {log}"))
        .trim_start_matches('/')
        .to_string();
    assert!(log.contains("at most 48 processes"), "{log}");
    let left: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&cgroup))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(left.is_empty(), "build cgroups left behind: {left:?}");
    // A sane Dockerfile builds under the same limit (sent as a .tar.gz this time).
    let ok = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &quick_exercise("forky", &[])).unwrap();
        gz.finish().unwrap()
    };
    let (_, b) = app.submit_build("forky", ok).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "succeeded", "{}", app.build_log(b["id"].as_str().unwrap()).await);
}

/// A refactoring exercise (exercism's `ledger`: the starting code already passes, the learner
/// makes it better) says `starting_files_pass = true`: its self-test wants the check to pass on
/// both, and the build and the version say so; one whose starting files then fail is refused
/// (issue 10, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refactoring_exercise_whose_starting_files_pass_by_design_builds() {
    let app = spawn_app().await;
    let manifest = "slug = \"ledger\"\ntitle = \"Ledger\"\ncheck = [\"sh\", \"/opt/exercise/tests/check.sh\"]\n\
                    check_timeout_secs = 10\nstarting_files_pass = true\n";
    let repo = quick_exercise("ledger", &[("exercise.toml", manifest), ("exercise/answer.txt", "42\n")]);
    let (_, b) = app.submit_build("ledger", repo).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(b["self_test"]["starting_files"]["passed"], true, "{b}");
    assert_eq!(b["self_test"]["solution"]["passed"], true, "{b}");
    assert_eq!(b["self_test"]["starting_files_pass"], true, "{b}");
    let (_, v) = app.get("/v1/exercises/ledger/versions").await;
    assert_eq!(v["versions"][0]["starting_files_pass"], true, "{v}");
    // Marked, but the starting files fail: refused, saying why.
    let manifest = manifest.replace("ledger", "ledger-two");
    let repo = quick_exercise("ledger-two", &[("exercise.toml", &manifest)]);
    let (_, b) = app.submit_build("ledger-two", repo).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(b["failure_reason"].as_str().unwrap().contains("starting_files_pass = true"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exercise_whose_check_always_passes_fails_its_self_test() {
    let app = spawn_app().await;
    let repo = quick_exercise("lenient", &[("tests/check.sh", "echo looks fine to me\n")]);
    let (_, b) = app.submit_build("lenient", repo).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(b["failure_reason"].as_str().unwrap().contains("passes on the learner's starting files"), "{b}");
    assert!(b["failure_reason"].as_str().unwrap().contains("starting_files_pass"), "it says how to mark one: {b}");
    assert_eq!(b["self_test"]["starting_files"]["passed"], true);
    // And one whose solution does not pass.
    let repo = quick_exercise("strict", &[("solution/answer.txt", "41\n")]);
    let (_, b) = app.submit_build("strict", repo).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(b["failure_reason"].as_str().unwrap().contains("fails with the reference solution"), "{b}");
    assert!(app.build_log(b["id"].as_str().unwrap()).await.contains("expected 42, got: 41"));
    assert!(app.containers().is_empty(), "no self-test container is left");
}

fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_and_malformed_repositories_are_rejected_and_leave_nothing() {
    let app = spawn_app_with(|s| s.max_unpacked_bytes = 4 << 20).await;
    use tar::EntryType::*;
    let manifest = b"slug = \"evil\"\ntitle = \"t\"\n";
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(
            &mut gz,
            &raw_tar(&[("exercise.toml", Regular, manifest, None), ("zeros", Regular, &vec![0u8; 32 << 20], None)]),
        )
        .unwrap();
        gz.finish().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("traversal", raw_tar(&[("../../etc/cron.d/evil", Regular, b"x", None)]), 422, "invalid_archive", "'..'"),
        ("absolute", raw_tar(&[("/etc/passwd", Regular, b"x", None)]), 422, "invalid_archive", "absolute"),
        (
            "symlink escape",
            raw_tar(&[("exercise.toml", Regular, manifest, None), ("exercise", Symlink, b"", Some("/etc"))]),
            422,
            "invalid_archive",
            "outside",
        ),
        (
            "device",
            raw_tar(&[("exercise.toml", Regular, manifest, None), ("null", Char, b"", None)]),
            422,
            "invalid_archive",
            "device",
        ),
        ("bomb", bomb, 422, "invalid_archive", "unpacked size"),
        (
            "not an archive",
            b"hello, I am not a tar file at all, just text, long enough to look like one".repeat(10),
            422,
            "invalid_archive",
            "archive",
        ),
        (
            "no manifest",
            tar_files(&[("Dockerfile", "FROM exercise-runner/busybox")]),
            422,
            "invalid_manifest",
            "no exercise.toml",
        ),
        (
            "bad manifest",
            quick_exercise("evil", &[("exercise.toml", "slug = \"evil\"\ntitle = \"t\"\ncheck_timeout_secs = 9999\n")]),
            422,
            "invalid_manifest",
            "check_timeout_secs",
        ),
        ("other slug", quick_exercise("not-evil", &[]), 422, "invalid_manifest", "does not match"),
        (
            "no solution",
            tar_files(&[
                ("exercise.toml", "slug = \"evil\"\ntitle = \"t\"\n"),
                ("Dockerfile", "FROM exercise-runner/busybox"),
                ("exercise/a", "a"),
            ]),
            422,
            "invalid_repository",
            "solution",
        ),
        (
            "solution inside the learner's files",
            tar_files(&[
                ("exercise.toml", "slug = \"evil\"\ntitle = \"t\"\nsolution = \"exercise/answer\"\n"),
                ("Dockerfile", "FROM exercise-runner/busybox"),
                ("exercise/answer/a", "a"),
            ]),
            422,
            "invalid_manifest",
            "learners would see the solution",
        ),
        (
            "hidden tests named but missing",
            quick_exercise("evil", &[("exercise.toml", "slug = \"evil\"\ntitle = \"t\"\nhidden_tests = \"spec\"\n")]),
            422,
            "invalid_repository",
            "hidden_tests",
        ),
    ];
    for (name, body, status, code, needle) in cases {
        let (s, v) = app.submit_build("evil", body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{name}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{name}: {v}");
    }
    let (s, v) = app.submit_build("Bad_Slug", quick_exercise("evil", &[])).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("invalid_slug")));
    // Over the compressed size limit: 413.
    let app_small = spawn_app_with(|s| s.max_archive_bytes = 1024).await;
    let (s, v) = app_small.submit_build("evil", quick_exercise("evil", &[("big.txt", &"x".repeat(4096))])).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("body_too_large")), "{v}");

    // Nothing was recorded or left on disk.
    let (_, list) = app.get("/v1/exercises/evil/builds").await;
    assert_eq!(list["builds"].as_array().unwrap().len(), 0);
    let leftovers = std::fs::read_dir(app.data_dir.join("builds")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "no files left in the builds directory");
    assert!(!Path::new("/etc/cron.d/evil").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_publish_roll_back_and_live_sessions_keep_theirs() {
    let app = spawn_app().await;
    let build = |check_msg: &'static str| {
        let app = &app;
        async move {
            let script = format!("if grep -qx 42 answer.txt; then echo {check_msg}; else exit 1; fi\n");
            let (_, b) = app.submit_build("answer", quick_exercise("answer", &[("tests/check.sh", &script)])).await;
            let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
            assert_eq!(b["state"], "succeeded", "{b}");
            b
        }
    };
    let v1 = build("v1").await;
    let s1 = app.session("early", "answer").await;
    assert_eq!(s1["image"], v1["image"]);
    let v2 = build("v2").await;
    assert_ne!(v1["version"], v2["version"]);
    let (_, e) = app.get("/v1/exercises/answer").await;
    assert_eq!(e["current_version"], v2["version"]);
    // The live session keeps v1; a new one gets v2.
    let c1 = session_of(&app, &s1);
    assert_eq!(inspect(&c1)["Config"]["Image"], v1["image"]);
    let s2 = app.session("late", "answer").await;
    assert_eq!(s2["image"], v2["image"]);
    learner_writes(&session_of(&app, &s2), "/workspace/answer.txt", "42\n");
    let (_, check) = app.post(&format!("/v1/sessions/{}/checks", s2["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(check["output"], "v2\n");

    // Roll back to v1.
    let (status, e) = app
        .post(&format!("/v1/exercises/answer/versions/{}/publish", v1["version"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["current_version"], v1["version"]);
    let s3 = app.session("rolled-back", "answer").await;
    assert_eq!(s3["image"], v1["image"]);
    let (_, versions) = app.get("/v1/exercises/answer/versions").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert_eq!(versions["current_version"], v1["version"]);

    // Manual publishing: a new build waits to be published.
    let (status, _) = app.put("/v1/exercises/answer", json!({"auto_publish": false})).await;
    assert_eq!(status, 200);
    let v3 = build("v3").await;
    let (_, e) = app.get("/v1/exercises/answer").await;
    assert_eq!(e["current_version"], v1["version"], "not published automatically");
    assert!(app.build_log(v3["id"].as_str().unwrap()).await.contains("publish it with"));
    let (status, _) = app
        .post(&format!("/v1/exercises/answer/versions/{}/publish", v3["version"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, v) = app.post("/v1/exercises/answer/versions/000000000000/publish", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("version_not_found")));
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=author@example.org", "-c", "user.name=Author", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_hook_builds_the_branch_and_a_bad_signature_builds_nothing() {
    const GLOBAL: &str = "the-operators-global-hook-secret";
    let app = spawn_app_with(|s| {
        s.git_allow_local = true;
        s.git_hook_secret = Some(runner::config::Secret::new(GLOBAL));
    })
    .await;
    // An author's repository, pushed to a local bare repository.
    let work = tempfile::tempdir().unwrap();
    let bare = tempfile::tempdir().unwrap();
    let mut ar = tar::Archive::new(std::io::Cursor::new(quick_exercise("hooked", &[])));
    ar.unpack(work.path()).unwrap();
    git(bare.path(), &["init", "--bare", "-q"]);
    git(work.path(), &["init", "-q"]);
    git(work.path(), &["add", "."]);
    git(work.path(), &["commit", "-q", "-m", "exercise"]);
    git(work.path(), &["push", "-q", bare.path().to_str().unwrap(), "HEAD:main"]);
    let url = bare.path().to_str().unwrap().to_string();
    let secret = "a-long-enough-hook-secret";
    let (status, e) =
        app.put("/v1/exercises/hooked", json!({"git": {"url": url, "ref": "main"}, "hook_secret": secret})).await;
    assert_eq!(status, 201, "{e}");
    assert_eq!(e["hook_secret_set"], true);
    assert!(!e.to_string().contains(secret), "the secret is never shown");

    let payload =
        serde_json::to_vec(&json!({"ref": "refs/heads/main", "after": "0123abcd", "repository": {"clone_url": url}}))
            .unwrap();
    let hook = |sig: Option<String>| {
        let mut req = app.client.post(app.url("/v1/hooks/git")).header("x-github-event", "push").body(payload.clone());
        if let Some(sig) = sig {
            req = req.header("x-hub-signature-256", sig);
        }
        req.send()
    };
    for bad in [None, Some(sign("wrong-secret-wrong-secret", &payload)), Some("sha256=00".into())] {
        let r = hook(bad).await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_signature");
    }
    let (_, list) = app.get("/v1/exercises/hooked/builds").await;
    assert_eq!(list["builds"].as_array().unwrap().len(), 0, "a bad signature builds nothing");

    let r = hook(Some(sign(secret, &payload))).await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let builds = v["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1, "{v}");
    assert_eq!(builds[0]["source"]["kind"], "git");
    let b = app.wait_build(builds[0]["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{}", app.build_log(b["id"].as_str().unwrap()).await);
    let (_, e) = app.get("/v1/exercises/hooked").await;
    assert_eq!(e["current_version"], b["version"]);

    // A push to another branch is acknowledged and builds nothing.
    let other = serde_json::to_vec(&json!({"ref": "refs/heads/wip", "repository": {"clone_url": url}})).unwrap();
    let r = app
        .client
        .post(app.url("/v1/hooks/git"))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", sign(secret, &other))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["builds"].as_array().unwrap().len(), 0);
    // A JSON build request from the exercise's configured source.
    let (status, b) = app.post("/v1/exercises/hooked/builds", json!({})).await;
    assert_eq!(status, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!((b["state"].as_str(), b["cached"].as_bool()), (Some("succeeded"), Some(true)), "{b}");
    // And one naming the source itself.
    let (status, b) = app.post("/v1/exercises/hooked/builds", json!({"git": {"url": url, "ref": "main"}})).await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["source"]["kind"], "git", "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "succeeded", "{b}");

    // The operator's global secret signs pushes for exercises without their own secret, and
    // only for those: it cannot trigger an exercise that has its own.
    let (status, e) = app.put("/v1/exercises/hooked-too", json!({"git": {"url": url, "ref": "main"}})).await;
    assert_eq!(status, 201, "{e}");
    let r = hook(Some(sign(GLOBAL, &payload))).await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let exercises: Vec<&str> =
        v["builds"].as_array().unwrap().iter().map(|b| b["exercise"].as_str().unwrap()).collect();
    assert_eq!(exercises, ["hooked-too"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_cap_output_time_out_and_need_a_running_session() {
    let app = spawn_app().await;
    let loud = json!({"image": IMAGE, "check": {"command": ["sh", "-c", "yes 0123456789 | head -c 300000; exit 3"], "timeout_secs": 10}});
    let (status, _) = app.put("/v1/exercises/loud", loud).await;
    assert_eq!(status, 201);
    let s = app.session("ada", "loud").await;
    let sid = s["id"].as_str().unwrap();
    let (status, c) = app.post(&format!("/v1/sessions/{sid}/checks"), json!({})).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(
        (c["passed"].as_bool(), c["exit_code"].as_i64(), c["truncated"].as_bool()),
        (Some(false), Some(3), Some(true))
    );
    assert!(c["output"].as_str().unwrap().len() <= 64 * 1024);
    // A check counts as activity.
    let (_, after) = app.get(&format!("/v1/sessions/{sid}")).await;
    assert!(after["last_activity_at"].as_str() > s["last_activity_at"].as_str());

    let slow = json!({"image": IMAGE, "check": {"command": ["sleep", "60"], "timeout_secs": 1}});
    app.put("/v1/exercises/slow", slow).await;
    let s2 = app.session("ada", "slow").await;
    let started = std::time::Instant::now();
    let (_, c) = app.post(&format!("/v1/sessions/{}/checks", s2["id"].as_str().unwrap()), json!({})).await;
    assert_eq!((c["passed"].as_bool(), c["timed_out"].as_bool()), (Some(false), Some(true)), "{c}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The check runs as the learner, not as root, and the record says when and how long.
    let whoami = json!({"image": IMAGE, "check": {"command": ["sh", "-c", "echo uid=$(id -u)"], "timeout_secs": 10}});
    app.put("/v1/exercises/whoami", whoami).await;
    let s3 = app.session("ada", "whoami").await;
    let (_, c) = app.post(&format!("/v1/sessions/{}/checks", s3["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(c["passed"], true, "{c}");
    assert!(
        c["output"].as_str().unwrap().contains("uid=") && !c["output"].as_str().unwrap().contains("uid=0\n"),
        "{c}"
    );
    assert!(c["id"].is_string() && c["created_at"].is_string() && c["duration_ms"].as_u64().is_some(), "{c}");

    app.delete(&format!("/v1/sessions/{sid}")).await;
    let (status, v) = app.post(&format!("/v1/sessions/{sid}/checks"), json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_not_running")));
    let (status, _) = app.post(&format!("/v1/sessions/{}/checks", uuid::Uuid::new_v4()), json!({})).await;
    assert_eq!(status, 404);
    // An exercise registered without an image cannot start sessions yet.
    app.put("/v1/exercises/unbuilt", json!({"title": "soon"})).await;
    let (status, v) = app.post("/v1/sessions", json!({"learner": "ada", "exercise": "unbuilt"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("exercise_not_published")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_build_streams_its_log_and_can_be_cancelled() {
    let app = spawn_app().await;
    let slow = quick_exercise("slow", &[("Dockerfile", &format!("FROM {IMAGE}\nRUN echo step-one && sleep 120\n"))]);
    let (_, b) = app.submit_build("slow", slow).await;
    let id = b["id"].as_str().unwrap().to_string();
    // Follow the log live: the first lines arrive while the build runs.
    let mut resp = app.client.get(app.url(&format!("/v1/builds/{id}/logs"))).bearer_auth(TOKEN).send().await.unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("step-one") {
        assert!(std::time::Instant::now() < deadline, "no live log: {seen}");
        let chunk =
            tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await.unwrap().unwrap().expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (_, now) = app.get(&format!("/v1/builds/{id}")).await;
    assert_eq!(now["state"], "building");
    let (status, c) = app.post(&format!("/v1/builds/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(c["state"], "cancelled", "{c}");
    // The stream ends once the build has.
    let rest = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.expect("the log stream ends").unwrap();
    assert!(rest.contains("cancelled"), "{rest}");
    let (status, v) = app.post(&format!("/v1/builds/{id}/cancel"), json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("build_finished")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_builds_survive_a_restart_and_interrupted_ones_are_failed_with_the_reason() {
    let mut app = spawn_app().await;
    let slow = quick_exercise("slow-one", &[("Dockerfile", &format!("FROM {IMAGE}\nRUN sleep 120\n"))]);
    let (_, running) = app.submit_build("slow-one", slow).await;
    let (_, queued) = app.submit_build("next-one", quick_exercise("next-one", &[])).await;
    let running_id = running["id"].as_str().unwrap().to_string();
    let queued_id = queued["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the first build to start", || Some(())).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b) = app.get(&format!("/v1/builds/{running_id}")).await;
        if b["state"] == "building" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, q) = app.get(&format!("/v1/builds/{queued_id}")).await;
    assert_eq!(q["state"], "queued", "one build at a time");
    app.stop_server().await;

    let again = start(test_settings(&app.data_dir, &app.instance)).await;
    let (_, b) = again.get(&format!("/v1/builds/{running_id}")).await;
    assert_eq!(b["state"], "failed");
    assert!(b["failure_reason"].as_str().unwrap().contains("interrupted by a runner restart"), "{b}");
    let q = again.wait_build(&queued_id, BUILD_DEADLINE).await;
    assert_eq!(q["state"], "succeeded", "the queued build ran after the restart: {q}");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_old_versions_are_removed_unless_current_or_in_use() {
    let app = spawn_app_with(|s| s.keep_versions = 1).await;
    let build = |n: u32| {
        let app = &app;
        async move {
            let script = format!("grep -qx 42 answer.txt && echo v{n}\n");
            let (_, b) = app.submit_build("gc", quick_exercise("gc", &[("tests/check.sh", &script)])).await;
            let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
            assert_eq!(b["state"], "succeeded", "{b}");
            b
        }
    };
    let image_exists = |b: &Value| {
        std::process::Command::new("docker")
            .args(["image", "inspect", b["image"].as_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    };
    let v1 = build(1).await;
    let s1 = app.session("ada", "gc").await;
    let v2 = build(2).await;
    assert!(image_exists(&v1), "a live session still runs v1");
    app.delete(&format!("/v1/sessions/{}", s1["id"].as_str().unwrap())).await;
    let v3 = build(3).await;
    assert!(!image_exists(&v1), "v1 is neither current, nor kept, nor in use");
    assert!(!image_exists(&v2));
    assert!(image_exists(&v3));
    let (_, versions) = app.get("/v1/exercises/gc/versions").await;
    let listed: Vec<&str> =
        versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![v3["version"].as_str().unwrap()]);
    for b in [&v1, &v2, &v3] {
        let _ = std::process::Command::new("docker").args(["rmi", b["image"].as_str().unwrap()]).output();
    }
}

/// A `RUN` step that allocates past the build's memory limit is killed (no swap beyond it), and
/// the build fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_over_its_memory_limit_fails() {
    let app = spawn_app_with(|s| s.build_memory_mb = 64).await;
    let hog = quick_exercise(
        "hog",
        &[("Dockerfile", &format!("FROM {IMAGE}\nRUN dd if=/dev/zero of=/dev/null bs=200M count=1\n"))],
    );
    let (_, b) = app.submit_build("hog", hog).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    let log = app.build_log(b["id"].as_str().unwrap()).await;
    assert_eq!(b["state"], "failed", "{log}");
    assert!(log.contains("returned a non-zero code: 137"), "killed by the memory limit: {log}");
}

/// The manifest's `writable` paths are writable by the learner in a session (sized tmpfs on the
/// read-only root); the rest of the root is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_writable_paths_are_the_only_writable_places_besides_the_workspace() {
    let app = spawn_app().await;
    let manifest = "slug = \"scratch\"\ntitle = \"t\"\ncheck = [\"sh\", \"/opt/exercise/tests/check.sh\"]\nwritable = [\"/var/cache/answers\"]\n";
    let repo = quick_exercise("scratch", &[("exercise.toml", manifest)]);
    let (_, b) = app.submit_build("scratch", repo).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "succeeded", "{}", app.build_log(b["id"].as_str().unwrap()).await);
    let s = app.session("ada", "scratch").await;
    let c = session_of(&app, &s);
    let (code, out) = sandbox_exec(&c, "echo x > /var/cache/answers/f && cat /var/cache/answers/f && id -u");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("x\n") && !out.ends_with("\n0\n"), "written as the learner: {out}");
    assert_ne!(sandbox_exec(&c, "touch /opt/x").0, 0, "the root stays read-only");
    assert_ne!(sandbox_exec(&c, "touch /var/cache/x").0, 0, "only the named path is writable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_over_its_time_limit_fails_with_the_reason() {
    let app = spawn_app_with(|s| s.build_timeout = Duration::from_secs(3)).await;
    let slow = quick_exercise("forever", &[("Dockerfile", &format!("FROM {IMAGE}\nRUN sleep 300\n"))]);
    let (_, b) = app.submit_build("forever", slow).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(b["state"], "failed");
    assert!(b["failure_reason"].as_str().unwrap().contains("timed out after 3 s"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_that_would_escape_the_sandbox_limits_are_refused() {
    let app = spawn_app().await;
    // A VOLUME would give learners an unbounded anonymous volume on the host's disk.
    let vol = quick_exercise(
        "volumed",
        &[("Dockerfile", &format!("FROM {IMAGE}\nCOPY --chown=1000:1000 exercise/ /workspace/\nCOPY tests/ /opt/exercise/tests/\nVOLUME /data\n"))],
    );
    let (_, b) = app.submit_build("volumed", vol).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed");
    assert!(b["failure_reason"].as_str().unwrap().contains("VOLUME"), "{b}");
    let image = b["image"].as_str().unwrap().to_string();
    let exists = |img: &str| {
        std::process::Command::new("docker").args(["image", "inspect", img]).output().unwrap().status.success()
    };
    assert!(!exists(&image), "a failed build leaves no image behind");
    // The same image registered directly is refused too.
    let tag = format!("exercise-runner-test/volumed-{}:1", app.instance);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {IMAGE}\nVOLUME /data\n")).unwrap();
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(built.status.success());
    let (status, v) = app.put("/v1/exercises/volumed", json!({"image": tag})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("image_declares_volumes")), "{v}");
    let _ = std::process::Command::new("docker").args(["rmi", &tag]).output();

    // Labels the runner recognises its containers by cannot be planted by an image.
    let planted = quick_exercise(
        "planted",
        &[(
            "Dockerfile",
            &format!("FROM {IMAGE}\nLABEL exercise-runner.build=planted\nCOPY tests/ /opt/exercise/tests/\n"),
        )],
    );
    let (_, b) = app.submit_build("planted", planted).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed");
    assert!(b["failure_reason"].as_str().unwrap().contains("labels"), "{b}");

    // ADD from a URL would make the engine fetch from the host's own network namespace.
    let ssrf = quick_exercise("ssrf", &[("Dockerfile", &format!("FROM {IMAGE}\nADD {}/metrics /opt/x\n", app.base))]);
    let (status, v) = app.submit_build("ssrf", ssrf).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exercise_cannot_fill_the_build_queue() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let slow = quick_exercise("greedy", &[("Dockerfile", &format!("FROM {IMAGE}\nRUN sleep 120 # {n}\n"))]);
        let (status, b) = app.submit_build("greedy", slow).await;
        assert_eq!(status, 202, "{b}");
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let (status, v) = app.submit_build("greedy", quick_exercise("greedy", &[])).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("build_queue_full")), "{v}");
    // Other exercises still get in.
    let (status, _) = app.submit_build("modest", quick_exercise("modest", &[])).await;
    assert_eq!(status, 202);
    for id in ids {
        app.post(&format!("/v1/builds/{id}/cancel"), json!({})).await;
    }
}

// ---- issue 15: builds reach nothing of the host ----

/// A copy of `exercise-images/examples/shell-wordcount` as exercise `slug`, with `extra` lines
/// after its Dockerfile's first line (the `FROM`) and, when given, a Dockerfile of its own.
fn wordcount_copy(slug: &str, dockerfile: impl FnOnce(&str) -> String) -> Vec<u8> {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&examples().join("shell-wordcount"), dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("exercise.toml")).unwrap();
    std::fs::write(dir.path().join("exercise.toml"), manifest.replace("\"shell-wordcount\"", &format!("\"{slug}\"")))
        .unwrap();
    let original = std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile(&original)).unwrap();
    tar_dir(dir.path())
}

/// A server on the host's loopback counting the connections it gets: what an `ADD <url>` would
/// read. Only loopback traffic.
async fn loopback_secret() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/secret", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 14\r\n\r\nloopback-only\n").await;
        }
    });
    (url, hits)
}

/// Each spelling of the attack, built the way the issue did (a copy of shell-wordcount
/// with the lines added): refused with 422 before anything is written. The full list of
/// spellings is in `builds::dockerfile`'s unit tests; these are the ones the issue names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_remote_add_is_refused_before_anything_is_written() {
    let app = spawn_app().await;
    let (url, hits) = loopback_secret().await;
    let slug = "ssrf-spellings";
    let spellings: Vec<(&str, String)> = vec![
        ("escape directive", format!("# escape=`\nFROM-LINE\nADD `\n{url} /opt/x\n")),
        ("whitespace after the continuation", format!("FROM-LINE\nADD \\ \n{url} /opt/x\n")),
        ("CRLF", format!("FROM-LINE\r\nADD \\\r\n{url} /opt/x\r\n")),
        ("ONBUILD ADD", format!("FROM-LINE\nONBUILD ADD {url} /opt/x\n")),
        ("JSON form", format!("FROM-LINE\nADD [\"{url}\", \"/opt/x\"]\n")),
        ("heredoc", format!("FROM-LINE\nRUN <<EOF\ntrue\nEOF\nADD {url} /opt/x\n")),
        ("directive in capitals", format!("# ESCAPE=`\nFROM-LINE\nADD `\n{url} /opt/x\n")),
        ("syntax directive", "# syntax=docker/dockerfile:1\nFROM-LINE\n".to_string()),
        ("ARG variable", format!("FROM-LINE\nARG U={url}\nADD $U /opt/x\n")),
        ("ARG variable in braces", format!("FROM-LINE\nARG U={url}\nADD ${{U}} /opt/x\n")),
        ("quotes inside the word", format!("FROM-LINE\nADD \"h\"{} /opt/x\n", &url[1..])),
    ];
    for (what, text) in &spellings {
        let repo = wordcount_copy(slug, |original| {
            let from = original.lines().find(|l| l.starts_with("FROM")).unwrap();
            let sep = if text.contains("\r\n") { "\r\n" } else { "\n" };
            format!("{}{sep}RUN cat /opt/x{sep}", text.replace("FROM-LINE", from).trim_end())
        });
        let (status, v) = app.submit_build(slug, repo).await;
        assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{what}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("line "), "{what}: the message names the line: {v}");
    }
    // The unchanged copy is accepted: the refusals are the lines, not the repository.
    let (status, v) = app.submit_build(slug, wordcount_copy(slug, str::to_string)).await;
    assert_eq!(status, 202, "{v}");
    app.post(&format!("/v1/builds/{}/cancel", v["id"].as_str().unwrap()), json!({})).await;
    let (_, list) = app.get(&format!("/v1/exercises/{slug}/builds")).await;
    assert_eq!(list["builds"].as_array().unwrap().len(), 1, "only the accepted one was recorded: {list}");
    let stored: Vec<_> = std::fs::read_dir(app.data_dir.join("builds"))
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "tar")).collect())
        .unwrap_or_default();
    assert!(stored.len() <= 1, "no repository of a refused build is stored: {stored:?}");
    assert_eq!(docker(&["images", "-q", &format!("exercise-runner/{slug}")]).trim(), "", "no image was made");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing fetched the loopback server");
}

/// A base image's ONBUILD triggers run in the build that starts FROM it: they meet the same
/// policy, and an image the engine would have to pull is refused (nothing is pulled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_images_with_remote_triggers_or_not_on_the_engine_are_refused() {
    // Both images are allowed by name, so what refuses them is the engine check.
    let app = spawn_app_with(|s| {
        s.build_base_images.push(format!("exercise-runner-test/onbuild-{}", s.instance));
        s.build_base_images.push("127.0.0.1:5000/not-here/at-all".into());
    })
    .await;
    let (url, hits) = loopback_secret().await;
    let tag = format!("exercise-runner-test/onbuild-{}:1", app.instance);
    let made = docker(&["create", "--label", &format!("exercise-runner.instance={}", app.instance), IMAGE]);
    docker(&[
        "commit",
        "--change",
        &format!("ONBUILD ADD {url} /opt/x"),
        "--change",
        &format!("LABEL exercise-runner.instance={}", app.instance),
        made.trim(),
        &tag,
    ]);
    docker(&["rm", made.trim()]);
    let repo =
        quick_exercise("triggered", &[("Dockerfile", &format!("FROM {tag}\nCOPY tests/ /opt/exercise/tests/\n"))]);
    let (status, v) = app.submit_build("triggered", repo).await;
    let _ = std::process::Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("ONBUILD trigger") && message.contains("ADD from a URL"), "{message}");

    let repo = quick_exercise("pulled", &[("Dockerfile", "FROM 127.0.0.1:5000/not-here/at-all:1\n")]);
    let (status, v) = app.submit_build("pulled", repo).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not on this engine"), "{v}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `COPY --from=<image>` reads any file of the image, and the engine resolves a name it has no
/// tag for by searching image IDs by prefix: `COPY --from=<5 characters>` printed another
/// exercise's hidden tests in the build log. ID-like references are refused, so are images
/// outside `RUNNER_BUILD_BASE_IMAGES` (another exercise's by its name) with the same answer
/// whether they exist or not, and an exercise image under an allowed repository name (an
/// exercise whose slug is `busybox`) fails the engine check as if it were absent. Nothing is
/// queued for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_images_on_the_engine_are_not_readable_by_id_prefix_or_by_name() {
    let app = spawn_app().await;
    let inst = app.instance.clone();
    let label = format!("exercise-runner.instance={inst}");
    // Another exercise's image with hidden tests, tagged and labelled as the runner tags and
    // labels its builds (a real build would take a minute; the policy sees the same image).
    let victim = format!("exercise-runner/victim-{inst}:{}", &inst[5..17]);
    let maker = format!("{inst}-victim");
    docker(&[
        "run",
        "--name",
        &maker,
        "--label",
        &label,
        "--user",
        "0",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /opt/exercise/tests && echo HIDDEN-TESTS > /opt/exercise/tests/check.sh",
    ]);
    let _rm_maker = undo(&["docker", "rm", "-f", &maker]);
    let _rmi = undo(&["docker", "rmi", "-f", &victim]);
    let mut prefix = None;
    let mut _made = Vec::new();
    for nonce in 0..40 {
        docker(&[
            "commit",
            "--change",
            &format!("LABEL exercise-runner.exercise=victim-{inst} nonce={nonce}"),
            "--change",
            &format!("LABEL {label}"),
            &maker,
            &victim,
        ]);
        let id =
            docker(&["image", "inspect", "-f", "{{.Id}}", &victim]).trim().trim_start_matches("sha256:").to_string();
        _made.push(undo(&["docker", "rmi", "-f", &id])); // a commit over the tag leaves the last one untagged
        let p = id[..5].to_string();
        // The attack needs a prefix with a letter that the engine resolves to this image alone.
        let resolved =
            std::process::Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &p]).output().unwrap();
        if p.bytes().any(|b| (b'a'..=b'f').contains(&b)) && String::from_utf8_lossy(&resolved.stdout).contains(&id) {
            prefix = Some(p);
            break;
        }
    }
    let prefix = prefix.expect("an image ID whose first 5 characters hold a letter and name it alone");

    let attempts = [
        (
            "thief",
            format!(
                "FROM {IMAGE}\nCOPY --from={prefix} /opt/exercise/ /loot/\nRUN find /loot -type f -exec cat {{}} +\n"
            ),
            "image ID",
        ),
        ("thief-sha", format!("FROM {IMAGE}\nCOPY --from=sha256:{prefix} /opt/exercise/ /loot/\n"), "image ID"),
        ("thief-from", format!("FROM {prefix}\n"), "image ID"),
        ("thief-name", format!("FROM {victim}\nRUN cat /opt/exercise/tests/check.sh\n"), "RUNNER_BUILD_BASE_IMAGES"),
        (
            "thief-copy",
            format!("FROM {IMAGE}\nCOPY --from={victim} /opt/exercise/ /loot/\n"),
            "RUNNER_BUILD_BASE_IMAGES",
        ),
    ];
    for (slug, dockerfile, why) in &attempts {
        let (status, v) = app.submit_build(slug, quick_exercise(slug, &[("Dockerfile", dockerfile)])).await;
        assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{slug}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{slug}: {v}");
    }
    // Not allowed: one answer, whether the image exists or not.
    let message = |v: &Value, name: &str| v["error"]["message"].as_str().unwrap().replace(name, "<image>");
    let absent = format!("exercise-runner/absent-{inst}:{}", &inst[5..17]);
    let (_, exists) =
        app.submit_build("probe", quick_exercise("probe", &[("Dockerfile", &format!("FROM {victim}\n"))])).await;
    let (_, missing) =
        app.submit_build("probe", quick_exercise("probe", &[("Dockerfile", &format!("FROM {absent}\n"))])).await;
    assert_eq!(message(&exists, &victim), message(&missing, &absent), "{exists} / {missing}");

    // An exercise image under an allowed repository's name is no build input either, and the
    // answer is the one for an image that is not there.
    let shadow = format!("exercise-runner/busybox:victim-{inst}");
    let _rmi_shadow = undo(&["docker", "rmi", "-f", &shadow]);
    docker(&["tag", &victim, &shadow]);
    let not_there = format!("exercise-runner/busybox:absent-{inst}");
    let (status, v) =
        app.submit_build("probe", quick_exercise("probe", &[("Dockerfile", &format!("FROM {shadow}\n"))])).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_dockerfile")), "{v}");
    let (_, absent_v) =
        app.submit_build("probe", quick_exercise("probe", &[("Dockerfile", &format!("FROM {not_there}\n"))])).await;
    assert!(absent_v["error"]["message"].as_str().unwrap().contains("not on this engine"), "{absent_v}");
    assert_eq!(message(&v, &shadow), message(&absent_v, &not_there));

    for slug in attempts.iter().map(|a| a.0).chain(["probe"]) {
        let (_, list) = app.get(&format!("/v1/exercises/{slug}/builds")).await;
        assert!(list["builds"].as_array().is_none_or(|b| b.is_empty()), "{slug}: nothing was queued: {list}");
        assert_eq!(docker(&["images", "-q", &format!("exercise-runner/{slug}")]).trim(), "", "no image was made");
    }
}

/// Runs a command when dropped (cleanup that a failed assertion does not skip).
struct Undo(Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0[0]).args(&self.0[1..]).output();
    }
}

fn undo(args: &[&str]) -> Undo {
    Undo(args.iter().map(|a| a.to_string()).collect())
}

fn iptables(args: &[&str]) -> bool {
    std::process::Command::new("iptables").arg("-w").args(args).status().unwrap().success()
}

async fn managed_plans() -> Vec<runner::builds::firewall::Plan> {
    runner::builds::firewall::plans(runner::engine::MANAGED_BRIDGE, &[]).await.unwrap()
}

/// What of the managed bridge's isolation is not in place.
async fn isolation_problems() -> Vec<String> {
    let mut problems = Vec::new();
    for plan in managed_plans().await {
        problems.extend(runner::builds::firewall::inspect(&plan).await.unwrap().problems);
    }
    problems
}

/// Waits until `/readyz` names `rule` among the restored ones and the firewall is as planned.
async fn until_restored(app: &TestApp, rule: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, ready) = app.get("/readyz").await;
        let iso = ready["checks"]["build_network"].clone();
        let named = iso["restored"].as_array().is_some_and(|r| r.iter().any(|r| r.as_str() == Some(rule)));
        if named && isolation_problems().await.is_empty() {
            return iso;
        }
        assert!(std::time::Instant::now() < deadline, "{rule} was not reported and put back: {iso}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `RUN` steps run on the runner's own bridge. Its packets jump, by the first rule of INPUT and
/// of DOCKER-USER (FORWARD without it), to the runner's chains, which drop what goes to the
/// host's addresses, its published ports, link-local metadata and private networks. By this
/// workplace's rule tests send packets only to loopback, so the drops are asserted by the rules
/// being in place (read back with `iptables -S`), not by sending packets to the gateway,
/// 169.254.169.254 or a private address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_steps_build_on_a_firewalled_network_and_a_removed_rule_is_put_back() {
    use runner::{
        builds::firewall::{chain_rules, FORWARD_CHAIN},
        engine::{MANAGED_BRIDGE, MANAGED_NETWORK},
    };
    let app = spawn_app().await;
    let (_, ready) = app.get("/readyz").await;
    let iso = &ready["checks"]["build_network"];
    assert_eq!((iso["ok"].as_bool(), iso["mode"].as_str()), (Some(true), Some("managed")), "{ready}");
    assert_eq!(iso["interface"], MANAGED_BRIDGE);
    let net: Value = serde_json::from_str(&docker(&["network", "inspect", MANAGED_NETWORK])).unwrap();
    assert_eq!(net[0]["Driver"], "bridge");
    assert_eq!(net[0]["Options"]["com.docker.network.bridge.name"], MANAGED_BRIDGE);
    assert_eq!(net[0]["Labels"]["exercise-runner.managed"], "true");
    assert_eq!(isolation_problems().await, Vec::<String>::new());
    let plans = managed_plans().await;
    let jump = &plans[0].jumps[0];
    let input = chain_rules("iptables", "INPUT").await.unwrap().unwrap();
    assert_eq!(input[0], jump.spec, "the jump is INPUT's first rule: {input:?}");
    let forward = chain_rules("iptables", FORWARD_CHAIN).await.unwrap().unwrap();
    for range in ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"] {
        assert!(forward.iter().any(|r| r.join(" ") == format!("-d {range} -j DROP")), "{range}: {forward:?}");
    }

    // Someone removes a drop from the runner's chain: the next round reports it and puts it back.
    assert!(iptables(&["-D", FORWARD_CHAIN, "-d", "10.0.0.0/8", "-j", "DROP"]));
    until_restored(&app, &format!("iptables -A {FORWARD_CHAIN} -d 10.0.0.0/8 -j DROP")).await;

    // Someone inserts an ACCEPT above the jump (`iptables -C` would still find the jump): the
    // next round puts the jump back on top.
    let remove_accept = undo(&["iptables", "-w", "-D", "INPUT", "-i", MANAGED_BRIDGE, "-j", "ACCEPT"]);
    assert!(iptables(&["-I", "INPUT", "1", "-i", MANAGED_BRIDGE, "-j", "ACCEPT"]));
    let restored = until_restored(&app, &format!("{} (the first rule of INPUT)", jump.describe())).await;
    assert_eq!(restored["ok"], true, "{restored}");
    let input = chain_rules("iptables", "INPUT").await.unwrap().unwrap();
    assert_eq!(input[0], jump.spec, "{input:?}");
    assert_eq!(input.iter().filter(|r| **r == jump.spec).count(), 1, "one jump, on top: {input:?}");
    drop(remove_accept);
    let input = chain_rules("iptables", "INPUT").await.unwrap().unwrap();
    assert!(!input.iter().any(|r| r.join(" ") == format!("-i {MANAGED_BRIDGE} -j ACCEPT")), "{input:?}");

    // A RUN step cannot reach a server on the host's loopback: 127.0.0.1 in the build
    // container is its own. (Loopback traffic only.)
    let (url, hits) = loopback_secret().await;
    let run = format!(
        "RUN grep -q 127.0.0.11 /etc/resolv.conf && echo on-the-runners-network\n\
         RUN if wget -q -T 3 -O - {url}; then echo REACHED-THE-HOST; exit 1; fi; echo host-loopback-unreachable\n"
    );
    let repo = quick_exercise(
        "fenced",
        &[(
            "Dockerfile",
            &format!(
                "FROM {IMAGE}\n{run}COPY tests/ /opt/exercise/tests/\nCOPY --chown=1000:1000 exercise/ /workspace/\n"
            ),
        )],
    );
    let (status, b) = app.submit_build("fenced", repo).await;
    assert_eq!(status, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    let log = app.build_log(b["id"].as_str().unwrap()).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{log}");
    assert!(log.contains("on-the-runners-network") && log.contains("host-loopback-unreachable"), "{log}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let _ = std::process::Command::new("docker").args(["rmi", b["image"].as_str().unwrap()]).output();
}

/// An operator's own build network is checked, not changed: without the rules `/readyz` says so
/// and builds are refused; `none` needs no rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_build_network_without_the_rules_is_reported_and_builds_are_refused() {
    let (instance, tmp) = new_instance();
    let name = format!("{instance}-build");
    let bridge = format!("ert{}", &instance[5..13]);
    docker(&[
        "network",
        "create",
        "--label",
        &format!("exercise-runner.instance={instance}"),
        "-o",
        &format!("com.docker.network.bridge.name={bridge}"),
        &name,
    ]);
    let mut settings = test_settings(tmp.path(), &instance);
    settings.build_network = name.clone();
    let mut app = start(settings).await;
    app.adopt_dir(tmp);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "sessions still work: {ready}");
    let iso = &ready["checks"]["build_network"];
    assert_eq!((iso["ok"].as_bool(), iso["mode"].as_str()), (Some(false), Some("operator")), "{ready}");
    assert_eq!(iso["interface"], bridge);
    let missing: Vec<&str> = iso["missing"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    let plans = runner::builds::firewall::plans(&bridge, &[]).await.unwrap();
    for jump in plans.iter().flat_map(|p| &p.jumps) {
        let want = format!("{} (the first rule of {})", jump.describe(), jump.chain);
        assert!(missing.contains(&want.as_str()), "{want} in {missing:?}");
    }
    let (_, b) = app.submit_build("unfenced", quick_exercise("unfenced", &[])).await;
    let b = app.wait_build(b["id"].as_str().unwrap(), BUILD_DEADLINE).await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(b["failure_reason"].as_str().unwrap().contains("not isolated"), "{b}");
    // The runner added nothing to the operator's firewall.
    for jump in plans.iter().flat_map(|p| &p.jumps) {
        let hook = runner::builds::firewall::chain_rules(jump.binary, &jump.chain).await.unwrap().unwrap();
        assert!(!hook.iter().any(|r| r.contains(&bridge)), "{hook:?}");
    }
    drop(app);
    docker(&["network", "rm", &name]);

    let app = spawn_app_with(|s| s.build_network = "none".into()).await;
    let (_, ready) = app.get("/readyz").await;
    assert_eq!(ready["checks"]["build_network"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["build_network"]["mode"], "none");
}
