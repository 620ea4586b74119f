//! The host's capacity against what is committed to sandboxes (`GET /v1/capacity`, and the
//! capacity gauges of `/metrics`): live sessions against the cap, memory and CPU committed by
//! sandbox limits against the host's, free disk of the data directory, start slots, builds.

use serde::Serialize;

use crate::{config::Settings, domain::SandboxSpec, lifecycle::BuildState, store::Store};

/// Slots of a semaphore: taken and all.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Slots {
    pub in_use: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Capacity {
    pub sessions: SessionsCapacity,
    pub memory: MemoryCapacity,
    pub cpu: CpuCapacity,
    pub disk: DiskCapacity,
    pub start_slots: Slots,
    pub builds: BuildsCapacity,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionsCapacity {
    /// Starting or running.
    pub live: u64,
    /// `RUNNER_MAX_LIVE_SESSIONS`.
    pub max: u64,
    /// Warm pools' sandboxes: they count against `max` too, and make way for learners.
    pub pooled: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemoryCapacity {
    /// `sessions_bytes + pool_bytes + builds_bytes`: what the sandboxes may use at most.
    pub committed_bytes: u64,
    /// The memory limits of the live sessions' sandboxes.
    pub sessions_bytes: u64,
    /// The memory limits of the warm pools' sandboxes.
    pub pool_bytes: u64,
    /// `RUNNER_BUILD_MEMORY_MB` for each build building or self-testing.
    pub builds_bytes: u64,
    /// `/proc/meminfo`'s `MemTotal` and `MemAvailable`.
    pub host_total_bytes: u64,
    pub host_available_bytes: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CpuCapacity {
    /// The CPU quotas of the live sessions' and pools' sandboxes.
    pub committed_cores: f64,
    pub host_cores: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiskCapacity {
    /// The data directory (database, workspace images, build contexts).
    pub path: String,
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BuildsCapacity {
    pub queued: u64,
    /// Building or self-testing.
    pub running: u64,
    pub max_queued: u64,
    pub max_concurrent: usize,
}

pub(super) async fn gather(settings: &Settings, store: &Store, start_slots: Slots) -> anyhow::Result<Capacity> {
    let (mut live, mut memory_mb, mut cores) = (0u64, 0u64, 0f64);
    for s in store.live_sessions().await?.iter().filter(|s| s.state.is_live()) {
        let limits = serde_json::from_str::<SandboxSpec>(&s.spec).map(|s| s.limits).unwrap_or(settings.default_limits);
        live += 1;
        memory_mb += limits.memory_mb;
        cores += limits.cpus;
    }
    let (mut pooled, mut pool_mb) = (0u64, 0u64);
    for p in store.pooled().await? {
        let limits = serde_json::from_str::<SandboxSpec>(&p.spec).map(|s| s.limits).unwrap_or(settings.default_limits);
        pooled += 1;
        pool_mb += limits.memory_mb;
        cores += limits.cpus;
    }
    let queued = store.count_builds_in(&[BuildState::Queued]).await?.max(0) as u64;
    let running = store.count_builds_in(&[BuildState::Building, BuildState::Testing]).await?.max(0) as u64;
    let (host_total, host_available) =
        std::fs::read_to_string("/proc/meminfo").map(|t| super::cgroup::meminfo(&t)).unwrap_or((0, 0));
    let disk = super::cgroup::filesystem_free(&settings.data_dir);
    let sessions_bytes = memory_mb * 1024 * 1024;
    let builds_bytes = running * settings.build_memory_mb * 1024 * 1024;
    let pool_bytes = pool_mb * 1024 * 1024;
    Ok(Capacity {
        sessions: SessionsCapacity { live, max: settings.max_live_sessions, pooled },
        memory: MemoryCapacity {
            committed_bytes: sessions_bytes + pool_bytes + builds_bytes,
            sessions_bytes,
            pool_bytes,
            builds_bytes,
            host_total_bytes: host_total,
            host_available_bytes: host_available,
        },
        cpu: CpuCapacity {
            committed_cores: (cores * 100.0).round() / 100.0,
            host_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        disk: DiskCapacity {
            path: settings.data_dir.display().to_string(),
            free_bytes: disk.map(|d| d.0),
            total_bytes: disk.map(|d| d.1),
        },
        start_slots,
        builds: BuildsCapacity {
            queued,
            running,
            max_queued: settings.max_queued_builds,
            max_concurrent: settings.max_concurrent_builds,
        },
    })
}
