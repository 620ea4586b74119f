//! The network of `RUN` steps, and the firewall rules that keep it off the host.
//!
//! Builds need a network (package installs), but a container on a Docker bridge reaches the host
//! itself: the bridge's gateway and every other address of the host (those packets arrive in the
//! host's INPUT chain), the host's published ports (DNAT, then FORWARD), link-local metadata
//! services such as 169.254.169.254 and the host's private networks (forwarded out). So by
//! default the runner builds on a bridge it manages, with a fixed interface name, and keeps its
//! drops in chains of its own, jumped to from the *first* rule of the hooks (argument vectors,
//! never a shell string):
//!
//! ```text
//! iptables -I INPUT 1       -i er-build0 -m comment --comment "…" -j ER-BUILD-INPUT
//! iptables -I DOCKER-USER 1 -i er-build0 -m comment --comment "…" -j ER-BUILD-FORWARD  (FORWARD without DOCKER-USER)
//! -A ER-BUILD-INPUT   -j DROP
//! -A ER-BUILD-FORWARD -m conntrack --ctstate DNAT -j DROP            the host's published ports
//! -A ER-BUILD-FORWARD -d <ns>/32 -p udp|tcp --dport 53 -j RETURN     the host's own nameservers in the ranges below
//! -A ER-BUILD-FORWARD -d 169.254.0.0/16 -j DROP                       link-local (metadata)
//! -A ER-BUILD-FORWARD -d <RUNNER_BUILD_NETWORK_ALLOW> -j RETURN        the operator's exceptions (a mirror)
//! -A ER-BUILD-FORWARD -d 10.0.0.0/8 | 172.16.0.0/12 | 192.168.0.0/16 | 100.64.0.0/10 -j DROP
//! ip6tables: the same chains and jumps (FORWARD unless ip6tables has DOCKER-USER); the forward
//! chain drops DNAT and fc00::/7, after the same exceptions      (when the host has IPv6)
//! ```
//!
//! `iptables -C` finds a rule anywhere in a chain, so an `ACCEPT` someone inserted above it would
//! go unnoticed; instead every check reads the hook chain (`iptables -S`) and requires the jump to
//! be its first rule, and requires each of the runner's chains to hold exactly its rules, in
//! order. Repairs are one `iptables-restore --noflush` transaction per binary: a chain is
//! redeclared (emptied) and refilled, a misplaced jump deleted and inserted on top, atomically, so
//! no packet passes while the rules are rewritten.
//!
//! Name resolution: the engine's embedded DNS answers inside the build container's network
//! namespace and, for a nameserver that is not on the host's loopback, also dials it from there
//! (Docker 20.10's `resolver.go`, `ExecFunc(extConnect)`), out through the bridge like any other
//! packet. Such a nameserver on a private address (a cloud VPC's resolver, a home router) would
//! be dropped with the private ranges, so the nameservers of the host's resolv.conf (as the
//! engine reads it: `/etc/resolv.conf`, or systemd-resolved's upstream file when it lists only
//! loopback) that fall in a dropped range are exempted, port 53 only. Nameservers given to the
//! engine some other way (`dns` in daemon.json) need `RUNNER_BUILD_NETWORK_ALLOW`.
//!
//! The jumps carry a comment naming the runner, so an operator (and the test sweep) can tell
//! whose they are.

use std::net::IpAddr;

use anyhow::{bail, Context};

use crate::domain::Cidr;

pub const COMMENT: &str = "exercise-runner build isolation";
/// The runner's chain for what a build bridge sends to the host itself.
pub const INPUT_CHAIN: &str = "ER-BUILD-INPUT";
/// The runner's chain for what a build bridge sends through the host.
pub const FORWARD_CHAIN: &str = "ER-BUILD-FORWARD";

/// Private IPv4 ranges a build must not reach on the forward path (RFC 1918 and the shared
/// address space of carrier-grade NAT and of overlay VPNs such as Tailscale).
pub const PRIVATE_V4: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];
const LINK_LOCAL_V4: &str = "169.254.0.0/16";
/// Unique local IPv6 addresses.
pub const PRIVATE_V6: [&str; 1] = ["fc00::/7"];

