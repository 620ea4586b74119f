//! Run sandboxes made ahead of time: created and started (their holder `sleep` as `nobody`,
//! nothing of a submission in them yet), each handed to exactly one run and removed after it, so
//! a run does not wait for the engine to make its container. This is the bookkeeping, pure and
//! unit-tested; `super` makes and removes the containers.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::usage::cgroup::Files;

/// What a prepared sandbox must match to serve a run: its image and the limits fixed at
/// creation (the others are enforced per step by the runner).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub image: String,
    pub memory_mb: u64,
    pub pids: u64,
}

/// A prepared sandbox waiting for its run.
pub struct Ready {
    pub container: String,
    pub files: Option<Files>,
    pub made: Instant,
}

/// The prepared sandboxes of this process, by shape.
pub struct Prepared {
    /// How many of each shape are kept ready (`RUNNER_RUN_PREPARED`); 0 turns it off.
    per_shape: usize,
    /// Most shapes kept at once: the first ones asked for (the runtimes' defaults, usually).
    max_shapes: usize,
    /// An unclaimed one older than this is removed (not refilled until asked for again).
    ttl: Duration,
    ready: HashMap<Shape, VecDeque<Ready>>,
    /// Being made, per shape.
    making: HashMap<Shape, usize>,
}

impl Prepared {
    pub fn new(per_shape: usize, max_shapes: usize, ttl: Duration) -> Prepared {
        Prepared { per_shape, max_shapes, ttl, ready: HashMap::new(), making: HashMap::new() }
    }

    /// A ready sandbox of `shape`, if one is kept.
    pub fn take(&mut self, shape: &Shape) -> Option<Ready> {
        self.ready.get_mut(shape)?.pop_front()
    }

    /// How many sandboxes of `shape` to start making now, counted as being made: what is missing
    /// of `per_shape`, if the shape is kept (or there is room for one more shape).
    pub fn reserve(&mut self, shape: &Shape) -> usize {
        if self.per_shape == 0 {
            return 0;
        }
        let known = self.ready.contains_key(shape) || self.making.contains_key(shape);
        if !known && self.shapes() >= self.max_shapes {
            return 0;
        }
        let have = self.ready.get(shape).map_or(0, VecDeque::len) + self.making.get(shape).copied().unwrap_or(0);
        let n = self.per_shape.saturating_sub(have);
        if n > 0 {
            *self.making.entry(shape.clone()).or_default() += n;
        }
        n
    }

    /// One being made is done: `Some` ready, or `None` when making it failed.
    pub fn made(&mut self, shape: &Shape, ready: Option<Ready>) {
        if let Some(n) = self.making.get_mut(shape) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.making.remove(shape);
            }
        }
        if let Some(r) = ready {
            self.ready.entry(shape.clone()).or_default().push_back(r);
        }
    }

    /// The ready ones past their time, taken out (to be removed); shapes left empty are
    /// forgotten.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.ttl;
        let mut gone = Vec::new();
        for queue in self.ready.values_mut() {
            queue.retain(|r| {
                let keep = now.duration_since(r.made) < ttl;
                if !keep {
                    gone.push(r.container.clone());
                }
                keep
            });
        }
        let making = &self.making;
        self.ready.retain(|shape, q| !q.is_empty() || making.contains_key(shape));
        gone
    }

    /// Every ready one, taken out (at shutdown).
    pub fn drain(&mut self) -> Vec<String> {
        self.ready.drain().flat_map(|(_, q)| q.into_iter().map(|r| r.container)).collect()
    }

    /// Whether `container` is one of the ready ones.
    pub fn holds(&self, container: &str) -> bool {
        self.ready.values().any(|q| q.iter().any(|r| r.container == container))
    }

    pub fn ready_count(&self) -> usize {
        self.ready.values().map(VecDeque::len).sum()
    }

    fn shapes(&self) -> usize {
        let mut n = self.ready.len();
        n += self.making.keys().filter(|s| !self.ready.contains_key(*s)).count();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(image: &str) -> Shape {
        Shape { image: image.into(), memory_mb: 128, pids: 32 }
    }

    fn ready(name: &str, made: Instant) -> Option<Ready> {
        Some(Ready { container: name.into(), files: None, made })
    }

    #[test]
    fn each_sandbox_is_handed_out_once_and_the_shape_is_refilled_to_its_size() {
        let mut p = Prepared::new(2, 4, Duration::from_secs(600));
        let s = shape("py");
        assert!(p.take(&s).is_none(), "nothing is made before a shape is asked for");
        assert_eq!(p.reserve(&s), 2);
        assert_eq!(p.reserve(&s), 0, "the ones being made count");
        let now = Instant::now();
        p.made(&s, ready("a", now));
        p.made(&s, ready("b", now));
        assert_eq!(p.take(&s).unwrap().container, "a");
        assert_eq!(p.take(&s).unwrap().container, "b");
        assert!(p.take(&s).is_none(), "never handed out twice");
        assert_eq!(p.reserve(&s), 2);
        p.made(&s, None);
        assert_eq!(p.reserve(&s), 1, "a failed one is made again");
    }

    #[test]
    fn another_shape_does_not_match_and_shapes_are_bounded() {
        let mut p = Prepared::new(1, 2, Duration::from_secs(600));
        let now = Instant::now();
        assert_eq!(p.reserve(&shape("py")), 1);
        p.made(&shape("py"), ready("a", now));
        let bigger = Shape { memory_mb: 512, ..shape("py") };
        assert!(p.take(&bigger).is_none(), "other limits, another shape");
        assert_eq!(p.reserve(&bigger), 1);
        assert_eq!(p.reserve(&shape("gcc")), 0, "a third shape is not kept");
        assert!(p.holds("a"));
        assert_eq!(p.ready_count(), 1);
    }

    #[test]
    fn old_ones_expire_and_their_shape_is_forgotten() {
        let mut p = Prepared::new(1, 1, Duration::from_secs(10));
        let t0 = Instant::now();
        p.reserve(&shape("py"));
        p.made(&shape("py"), ready("a", t0));
        assert!(p.expired(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(p.expired(t0 + Duration::from_secs(11)), ["a"]);
        assert_eq!(p.reserve(&shape("gcc")), 1, "the expired shape no longer takes room");
        assert_eq!(p.reserve(&shape("off")), 0);
        let mut off = Prepared::new(0, 4, Duration::from_secs(10));
        assert_eq!(off.reserve(&shape("py")), 0, "RUNNER_RUN_PREPARED=0 turns it off");
        p.made(&shape("gcc"), ready("b", t0));
        assert_eq!(p.drain(), ["b"]);
    }
}
