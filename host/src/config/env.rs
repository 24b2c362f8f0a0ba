//! `${NAME}` and `${NAME:-default}` in string values, as the original monitor's
//! environment overrides (`HEALTH_CHECK_INTERVAL_SECS`, `ALERT_EMAIL`, ...) need.

/// Expands variables with `lookup`; `$$` is a literal `$`.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body_start) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let Some(close) = body_start.find('}') else {
            return Err(format!("unclosed `${{` in `{text}`"));
        };
        let body = &body_start[..close];
        rest = &body_start[close + 1..];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name `{name}` in `{text}`"));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Looks variables up in the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("42".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_table() {
        let table = [
            ("plain", Ok("plain")),
            ("${SET}s", Ok("42s")),
            ("${UNSET:-30}s", Ok("30s")),
            ("${EMPTY:-7}", Ok("7")),
            ("${SET:-1}", Ok("42")),
            ("cost $$5", Ok("cost $5")),
            ("a$b", Ok("a$b")),
        ];
        for (input, want) in table {
            assert_eq!(expand(input, &env).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        assert!(expand("${UNSET}", &env).unwrap_err().contains("`UNSET` is not set"));
        assert!(expand("${SET", &env).unwrap_err().contains("unclosed"));
        assert!(expand("${a-b}", &env).unwrap_err().contains("invalid variable name"));
    }
}
