//! A container's figures, read straight from the cgroup filesystem: no engine call.
//!
//! Where the engine puts a container's cgroup depends on the cgroup version and its cgroup driver:
//! - v1 (these machines), `cgroupfs` driver: `/sys/fs/cgroup/<controller>/docker/<id>/`, one
//!   directory per controller (`cpu`, `cpuacct`, `memory`, `pids`);
//! - v2 (unified), `cgroupfs` driver: `/sys/fs/cgroup/docker/<id>/`, every controller's files in one;
//! - `systemd` driver, either version: `system.slice/docker-<id>.scope` instead of `docker/<id>`.
//!
//! [`Layout::locate`] tries those places once per container and keeps the file paths. The parsing
//! (file contents → [`Reading`]) is pure and tested on sample contents of both versions.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 writes "unlimited" as the largest page-aligned i64 (9223372036854771712); anything this
/// large is no limit.
const UNLIMITED_FROM: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The cgroup hierarchy of this host and the places the engine's drivers give a container.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    pub version: Version,
    /// Where a container's cgroup may be, relative to a hierarchy's root; `{id}` is the full id.
    places: Vec<String>,
}

/// The figures that change, as read at one moment. Counters are cumulative since the
/// container's cgroup was made (a container recreated by reconciliation starts again at 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub cpu_usage_ns: u64,
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_ns: u64,
    pub memory_usage_bytes: u64,
    /// Page cache the kernel would drop first (`total_inactive_file` on v1, `inactive_file` on v2).
    pub memory_inactive_file_bytes: u64,
    pub pids: u64,
    /// OOM kills in the cgroup: v1 `memory.oom_control`'s `oom_kill` (kernel 4.13+), v2
    /// `memory.events`' `oom_kill`. `None` on an older v1 kernel: `memory.failcnt` counts every
    /// time usage touched the limit and reclaim ran, not kills, so it is not used instead.
    pub oom_kills: Option<u64>,
}

impl Reading {
    /// The memory working set as cAdvisor (and so `kubectl top`) computes it: usage minus the
    /// inactive page cache, which the kernel reclaims before it would OOM-kill anything.
    pub fn working_set_bytes(&self) -> u64 {
        self.memory_usage_bytes.saturating_sub(self.memory_inactive_file_bytes)
    }
}

/// The limits the engine set on the cgroup (read once per container).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CFS quota over period, in cores.
    pub cpu_cores: Option<f64>,
}

/// The files of one container's cgroup, found once.
#[derive(Debug, Clone)]
pub struct Files {
    version: Version,
    cpu_usage: PathBuf,
    cpu_stat: PathBuf,
    memory_usage: PathBuf,
    memory_stat: PathBuf,
    /// The most memory used since the cgroup was made or this was reset (v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak`).
    memory_peak: PathBuf,
    oom: PathBuf,
    pids: PathBuf,
    memory_limit: PathBuf,
    pids_limit: PathBuf,
    cpu_quota: PathBuf,
    cpu_period: PathBuf,
    procs: PathBuf,
}

impl Layout {
    /// This host's hierarchy, with the engine's default places (`docker/<id>`, and systemd's
    /// `system.slice/docker-<id>.scope`).
    pub fn detect() -> Layout {
        Layout::at(Path::new(CGROUP_ROOT), "docker")
    }

    /// The hierarchy mounted at `root`; `parent` is the engine's `--cgroup-parent` (`docker`
    /// unless the operator changed it).
    pub fn at(root: &Path, parent: &str) -> Layout {
        let version = if root.join("cgroup.controllers").exists() { Version::V2 } else { Version::V1 };
        let parent = parent.trim_matches('/');
        Layout {
            root: root.to_path_buf(),
            version,
            places: vec![format!("{parent}/{{id}}"), "system.slice/docker-{id}.scope".to_string()],
        }
    }

