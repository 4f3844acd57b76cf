//! The session pool: pre-warming, limits, replacement of broken sessions, idle timeout.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tetrarch::session::{
    BoxFuture, Pool, PoolConfig, PooledSession, Session, SessionError, SessionFactory, ToolOutcome,
    ToolRequest,
};

/// A successful call's outcome carrying the session's serial number.
fn answer(serial: usize) -> ToolOutcome {
    ToolOutcome {
        exit_status: Some(0),
        stdout: serial.to_string(),
        stderr: String::new(),
        json: Some(json!(serial)),
        truncated: false,
        duration: Duration::ZERO,
    }
}

/// `Closed` with `detail` when `closed`, else fine.
fn closed_if(closed: bool, detail: &str) -> Result<(), SessionError> {
    if closed {
        Err(SessionError::Closed {
            detail: detail.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// A session that answers its own serial number; tool `crash` fails as a crash.
struct Numbered {
    serial: usize,
    sick: Arc<AtomicBool>,
}

impl Session for Numbered {
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        let serial = self.serial;
        Box::pin(async move {
            if request.tool == "crash" {
                return Err(SessionError::Crashed {
                    tool: request.tool,
                    reason: "test crash".to_owned(),
                });
            }
            Ok(answer(serial))
        })
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        let sick = self.sick.load(Ordering::SeqCst);
        Box::pin(async move { closed_if(sick, "sick") })
    }
}

#[derive(Clone, Default)]
struct Counting {
    created: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
}

impl SessionFactory for Counting {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let serial = self.created.fetch_add(1, Ordering::SeqCst);
        let sick = Arc::clone(&self.sick);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Box::new(Numbered { serial, sick }) as Box<dyn Session>)
        })
    }
}

fn config(min_idle: usize, max_size: usize) -> PoolConfig {
    PoolConfig {
        min_idle,
        max_size,
        acquire_timeout: Duration::from_millis(200),
        ..PoolConfig::new("test")
    }
}

async fn serial_of(pool: &Pool) -> u64 {
    let mut session = pool.acquire().await.unwrap();
    let outcome = session
        .call(ToolRequest::new("id", json!({})))
        .await
        .unwrap();
    outcome.json.unwrap().as_u64().unwrap()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn start_prewarms_min_idle_before_the_first_acquire() {
    let factory = Counting::default();
    let pool = Pool::start(config(3, 5), factory.clone()).await.unwrap();
    assert_eq!(factory.created.load(Ordering::SeqCst), 3);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.idle, stats.in_use), (3, 3, 0));
    // The first acquire takes a warm session and starts none.
    serial_of(&pool).await;
    assert_eq!(factory.created.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_config_is_rejected() {
    let err = Pool::start(config(3, 2), Counting::default())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::InvalidConfig { .. }));
    assert!(err.to_string().contains("min_idle"));
    // A size no semaphore can count (it panicked).
    let err = Pool::start(config(0, usize::MAX), Counting::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_size") && err.to_string().contains("over the limit"));
}

