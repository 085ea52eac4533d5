//! `${VAR}` / `${VAR:-default}` substitution on the raw configuration text.
//!
//! Substitution happens before parsing so numbers and booleans can come from the environment
//! (`port: ${PORT:-8080}`). To keep an inserted value from changing the document's structure,
//! a value is quoted according to where it lands: inside a double-quoted scalar it is escaped,
//! inside a single-quoted scalar `'` is doubled, and when `${...}` is a whole unquoted value
//! anything that is not a plain number or boolean is emitted as a double-quoted string (so a
//! PEM key with newlines, or a token containing `: ` or ` #`, stays one string). Inside a block
//! scalar (`key: |`) values go in literally, continuation lines indented like the block. `$${`
//! writes a literal `${`. Comments (from an unquoted `#` to the end of the line) are left
//! untouched.

/// Why substitution failed (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubstError {
    /// `${VAR}` without a default and `VAR` is not set.
    Missing { var: String, line: usize },
    /// `${` without a closing `}` or with an invalid variable name.
    Malformed { line: usize, reason: String },
    /// A value that cannot be placed where it appears without changing the document.
    Unsafe {
        var: String,
        line: usize,
        reason: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Substitutes every `${...}` in `text` using `lookup` for variable values.
pub(crate) fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, SubstError> {
    let mut out = String::with_capacity(text.len());
    // Indentation of the key that opened a block scalar (`key: |`), while inside it.
    let mut block_parent: Option<usize> = None;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let blank = line.trim().is_empty();
        if let Some(parent) = block_parent {
            if blank || indent > parent {
                substitute_block_line(line, idx + 1, indent, &lookup, &mut out)?;
                continue;
            }
            block_parent = None;
        }
        substitute_line(line, idx + 1, &lookup, &mut out)?;
        if opens_block_scalar(line) {
            block_parent = Some(indent);
        }
    }
    Ok(out)
}

/// `key: |`, `key: >-`, `- |` ...: the following more-indented lines are literal text.
fn opens_block_scalar(line: &str) -> bool {
    let code = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let t = code.trim_end();
    let Some(head) = t.strip_suffix(['|', '>']).or_else(|| {
        t.strip_suffix(['-', '+'])
            .and_then(|h| h.strip_suffix(['|', '>']))
    }) else {
        return false;
    };
    let head = head.trim_end();
    head.ends_with(':') || head == "-" || head.ends_with(" -")
}

/// Inside a block scalar everything is literal text: values go in as is, and a multi-line
/// value keeps the block's indentation on its following lines.
fn substitute_block_line(
    line: &str,
    line_no: usize,
    indent: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), SubstError> {
    let mut rest = line;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if rest.starts_with("${") {
            let (_, value, len) = resolve(rest, line_no, lookup)?;
            let pad = format!("\n{}", " ".repeat(indent));
            out.push_str(&value.trim_end_matches('\n').replace('\n', &pad));
            rest = &rest[len..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(())
}

/// Parses the `${...}` at the start of `text`: (variable, value, length of the reference).
fn resolve(
    text: &str,
    line_no: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(String, String, usize), SubstError> {
    let Some(close) = text.find('}') else {
        return Err(SubstError::Malformed {
            line: line_no,
            reason: "`${` without a closing `}`".to_owned(),
        });
    };
    let inner = &text[2..close];
    let (var, default) = match inner.split_once(":-") {
        Some((v, d)) => (v, Some(d)),
        None => (inner, None),
    };
    if var.is_empty()
        || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || var.as_bytes()[0].is_ascii_digit()
    {
        return Err(SubstError::Malformed {
            line: line_no,
            reason: format!("`${{{inner}}}` is not a valid variable reference"),
        });
    }
    let value = match (lookup(var), default) {
        (Some(v), _) => v,
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(SubstError::Missing {
                var: var.to_owned(),
                line: line_no,
            });
        }
    };
    Ok((var.to_owned(), value, close + 1))
}

fn substitute_line(
    line: &str,
    line_no: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), SubstError> {
    let bytes = line.as_bytes();
    let mut quote = Quote::None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Quote::Double if c == b'\\' && i + 1 < bytes.len() => {
                // The backslash and the whole character it escapes (which may be several
                // bytes: slicing after one byte panicked, found by the config fuzz target).
                let escaped = line[i + 1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&line[i..i + 1 + escaped]);
                i += 1 + escaped;
                continue;
            }
            Quote::Double if c == b'"' => quote = Quote::None,
            Quote::Single if c == b'\'' => quote = Quote::None,
            Quote::None if c == b'"' && starts_scalar(&line[..i]) => quote = Quote::Double,
            Quote::None if c == b'\'' && starts_scalar(&line[..i]) => quote = Quote::Single,
            Quote::None if c == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                // A comment: copy the rest of the line as is.
                out.push_str(&line[i..]);
                return Ok(());
            }
            _ => {}
        }
        if c == b'$' && line[i..].starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if c == b'$' && line[i..].starts_with("${") {
            let (var, value, len) = resolve(&line[i..], line_no, lookup)?;
            let var = var.as_str();
            let close = len - 1;
            let end = i + close + 1;
            let whole_value =
                quote == Quote::None && starts_scalar(&line[..i]) && is_value_end(&line[end..]);
            place(&value, quote, whole_value, var, line_no, out)?;
            i = end;
            continue;
        }
        // Copy one UTF-8 character.
        let ch_len = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + ch_len]);
        i += ch_len;
    }
    Ok(())
}

