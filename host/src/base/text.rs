//! Small text and file helpers every layer uses.

use std::path::Path;

/// The URL without its password, for logs and messages: the userinfo's password and the
/// value of every query parameter that names a secret (`?password=`, `sslpassword`,
/// `token`, `secret`, `key` …) are masked.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && base[scheme + 3..at].contains(':') => {
            let user = base[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &base[..scheme + 3], &base[at..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if secret_name(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Whether a query parameter's name says its value is a secret.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "auth", "sig", "credential"].iter().any(|s| name.contains(s))
}

/// Request input for a log line: control characters escaped (no forged lines), at most
/// `max` characters (no flood from one long value), marked when cut.
pub fn for_log(input: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in input.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A webhook URL for logs and messages: scheme, host and port only. A webhook's path or
/// query is often its secret (Slack, Teams and Discord put the token there).
pub fn redact_webhook(url: &str) -> String {
    let Some(scheme) = url.find("://") else { return "***".to_owned() };
    let rest = &url[scheme + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = if rest.len() > authority.len() { "/***" } else { "" };
    format!("{}{host}{hidden}", &url[..scheme + 3])
}

/// Writes a file whole or not at all.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("part");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_url_keeps_only_its_host() {
        let slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        assert_eq!(super::redact_webhook(slack), "https://hooks.slack.com/***");
        assert_eq!(super::redact_webhook("http://me:pw@127.0.0.1:8080/t?key=s"), "http://127.0.0.1:8080/***");
        assert_eq!(super::redact_webhook("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(super::redact_webhook("not a url"), "***");
    }

    #[test]
    fn redact_hides_the_password_and_keeps_the_user() {
        assert_eq!(super::redact("smtps://me:secret@mail.example.org:465"), "smtps://me:***@mail.example.org:465");
        assert_eq!(super::redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(
            super::redact("postgres://app@db/app?password=hunter2&sslmode=require&sslpassword=x"),
            "postgres://app@db/app?password=***&sslmode=require&sslpassword=***"
        );
        assert_eq!(
            super::redact("postgres://u:p@db/app?application_name=w"),
            "postgres://u:***@db/app?application_name=w"
        );
    }

    #[test]
    fn request_input_in_a_log_line_cannot_forge_a_line_or_flood() {
        assert_eq!(super::for_log("bob\nWARN forged", 64), "bob\\nWARN forged");
        assert_eq!(super::for_log(&"x".repeat(10_000), 8), "xxxxxxxx…");
        assert_eq!(super::for_log("\u{1b}[31mred", 64), "\\u{1b}[31mred");
    }
}