#[tokio::test]
async fn a_scorer_warm_up_size_over_the_pixel_limit_is_refused_before_allocating() {
    use tetrarch::session::{PoolContext, PoolDef, PoolKind};
    let mut def = PoolDef::new(PoolKind::Scorer);
    def.device = Some("cpu".to_owned());
    for size in [[100_000, 100_000], [usize::MAX, usize::MAX]] {
        def.warmup_size = Some(size);
        let err = def
            .start("scorer", &PoolContext::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("warmup_size") && err.contains("pixel limit"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn max_size_limits_concurrency_and_acquire_times_out() {
    let pool = Pool::start(config(0, 2), Counting::default())
        .await
        .unwrap();
    let first = pool.acquire().await.unwrap();
    let _second = pool.acquire().await.unwrap();
    assert_eq!(pool.stats().in_use, 2);
    let started = Instant::now();
    let err = pool.acquire().await.unwrap_err();
    assert!(
        matches!(err, SessionError::AcquireTimeout { max_size: 2, .. }),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Returning one lets a waiter in.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|_| ()) }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().waiters == 0 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.stats().waiters, 1);
    drop(first);
    waiter.await.unwrap().unwrap();
    assert!(pool.stats().total_wait >= Duration::from_millis(200));
}

#[tokio::test]
async fn returned_sessions_are_reused() {
    let factory = Counting::default();
    let pool = Pool::start(config(1, 4), factory.clone()).await.unwrap();
    for _ in 0..10 {
        assert_eq!(serial_of(&pool).await, 0);
    }
    assert_eq!(factory.created.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn crashed_session_is_discarded_and_replaced() {
    let factory = Counting::default();
    let pool = Pool::start(config(1, 4), factory.clone()).await.unwrap();
    {
        let mut session = pool.acquire().await.unwrap();
        let err = session
            .call(ToolRequest::new("crash", json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Crashed { .. }));
        assert!(session.is_broken());
    }
    // Replaced in the background, so the next caller gets a warm, new session.
    wait_until("replacement", || pool.stats().idle == 1).await;
    let stats = pool.stats();
    assert_eq!((stats.size, stats.discarded, stats.created), (1, 1, 2));
    assert_eq!(serial_of(&pool).await, 1);
}

#[tokio::test]
async fn an_acquire_during_a_replacement_waits_for_it_rather_than_go_over_max_size() {
    /// Counts the starts begun; each takes 200 ms.
    #[derive(Clone, Default)]
    struct SlowStarts(Arc<AtomicUsize>);
    impl SessionFactory for SlowStarts {
        fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
            let serial = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(Box::new(Numbered {
                    serial,
                    sick: Arc::default(),
                }) as Box<dyn Session>)
            })
        }
    }
    let starts = SlowStarts::default();
    let config = PoolConfig {
        acquire_timeout: Duration::from_secs(5),
        ..config(1, 1)
    };
    let pool = Pool::start(config, starts.clone()).await.unwrap();
    {
        let mut session = pool.acquire().await.unwrap();
        session
            .call(ToolRequest::new("crash", json!({})))
            .await
            .unwrap_err();
    }
    // The upkeep task is starting the replacement when the next acquire comes.
    wait_until("the replacement's start", || {
        starts.0.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(serial_of(&pool).await, 1);
    // No second start was begun beside it (one would go on in the background).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(starts.0.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().size, 1);
}

#[tokio::test]
async fn dropped_call_discards_the_session() {
    struct Hangs;
    impl Session for Hangs {
        fn call(&mut self, _: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
            Box::pin(std::future::pending())
        }
        fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
            Box::pin(async { Ok(()) })
        }
    }
    struct HangsFactory;
    impl SessionFactory for HangsFactory {
        fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
            Box::pin(async { Ok(Box::new(Hangs) as Box<dyn Session>) })
        }
    }
    let pool = Pool::start(config(1, 1), HangsFactory).await.unwrap();
    let mut session = pool.acquire().await.unwrap();
    let call = session.call(ToolRequest::new("x", json!({})));
    assert!(
        tokio::time::timeout(Duration::from_millis(20), call)
            .await
            .is_err()
    );
    drop(session);
    assert_eq!(pool.stats().discarded, 1);
}

#[tokio::test]
async fn failed_health_check_replaces_idle_sessions() {
    let factory = Counting::default();
    let config = PoolConfig {
        health_check_interval: Duration::from_millis(50),
        ..config(2, 4)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    factory.sick.store(true, Ordering::SeqCst);
    wait_until("discards", || pool.stats().discarded >= 2).await;
    factory.sick.store(false, Ordering::SeqCst);
    wait_until("top-up", || pool.stats().idle == 2).await;
    assert!(factory.created.load(Ordering::SeqCst) >= 4);
    assert!(serial_of(&pool).await >= 2);
}

#[tokio::test]
async fn idle_timeout_shrinks_to_min_idle() {
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(100),
        ..config(1, 4)
    };
    let pool = Pool::start(config, Counting::default()).await.unwrap();
    let held: Vec<_> = hold_sessions(&pool, 3).await;
    assert_eq!(pool.stats().size, 3);
    drop(held);
    assert_eq!(pool.stats().idle, 3);
    wait_until("shrink", || pool.stats().size == 1).await;
    assert_eq!(pool.stats().idle, 1);
}

#[tokio::test]
async fn health_checks_do_not_keep_idle_sessions_past_their_idle_timeout() {
    // As the defaults are (30 s checks, 5 min idle timeout): checks more often than the timeout.
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(300),
        health_check_interval: Duration::from_millis(30),
        ..config(1, 4)
    };
    let pool = Pool::start(config, Counting::default()).await.unwrap();
    drop(hold_sessions(&pool, 3).await);
    assert_eq!(pool.stats().idle, 3);
    wait_until("shrink", || pool.stats().size == 1).await;
    assert_eq!(pool.stats().idle, 1);
}

