//! The bearer token both authenticated surfaces take: the admin API (`/admin/`) and the
//! replicas' peer routes (`/peer/`).

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// The token of `Authorization: Bearer <token>`, if the request sends one (the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether two secrets are equal, in time independent of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