    /// The cgroup files of a container, or `None` when it has no cgroup here (not running, or
    /// the engine is elsewhere). Ids are hex, so nothing outside the hierarchy can be named.
    pub fn locate(&self, id: &str) -> Option<Files> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        for place in &self.places {
            let rel = place.replace("{id}", id);
            let files = match self.version {
                Version::V1 => {
                    let dir = |controller: &str| self.root.join(controller).join(&rel);
                    let (cpu, cpuacct, memory, pids) = (dir("cpu"), dir("cpuacct"), dir("memory"), dir("pids"));
                    Files {
                        version: Version::V1,
                        cpu_usage: cpuacct.join("cpuacct.usage"),
                        cpu_stat: cpu.join("cpu.stat"),
                        memory_usage: memory.join("memory.usage_in_bytes"),
                        memory_stat: memory.join("memory.stat"),
                        memory_peak: memory.join("memory.max_usage_in_bytes"),
                        oom: memory.join("memory.oom_control"),
                        pids: pids.join("pids.current"),
                        memory_limit: memory.join("memory.limit_in_bytes"),
                        pids_limit: pids.join("pids.max"),
                        cpu_quota: cpu.join("cpu.cfs_quota_us"),
                        cpu_period: cpu.join("cpu.cfs_period_us"),
                        procs: memory.join("cgroup.procs"),
                    }
                }
                Version::V2 => {
                    let dir = self.root.join(&rel);
                    Files {
                        version: Version::V2,
                        cpu_usage: dir.join("cpu.stat"),
                        cpu_stat: dir.join("cpu.stat"),
                        memory_usage: dir.join("memory.current"),
                        memory_stat: dir.join("memory.stat"),
                        memory_peak: dir.join("memory.peak"),
                        oom: dir.join("memory.events"),
                        pids: dir.join("pids.current"),
                        memory_limit: dir.join("memory.max"),
                        pids_limit: dir.join("pids.max"),
                        cpu_quota: dir.join("cpu.max"),
                        cpu_period: dir.join("cpu.max"),
                        procs: dir.join("cgroup.procs"),
                    }
                }
            };
            if files.memory_usage.exists() {
                return Some(files);
            }
        }
        None
    }
}

/// Reads a small pseudo-file into `buf` (reused between reads: no allocation per file).
fn read_into(path: &Path, buf: &mut String) -> io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_string(buf)?;
    Ok(())
}

impl Files {
    /// The figures now. Fails when the cgroup is gone (the container stopped meanwhile).
    pub fn read(&self, buf: &mut String) -> io::Result<Reading> {
        let mut r = Reading::default();
        match self.version {
            Version::V1 => {
                read_into(&self.cpu_usage, buf)?;
                r.cpu_usage_ns = number(buf).unwrap_or(0);
                read_into(&self.cpu_stat, buf)?;
                let (periods, throttled, throttled_ns) = v1_cpu_stat(buf);
                (r.cpu_periods, r.cpu_throttled_periods, r.cpu_throttled_ns) = (periods, throttled, throttled_ns);
                read_into(&self.memory_usage, buf)?;
                r.memory_usage_bytes = number(buf).unwrap_or(0);
                read_into(&self.memory_stat, buf)?;
                r.memory_inactive_file_bytes = v1_inactive_file(buf);
                read_into(&self.oom, buf)?;
                r.oom_kills = keyed(buf, "oom_kill");
            }
            Version::V2 => {
                read_into(&self.cpu_stat, buf)?;
                let s = v2_cpu_stat(buf);
                (r.cpu_usage_ns, r.cpu_periods, r.cpu_throttled_periods, r.cpu_throttled_ns) = s;
                read_into(&self.memory_usage, buf)?;
                r.memory_usage_bytes = number(buf).unwrap_or(0);
                read_into(&self.memory_stat, buf)?;
                r.memory_inactive_file_bytes = keyed(buf, "inactive_file").unwrap_or(0);
                read_into(&self.oom, buf)?;
                r.oom_kills = keyed(buf, "oom_kill");
            }
        }
        read_into(&self.pids, buf)?;
        r.pids = number(buf).unwrap_or(0);
        Ok(r)
    }

    /// The limits (read once: the engine sets them at create).
    pub fn limits(&self, buf: &mut String) -> Limits {
        let mut l = Limits::default();
        if read_into(&self.memory_limit, buf).is_ok() {
            l.memory_bytes = limit(buf);
        }
        if read_into(&self.pids_limit, buf).is_ok() {
            l.pids = limit(buf);
        }
        l.cpu_cores = match self.version {
            Version::V1 => {
                let quota = read_into(&self.cpu_quota, buf).ok().and_then(|_| buf.trim().parse::<i64>().ok());
                let period = read_into(&self.cpu_period, buf).ok().and_then(|_| number(buf));
                v1_cpu_quota(quota, period)
            }
            Version::V2 => read_into(&self.cpu_quota, buf).ok().and_then(|_| v2_cpu_max(buf)),
        };
        l
    }