/// Sessions whose health check takes a while, so an acquire can come while one is checked.
#[derive(Clone, Default)]
struct SlowToCheck {
    created: Arc<AtomicUsize>,
}

struct SlowCheck;

impl Session for SlowCheck {
    fn call(&mut self, _: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        Box::pin(async { Ok(answer(0)) })
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        })
    }
}

impl SessionFactory for SlowToCheck {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        self.created.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(Box::new(SlowCheck) as Box<dyn Session>) })
    }
}

#[tokio::test]
async fn a_session_acquired_while_another_is_health_checked_keeps_the_pool_within_max_size() {
    let factory = SlowToCheck::default();
    let config = PoolConfig {
        health_check_interval: Duration::from_millis(50),
        ..config(1, 1)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    // The only session is taken off the idle list to be checked; an acquire now starts another.
    wait_until("a check", || pool.stats().idle == 0).await;
    let held = pool.acquire().await.unwrap();
    assert_eq!(factory.created.load(Ordering::SeqCst), 2);
    // When the check ends, the pool is back to one session, not two for good.
    wait_until("the checked one closed", || pool.stats().size == 1).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().size, 1, "{:?}", pool.stats());
}

async fn hold_sessions(pool: &Pool, n: usize) -> Vec<PooledSession> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await.unwrap());
    }
    held
}

#[tokio::test]
async fn close_fails_later_acquires() {
    let pool = Pool::start(config(1, 2), Counting::default())
        .await
        .unwrap();
    pool.close();
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, SessionError::PoolClosed { .. }));
    assert_eq!(pool.stats().size, 0);
}

#[tokio::test]
async fn warm_up_settings_on_the_wrong_kind_or_empty_are_refused_naming_the_pool() {
    use tetrarch::session::{PoolContext, PoolDef};
    let context = PoolContext::default();
    for (text, expected) in [
        (
            "kind = \"process\"\ncommand = [\"true\"]\nwarmup = { tool = \"x\" }\n",
            "`warmup` is for mcp pools only",
        ),
        (
            "kind = \"mcp\"\ncommand = [\"true\"]\nwarmup_size = [64, 64]\n",
            "`warmup_size` is for scorer pools only",
        ),
        (
            "kind = \"mcp\"\ncommand = [\"true\"]\nwarmup = { tool = \"x\", calls = 0 }\n",
            "`warmup.calls` must be at least 1",
        ),
        (
            "kind = \"scorer\"\ndevice = \"cpu\"\nwarmup_size = [0, 10]\n",
            "has an empty side",
        ),
    ] {
        let def: PoolDef = toml::from_str(text).unwrap();
        let err = def.start("named", &context).await.unwrap_err().to_string();
        assert!(
            err.contains("pool \"named\"") && err.contains(expected),
            "{text}: {err}"
        );
    }
    let unknown = toml::from_str::<PoolDef>(
        "kind = \"mcp\"\ncommand = [\"true\"]\nwarmup = { tool = \"x\", cals = 2 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("cals"), "{unknown}");
    // A scorer pool pre-warms at the declared size.
    let def: PoolDef =
        toml::from_str("kind = \"scorer\"\ndevice = \"cpu\"\nwarmup_size = [64, 48]\n").unwrap();
    let pool = def.start("scorer", &context).await.unwrap();
    assert_eq!(pool.stats().created, 1);
}

/// A session whose `reset` is counted and can be told to fail.
struct Resettable {
    serial: usize,
    resets: Arc<AtomicUsize>,
    fail_reset: Arc<AtomicBool>,
    hang_reset: Arc<AtomicBool>,
}

impl Session for Resettable {
    fn call(&mut self, _request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        let serial = self.serial;
        Box::pin(async move { Ok(answer(serial)) })
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }

    fn reset(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail_reset.load(Ordering::SeqCst);
        if self.hang_reset.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        Box::pin(async move { closed_if(fail, "cannot reset") })
    }
}

#[derive(Clone, Default)]
struct ResettableFactory {
    created: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
    fail_reset: Arc<AtomicBool>,
    hang_reset: Arc<AtomicBool>,
}

impl SessionFactory for ResettableFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let session = Resettable {
            serial: self.created.fetch_add(1, Ordering::SeqCst),
            resets: Arc::clone(&self.resets),
            fail_reset: Arc::clone(&self.fail_reset),
            hang_reset: Arc::clone(&self.hang_reset),
        };
        Box::pin(async move { Ok(Box::new(session) as Box<dyn Session>) })
    }
}

