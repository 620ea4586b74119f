//! Recent history of one sandbox, in memory: a fixed ring of the last hour at 10 s resolution.
//!
//! Bounded by construction: [`HISTORY_POINTS`] points of [`Point`] (16 bytes) per sandbox,
//! allocated once when the sandbox is first seen and dropped when it ends. Nothing is written to
//! the database.

use std::time::Duration;

use serde::Serialize;

/// One point per this much time.
pub const HISTORY_STEP: Duration = Duration::from_secs(10);
/// The last hour.
pub const HISTORY_POINTS: usize = 360;

/// One step of history, packed: 16 bytes, so a ring is 5,760 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// Unix seconds at the end of the step.
    pub at: u32,
    /// Average CPU over the step, in thousandths of a core.
    pub cpu_millicores: u32,
    /// Highest working set seen in the step, in KiB (u32 KiB reaches 4 TiB).
    pub memory_kib: u32,
    /// Most processes seen in the step.
    pub pids: u32,
}

/// A point as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct PointView {
    pub at: String,
    pub cpu_cores: f64,
    pub memory_working_set_bytes: u64,
    pub pids: u32,
}

impl From<&Point> for PointView {
    fn from(p: &Point) -> Self {
        PointView {
            at: crate::domain::rfc3339(p.at as i64 * 1000),
            cpu_cores: p.cpu_millicores as f64 / 1000.0,
            memory_working_set_bytes: p.memory_kib as u64 * 1024,
            pids: p.pids,
        }
    }
}

/// The ring of the last [`HISTORY_POINTS`] points, oldest overwritten first.
pub struct Ring {
    points: Box<[Point; HISTORY_POINTS]>,
    /// Where the next point goes.
    next: usize,
    len: usize,
    /// The step being filled: when it started (unix ms) and the CPU total then (ns).
    window: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: i64,
    cpu_ns: u64,
    memory_max: u64,
    pids_max: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring { points: Box::new([Point::default(); HISTORY_POINTS]), next: 0, len: 0, window: None }
    }
}

impl Ring {
    /// Takes one sample (CPU as a cumulative total); closes a step once [`HISTORY_STEP`] has
    /// passed since the step began, whatever the sampling interval.
    pub fn observe(&mut self, at_ms: i64, cpu_total_ns: u64, memory: u64, pids: u64) {
        let Some(w) = &mut self.window else {
            self.window = Some(Window { started_ms: at_ms, cpu_ns: cpu_total_ns, memory_max: memory, pids_max: pids });
            return;
        };
        w.memory_max = w.memory_max.max(memory);
        w.pids_max = w.pids_max.max(pids);
        let elapsed_ms = at_ms - w.started_ms;
        if elapsed_ms < HISTORY_STEP.as_millis() as i64 {
            return;
        }
        let cores = cpu_rate(w.cpu_ns, cpu_total_ns, elapsed_ms as u64 * 1_000_000).unwrap_or(0.0);
        self.points[self.next] = Point {
            at: (at_ms / 1000).clamp(0, u32::MAX as i64) as u32,
            cpu_millicores: (cores * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32,
            memory_kib: (w.memory_max / 1024).min(u32::MAX as u64) as u32,
            pids: w.pids_max.min(u32::MAX as u64) as u32,
        };
        self.next = (self.next + 1) % HISTORY_POINTS;
        self.len = (self.len + 1).min(HISTORY_POINTS);
        self.window = Some(Window { started_ms: at_ms, cpu_ns: cpu_total_ns, memory_max: memory, pids_max: pids });
    }

    /// The points, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        let start = (self.next + HISTORY_POINTS - self.len) % HISTORY_POINTS;
        (0..self.len).map(move |i| &self.points[(start + i) % HISTORY_POINTS])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Cores used between two readings of a cumulative CPU counter `elapsed_ns` apart; `None` when
/// no time passed or the counter went back (the container was recreated: a new cgroup).
pub fn cpu_rate(before_ns: u64, after_ns: u64, elapsed_ns: u64) -> Option<f64> {
    if elapsed_ns == 0 || after_ns < before_ns {
        return None;
    }
    Some((after_ns - before_ns) as f64 / elapsed_ns as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_two_samples() {
        // 2.5 s of CPU over 5 s of wall time: half a core.
        assert_eq!(cpu_rate(10_000_000_000, 12_500_000_000, 5_000_000_000), Some(0.5));
        assert_eq!(cpu_rate(1, 1, 0), None);
        assert_eq!(cpu_rate(5_000, 10, 1_000), None, "a recreated container starts again at 0");
    }

    #[test]
    fn the_ring_keeps_the_last_hour_at_ten_second_steps_and_is_bounded() {
        assert_eq!(std::mem::size_of::<Point>(), 16);
        assert_eq!(std::mem::size_of::<[Point; HISTORY_POINTS]>(), 5760);
        let mut ring = Ring::default();
        // Every 5 s for two hours, one core busy at 40 %, memory growing.
        let t0 = 1_700_000_000_000i64;
        for i in 0..=1440i64 {
            let at = t0 + i * 5000;
            ring.observe(at, (i as u64) * 2_000_000_000, 1024 * 1024 * (i as u64 % 100), 3);
        }
        assert_eq!(ring.len(), HISTORY_POINTS);
        let points: Vec<_> = ring.points().copied().collect();
        assert!(points.windows(2).all(|w| w[1].at - w[0].at == 10), "10 s apart, oldest first");
        assert_eq!(points.last().unwrap().at as i64, (t0 + 1440 * 5000) / 1000);
        assert_eq!(points[0].at as i64, (t0 + 1440 * 5000) / 1000 - 3590, "an hour back, not two");
        assert!(points.iter().all(|p| p.cpu_millicores == 400 && p.pids == 3), "{:?}", points[0]);
        // The highest working set in each step, not the last one.
        let view = PointView::from(&points[10]);
        assert_eq!(view.cpu_cores, 0.4);
        assert!(view.memory_working_set_bytes > 0);
    }

    #[test]
    fn a_slower_interval_gives_one_point_per_sample() {
        let mut ring = Ring::default();
        for i in 0..5i64 {
            ring.observe(i * 30_000, 0, 0, 1);
        }
        assert_eq!(ring.len(), 4);
    }
}
