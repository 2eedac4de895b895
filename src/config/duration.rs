//! Durations as operators write them: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, and
//! instants as RFC 3339 times: `"2026-12-01T02:00:00Z"`.

use std::time::{Duration, SystemTime};

/// Parses an RFC 3339 time with its offset, e.g. `"2026-12-01T02:00:00Z"` or
/// `"2026-12-01T10:00:00+08:00"`.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time ({e}); write e.g. \"2026-12-01T02:00:00Z\" or \"2026-12-01T10:00:00+08:00\"")
    })?;
    let since_epoch = Duration::new(
        u64::try_from(time.timestamp()).map_err(|_| format!("{text:?} is before 1970"))?,
        time.timestamp_subsec_nanos(),
    );
    Ok(SystemTime::UNIX_EPOCH + since_epoch)
}

/// Parses a duration written as an integer followed by `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let hint = "write a whole number with a unit: \"250ms\", \"5s\", \"2m\" or \"1h\"";
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; {hint}"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("{text:?} has no unit; {hint}")),
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}; {hint}")),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_times_with_their_offset() {
        let utc = parse_time("2026-12-01T02:00:00Z").expect("time");
        let beijing = parse_time("2026-12-01T10:00:00+08:00").expect("time");
        assert_eq!(utc, beijing);
        assert_eq!(
            utc.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
            1_796_090_400
        );
        assert!(parse_time("tomorrow").is_err());
        assert!(parse_time("2026-12-01 02:00").is_err());
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_missing_or_unknown_units_with_a_hint() {
        for bad in ["5", "5 sec", "ms", "-1s", "1.5s", ""] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("\"5s\""), "{bad}: {err}");
        }
    }
}