#[tokio::test]
async fn a_session_that_served_a_call_is_reset_before_its_next_task_and_replaced_if_it_cannot_be() {
    let factory = ResettableFactory::default();
    let pool = Pool::start(config(1, 1), factory.clone()).await.unwrap();
    // A fresh (pre-warmed) session is handed out as it is.
    assert_eq!(serial_of(&pool).await, 0);
    assert_eq!(factory.resets.load(Ordering::SeqCst), 0);
    // It served a call: reset before the next one.
    assert_eq!(serial_of(&pool).await, 0);
    assert_eq!(factory.resets.load(Ordering::SeqCst), 1);
    // Taken without a call: no reset is owed for it.
    drop(pool.acquire().await.unwrap());
    assert_eq!(serial_of(&pool).await, 0);
    assert_eq!(factory.resets.load(Ordering::SeqCst), 2);
    // A failed reset replaces the session.
    factory.fail_reset.store(true, Ordering::SeqCst);
    assert_eq!(serial_of(&pool).await, 1);
    assert_eq!(factory.resets.load(Ordering::SeqCst), 3);
    assert_eq!(pool.stats().discarded, 1);
}

#[tokio::test]
async fn warming_idle_sessions_keeps_the_reset_a_served_session_owes() {
    let factory = ResettableFactory::default();
    let pool = Pool::start(config(1, 1), factory.clone()).await.unwrap();
    assert_eq!(serial_of(&pool).await, 0);
    pool.warm_up_idle().await;
    assert_eq!(serial_of(&pool).await, 0);
    assert_eq!(factory.resets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reset_that_never_answers_is_cut_off_and_its_session_replaced() {
    let factory = ResettableFactory::default();
    let config = PoolConfig {
        health_check_timeout: Duration::from_millis(100),
        ..config(1, 1)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    assert_eq!(serial_of(&pool).await, 0);
    factory.hang_reset.store(true, Ordering::SeqCst);
    // The session that served a call is reset before the next: that reset hangs.
    let next = tokio::time::timeout(Duration::from_secs(5), serial_of(&pool))
        .await
        .expect("the acquire waited for a reset that never answers");
    assert_eq!(next, 1);
    assert_eq!(pool.stats().discarded, 1);
}

/// A task cancelled while its session starts (an MCP server's handshake) drops the acquire
/// part-way: the session that never was must not stay counted, or the pool stops topping up
/// once the count reaches `max_size`.
#[tokio::test]
async fn an_acquire_dropped_while_its_session_starts_leaves_the_count_right() {
    struct SlowStart {
        created: Arc<AtomicUsize>,
    }
    impl SessionFactory for SlowStart {
        fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
            let serial = self.created.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Box::new(Numbered {
                    serial,
                    sick: Arc::default(),
                }) as Box<dyn Session>)
            })
        }
    }
    let created = Arc::new(AtomicUsize::new(0));
    let pool = Pool::start(
        PoolConfig {
            min_idle: 0,
            max_size: 2,
            acquire_timeout: Duration::from_secs(5),
            ..PoolConfig::new("slow")
        },
        SlowStart {
            created: Arc::clone(&created),
        },
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let acquire = pool.acquire();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), acquire)
                .await
                .is_err()
        );
    }
    assert_eq!(pool.stats().size, 0, "{:?}", pool.stats());
    // And the pool still makes sessions up to its limit.
    let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    assert_eq!(pool.stats().size, 2);
    drop((a, b));
}

