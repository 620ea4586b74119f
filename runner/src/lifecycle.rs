//! Every lifecycle in one place: the states of sessions, builds and deploys, and which moves
//! between them are legal. The store builds its conditional updates from these tables (a move
//! is written `… WHERE state IN (<the states it may come from>)`), so no state is spelled as a
//! string anywhere else and a misspelt state does not compile.
//!
//! The strings are the API's and the database's: `as_str` and serde give the same lowercase word.

use std::fmt;

/// What the store needs of a lifecycle to write a move conditionally.
pub trait Lifecycle: Copy + Eq + fmt::Debug + 'static {
    /// The lifecycle's name in messages ("session", "build", "deploy").
    const NAME: &'static str;
    /// Every state, in the order of the lifecycle.
    const ALL: &'static [Self];
    /// The word stored in the `state` column and shown by the API.
    fn as_str(self) -> &'static str;
    /// The states a move to `to` may come from; empty for the state a row is inserted in.
    fn sources(to: Self) -> &'static [Self];
    /// Whether `from → to` is a legal move.
    fn can_move(from: Self, to: Self) -> bool {
        Self::sources(to).contains(&from)
    }
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|st| st.as_str() == s)
    }
}

// ---- sessions ----

/// Where a session is in its life. `starting → running → stopping → stopped`, or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Inserted in this state; its sandbox is being made.
    Starting,
    Running,
    /// Its container is being removed (a stop the reconciler finishes if interrupted).
    Stopping,
    Stopped,
    Failed,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        SessionState::Starting,
        SessionState::Running,
        SessionState::Stopping,
        SessionState::Stopped,
        SessionState::Failed,
    ];
    /// Live sessions own (or are about to own) a container; a learner has at most one per
    /// exercise (the partial unique index of the sessions migration lists the same states).
    pub const LIVE: &'static [SessionState] = &[SessionState::Starting, SessionState::Running];
    /// Not yet ended: a container may exist, and the session's image and workspace are in use.
    pub const UNFINISHED: &'static [SessionState] =
        &[SessionState::Starting, SessionState::Running, SessionState::Stopping];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Stopping => "stopping",
            SessionState::Stopped => "stopped",
            SessionState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<SessionState> {
        <Self as Lifecycle>::parse(s)
    }
    /// The table: the states a move to `to` may come from.
    pub fn sources(to: SessionState) -> &'static [SessionState] {
        match to {
            SessionState::Starting => &[],
            // From running too: a reconciler that adopted or restarted the container records it.
            SessionState::Running => Self::LIVE,
            SessionState::Stopping => Self::LIVE,
            SessionState::Stopped => &[SessionState::Stopping],
            // The sandbox could not be made (or made again).
            SessionState::Failed => Self::LIVE,
        }
    }
    pub fn can_move(from: SessionState, to: SessionState) -> bool {
        Self::sources(to).contains(&from)
    }
    pub fn is_live(self) -> bool {
        Self::LIVE.contains(&self)
    }
    /// Stopped or failed: nothing moves it any more.
    pub fn is_ended(self) -> bool {
        !Self::UNFINISHED.contains(&self)
    }
}

impl Lifecycle for SessionState {
    const NAME: &'static str = "session";
    const ALL: &'static [Self] = &SessionState::ALL;
    fn as_str(self) -> &'static str {
        SessionState::as_str(self)
    }
    fn sources(to: Self) -> &'static [Self] {
        SessionState::sources(to)
    }
}

// ---- builds ----

/// Where an exercise build is: `queued → building → testing → succeeded`, or `failed` /
/// `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Inserted in this state; waits for a build slot.
    Queued,
    /// Claimed by a worker: fetching, checking, `docker build`.
    Building,
    /// The self-test in a sandbox.
    Testing,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub const ALL: [BuildState; 6] = [
        BuildState::Queued,
        BuildState::Building,
        BuildState::Testing,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Cancelled,
    ];
    /// Not finished: counts against the build queue, its log may still grow.
    pub const ACTIVE: &'static [BuildState] = &[BuildState::Queued, BuildState::Building, BuildState::Testing];
    /// Claimed by a worker (in this process or another replica).
    pub const RUNNING: &'static [BuildState] = &[BuildState::Building, BuildState::Testing];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Building => "building",
            BuildState::Testing => "testing",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<BuildState> {
        <Self as Lifecycle>::parse(s)
    }
    /// The table: the states a move to `to` may come from.
    pub fn sources(to: BuildState) -> &'static [BuildState] {
        match to {
            BuildState::Queued => &[],
            BuildState::Building => &[BuildState::Queued],
            BuildState::Testing => &[BuildState::Building],
            // From building too: a cached build (the same content proven before) skips the self-test.
            BuildState::Succeeded => Self::RUNNING,
            BuildState::Failed => Self::RUNNING,
            BuildState::Cancelled => Self::ACTIVE,
        }
    }
    pub fn can_move(from: BuildState, to: BuildState) -> bool {
        Self::sources(to).contains(&from)
    }
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
    /// Succeeded, failed or cancelled: nothing moves it any more.
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }
}

