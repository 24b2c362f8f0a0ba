//! Small text and file helpers every layer uses.

use std::path::Path;

/// The URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
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
    }
}