    /// The peak memory use in bytes, when the kernel keeps it.
    pub fn peak_bytes(&self, buf: &mut String) -> Option<u64> {
        read_into(&self.memory_peak, buf).ok()?;
        number(buf)
    }

    /// Starts the peak again from the current use (v1 takes a write of 0; v2 kernels from 6.12
    /// take any write). Whether the kernel took it.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(&self.memory_peak, "0").is_ok()
    }

    /// One process of the container (its init, usually), for `/proc/<pid>/net/dev`.
    pub fn a_pid(&self, buf: &mut String) -> Option<u32> {
        read_into(&self.procs, buf).ok()?;
        buf.lines().next()?.trim().parse().ok()
    }
}

/// A file that holds one number.
pub fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: a number, or `max` (v2) / a huge number (v1) for none.
pub fn limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse().ok().filter(|v| *v < UNLIMITED_FROM),
    }
}

/// The value of `key` in a file of `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// v1 `cpu.stat`: periods, throttled periods, throttled time (ns).
pub fn v1_cpu_stat(text: &str) -> (u64, u64, u64) {
    (
        keyed(text, "nr_periods").unwrap_or(0),
        keyed(text, "nr_throttled").unwrap_or(0),
        keyed(text, "throttled_time").unwrap_or(0),
    )
}

/// v2 `cpu.stat` (microseconds): usage (ns), periods, throttled periods, throttled time (ns).
pub fn v2_cpu_stat(text: &str) -> (u64, u64, u64, u64) {
    (
        keyed(text, "usage_usec").unwrap_or(0) * 1000,
        keyed(text, "nr_periods").unwrap_or(0),
        keyed(text, "nr_throttled").unwrap_or(0),
        keyed(text, "throttled_usec").unwrap_or(0) * 1000,
    )
}

/// v1 `memory.stat`: the hierarchical figure (`total_inactive_file`) when the kernel gives it.
pub fn v1_inactive_file(text: &str) -> u64 {
    keyed(text, "total_inactive_file").or_else(|| keyed(text, "inactive_file")).unwrap_or(0)
}

/// v1 `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`, in cores.
pub fn v1_cpu_quota(quota_us: Option<i64>, period_us: Option<u64>) -> Option<f64> {
    match (quota_us, period_us) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
        _ => None,
    }
}

/// v2 `cpu.max`: `"<quota> <period>"` or `"max <period>"`, in cores.
pub fn v2_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    (period > 0).then(|| quota as f64 / period as f64)
}

/// Received and sent bytes over every interface but loopback, from `/proc/<pid>/net/dev`.
pub fn net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for line in text.lines().skip(2) {
        let Some((iface, counters)) = line.split_once(':') else { continue };
        if iface.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if fields.len() >= 9 {
            rx += fields[0];
            tx += fields[8];
        }
    }
    (rx, tx)
}

/// The host's memory from `/proc/meminfo`: (`MemTotal`, `MemAvailable`) in bytes.
pub fn meminfo(text: &str) -> (u64, u64) {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().trim_end_matches("kB").trim()))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
            .unwrap_or(0)
    };
    (kib("MemTotal"), kib("MemAvailable"))
}

