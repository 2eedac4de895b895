//! Tests of `Admission` with a paused clock. Waiting futures are polled by hand
//! (no spawned tasks), so each step is deterministic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;

type Admit = Pin<Box<dyn Future<Output = Result<Permit, Reject>> + Send>>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(limit: LimitConfig) -> AdmissionConfig {
    AdmissionConfig {
        max_waiting: 100,
        queue_timeout: secs(5),
        reserved: [0; 4],
        limit,
    }
}

/// An Admission with `capacity` slots in `Capacity` mode.
fn pool(capacity: usize) -> Arc<Admission> {
    pool_with(config(LimitConfig::Capacity), capacity)
}

fn pool_with(config: AdmissionConfig, capacity: usize) -> Arc<Admission> {
    let admission = Arc::new(Admission::new(config));
    admission.set_capacity(capacity);
    admission
}

fn later(duration: Duration) -> Instant {
    Instant::now() + duration
}

fn start(admission: &Arc<Admission>, priority: Priority, deadline: Instant) -> Admit {
    let admission = admission.clone();
    Box::pin(async move { admission.admit(priority, deadline).await })
}

fn poll(future: &mut Admit) -> Poll<Result<Permit, Reject>> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Admits without waiting, or panics.
fn now(admission: &Arc<Admission>, priority: Priority) -> Result<Permit, Reject> {
    now_with(admission, priority, later(secs(60)))
}

/// Admits with `deadline` without waiting, or panics.
fn now_with(
    admission: &Arc<Admission>,
    priority: Priority,
    deadline: Instant,
) -> Result<Permit, Reject> {
    let mut future = start(admission, priority, deadline);
    match poll(&mut future) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("{priority} request had to wait"),
    }
}

/// Starts a request that has to wait (it is queued after this).
fn queued(admission: &Arc<Admission>, priority: Priority, deadline: Instant) -> Admit {
    let mut future = start(admission, priority, deadline);
    assert!(
        poll(&mut future).is_pending(),
        "{priority} request was not queued"
    );
    future
}

fn granted(future: &mut Admit) -> Permit {
    match poll(future) {
        Poll::Ready(Ok(permit)) => permit,
        other => panic!("expected a permit, got {other:?}"),
    }
}

fn rejected(future: &mut Admit) -> Reject {
    match poll(future) {
        Poll::Ready(Err(reject)) => reject,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_admit_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let admission = pool(1);
        let future = admission.admit(Priority::Low, Instant::now());
        assert_send(&future);
    });
}

#[test]
fn priority_names_round_trip() {
    for priority in Priority::ALL {
        assert_eq!(priority.as_str().parse::<Priority>(), Ok(priority));
        assert_eq!(Priority::ALL[priority as usize], priority);
    }
    let error = "urgent".parse::<Priority>().err().unwrap_or_default();
    assert!(error.contains("low, normal, high, critical"), "{error}");
    assert!(Priority::Critical > Priority::Low);
}