/// One firewall rule, in the words of `iptables -S` (its canonical order: `-d`, `-i`, `-p`, the
/// `-m` matches as given, the target), so what is read back compares argument by argument.
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

/// What one binary's part of the isolation is: the runner's chains with their rules in order,
/// and the jumps to them that must each be the first rule of their hook chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub binary: &'static str,
    pub chains: Vec<(&'static str, Vec<Rule>)>,
    pub jumps: Vec<Rule>,
}

/// The isolation of a build bridge. `v4_forward` is `DOCKER-USER` when the engine made one (its
/// rules come before Docker's own accepts), else `FORWARD`; `v6_forward` likewise for ip6tables,
/// `None` when the host has no IPv6. `allow` are the operator's exceptions on the forward path
/// (`RUNNER_BUILD_NETWORK_ALLOW`); `nameservers` the host's (only those in a dropped range get a
/// port-53 exception).
pub fn rules_for(
    interface: &str,
    v4_forward: &str,
    v6_forward: Option<&str>,
    allow: &[Cidr],
    nameservers: &[IpAddr],
) -> Vec<Plan> {
    let words = |spec: &[&str]| spec.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let plan = |binary: &'static str, forward: &str, link_local: Option<&str>, private: &[&str]| {
        let v6 = binary == "ip6tables";
        let rule = |chain: &str, spec: Vec<String>| Rule { binary, chain: chain.to_string(), spec };
        let jump = |hook: &str, target: &str| {
            rule(hook, words(&["-i", interface, "-m", "comment", "--comment", COMMENT, "-j", target]))
        };
        let mut dropped: Vec<Cidr> = private.iter().map(|c| Cidr::parse(c).expect("a valid range")).collect();
        dropped.extend(link_local.map(|c| Cidr::parse(c).expect("a valid range")));
        let mut forward_rules =
            vec![rule(FORWARD_CHAIN, words(&["-m", "conntrack", "--ctstate", "DNAT", "-j", "DROP"]))];
        for ns in nameservers.iter().filter(|ns| ns.is_ipv6() == v6 && dropped.iter().any(|c| c.contains(**ns))) {
            let host = format!("{ns}/{}", if v6 { 128 } else { 32 });
            for proto in ["udp", "tcp"] {
                forward_rules.push(rule(
                    FORWARD_CHAIN,
                    words(&["-d", &host, "-p", proto, "-m", proto, "--dport", "53", "-j", "RETURN"]),
                ));
            }
        }
        if let Some(ll) = link_local {
            forward_rules.push(rule(FORWARD_CHAIN, words(&["-d", ll, "-j", "DROP"])));
        }
        for c in allow.iter().filter(|c| c.addr.is_ipv6() == v6) {
            forward_rules.push(rule(FORWARD_CHAIN, words(&["-d", &c.to_string(), "-j", "RETURN"])));
        }
        for p in private {
            forward_rules.push(rule(FORWARD_CHAIN, words(&["-d", p, "-j", "DROP"])));
        }
        Plan {
            binary,
            chains: vec![
                (INPUT_CHAIN, vec![rule(INPUT_CHAIN, words(&["-j", "DROP"]))]),
                (FORWARD_CHAIN, forward_rules),
            ],
            jumps: vec![jump("INPUT", INPUT_CHAIN), jump(forward, FORWARD_CHAIN)],
        }
    };
    let mut plans = vec![plan("iptables", v4_forward, Some(LINK_LOCAL_V4), &PRIVATE_V4)];
    if let Some(f) = v6_forward {
        plans.push(plan("ip6tables", f, None, &PRIVATE_V6));
    }
    plans
}

/// Whether the host has IPv6 at all (then a bridge has IPv6 link-local addresses too).
pub fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// The `nameserver` addresses of a resolv.conf.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()?.parse().ok()
        })
        .collect()
}