impl Lifecycle for BuildState {
    const NAME: &'static str = "build";
    const ALL: &'static [Self] = &BuildState::ALL;
    fn as_str(self) -> &'static str {
        BuildState::as_str(self)
    }
    fn sources(to: Self) -> &'static [Self] {
        BuildState::sources(to)
    }
}

// ---- pooled sandboxes ----

/// Where a sandbox of an exercise's warm pool is: `starting → ready`. A claim deletes the row (the
/// container then belongs to the session that names it); so does a discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    /// Inserted in this state, with a lease: its workspace and container are being made and its
    /// IDE agent waited for.
    Starting,
    /// Its agent answers: a learner may claim it.
    Ready,
}

impl PoolState {
    pub const ALL: [PoolState; 2] = [PoolState::Starting, PoolState::Ready];
}

impl Lifecycle for PoolState {
    const NAME: &'static str = "pooled sandbox";
    const ALL: &'static [Self] = &PoolState::ALL;
    fn as_str(self) -> &'static str {
        match self {
            PoolState::Starting => "starting",
            PoolState::Ready => "ready",
        }
    }
    fn sources(to: Self) -> &'static [Self] {
        match to {
            PoolState::Starting => &[],
            PoolState::Ready => &[PoolState::Starting],
        }
    }
}

// ---- one-shot runs ----

/// Where a one-shot run is: `queued → running → finished` (its verdict is its `status`), or
/// `queued → finished` when it ends before it had a slot (its runner stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Inserted in this state; waits for a run slot.
    Queued,
    /// In its sandbox.
    Running,
    /// Its result is written; nothing moves it any more.
    Finished,
}

impl RunState {
    pub const ALL: [RunState; 3] = [RunState::Queued, RunState::Running, RunState::Finished];
    /// Not finished: held by the runner that took it, under a lease.
    pub const UNFINISHED: &'static [RunState] = &[RunState::Queued, RunState::Running];
}

impl Lifecycle for RunState {
    const NAME: &'static str = "run";
    const ALL: &'static [Self] = &RunState::ALL;
    fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Finished => "finished",
        }
    }
    fn sources(to: Self) -> &'static [Self] {
        match to {
            RunState::Queued => &[],
            RunState::Running => &[RunState::Queued],
            RunState::Finished => RunState::UNFINISHED,
        }
    }
}

// ---- deploys ----

/// Where a deploy (or rollback) of a managed app is: `running → succeeded | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployState {
    /// Inserted in this state; at most one per app (the deploys migration's partial unique index).
    Running,
    Succeeded,
    Failed,
}

impl DeployState {
    pub const ALL: [DeployState; 3] = [DeployState::Running, DeployState::Succeeded, DeployState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Running => "running",
            DeployState::Succeeded => "succeeded",
            DeployState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<DeployState> {
        <Self as Lifecycle>::parse(s)
    }
    /// The table: the states a move to `to` may come from.
    pub fn sources(to: DeployState) -> &'static [DeployState] {
        match to {
            DeployState::Running => &[],
            DeployState::Succeeded | DeployState::Failed => &[DeployState::Running],
        }
    }
    pub fn can_move(from: DeployState, to: DeployState) -> bool {
        Self::sources(to).contains(&from)
    }
}

impl Lifecycle for DeployState {
    const NAME: &'static str = "deploy";
    const ALL: &'static [Self] = &DeployState::ALL;
    fn as_str(self) -> &'static str {
        DeployState::as_str(self)
    }
    fn sources(to: Self) -> &'static [Self] {
        DeployState::sources(to)
    }
}

