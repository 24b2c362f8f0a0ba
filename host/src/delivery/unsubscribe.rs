//! Signed unsubscribe links: HMAC-SHA256 over the user id and the action, keyed with the
//! signing secret, verified in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The one action a link can carry today: leave the status notices.
pub const ACTION: &str = "status-alerts";

/// The signing key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer { key: secret.to_vec() }
    }

    fn mac(&self, user: &str, action: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        // Length-prefixed, so ("1", "2x") and ("12", "x") sign differently.
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(action.as_bytes());
        mac
    }

    /// The signature as lowercase hex.
    pub fn sign(&self, user: &str, action: &str) -> String {
        hex(&self.mac(user, action).finalize().into_bytes())
    }

    /// Whether `signature` (hex) is ours for this user and action; compared in constant time.
    pub fn verify(&self, user: &str, action: &str, signature: &str) -> bool {
        match unhex(signature) {
            Some(bytes) => self.mac(user, action).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }

    /// The link a mail carries: `{base}/unsubscribe?u=…&a=…&s=…`.
    pub fn url(&self, base: &str, user: &str) -> String {
        format!("{base}/unsubscribe?u={}&a={ACTION}&s={}", encode(user), self.sign(user, ACTION))
    }
}

/// Reads the secret from a file, creating it (0600, 32 random bytes as hex) on first start.
/// The `settings` key of the signing secret replicas share.
const SHARED_SECRET_KEY: &str = "unsubscribe_signing_secret";

/// The signing secret every replica on a PostgreSQL store uses, so a link in a mail one
/// replica sent verifies on the others: the one kept in the store, put there by the first
/// replica (from its `signing_secret_file` if it has one, else made up). `None`: not
/// shared (SQLite, one process; an inline secret, which the replicas' files must repeat;
/// or the store unreachable at start, when the file is used and a warning says so).
pub async fn shared_secret(
    config: &crate::config::Config,
    store: &crate::store::StateStore,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(subscribers) = &config.alerts.subscribers else { return Ok(None) };
    let crate::config::Secret::File(path) = &subscribers.secret else { return Ok(None) };
    if store.is_single_process() {
        return Ok(None);
    }
    let from_file = match std::fs::read_to_string(path) {
        Ok(_) => {
            Some(load_or_create_secret(path).map_err(|e| anyhow::anyhow!("signing secret {}: {e}", path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("signing secret {}: {e}", path.display()),
    };
    let offered = from_file.clone().unwrap_or_else(|| hex(&rand::random::<[u8; 32]>()).into_bytes());
    let offered = String::from_utf8_lossy(&offered).into_owned();
    match store.shared_setting(SHARED_SECRET_KEY, || offered).await {
        Ok(shared) => {
            if from_file.as_deref().is_some_and(|f| f != shared.as_bytes()) {
                tracing::warn!(path = %path.display(), "this replica's signing secret file differs from the one the replicas share in the state store; the shared one is used");
            }
            Ok(Some(shared.into_bytes()))
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "state store unreachable: the unsubscribe links this replica signs use its own file's secret until the next reload");
            Ok(None)
        }
    }
}

pub fn load_or_create_secret(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= crate::config::MIN_SECRET_LEN => Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => Err(std::io::Error::other(format!(
            "{}: the signing secret is shorter than {} characters",
            path.display(),
            crate::config::MIN_SECRET_LEN
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let secret = hex(&rand::random::<[u8; 32]>());
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "created the unsubscribe signing secret");
            Ok(secret.into_bytes())
        }
        Err(e) => Err(e),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_user_action_and_key() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let sig = signer.sign("42", ACTION);
        assert_eq!(sig.len(), 64);
        assert!(signer.verify("42", ACTION, &sig));
        assert!(!signer.verify("43", ACTION, &sig), "another user");
        assert!(!signer.verify("42", "delete-account", &sig), "another action");
        assert!(!Signer::new(b"another key of 20 ch").verify("42", ACTION, &sig), "another key");
        let mut tampered = sig.clone().into_bytes();
        tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
        assert!(!signer.verify("42", ACTION, std::str::from_utf8(&tampered).unwrap()));
        assert!(!signer.verify("42", ACTION, &sig[..62]), "truncated");
        assert!(!signer.verify("42", ACTION, "zz"), "not hex");
        assert!(!signer.verify("4", &format!("2{ACTION}"), &sig), "fields do not run together");
    }

    #[test]
    fn the_url_escapes_the_user_and_carries_the_signature() {
        let signer = Signer::new(b"0123456789abcdef0123");
        let url = signer.url("https://status.example.org", "a b&c");
        assert!(url.starts_with("https://status.example.org/unsubscribe?u=a%20b%26c&a=status-alerts&s="), "{url}");
        assert!(url.ends_with(&signer.sign("a b&c", ACTION)));
    }
}