/// The first session starts at once (pre-warmed), every later one takes 400 ms: a tool server
/// that is slow to start. `finished` counts the starts that completed.
#[derive(Clone, Default)]
struct SlowAfterFirst {
    created: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl SessionFactory for SlowAfterFirst {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let serial = self.created.fetch_add(1, Ordering::SeqCst);
        let finished = Arc::clone(&self.finished);
        Box::pin(async move {
            if serial > 0 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Numbered {
                serial,
                sick: Arc::default(),
            }) as Box<dyn Session>)
        })
    }
}

/// Acquires and calls from a task of its own: the serial of the session it got.
fn call_in_task(pool: &Pool) -> tokio::task::JoinHandle<u64> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut session = pool.acquire().await.unwrap();
        let outcome = session
            .call(ToolRequest::new("id", json!({})))
            .await
            .unwrap();
        outcome.json.unwrap().as_u64().unwrap()
    })
}

/// A fan-out onto a pool with one warm session (of 2 at most): a second acquire starts a
/// session, the warm one comes back first and serves it, and the start goes on in the
/// background. Returns the factory, the pool and the second acquire's session.
async fn a_start_left_in_the_background() -> (SlowAfterFirst, Pool, PooledSession) {
    let factory = SlowAfterFirst::default();
    let pool = Pool::start(config(1, 2), factory.clone()).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let acquiring = pool.clone();
    let second = tokio::spawn(async move { acquiring.acquire().await.unwrap() });
    wait_until("the second start", || {
        factory.created.load(Ordering::SeqCst) == 2
    })
    .await;
    drop(held);
    let second = second.await.unwrap();
    (factory, pool, second)
}

/// The second acquire is served by the returned session; its start joins the idle list.
#[tokio::test]
async fn an_acquire_takes_a_session_returned_while_its_own_is_starting() {
    let (factory, pool, mut second) = a_start_left_in_the_background().await;
    let outcome = second
        .call(ToolRequest::new("id", json!({})))
        .await
        .unwrap();
    assert_eq!(
        outcome.json,
        Some(json!(0)),
        "served by the returned session"
    );
    assert_eq!(
        factory.finished.load(Ordering::SeqCst),
        1,
        "the start is not done yet"
    );
    drop(second);
    wait_until("the started session idle", || pool.stats().idle == 2).await;
    let stats = pool.stats();
    assert_eq!(
        (stats.size, stats.in_use, stats.created),
        (2, 0, 2),
        "{stats:?}"
    );
}

/// An acquire that finds a background start pending waits for it instead of starting a third
/// session past `max_size`.
#[tokio::test]
async fn an_acquire_waits_for_a_pending_background_start_rather_than_starting_another() {
    let (factory, pool, second) = a_start_left_in_the_background().await;
    let third = call_in_task(&pool);
    assert_eq!(third.await.unwrap(), 1, "served by the background start");
    assert_eq!(
        factory.created.load(Ordering::SeqCst),
        2,
        "no third session"
    );
    assert_eq!(pool.stats().size, 2);
    drop(second);
}

/// Closing the pool stops a start going on in the background; nothing stays counted.
#[tokio::test]
async fn close_stops_a_background_start() {
    let (factory, pool, second) = a_start_left_in_the_background().await;
    pool.close_and_wait().await;
    drop(second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        factory.finished.load(Ordering::SeqCst),
        1,
        "the start was stopped"
    );
    assert_eq!(pool.stats().size, 0, "{:?}", pool.stats());
}

