//! The room's policy on a paused clock: who passes, who waits, what the page says.

use super::*;
use http::header::HeaderName;

use crate::store::room::MemoryLine;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn settings(mode: RoomMode) -> RoomConfig {
    RoomConfig {
        name: "sale".into(),
        routes: vec!["checkout".into()],
        max_active: Some(2),
        admit_per_minute: None,
        session: Duration::from_secs(300),
        max_session: Duration::from_secs(1800),
        max_waiting: 1_000_000,
        // The tests' shoppers share one address (none).
        ticket_rate_per_address: 1_000_000,
        refresh: Duration::from_secs(10),
        ticket_timeout: Duration::from_secs(60),
        secret: Secret(SECRET.to_vec()),
        mode,
        bypass: Bypass {
            paths: vec!["/api/payments/callback".into()],
            methods: vec![Method::OPTIONS],
            header: Some((HeaderName::from_static("x-staff"), Some("pass-123".into()))),
        },
        opens_at: None,
    }
}

fn room(settings: RoomConfig) -> Room {
    let metrics = Metrics::new();
    Room::new(
        settings,
        Arc::new(MemoryLine::new()),
        metrics.registered(RoomVecs::new).room("sale"),
    )
}

/// The pressure of a pool with no drain measured yet (queue timeout 1 s).
fn pressure(in_use: usize, waiting: usize, limit: usize, capacity: usize) -> Pressure {
    Pressure::of(&status(in_use, waiting, limit, 0.0), capacity)
}

fn status(in_use: usize, waiting: usize, limit: usize, drain: f64) -> AdmissionStatus {
    AdmissionStatus {
        in_use,
        waiting: [waiting, 0, 0, 0],
        limit,
        drain_per_second: drain,
        queue_timeout: Duration::from_secs(1),
        rejected: 0,
    }
}

#[test]
fn headroom_lasts_until_the_queue_promises_a_long_wait() {
    // 160 requests/s drain, 1 s queue timeout: a queue deeper than the limit
    // but under half a second (80 requests) keeps the line moving.
    assert!(Pressure::of(&status(8, 20, 8, 160.0), 8).headroom);
    assert!(Pressure::of(&status(8, 79, 8, 160.0), 8).headroom);
    assert!(!Pressure::of(&status(8, 80, 8, 160.0), 8).headroom);
    // A slower pool: the same queue is a longer wait.
    assert!(!Pressure::of(&status(8, 20, 8, 40.0), 8).headroom);
    // Nothing measured yet: a queue of the limit.
    assert!(pressure(8, 7, 8, 8).headroom);
    assert!(!pressure(8, 8, 8, 8).headroom);
    // No backend takes traffic.
    assert!(!Pressure::of(&status(0, 0, 8, 160.0), 0).headroom);
    assert!(Pressure::of(&status(8, 1, 8, 160.0), 8).would_queue);
    assert!(!Pressure::of(&status(7, 0, 8, 160.0), 8).would_queue);
}

#[tokio::test(start_paused = true)]
async fn the_pace_is_cut_when_the_pool_turns_requests_away_and_climbs_back_slowly() {
    let mut pace = Pace::default();
    let start = Instant::now();
    let at = |rejected: u64| Pressure {
        rejected,
        ..Pressure::IDLE
    };
    let tick = |n: u64| start + Duration::from_millis(100 * n);
    assert_eq!(pace.steer(&at(0), tick(0)), 1.0);
    // Rejections every tick for 3 s: one cut per second, not one per tick.
    let mut share = 1.0;
    for n in 1..=30 {
        share = pace.steer(&at(n), tick(n));
    }
    assert!((share - 0.95f64.powi(3)).abs() < 1e-9, "{share}");
    // Nobody turned away: 2% of the configured rate back per second.
    for n in 31..=80 {
        share = pace.steer(&at(30), tick(n));
    }
    let expected = 0.95f64.powi(3) + 0.02 * 5.0;
    assert!((share - expected).abs() < 1e-9, "{share} vs {expected}");
    // Never above the configured rate.
    for n in 81..=400 {
        share = pace.steer(&at(30), tick(n));
    }
    assert_eq!(share, 1.0);
}

/// A browser that keeps the room's cookie.
#[derive(Default)]
struct Browser {
    cookie: Option<String>,
}

impl Browser {
    async fn visit(&mut self, room: &Room, pressure: Pressure, now: Instant) -> Decision {
        self.visit_path(room, &Method::GET, "/checkout", &[], pressure, now)
            .await
    }

