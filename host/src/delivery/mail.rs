//! Mail: building the messages (admin alerts, subscriber notices) and sending them over
//! SMTP with lettre, or writing them as `.eml` files when no SMTP server is configured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use crate::base::text::{redact, write_atomically};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::Failure;
use crate::health::Status;

/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one message's whole SMTP exchange may take, from connect to the final `250`.
const SMTP_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    /// `transport` is replaced (and its pool dropped, closing every connection in it) when a
    /// relay stops answering: lettre would put the hung connection back in the pool, and the
    /// next message would hang on it too.
    Smtp {
        transport: Arc<RwLock<AsyncSmtpTransport<Tokio1Executor>>>,
        url: String,
        ca: Option<PathBuf>,
    },
    Dir(PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp { url, .. } => write!(f, "Mailer::Smtp({})", redact(url)),
            Mailer::Dir(dir) => write!(f, "Mailer::Dir({})", dir.display()),
        }
    }
}

/// Reads a PEM file of CA certificates for the SMTP server's TLS.
pub fn read_ca(path: &Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Certificate::from_pem(&pem).map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))
}

/// The URL's TLS mode (`smtps://` implicit, `?tls=required` or `?tls=opportunistic`
/// STARTTLS, otherwise none), trusting the CA in `ca` besides the public roots.
fn tls_with_ca(url: &str, ca: &Path) -> Result<Tls, String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let params = TlsParameters::builder(host.to_owned())
        .add_root_certificate(read_ca(ca)?)
        .build_rustls()
        .map_err(|e| format!("TLS for {host}: {e}"))?;
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or_default();
    Ok(if url.starts_with("smtps://") {
        Tls::Wrapper(params)
    } else if query.split('&').any(|kv| kv == "tls=required") {
        Tls::Required(params)
    } else if query.split('&').any(|kv| kv == "tls=opportunistic") {
        Tls::Opportunistic(params)
    } else {
        Tls::None // plain SMTP, as the URL says: the CA has nothing to verify
    })
}

impl Mailer {
    /// An SMTP transport for `smtp` (checked by `warden check`), or the mail folder. Must
    /// run inside the Tokio runtime (lettre's pool).
    pub fn new(smtp: Option<&str>, ca: Option<&Path>, mail_dir: &Path) -> Result<Mailer, String> {
        match smtp {
            Some(url) => Ok(Mailer::Smtp {
                transport: Arc::new(RwLock::new(transport(url, ca)?)),
                url: url.to_owned(),
                ca: ca.map(Path::to_path_buf),
            }),
            None => Ok(Mailer::Dir(mail_dir.to_path_buf())),
        }
    }

    /// Sends one message. `name` names the `.eml` file (stable per outbox row, so a resend
    /// replaces the file instead of adding one).
    pub async fn send(&self, message: &Message, name: &str) -> Result<String, Failure> {
        match self {
            // lettre's `timeout` bounds the connect, not a relay that stops answering in the
            // middle of DATA: the whole exchange has its own deadline, or one hung relay
            // would hold a delivery lane (and its outbox row) forever.
            Mailer::Smtp { transport: shared, url, ca } => {
                let transport = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
                match tokio::time::timeout(SMTP_SEND_TIMEOUT, transport.send(message.clone())).await {
                    Ok(Ok(_)) => Ok(format!("sent through {}", redact(url))),
                    Ok(Err(e)) if e.is_permanent() => Err(Failure::Permanent(format!("SMTP refused the message: {e}"))),
                    Ok(Err(e)) => Err(Failure::Retry(format!("SMTP {}: {e}", redact(url)))),
                    Err(_) => {
                        // A fresh pool: the hung connection goes with the old one.
                        if let Ok(fresh) = self::transport(url, ca.as_deref()) {
                            *shared.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                        }
                        Err(Failure::Retry(format!(
                            "SMTP {}: no answer within {}s; its connections are closed and the message is sent again",
                            redact(url),
                            SMTP_SEND_TIMEOUT.as_secs()
                        )))
                    }
                }
            }
            Mailer::Dir(dir) => {
                let path = dir.join(format!("{name}.eml"));
                write_atomically(&path, &message.formatted())
                    .map_err(|e| Failure::Retry(format!("cannot write {}: {e}", path.display())))?;
                Ok(format!("written to {}", path.display()))
            }
        }
    }
}

/// An SMTP transport with its pool for `url` (trusting `ca` besides the public roots).
fn transport(url: &str, ca: Option<&Path>) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| format!("invalid SMTP URL `{}`: {e}", redact(url)))?;
    if let Some(ca) = ca {
        builder = builder.tls(tls_with_ca(url, ca)?);
    }
    Ok(builder.timeout(Some(SMTP_TIMEOUT)).pool_config(PoolConfig::new().max_size(super::MAX_IN_FLIGHT + 2)).build())
}