/// Mount points of workspace volumes (`<docker root>/volumes/<volume>/_data`) in
/// `/proc/self/mountinfo`, by volume name.
pub fn workspace_mounts(mountinfo: &str, volume_prefix: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mount_point = unescape(l.split(' ').nth(4)?);
            let volume = mount_point.strip_suffix("/_data")?.rsplit_once("/volumes/")?.1;
            (volume.starts_with(volume_prefix) && !volume.contains('/'))
                .then(|| (volume.to_string(), mount_point.clone()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + (b - b'0') as u32);
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Used and total bytes of the filesystem mounted at `path` (statvfs: one system call, nothing
/// inside the filesystem is opened or read).
pub fn filesystem_use(path: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    let total = s.f_blocks.saturating_mul(s.f_frsize);
    let used = s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(s.f_frsize);
    Some((used, total))
}

/// Free and total bytes of the filesystem holding `path`, as an unprivileged writer sees it.
pub fn filesystem_free(path: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Taken from a runc sandbox on this machine (cgroup v1, kernel 6.x), trimmed.
    const V1_MEMORY_STAT: &str = "cache 9736192\nrss 69783552\nshmem 0\nmapped_file 5042176\n\
        inactive_anon 69779456\nactive_anon 4096\ninactive_file 4169728\nactive_file 5566464\n\
        hierarchical_memory_limit 268435456\ntotal_cache 9736192\ntotal_rss 69783552\n\
        total_inactive_anon 69779456\ntotal_active_anon 4096\ntotal_inactive_file 4169728\n\
        total_active_file 5566464\n";
    const V1_CPU_STAT: &str = "nr_periods 7\nnr_throttled 1\nthrottled_time 67454244\nnr_bursts 0\nburst_time 0\n";
    const V1_OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";

    /// cgroup v2 files as the kernel documents them (Documentation/admin-guide/cgroup-v2.rst).
    const V2_CPU_STAT: &str = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
        nr_periods 40\nnr_throttled 12\nthrottled_usec 750000\nnr_bursts 0\nburst_usec 0\n";
    const V2_MEMORY_STAT: &str = "anon 67108864\nfile 8388608\nkernel 1048576\nshmem 0\n\
        active_anon 67108864\ninactive_anon 0\nactive_file 4194304\ninactive_file 4194304\n";
    const V2_MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n";

    #[test]
    fn v1_files_give_cpu_throttling_working_set_and_oom_kills() {
        assert_eq!(v1_cpu_stat(V1_CPU_STAT), (7, 1, 67_454_244));
        assert_eq!(v1_inactive_file(V1_MEMORY_STAT), 4_169_728);
        let r = Reading { memory_usage_bytes: 79_691_776, memory_inactive_file_bytes: 4_169_728, ..Default::default() };
        assert_eq!(r.working_set_bytes(), 75_522_048);
        assert_eq!(keyed(V1_OOM_CONTROL, "oom_kill"), Some(3));
        // A kernel before 4.13 has no oom_kill line: unknown, not zero.
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None);
        // `oom_kill_disable` must not be taken for `oom_kill`.
        assert_eq!(keyed("oom_kill_disable 1\n", "oom_kill"), None);
        // Only the per-cgroup figure when the hierarchical one is missing.
        assert_eq!(v1_inactive_file("inactive_file 42\n"), 42);
    }

    #[test]
    fn v1_limits_and_unlimited_values() {
        assert_eq!(limit("268435456\n"), Some(268_435_456));
        assert_eq!(limit("9223372036854771712\n"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("2304\n"), Some(2304));
        assert_eq!(v1_cpu_quota(Some(50_000), Some(100_000)), Some(0.5));
        assert_eq!(v1_cpu_quota(Some(-1), Some(100_000)), None);
    }

    #[test]
    fn v2_files_give_the_same_figures() {
        assert_eq!(v2_cpu_stat(V2_CPU_STAT), (2_500_000_000, 40, 12, 750_000_000));
        assert_eq!(keyed(V2_MEMORY_STAT, "inactive_file"), Some(4_194_304));
        assert_eq!(keyed(V2_MEMORY_EVENTS, "oom_kill"), Some(2));
        assert_eq!(v2_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(v2_cpu_max("max 100000\n"), None);
    }

    #[test]
    fn a_fake_v1_and_v2_hierarchy_is_located_and_read() {
        let id = "a9f4ac6bcc1ed0a47e10da70ccd861f3586eb24c4650921ac78a7fd73f7a37f0";
        let mut buf = String::new();

        let v1 = tempfile::tempdir().unwrap();
        let put = |dir: &Path, name: &str, text: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), text).unwrap();
        };
        let at = |c: &str| v1.path().join(c).join("docker").join(id);
        put(&at("cpuacct"), "cpuacct.usage", "1500000000\n");
        put(&at("cpu"), "cpu.stat", V1_CPU_STAT);
        put(&at("cpu"), "cpu.cfs_quota_us", "50000\n");
        put(&at("cpu"), "cpu.cfs_period_us", "100000\n");
        put(&at("memory"), "memory.usage_in_bytes", "79691776\n");
        put(&at("memory"), "memory.stat", V1_MEMORY_STAT);
        put(&at("memory"), "memory.oom_control", V1_OOM_CONTROL);
        put(&at("memory"), "memory.limit_in_bytes", "268435456\n");
        put(&at("memory"), "cgroup.procs", "20915\n20917\n");
        put(&at("pids"), "pids.current", "38\n");
        put(&at("pids"), "pids.max", "2304\n");
        let layout = Layout::at(v1.path(), "docker");
        assert_eq!(layout.version, Version::V1);
        let files = layout.locate(id).expect("found under docker/<id>");
        let r = files.read(&mut buf).unwrap();
        assert_eq!(r.cpu_usage_ns, 1_500_000_000);
        assert_eq!((r.cpu_periods, r.cpu_throttled_periods, r.cpu_throttled_ns), (7, 1, 67_454_244));
        assert_eq!(r.working_set_bytes(), 75_522_048);
        assert_eq!((r.pids, r.oom_kills), (38, Some(3)));
        let l = files.limits(&mut buf);
        assert_eq!(l, Limits { memory_bytes: Some(268_435_456), pids: Some(2304), cpu_cores: Some(0.5) });
        assert_eq!(files.a_pid(&mut buf), Some(20915));
        assert!(layout.locate("0123").is_none(), "no cgroup: not running");
        assert!(layout.locate("../../etc").is_none(), "ids are hex");

        let v2 = tempfile::tempdir().unwrap();
        put(v2.path(), "cgroup.controllers", "cpu memory pids\n");
        let dir = v2.path().join("system.slice").join(format!("docker-{id}.scope"));
        put(&dir, "cpu.stat", V2_CPU_STAT);
        put(&dir, "cpu.max", "50000 100000\n");
        put(&dir, "memory.current", "75497472\n");
        put(&dir, "memory.stat", V2_MEMORY_STAT);
        put(&dir, "memory.events", V2_MEMORY_EVENTS);
        put(&dir, "memory.max", "max\n");
        put(&dir, "pids.current", "3\n");
        put(&dir, "pids.max", "256\n");
        let layout = Layout::at(v2.path(), "docker");
        assert_eq!(layout.version, Version::V2);
        let files = layout.locate(id).expect("found under the systemd driver's scope");
        let r = files.read(&mut buf).unwrap();
        assert_eq!(r.cpu_usage_ns, 2_500_000_000);
        assert_eq!(r.working_set_bytes(), 75_497_472 - 4_194_304);
        assert_eq!((r.pids, r.oom_kills, r.cpu_throttled_ns), (3, Some(2), 750_000_000));
        let l = files.limits(&mut buf);
        assert_eq!(l, Limits { memory_bytes: None, pids: Some(256), cpu_cores: Some(0.5) });
    }

    #[test]
    fn network_bytes_leave_out_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:  5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0\n  \
            eth0:  1200      10    0    0    0     0          0         0      800       8    0    0    0     0       0          0\n";
        assert_eq!(net_dev(text), (1200, 800));
    }

    #[test]
    fn host_memory_and_workspace_mounts() {
        let text = "MemTotal:       24563120 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo(text), (24_563_120 * 1024, 20_000_000 * 1024));
        let mountinfo = "\
            29 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            812 29 7:3 / /var/lib/docker/volumes/exercise-runner-ws-0123abcd/_data rw,relatime shared:400 - ext4 /dev/loop3 rw\n\
            813 29 0:55 / /var/lib/docker/volumes/other/_data rw - ext4 /dev/loop4 rw\n\
            814 29 7:5 / /srv/my\\040docker/volumes/exercise-runner-ws-ffff/_data rw - ext4 /dev/loop5 rw\n";
        assert_eq!(
            workspace_mounts(mountinfo, "exercise-runner-ws-"),
            vec![
                (
                    "exercise-runner-ws-0123abcd".to_string(),
                    "/var/lib/docker/volumes/exercise-runner-ws-0123abcd/_data".to_string()
                ),
                (
                    "exercise-runner-ws-ffff".to_string(),
                    "/srv/my docker/volumes/exercise-runner-ws-ffff/_data".to_string()
                ),
            ]
        );
    }
}
