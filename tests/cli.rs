//! The `runner` command line against a real runner: the real binary, run as a user would, with
//! only the settings file `runner serve` was started with — the token is the one `serve`
//! generated in its data directory, never given in the CLI's environment.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

/// `runner serve` as a child process, configured by a settings file only (no RUNNER_* variable,
/// no token: it generates one into its data directory).
struct Served {
    child: Child,
    base: String,
    config: PathBuf,
    data_dir: PathBuf,
    instance: String,
    slugs: Vec<String>,
}

impl Served {
    async fn start(dir: &Path, instance: &str) -> Served {
        let port = free_port();
        let data_dir = dir.join("data");
        let config = dir.join("runner.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\ninstance = \"{instance}\"\n\
                 reconcile_interval_secs = 1\nsandbox_memory_mb = 128\nsandbox_workspace_mb = 32\n\
                 git_allow_local = true\nlog = \"info\"\n",
                data = data_dir.display().to_string()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("runner.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RUNNER_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the runner binary");
        let served = Served {
            child,
            base: format!("http://127.0.0.1:{port}"),
            config,
            data_dir,
            instance: instance.to_string(),
            slugs: vec![],
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", served.base)).send().await {
                if r.status() == 200 {
                    return served;
                }
            }
            assert!(
                Instant::now() < deadline,
                "runner did not get ready; log:\n{}",
                std::fs::read_to_string(dir.join("runner.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The CLI with nothing but `RUNNER_CONFIG` in its environment.
    fn cli(&self, args: &[&str]) -> Ran {
        run_cli(args, &[("RUNNER_CONFIG", self.config.to_str().unwrap())])
    }

    /// What `serve` generated, for the calls the CLI has no command for (a learner's session is
    /// the course site's to create).
    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-token")).unwrap().trim().to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup_instance(&self.instance, &self.data_dir);
        for slug in &self.slugs {
            let images = Command::new("docker")
                .args(["images", "--format", "{{.Repository}}:{{.Tag}}", &format!("exercise-runner/{slug}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for image in images.lines().filter(|l| !l.is_empty()) {
                let _ = Command::new("docker").args(["image", "rm", "-f", image]).output();
            }
        }
    }
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `runner ARGS` with exactly `env` as its environment.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the runner binary");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An exercise repository as an author has it: a directory.
fn exercise_dir(slug: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::io::Cursor::new(quick_exercise(slug, extra))).unpack(dir.path()).unwrap();
    dir
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn json_of(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{ran}"))
}

/// No Rust `Debug` output in what people read.
fn reads_as_prose(text: &str) {
    for leak in ["Slug(", "Some(", "Error {", "kind:", "reqwest::", "hyper"] {
        assert!(!text.contains(leak), "{leak:?} in: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_builds_lists_and_ends_with_the_token_serve_wrote() {
    require_docker();
    let (instance, tmp) = new_instance();
    let mut served = Served::start(tmp.path(), &instance).await;
    let suffix = &instance["test-".len()..];
    let (good, bad) = (format!("cli-{suffix}"), format!("cli-bad-{suffix}"));
    served.slugs = vec![good.clone(), bad.clone()];
    assert!(!served.config.to_string_lossy().is_empty() && served.data_dir.join("api-token").exists());

    // An author builds from a directory: the log is followed to its end, exit 0.
    let repo = exercise_dir(&good, &[]);
    let built = served.cli(&["exercises", "build", &good, "--dir", repo.path().to_str().unwrap()]);
    assert_eq!(built.code, 0, "{built}");
    assert!(built.stdout.contains("self-test") && built.stdout.contains("succeeded"), "the log: {built}");
    assert!(
        built.stderr.contains(&format!("of {good}: queued")) && built.stderr.contains("succeeded: version"),
        "{built}"
    );
    let build_id = built.stderr.split_whitespace().nth(1).unwrap().to_string();

    // The same repository from git, with --json: one document, the build as it ended; the same
    // content is not built again.
    let bare = tempfile::tempdir().unwrap();
    git(bare.path(), &["init", "--bare", "-q"]);
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "exercise"]);
    git(repo.path(), &["push", "-q", bare.path().to_str().unwrap(), "HEAD:main"]);
    let from_git =
        served.cli(&["exercises", "build", &good, "--git", bare.path().to_str().unwrap(), "--ref", "main", "--json"]);
    assert_eq!(from_git.code, 0, "{from_git}");
    let b = json_of(&from_git);
    assert_eq!((b["state"].as_str(), b["source"]["kind"].as_str()), (Some("succeeded"), Some("git")), "{b}");
    assert_eq!(b["cached"], true, "{b}");

    // A build whose solution does not pass its check fails: exit 1, with the reason.
    let broken = exercise_dir(&bad, &[("solution/answer.txt", "41\n")]);
    let failed = served.cli(&["exercises", "build", &bad, "--dir", broken.path().to_str().unwrap()]);
    assert_eq!(failed.code, 1, "{failed}");
    assert!(failed.stderr.contains("failed: "), "{failed}");

    // The registry, as JSON and as a table.
    let listed = served.cli(&["exercises", "list", "--json"]);
    assert_eq!(listed.code, 0, "{listed}");
    let exercises = json_of(&listed);
    let mine = exercises["exercises"].as_array().unwrap().iter().find(|e| e["slug"] == good.as_str()).cloned();
    let version = mine.as_ref().and_then(|e| e["current_version"].as_str()).unwrap_or_else(|| panic!("{exercises}"));
    assert_eq!(Some(version), b["version"].as_str());
    let table = served.cli(&["exercises", "list"]);
    assert!(
        table.stdout.starts_with("SLUG ") && table.stdout.lines().any(|l| l.starts_with(&good) && l.contains(version)),
        "{table}"
    );
    let versions = served.cli(&["exercises", "versions", &good]);
    assert!(versions.stdout.lines().any(|l| l.starts_with(version) && l.contains('*')), "{versions}");
    let published = served.cli(&["exercises", "publish", &good, version]);
    assert_eq!(published.code, 0, "{published}");
    assert!(published.stdout.lines().any(|l| l.starts_with("current_version:") && l.ends_with(version)), "{published}");
    let shown = served.cli(&["builds", "show", &build_id, "--logs"]);
    assert_eq!(shown.code, 0, "{shown}");
    assert!(
        shown.stdout.contains("self-test") && shown.stdout.contains("\nstate:") && shown.stdout.contains("succeeded"),
        "{shown}"
    );

    // A learner's session (the course site makes it), then an operator's view of it.
    let client = reqwest::Client::new();
    let s: Value = client
        .post(format!("{}/v1/sessions", served.base))
        .bearer_auth(served.token())
        .json(&json!({"learner": "ada", "exercise": good}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = s["id"].as_str().unwrap_or_else(|| panic!("{s}")).to_string();
    let sessions = served.cli(&["sessions", "list"]);
    assert_eq!(sessions.code, 0, "{sessions}");
    let header = sessions.stdout.lines().next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("LEARNER") && header.contains("STATE"), "{sessions}");
    let row = sessions.stdout.lines().find(|l| l.starts_with(&sid)).unwrap_or_else(|| panic!("{sessions}"));
    assert!(row.contains(" ada ") && row.contains(&good) && row.contains("running"), "{row}");
    let filtered = served.cli(&["sessions", "list", "--learner", "nobody", "--json"]);
    assert_eq!(json_of(&filtered)["sessions"], json!([]), "{filtered}");
    let one = served.cli(&["sessions", "show", &sid]);
    assert!(one.stdout.lines().any(|l| l.starts_with("state:") && l.ends_with("running")), "{one}");

    let ended = served.cli(&["sessions", "end", &sid]);
    assert_eq!(ended.code, 0, "{ended}");
    assert!(ended.stdout.lines().any(|l| l.starts_with("state:") && l.ends_with("stopped")), "{ended}");
    let after = served.cli(&["sessions", "show", &sid, "--json"]);
    assert_eq!(json_of(&after)["state"], "stopped", "{after}");

    // Errors: what the API said, with its code, and the documented exit codes.
    for unknown in [uuid::Uuid::new_v4().to_string(), "nope".to_string()] {
        let missing = served.cli(&["sessions", "show", &unknown]);
        assert_eq!(missing.code, 3, "{missing}");
        assert!(missing.stderr.contains("session_not_found") && missing.stderr.contains("does not exist"), "{missing}");
        assert!(missing.stdout.is_empty(), "{missing}");
        reads_as_prose(&missing.stderr);
    }
    let missing = served.cli(&["exercises", "show", "no-such-exercise"]);
    assert_eq!(missing.code, 3, "{missing}");
    assert!(missing.stderr.contains("exercise_not_found"), "{missing}");
    let finished = served.cli(&["builds", "cancel", &build_id]);
    assert_eq!(finished.code, 4, "a finished build cannot be cancelled: {finished}");
    assert!(finished.stderr.contains("build_finished"), "{finished}");
    reads_as_prose(&finished.stderr);
    let refused = served.cli(&["exercises", "build", "Not A Slug", "--dir", repo.path().to_str().unwrap()]);
    assert_eq!(refused.code, 4, "{refused}");

    // The same settings given as the environment instead of the file work the same way.
    let listen = served.base.trim_start_matches("http://");
    let by_env = run_cli(
        &["sessions", "list", "--json"],
        &[("RUNNER_DATA_DIR", served.data_dir.to_str().unwrap()), ("RUNNER_LISTEN", listen)],
    );
    assert_eq!(by_env.code, 0, "{by_env}");
    assert!(json_of(&by_env)["sessions"].as_array().unwrap().iter().any(|s| s["id"] == sid.as_str()), "{by_env}");

    // No token where the CLI looks: a usage error that says where it looked (nothing is sent).
    let elsewhere = tempfile::tempdir().unwrap();
    let no_token = run_cli(
        &["sessions", "list"],
        &[("RUNNER_DATA_DIR", elsewhere.path().to_str().unwrap()), ("RUNNER_LISTEN", listen)],
    );
    assert_eq!(no_token.code, 2, "{no_token}");
    assert!(no_token.stderr.contains("api-token") && no_token.stderr.contains("RUNNER_API_TOKEN"), "{no_token}");
    assert!(!elsewhere.path().join("api-token").exists(), "the CLI never writes a token");
    // A wrong token is refused: 4.
    let wrong = run_cli(
        &["sessions", "list"],
        &[
            ("RUNNER_API_TOKEN", "not-the-token"),
            ("RUNNER_DATA_DIR", elsewhere.path().to_str().unwrap()),
            ("RUNNER_LISTEN", listen),
        ],
    );
    assert_eq!(wrong.code, 4, "{wrong}");
    assert!(wrong.stderr.contains("unauthorized"), "{wrong}");
    // Nothing listening: 5, naming the URL and where it came from.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let unreachable = served.cli(&["sessions", "list", "--url", &closed]);
    assert_eq!(unreachable.code, 5, "{unreachable}");
    assert!(unreachable.stderr.contains(&closed) && unreachable.stderr.contains("refused"), "{unreachable}");
    reads_as_prose(&unreachable.stderr);
    // Bad arguments: clap's 2.
    assert_eq!(served.cli(&["sessions", "list", "--state", "sleeping"]).code, 2);
}
