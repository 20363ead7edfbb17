//! `GET /`: one self-contained page (no CDN, no network beyond this server) with every stream live,
//! its counts and the latest events. The streams known when the page is asked for are rendered with
//! their latest snapshot, so the page shows pictures as soon as it has loaded; its script then keeps
//! it current (stream list, counts and events every second, pictures as MJPEG).

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{App, TokenQuery};

const PAGE: &str = include_str!("page.html");

pub(super) async fn index(
    State(app): State<App>,
    q: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = q.ok().and_then(|q| q.0.token).unwrap_or_default();
    let suffix = if token.is_empty() {
        String::new()
    } else {
        format!("?token={}", encode(&token))
    };
    let mut cards = String::new();
    for s in app.hub.streams() {
        let img = if s.width.is_some() {
            format!(
                r#"<img alt="{n}" src="/api/streams/{u}/snapshot.jpg{suffix}">"#,
                n = escape(&s.name),
                u = encode(&s.name)
            )
        } else {
            String::new()
        };
        cards.push_str(&format!(
            r#"<section class="card" data-name="{n}"><h2>{n}</h2>{img}<div class="info"></div></section>"#,
            n = escape(&s.name)
        ));
    }
    let html = PAGE.replace("<!--STREAMS-->", &cards);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// Text for HTML content and attributes.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A URL path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
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
    fn names_cannot_break_out_of_the_page() {
        assert_eq!(escape("<a href=\"x\">"), "&lt;a href=&quot;x&quot;&gt;");
        assert_eq!(encode("cam 1/x"), "cam%201%2Fx");
    }
}