#[tokio::test]
async fn a_declared_pools_idle_timeout_and_health_check_interval_are_its_own() {
    use tetrarch::session::{PoolContext, PoolDef};
    let text = "kind = \"native\"\nmin_idle = 1\nmax_size = 4\nidle_timeout = \"100ms\"\n\
                health_check_interval = \"50ms\"\n";
    let def: PoolDef = toml::from_str(text).unwrap();
    assert_eq!(def.idle_timeout, Duration::from_millis(100));
    assert_eq!(def.health_check_interval, Duration::from_millis(50));
    let pool = def.start("nat", &PoolContext::default()).await.unwrap();
    let held = hold_sessions(&pool, 3).await;
    drop(held);
    wait_until("shrink", || pool.stats().size == 1).await;
    // The defaults: 5 minutes, 30 seconds.
    let def: PoolDef = toml::from_str("kind = \"native\"\n").unwrap();
    assert_eq!(def.idle_timeout, Duration::from_secs(300));
    assert_eq!(def.health_check_interval, Duration::from_secs(30));
    let zero: PoolDef = toml::from_str("kind = \"native\"\nidle_timeout = \"0s\"\n").unwrap();
    let err = zero.check("nat").unwrap_err().to_string();
    assert!(
        err.contains("idle_timeout and health_check_interval must be above zero"),
        "{err}"
    );
}

/// Sessions started together fall due for their health checks together; they are checked one
/// at a time, so while one check hangs the others stay on the list and serve acquires, and no
/// session is started past the ones the pool has.
#[tokio::test]
async fn health_checks_take_one_session_off_the_list_at_a_time() {
    let factory = SlowToCheck::default();
    let config = PoolConfig {
        health_check_interval: Duration::from_millis(50),
        ..config(3, 3)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    wait_until("a check", || pool.stats().idle < 3).await;
    assert_eq!(pool.stats().idle, 2, "{:?}", pool.stats());
    // Two acquires while the first check runs (300 ms) take the two sessions still listed.
    let held = hold_sessions(&pool, 2).await;
    assert_eq!(
        factory.created.load(Ordering::SeqCst),
        3,
        "no session started"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = pool.stats();
    assert_eq!(
        (stats.size, stats.created, stats.discarded),
        (3, 3, 0),
        "{stats:?}"
    );
}

/// A session whose health check ends after its pool closed is closed, not listed as idle on
/// the closed pool (where it kept its server running and counted in its size).
#[tokio::test]
async fn a_session_checked_while_its_pool_closes_is_closed() {
    let factory = SlowToCheck::default();
    let config = PoolConfig {
        health_check_interval: Duration::from_millis(50),
        ..config(1, 1)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    wait_until("a check", || pool.stats().idle == 0).await;
    pool.close();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = pool.stats();
    assert_eq!((stats.size, stats.idle), (0, 0), "{stats:?}");
}

/// An acquire starting a session of its own gives up when its pool closes, rather than wait
/// for the start and make its call on a closed pool's session; the start is dropped.
#[tokio::test]
async fn an_acquire_starting_a_session_ends_when_its_pool_closes() {
    let factory = SlowAfterFirst::default();
    let config = PoolConfig {
        acquire_timeout: Duration::from_secs(5),
        ..config(0, 1)
    };
    let pool = Pool::start(config, factory.clone()).await.unwrap();
    // The first start is quick; its session crashes, so the next acquire starts a slow one.
    let mut first = pool.acquire().await.unwrap();
    first
        .call(ToolRequest::new("crash", json!({})))
        .await
        .unwrap_err();
    drop(first);
    let acquiring = pool.clone();
    let acquire = tokio::spawn(async move { acquiring.acquire().await.map(|_| ()) });
    wait_until("the slow start", || {
        factory.created.load(Ordering::SeqCst) == 2
    })
    .await;
    pool.close();
    // It used to wait for the start and return its session.
    let err = acquire.await.unwrap().unwrap_err();
    assert!(matches!(err, SessionError::PoolClosed { .. }), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        factory.finished.load(Ordering::SeqCst),
        1,
        "the start was dropped"
    );
    assert_eq!(pool.stats().size, 0, "{:?}", pool.stats());
}
