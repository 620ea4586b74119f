//! The network of `RUN` steps, and the firewall rules that keep it off the host.
//!
//! Builds need a network (package installs), but a container on a Docker bridge reaches the host
//! itself: the bridge's gateway and every other address of the host (those packets arrive in the
//! host's INPUT chain), the host's published ports (DNAT, then FORWARD) and link-local metadata
//! services such as 169.254.169.254 (forwarded out). So by default the runner builds on a bridge
//! it manages, with a fixed interface name, and keeps these rules in place (argument vectors,
//! never a shell string):
//!
//! ```text
//! iptables  -I INPUT       -i er-build0 -j DROP
//! iptables  -I DOCKER-USER -i er-build0 -d 169.254.0.0/16 -j DROP       (FORWARD without DOCKER-USER)
//! iptables  -I DOCKER-USER -i er-build0 -m conntrack --ctstate DNAT -j DROP
//! ip6tables -I INPUT       -i er-build0 -j DROP                        (when the host has IPv6)
//! ```
//!
//! Name resolution keeps working: the engine's embedded DNS answers inside the container's own
//! network namespace and forwards upstream from there, out through the bridge like any other
//! outbound packet, never to the host. Each rule carries a comment naming the runner, so an
//! operator (and the test sweep) can tell whose it is.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bollard::network::{CreateNetworkOptions, InspectNetworkOptions};

use super::{is_status, policy, Engine};

/// The network the runner manages for builds (`RUNNER_BUILD_NETWORK`'s default).
pub const MANAGED_NETWORK: &str = "exercise-runner-build";
/// Its bridge interface: fixed, so the firewall rules can name it before any build runs.
pub const MANAGED_BRIDGE: &str = "er-build0";
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
const COMMENT: &str = "exercise-runner build isolation";

/// A Docker network as the build isolation needs to know it.
#[derive(Debug, Clone)]
pub struct NetworkFacts {
    pub name: String,
    pub driver: String,
    /// The host interface of a bridge network.
    pub bridge: Option<String>,
    pub managed: bool,
}

/// One firewall rule, in the words of `iptables -S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `iptables` or `ip6tables`.
    pub binary: &'static str,
    pub chain: String,
    /// The match and target, after the chain.
    pub spec: Vec<String>,
}

impl Rule {
    /// As `iptables -S` prints it (how an operator finds it).
    pub fn describe(&self) -> String {
        format!("{} -A {} {}", self.binary, self.chain, self.spec.join(" "))
    }
}

/// The rules that keep a build bridge off the host: drop what arrives at the host from it, what
/// it sends to link-local addresses, and what it sends to the host's published ports.
/// `forward_chain` is `DOCKER-USER` when the engine made one (rules there come before Docker's
/// own accepts), else `FORWARD`.
pub fn rules_for(interface: &str, forward_chain: &str, ipv6: bool) -> Vec<Rule> {
    let rule = |binary: &'static str, chain: &str, spec: &[&str]| {
        let mut spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        spec.splice(2..2, ["-m", "comment", "--comment", COMMENT].map(String::from));
        Rule { binary, chain: chain.to_string(), spec }
    };
    let mut rules = vec![
        rule("iptables", "INPUT", &["-i", interface, "-j", "DROP"]),
        rule("iptables", forward_chain, &["-i", interface, "-d", "169.254.0.0/16", "-j", "DROP"]),
        rule("iptables", forward_chain, &["-i", interface, "-m", "conntrack", "--ctstate", "DNAT", "-j", "DROP"]),
    ];
    if ipv6 {
        rules.push(rule("ip6tables", "INPUT", &["-i", interface, "-j", "DROP"]));
    }
    rules
}

/// Whether the host has IPv6 at all (then a bridge has IPv6 link-local addresses too).
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

async fn iptables(binary: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    tokio::process::Command::new(binary)
        .arg("-w") // wait for the xtables lock instead of failing beside the engine's own updates
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {binary} (the build network's isolation needs it, and root)"))
}

/// Whether a chain exists in the filter table.
pub async fn chain_exists(binary: &str, chain: &str) -> anyhow::Result<bool> {
    Ok(iptables(binary, &["-S", chain]).await?.status.success())
}

/// Whether the rule is in place (`iptables -C`).
pub async fn rule_present(rule: &Rule) -> anyhow::Result<bool> {
    let mut args = vec!["-C", rule.chain.as_str()];
    args.extend(rule.spec.iter().map(String::as_str));
    let out = iptables(rule.binary, &args).await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("{} -C failed: {}", rule.binary, String::from_utf8_lossy(&out.stderr).trim()),
    }
}

