//! Build network isolation: `RUN` steps must not reach the host's own addresses, its published
//! ports or link-local metadata services (issue 15). What is enforced and how is in
//! `firewall.rs`; this module decides what to do for the configured network and
//! keeps the verdict for `/readyz` and for every build.
//!
//! `RUNNER_BUILD_NETWORK`:
//! - `exercise-runner-build` (the default): the runner makes the network and keeps its rules in
//!   place, at start, every reconcile interval and before every build; a missing rule, a chain
//!   holding anything else, or a jump that is not the first rule of its hook is logged and put
//!   back;
//! - `none`: builds have no network; nothing to check;
//! - any other name: the operator's network. The runner checks the same rules for that network's
//!   bridge and reports, but changes nothing of the operator's.
//!
//! Builds fail closed: a build does not start while its network is not isolated, so safety does
//! not depend on anyone reading `/readyz`.

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::firewall as net;
use super::Builds;
use crate::engine::MANAGED_NETWORK;

/// The verdict of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Builds may run: the network is isolated (or there is none).
    pub ok: bool,
    pub network: String,
    /// `managed`, `operator` or `none`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Rules that are not in place (after this round's repairs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Rules the runner last found missing and put back, and when.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub checked_at: String,
}

impl Report {
    fn new(network: &str, mode: &'static str) -> Report {
        Report {
            ok: false,
            network: network.to_string(),
            mode,
            interface: None,
            missing: Vec::new(),
            restored: Vec::new(),
            restored_at: None,
            error: None,
            checked_at: crate::domain::rfc3339(crate::store::now_ms()),
        }
    }

    /// Why builds are refused, for a build's failure reason.
    pub fn problem(&self) -> String {
        match (&self.error, self.missing.is_empty()) {
            (Some(e), _) => e.clone(),
            (None, false) => format!("missing firewall rules: {}", self.missing.join("; ")),
            (None, true) => "not checked yet".to_string(),
        }
    }
}

/// One round at a time in this process: two rounds checking at once would both insert a rule.
static ROUND: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The last repair (rules, when). The firewall is the host's, not one runner's: whichever round
/// in this process put a rule back, every report shows it.
static LAST_RESTORED: std::sync::Mutex<Option<(Vec<String>, String)>> = std::sync::Mutex::new(None);

/// Checks (and for the managed network, repairs) the build network's isolation, records the
/// verdict for `/readyz` and returns it.
pub async fn refresh(builds: &Builds) -> Report {
    let _round = ROUND.lock().await;
    let name = builds.settings.build_network.as_str();
    let mut report = match name {
        "none" => Report { ok: true, ..Report::new(name, "none") },
        MANAGED_NETWORK => {
            let mut r = Report::new(name, "managed");
            if let Err(e) = managed(builds, &mut r).await {
                r.error = Some(format!("{e:#}"));
            }
            r
        }
        _ => {
            let mut r = Report::new(name, "operator");
            if let Err(e) = operator(builds, &mut r).await {
                r.error = Some(format!("{e:#}"));
            }
            r
        }
    };
    if report.mode != "none" {
        report.ok = report.error.is_none() && report.missing.is_empty();
    }
    {
        // Keep the last repair visible until the next one.
        let mut restored = LAST_RESTORED.lock().expect("lock");
        if let Some(at) = &report.restored_at {
            *restored = Some((report.restored.clone(), at.clone()));
        } else if let Some((rules, at)) = restored.as_ref() {
            report.restored = rules.clone();
            report.restored_at = Some(at.clone());
        }
    }
    let mut last = builds.isolation.lock().expect("lock");
    if !report.ok {
        tracing::warn!(network = %report.network, problem = %report.problem(),
            "the build network is not isolated from the host; builds are refused until it is");
    }
    *last = Some(report.clone());
    report
}

/// The plans for this runner's settings.
async fn plans(builds: &Builds, interface: &str) -> anyhow::Result<Vec<net::Plan>> {
    net::plans(interface, &builds.settings.build_network_allow_cidrs()).await
}

async fn managed(builds: &Builds, r: &mut Report) -> anyhow::Result<()> {
    let network = builds.engine.ensure_build_network().await?;
    let interface = network.bridge.unwrap_or_default();
    r.interface = Some(interface.clone());
    let mut restored = Vec::new();
    for plan in plans(builds, &interface).await? {
        let found = net::inspect(&plan).await?;
        if found.is_clean() {
            continue;
        }
        net::repair(&plan, &found).await?;
        let after = net::inspect(&plan).await?;
        if after.is_clean() {
            restored.extend(found.problems);
        } else {
            r.missing.extend(after.problems);
        }
    }
    if !restored.is_empty() {
        tracing::warn!(rules = ?restored, "build network firewall rules were missing or not first; put them back");
        r.restored = restored;
        r.restored_at = Some(r.checked_at.clone());
    }
    Ok(())
}

async fn operator(builds: &Builds, r: &mut Report) -> anyhow::Result<()> {
    let Some(network) = builds.engine.network(&r.network).await? else {
        anyhow::bail!("RUNNER_BUILD_NETWORK={}: no such network", r.network);
    };
    let Some(interface) = network.bridge else {
        anyhow::bail!(
            "RUNNER_BUILD_NETWORK={}: a {} network, whose isolation from the host the runner cannot check; \
             use the runner's own ({MANAGED_NETWORK}, the default) or none",
            r.network,
            network.driver
        );
    };
    r.interface = Some(interface.clone());
    for plan in plans(builds, &interface).await? {
        r.missing.extend(net::inspect(&plan).await?.problems);
    }
    Ok(())
}

/// Before a build: the network must be isolated now (checked, and repaired when it is the
/// runner's own), or the build does not start.
pub async fn require(builds: &Builds) -> anyhow::Result<()> {
    let report = refresh(builds).await;
    if !report.ok {
        anyhow::bail!(
            "the build network {} is not isolated from the host ({}); builds are refused until it is (see /readyz)",
            report.network,
            report.problem()
        );
    }
    Ok(())
}

/// Re-checks every reconcile interval, so a rule someone removed is put back (or reported)
/// without waiting for the next build.
pub async fn run(builds: Arc<Builds>, cancel: CancellationToken) {
    let period = builds.settings.reconcile_interval.max(Duration::from_millis(200));
    // The first round ran at start.
    crate::rounds::every(period, crate::rounds::First::AfterPeriod, cancel, || async {
        refresh(&builds).await;
    })
    .await
}
