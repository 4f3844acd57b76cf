//! The session pool: pre-warming, limits, idle timeout, health checks, replacement.
//!
//! Invariants: at most `max_size` sessions are checked out at once (semaphore permits); idle
//! sessions wait in a LIFO list so the most recently used (warmest) one goes out first. One
//! background task per pool closes idle sessions past `idle_timeout` while more than `min_idle`
//! are idle, health-checks sessions idle for longer than `health_check_interval`, and tops the
//! idle list back up to `min_idle`; it is woken at once when a broken session is discarded. The
//! task holds only a weak reference and ends when the last [`Pool`] handle is dropped.
//!
//! An acquire that finds no idle session starts one, and meanwhile watches the idle list: a
//! session returned before the new one is up (the common case in a fan-out, where a warm session
//! frees up in milliseconds and a tool server takes hundreds to start) is taken instead, and the
//! start goes on in the background, its session joining the idle list when ready. An acquire
//! that finds such a start pending waits for it rather than starting yet another session, so the
//! pool stays within `max_size`. An acquire dropped while its own start is still its own (no
//! session came back) cancels the start.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{BoxFuture, Session, SessionError, SessionFactory, ToolOutcome, ToolRequest};

/// The most sessions a pool may hold (`max_size`): far past what a machine runs at once, and
/// well under what a semaphore can count.
pub const MAX_POOL_SIZE: usize = 65_536;

/// A pool's limits and timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The pool's name, used in errors and logs.
    pub name: String,
    /// Sessions kept started and idle, from [`Pool::start`] on.
    pub min_idle: usize,
    /// Most sessions checked out at once.
    pub max_size: usize,
    /// Longest a caller waits for a free slot (starting a session for it is bounded by the
    /// kind's own start limit).
    pub acquire_timeout: Duration,
    /// Idle sessions above `min_idle` are closed after this long unused.
    pub idle_timeout: Duration,
    /// Sessions idle longer than this are health-checked by the background task.
    pub health_check_interval: Duration,
    /// Longest one health check, or one reset between calls, may take before the session counts
    /// as broken (and is replaced).
    pub health_check_timeout: Duration,
}

impl PoolConfig {
    /// A config named `name`: 1 idle, at most 4, 30 s acquire timeout, 5 min idle timeout,
    /// health checks every 30 s with a 5 s limit.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            min_idle: 1,
            max_size: 4,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SessionError> {
        let invalid = |detail: String| Err(SessionError::InvalidConfig { detail });
        if self.max_size == 0 {
            return invalid(format!("pool {:?}: max_size must be at least 1", self.name));
        }
        if self.max_size > MAX_POOL_SIZE {
            return invalid(format!(
                "pool {:?}: max_size ({}) is over the limit, {MAX_POOL_SIZE}",
                self.name, self.max_size
            ));
        }
        if self.min_idle > self.max_size {
            return invalid(format!(
                "pool {:?}: min_idle ({}) is over max_size ({})",
                self.name, self.min_idle, self.max_size
            ));
        }
        if self.health_check_interval.is_zero() || self.idle_timeout.is_zero() {
            return invalid(format!(
                "pool {:?}: idle_timeout and health_check_interval must be above zero",
                self.name
            ));
        }
        Ok(())
    }
}

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Live sessions (idle + in use).
    pub size: usize,
    /// Idle sessions.
    pub idle: usize,
    /// Sessions checked out.
    pub in_use: usize,
    /// Callers waiting in `acquire`.
    pub waiters: usize,
    /// Sum of all callers' waits for a permit.
    pub total_wait: Duration,
    /// Successful acquires.
    pub acquired: u64,
    /// Sessions started by the factory.
    pub created: u64,
    /// Sessions discarded as broken.
    pub discarded: u64,
}

struct IdleSession {
    session: Box<dyn Session>,
    /// Last returned (or started): the idle timeout counts from here.
    since: Instant,
    /// Last known healthy (returned, started or health-checked): health checks count from
    /// here. Kept apart from `since`, or every health check would restart the idle clock and
    /// no session past `min_idle` would ever time out.
    checked: Instant,
    /// It served a call since it was started or last reset: the next acquire resets it first.
    dirty: bool,
}

