//! Python's spellings, for messages that must read as Celery's own:
//! `json.dumps` with its default separators and `ensure_ascii`, `repr` of
//! floats, and Celery's `saferepr` for `argsrepr` and `kwargsrepr`.

use serde_json::Value;
use std::fmt::Write as _;

/// The `saferepr` size limit Celery applies to argsrepr and kwargsrepr.
const REPR_MAX: usize = 1024;

/// Python's `json.dumps(value)` with default options.
#[cfg(test)]
pub(crate) fn py_json(value: &Value) -> String {
    let mut out = String::new();
    write_py_json(value, &mut out);
    out
}

/// A JSON array as Python's `json.dumps` writes it (see [`write_py_json`]).
pub(crate) fn write_py_json_array(items: &[Value], out: &mut String) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_py_json(item, out);
    }
    out.push(']');
}

pub(crate) fn write_py_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, None, Some(f)) => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_py_string(s, out),
        Value::Array(items) => write_py_json_array(items, out),
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_string(key, out);
                out.push_str(": ");
                write_py_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string with `ensure_ascii`: everything outside ASCII as `\uXXXX`
/// (lowercase hex, surrogate pairs beyond the BMP).
pub(crate) fn write_py_string(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0; // start of the current run of characters written as they are
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => Some(""),
            _ => None,
        };
        let Some(escape) = escape else { continue };
        out.push_str(&s[plain..i]);
        plain = i + c.len_utf8();
        if escape.is_empty() {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, in fixed
/// notation when the exponent is in -4..16, else `1e-05` / `1e+16` style.
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}"); // shortest round-trip digits: "-1.2345e-7"
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

/// Celery's `saferepr(value, 1024)` for argsrepr/kwargsrepr, token for
/// token as `celery.utils.saferepr` streams it: Python literal syntax,
/// strings in single quotes with only `'` escaped, containers below the
/// third level as `{...}`/`[...]`. Each string, key and scalar is cut to
/// the characters left of the 1024 (at its last space, with `...`); once
/// none are left, `, ...` and the brackets still open end it.
pub(crate) fn saferepr(value: &Value) -> String {
    let mut tokens = Vec::new();
    tokenize(value, 0, &mut tokens);
    let mut out = String::new();
    let mut left = REPR_MAX as i64;
    let mut rest: &[Token] = &[];
    for (i, token) in tokens.iter().enumerate() {
        if left <= 0 {
            if let Token::Literal(text, _, -1) = token {
                out.push_str(text);
                continue;
            }
            out.push_str(", ...");
            rest = &tokens[i..];
            break;
        }
        let text = match token {
            Token::Literal(text, _, _) => (*text).to_owned(),
            Token::Quoted(s) => quoted(s, left),
            Token::Plain(s) => truncate(s, left),
        };
        left -= text.chars().count() as i64;
        out.push_str(&text);
    }
    // Celery closes what is still open: the bracket literals after the
    // cut whose depth falls below where it stopped.
    let mut depth = 0;
    for token in rest {
        if let Token::Literal(text, false, direction) = token {
            depth += direction;
            if depth < 0 {
                depth = 0;
                out.push_str(text);
            }
        }
    }
    out
}

/// One of saferepr's tokens: a literal (its text, whether it may be cut,
/// and the depth it opens or closes), a string, or a scalar's repr.
enum Token {
    Literal(&'static str, bool, i64),
    Quoted(String),
    Plain(String),
}

fn tokenize(value: &Value, level: usize, out: &mut Vec<Token>) {
    const MAX_LEVELS: usize = 3;
    const SEP: Token = Token::Literal(", ", true, 0);
    match value {
        Value::Null => out.push(Token::Plain("None".into())),
        Value::Bool(b) => out.push(Token::Plain(if *b { "True" } else { "False" }.into())),
        Value::Number(n) => out.push(Token::Plain(match n.as_f64() {
            Some(f) if n.is_f64() => py_float(f),
            _ => n.to_string(),
        })),
        Value::String(s) => out.push(Token::Quoted(s.clone())),
        Value::Array(_) | Value::Object(_) if level >= MAX_LEVELS => {
            out.push(Token::Literal(
                if value.is_array() { "[...]" } else { "{...}" },
                false,
                0,
            ));
        }
        Value::Array(items) => {
            out.push(Token::Literal("[", false, 1));
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(SEP);
                }
                tokenize(item, level + 1, out);
            }
            out.push(Token::Literal("]", false, -1));
        }
        Value::Object(map) => {
            out.push(Token::Literal("{", false, 1));
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(SEP);
                }
                out.push(Token::Quoted(key.clone()));
                out.push(Token::Literal(": ", true, 0));
                tokenize(item, level + 1, out);
            }
            out.push(Token::Literal("}", false, -1));
        }
    }
}

