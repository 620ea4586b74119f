//! Builds the operators' dashboard from npm packages (`dashboard/`, esbuild) into OUT_DIR, where
//! `src/http/dashboard/page.rs` embeds it: the runner serves it itself, nothing is fetched at
//! run time (the same recipe as web-ide-proxy's IDE page).

use std::{path::Path, process::Command};

fn run(cmd: &mut Command, what: &str) {
    let status =
        cmd.status().unwrap_or_else(|e| panic!("{what}: {e} (install Node.js and npm: scripts/host-setup.sh does)"));
    assert!(status.success(), "{what} failed with {status}");
}

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    for p in ["src", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=dashboard/{p}");
    }
    if !web.join("package.json").exists() || !web.join("build.mjs").exists() {
        // The front-end is not there (a partial checkout): a page that says so.
        for (name, body) in [
            ("index.html", "<!doctype html><title>Dashboard</title><p>The dashboard front-end was not built.</p>"),
            ("app.js", ""),
            ("app.css", ""),
        ] {
            std::fs::write(out.join(name), body).unwrap();
        }
        return;
    }
    if !web.join("node_modules").exists() {
        run(
            Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&web),
            "npm ci (runner/dashboard)",
        );
    }
    run(Command::new("node").arg("build.mjs").current_dir(&web), "node build.mjs (runner/dashboard)");
    for name in ["index.html", "app.js", "app.css"] {
        std::fs::copy(web.join("dist").join(name), out.join(name))
            .unwrap_or_else(|e| panic!("dashboard/dist/{name}: {e}"));
    }
}
