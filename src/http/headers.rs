//! Security headers on every response, pages and API alike.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// Scripts and styles only from our own `/static/` files, never inline (the templates carry none:
/// behaviour lives in static/*.js, bar widths are set there from `data-pct`), so markup injected through
/// the data cannot run; no plugins, no `<base>` rewriting, forms only to us, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Sets the headers a response did not set itself. `Cache-Control: no-store` is the default because
/// pages and answers carry tokens, sign-in links and CSRF tokens; the embedded assets set their own.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let defaults: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        // For browsers that predate CSP's frame-ancestors.
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Sign-in links carry their secret in the path: never hand it to another site.
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    let headers = resp.headers_mut();
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    resp
}
