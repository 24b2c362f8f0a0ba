//! The public pages as last rendered: the status page and each badge are built at most once
//! per `FRESH`, however many visitors ask, and a render in progress is shared by everyone
//! who asks meanwhile; a job whose status changes has its badges and the page dropped, so a
//! change shows at once. A render runs as a task of its own, so a visitor who gives up (or the
//! request timeout) never cancels it: the next visitor gets its result.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// How long a rendered page or badge is served as it is.
pub const FRESH: Duration = Duration::from_secs(15);

/// A rendered answer: status, content type, body.
pub type Page = (StatusCode, &'static str, Bytes);

/// A render, shared; it yields when it was done and the page.
type Render = Shared<BoxFuture<'static, (Instant, Page)>>;

#[derive(Default)]
pub struct Rendered {
    pages: Mutex<HashMap<String, Render>>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered").finish_non_exhaustive()
    }
}

impl Rendered {
    /// The page under `key`: the one rendered less than `FRESH` ago (or being rendered), else
    /// a new render of `render`.
    pub async fn get(&self, key: &str, render: impl Future<Output = Page> + Send + 'static) -> Response {
        let shared = {
            let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
            // Fresh: still rendering (share it), or done less than `FRESH` ago. A render that
            // takes longer than `FRESH` is still served for `FRESH` after it ends.
            match pages.get(key) {
                Some(render) if render.peek().is_none_or(|(done, _)| done.elapsed() < FRESH) => render.clone(),
                _ => {
                    let task = tokio::spawn(render);
                    let render: Render = async move {
                        let page = task.await.unwrap_or_else(|_| {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "text/plain; charset=utf-8",
                                Bytes::from_static(b"render failed\n"),
                            )
                        });
                        (Instant::now(), page)
                    }
                    .boxed()
                    .shared();
                    pages.insert(key.to_owned(), render.clone());
                    render
                }
            }
        };
        let (_, (code, content_type, body)) = shared.await;
        let max_age = format!("public, max-age={}", FRESH.as_secs());
        (code, [(header::CONTENT_TYPE, content_type.to_owned()), (header::CACHE_CONTROL, max_age)], body)
            .into_response()
    }

    /// Drops what shows `job`'s status: its badges and the status page.
    pub fn forget(&self, job: &str) {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        for key in [format!("badge/{job}.svg"), format!("badge/{job}.json"), "/".to_owned()] {
            pages.remove(&key);
        }
    }

    /// Drops every rendered page (a reload changed what they show).
    pub fn clear(&self) {
        self.pages.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