/// A stable short name for an outbox row: the first 16 bytes of SHA-256 of its dedup key.
pub fn row_hash(dedup_key: &str) -> String {
    Sha256::digest(dedup_key.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The Message-ID of an outbox row: the same on every resend, so a receiver (or a human)
/// can tell a resend after a crash from a new alert.
pub fn message_id(dedup_key: &str, from: &Mailbox) -> String {
    format!("<{}.warden@{}>", row_hash(dedup_key), from.email.domain())
}

/// One message to build.
pub struct Draft<'a> {
    pub from: &'a Mailbox,
    pub to: &'a [String],
    pub subject: &'a str,
    pub text: &'a str,
    pub html: Option<&'a str>,
    pub dedup_key: &'a str,
    /// The one-click unsubscribe URL (RFC 8058), for subscriber notices.
    pub unsubscribe: Option<&'a str>,
}

impl Draft<'_> {
    pub fn build(&self) -> Result<Message, String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(self.subject)
            .message_id(Some(message_id(self.dedup_key, self.from)))
            .header(lettre::message::header::Date::now());
        for to in self.to {
            builder = builder.to(to.parse::<Mailbox>().map_err(|e| format!("bad recipient `{to}`: {e}"))?);
        }
        if let Some(url) = self.unsubscribe {
            builder = builder
                .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{url}>")))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        let text = part(ContentType::TEXT_PLAIN, self.text);
        let message = match self.html {
            Some(html) => builder
                .multipart(MultiPart::alternative().singlepart(text).singlepart(part(ContentType::TEXT_HTML, html))),
            None => builder.singlepart(text),
        };
        message.map_err(|e| format!("cannot build the message: {e}"))
    }
}

fn part(content_type: ContentType, body: &str) -> SinglePart {
    SinglePart::builder().header(content_type).header(ContentTransferEncoding::QuotedPrintable).body(body.to_owned())
}

/// A subscriber notice: subject, text and HTML.
pub fn notice(product: &str, status: Status, previous: Option<Status>, unsubscribe: &str) -> (String, String, String) {
    let (subject, headline) = match status {
        Status::Operational => (format!("{product} is back to normal"), "All services are operational again."),
        Status::Degraded => (format!("{product} is partly unavailable"), "Some services are failing; we are on it."),
        Status::Error => (format!("{product} is down"), "The service is down; we are working to restore it."),
    };
    let was = previous.map(|p| format!(" (it was {})", p.as_str())).unwrap_or_default();
    let text = format!(
        "Hello,\n\n{headline}\nCurrent status of {product}: {}{was}.\n\n\
         You receive this because you asked {product} for status alerts.\n\
         Stop these notices: {unsubscribe}\n",
        status.as_str()
    );
    let (p, h, u) = (escape(product), escape(headline), escape(unsubscribe));
    let html = format!(
        "<!doctype html>\n<html><body style=\"font-family: sans-serif\">\n<h1>{}</h1>\n<p>{h}</p>\n\
         <p>Current status of {p}: <strong>{}</strong>{}.</p>\n\
         <p style=\"color: #666; font-size: small\">You receive this because you asked {p} for status alerts. \
         <a href=\"{u}\">Stop these notices</a>.</p>\n</body></html>\n",
        escape(&subject),
        status.as_str(),
        escape(&was)
    );
    (subject, text, html)
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_a_stable_id_and_the_one_click_headers() {
        let from: Mailbox = "Warden <warden@example.org>".parse().unwrap();
        let to = ["ada@example.org".to_owned()];
        let (subject, text, html) =
            notice("MNW <beta>", Status::Error, Some(Status::Operational), "https://x/unsubscribe?u=1&a=b&s=c");
        let draft = Draft {
            from: &from,
            to: &to,
            subject: &subject,
            text: &text,
            html: Some(&html),
            dedup_key: "status-alert:probe:1:2:7",
            unsubscribe: Some("https://x/unsubscribe?u=1&a=b&s=c"),
        };
        let a = String::from_utf8(draft.build().unwrap().formatted()).unwrap();
        let b = String::from_utf8(draft.build().unwrap().formatted()).unwrap();
        let id = |m: &str| m.lines().find(|l| l.starts_with("Message-ID:")).unwrap().to_owned();
        assert_eq!(id(&a), id(&b));
        assert!(id(&a).ends_with(".warden@example.org>"), "{}", id(&a));
        assert!(a.contains("List-Unsubscribe: <https://x/unsubscribe?u=1&a=b&s=c>"), "{a}");
        assert!(a.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(a.contains("multipart/alternative") && a.contains("text/plain") && a.contains("text/html"));
        assert!(html.contains("MNW &lt;beta&gt;") && !html.contains("<beta>"), "{html}");
        assert_eq!(redact("smtps://me:secret@mail.example.org:465"), "smtps://me:***@mail.example.org:465");
    }
}