/// Celery's `truncate(s, left)`: at `left` characters or more, the first
/// `left` up to their last space, and `...`.
fn truncate(s: &str, left: i64) -> String {
    let left = usize::try_from(left).unwrap_or(0);
    if s.chars().count() < left {
        return s.to_owned();
    }
    let head: String = s.chars().take(left).collect();
    let cut = head
        .rsplit_once(' ')
        .map_or(head.as_str(), |(before, _)| before);
    format!("{cut}...")
}

/// A string as saferepr quotes it: cut first, then `'` escaped.
fn quoted(s: &str, left: i64) -> String {
    format!("'{}'", truncate(s, left).replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_python_prints_them() {
        for (f, python) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (1e300, "1e+300"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(f), python, "{f}");
        }
    }

    #[test]
    fn json_is_written_as_pythons_json_dumps() {
        let v =
            json!({"b": [1, 2.5, "x"], "a": {"é": "ü\"\n", "emoji": "🎉"}, "n": null, "t": true});
        assert_eq!(
            py_json(&v),
            r#"{"b": [1, 2.5, "x"], "a": {"\u00e9": "\u00fc\"\n", "emoji": "\ud83c\udf89"}, "n": null, "t": true}"#
        );
    }

    #[test]
    fn reprs_are_celerys_saferepr() {
        assert_eq!(saferepr(&json!([])), "[]");
        assert_eq!(
            saferepr(&json!({"x": 1, "s": "a'b", "f": 1.5, "b": true, "n": null})),
            r#"{'x': 1, 's': 'a\'b', 'f': 1.5, 'b': True, 'n': None}"#
        );
        assert_eq!(
            saferepr(&json!({"a": {"b": {"c": {"d": 1}}}})),
            "{'a': {'b': {'c': {...}}}}"
        );
    }

    /// Past 1024 characters, as Celery 5.5's `saferepr(kwargs, 1024)`
    /// writes them (its length, first 30 and last 40 characters, from
    /// Python).
    #[test]
    fn long_reprs_are_cut_as_celerys_saferepr_cuts_them() {
        let words = "lorem ipsum dolor ".repeat(100);
        let mixed: Vec<Value> = (0..100)
            .flat_map(|_| [json!(1.5), Value::Null, json!(true), json!(1e16)])
            .collect();
        let cases = [
            (
                json!({"long": "x".repeat(5000), "n": 3}),
                1035,
                "{'long': 'xxxxxxxxxxxxxxxxxxxx",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...', ...}",
            ),
            (
                json!({"l": (0..400).collect::<Vec<_>>()}),
                1034,
                "{'l': [0, 1, 2, 3, 4, 5, 6, 7,",
                "9, 220, 221, 222, 223, 224, 22..., ...]}",
            ),
            (
                json!({"words": words, "after": {"a": 1}}),
                1034,
                "{'words': 'lorem ipsum dolor l",
                " dolor lorem ipsum dolor lorem...', ...}",
            ),
            (
                json!({"a": "q'uote".repeat(300)}),
                1200,
                r"{'a': 'q\'uoteq\'uoteq\'uoteq\",
                r"teq\'uoteq\'uoteq\'uoteq\'uoteq\'uo...'}",
            ),
            (
                json!({"k".repeat(2000): 1}),
                1035,
                "{'kkkkkkkkkkkkkkkkkkkkkkkkkkkk",
                "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...', ...}",
            ),
            (
                json!({"f": mixed}),
                1034,
                "{'f': [1.5, None, True, 1e+16,",
                ", None, True, 1e+16, 1.5, None..., ...]}",
            ),
        ];
        for (value, len, head, tail) in cases {
            let repr = saferepr(&value);
            assert_eq!(
                (
                    repr.chars().count(),
                    &repr[..head.len()],
                    &repr[repr.len() - tail.len()..]
                ),
                (len, head, tail),
                "{head}"
            );
        }
        assert_eq!(
            saferepr(&json!({"deep": [[[[1]]]], "x": "y"})),
            "{'deep': [[[...]]], 'x': 'y'}"
        );
    }
}
