//! Durations written as Go's `time.ParseDuration` reads them (`1h30m`, `1.5s`, `-300ms`, `0`),
//! with its error messages, since HEALTHCHECK options are parsed that way by BuildKit.

const NANOS_PER_UNIT: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // µs, MICRO SIGN
    ("\u{3bc}s", 1_000), // μs, GREEK SMALL LETTER MU
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's limit on the magnitude of a duration: `1 << 63` nanoseconds.
const LIMIT: u128 = 1 << 63;

/// Parses a signed duration into nanoseconds.
pub(super) fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", quote(text));
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let (whole, after_whole) = split_digits(rest);
        let integer = whole.bytes().try_fold(0u128, |value, digit| {
            let value = value * 10 + u128::from(digit - b'0');
            (value <= LIMIT).then_some(value)
        });
        let Some(integer) = integer else {
            return Err(invalid());
        };
        rest = after_whole;
        let mut fraction = "";
        if let Some(after_point) = rest.strip_prefix('.') {
            (fraction, rest) = split_digits(after_point);
        }
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_length = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_length == 0 {
            return Err(format!("time: missing unit in duration {}", quote(text)));
        }
        let (unit, after_unit) = rest.split_at(unit_length);
        rest = after_unit;
        let Some(&(_, nanos)) = NANOS_PER_UNIT.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "time: unknown unit {} in duration {}",
                quote(unit),
                quote(text)
            ));
        };
        let mut value = integer
            .checked_mul(nanos)
            .filter(|value| *value <= LIMIT)
            .ok_or_else(invalid)?;
        value += fraction_nanos(fraction, nanos);
        total += value;
        if value > LIMIT || total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        // -(1 << 63) is the one value whose magnitude does not fit a positive i64.
        return i64::try_from(total).map(|total| -total).or(Ok(i64::MIN));
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// The leading ASCII digits of `text` and what follows them.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// `0.<fraction>` of a unit, in nanoseconds, computed in floating point as Go does (digits past
/// 63 bits of precision are ignored).
fn fraction_nanos(fraction: &str, nanos_per_unit: u128) -> u128 {
    let mut value: u128 = 0;
    let mut scale = 1f64;
    for digit in fraction.bytes() {
        let next = value * 10 + u128::from(digit - b'0');
        if next >= LIMIT {
            break;
        }
        value = next;
        scale *= 10.0;
    }
    // Truncation toward zero is Go's uint64(float64) conversion; the value is below 3.6e12.
    (value as f64 * (nanos_per_unit as f64 / scale)) as u128
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_duration_syntax() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-0"), Ok(0));
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("+5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("5.s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("-300ms"), Ok(-300_000_000));
        assert_eq!(parse_go_duration("1µs"), Ok(1_000));
        assert_eq!(parse_go_duration("1μs"), Ok(1_000));
        assert_eq!(parse_go_duration("1us2ns"), Ok(1_002));
        assert_eq!(parse_go_duration("0.1ns"), Ok(0));
        assert_eq!(parse_go_duration("2562047h47m16.854775807s"), Ok(i64::MAX));
        assert_eq!(parse_go_duration("-2562047h47m16.854775808s"), Ok(i64::MIN));
    }

    #[test]
    fn rejects_like_go_with_its_messages() {
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".to_string())
        );
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
        assert_eq!(
            parse_go_duration(".s"),
            Err("time: invalid duration \".s\"".to_string())
        );
        assert_eq!(
            parse_go_duration("1"),
            Err("time: missing unit in duration \"1\"".to_string())
        );
        assert_eq!(
            parse_go_duration("10x"),
            Err("time: unknown unit \"x\" in duration \"10x\"".to_string())
        );
        assert_eq!(
            parse_go_duration("1s "),
            Err("time: unknown unit \"s \" in duration \"1s \"".to_string())
        );
        assert_eq!(
            parse_go_duration("9223372036854775808ns"),
            Err("time: invalid duration \"9223372036854775808ns\"".to_string())
        );
        assert_eq!(
            parse_go_duration("3000000h"),
            Err("time: invalid duration \"3000000h\"".to_string())
        );
    }
}
