//! What the commands print. Answers go to stdout: tables for people, JSON with `--json` (and
//! then nothing else); errors, hints and notes go to stderr. Everything is written through
//! `anstream`, which keeps the colour only on a terminal and honours `NO_COLOR`.

use std::time::{Duration, SystemTime};

use anstyle::{AnsiColor, Style};
use serde_json::Value;

const HEADER: Style = Style::new().bold();
const ERROR: Style = AnsiColor::Red.on_default().bold();
const HINT: Style = AnsiColor::Cyan.on_default().bold();
const NOTE: Style = AnsiColor::Yellow.on_default();

/// Prints an answer (a table, a line, pretty JSON) on stdout.
pub(crate) fn answer(text: &str) {
    anstream::println!("{text}");
}

/// Prints a value on stdout as one line of JSON, for scripts.
pub(crate) fn json(value: &Value) {
    anstream::println!("{value}");
}

/// Prints a value on stdout as indented JSON, for people.
pub(crate) fn pretty(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    answer(&text);
}

/// Prints a note about the answer on stderr (it is not part of the answer).
pub(crate) fn note(text: &str) {
    anstream::eprintln!("{NOTE}note:{NOTE:#} {text}");
}

/// Prints an error on stderr, with its causes, and a hint if it has one.
pub(crate) fn error(error: &anyhow::Error) {
    anstream::eprintln!("{ERROR}error:{ERROR:#} {error:#}");
    let hint = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::client::Error>())
        .and_then(crate::client::Error::hint);
    if let Some(hint) = hint {
        anstream::eprintln!("{HINT}hint:{HINT:#} {hint}");
    }
}

/// A text table: a bold header, columns padded to their widest cell, `(none)` when empty.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![format!("{HEADER}{}{HEADER:#}", line(headers.to_vec()))];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    if rows.is_empty() {
        out.push("(none)".to_owned());
    }
    out.join("\n")
}

/// A cell for a JSON value: strings without quotes, at most `max` characters on one line.
pub(crate) fn cell(value: &Value, max: usize) -> String {
    let text = match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max || line.len() < text.len() {
        let short: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{short}…")
    } else {
        line.to_owned()
    }
}

/// A time in milliseconds since the Unix epoch, as RFC 3339 to the millisecond; `-` if unset.
pub(crate) fn time_ms(ms: i64) -> String {
    time_us(ms.saturating_mul(1000))
}

/// A time in microseconds since the Unix epoch, as RFC 3339 to the millisecond; `-` if unset.
pub(crate) fn time_us(us: i64) -> String {
    if us <= 0 {
        return "-".to_owned();
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(us.unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}

/// How long ago a time in milliseconds since the Unix epoch was, in its two largest units
/// (`just now`, `42s ago`, `3m 12s ago`, `2d 4h ago`); `-` if unknown.
pub(crate) fn ago_ms(ms: Option<i64>) -> String {
    let Some(ms) = ms.filter(|&ms| ms > 0) else {
        return "-".to_owned();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let secs = now.saturating_sub(ms) / 1000;
    if secs <= 0 {
        return "just now".to_owned();
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let parts: Vec<String> = units
        .iter()
        .scan(secs, |left, &(name, size)| {
            let n = *left / size;
            *left %= size;
            Some((n, name))
        })
        .skip_while(|&(n, _)| n == 0)
        .take(2)
        .filter(|&(n, _)| n > 0)
        .map(|(n, name)| format!("{n}{name}"))
        .collect();
    format!("{} ago", parts.join(" "))
}
