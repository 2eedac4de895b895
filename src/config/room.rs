//! `[[rooms]]`, validated: what a waiting room runs on.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::Method;

/// When the waiting room forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomMode {
    /// Only when the pool's admission would queue or shed (the default).
    OnOverload,
    /// Every new shopper goes through the line.
    Always,
    /// The room does nothing.
    Off,
}

impl RoomMode {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomMode::OnOverload => "on_overload",
            RoomMode::Always => "always",
            RoomMode::Off => "off",
        }
    }
}

/// Requests that never wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bypass {
    /// Path prefixes (whole segments), e.g. payment callbacks, health checks.
    pub paths: Vec<String>,
    /// Methods, e.g. `OPTIONS`.
    pub methods: Vec<Method>,
    /// A header (e.g. staff), and the value it must have (`None`: any value).
    pub header: Option<(HeaderName, Option<String>)>,
}

/// A secret that never shows in logs or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// `[[rooms]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// Name, in cookies, metrics and the admin API.
    pub name: String,
    /// Names of the routes the room covers (a sale's product pages and checkout).
    pub routes: Vec<String>,
    /// Most shoppers on the site at once. Default: none (then
    /// `admit_per_minute` is required).
    pub max_active: Option<u32>,
    /// New shoppers let in per minute. Default: none (then `max_active` is required).
    pub admit_per_minute: Option<u32>,
    /// How long an admitted shopper keeps the pass after their last request.
    /// Default: 5m.
    pub session: Duration,
    /// How long a pass lasts at all, however busy its holder; then the holder
    /// queues again (passes cannot be hoarded by keeping them warm).
    /// Default: 30m; at least `session`.
    pub max_session: Duration,
    /// Most shoppers waiting in line (draws included); a newcomer beyond it
    /// gets the `line_full` page. Default: 1000000.
    pub max_waiting: u32,
    /// New tickets (or passes) one client address may get a second, with as
    /// many again at once; more get the 429 page. Default: 20 (a carrier NAT
    /// with 100 shoppers arriving within five seconds is not slowed).
    pub ticket_rate_per_address: u32,
    /// How often the waiting page checks again (sooner when the estimate is
    /// shorter). Default: 10s.
    pub refresh: Duration,
    /// A waiting shopper who has not checked in for this long loses the place
    /// (and a called one who did not come, the slot), so the line never stalls
    /// behind abandoned tickets. Default: 60s; at least twice `refresh`.
    pub ticket_timeout: Duration,
    /// HMAC key of tickets and passes (`secret` or `secret_env`), 32 bytes or more.
    pub secret: Secret,
    /// When the room forms. Default: on_overload.
    pub mode: RoomMode,
    /// Requests that never wait. Default: none.
    pub bypass: Bypass,
    /// Shoppers arriving before this instant get random places at it; nobody
    /// is admitted before it. Default: none.
    pub opens_at: Option<SystemTime>,
}
