//! Issue 12, production hardening, through the router: every API error is our JSON error, security
//! headers, cheap and guarded `/metrics`, exports that cannot starve the annotators. On SQLite and
//! (with TEST_DATABASE_URL) PostgreSQL. The timeouts and the connection cap need a real listener:
//! tests/server.rs.

mod common;

use axum::http::{HeaderMap, StatusCode, header};
use common::{Backend, TestApp};
use serde_json::Value;

db_tests!(api_errors_are_json, pages_keep_an_html_not_found,);

/// The body is our `{"error", "error_type"}` JSON, served as JSON.
fn assert_json_error(status: StatusCode, headers: &HeaderMap, body: &[u8], what: &str) -> Value {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: {status} with content type {ct:?}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {v}"
    );
    assert!(v["error_type"].is_string(), "{what}: {v}");
    v
}

async fn api_errors_are_json(b: Backend) {
    let app = TestApp::new(b).await;
    let admin = app.admin.clone();
    let project = app.create_project(serde_json::json!({"name": "p"})).await;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        // Bad percent-encoding (not UTF-8) in a path segment and in a query.
        (
            "GET",
            "/api/v1/projects/%FF".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/v1/projects/{project}/export?format=%FF"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/nothing-here".into(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "GET",
            "/api/v2/projects".into(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/projects".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "PUT",
            format!("/api/v1/projects/{project}/next"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, want, kind) in cases {
        let (status, body, headers) = app
            .call_with_headers(method, &uri, Some(&admin), None, &[])
            .await;
        let what = format!("{method} {uri}");
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        let v = assert_json_error(status, &headers, &body, &what);
        assert_eq!(v["error_type"], kind, "{what}: {v}");
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                headers.contains_key(header::ALLOW),
                "{what}: 405 says what is allowed"
            );
        }
    }
}

async fn pages_keep_an_html_not_found(b: Backend) {
    let app = TestApp::new(b).await;
    for (method, uri, want) in [
        ("GET", "/no-such-page", StatusCode::NOT_FOUND),
        ("DELETE", "/login", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (status, body, headers) = app.call_with_headers(method, uri, None, None, &[]).await;
        assert_eq!(status, want, "{method} {uri}");
        let ct = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/html"), "{method} {uri}: {ct}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("<html") && body.contains("</main>"), "{body}");
    }
}
