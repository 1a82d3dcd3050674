//! Time written as text, read and written in one place so each reader takes what its writer
//! prints: durations as the config and the flags take them (and `--help` and errors print them),
//! instants as the Kubernetes API takes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses a duration as the config and the command line take it: `250ms`, `2s`, `1m`, `1h`,
/// `1.5s`, `1m30s`: one or more number-unit pairs.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let n: f64 = number.parse().ok()?;
        total = total.checked_add(Duration::try_from_secs_f64(n * seconds_per_unit).ok()?)?;
        rest = tail;
    }
    Some(total)
}

/// `1s`, `1m`, `5m30s`, `10ms`: as the flags take it, so `--help` and a range error quote
/// values a user can type back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (d.as_secs() / 3600, d.as_secs() / 60 % 60, d.as_secs() % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// A `metav1.MicroTime`: RFC 3339 in UTC with microseconds.
pub fn micro_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("2s"), Some(Duration::from_secs(2)));
        assert_eq!(d("1m"), Some(Duration::from_secs(60)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "1x", "1.s", ".5s", "-1s", "1 s", "1e3s"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_are_written_as_the_flags_take_them() {
        for (d, text) in [
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(330), "5m30s"),
            (Duration::from_millis(10), "10ms"),
            (Duration::from_secs(3600 * 720), "720h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Some(d));
        }
    }

    #[test]
    fn micro_times_are_rfc3339_utc_with_microseconds() {
        let t = |secs: u64, micros: u32| {
            micro_time(
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
            )
        };
        assert_eq!(t(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(t(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(t(1_795_719_600, 123_456), "2026-11-26T19:00:00.123456Z");
        assert_eq!(t(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }
}