/// Puts the rule first in its chain (`iptables -I`), so no earlier accept lets the packet by.
pub async fn insert_rule(rule: &Rule) -> anyhow::Result<()> {
    let mut args = vec!["-I", rule.chain.as_str(), "1"];
    args.extend(rule.spec.iter().map(String::as_str));
    let out = iptables(rule.binary, &args).await?;
    if !out.status.success() {
        bail!("{} -I {} failed: {}", rule.binary, rule.chain, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Engine {
    /// A network by name (`default` is the engine's default bridge, as for `docker build`).
    pub async fn network(&self, name: &str) -> anyhow::Result<Option<NetworkFacts>> {
        let name = if name == "default" { "bridge" } else { name };
        match self.docker.inspect_network(name, None::<InspectNetworkOptions<String>>).await {
            Ok(n) => {
                let driver = n.driver.unwrap_or_default();
                let options = n.options.unwrap_or_default();
                let labels = n.labels.unwrap_or_default();
                // A user-defined bridge without a chosen name gets `br-` and its id's first 12.
                let bridge = options.get(BRIDGE_NAME_OPTION).cloned().or_else(|| {
                    (driver == "bridge")
                        .then(|| format!("br-{}", n.id.unwrap_or_default().chars().take(12).collect::<String>()))
                });
                Ok(Some(NetworkFacts {
                    name: n.name.unwrap_or_else(|| name.to_string()),
                    bridge: if driver == "bridge" { bridge } else { None },
                    driver,
                    managed: labels.get(policy::LABEL_MANAGED).is_some_and(|v| v == "true"),
                }))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_network", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Makes the runner's build network unless it exists; refuses a network of that name that is
    /// not the runner's (its interface would not be the one the rules name). Idempotent, also
    /// against another runner creating it at the same moment.
    pub async fn ensure_build_network(&self) -> anyhow::Result<NetworkFacts> {
        for _ in 0..2 {
            if let Some(n) = self.network(MANAGED_NETWORK).await? {
                if n.bridge.as_deref() != Some(MANAGED_BRIDGE) || !n.managed {
                    bail!(
                        "a network named {MANAGED_NETWORK} exists but is not the runner's (driver {}, interface {:?}); \
                         remove it and the runner makes its own",
                        n.driver,
                        n.bridge
                    );
                }
                return Ok(n);
            }
            let opts = CreateNetworkOptions {
                name: MANAGED_NETWORK.to_string(),
                check_duplicate: true,
                driver: "bridge".to_string(),
                options: HashMap::from([
                    (BRIDGE_NAME_OPTION.to_string(), MANAGED_BRIDGE.to_string()),
                    // Two authors' builds running at once do not reach each other either.
                    ("com.docker.network.bridge.enable_icc".to_string(), "false".to_string()),
                ]),
                labels: HashMap::from([(policy::LABEL_MANAGED.to_string(), "true".to_string())]),
                ..Default::default()
            };
            match self.docker.create_network(opts).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => {} // made meanwhile: inspect it again
                Err(e) => {
                    return Err(self.count("create_network", Err::<(), _>(e)).unwrap_err())
                        .context(format!("creating the build network {MANAGED_NETWORK}"))
                }
            }
        }
        bail!("the build network {MANAGED_NETWORK} vanished while it was being made")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_the_bridge_and_carry_the_runners_comment() {
        let rules = rules_for("er-build0", "DOCKER-USER", true);
        let text: Vec<String> = rules.iter().map(Rule::describe).collect();
        assert_eq!(
            text,
            [
                "iptables -A INPUT -i er-build0 -m comment --comment exercise-runner build isolation -j DROP",
                "iptables -A DOCKER-USER -i er-build0 -m comment --comment exercise-runner build isolation -d 169.254.0.0/16 -j DROP",
                "iptables -A DOCKER-USER -i er-build0 -m comment --comment exercise-runner build isolation -m conntrack --ctstate DNAT -j DROP",
                "ip6tables -A INPUT -i er-build0 -m comment --comment exercise-runner build isolation -j DROP",
            ]
        );
        assert_eq!(rules_for("br-x", "FORWARD", false).len(), 3);
        assert!(rules_for("br-x", "FORWARD", false).iter().skip(1).all(|r| r.chain == "FORWARD"));
    }
}
