//! `/unsubscribe`: the signed link in every subscriber notice. GET shows a confirmation
//! page and changes nothing (mail scanners fetch links); POST, including the RFC 8058
//! one-click POST a mail client sends, opts the user out. A signature that does not verify
//! gets 403 and changes nothing; repeating a valid opt-out is harmless.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use tracing::{info, warn};

use super::Shared;
use crate::base::text::for_log;
use crate::delivery::mail::escape;
use crate::delivery::unsubscribe::encode;
use crate::delivery::{Channels, opt_out};

#[derive(Debug, Deserialize)]
pub struct Link {
    #[serde(default)]
    u: String,
    #[serde(default)]
    a: String,
    #[serde(default)]
    s: String,
}

/// The channels, when the link verifies.
fn verified(shared: &Shared, link: &Link) -> Result<Arc<Channels>, Box<Response>> {
    let Some(channels) = shared.channels().filter(|c| c.subscribers.is_some()) else {
        return Err(Box::new(render(StatusCode::NOT_FOUND, "Not found", "Status notices are not enabled here.")));
    };
    let signer = &channels.subscribers.as_ref().expect("checked above").signer;
    if link.u.is_empty() || !signer.verify(&link.u, &link.a, &link.s) {
        warn!(user = %for_log(&link.u, 64), "unsubscribe link with a bad signature refused");
        return Err(Box::new(render(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "This unsubscribe link is not valid. Use the link from the most recent notice.",
        )));
    }
    Ok(channels)
}

pub async fn page(State(shared): State<Arc<Shared>>, Query(link): Query<Link>) -> Response {
    let channels = match verified(&shared, &link) {
        Ok(c) => c,
        Err(response) => return *response,
    };
    let action = format!("/unsubscribe?u={}&a={}&s={}", encode(&link.u), encode(&link.a), encode(&link.s));
    let product = escape(&channels.product);
    let body = format!(
        "<p>Stop receiving status notices from {product}?</p>\n\
         <form method=\"post\" action=\"{}\"><button type=\"submit\">Unsubscribe</button></form>",
        escape(&action)
    );
    render(StatusCode::OK, &format!("Unsubscribe from {product}"), &body)
}

pub async fn confirm(State(shared): State<Arc<Shared>>, Query(link): Query<Link>) -> Response {
    let channels = match verified(&shared, &link) {
        Ok(c) => c,
        Err(response) => return *response,
    };
    match opt_out(&channels, &link.u).await {
        Ok(rows) => {
            let cancelled = shared.store.cancel_notices(&link.u).await.unwrap_or_else(|e| {
                warn!(user = %for_log(&link.u, 64), error = %e, "could not cancel queued notices");
                0
            });
            info!(user = %for_log(&link.u, 64), rows, cancelled, "user unsubscribed from status notices");
            let product = escape(&channels.product);
            render(
                StatusCode::OK,
                "Unsubscribed",
                &format!("<p>You will no longer receive status notices from {product}.</p>"),
            )
        }
        Err(e) => {
            warn!(user = %for_log(&link.u, 64), error = %e, "opt-out failed");
            render(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "We could not record your choice just now. Please try again in a few minutes.",
            )
        }
    }
}

fn render(code: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 3em auto\">\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    );
    (code, Html(html)).into_response()
}
