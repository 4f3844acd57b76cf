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

/// At least the whole seconds humantime adds up from `text` before it either returns or stops at
/// an error, read with its grammar (a number's digits may have whitespace between them; a `.`
/// starts a fraction; a unit runs until whitespace or the next digit). A part that can add
/// nanoseconds (a sub-second unit, a fraction) counts a second more than it can be, so a total
/// of exactly 2^64 − 1 seconds with nanoseconds on top is over the bound.
fn upper_bound_seconds(text: &str) -> u128 {
    let mut chars = text.chars().peekable();
    let mut total: u128 = 0;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut number: u128 = 0;
        let mut digits = 0;
        while let Some(c) = chars.next_if(|c| c.is_ascii_digit() || c.is_whitespace()) {
            if let Some(digit) = c.to_digit(10) {
                number = number.saturating_mul(10).saturating_add(u128::from(digit));
                digits += 1;
            }
        }
        if digits == 0 {
            // The end, or text humantime refuses here, having added nothing more.
            return total;
        }
        let fraction = chars.next_if_eq(&'.').is_some();
        if fraction {
            while chars
                .next_if(|c| c.is_ascii_digit() || c.is_whitespace())
                .is_some()
            {}
        }
        let mut unit = String::new();
        while let Some(c) = chars.next_if(|c| c.is_ascii_alphabetic() || *c == 'µ') {
            unit.push(c);
        }
        let (seconds_per, nanos_per) = match unit.as_str() {
            "nanos" | "nsec" | "ns" => (0, 1_000_000_000),
            "usec" | "us" | "µs" => (0, 1_000_000),
            "millis" | "msec" | "ms" => (0, 1_000),
            "seconds" | "second" | "secs" | "sec" | "s" => (1, 0),
            "minutes" | "minute" | "min" | "mins" | "m" => (60, 0),
            "hours" | "hour" | "hr" | "hrs" | "h" => (3_600, 0),
            "days" | "day" | "d" => (86_400, 0),
            "weeks" | "week" | "wk" | "wks" | "w" => (604_800, 0),
            "months" | "month" | "M" => (2_630_016, 0),
            "years" | "year" | "yr" | "yrs" | "y" => (31_557_600, 0),
            // humantime refuses the unit before adding its part.
            _ => return total,
        };
        let part = match number.checked_div(nanos_per) {
            Some(seconds) => seconds.saturating_add(1),
            None => number
                .saturating_mul(seconds_per)
                .saturating_add(if fraction { seconds_per + 1 } else { 0 }),
        };
        total = total.saturating_add(part);
    }
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
            "1 8446744073709551615s 1000ms",
            "18446744073709551614s 0.5s 0.5s",
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
            "600000000000nanos",
            "600000000000.5us",
            "1000000000000millis",
            "1.5h",
            "2 wks 3 hrs",
            "1 000 s",
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
