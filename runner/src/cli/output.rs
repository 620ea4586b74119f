//! What the client commands print: the API's JSON as sent (`--json`), or for people a compact
//! aligned table for a list and `key: value` lines for one object.

use serde_json::Value;

use super::client::Reply;

#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub json: bool,
}

impl Mode {
    /// Prints one answer: its JSON as the API sent it, or `human(value)`.
    pub fn print(&self, reply: &Reply, human: impl FnOnce(&Value) -> String) {
        let text = if self.json { reply.text.trim_end().to_string() } else { human(&reply.value) };
        if !text.is_empty() {
            print_line(text.trim_end_matches('\n'));
        }
    }
}

/// A line on stdout; a closed stdout (`runner sessions list | head -1`) is not an error.
pub fn print_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|_| out.flush());
}

/// A table: the headers, then one line per row, each column as wide as its widest cell, two
/// spaces between columns, nothing after the last.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| one_line(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// One object as `key: value` lines, values aligned: the `first` keys in that order, then the
/// rest alphabetically; nested objects as dotted keys (`limits.memory_mb`), lists of plain values
/// joined by commas, `null` as `-`.
pub fn fields(v: &Value, first: &[&str]) -> String {
    let mut lines: Vec<(String, String)> = vec![];
    flatten("", v, &mut lines);
    let rank = |k: &str| {
        let top = k.split('.').next().unwrap_or(k);
        first.iter().position(|f| *f == top).unwrap_or(first.len())
    };
    lines.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let width = lines.iter().map(|(k, _)| k.chars().count() + 1).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{:<width$} {}", format!("{k}:"), v).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), item, out);
            }
        }
        other => out.push((prefix.to_string(), cell(other))),
    }
}

/// A plain value as a table cell or a line's value.
pub fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "-".to_string(),
        other => other.to_string(),
    };
    one_line(&s)
}

/// A timestamp to the second (`2026-12-01T10:00:00Z`), other text unchanged.
pub fn when(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() > 20 && s.as_bytes().get(19) == Some(&b'.') && s.ends_with('Z') => format!("{}Z", &s[..19]),
        _ => cell(v),
    }
}

/// Control characters (a title's newline, an escape sequence) never reach the terminal.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_is_aligned_with_two_spaces_and_no_trailing_blanks() {
        let t = table(
            &["ID", "LEARNER", "STATE"],
            &[
                vec!["3f2a".into(), "ada".into(), "running".into()],
                vec!["9b".into(), "grace-hopper".into(), "stopped".into()],
                vec!["c1".into(), "x\ny".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    LEARNER       STATE\n\
             3f2a  ada           running\n\
             9b    grace-hopper  stopped\n\
             c1    x y"
        );
        assert_eq!(table(&["SLUG", "TITLE"], &[]), "SLUG  TITLE");
    }

    #[test]
    fn one_object_is_key_value_lines_with_the_important_keys_first() {
        let v = json!({
            "state": "running", "id": "s-1", "learner": "ada", "failure_reason": null,
            "limits": {"memory_mb": 128, "cpus": 0.5}, "writable": ["/workspace", "/tmp"], "ports": [],
            "self_test": {"solution": {"passed": true}}, "title": "Line\u{1b}[2Jbreak",
        });
        // The widest key, `self_test.solution.passed:`, sets the column of the values.
        let line = |k: &str, v: &str| format!("{:<26} {v}", format!("{k}:"));
        let expected = [
            ("id", "s-1"),
            ("learner", "ada"),
            ("state", "running"),
            ("failure_reason", "-"),
            ("limits.cpus", "0.5"),
            ("limits.memory_mb", "128"),
            ("ports", "-"),
            ("self_test.solution.passed", "true"),
            ("title", "Line [2Jbreak"),
            ("writable", "/workspace, /tmp"),
        ]
        .map(|(k, v)| line(k, v))
        .join("\n");
        assert_eq!(fields(&v, &["id", "learner", "state"]), expected);
    }

    #[test]
    fn timestamps_show_to_the_second() {
        assert_eq!(when(&json!("2026-12-01T10:00:00.123Z")), "2026-12-01T10:00:00Z");
        assert_eq!(when(&json!(null)), "-");
        assert_eq!(when(&json!("soon")), "soon");
    }
}