struct Shared {
    config: PoolConfig,
    factory: Box<dyn SessionFactory>,
    idle: Mutex<Vec<IdleSession>>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    closed: AtomicBool,
    size: AtomicUsize,
    in_use: AtomicUsize,
    waiters: AtomicUsize,
    wait_nanos: AtomicU64,
    acquired: AtomicU64,
    created: AtomicU64,
    discarded: AtomicU64,
    /// The sessions' tool names, asked once (see [`Pool::tools`]).
    tools: tokio::sync::OnceCell<Option<Vec<String>>>,
    /// Woken (all waiters) when the idle list or the count changes: a session returned, started
    /// or discarded, a background start ended, the pool closed.
    changed: Notify,
    /// Session starts handed to the background by acquirers that took a returned session.
    background: parking_lot::Mutex<BackgroundStarts>,
}

/// Starts going on in the background (see the module doc).
#[derive(Default)]
struct BackgroundStarts {
    /// Their tasks, aborted when the pool closes (a start holds the pool's factory).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Starts not yet ended.
    pending: usize,
    /// Acquirers waiting for one of them instead of starting their own.
    claimed: usize,
}

/// What an acquire that found the idle list empty got first.
enum Acquired {
    /// The session it started.
    Started(Box<dyn Session>),
    /// A session returned to the idle list while its own was starting.
    Returned(IdleSession),
}

/// One session counted in a pool's `size`, taken off the count when this drops unless
/// [`SizeGuard::keep`] was called: the count follows the session even when the future holding
/// it is dropped at an `.await`.
struct SizeGuard<'a> {
    size: &'a std::sync::atomic::AtomicUsize,
    armed: bool,
}

impl<'a> SizeGuard<'a> {
    fn new(size: &'a std::sync::atomic::AtomicUsize) -> Self {
        SizeGuard { size, armed: true }
    }

    /// The session lives on: it stays counted.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for SizeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.size.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl IdleSession {
    /// A session going idle now (started, or returned after `dirty` use).
    fn new(session: Box<dyn Session>, dirty: bool) -> Self {
        let now = Instant::now();
        IdleSession {
            session,
            since: now,
            checked: now,
            dirty,
        }
    }
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleSession>> {
        // A panic while holding this lock cannot leave the list inconsistent (push/pop only).
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn create(&self) -> Result<Box<dyn Session>, SessionError> {
        self.size.fetch_add(1, Ordering::SeqCst);
        // Given back if the start fails, or if this future is dropped part-way (a task
        // cancelled while its MCP server starts): the count must not keep a session that
        // never was, or the pool stops topping up to `min_idle` once it reaches `max_size`.
        let counted = SizeGuard::new(&self.size);
        let session = self.factory.create().await?;
        counted.keep();
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(session)
    }

    fn discard(&self, session: Box<dyn Session>) {
        self.size.fetch_sub(1, Ordering::SeqCst);
        self.discarded.fetch_add(1, Ordering::SeqCst);
        drop(session);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// Puts `entry` on the idle list (the warmest end) and wakes the acquirers watching it.
    fn push_idle(&self, entry: IdleSession) {
        self.put_idle(entry, false);
    }

    /// Puts a session on the idle list (at its cold end when `coldest`: one back from a health
    /// check), or closes it if the pool has closed. Checked under the list's lock, which `close`
    /// drains the list under, so no session is left running on a closed pool's list (a health
    /// check or a warm-up that ended as the pool closed put theirs back there).
    fn put_idle(&self, entry: IdleSession, coldest: bool) {
        let mut idle = self.lock_idle();
        if self.closed.load(Ordering::SeqCst) {
            drop(idle);
            self.size.fetch_sub(1, Ordering::SeqCst);
            // Dropped outside the lock: closing a session may take a while (a server's exit).
            drop(entry);
        } else if coldest {
            idle.insert(0, entry);
            drop(idle);
        } else {
            idle.push(entry);
            drop(idle);
        }
        self.changed.notify_waiters();
    }

    /// The warmest open idle session, discarding dead ones on the way.
    fn take_idle(&self) -> Option<IdleSession> {
        loop {
            let entry = self.lock_idle().pop()?;
            if entry.session.is_open() {
                return Some(entry);
            }
            self.discard(entry.session);
        }
    }

    /// Counts the caller as waiting for a background start, if one is pending that no other
    /// acquirer waits for.
    fn claim_background_start(&self) -> bool {
        let mut background = self.background.lock();
        if background.pending > background.claimed {
            background.claimed += 1;
            true
        } else {
            false
        }
    }

    fn release_claim(&self) {
        let mut background = self.background.lock();
        background.claimed = background.claimed.saturating_sub(1);
    }
}

/// A caller counted in `waiters` while it waits for a permit, also when its acquire is dropped
/// mid-wait (a task whose run stopped, a cancel): the count and its gauge would grow for good.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A claim on a background start, released when the acquire stops waiting for it, dropped
/// mid-wait included (a leaked claim made later acquires start sessions of their own).
struct Claim<'a>(&'a Shared);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.release_claim();
    }
}

