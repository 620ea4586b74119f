//! The self-test of a build: in a real sandbox with the exercise's limits, the check must fail on
//! the learner's starting files (else it would accept unchanged work) and pass once the reference
//! solution is copied over them (else no learner could pass).

use std::sync::Arc;

use anyhow::bail;

use super::{archive::Tree, log::BuildLog, manifest::Manifest, RunSummary, SelfTestReport};
use crate::{
    app::App,
    checks,
    docker::{
        policy::{self, Purpose, WorkspaceMount},
        ExecRequest, SandboxOwner, SandboxSpec,
    },
    exercises::effective_limits,
};

pub struct Outcome {
    pub report: SelfTestReport,
    pub result: anyhow::Result<()>,
}

pub async fn run(
    app: &Arc<App>,
    build_id: &str,
    image: &str,
    m: &Manifest,
    tree: &Tree,
    log: &mut BuildLog,
) -> Outcome {
    let mut report = SelfTestReport::default();
    let result = steps(app, build_id, image, m, tree, log, &mut report).await;
    Outcome { report, result }
}

async fn steps(
    app: &Arc<App>,
    build_id: &str,
    image: &str,
    m: &Manifest,
    tree: &Tree,
    log: &mut BuildLog,
    report: &mut SelfTestReport,
) -> anyhow::Result<()> {
    let s = &app.settings;
    let spec = SandboxSpec {
        image: image.to_string(),
        limits: effective_limits(&s.default_limits, &s.limit_caps, &m.limits),
        network: if m.network {
            s.sandbox_network.clone()
        } else {
            None
        },
        workdir: m.workdir.clone(),
        writable: m.writable.clone(),
        check: m.check.clone(),
    };
    let owner = SandboxOwner {
        instance: app.engine.instance(),
        purpose: Purpose::SelfTest(build_id),
        learner: "self-test",
        exercise: &m.slug,
    };
    let config = policy::sandbox_container(
        &spec,
        &owner,
        WorkspaceMount::Tmpfs,
        s.runtime,
        &s.sandbox_user,
    );
    let name = owner.purpose.container_name(owner.instance);
    app.engine.remove_container(&name).await?;
    let container = app.engine.create_container(&name, config).await?;
    app.engine.start_container(&container).await?;

    let user = &s.sandbox_user;
    let (container, spec) = (&container, &spec);
    let run = |label: &'static str| async move {
        let out = checks::run_check(&app.engine, container, spec, user, 64 * 1024).await?;
        anyhow::Ok((label, out))
    };
    let (label, first) = run("starting files").await?;
    log.step(&format!(
        "check on the {label}: exit {} in {} ms",
        first.exit_code, first.duration_ms
    ));
    log.write(&first.output);
    report.starting_files = Some(RunSummary {
        passed: first.passed,
        exit_code: first.exit_code,
        duration_ms: first.duration_ms,
    });
    if first.passed {
        bail!("self-test: the check passes on the learner's starting files, so it would accept unchanged work");
    }

    log.step(&format!(
        "copying the reference solution ({}/) over the starting files",
        m.solution
    ));
    let mut req = ExecRequest::new(
        vec![
            "tar".into(),
            "-x".into(),
            "-o".into(),
            "-C".into(),
            m.workdir.clone(),
        ],
        user,
    );
    req.stdin = Some(tree.subtree_tar(&m.solution));
    let copied = app.engine.exec(container, req).await?;
    if copied.exit_code != 0 {
        bail!(
            "self-test: copying the solution into the sandbox failed: {}",
            copied.output.trim()
        );
    }

    let (label, second) = run("reference solution").await?;
    log.step(&format!(
        "check with the {label}: exit {} in {} ms",
        second.exit_code, second.duration_ms
    ));
    log.write(&second.output);
    report.solution = Some(RunSummary {
        passed: second.passed,
        exit_code: second.exit_code,
        duration_ms: second.duration_ms,
    });
    if !second.passed {
        let why = if second.timed_out { " (timed out)" } else { "" };
        bail!(
            "self-test: the check fails with the reference solution{why} (exit {})",
            second.exit_code
        );
    }
    app.engine.remove_container(container).await?;
    Ok(())
}
