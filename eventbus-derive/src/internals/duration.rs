//! Durations written as text in attributes: `"500ms"`, `"30s"`, `"2m"`, `"1h"`, `"1m30s"`.

/// Parses a duration into milliseconds: one or more `<digits><unit>` parts, units `ms`, `s`,
/// `m` and `h`, each unit at most once and from the largest to the smallest. The result must be
/// greater than zero.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    const EXPECTED: &str =
        "expected a number followed by a unit (`ms`, `s`, `m` or `h`), e.g. \"500ms\", \"30s\" or \"1m30s\"";
    if text.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // The rank of the last unit: parts go from hours down to milliseconds, each once.
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: {EXPECTED}"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let (rank, factor) = match unit {
            "h" => (0, 3_600_000),
            "m" => (1, 60_000),
            "s" => (2, 1_000),
            "ms" => (3, 1),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: `{number}` has no unit; {EXPECTED}"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit `{unit}`; {EXPECTED}"
                ))
            }
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(format!(
                "invalid duration {text:?}: give each unit once, from the largest to the smallest, e.g. \"1h30m\""
            ));
        }
        last_rank = rank;
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .and_then(|ms| total.checked_add(ms));
        total = part.ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = tail;
    }
    if total == 0 {
        return Err(format!(
            "duration {text:?} is zero; it must be greater than zero"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn valid() {
        for (text, ms) in [
            ("1ms", 1),
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h2m3s4ms", 3_723_004),
            ("0m5s", 5_000),
            ("007s", 7_000),
        ] {
            assert_eq!(parse_millis(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn invalid() {
        for (text, why) in [
            ("", "empty duration"),
            ("30", "has no unit"),
            ("s", "expected a number"),
            ("1.5s", "unknown unit `.`"),
            ("30 s", "unknown unit ` s`"),
            ("30sec", "unknown unit `sec`"),
            ("1d", "unknown unit `d`"),
            ("-1s", "expected a number"),
            ("30s1m", "from the largest"),
            ("1s1s", "from the largest"),
            ("0s", "zero"),
            ("0ms0s", "from the largest"),
            ("99999999999999999999s", "too long"),
            ("5124095576030432h", "too long"),
        ] {
            let err = parse_millis(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