impl Shared {
    /// Starts a session for an acquirer holding a permit, and takes a session returned to the
    /// idle list meanwhile if one comes first; the start then goes on in the background.
    /// `changed` is the caller's registration, made before it found the idle list empty.
    async fn start_or_take_returned<'a>(
        self: &'a Arc<Self>,
        mut changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'a>>,
    ) -> Result<Acquired, SessionError> {
        let shared = Arc::clone(self);
        let mut start: BoxFuture<'static, Result<Box<dyn Session>, SessionError>> =
            Box::pin(async move { shared.create().await });
        loop {
            tokio::select! {
                biased;
                started = &mut start => return started.map(Acquired::Started),
                () = &mut changed => {
                    changed.set(self.changed.notified());
                    changed.as_mut().enable();
                    // A pool closed meanwhile (a run's end, a pool replaced by name) serves no
                    // more calls: the start is dropped, which stops its server.
                    if self.closed.load(Ordering::SeqCst) {
                        return Err(SessionError::PoolClosed {
                            pool: self.config.name.clone(),
                        });
                    }
                    if let Some(entry) = self.take_idle() {
                        self.start_in_background(start);
                        return Ok(Acquired::Returned(entry));
                    }
                }
            }
        }
    }

    /// Lets `start` finish on a task of its own; its session joins the idle list.
    fn start_in_background(
        self: &Arc<Self>,
        start: BoxFuture<'static, Result<Box<dyn Session>, SessionError>>,
    ) {
        // Counted before the task can end (and uncount it), and uncounted only once its session
        // is on the list: an acquire in between found neither and started one of its own, one
        // over `max_size`.
        let pending = PendingStart::new(Arc::clone(self));
        let task = tokio::spawn(async move {
            let shared = &pending.0;
            match start.await {
                Ok(session) => shared.keep_idle(session, false),
                Err(e) => {
                    tracing::warn!(pool = %shared.config.name, error = %e, "a session started in the background failed to start");
                }
            }
            drop(pending);
        });
        let mut background = self.background.lock();
        background.tasks.retain(|task| !task.is_finished());
        // Checked under the lock `close` aborts the tasks under: a start handed off while the
        // pool closes is stopped either there or here.
        if self.closed.load(Ordering::SeqCst) {
            task.abort();
        }
        background.tasks.push(task);
    }

    /// A working session back from a call (`dirty`) or from a start in the background: kept
    /// idle, unless the pool closed or is one over `max_size` (see `maintain`), when it is
    /// closed instead.
    fn keep_idle(&self, session: Box<dyn Session>, dirty: bool) {
        // A closed pool's is closed by `put_idle`, under the list's lock.
        if self.size.load(Ordering::SeqCst) > self.config.max_size {
            self.size.fetch_sub(1, Ordering::SeqCst);
            drop(session);
            self.changed.notify_waiters();
        } else {
            self.push_idle(IdleSession::new(session, dirty));
        }
    }

    /// The first idle session due for a health check (or found closed), taken off the list.
    fn take_due(&self, now: Instant) -> Option<IdleSession> {
        let mut idle = self.lock_idle();
        let due = idle.iter().position(|entry| {
            now.saturating_duration_since(entry.checked) >= self.config.health_check_interval
                || !entry.session.is_open()
        })?;
        Some(idle.remove(due))
    }

    /// One round of upkeep: idle timeout, health checks, top-up to `min_idle`.
    async fn maintain(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let due = {
            let mut idle = self.lock_idle();
            // Oldest first: those are the ones past the idle timeout.
            let mut index = 0;
            while index < idle.len() {
                let Some(entry) = idle.get(index) else { break };
                let unused_for = now.saturating_duration_since(entry.since);
                if unused_for >= self.config.idle_timeout && idle.len() > self.config.min_idle {
                    expired.push(idle.remove(index));
                } else {
                    index += 1;
                }
            }
            idle.len()
        };
        for entry in expired {
            self.size.fetch_sub(1, Ordering::SeqCst);
            drop(entry);
        }
        // One session off the list at a time: the sessions of one start fall due on one tick,
        // and taking them all while the first one's check hung (up to `health_check_timeout`)
        // left acquires an empty list, so they started servers of their own (up to twice
        // `max_size` at once) and the checked ones were closed as surplus. A checked session is
        // no longer due, so each is taken once a round (`due` bounds it anyway).
        for _ in 0..due {
            let Some(mut entry) = self.take_due(now) else {
                break;
            };
            let healthy = entry.session.is_open()
                && matches!(
                    tokio::time::timeout(
                        self.config.health_check_timeout,
                        entry.session.health_check()
                    )
                    .await,
                    Ok(Ok(()))
                );
            // An acquire that found the list empty while this session was being checked started
            // its own: the pool is then one over `max_size`, and this (older) one is closed.
            if healthy && self.size.load(Ordering::SeqCst) > self.config.max_size {
                self.size.fetch_sub(1, Ordering::SeqCst);
            } else if healthy {
                entry.checked = Instant::now();
                self.put_idle(entry, true);
            } else {
                tracing::warn!(pool = %self.config.name, "discarding a session that failed its health check");
                self.size.fetch_sub(1, Ordering::SeqCst);
                self.discarded.fetch_add(1, Ordering::SeqCst);
            }
        }
        while !self.closed.load(Ordering::SeqCst)
            && self.lock_idle().len() < self.config.min_idle
            && self.size.load(Ordering::SeqCst) < self.config.max_size
        {
            // A pending start, as a start handed off by an acquire is: an acquire that finds the
            // list empty meanwhile waits for it rather than start a session of its own, which
            // made the pool one over `max_size`.
            let pending = PendingStart::new(self);
            let started = self.create().await;
            // The guard goes once the session is on the list: a claimer woken before would
            // find neither and start its own.
            match started {
                Ok(session) => {
                    self.keep_idle(session, false);
                    drop(pending);
                }
                Err(e) => {
                    drop(pending);
                    tracing::warn!(pool = %self.config.name, error = %e, "could not start a replacement session; retrying later");
                    break;
                }
            }
        }
    }
}

