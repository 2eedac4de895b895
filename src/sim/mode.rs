//! Behaviour modes of a simulated backend: latency, forced status, capacity
//! limit and injected faults, plus the JSON patch format of `PUT /__sim/mode`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// Lowest status code that may be forced on a backend.
pub(crate) const MIN_FORCED_STATUS: u16 = 200;
/// Highest status code that may be forced on a backend.
pub(crate) const MAX_FORCED_STATUS: u16 = 599;

/// A fault a simulated backend injects into the requests it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Fault {
    /// No fault: answer normally.
    #[default]
    None,
    /// Close new connections unread right after accepting them (the closest a
    /// live listener gets to refusing them; only a connection whose first
    /// request is for `/__sim/` is served, so the fault can be switched off);
    /// a request on a connection already open gets it closed unanswered.
    Refuse,
    /// Read the request head, then abort the connection with a TCP RST.
    Reset,
    /// Read the whole request and carry out its effect (an order is created),
    /// then abort the connection with a TCP RST instead of answering.
    ResetAfterBody,
    /// Read the request and never answer.
    Hang,
    /// Send status and headers at once, then dribble the body over several seconds.
    SlowBody,
}

impl Fault {
    /// Every fault, in the order they are documented.
    pub const ALL: [Fault; 6] = [
        Fault::None,
        Fault::Refuse,
        Fault::Reset,
        Fault::ResetAfterBody,
        Fault::Hang,
        Fault::SlowBody,
    ];

    /// The name of the fault as used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Refuse => "refuse",
            Fault::Reset => "reset",
            Fault::ResetAfterBody => "reset_after_body",
            Fault::Hang => "hang",
            Fault::SlowBody => "slow_body",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|fault| fault.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown fault {s:?} (expected one of {})", names.join(", "))
            })
    }
}

/// How one simulated backend (one listen address) behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mode {
    /// Base delay before answering, in milliseconds.
    pub latency_ms: u64,
    /// The delay varies uniformly by up to this many milliseconds either way.
    pub jitter_ms: u64,
    /// When set, every request is answered with this status.
    pub status: Option<u16>,
    /// When set, at most this many requests are handled at once; others wait.
    pub capacity: Option<u32>,
    /// The fault injected into requests.
    pub fault: Fault,
    /// Every POST makes a new order, key or not (an order service that does
    /// not dedupe).
    pub ignore_idempotency: bool,
}

impl Mode {
    /// Draws the delay of one request: latency ± uniform jitter, never negative.
    pub fn delay(&self) -> Duration {
        let jitter = i128::from(self.jitter_ms);
        let offset = if jitter == 0 {
            0
        } else {
            fastrand::i128(-jitter..=jitter)
        };
        let ms = (i128::from(self.latency_ms) + offset).max(0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The mode as a JSON value.
    pub(crate) fn to_json(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A change to a [`Mode`], parsed from the body of `PUT /__sim/mode`.
///
/// Every field is optional; a field that is present replaces the current
/// value. `null` resets a field: no forced status, no capacity limit, zero
/// latency or jitter, no fault.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ModePatch {
    pub(crate) latency_ms: Option<u64>,
    pub(crate) jitter_ms: Option<u64>,
    pub(crate) status: Option<Option<u16>>,
    pub(crate) capacity: Option<Option<u32>>,
    pub(crate) fault: Option<Fault>,
    pub(crate) ignore_idempotency: Option<bool>,
    /// Apply to every listener of the process, not just the one that received it.
    pub(crate) all: bool,
}

impl ModePatch {
    /// Parses a patch from a JSON body. Unknown fields, values of the wrong
    /// type and unknown faults are rejected with a readable message.
    pub(crate) fn from_json(body: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("mode must be a JSON object".to_owned());
        };
        Self::from_fields(&fields)
    }

    fn from_fields(fields: &Map<String, Value>) -> Result<Self, String> {
        let mut patch = ModePatch::default();
        for (name, value) in fields {
            match name.as_str() {
                "latency_ms" => patch.latency_ms = Some(millis(name, value)?),
                "jitter_ms" => patch.jitter_ms = Some(millis(name, value)?),
                "status" => patch.status = Some(status(value)?),
                "capacity" => patch.capacity = Some(capacity(value)?),
                "fault" => patch.fault = Some(fault(value)?),
                "ignore_idempotency" => {
                    patch.ignore_idempotency = Some(match value {
                        Value::Bool(ignore) => *ignore,
                        Value::Null => false,
                        _ => return Err("\"ignore_idempotency\" must be true or false".to_owned()),
                    })
                }
                "all" => {
                    patch.all = match value {
                        Value::Bool(all) => *all,
                        Value::Null => false,
                        _ => return Err("\"all\" must be true or false".to_owned()),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown field {other:?} (expected latency_ms, jitter_ms, status, \
                         capacity, fault, ignore_idempotency or all)"
                    ))
                }
            }
        }
        Ok(patch)
    }

    /// Applies the fields present in the patch to `mode`.
    pub(crate) fn apply(&self, mode: &mut Mode) {
        if let Some(latency_ms) = self.latency_ms {
            mode.latency_ms = latency_ms;
        }
        if let Some(jitter_ms) = self.jitter_ms {
            mode.jitter_ms = jitter_ms;
        }
        if let Some(status) = self.status {
            mode.status = status;
        }
        if let Some(capacity) = self.capacity {
            mode.capacity = capacity;
        }
        if let Some(fault) = self.fault {
            mode.fault = fault;
        }
        if let Some(ignore) = self.ignore_idempotency {
            mode.ignore_idempotency = ignore;
        }
    }
}

fn millis(name: &str, value: &Value) -> Result<u64, String> {
    match value {
        Value::Null => Ok(0),
        _ => value
            .as_u64()
            .ok_or_else(|| format!("{name:?} must be a non-negative integer (milliseconds)")),
    }
}

fn status(value: &Value) -> Result<Option<u16>, String> {
    if value.is_null() {
        return Ok(None);
    }
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (MIN_FORCED_STATUS..=MAX_FORCED_STATUS).contains(n))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "\"status\" must be null or an HTTP status code between \
                 {MIN_FORCED_STATUS} and {MAX_FORCED_STATUS}"
            )
        })
}