/// What happened to a session's sandbox, as its events record it (`GET /v1/sessions/{id}/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionEvent {
    Started,
    StartFailed,
    /// The kernel killed a process of the sandbox at its memory limit.
    OomKilled,
    /// The sandbox's main process ended while the session was running.
    Exited,
    /// Reconciliation started an exited sandbox again.
    Restarted,
    /// Its health check kept failing; reconciliation replaced it.
    Unhealthy,
    /// Reconciliation made a vanished (or unrestartable) sandbox again on the same workspace.
    Recreated,
    Reaped,
    Stopped,
}

impl SessionEvent {
    pub const ALL: [SessionEvent; 9] = [
        SessionEvent::Started,
        SessionEvent::StartFailed,
        SessionEvent::OomKilled,
        SessionEvent::Exited,
        SessionEvent::Restarted,
        SessionEvent::Unhealthy,
        SessionEvent::Recreated,
        SessionEvent::Reaped,
        SessionEvent::Stopped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEvent::Started => "started",
            SessionEvent::StartFailed => "start_failed",
            SessionEvent::OomKilled => "oom_killed",
            SessionEvent::Exited => "exited",
            SessionEvent::Restarted => "restarted",
            SessionEvent::Unhealthy => "unhealthy",
            SessionEvent::Recreated => "recreated",
            SessionEvent::Reaped => "reaped",
            SessionEvent::Stopped => "stopped",
        }
    }
    pub fn parse(s: &str) -> Option<SessionEvent> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// What the web app is told (webhooks and `GET /v1/events`), each written in the transaction of
/// the change it describes (the outbox, `crate::outbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// A session's sandbox answers for the first time.
    #[serde(rename = "session.running")]
    SessionRunning,
    /// A session stopped or failed, with its [`EndReason`].
    #[serde(rename = "session.ended")]
    SessionEnded,
    #[serde(rename = "check.completed")]
    CheckCompleted,
    /// A build succeeded, failed or was cancelled.
    #[serde(rename = "build.finished")]
    BuildFinished,
    #[serde(rename = "version.published")]
    VersionPublished,
    /// A one-shot run asked with `"wait": false` has its result.
    #[serde(rename = "run.finished")]
    RunFinished,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::SessionRunning,
        EventType::SessionEnded,
        EventType::CheckCompleted,
        EventType::BuildFinished,
        EventType::VersionPublished,
        EventType::RunFinished,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionRunning => "session.running",
            EventType::SessionEnded => "session.ended",
            EventType::CheckCompleted => "check.completed",
            EventType::BuildFinished => "build.finished",
            EventType::VersionPublished => "version.published",
            EventType::RunFinished => "run.finished",
        }
    }
    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// Why a session ended, as `session.ended` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// `DELETE /v1/sessions/{id}` (the web app, or the learner through it).
    Deleted,
    /// Reaped after the idle timeout.
    Idle,
    /// Reaped at the maximum lifetime.
    Lifetime,
    /// Its sandbox could not be made or kept.
    Failed,
    /// An operator stopped it (the dashboard, `stop-sessions`, an erasure).
    Operator,
    /// Its fleet node stopped heartbeating and was declared lost (see "Fleet").
    #[serde(rename = "node_lost")]
    NodeLost,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::Deleted,
        EndReason::Idle,
        EndReason::Lifetime,
        EndReason::Failed,
        EndReason::Operator,
        EndReason::NodeLost,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Idle => "idle",
            EndReason::Lifetime => "lifetime",
            EndReason::Failed => "failed",
            EndReason::Operator => "operator",
            EndReason::NodeLost => "node_lost",
        }
    }
    pub fn parse(s: &str) -> Option<EndReason> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// The node name of a single host (and of every row written before fleets).
pub const LOCAL_NODE: &str = "local";

/// A fleet node's availability, in Swarm's words: `active` takes new sessions; `pause` takes
/// none and keeps its learners; `drain` takes none, and its learners' next sessions start
/// elsewhere (their live ones run to their end).
/// Ordered from the least to the most strict.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub const ALL: [Availability; 3] = [Availability::Active, Availability::Pause, Availability::Drain];
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
    pub fn parse(s: &str) -> Option<Availability> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
    /// The stricter of two: what the operator said through the API and what Swarm says.
    pub fn stricter(self, other: Availability) -> Availability {
        self.max(other)
    }
}