/// A start by the upkeep task, or one an acquire handed off (see `start_in_background`), counted
/// among the pending background starts while it runs (also when its future is dropped part-way);
/// acquirers waiting for it are woken when it ends.
struct PendingStart<S: std::ops::Deref<Target = Shared>>(S);

impl<S: std::ops::Deref<Target = Shared>> PendingStart<S> {
    fn new(shared: S) -> Self {
        shared.background.lock().pending += 1;
        Self(shared)
    }
}

impl<S: std::ops::Deref<Target = Shared>> Drop for PendingStart<S> {
    fn drop(&mut self) {
        self.0.background.lock().pending -= 1;
        // A failed start pushes nothing: its claimers look again (and start their own).
        self.0.changed.notify_waiters();
    }
}

/// The pool's upkeep task: aborted when the last handle on the pool drops, or ended and waited
/// for by [`Pool::close_and_wait`].
struct Maintenance(parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Drop for Maintenance {
    fn drop(&mut self) {
        if let Some(task) = self.0.get_mut().take() {
            task.abort();
        }
    }
}

/// A pool of sessions of one kind. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
    maintenance: Arc<Maintenance>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// Validates `config`, starts `min_idle` sessions (concurrently) and the background upkeep
    /// task. Fails if any of the first sessions cannot start, so a broken tool server shows at
    /// supervisor start rather than at the first task.
    pub async fn start(
        config: PoolConfig,
        factory: impl SessionFactory,
    ) -> Result<Self, SessionError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(config.max_size)),
            factory: Box::new(factory),
            idle: Mutex::new(Vec::with_capacity(config.max_size)),
            wake: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            size: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            wait_nanos: AtomicU64::new(0),
            acquired: AtomicU64::new(0),
            created: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            tools: tokio::sync::OnceCell::new(),
            changed: Notify::new(),
            background: parking_lot::Mutex::default(),
            config,
        });
        let starts = (0..shared.config.min_idle).map(|_| shared.create());
        let mut first_error = None;
        for started in futures::future::join_all(starts).await {
            match started {
                Ok(session) => shared.lock_idle().push(IdleSession::new(session, false)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let tick = shared
            .config
            .health_check_interval
            .min(shared.config.idle_timeout)
            .max(Duration::from_millis(10));
        let task = tokio::spawn(upkeep(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
            tick,
        ));
        Ok(Self {
            shared,
            maintenance: Arc::new(Maintenance(parking_lot::Mutex::new(Some(task)))),
        })
    }

    /// Takes a session, waiting at most `acquire_timeout` for one to be free (a slot under
    /// `max_size`). An idle session is handed out when there is one (dead ones are discarded on
    /// the way); otherwise a new one is started for the caller, which is not under that bound:
    /// the start has its own limit (an MCP server's `start_timeout`).
    pub async fn acquire(&self) -> Result<PooledSession, SessionError> {
        self.acquire_within(Some(self.shared.config.acquire_timeout), true)
            .await
    }

    /// Takes a session, waiting in turn (first come, first served) for as long as the sessions in
    /// use are busy: for work that was queued on purpose, such as a plan's tasks, where more
    /// tasks than sessions is normal and a task must not fail for having waited behind the
    /// others. Each call holding a session has its own timeout, so the wait ends; closing the
    /// pool ends it too. Starting a new session is still bounded by the pool's start timeout.
    pub async fn acquire_queued(&self) -> Result<PooledSession, SessionError> {
        self.acquire_within(None, true).await
    }

    /// `counted`: whether this acquire is one of the pool's statistics (`acquired`, the waits);
    /// the pool's own questions to a session (its tool list) are not.
    async fn acquire_within(
        &self,
        timeout: Option<Duration>,
        counted: bool,
    ) -> Result<PooledSession, SessionError> {
        let shared = &self.shared;
        let pool_name = || shared.config.name.clone();
        if shared.closed.load(Ordering::SeqCst) {
            return Err(SessionError::PoolClosed { pool: pool_name() });
        }
        let started = Instant::now();
        // A free slot needs no timer: only a caller that must wait registers its timeout.
        let permit = match Arc::clone(&shared.permits).try_acquire_owned() {
            Ok(permit) => Ok(Ok(permit)),
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(SessionError::PoolClosed { pool: pool_name() });
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let waiting = Waiting::new(&shared.waiters);
                let wait = Arc::clone(&shared.permits).acquire_owned();
                let permit = match timeout {
                    Some(limit) => tokio::time::timeout(limit, wait).await,
                    None => Ok(wait.await),
                };
                drop(waiting);
                permit
            }
        };
        let waited = started.elapsed();
        if counted {
            shared.wait_nanos.fetch_add(
                u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
            // Every acquire is one sample (a no-op until the telemetry module installs a
            // recorder), so the distribution shows how often callers wait, not only the total.
            metrics::histogram!("tetrarch_pool_wait_seconds", "pool" => shared.config.name.clone())
                .record(waited.as_secs_f64());
        }
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SessionError::PoolClosed { pool: pool_name() }),
            Err(_) => {
                return Err(SessionError::AcquireTimeout {
                    pool: pool_name(),
                    waited,
                    max_size: shared.config.max_size,
                });
            }
        };
        let session = loop {
            // Registered before looking at the idle list, so a session returned right after the
            // look still wakes this acquire.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut entry = match shared.take_idle() {
                Some(entry) => entry,
                None if shared.closed.load(Ordering::SeqCst) => {
                    return Err(SessionError::PoolClosed { pool: pool_name() });
                }
                None if shared.claim_background_start() => {
                    let claim = Claim(shared);
                    changed.await;
                    drop(claim);
                    continue;
                }
                None => match shared.start_or_take_returned(changed).await? {
                    Acquired::Started(session) => break session,
                    Acquired::Returned(entry) => entry,
                },
            };
            // Between tasks: a session that served a call is reset before it serves another;
            // one that cannot be reset is replaced.
            if entry.dirty {
                // Dropped with the session if this future is dropped during the reset.
                let counted = SizeGuard::new(&shared.size);
                // Bounded like a health check: a reset that never answers would hold this
                // acquire, and its slot of `max_size`, for ever.
                let limit = shared.config.health_check_timeout;
                let reset = match tokio::time::timeout(limit, entry.session.reset()).await {
                    Ok(reset) => reset.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {limit:?}")),
                };
                counted.keep();
                if let Err(e) = reset {
                    tracing::warn!(pool = %shared.config.name, "reset failed, session replaced: {e}");
                    shared.discard(entry.session);
                    continue;
                }
            }
            break entry.session;
        };
        shared.in_use.fetch_add(1, Ordering::SeqCst);
        if counted {
            shared.acquired.fetch_add(1, Ordering::SeqCst);
        }
        Ok(PooledSession {
            session: Some(session),
            shared: Arc::clone(shared),
            broken: false,
            in_call: false,
            called: false,
            _permit: permit,
        })
    }

    /// The tool names the pool's sessions answer to (`None`: any name), asked of one session
    /// the first time and remembered for the pool's life: a tool server's list is fixed while
    /// it runs, and later runs then check their plans without waiting for a free session.
    pub async fn tools(&self) -> Result<Option<Vec<String>>, SessionError> {
        self.shared
            .tools
            .get_or_try_init(|| async { self.acquire_within(None, false).await?.tools().await })
            .await
            .cloned()
    }

    /// Runs [`Session::warm_up`] on each session idle now, taken straight from the idle list
    /// (not counted as acquires or waits); one that fails is discarded and replaced like any
    /// broken session.
    pub async fn warm_up_idle(&self) {
        let shared = &self.shared;
        let taken: Vec<IdleSession> = std::mem::take(&mut *shared.lock_idle());
        let warmed = taken.into_iter().map(|mut idle| async move {
            // Dropped with the session if this future is dropped part-way.
            let counted = SizeGuard::new(&shared.size);
            let result = idle.session.warm_up().await;
            counted.keep();
            (idle, result)
        });
        for (idle, result) in futures::future::join_all(warmed).await {
            // Put back as it was: a reset still owed, the idle clock not restarted.
            let (session, dirty, since) = (idle.session, idle.dirty, idle.since);
            if let Err(e) = &result {
                tracing::warn!(pool = %shared.config.name, "warm-up failed, session replaced: {e}");
            }
            if result.is_ok() && session.is_open() {
                shared.push_idle(IdleSession {
                    since,
                    ..IdleSession::new(session, dirty)
                });
            } else {
                shared.discard(session);
            }
        }
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let shared = &self.shared;
        PoolStats {
            size: shared.size.load(Ordering::SeqCst),
            idle: shared.lock_idle().len(),
            in_use: shared.in_use.load(Ordering::SeqCst),
            waiters: shared.waiters.load(Ordering::SeqCst),
            total_wait: Duration::from_nanos(shared.wait_nanos.load(Ordering::SeqCst)),
            acquired: shared.acquired.load(Ordering::SeqCst),
            created: shared.created.load(Ordering::SeqCst),
            discarded: shared.discarded.load(Ordering::SeqCst),
        }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Closes the pool: waiting and later acquires fail with [`SessionError::PoolClosed`], idle
    /// sessions are closed now, checked-out ones when they come back.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.permits.close();
        let drained: Vec<_> = std::mem::take(&mut *self.shared.lock_idle());
        self.shared.size.fetch_sub(drained.len(), Ordering::SeqCst);
        for task in &self.shared.background.lock().tasks {
            task.abort();
        }
        self.shared.changed.notify_waiters();
    }

    /// Closes the pool ([`Pool::close`]) and stops its upkeep and its background starts, waiting
    /// (a second at most) for a health check, a replacement or a start in progress to be
    /// dropped: until then it holds the pool's context, and the store in it.
    pub async fn close_and_wait(&self) {
        self.close();
        // `close` aborted the background starts; the upkeep is aborted here.
        let mut tasks = std::mem::take(&mut self.shared.background.lock().tasks);
        tasks.extend(self.maintenance.0.lock().take());
        for task in &tasks {
            task.abort();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(tasks)).await;
    }
}

