//! Snapshots of a learner's files, kept at every passing check and before a reset.
//!
//! A snapshot is a row (`store::SnapshotRecord`) naming a blob: the `.tar.gz` of a deterministic
//! tar of the entries (sorted names, times zeroed, owners 0:0; `tar::Times::Zeroed`) stored as
//! `<data_dir>/snapshots/<aa>/<sha256>.tar.gz`, where the sha256 is the tar's: identical
//! workspaces share one blob. The host writes only files of its own, from bytes it parsed; it
//! never reads the learner's. Retention ([`to_prune`], pure) keeps at most
//! `RUNNER_SNAPSHOTS_PER_LEARNER` per learner, drops those older than
//! `RUNNER_SNAPSHOT_RETENTION_DAYS`, and the oldest while the blobs take more than
//! `RUNNER_SNAPSHOTS_MAX_BYTES`; a blob goes when no row names it. On a fleet node the blobs are
//! rows of the fleet's database instead (`snapshot_blobs`): any runner reads them, and
//! retention and erasure through any runner remove them (docs/ARCHITECTURE.md, "Fleet").

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use sha2::{Digest, Sha256};

use super::tar::{self, Entry, Times};
use crate::store::{now_ms, SnapshotRecord, Store};

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    CheckPassed,
    Reset,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CheckPassed => "check_passed",
            Reason::Reset => "reset",
        }
    }
}

/// The retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub per_learner: usize,
    pub max_total_bytes: u64,
    pub max_age: Duration,
}

/// Which snapshots go (ids), `rows` oldest first; `keep` (the one just taken) never does.
/// In order: past the age; beyond the newest `per_learner` of each learner; then the oldest
/// while the distinct blobs left take more than `max_total_bytes`.
pub fn to_prune(rows: &[SnapshotRecord], now: i64, r: Retention, keep: &str) -> Vec<String> {
    let oldest_allowed = now - r.max_age.as_millis() as i64;
    let mut gone: HashSet<&str> = HashSet::new();
    for row in rows {
        if row.created_at < oldest_allowed && row.id != keep {
            gone.insert(&row.id);
        }
    }
    let mut per_learner: HashMap<&str, usize> = HashMap::new();
    for row in rows.iter().rev() {
        if gone.contains(row.id.as_str()) {
            continue;
        }
        let n = per_learner.entry(&row.learner).or_default();
        *n += 1;
        if *n > r.per_learner && row.id != keep {
            gone.insert(&row.id);
        }
    }
    let blob_bytes = |gone: &HashSet<&str>| -> u64 {
        let mut seen = HashSet::new();
        rows.iter()
            .filter(|row| !gone.contains(row.id.as_str()) && seen.insert(row.blob.as_str()))
            .map(|row| row.size_bytes.max(0) as u64)
            .sum()
    };
    for row in rows {
        if blob_bytes(&gone) <= r.max_total_bytes {
            break;
        }
        if row.id != keep {
            gone.insert(&row.id);
        }
    }
    rows.iter().filter(|row| gone.contains(row.id.as_str())).map(|row| row.id.clone()).collect()
}

/// Where snapshots' blobs live, and their rows.
pub struct Snapshots {
    dir: PathBuf,
    /// Blobs in the fleet's database (`snapshot_blobs`), not under `dir`.
    shared: bool,
    store: Store,
    retention: Retention,
}