/// The nameservers the engine gives its embedded DNS, as it finds them: `/etc/resolv.conf`, or
/// systemd-resolved's upstream list when that file names only loopback (the stub); loopback
/// ones left out (the engine dials those from the host itself).
pub fn host_nameservers() -> Vec<IpAddr> {
    let read = |p: &str| std::fs::read_to_string(p).map(|t| parse_nameservers(&t)).unwrap_or_default();
    let mut ns = read("/etc/resolv.conf");
    if ns.iter().all(IpAddr::is_loopback) {
        let upstream = read("/run/systemd/resolve/resolv.conf");
        if !upstream.is_empty() {
            ns = upstream;
        }
    }
    ns.retain(|a| !a.is_loopback());
    ns
}

/// The plans for a bridge on this host: the forward hooks as they are now, the host's IPv6 and
/// nameservers, and the operator's exceptions.
pub async fn plans(interface: &str, allow: &[Cidr]) -> anyhow::Result<Vec<Plan>> {
    let forward = |exists: bool| if exists { "DOCKER-USER" } else { "FORWARD" };
    let v4 = forward(chain_exists("iptables", "DOCKER-USER").await?);
    let v6 = if host_has_ipv6() { Some(forward(chain_exists("ip6tables", "DOCKER-USER").await?)) } else { None };
    Ok(rules_for(interface, v4, v6, allow, &host_nameservers()))
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

/// Splits one line of `iptables -S` into its arguments (it double-quotes words with blanks and
/// escapes `"` and `\` inside them).
pub fn split_rule_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return out };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        out.push(word);
    }
}

/// The rules of a chain, in order, each as its arguments after `-A <chain>`; `None` when the
/// chain does not exist.
pub async fn chain_rules(binary: &str, chain: &str) -> anyhow::Result<Option<Vec<Vec<String>>>> {
    let out = iptables(binary, &["-S", chain]).await?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(split_rule_line)
            .filter(|w| w.len() >= 2 && w[0] == "-A" && w[1] == chain)
            .map(|w| w[2..].to_vec())
            .collect(),
    ))
}

/// What of a plan is not in place (descriptions), and what a repair has to do.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<String>,
    /// Chains whose rules are not exactly the plan's.
    chains: Vec<usize>,
    /// Jumps that are not the first rule of their hook, with how often they occur there.
    jumps: Vec<(usize, usize)>,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads the firewall and compares it with the plan; changes nothing.
pub async fn inspect(plan: &Plan) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    for (i, (name, rules)) in plan.chains.iter().enumerate() {
        let want: Vec<&Vec<String>> = rules.iter().map(|r| &r.spec).collect();
        let have = chain_rules(plan.binary, name).await?;
        let have_refs: Option<Vec<&Vec<String>>> = have.as_ref().map(|h| h.iter().collect());
        if have_refs.as_ref() == Some(&want) {
            continue;
        }
        f.chains.push(i);
        let have = have.unwrap_or_default();
        for r in rules.iter().filter(|r| !have.contains(&r.spec)) {
            f.problems.push(r.describe());
        }
        for extra in have.iter().filter(|h| !rules.iter().any(|r| r.spec == **h)) {
            f.problems.push(format!("{} -A {name} {} (not the runner's: removed)", plan.binary, extra.join(" ")));
        }
        if rules.iter().all(|r| have.contains(&r.spec)) && have.iter().all(|h| rules.iter().any(|r| r.spec == *h)) {
            f.problems.push(format!("{} {name}: the rules are out of order", plan.binary));
        }
    }
    for (i, jump) in plan.jumps.iter().enumerate() {
        let have = chain_rules(plan.binary, &jump.chain).await?.unwrap_or_default();
        if have.first() == Some(&jump.spec) {
            continue;
        }
        let count = have.iter().filter(|h| **h == jump.spec).count();
        f.jumps.push((i, count));
        f.problems.push(format!("{} (the first rule of {})", jump.describe(), jump.chain));
    }
    Ok(f)
}

/// A word for an `iptables-restore` file.
fn restore_word(w: &str) -> String {
    if w.is_empty() || w.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        w.to_string()
    }
}