async fn upkeep(shared: Weak<Shared>, wake: Arc<Notify>, tick: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = wake.notified() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        shared.maintain().await;
    }
}

/// A checked-out session. Dropping it returns the session to its pool, or discards it (and has
/// it replaced) when it broke.
pub struct PooledSession {
    session: Option<Box<dyn Session>>,
    shared: Arc<Shared>,
    broken: bool,
    in_call: bool,
    /// It served a call: it is reset before it serves the next acquirer.
    called: bool,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledSession")
            .field("pool", &self.shared.config.name)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl PooledSession {
    /// Runs one call. An error that breaks the session (see [`SessionError::breaks_session`],
    /// and [`Session::timeout_breaks_it`] for a timeout) marks it broken; so does dropping this
    /// future before it finishes.
    pub async fn call(&mut self, request: ToolRequest) -> Result<ToolOutcome, SessionError> {
        let Some(session) = self.session.as_mut() else {
            return Err(SessionError::Closed {
                detail: "pooled session already returned".to_owned(),
            });
        };
        self.in_call = true;
        self.called = true;
        let result = session.call(request).await;
        self.in_call = false;
        if let Err(e) = &result
            && e.breaks_session()
            && (!matches!(e, SessionError::Timeout { .. }) || session.timeout_breaks_it())
        {
            self.broken = true;
        }
        result
    }

    /// Health-checks the session now; a failure marks it broken.
    pub async fn health_check(&mut self) -> Result<(), SessionError> {
        self.checked(|session| session.health_check()).await
    }

    /// The session's tool names ([`Session::tools`]); a failure marks it broken.
    pub async fn tools(&mut self) -> Result<Option<Vec<String>>, SessionError> {
        let Some(session) = self.session.as_mut() else {
            return Err(SessionError::Closed {
                detail: "pooled session already returned".to_owned(),
            });
        };
        let result = session.tools().await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Warms the session up once more ([`Session::warm_up`]); a failure marks it broken.
    pub async fn warm_up(&mut self) -> Result<(), SessionError> {
        self.checked(|session| session.warm_up()).await
    }

    /// Runs `op` on the session; a failure marks it broken.
    async fn checked(
        &mut self,
        op: impl for<'s> FnOnce(&'s mut Box<dyn Session>) -> BoxFuture<'s, Result<(), SessionError>>,
    ) -> Result<(), SessionError> {
        let Some(session) = self.session.as_mut() else {
            return Err(SessionError::Closed {
                detail: "pooled session already returned".to_owned(),
            });
        };
        let result = op(session).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Marks the session broken: it is discarded and replaced instead of returned.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the session is marked broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

impl Session for PooledSession {
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        Box::pin(PooledSession::call(self, request))
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(PooledSession::health_check(self))
    }

    fn tools(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SessionError>> {
        Box::pin(PooledSession::tools(self))
    }

    fn is_open(&self) -> bool {
        !self.broken && self.session.as_ref().is_some_and(|s| s.is_open())
    }

    fn warm_up(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(PooledSession::warm_up(self))
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.in_use.fetch_sub(1, Ordering::SeqCst);
        let Some(session) = self.session.take() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            shared.size.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if self.broken || self.in_call || !session.is_open() {
            shared.discard(session);
        } else {
            shared.keep_idle(session, self.called);
        }
    }
}
