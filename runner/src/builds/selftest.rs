//! The self-test of a build: in a real sandbox with the exercise's limits, the check must fail on
//! the learner's starting files (else it would accept unchanged work) and pass once the reference
//! solution is copied over them (else no learner could pass). A refactoring exercise
//! (`starting_files_pass = true`) must pass on both instead.

use std::sync::Arc;

use anyhow::bail;

use super::{archive::Tree, log::BuildLog, manifest::Manifest, Builds, RunSummary, SelfTestReport};
use crate::{
    checks,
    domain::SandboxSpec,
    engine::{ExecRequest, Purpose, SandboxOwner, WorkspaceMount},
    exercises::effective_limits,
};

pub struct Outcome {
    pub report: SelfTestReport,
    pub result: anyhow::Result<()>,
}

pub async fn run(
    builds: &Arc<Builds>,
    build_id: &str,
    image: &str,
    m: &Manifest,
    tree: &Tree,
    log: &mut BuildLog,
) -> Outcome {
    let mut report = SelfTestReport::default();
    let result = steps(builds, build_id, image, m, tree, log, &mut report).await;
    Outcome { report, result }
}

async fn steps(
    builds: &Arc<Builds>,
    build_id: &str,
    image: &str,
    m: &Manifest,
    tree: &Tree,
    log: &mut BuildLog,
    report: &mut SelfTestReport,
) -> anyhow::Result<()> {
    let s = &builds.settings;
    let spec = SandboxSpec {
        image: image.to_string(),
        limits: effective_limits(&s.default_limits, &s.limit_caps, &m.limits),
        network: if m.network { s.sandbox_network.clone() } else { None },
        workdir: m.workdir.clone(),
        writable: m.writable.clone(),
        check: m.check.clone(),
        ide: true,
    };
    let owner = SandboxOwner {
        instance: builds.engine.instance(),
        purpose: Purpose::SelfTest(build_id),
        learner: "self-test",
        exercise: &m.slug,
    };
    let name = owner.purpose.container_name(owner.instance);
    builds.engine.remove_container(&name).await?;
    let container =
        builds.engine.create_sandbox(&spec, &owner, WorkspaceMount::Tmpfs, s.runtime, &s.sandbox_user).await?;
    builds.engine.start_container(&container).await?;

    let user = &s.sandbox_user;
    let (container, spec) = (&container, &spec);
    checks::wait_for_services(&builds.engine, container, user, &spec.check.services).await?;
    // Images on the base image seed an empty workspace themselves (sandbox-init); for any other
    // image the self-test puts the starting files in place, as the learner.
    let mut probe = ExecRequest::new(vec!["ls".into(), "-A".into(), m.workdir.clone()], user);
    probe.deadline = std::time::Duration::from_secs(10);
    let listing = builds.engine.exec(container, probe).await?;
    if listing.exit_code == 0 && listing.output.split_whitespace().all(|e| e == "lost+found") {
        log.step(&format!("seeding the workspace with the starting files ({}/)", m.learner_files));
        extract(builds, container, user, &m.workdir, tree.subtree_tar(&m.learner_files)).await?;
    }
    let run = |label: &'static str| async move {
        let out = checks::run_check(&builds.engine, container, spec, user, 64 * 1024).await?;
        anyhow::Ok((label, out))
    };
    let (label, first) = run("starting files").await?;
    log.step(&format!("check on the {label}: exit {} in {} ms", first.exit_code, first.duration_ms));
    log.write(&first.output);
    report.starting_files =
        Some(RunSummary { passed: first.passed, exit_code: first.exit_code, duration_ms: first.duration_ms });
    report.starting_files_pass = m.starting_files_pass;
    match (m.starting_files_pass, first.passed) {
        (false, true) => bail!(
            "self-test: the check passes on the learner's starting files, so it would accept unchanged work \
             (a refactoring exercise whose starting files pass by design says starting_files_pass = true in {})",
            super::manifest::FILE
        ),
        (true, false) => bail!(
            "self-test: {} says starting_files_pass = true, but the check fails on the starting files (exit {})",
            super::manifest::FILE,
            first.exit_code
        ),
        _ => {}
    }

    log.step(&format!("copying the reference solution ({}/) over the starting files", m.solution));
    extract(builds, container, user, &m.workdir, tree.subtree_tar(&m.solution)).await?;

    let (label, second) = run("reference solution").await?;
    log.step(&format!("check with the {label}: exit {} in {} ms", second.exit_code, second.duration_ms));
    log.write(&second.output);
    report.solution =
        Some(RunSummary { passed: second.passed, exit_code: second.exit_code, duration_ms: second.duration_ms });
    if !second.passed {
        let why = if second.timed_out { " (timed out)" } else { "" };
        bail!("self-test: the check fails with the reference solution{why} (exit {})", second.exit_code);
    }
    builds.engine.remove_container(container).await?;
    Ok(())
}

/// Unpacks a tar inside the sandbox, as the sandbox user: the host never writes into a
/// sandbox-writable path itself (docs/ARCHITECTURE.md, invariant 4).
async fn extract(builds: &Builds, container: &str, user: &str, dir: &str, tar: Vec<u8>) -> anyhow::Result<()> {
    let mut req = ExecRequest::new(vec!["tar".into(), "-x".into(), "-o".into(), "-C".into(), dir.to_string()], user);
    req.stdin = Some(tar);
    let out = builds.engine.exec(container, req).await?;
    if out.exit_code != 0 {
        bail!("self-test: copying files into the sandbox failed: {}", out.output.trim());
    }
    Ok(())
}
