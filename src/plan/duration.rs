//! Durations as plans, configuration files and the CLI write them (`"30s"`, `"1h 30m"`,
//! `"250ms"`), parsed by humantime behind a bound of our own: humantime 2.x panics on a total of
//! exactly 2^64 − 1 seconds whose sub-second parts add up to a whole second
//! (`"18446744073709551615s 1000ms"`), so a total that could reach it is refused before it
//! parses.

use std::time::Duration;

pub use humantime::DurationError;

/// Parses a humantime duration. A total that could pass 2^64 − 1 seconds (about 585 billion
/// years) is refused as [`DurationError::NumberOverflow`] ("number is too large").
///
/// # Errors
/// The text is not a duration, or is too large.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if upper_bound_seconds(text) > u128::from(u64::MAX) {
        return Err(DurationError::NumberOverflow);
    }
    humantime::parse_duration(text)
}

/// At least the whole seconds `text` adds up to, read as humantime reads it (numbers, each
/// followed by a unit). A unit humantime does not know counts as a year (it refuses the text
/// anyway); a sub-second part counts as one second more than it can be.
fn upper_bound_seconds(text: &str) -> u128 {
    let mut total: u128 = 0;
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        rest = &rest[start..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        // Past 38 digits a number does not fit u128: it is too large whatever its unit.
        let number: u128 = rest[..digits].parse().unwrap_or(u128::MAX);
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "nsec" | "ns" | "usec" | "us" | "µs" | "msec" | "ms" => {
                (number / 1000).saturating_add(1)
            }
            "seconds" | "second" | "sec" | "s" => number,
            "minutes" | "minute" | "min" | "m" => number.saturating_mul(60),
            "hours" | "hour" | "hr" | "h" => number.saturating_mul(3_600),
            "days" | "day" | "d" => number.saturating_mul(86_400),
            "weeks" | "week" | "w" => number.saturating_mul(604_800),
            "months" | "month" | "M" => number.saturating_mul(2_630_016),
            _ => number.saturating_mul(31_557_600),
        };
        total = total.saturating_add(seconds);
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_total_of_two_to_the_64_seconds_is_refused_where_humantime_would_panic() {
        for text in [
            "18446744073709551615s 1000ms",
            "18446744073709551615s 500ms 500ms",
            "307445734561825860m 15s 1000ms",
            "999999999999999999999999999999999999999999s",
        ] {
            assert!(
                matches!(parse_duration(text), Err(DurationError::NumberOverflow)),
                "{text}"
            );
        }
    }

    #[test]
    fn ordinary_durations_parse_as_humantime_parses_them() {
        for text in [
            "30s",
            "1h 30m",
            "250ms",
            "2days 3h",
            "1500us",
            "5M",
            "1y",
            "10 min",
            "18446744073709551615s",
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                humantime::parse_duration(text).unwrap(),
                "{text}"
            );
        }
        assert!(matches!(
            parse_duration("5 parsecs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(parse_duration("").is_err());
    }
}
