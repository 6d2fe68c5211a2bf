//! Small text helpers for verdict details: shortening, secret redaction, durations and dates.

/// At most `max` characters of `s` (on a character boundary), with `…` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '+' | '=')
}

/// Whether a word looks like a credential: an `sk-`-style key, a UUID, or a long run of mixed
/// letters and digits (hex or base64 keys, `id.secret` keys). Model ids such as
/// `Qwen3-235B-A22B-Instruct-2507` are made of short dash-separated parts and stay visible, as do
/// request and completion ids.
fn looks_secret(word: &str) -> bool {
    let w = word.trim_matches(|c: char| c == '.' || c == '-' || c == '_');
    let lower = w.to_ascii_lowercase();
    for prefix in ["sk-", "sk_", "ak-", "pk-", "key-", "sess-"] {
        if lower.starts_with(prefix) && w.len() >= prefix.len() + 4 {
            return true;
        }
    }
    if lower.starts_with("chatcmpl") || lower.starts_with("req") {
        return false;
    }
    let parts: Vec<&str> = w.split('-').collect();
    let uuid = parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()));
    let long_mixed = parts.iter().any(|p| {
        p.len() >= 20
            && p.chars().any(|c| c.is_ascii_digit())
            && p.chars().any(|c| c.is_ascii_alphabetic())
    });
    uuid || long_mixed
}

/// Replaces anything that looks like an API key or a bearer token with `[redacted]`. Upstreams
/// sometimes echo part of the key (`Incorrect API key provided: sk-abc***xyz`); the host never
/// hands the key to the plugin, but an echo must not reach a verdict detail either.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let mut after_bearer = false;
    let flush = |word: &mut String, out: &mut String, after_bearer: &mut bool| {
        if word.is_empty() {
            return;
        }
        // A sentence-ending dot is punctuation, not part of the word.
        let core = word.trim_end_matches('.');
        if core.is_empty() {
            out.push_str(word);
        } else if *after_bearer || looks_secret(core) {
            out.push_str("[redacted]");
            out.push_str(&word[core.len()..]);
        } else {
            out.push_str(word);
        }
        *after_bearer = core.eq_ignore_ascii_case("bearer");
        word.clear();
    };
    for c in s.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut after_bearer);
            if !c.is_whitespace() {
                after_bearer = false;
            }
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut after_bearer);
    out
}

/// Parses a duration at the start of `s`: `20`, `20s`, `1.5 s`, `500ms`, `6m0s`, `2 minutes`,
/// `20秒`, `1分钟`. A bare number is seconds. Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut rest = s.trim_start();
    let mut total = 0f64;
    let mut parsed_any = false;
    loop {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            break;
        }
        let Ok(n) = rest[..num_len].parse::<f64>() else {
            break;
        };
        rest = rest[num_len..].trim_start();
        let (unit_ms, unit_len) = unit(rest);
        total += n * unit_ms;
        parsed_any = true;
        rest = &rest[unit_len..];
        // Go-style compound durations continue right after the unit (`6m0s`).
        if unit_len == 0 || !rest.starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
    }
    (parsed_any && total.is_finite() && total >= 0.0).then(|| total.round() as u64)
}

/// The unit at the start of `s`: (milliseconds per unit, byte length). No unit means seconds.
fn unit(s: &str) -> (f64, usize) {
    const UNITS: &[(&str, f64)] = &[
        ("milliseconds", 1.0),
        ("millisecond", 1.0),
        ("ms", 1.0),
        ("毫秒", 1.0),
        ("seconds", 1000.0),
        ("second", 1000.0),
        ("secs", 1000.0),
        ("sec", 1000.0),
        ("s", 1000.0),
        ("秒", 1000.0),
        ("minutes", 60_000.0),
        ("minute", 60_000.0),
        ("mins", 60_000.0),
        ("min", 60_000.0),
        ("m", 60_000.0),
        ("分钟", 60_000.0),
        ("hours", 3_600_000.0),
        ("hour", 3_600_000.0),
        ("hr", 3_600_000.0),
        ("h", 3_600_000.0),
        ("小时", 3_600_000.0),
    ];
    let lower = s.to_ascii_lowercase();
    for (name, ms) in UNITS {
        if let Some(after) = lower.strip_prefix(name) {
            // `m` must not swallow the start of a word such as `more`.
            let ascii_word =
                name.is_ascii() && after.starts_with(|c: char| c.is_ascii_alphabetic());
            if !ascii_word {
                return (*ms, name.len());
            }
        }
    }
    (1000.0, 0)
}

/// Parses an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`, the HTTP-date of `Retry-After`)
/// into unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let (_, rest) = s.trim().split_once(", ")?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u32 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + (*h * 3600 + *m * 60 + *sec) as i64).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("a  b\n c", 10), "a b c");
        assert_eq!(shorten("余额不足请充值", 4), "余额不足…");
        assert_eq!(shorten("abcdef", 3), "abc…");
    }

    #[test]
    fn redact_hides_keys_and_tokens() {
        for (input, expected) in [
            (
                "Incorrect API key provided: sk-abc***********xyz.",
                "Incorrect API key provided: [redacted].",
            ),
            (
                "Authorization: Bearer abc.def",
                "Authorization: Bearer [redacted]",
            ),
            (
                "key 0123456789abcdef0123456789abcdef01 rejected",
                "key [redacted] rejected",
            ),
            ("model kimi-k2.6 not found", "model kimi-k2.6 not found"),
            (
                "request req_0123456789abcdef0123456789abcdef failed",
                "request req_0123456789abcdef0123456789abcdef failed",
            ),
            ("无效的令牌 sk-1234567890", "无效的令牌 [redacted]"),
            (
                "key 0b5f2d1e-7c3a-4e8b-9f10-2a3b4c5d6e7f bad",
                "key [redacted] bad",
            ),
            (
                "key 0123456789abcdef0123456789abcdef.AbCdEfGh12345678 bad",
                "key [redacted] bad",
            ),
            (
                "model Qwen3-235B-A22B-Instruct-2507-FP8 busy",
                "model Qwen3-235B-A22B-Instruct-2507-FP8 busy",
            ),
            (
                "id chatcmpl-0123456789abcdef0123456789abcdef",
                "id chatcmpl-0123456789abcdef0123456789abcdef",
            ),
        ] {
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn durations() {
        for (input, ms) in [
            ("20", Some(20_000)),
            ("20s", Some(20_000)),
            ("1.5 s", Some(1_500)),
            ("500ms", Some(500)),
            ("6m0s", Some(360_000)),
            ("1m30s", Some(90_000)),
            ("2 minutes", Some(120_000)),
            ("3 seconds.", Some(3_000)),
            ("20秒后重试", Some(20_000)),
            ("1分钟", Some(60_000)),
            ("7 more times", Some(7_000)),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(parse_duration_ms(input), ms, "{input}");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(
            parse_http_date("Sat, 29 Feb 2020 12:00:00 GMT"),
            Some(1_582_977_600)
        );
        assert_eq!(parse_http_date("21 Oct 2015"), None);
        assert_eq!(parse_http_date("Wed, 21 Foo 2015 07:28:00 GMT"), None);
        assert_eq!(parse_http_date("Wed, 21 Oct 2015 25:28:00 GMT"), None);
    }
}