#[tokio::test(start_paused = true)]
async fn fast_path_admits_up_to_capacity_and_the_next_waits_for_a_drop() {
    let admission = pool(3);
    let t0 = Instant::now();
    let mut permits: Vec<Permit> = (0..3)
        .map(|_| now(&admission, Priority::Normal))
        .collect::<Result<_, _>>()
        .expect("fast path");
    assert_eq!(admission.snapshot().in_use, 3);
    assert!(
        permits.iter().all(|p| !p.queued()),
        "a free slot is no wait"
    );
    let mut fourth = queued(&admission, Priority::Normal, later(secs(60)));
    assert_eq!(admission.snapshot().waiting, [0, 1, 0, 0]);
    assert!(poll(&mut fourth).is_pending());
    permits.pop();
    let permit = granted(&mut fourth);
    assert_eq!(permit.priority(), Priority::Normal);
    assert!(permit.queued());
    let status = admission.snapshot();
    assert_eq!(
        (status.in_use, status.waiting, status.limit),
        (3, [0; 4], 3)
    );
    assert_eq!(Instant::now(), t0, "nothing waited on the clock");
    drop(permits);
    drop(permit);
    assert_eq!(admission.snapshot().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_at_its_deadline_or_the_queue_timeout() {
    let admission = pool(1);
    let _held = now(&admission, Priority::Normal);
    let t0 = Instant::now();
    let result = admission.admit(Priority::Normal, later(secs(2))).await;
    assert!(
        matches!(result, Err(Reject::QueueTimeout { .. })),
        "{result:?}"
    );
    assert_eq!(Instant::now() - t0, secs(2), "the deadline");

    let t1 = Instant::now();
    let result = admission.admit(Priority::Normal, later(secs(60))).await;
    let Err(reject @ Reject::QueueTimeout { retry_after }) = result else {
        panic!("{result:?}");
    };
    assert_eq!(Instant::now() - t1, secs(5), "the queue timeout");
    assert!(retry_after >= secs(1) && reject.retry_after() == retry_after);
    assert_eq!(admission.snapshot().waiting, [0; 4]);
}

#[tokio::test(start_paused = true)]
async fn max_waiting_is_respected() {
    let mut settings = config(LimitConfig::Capacity);
    settings.max_waiting = 2;
    let admission = pool_with(settings, 1);
    let _held = now(&admission, Priority::Normal);
    let _a = queued(&admission, Priority::Normal, later(secs(60)));
    let _b = queued(&admission, Priority::Normal, later(secs(60)));
    let third = now(&admission, Priority::Normal);
    assert!(
        matches!(third, Err(Reject::QueueFull { retry_after }) if retry_after >= secs(1)),
        "{third:?}"
    );
    assert_eq!(admission.snapshot().waiting, [0, 2, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn no_queue_rejects_at_once_when_full() {
    let mut settings = config(LimitConfig::Fixed(1));
    settings.max_waiting = 0;
    let admission = pool_with(settings, 10);
    let _held = now(&admission, Priority::Critical);
    let result = now(&admission, Priority::Critical);
    assert!(
        matches!(result, Err(Reject::QueueFull { .. })),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_frees_its_place_and_the_next_gets_the_slot() {
    let admission = pool(1);
    let held = now(&admission, Priority::Normal);
    let a = queued(&admission, Priority::Normal, later(secs(60)));
    let mut b = queued(&admission, Priority::Normal, later(secs(60)));
    drop(a);
    assert_eq!(admission.snapshot().waiting, [0, 1, 0, 0]);
    drop(held);
    let permit = granted(&mut b);
    assert_eq!(admission.snapshot().in_use, 1);
    drop(permit);
    assert_eq!(admission.snapshot().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_granted_to_a_waiter_that_leaves_before_taking_it_is_not_lost() {
    let admission = pool(1);
    let held = now(&admission, Priority::Normal);
    let a = queued(&admission, Priority::Normal, later(secs(60)));
    let mut b = queued(&admission, Priority::Normal, later(secs(60)));
    // The slot goes to `a`, which is dropped before it is polled again.
    drop(held);
    assert_eq!(admission.snapshot().waiting, [0, 1, 0, 0]);
    drop(a);
    let permit = granted(&mut b);
    assert_eq!(admission.snapshot().in_use, 1);
    drop(permit);
    let status = admission.snapshot();
    assert_eq!((status.in_use, status.waiting), (0, [0; 4]));
}

#[tokio::test(start_paused = true)]
async fn a_grant_racing_the_timeout_is_kept() {
    let admission = pool(1);
    let held = now(&admission, Priority::Normal);
    let mut waiter = queued(&admission, Priority::Normal, later(secs(1)));
    // The slot is granted, then the timeout passes before the waiter looks.
    drop(held);
    advance(secs(2)).await;
    let permit = granted(&mut waiter);
    assert_eq!(admission.snapshot().in_use, 1);
    drop(permit);
}

#[tokio::test(start_paused = true)]
async fn a_critical_waiter_is_served_before_older_low_waiters() {
    let admission = pool(2);
    let mut held: Vec<Permit> = (0..2)
        .map(|_| now(&admission, Priority::Low).expect("fast path"))
        .collect();
    let mut low1 = queued(&admission, Priority::Low, later(secs(60)));
    let mut low2 = queued(&admission, Priority::Low, later(secs(60)));
    let mut critical = queued(&admission, Priority::Critical, later(secs(60)));
    let mut normal = queued(&admission, Priority::Normal, later(secs(60)));
    assert_eq!(admission.snapshot().waiting, [2, 1, 0, 1]);

    held.pop();
    let critical = granted(&mut critical);
    assert!(poll(&mut low1).is_pending() && poll(&mut normal).is_pending());
    held.pop();
    let normal = granted(&mut normal);
    assert!(poll(&mut low1).is_pending());
    drop(critical);
    let _low1 = granted(&mut low1);
    assert!(poll(&mut low2).is_pending(), "FIFO within a class");
    drop(normal);
    let _low2 = granted(&mut low2);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_displaces_the_newest_waiter_of_the_lowest_class() {
    let mut settings = config(LimitConfig::Capacity);
    settings.max_waiting = 2;
    let admission = pool_with(settings, 1);
    let _held = now(&admission, Priority::High);
    let mut low1 = queued(&admission, Priority::Low, later(secs(60)));
    let mut low2 = queued(&admission, Priority::Low, later(secs(60)));

    let mut normal = queued(&admission, Priority::Normal, later(secs(60)));
    assert!(matches!(rejected(&mut low2), Reject::QueueFull { .. }));
    assert_eq!(admission.snapshot().waiting, [1, 1, 0, 0]);

    // Nothing below Low: the newcomer is rejected.
    let low3 = now(&admission, Priority::Low);
    assert!(matches!(low3, Err(Reject::QueueFull { .. })), "{low3:?}");

    // Critical displaces the lowest class first (low1, not normal).
    let _critical = queued(&admission, Priority::Critical, later(secs(60)));
    assert!(matches!(rejected(&mut low1), Reject::QueueFull { .. }));
    assert!(poll(&mut normal).is_pending());
    assert_eq!(admission.snapshot().waiting, [0, 1, 0, 1]);

    // Same class: no displacement.
    let normal2 = now(&admission, Priority::Normal);
    assert!(
        matches!(normal2, Err(Reject::QueueFull { .. })),
        "{normal2:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reserved_shares_keep_half_the_slots_for_critical() {
    let mut settings = config(LimitConfig::Capacity);
    settings.max_waiting = 0;
    settings.reserved = [0, 0, 0, 50];
    let admission = pool_with(settings, 10);

    let low: Vec<Permit> = (0..5)
        .map(|_| now(&admission, Priority::Low).expect("within the unreserved half"))
        .collect();
    for priority in [Priority::Low, Priority::Normal, Priority::High] {
        let result = now(&admission, priority);
        assert!(
            matches!(result, Err(Reject::QueueFull { .. })),
            "{priority}: {result:?}"
        );
    }
    let critical: Vec<Permit> = (0..5)
        .map(|_| now(&admission, Priority::Critical).expect("the reserved half"))
        .collect();
    assert_eq!(admission.snapshot().in_use, 10);
    assert!(now(&admission, Priority::Critical).is_err());
    drop(low);
    // Critical may also use the unreserved slots.
    let more: Vec<Permit> = (0..5)
        .map(|_| now(&admission, Priority::Critical).expect("unreserved half"))
        .collect();
    drop((critical, more));
    assert_eq!(admission.snapshot().in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_low_request_does_not_take_a_reserved_slot() {
    let mut settings = config(LimitConfig::Capacity);
    settings.reserved = [0, 0, 0, 50];
    let admission = pool_with(settings, 4);
    let mut low: Vec<Permit> = (0..2)
        .map(|_| now(&admission, Priority::Low).expect("fast path"))
        .collect();
    let _critical = now(&admission, Priority::Critical).expect("reserved");
    let mut waiting = queued(&admission, Priority::Low, later(secs(60)));
    // One slot is free but reserved for Critical (which holds 1 of its 2).
    assert_eq!(admission.snapshot().in_use, 3);
    low.pop();
    let _low = granted(&mut waiting);
}

/// Holds `capacity` slots and renews one every `1/rate` for `duration`, so
/// slots drain at `rate` per second.
async fn drain_steadily(
    admission: &Arc<Admission>,
    capacity: usize,
    rate: u64,
    duration: Duration,
) -> Vec<Permit> {
    let mut held: std::collections::VecDeque<Permit> = (0..capacity)
        .map(|_| now(admission, Priority::Normal).expect("fast path"))
        .collect();
    let step = Duration::from_secs(1) / rate as u32;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        advance(step).await;
        held.pop_front();
        held.push_back(now(admission, Priority::Normal).expect("renewed"));
    }
    held.into()
}

#[tokio::test(start_paused = true)]
async fn predictive_shedding_answers_at_once_when_the_wait_is_too_long() {
    let mut settings = config(LimitConfig::Capacity);
    settings.queue_timeout = secs(30);
    let admission = pool_with(settings, 10);
    let _held = drain_steadily(&admission, 10, 10, secs(10)).await;
    let rate = admission.snapshot().drain_per_second;
    assert!((9.0..=11.0).contains(&rate), "{rate}");

    let _waiters: Vec<Admit> = (0..50)
        .map(|_| queued(&admission, Priority::Normal, later(secs(60))))
        .collect();
    let t0 = Instant::now();
    let result = now_with(&admission, Priority::Normal, later(secs(1)));
    assert_eq!(Instant::now(), t0);
    let Err(reject @ Reject::Shed { expected_wait }) = result else {
        panic!("{result:?}");
    };
    assert!(
        expected_wait >= ms(4500) && expected_wait <= ms(5700),
        "{expected_wait:?}"
    );
    assert_eq!(reject.retry_after(), secs(5));

    // With time enough, the same request queues.
    let _patient = queued(&admission, Priority::Normal, later(secs(10)));
    // A critical request has nobody ahead: ~0.1 s expected, it queues.
    let _critical = queued(&admission, Priority::Critical, later(secs(1)));
    assert_eq!(admission.snapshot().waiting, [0, 51, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn without_a_drain_rate_only_a_queue_that_exists_sheds() {
    let admission = pool(1);
    let _held = now(&admission, Priority::Normal);
    // Nobody ahead, nothing measured: no estimate, the request queues.
    let _first = queued(&admission, Priority::Normal, later(secs(1)));
    // Someone ahead: the estimate is the queue timeout (5 s) > 1 s left.
    let result = now_with(&admission, Priority::Normal, later(secs(1)));
    assert_eq!(
        result.err(),
        Some(Reject::Shed {
            expected_wait: secs(5)
        })
    );
    let _patient = queued(&admission, Priority::Normal, later(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_sheds_at_half_the_queue_timeout() {
    let mut settings = config(LimitConfig::Capacity);
    settings.queue_timeout = secs(4);
    let admission = pool_with(settings, 1);
    let _held = now(&admission, Priority::Normal);
    let mut a = queued(&admission, Priority::Normal, later(secs(60)));
    advance(secs(3)).await;
    let _b = queued(&admission, Priority::Normal, later(secs(60)));
    advance(ms(500)).await;
    // Not standing yet (3.5 s < 4 s): expected 4 s is within the 4 s timeout.
    let _c = queued(&admission, Priority::Normal, later(secs(60)));
    advance(secs(1)).await;
    assert!(matches!(rejected(&mut a), Reject::QueueTimeout { .. }));
    // Non-empty since 4.5 s > 4 s: a standing queue allows only 2 s.
    let result = now(&admission, Priority::Normal);
    assert_eq!(
        result.err(),
        Some(Reject::Shed {
            expected_wait: secs(4)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn capacity_zero_means_no_slot_and_waiters_time_out() {
    let admission = pool(0);
    let t0 = Instant::now();
    let result = admission.admit(Priority::Critical, later(secs(60))).await;
    assert!(
        matches!(result, Err(Reject::QueueTimeout { .. })),
        "{result:?}"
    );
    assert_eq!(Instant::now() - t0, secs(5));
    assert_eq!(admission.snapshot().limit, 0);

    let mut waiting = queued(&admission, Priority::Normal, later(secs(60)));
    admission.set_capacity(2);
    let _permit = granted(&mut waiting);
}

#[tokio::test(start_paused = true)]
async fn set_config_keeps_waiters_and_permits() {
    let admission = pool_with(config(LimitConfig::Fixed(1)), 100);
    let held = now(&admission, Priority::Normal);
    let mut a = queued(&admission, Priority::Low, later(secs(60)));
    let mut b = queued(&admission, Priority::Normal, later(secs(60)));

    let mut smaller = config(LimitConfig::Fixed(1));
    smaller.max_waiting = 1;
    smaller.queue_timeout = secs(30);
    admission.set_config(smaller);
    let status = admission.snapshot();
    assert_eq!((status.in_use, status.waiting), (1, [1, 1, 0, 0]));

    // More slots: the waiters are served at once.
    admission.set_config(config(LimitConfig::Fixed(3)));
    let _a = granted(&mut a);
    let _b = granted(&mut b);
    drop(held);
    assert_eq!(admission.snapshot().in_use, 2);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_learns_from_recorded_latencies_and_survives_reloads() {
    let adaptive = LimitConfig::Adaptive {
        min: 2,
        max: 40,
        initial: 4,
    };
    let admission = pool_with(config(adaptive.clone()), 1000);
    assert_eq!(admission.snapshot().limit, 4);
    // Every slot busy, answers at a steady 10 ms: the limit grows.
    for _ in 0..300 {
        let limit = admission.snapshot().limit;
        let mut permits: Vec<Permit> = (0..limit)
            .map(|_| now(&admission, Priority::Normal).expect("fast path"))
            .collect();
        advance(ms(10)).await;
        for permit in &mut permits {
            permit.record(ms(10), false);
        }
    }
    let learned = admission.snapshot().limit;
    assert!(learned > 10, "{learned}");

    admission.set_config(config(LimitConfig::Adaptive {
        min: 2,
        max: 100,
        initial: 4,
    }));
    assert_eq!(admission.snapshot().limit, learned, "kept over a reload");
    admission.set_capacity(8);
    assert_eq!(admission.snapshot().limit, 8, "capacity bounds it");
    admission.set_capacity(1000);

    // Everything fails: the limit backs off to min.
    for _ in 0..100 {
        let mut permit = now(&admission, Priority::Normal).expect("fast path");
        advance(ms(30)).await;
        permit.record(ms(30), true);
    }
    assert_eq!(admission.snapshot().limit, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_with_cancellations_never_exceed_the_limit_nor_leak() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut settings = config(LimitConfig::Fixed(8));
    settings.max_waiting = 64;
    settings.queue_timeout = ms(200);
    settings.reserved = [0, 10, 0, 30];
    let admission = pool_with(settings, 100);
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let admission = admission.clone();
        let (busy, most) = (busy.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let priority = Priority::ALL[(i % 4) as usize];
            let admit = admission.admit(priority, later(secs(1)));
            // Every fifth request gives up (client gone) after a short while.
            let permit = if i % 5 == 0 {
                match tokio::time::timeout(ms(i % 7), admit).await {
                    Ok(result) => result,
                    Err(_) => return,
                }
            } else {
                admit.await
            };
            if let Ok(mut permit) = permit {
                let now_busy = busy.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now_busy, Ordering::SeqCst);
                tokio::time::sleep(ms(1 + i % 3)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                permit.record(ms(1), false);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert!(most.load(Ordering::SeqCst) <= 8);
    let status = admission.snapshot();
    assert_eq!((status.in_use, status.waiting), (0, [0; 4]));
}

#[test]
fn a_rejection_names_its_page_and_only_a_full_queue_falls_back() {
    let wait = Duration::from_secs(2);
    let full = Reject::QueueFull { retry_after: wait };
    let timeout = Reject::QueueTimeout { retry_after: wait };
    let shed = Reject::Shed {
        expected_wait: wait,
    };
    assert_eq!(full.outcome(), Outcome::QueueFull);
    assert_eq!(timeout.outcome(), Outcome::QueueTimeout);
    assert_eq!(shed.outcome(), Outcome::Shed);
    assert!(full.falls_back(true));
    assert!(!full.falls_back(false));
    assert!(!timeout.falls_back(true));
    assert!(!shed.falls_back(true));
}