/// The `iptables-restore --noflush` input that puts what the findings name back: each listed
/// chain redeclared (created or emptied) and refilled, each listed jump deleted where it is and
/// inserted first. One transaction: no packet sees a half-written chain.
pub fn repair_script(plan: &Plan, findings: &Findings) -> String {
    let mut s = String::from("*filter\n");
    let line = |op: &str, chain: &str, spec: &[String]| {
        let words: Vec<String> = spec.iter().map(|w| restore_word(w)).collect();
        format!("{op} {chain} {}\n", words.join(" "))
    };
    for &i in &findings.chains {
        s.push_str(&format!(":{} - [0:0]\n", plan.chains[i].0));
    }
    for &i in &findings.chains {
        for r in &plan.chains[i].1 {
            s.push_str(&line("-A", &r.chain, &r.spec));
        }
    }
    for &(i, count) in &findings.jumps {
        let j = &plan.jumps[i];
        for _ in 0..count {
            s.push_str(&line("-D", &j.chain, &j.spec));
        }
        s.push_str(&line("-I", &format!("{} 1", j.chain), &j.spec));
    }
    s.push_str("COMMIT\n");
    s
}

/// Applies [`repair_script`].
pub async fn repair(plan: &Plan, findings: &Findings) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let binary = format!("{}-restore", plan.binary);
    let mut child = tokio::process::Command::new(&binary)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {binary} (the build network's isolation needs it, and root)"))?;
    let mut stdin = child.stdin.take().context("restore stdin")?;
    stdin.write_all(repair_script(plan, findings).as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("{binary} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(plan: &Plan) -> Vec<String> {
        plan.chains.iter().flat_map(|(_, rules)| rules.iter().map(Rule::describe)).collect()
    }

    #[test]
    fn the_jumps_name_the_bridge_and_the_chains_drop_the_host_and_private_networks() {
        let plans = rules_for("er-build0", "DOCKER-USER", Some("FORWARD"), &[], &[]);
        assert_eq!(plans.len(), 2);
        let v4 = &plans[0];
        assert_eq!(
            v4.jumps.iter().map(Rule::describe).collect::<Vec<_>>(),
            [
                "iptables -A INPUT -i er-build0 -m comment --comment exercise-runner build isolation -j ER-BUILD-INPUT",
                "iptables -A DOCKER-USER -i er-build0 -m comment --comment exercise-runner build isolation -j ER-BUILD-FORWARD",
            ]
        );
        assert_eq!(
            text(v4),
            [
                "iptables -A ER-BUILD-INPUT -j DROP",
                "iptables -A ER-BUILD-FORWARD -m conntrack --ctstate DNAT -j DROP",
                "iptables -A ER-BUILD-FORWARD -d 169.254.0.0/16 -j DROP",
                "iptables -A ER-BUILD-FORWARD -d 10.0.0.0/8 -j DROP",
                "iptables -A ER-BUILD-FORWARD -d 172.16.0.0/12 -j DROP",
                "iptables -A ER-BUILD-FORWARD -d 192.168.0.0/16 -j DROP",
                "iptables -A ER-BUILD-FORWARD -d 100.64.0.0/10 -j DROP",
            ]
        );
        let v6 = &plans[1];
        assert_eq!(v6.jumps[1].chain, "FORWARD", "ip6tables without DOCKER-USER");
        assert_eq!(
            text(v6),
            [
                "ip6tables -A ER-BUILD-INPUT -j DROP",
                "ip6tables -A ER-BUILD-FORWARD -m conntrack --ctstate DNAT -j DROP",
                "ip6tables -A ER-BUILD-FORWARD -d fc00::/7 -j DROP",
            ]
        );
        let no_v6 = rules_for("br-x", "FORWARD", None, &[], &[]);
        assert_eq!(no_v6.len(), 1);
        assert_eq!(no_v6[0].jumps[1].chain, "FORWARD");
        assert!(no_v6[0].jumps.iter().all(|j| j.spec[..2] == ["-i", "br-x"]));
    }

    #[test]
    fn exceptions_come_after_the_dnat_drop_and_the_allow_list_after_link_local() {
        let allow = [Cidr::parse("10.1.2.3").unwrap(), Cidr::parse("fd00:1::7/64").unwrap()];
        let ns: Vec<IpAddr> =
            ["10.255.255.53", "8.8.8.8", "169.254.169.253", "fd00::53"].iter().map(|a| a.parse().unwrap()).collect();
        let plans = rules_for("er-build0", "DOCKER-USER", Some("DOCKER-USER"), &allow, &ns);
        let forward: Vec<String> = plans[0].chains[1].1.iter().map(|r| r.spec.join(" ")).collect();
        assert_eq!(
            forward,
            [
                "-m conntrack --ctstate DNAT -j DROP",
                "-d 10.255.255.53/32 -p udp -m udp --dport 53 -j RETURN",
                "-d 10.255.255.53/32 -p tcp -m tcp --dport 53 -j RETURN",
                "-d 169.254.169.253/32 -p udp -m udp --dport 53 -j RETURN",
                "-d 169.254.169.253/32 -p tcp -m tcp --dport 53 -j RETURN",
                "-d 169.254.0.0/16 -j DROP",
                "-d 10.1.2.3/32 -j RETURN",
                "-d 10.0.0.0/8 -j DROP",
                "-d 172.16.0.0/12 -j DROP",
                "-d 192.168.0.0/16 -j DROP",
                "-d 100.64.0.0/10 -j DROP",
            ],
            "a public nameserver needs no exception; the DNAT drop stays first"
        );
        let forward6: Vec<String> = plans[1].chains[1].1.iter().map(|r| r.spec.join(" ")).collect();
        assert_eq!(
            forward6,
            [
                "-m conntrack --ctstate DNAT -j DROP",
                "-d fd00::53/128 -p udp -m udp --dport 53 -j RETURN",
                "-d fd00::53/128 -p tcp -m tcp --dport 53 -j RETURN",
                "-d fd00:1::/64 -j RETURN",
                "-d fc00::/7 -j DROP",
            ]
        );
    }

    #[test]
    fn resolv_conf_and_iptables_listings_are_read_word_by_word() {
        let ns = parse_nameservers("# x\nsearch a\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\nnameserver ::1\n");
        assert_eq!(ns, ["10.0.0.2".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(
            split_rule_line(r#"-A INPUT -i er-build0 -m comment --comment "exercise-runner build isolation" -j X"#),
            [
                "-A",
                "INPUT",
                "-i",
                "er-build0",
                "-m",
                "comment",
                "--comment",
                "exercise-runner build isolation",
                "-j",
                "X"
            ]
        );
        assert_eq!(
            split_rule_line(r#"-A C --comment "a \"b\" \\c" -j Y"#),
            ["-A", "C", "--comment", r#"a "b" \c"#, "-j", "Y"]
        );
    }

    #[test]
    fn a_repair_is_one_transaction_that_refills_chains_and_moves_jumps_on_top() {
        let plan = rules_for("er-build0", "DOCKER-USER", None, &[], &[]).remove(0);
        let findings = Findings { problems: vec!["x".into()], chains: vec![1], jumps: vec![(0, 1), (1, 0)] };
        let script = repair_script(&plan, &findings);
        let c = "\"exercise-runner build isolation\"";
        assert_eq!(
            script,
            format!(
                "*filter\n:ER-BUILD-FORWARD - [0:0]\n\
                 -A ER-BUILD-FORWARD -m conntrack --ctstate DNAT -j DROP\n\
                 -A ER-BUILD-FORWARD -d 169.254.0.0/16 -j DROP\n\
                 -A ER-BUILD-FORWARD -d 10.0.0.0/8 -j DROP\n\
                 -A ER-BUILD-FORWARD -d 172.16.0.0/12 -j DROP\n\
                 -A ER-BUILD-FORWARD -d 192.168.0.0/16 -j DROP\n\
                 -A ER-BUILD-FORWARD -d 100.64.0.0/10 -j DROP\n\
                 -D INPUT -i er-build0 -m comment --comment {c} -j ER-BUILD-INPUT\n\
                 -I INPUT 1 -i er-build0 -m comment --comment {c} -j ER-BUILD-INPUT\n\
                 -I DOCKER-USER 1 -i er-build0 -m comment --comment {c} -j ER-BUILD-FORWARD\n\
                 COMMIT\n"
            )
        );
    }
}