/// Where one event's delivery to one webhook is: `pending` (being tried, with backoff) →
/// `delivered`, or `failed` once retrying gave up (it can be redelivered by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed];
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(
    SessionState,
    BuildState,
    DeployState,
    SessionEvent,
    EventType,
    EndReason,
    DeliveryStatus,
    Availability
);

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState as S;

    /// Every pair of states: legal exactly when listed.
    fn assert_table<L: Lifecycle>(legal: &[(L, L)]) {
        for &from in L::ALL {
            for &to in L::ALL {
                assert_eq!(L::can_move(from, to), legal.contains(&(from, to)), "{} {from:?} → {to:?}", L::NAME);
            }
        }
    }

    #[test]
    fn session_moves() {
        assert_table(&[
            (S::Starting, S::Running),
            (S::Running, S::Running),
            (S::Starting, S::Stopping),
            (S::Running, S::Stopping),
            (S::Stopping, S::Stopped),
            (S::Starting, S::Failed),
            (S::Running, S::Failed),
        ]);
    }

    #[test]
    fn run_moves() {
        use RunState as R;
        assert_table(&[(R::Queued, R::Running), (R::Queued, R::Finished), (R::Running, R::Finished)]);
    }

    #[test]
    fn build_moves() {
        use BuildState as B;
        assert_table(&[
            (B::Queued, B::Building),
            (B::Building, B::Testing),
            (B::Building, B::Succeeded),
            (B::Testing, B::Succeeded),
            (B::Building, B::Failed),
            (B::Testing, B::Failed),
            (B::Queued, B::Cancelled),
            (B::Building, B::Cancelled),
            (B::Testing, B::Cancelled),
        ]);
    }

    #[test]
    fn deploy_moves() {
        use DeployState as D;
        assert_table(&[(D::Running, D::Succeeded), (D::Running, D::Failed)]);
    }

    #[test]
    fn ended_states_are_never_left_and_insert_states_never_entered() {
        fn check<L: Lifecycle>(first: L, ended: impl Fn(L) -> bool) {
            assert!(L::sources(first).is_empty(), "{} {first:?} is only inserted", L::NAME);
            for &from in L::ALL.iter().filter(|s| ended(**s)) {
                assert!(L::ALL.iter().all(|&to| !L::can_move(from, to)), "{} {from:?} is final", L::NAME);
            }
        }
        check(S::Starting, S::is_ended);
        check(BuildState::Queued, BuildState::is_finished);
        check(DeployState::Running, |d| d != DeployState::Running);
    }

    fn round_trip<L: Lifecycle + serde::Serialize + serde::de::DeserializeOwned>(words: &[&str]) {
        let got: Vec<&str> = L::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, words, "{} states", L::NAME);
        for &s in L::ALL {
            assert_eq!(L::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<L>(&json).unwrap(), s);
        }
        assert_eq!(L::parse("Running"), None);
        assert_eq!(L::parse(""), None);
    }

    #[test]
    fn states_are_the_api_words() {
        round_trip::<SessionState>(&["starting", "running", "stopping", "stopped", "failed"]);
        round_trip::<BuildState>(&["queued", "building", "testing", "succeeded", "failed", "cancelled"]);
        round_trip::<DeployState>(&["running", "succeeded", "failed"]);
    }

    #[test]
    fn named_groups() {
        assert!(S::Starting.is_live() && S::Running.is_live() && !S::Stopping.is_live());
        assert!(S::Stopped.is_ended() && S::Failed.is_ended() && !S::Stopping.is_ended());
        assert_eq!(BuildState::ALL.iter().filter(|b| b.is_active()).count(), 3);
        assert!(BuildState::RUNNING.iter().all(|b| b.is_active()));
    }

    #[test]
    fn event_types_end_reasons_and_delivery_states_are_the_api_words() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(
            EventType::ALL.map(EventType::as_str),
            [
                "session.running",
                "session.ended",
                "check.completed",
                "build.finished",
                "version.published",
                "run.finished"
            ]
        );
        for r in EndReason::ALL {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for d in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(d.as_str()), Some(d));
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(EventType::parse("session.Running"), None);
    }
}