    async fn visit_path(
        &mut self,
        room: &Room,
        method: &Method,
        path: &str,
        extra: &[(&'static str, &'static str)],
        pressure: Pressure,
        now: Instant,
    ) -> Decision {
        let mut headers = HeaderMap::new();
        if let Some(cookie) = &self.cookie {
            headers.insert(
                http::header::COOKIE,
                http::HeaderValue::from_str(cookie).expect("cookie"),
            );
        }
        for (name, value) in extra {
            headers.insert(*name, http::HeaderValue::from_static(value));
        }
        let request = Request {
            method,
            path,
            headers: &headers,
            tls: false,
            client_ip: None,
        };
        let decision = room.decide(&request, pressure, now).await;
        let set = match &decision {
            Decision::Pass(cookie) | Decision::Wait(_, cookie) => cookie.clone(),
            Decision::Full | Decision::TooManyArrivals => None,
        };
        if let Some(set) = set {
            assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        decision
    }
}

fn view(decision: &Decision) -> View {
    match decision {
        Decision::Wait(view, _) => *view,
        other => panic!("expected to wait: {other:?}"),
    }
}

fn passes(decision: &Decision) -> bool {
    matches!(decision, Decision::Pass(_))
}

#[tokio::test(start_paused = true)]
async fn passes_let_through_and_tickets_keep_their_place() {
    let room = room(settings(RoomMode::Always));
    let now = Instant::now();
    let (mut a, mut b, mut c, mut d) = (
        Browser::default(),
        Browser::default(),
        Browser::default(),
        Browser::default(),
    );
    assert!(passes(&a.visit(&room, Pressure::IDLE, now).await));
    assert!(passes(&b.visit(&room, Pressure::IDLE, now).await));
    let first = view(&c.visit(&room, Pressure::IDLE, now).await);
    assert_eq!((first.position, first.ahead), (Some(1), Some(0)));
    let second = view(&d.visit(&room, Pressure::IDLE, now).await);
    assert_eq!(second.position, Some(2));
    // Nobody leaves within the session: the pass holders keep coming back.
    for s in 1..=5 {
        let t = now + Duration::from_secs(60 * s);
        assert!(passes(&a.visit(&room, Pressure::IDLE, t).await));
        assert!(passes(&b.visit(&room, Pressure::IDLE, t).await));
        assert_eq!(
            view(&c.visit(&room, Pressure::IDLE, t).await).position,
            Some(1)
        );
        assert_eq!(
            view(&d.visit(&room, Pressure::IDLE, t).await).position,
            Some(2)
        );
    }
    // b stops; a session later its slot goes to c, then d waits alone.
    let t = now + Duration::from_secs(5 * 60 + 301);
    assert!(passes(&a.visit(&room, Pressure::IDLE, t).await));
    assert!(passes(&c.visit(&room, Pressure::IDLE, t).await));
    assert_eq!(
        view(&d.visit(&room, Pressure::IDLE, t).await).position,
        Some(1)
    );
    // b comes back: its pass expired, so it is new, behind d.
    assert_eq!(
        view(&b.visit(&room, Pressure::IDLE, t).await).position,
        Some(2)
    );
}

#[tokio::test(start_paused = true)]
async fn bypassed_requests_pass_without_a_cookie() {
    let room = room(settings(RoomMode::Always));
    let now = Instant::now();
    let mut fill = (Browser::default(), Browser::default());
    fill.0.visit(&room, Pressure::IDLE, now).await;
    fill.1.visit(&room, Pressure::IDLE, now).await;
    let mut staff = Browser::default();
    let staff_header = [("x-staff", "pass-123")];
    assert_eq!(
        staff
            .visit_path(
                &room,
                &Method::GET,
                "/checkout",
                &staff_header,
                Pressure::IDLE,
                now
            )
            .await,
        Decision::Pass(None)
    );
    let guess = [("x-staff", "pass-124")];
    assert!(!passes(
        &staff
            .visit_path(
                &room,
                &Method::GET,
                "/checkout",
                &guess,
                Pressure::IDLE,
                now
            )
            .await
    ));
    let mut psp = Browser::default();
    for (method, path) in [
        (Method::POST, "/api/payments/callback/7"),
        (Method::OPTIONS, "/checkout"),
    ] {
        assert_eq!(
            psp.visit_path(&room, &method, path, &[], Pressure::IDLE, now)
                .await,
            Decision::Pass(None)
        );
    }
    assert!(!passes(
        &psp.visit_path(
            &room,
            &Method::GET,
            "/api/payments/callbacks",
            &[],
            Pressure::IDLE,
            now
        )
        .await
    ));
}

#[tokio::test(start_paused = true)]
async fn on_overload_the_room_forms_only_when_the_pool_would_queue() {
    let room = room(settings(RoomMode::OnOverload));
    let now = Instant::now();
    // A calm pool: shoppers pass at once, each with a pass, up to
    // max_active (2): direct passes count against it too.
    let mut early: Vec<Browser> = (0..2).map(|_| Browser::default()).collect();
    for browser in &mut early {
        assert!(passes(&browser.visit(&room, Pressure::IDLE, now).await));
        assert!(browser.cookie.as_deref().is_some_and(|c| c.contains("=p.")));
    }
    let mut third = Browser::default();
    assert_eq!(
        view(&third.visit(&room, Pressure::IDLE, now).await).position,
        Some(1)
    );
    // The pool saturates: newcomers wait, those with a pass go on.
    let busy = pressure(64, 10, 64, 64);
    assert!(busy.would_queue && busy.headroom);
    let mut late = Browser::default();
    assert_eq!(view(&late.visit(&room, busy, now).await).position, Some(2));
    for browser in &mut early {
        assert!(passes(&browser.visit(&room, busy, now).await));
    }
    // No headroom (the queue holds the limit): nobody is called.
    let stalled = pressure(64, 64, 64, 64);
    assert!(!stalled.headroom);
    // The estimate still says something, and grows as the stall is measured.
    let mut last = 0;
    for s in 1..=10 {
        // The third shopper keeps the page open too.
        let _ = third
            .visit(&room, stalled, now + Duration::from_secs(30 * s))
            .await;
        let waiting = view(
            &late
                .visit(&room, stalled, now + Duration::from_secs(30 * s))
                .await,
        );
        assert_eq!(waiting.position, Some(2));
        let estimate = waiting.estimated_wait.unwrap_or(u32::MAX);
        assert!(estimate >= last, "{estimate} after {last}");
        last = estimate;
    }
    let t = now + Duration::from_secs(301);
    // No backend at all.
    let none = pressure(0, 0, 64, 0);
    assert!(none.would_queue && !none.headroom);
    // Calm again: the early passes expired, the line moves.
    assert!(passes(&third.visit(&room, Pressure::IDLE, t).await));
    assert!(passes(&late.visit(&room, Pressure::IDLE, t).await));
}

#[tokio::test(start_paused = true)]
async fn the_estimate_uses_the_configured_rate_then_the_measured_one() {
    let mut config = settings(RoomMode::Always);
    config.max_active = None;
    config.admit_per_minute = Some(600); // 10 per second
    let room = room(config);
    let start = Instant::now();
    let mut browsers: Vec<Browser> = Vec::new();
    let mut estimates = Vec::new();
    // 30 arrivals per second for 5 s; the first second's 10 pass at once.
    for i in 0..150u64 {
        let now = start + Duration::from_millis(i * 1000 / 30);
        let mut browser = Browser::default();
        if let Decision::Wait(view, _) = browser.visit(&room, Pressure::IDLE, now).await {
            estimates.push((
                now,
                view.ahead.unwrap_or(0),
                view.estimated_wait.unwrap_or(0),
            ));
        }
        browsers.push(browser);
    }
    // Each estimate is about (ahead + 1) / 10 seconds...
    for (_, ahead, estimate) in &estimates {
        let expected = (*ahead as f64 + 1.0) / 10.0;
        assert!(
            (f64::from(*estimate) - expected).abs() <= 1.0,
            "{ahead} {estimate}"
        );
    }
    // ...and the refresh comes sooner than `refresh` when the wait is short.
    let mut b = Browser::default();
    let t = start + Duration::from_secs(5);
    let v = view(&b.visit(&room, Pressure::IDLE, t).await);
    assert!(v.refresh <= 10 && v.refresh >= 1, "{v:?}");
    // Paused: no estimate; the place is kept.
    room.line().set_control(Control::Paused).await;
    let paused = view(&b.visit(&room, Pressure::IDLE, t).await);
    assert_eq!(paused.estimated_wait, None);
    assert_eq!(paused.position, v.position);
    assert_eq!(paused.refresh, 10);
    // Closed: the room steps aside.
    room.line().set_control(Control::Closed).await;
    assert_eq!(
        Browser::default().visit(&room, Pressure::IDLE, t).await,
        Decision::Pass(None)
    );
}

#[tokio::test(start_paused = true)]
async fn before_opens_at_nobody_passes_and_the_page_counts_down() {
    let mut config = settings(RoomMode::OnOverload);
    config.opens_at = Some(SystemTime::now() + Duration::from_secs(120));
    let room = room(config);
    let now = Instant::now();
    let mut browser = Browser::default();
    let v = view(&browser.visit(&room, Pressure::IDLE, now).await);
    assert_eq!(v.position, None);
    assert!(
        v.opens_in.is_some_and(|s| (119..=120).contains(&s)),
        "{v:?}"
    );
    assert_eq!(v.refresh, 10);
    let close = view(
        &browser
            .visit(&room, Pressure::IDLE, now + Duration::from_secs(117))
            .await,
    );
    assert!(close.refresh <= 3, "checks again at the opening: {close:?}");
    // The operator opens early.
    room.line().set_control(Control::Open).await;
    assert!(passes(
        &browser
            .visit(&room, Pressure::IDLE, now + Duration::from_secs(118))
            .await
    ));
}

#[test]
fn rates_and_estimates() {
    let mut config = settings(RoomMode::Always);
    config.max_active = Some(300);
    config.session = Duration::from_secs(300);
    let room = room(config);
    let limits = room.limits(Control::Auto, Pressure::IDLE, Instant::now());
    // Nothing measured: a pass frees its slot within a session.
    assert!((room.rate(&LineStats::default(), &limits) - 1.0).abs() < 1e-9);
    // Measured: 50 admissions over 10 busy seconds dominate the prior.
    let measured = LineStats {
        rate_admissions: 500.0,
        rate_busy_seconds: 10.0,
        ..LineStats::default()
    };
    let rate = room.rate(&measured, &limits);
    assert!((40.0..=50.0).contains(&rate), "{rate}");
    // A tenth of the tickets ahead are abandoned: they do not count.
    let skipping = LineStats {
        skipped_share: 0.1,
        ..measured
    };
    let v = room.view(Some(999), &skipping, &limits, Instant::now());
    let plain = room.view(Some(999), &measured, &limits, Instant::now());
    assert!(v.estimated_wait < plain.estimated_wait, "{v:?} {plain:?}");
}

#[tokio::test(start_paused = true)]
async fn extreme_settings_do_not_panic() {
    let mut config = settings(RoomMode::Always);
    config.opens_at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(253_402_300_799));
    config.session = Duration::from_secs(u64::MAX / 1000);
    config.max_active = Some(1);
    let far = room(config);
    let now = Instant::now();
    let mut browser = Browser::default();
    let v = view(&browser.visit(&far, Pressure::IDLE, now).await);
    assert_eq!(v.position, None);
    assert!(v.opens_in.is_some());
    let mut config = settings(RoomMode::Always);
    config.opens_at = Some(SystemTime::UNIX_EPOCH);
    config.session = Duration::from_secs(u64::MAX / 1000);
    let room = room(config);
    let mut a = (Browser::default(), Browser::default(), Browser::default());
    a.0.visit(&room, Pressure::IDLE, now).await;
    a.1.visit(&room, Pressure::IDLE, now).await;
    let v = view(&a.2.visit(&room, Pressure::IDLE, now).await);
    assert!(v.estimated_wait.is_some_and(|s| s <= 1_000_000), "{v:?}");
}

#[tokio::test(start_paused = true)]
async fn one_address_gets_a_bounded_number_of_new_tickets() {
    let mut config = settings(RoomMode::Always);
    config.ticket_rate_per_address = 3;
    let room = room(config);
    let now = Instant::now();
    let headers = HeaderMap::new();
    let from = |ip: [u8; 4]| Request {
        method: &Method::GET,
        path: "/checkout",
        headers: &headers,
        tls: false,
        client_ip: Some(std::net::IpAddr::from(ip)),
    };
    // The rate and as many again at once: six new shoppers, then refused.
    let mut refused = 0;
    for _ in 0..10 {
        let decision = room
            .decide(&from([203, 0, 113, 7]), Pressure::IDLE, now)
            .await;
        refused += usize::from(matches!(decision, Decision::TooManyArrivals));
    }
    assert_eq!(refused, 4);
    // Another address is not slowed.
    let other = room
        .decide(&from([203, 0, 113, 8]), Pressure::IDLE, now)
        .await;
    assert!(!matches!(other, Decision::TooManyArrivals));
}