/// Blob names are sha256 hex: nothing else names a file.
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Snapshots {
    /// Blobs as files under `dir`, or (`shared`, a fleet node) in the database.
    pub fn new(dir: PathBuf, shared: bool, store: Store, retention: Retention) -> Snapshots {
        Snapshots { dir, shared, store, retention }
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(format!("{hash}.tar.gz"))
    }

    /// Keeps `entries` as a snapshot of the learner's files, then applies retention.
    pub async fn keep(
        &self,
        learner: &str,
        exercise: &str,
        session: Option<&str>,
        check: Option<&str>,
        reason: Reason,
        entries: &[Entry],
    ) -> anyhow::Result<SnapshotRecord> {
        let raw = tar::write_tar(entries, Times::Zeroed)?;
        let hash = hex::encode(Sha256::digest(&raw));
        let path = self.blob_path(&hash);
        let kept = if self.shared {
            self.store.snapshot_blob_size(&hash).await?.map(|n| n as u64)
        } else {
            tokio::fs::metadata(&path).await.ok().map(|m| m.len())
        };
        let size = match kept {
            Some(n) => n,
            None if self.shared => {
                let gz = tar::gzip(&raw, usize::MAX)?;
                self.store.put_snapshot_blob(&hash, &gz).await?;
                gz.len() as u64
            }
            None => {
                let gz = tar::gzip(&raw, usize::MAX)?;
                let parent = path.parent().expect("a blob has a directory");
                tokio::fs::create_dir_all(parent).await?;
                let tmp = parent.join(format!(".{hash}.{}.tmp", uuid::Uuid::new_v4().simple()));
                tokio::fs::write(&tmp, &gz).await?;
                tokio::fs::rename(&tmp, &path).await?;
                gz.len() as u64
            }
        };
        let record = SnapshotRecord {
            id: uuid::Uuid::new_v4().to_string(),
            learner: learner.to_string(),
            exercise: exercise.to_string(),
            session_id: session.map(str::to_string),
            check_id: check.map(str::to_string),
            reason: reason.as_str().to_string(),
            blob: hash,
            size_bytes: size as i64,
            created_at: now_ms(),
        };
        self.store.insert_snapshot(&record).await?;
        if let Err(e) = self.prune(&record.id).await {
            tracing::warn!(error = %format!("{e:#}"), "could not apply snapshot retention");
        }
        Ok(record)
    }

    /// Applies retention; the blobs no row names any more are removed.
    pub async fn prune(&self, keep: &str) -> anyhow::Result<()> {
        let rows = self.store.all_snapshots().await?;
        for id in to_prune(&rows, now_ms(), self.retention, keep) {
            let Some(row) = rows.iter().find(|r| r.id == id) else { continue };
            self.delete(row).await?;
        }
        Ok(())
    }

    /// Deletes one snapshot, and its blob when no other snapshot names it.
    async fn delete(&self, row: &SnapshotRecord) -> anyhow::Result<()> {
        self.store.delete_snapshot(&row.id).await?;
        if self.shared {
            return self.store.delete_snapshot_blob(&row.blob).await;
        }
        if !self.store.blob_in_use(&row.blob).await? && is_hash(&row.blob) {
            match tokio::fs::remove_file(self.blob_path(&row.blob)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes every snapshot of a learner (their erasure); returns how many.
    pub async fn erase_learner(&self, learner: &str) -> anyhow::Result<u64> {
        let rows = self.store.snapshots_of_learner(learner).await?;
        for row in &rows {
            self.delete(row).await?;
        }
        Ok(rows.len() as u64)
    }

    /// A snapshot's `.tar.gz`.
    pub async fn blob(&self, record: &SnapshotRecord) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(is_hash(&record.blob), "snapshot {} names no blob", record.id);
        if self.shared {
            let blob = self.store.snapshot_blob(&record.blob).await?;
            return blob.ok_or_else(|| anyhow::anyhow!("the blob of snapshot {} is gone", record.id));
        }
        Ok(tokio::fs::read(self.blob_path(&record.blob)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, learner: &str, blob: &str, size: i64, created_at: i64) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            learner: learner.into(),
            exercise: "e".into(),
            session_id: None,
            check_id: None,
            reason: Reason::CheckPassed.as_str().into(),
            blob: blob.into(),
            size_bytes: size,
            created_at,
        }
    }

    const DAY: i64 = 86_400_000;
    const ROOMY: Retention =
        Retention { per_learner: 3, max_total_bytes: 1 << 30, max_age: Duration::from_secs(30 * 86_400) };

    #[test]
    fn the_oldest_beyond_a_learners_cap_go_and_other_learners_are_untouched() {
        let rows: Vec<_> = (0..5).map(|n| row(&format!("a{n}"), "ada", &format!("b{n}"), 10, n * DAY)).collect();
        let mut rows = rows;
        rows.push(row("z", "zoe", "bz", 10, 2 * DAY));
        rows.sort_by_key(|r| r.created_at);
        assert_eq!(to_prune(&rows, 5 * DAY, ROOMY, "a4"), ["a0", "a1"]);
    }

    #[test]
    fn snapshots_past_the_age_go_but_never_the_one_just_taken() {
        let rows = vec![row("old", "ada", "b1", 10, 0), row("new", "ada", "b2", 10, 40 * DAY)];
        assert_eq!(to_prune(&rows, 40 * DAY, ROOMY, "new"), ["old"]);
        assert!(to_prune(&rows, 40 * DAY, ROOMY, "old").is_empty(), "kept although old");
        assert!(!to_prune(&rows, 80 * DAY, ROOMY, "new").contains(&"new".to_string()));
    }

    #[test]
    fn the_total_counts_shared_blobs_once_and_the_oldest_go_until_it_fits() {
        let cap = Retention { max_total_bytes: 25, ..ROOMY };
        // Two rows share blob s (10 bytes, counted once): 10 + 10 + 10 = 30 > 25.
        let rows = vec![
            row("1", "ada", "s", 10, 1),
            row("2", "bob", "s", 10, 2),
            row("3", "cyd", "t", 10, 3),
            row("4", "dee", "u", 10, 4),
        ];
        // Dropping 1 leaves s named by 2: still 30; dropping 2 frees s: 20 ≤ 25.
        assert_eq!(to_prune(&rows, 5, cap, "4"), ["1", "2"]);
        let shared = vec![row("1", "ada", "s", 10, 1), row("2", "bob", "s", 10, 2)];
        assert!(to_prune(&shared, 5, Retention { max_total_bytes: 10, ..ROOMY }, "2").is_empty(), "one blob, 10 bytes");
    }

    #[test]
    fn only_hashes_name_blob_files() {
        assert!(is_hash(&"a".repeat(64)));
        assert!(!is_hash("../../etc/passwd"));
        assert!(!is_hash(&"A".repeat(64)));
    }
}