/// True when what precedes position `i` means a scalar starts here (after `key:`, `- `,
/// a flow `[`/`{`/`,`, or at the start of the line).
fn starts_scalar(before: &str) -> bool {
    let t = before.trim_end();
    if t.len() == before.len() && !t.is_empty() {
        // Not preceded by whitespace: only flow indicators start a scalar directly.
        return t.ends_with(['[', '{', ',']);
    }
    t.is_empty()
        || t.ends_with(':')
        || t == "-"
        || t.ends_with(" -")
        || t.ends_with(['[', '{', ','])
}

fn is_value_end(after: &str) -> bool {
    let t = after.trim_start_matches([' ', '\t']);
    t.is_empty() || t.starts_with(['\n', '\r', '#', ',', ']', '}'])
}

fn place(
    value: &str,
    quote: Quote,
    whole_value: bool,
    var: &str,
    line: usize,
    out: &mut String,
) -> Result<(), SubstError> {
    match quote {
        Quote::Double => {
            let quoted = serde_json::Value::String(value.to_owned()).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Quote::Single => {
            if value.contains('\n') {
                return Err(SubstError::Unsafe {
                    var: var.to_owned(),
                    line,
                    reason: "the value has a newline and sits in a single-quoted string; use \"...\" or an unquoted ${VAR}".to_owned(),
                });
            }
            out.push_str(&value.replace('\'', "''"));
        }
        Quote::None if whole_value => {
            if is_plain_number_or_bool(value) {
                out.push_str(value);
            } else {
                out.push_str(&serde_json::Value::String(value.to_owned()).to_string());
            }
        }
        Quote::None => {
            if value.contains('\n') || value.contains(" #") || value.contains(": ") {
                return Err(SubstError::Unsafe {
                    var: var.to_owned(),
                    line,
                    reason: "the value would change the YAML structure inside an unquoted string; quote the whole value".to_owned(),
                });
            }
            out.push_str(value);
        }
    }
    Ok(())
}

fn is_plain_number_or_bool(v: &str) -> bool {
    matches!(v, "true" | "false")
        || (!v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
            && v.parse::<f64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn an_escaped_multibyte_character_in_double_quotes_is_kept_whole() {
        let text = "a: \"\\\u{9b}\\é ${X}\"\n\"\\";
        let out = substitute(text, env(&[("X", "1")])).expect("substituted");
        assert!(out.starts_with("a: \"\\\u{9b}\\é 1\""), "{out:?}");
    }

    #[test]
    fn plain_and_default() {
        let e = env(&[("PORT", "9000")]);
        assert_eq!(substitute("port: ${PORT}\n", &e).unwrap(), "port: 9000\n");
        assert_eq!(
            substitute("port: ${NOPE:-8080}\n", &e).unwrap(),
            "port: 8080\n"
        );
        assert_eq!(substitute("x: ${NOPE:-}\n", &e).unwrap(), "x: \"\"\n");
    }

    #[test]
    fn missing_names_variable_and_line() {
        let e = env(&[]);
        assert_eq!(
            substitute("a: 1\nb: ${TOKEN}\n", &e),
            Err(SubstError::Missing {
                var: "TOKEN".into(),
                line: 2
            })
        );
    }

    #[test]
    fn quotes_values_that_would_break_yaml() {
        let e = env(&[("K", "-----BEGIN\nabc\n-----END"), ("T", "a: b # c")]);
        assert_eq!(
            substitute("key: ${K}\n", &e).unwrap(),
            "key: \"-----BEGIN\\nabc\\n-----END\"\n"
        );
        assert_eq!(substitute("t: ${T}\n", &e).unwrap(), "t: \"a: b # c\"\n");
        assert_eq!(
            substitute("t: \"x${T}\"\n", &e).unwrap(),
            "t: \"xa: b # c\"\n"
        );
        assert!(matches!(
            substitute("t: x${T}\n", &e),
            Err(SubstError::Unsafe { .. })
        ));
    }

    #[test]
    fn comments_and_escapes_are_left_alone() {
        let e = env(&[]);
        assert_eq!(
            substitute("# ${NOT_SET}\na: 1 # ${NOT_SET}\nb: $${X}\n", &e).unwrap(),
            "# ${NOT_SET}\na: 1 # ${NOT_SET}\nb: ${X}\n"
        );
    }

    #[test]
    fn block_scalars_take_values_literally() {
        let e = env(&[("K", "line1\nline2\n"), ("Q", "a: \"b\"")]);
        assert_eq!(
            substitute("key: |\n  ${K}\n  q=${Q}\nnext: ${Q}\n", &e).unwrap(),
            "key: |\n  line1\n  line2\n  q=a: \"b\"\nnext: \"a: \\\"b\\\"\"\n"
        );
    }

    #[test]
    fn malformed_reference() {
        let e = env(&[]);
        assert!(matches!(
            substitute("a: ${OPEN\n", &e),
            Err(SubstError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            substitute("a: ${1BAD}\n", &e),
            Err(SubstError::Malformed { .. })
        ));
    }
}
