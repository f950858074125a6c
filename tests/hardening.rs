//! Issue 12, production hardening, through the router: every API error is our JSON error, security
//! headers, cheap and guarded `/metrics`, exports that cannot starve the annotators. On SQLite and
//! (with TEST_DATABASE_URL) PostgreSQL. The timeouts and the connection cap need a real listener:
//! tests/server.rs.

mod common;

use axum::http::{HeaderMap, StatusCode, header};
use common::{Backend, TestApp};
use prefloop::http::HttpConfig;
use serde_json::Value;

db_tests!(
    api_errors_are_json,
    pages_keep_an_html_not_found,
    security_headers_on_pages_and_api,
    metrics_token_guards_the_scrape,
    metrics_gauges_are_cached_for_a_window,
    stalled_exports_do_not_starve_the_annotators,
);

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

fn assert_security_headers(headers: &HeaderMap, what: &str) {
    let get = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = get("content-security-policy");
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src") || d.starts_with("default-src"))
        .unwrap_or_else(|| panic!("{what}: CSP without script-src: {csp}"));
    assert!(!script_src.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("object-src 'none'"), "{what}: {csp}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert!(
        ["no-referrer", "same-origin"].contains(&get("referrer-policy").as_str()),
        "{what}"
    );
}

async fn security_headers_on_pages_and_api(b: Backend) {
    let app = TestApp::new(b).await;
    let admin = app.admin.clone();
    let project = app.create_project(serde_json::json!({"name": "p"})).await;
    for uri in [
        "/login".to_string(),
        "/api/v1/projects".to_string(),
        format!("/api/v1/projects/{project}"),
        "/api/v1/nothing-here".to_string(),
        "/no-such-page".to_string(),
        "/healthz".to_string(),
        "/static/annotate.js".to_string(),
    ] {
        let (_, _, headers) = app
            .call_with_headers("GET", &uri, Some(&admin), None, &[])
            .await;
        assert_security_headers(&headers, &uri);
    }
    // What shows a token or a sign-in link is never cached: the sign-in pages, the admin pages (a new
    // link is printed on the page that answers the form), the API answer that carries a new token.
    let (_, created) = {
        let (s, v) = app
            .json(
                "POST",
                "/api/v1/users",
                &admin,
                Some(serde_json::json!({"name": "ada", "role": "annotator"})),
            )
            .await;
        (s, v)
    };
    assert!(created["token"].is_string(), "{created}");
    let code = prefloop::store::sessions::create_login_link(
        &app.store,
        created["user"]["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let cookie = {
        let (status, _, headers) = app
            .call_with_headers(
                "POST",
                "/login",
                None,
                Some(format!("token={admin}").into_bytes()),
                &[("content-type", "application/x-www-form-urlencoded")],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let set = headers[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    };
    for uri in [
        "/login".to_string(),
        format!("/login/link/{code}"),
        "/admin".to_string(),
    ] {
        let (_, _, headers) = app
            .call_with_headers("GET", &uri, None, None, &[("cookie", &cookie)])
            .await;
        assert_security_headers(&headers, &uri);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{uri}");
    }
    let (_, _, headers) = app
        .call_with_headers(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(br#"{"name": "bob", "role": "annotator"}"#.to_vec()),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    // The embedded assets keep their own caching.
    let (_, _, headers) = app
        .call_with_headers("GET", "/static/app.css", None, None, &[])
        .await;
    assert!(
        headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
}

/// The CSP allows no inline script: no `<script>` without `src`, no `on…=` handler attributes, and no
/// inline `style` attributes (style-src is 'self' too) in the templates.
#[test]
fn templates_have_no_inline_script_or_style() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lower = text.to_lowercase();
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').unwrap()];
            assert!(
                tag.contains(" src="),
                "{}: inline script {tag}",
                path.display()
            );
        }
        let bytes = lower.as_bytes();
        for (i, _) in lower.match_indices(" on") {
            let rest = &lower[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            let handler = name_len > 0 && bytes.get(i + 3 + name_len) == Some(&b'=');
            assert!(
                !handler,
                "{}: inline handler at {}",
                path.display(),
                &text[i..(i + 40).min(text.len())]
            );
        }
        assert!(
            !lower.contains(" style=\""),
            "{}: inline style attribute",
            path.display()
        );
    }
}

async fn metrics_token_guards_the_scrape(b: Backend) {
    // Without a token configured, /metrics stays open.
    let open = TestApp::new(b).await;
    let (status, _) = open.call("GET", "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    drop(open);
    let config = HttpConfig {
        metrics_token: Some("scrape-secret".into()),
        ..HttpConfig::default()
    };
    let app = TestApp::with_config(b, config).await;
    let admin = app.admin.clone();
    for token in [None, Some("wrong"), Some(admin.as_str())] {
        let (status, body, headers) = app
            .call_with_headers("GET", "/metrics", token, None, &[])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_json_error(status, &headers, &body, "/metrics without its token");
    }
    let (status, body) = app
        .call("GET", "/metrics", Some("scrape-secret"), None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("prefloop_projects")
    );
}

fn gauge(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_string()
}

/// Within the cache window a scrape answers the gauges it read last, without asking the database; a
/// zero window reads them every time. (The window is injected: nothing here waits for a clock.)
async fn metrics_gauges_are_cached_for_a_window(b: Backend) {
    for (window, cached) in [
        (std::time::Duration::from_secs(3600), true),
        (std::time::Duration::ZERO, false),
    ] {
        let config = HttpConfig {
            metrics_cache: window,
            ..HttpConfig::default()
        };
        let app = TestApp::with_config(b, config).await;
        let scrape = || async {
            let (status, body) = app.call("GET", "/metrics", None, None, &[]).await;
            assert_eq!(status, StatusCode::OK);
            String::from_utf8(body).unwrap()
        };
        let first = scrape().await;
        assert_eq!(gauge(&first, "prefloop_projects"), "0");
        app.create_project(serde_json::json!({"name": "p"})).await;
        let second = scrape().await;
        let want = if cached { "0" } else { "1" };
        assert_eq!(
            gauge(&second, "prefloop_projects"),
            want,
            "window {window:?}"
        );
        // The request counters are not cached: they are memory, not database.
        assert_ne!(
            gauge(&first, "prefloop_http_responses_total{class=\"2xx\"}"),
            gauge(&second, "prefloop_http_responses_total{class=\"2xx\"}")
        );
    }
}

/// More stalled exports (clients that read one chunk, then stop) than the pool has connections: an
/// annotator's `/next` still answers, and the exports beyond the export budget are told to come back.
async fn stalled_exports_do_not_starve_the_annotators(b: Backend) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = TestApp::new(b).await;
    let project = app.create_project(serde_json::json!({"name": "big"})).await;
    // Each exported line carries two 8 KiB completions, so one export is far more than the few 64 KiB
    // chunks its channel holds: a reader that stops keeps the export's query (and connection) open.
    let long = "x".repeat(8 << 10);
    let ndjson: String = (0..60)
        .map(|i| {
            serde_json::json!({"prompt": format!("p{i}"), "completion_a": format!("a{i}{long}"), "completion_b": format!("b{i}{long}")})
                .to_string()
                + "\n"
        })
        .collect();
    app.import(&project, "pairs", &ndjson).await;
    let annotator = app.annotator("ada").await;
    for _ in 0..60 {
        let (status, lease) = app.next(&project, &annotator).await;
        assert_eq!(status, StatusCode::OK, "{lease}");
        let (status, _) = app
            .judge(lease["lease_id"].as_str().unwrap(), &annotator, "left")
            .await;
        assert!(status.is_success(), "{status}");
    }
    let mut stalled = Vec::new();
    let (mut started, mut refused) = (0, 0);
    for _ in 0..20 {
        let req = axum::http::Request::get(format!("/api/v1/projects/{project}/export"))
            .header("authorization", format!("Bearer {}", app.admin))
            .body(Body::empty())
            .unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        if resp.status() == StatusCode::OK {
            started += 1;
            let mut body = resp.into_body();
            // One chunk has arrived, so its query holds a connection; then this client stops reading.
            body.frame()
                .await
                .expect("a first chunk")
                .expect("readable");
            stalled.push(body);
        } else {
            refused += 1;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                [
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::TOO_MANY_REQUESTS
                ]
                .contains(&status),
                "{status}"
            );
            assert!(
                headers.contains_key(header::RETRY_AFTER),
                "{status} says when to retry"
            );
            assert_json_error(status, &headers, &bytes, "an export over the budget");
        }
    }
    assert!(started >= 1, "some exports run");
    assert!(refused >= 1, "not all twenty exports may hold a connection");
    let other = app.annotator("bob").await;
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        app.next(&project, &other),
    )
    .await;
    let (status, _) = next.expect("/next answers while exports are stalled");
    assert!(
        status == StatusCode::OK || status == StatusCode::NO_CONTENT,
        "{status}"
    );
    drop(stalled);
}
