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
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_json(item, out);
            }
            out.push(']');
        }
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

/// Celery's `saferepr` for argsrepr/kwargsrepr: Python literal syntax,
/// strings in single quotes with only `'` escaped, at most 1024 characters.
pub(crate) fn saferepr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, 0, &mut out);
    if out.chars().count() > REPR_MAX {
        out = out.chars().take(REPR_MAX).collect::<String>() + "...";
    }
    out
}

fn write_repr(value: &Value, level: usize, out: &mut String) {
    const MAX_LEVELS: usize = 3;
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => {
            out.push('\'');
            out.push_str(&s.replace('\'', "\\'"));
            out.push('\'');
        }
        Value::Array(items) => {
            if level >= MAX_LEVELS {
                out.push_str("[...]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(item, level + 1, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            if level >= MAX_LEVELS {
                out.push_str("{...}");
                return;
            }
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(&Value::String(key.clone()), level + 1, out);
                out.push_str(": ");
                write_repr(item, level + 1, out);
            }
            out.push('}');
        }
    }
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
        assert!(saferepr(&json!({"long": "x".repeat(5000)})).len() <= REPR_MAX + 3);
    }
}
