//! Builds the IDE page from npm packages (`web/`, esbuild) into OUT_DIR, where `src/page.rs`
//! embeds it: the proxy serves the page itself (never the sandbox), nothing is fetched at run time.

use std::{path::Path, process::Command};

fn run(cmd: &mut Command, what: &str) {
    let status =
        cmd.status().unwrap_or_else(|e| panic!("{what}: {e} (install Node.js and npm: scripts/host-setup.sh does)"));
    assert!(status.success(), "{what} failed with {status}");
}

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("web");
    std::fs::create_dir_all(&out).unwrap();
    for p in ["src", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=web/{p}");
    }
    if !web.join("package.json").exists() || !web.join("build.mjs").exists() {
        // The front-end is not there (a partial checkout): a page that says so.
        for (name, body) in [
            ("index.html", "<!doctype html><title>IDE</title><p>The IDE front-end was not built.</p>"),
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
            "npm ci",
        );
    }
    run(Command::new("node").arg("build.mjs").current_dir(&web), "node build.mjs");
    for name in ["index.html", "app.js", "app.css"] {
        std::fs::copy(web.join("dist").join(name), out.join(name)).unwrap_or_else(|e| panic!("web/dist/{name}: {e}"));
    }
}