fn capacity(value: &Value) -> Result<Option<u32>, String> {
    if value.is_null() {
        return Ok(None);
    }
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .map(Some)
        .ok_or_else(|| {
            "\"capacity\" must be null or a positive integer (concurrent requests)".to_owned()
        })
}

fn fault(value: &Value) -> Result<Fault, String> {
    match value {
        Value::Null => Ok(Fault::None),
        Value::String(name) => name.parse(),
        _ => Err("\"fault\" must be a string".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> Result<ModePatch, String> {
        ModePatch::from_json(json.as_bytes())
    }

    #[test]
    fn parses_every_field() {
        let p = patch(
            r#"{"latency_ms":200,"jitter_ms":20,"status":503,"capacity":4,"fault":"reset","all":true}"#,
        )
        .expect("valid patch");
        assert_eq!(
            p,
            ModePatch {
                latency_ms: Some(200),
                jitter_ms: Some(20),
                status: Some(Some(503)),
                capacity: Some(Some(4)),
                fault: Some(Fault::Reset),
                ignore_idempotency: None,
                all: true,
            }
        );
    }

    #[test]
    fn absent_fields_keep_and_present_fields_replace() {
        let mut mode = Mode {
            latency_ms: 10,
            jitter_ms: 5,
            status: Some(500),
            capacity: Some(2),
            fault: Fault::Hang,
            ignore_idempotency: true,
        };
        patch(r#"{"latency_ms":50}"#)
            .expect("valid patch")
            .apply(&mut mode);
        assert_eq!(mode.latency_ms, 50);
        assert_eq!(mode.jitter_ms, 5);
        assert_eq!(mode.status, Some(500));
        assert_eq!(mode.capacity, Some(2));
        assert_eq!(mode.fault, Fault::Hang);
        assert!(mode.ignore_idempotency);
        patch(r#"{"ignore_idempotency":false}"#)
            .expect("valid patch")
            .apply(&mut mode);
        assert!(!mode.ignore_idempotency);
    }

    #[test]
    fn null_clears() {
        let mut mode = Mode {
            latency_ms: 10,
            jitter_ms: 5,
            status: Some(503),
            capacity: Some(4),
            fault: Fault::SlowBody,
            ignore_idempotency: false,
        };
        patch(r#"{"status":null,"capacity":null,"fault":null,"latency_ms":null}"#)
            .expect("valid patch")
            .apply(&mut mode);
        assert_eq!(
            mode,
            Mode {
                latency_ms: 0,
                jitter_ms: 5,
                status: None,
                capacity: None,
                fault: Fault::None,
                ignore_idempotency: false,
            }
        );
    }

    #[test]
    fn rejects_bad_input() {
        let unknown = patch(r#"{"latency":1}"#).expect_err("unknown field");
        assert!(unknown.contains("unknown field"), "{unknown}");
        let fault = patch(r#"{"fault":"explode"}"#).expect_err("unknown fault");
        assert!(fault.contains("unknown fault"), "{fault}");
        assert!(patch("{").is_err());
        assert!(patch("[]").is_err());
        assert!(patch(r#"{"status":99}"#).is_err());
        assert!(patch(r#"{"status":"503"}"#).is_err());
        assert!(patch(r#"{"capacity":0}"#).is_err());
        assert!(patch(r#"{"latency_ms":-1}"#).is_err());
        assert!(patch(r#"{"all":"yes"}"#).is_err());
        assert_eq!(patch("{}").expect("empty patch"), ModePatch::default());
    }

    #[test]
    fn fault_names_round_trip() {
        for fault in Fault::ALL {
            assert_eq!(fault.as_str().parse::<Fault>(), Ok(fault));
            let json = serde_json::to_value(fault).expect("serializes");
            assert_eq!(json, Value::String(fault.as_str().to_owned()));
            let cli = <Fault as clap::ValueEnum>::from_str(fault.as_str(), false);
            assert_eq!(cli, Ok(fault));
        }
    }

    #[test]
    fn delay_stays_within_jitter() {
        let mode = Mode {
            latency_ms: 10,
            jitter_ms: 30,
            ..Mode::default()
        };
        for _ in 0..200 {
            assert!(mode.delay() <= Duration::from_millis(40));
        }
        assert_eq!(Mode::default().delay(), Duration::ZERO);
    }
}
