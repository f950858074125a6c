//! The pages without a browser: status codes, cookies, CSRF, sign-in links and membership, over the real
//! router on SQLite and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Backend, TestApp};
use http_body_util::BodyExt;
use prefloop::store::sessions::create_login_link;
use prefloop::store::users::{Role, UserKind, create_user};
use serde_json::json;
use tower::ServiceExt;

db_tests!(
    sign_in_sets_a_strict_http_only_cookie,
    sign_in_link_works_once,
    annotators_get_403_on_admin_pages,
    posts_without_the_csrf_token_are_refused,
    members_only_projects_refuse_others,
    release_by_beacon_with_csrf_in_the_query,
    refused_admin_forms_keep_what_was_typed,
    the_loss_chart_follows_the_run_in_progress,
);

/// `prefloop user add NAME --role R --link` prints the token, then a link that signs that user in.
#[tokio::test]
async fn cli_user_add_prints_a_sign_in_link() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefloop"))
        .args(["user", "add", "ada", "--role", "annotator", "--link"])
        .args(["--public-url", "https://labels.example.org/"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("pfl_"));
    let code = lines[1]
        .strip_prefix("https://labels.example.org/login/link/")
        .expect("a link under the public URL");
    let store = prefloop::store::Store::open_data_dir(dir.path())
        .await
        .unwrap();
    let router = prefloop::http::app(prefloop::http::AppState::new(
        store,
        prefloop::http::HttpConfig::default(),
    ));
    // Opening the link only asks; the button's POST signs in.
    let resp = router
        .clone()
        .oneshot(
            Request::get(format!("/login/link/{code}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key(header::SET_COOKIE));
    let resp = router
        .oneshot(
            Request::post(format!("/login/link/{code}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers().contains_key(header::SET_COOKIE));
}

/// A project name the CLI accepts, REST accepts, stored the same; one refused is refused by both.
#[tokio::test]
async fn cli_and_rest_take_the_same_project_names() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::new(Backend::Sqlite).await;
    let long = "n".repeat(200);
    let too_long = "n".repeat(201);
    let names = [
        "Movie reviews / v2 (2026)",
        "  padded  ",
        "ünïcødé 🎬 名前",
        "quote \" and 'apos' & <b>",
        "with-dash_and.dot",
        long.as_str(),
        too_long.as_str(),
        "   ",
    ];
    for name in names {
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_prefloop"))
            .args(["project", "create", name])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let (status, body) = app
            .json(
                "POST",
                "/api/v1/projects",
                &app.admin,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(
            cli.status.success(),
            status == StatusCode::CREATED,
            "{name:?}: CLI {} / REST {status} {body}",
            String::from_utf8_lossy(&cli.stderr)
        );
        if status == StatusCode::CREATED {
            assert_eq!(body["name"], name.trim());
        }
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &TestApp, req: Request<Body>) -> Resp {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into(),
    }
}

/// Signs in with a token through the form; returns the cookie to send back.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let r = send(
        app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

async fn get(app: &TestApp, path: &str, cookie: &str) -> Resp {
    send(
        app,
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// The session's CSRF token, as the pages embed it.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

async fn sign_in_sets_a_strict_http_only_cookie(b: Backend) {
    let app = TestApp::new(b).await;
    let r = send(
        &app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "https")
            .body(Body::from(format!("token={}", app.admin)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/admin");
    let cookie = r.headers[header::SET_COOKIE].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let bad = send(
        &app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("token=pfl_nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());
    // A sign-in form posted from another site is refused, even with a good token.
    let forged = send(
        &app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "cross-site")
            .body(Body::from(format!("token={}", app.admin)))
            .unwrap(),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.headers.get(header::SET_COOKIE).is_none());
    // Pages without a session send the browser to sign in.
    let r = get(&app, "/", "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/login");
}

async fn sign_in_link_works_once(b: Backend) {
    let app = TestApp::new(b).await;
    let (user, _) = create_user(&app.store, "ada", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    let code = create_login_link(&app.store, &user.id).await.unwrap();
    let link = format!("/login/link/{code}");
    // A GET (a person, or a chat app's link preview) only shows whom the link signs in, with a
    // button; it spends nothing, however often it comes.
    for _ in 0..3 {
        let shown = get(&app, &link, "").await;
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
        assert!(shown.headers.get(header::SET_COOKIE).is_none());
        assert!(shown.body.contains("Sign in as ada"), "{}", shown.body);
        assert!(
            shown
                .body
                .contains(&format!("method=\"post\" action=\"{link}\"")),
            "{}",
            shown.body
        );
    }
    let post = |site: Option<&str>| {
        let mut r = Request::post(&link);
        if let Some(site) = site {
            r = r.header("sec-fetch-site", site);
        }
        r.body(Body::empty()).unwrap()
    };
    // A page elsewhere cannot post it to sign the visitor in as ada, and that spends nothing either.
    let forged = send(&app, post(Some("cross-site"))).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.headers.get(header::SET_COOKIE).is_none());
    let first = send(&app, post(Some("same-origin"))).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    let cookie = first.headers[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap();
    assert_eq!(get(&app, "/", cookie).await.status, StatusCode::OK);
    let again = send(&app, post(None)).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.headers.get(header::SET_COOKIE).is_none());
    assert!(again.body.contains("already used"));
    let shown = get(&app, &link, "").await;
    assert_eq!(shown.status, StatusCode::UNAUTHORIZED);
    assert!(shown.body.contains("already used"));
    // Revoking the user ends their session too.
    prefloop::store::users::revoke_user(&app.store, &user.id)
        .await
        .unwrap();
    assert_eq!(get(&app, "/", cookie).await.status, StatusCode::SEE_OTHER);
}

async fn annotators_get_403_on_admin_pages(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    let token = app.annotator("ada").await;
    let cookie = sign_in(&app, &token).await;
    for path in ["/admin".to_string(), format!("/admin/projects/{project}")] {
        assert_eq!(
            get(&app, &path, &cookie).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    // Nor the admin API through the cookie.
    let r = get(&app, &format!("/api/v1/projects/{project}/export"), &cookie).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let admin = sign_in(&app, &app.admin).await;
    assert_eq!(get(&app, "/admin", &admin).await.status, StatusCode::OK);
    assert_eq!(
        get(&app, &format!("/admin/projects/{project}"), &admin)
            .await
            .status,
        StatusCode::OK
    );
}

async fn posts_without_the_csrf_token_are_refused(b: Backend) {
    let app = TestApp::new(b).await;
    let cookie = sign_in(&app, &app.admin).await;
    let page = get(&app, "/admin", &cookie).await.body;
    let csrf = csrf_of(&page);
    let create = |token: &str| {
        Request::post("/admin/projects")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={token}&name=p&label_budget=")))
            .unwrap()
    };
    assert_eq!(
        send(&app, create("0".repeat(64).as_str())).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, create(&csrf)).await.status,
        StatusCode::SEE_OTHER
    );
    // The JSON API through the cookie needs the header.
    let api = |with: bool| {
        let mut r = Request::post("/api/v1/projects").header(header::COOKIE, &cookie);
        if with {
            r = r.header("x-csrf-token", &csrf);
        }
        r.body(Body::from(json!({"name": "q"}).to_string()))
            .unwrap()
    };
    assert_eq!(send(&app, api(false)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(&app, api(true)).await.status, StatusCode::CREATED);
}

async fn members_only_projects_refuse_others(b: Backend) {
    let app = TestApp::new(b).await;
    let open = app.create_project(json!({"name": "open"})).await;
    let closed = app.create_project(json!({"name": "closed"})).await;
    for p in [&open, &closed] {
        app.import(
            p,
            "pairs",
            "{\"prompt\":\"p\",\"completion_a\":\"a\",\"completion_b\":\"b\"}\n",
        )
        .await;
    }
    let (ada, ada_token) = create_user(&app.store, "ada", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    let bob = app.annotator("bob").await;
    prefloop::store::members::add_member(&app.store, &closed, &ada.id)
        .await
        .unwrap();
    assert_eq!(app.next(&closed, &bob).await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.next(&open, &bob).await.0, StatusCode::OK);
    assert_eq!(app.next(&closed, &ada_token).await.0, StatusCode::OK);
    let bob_cookie = sign_in(&app, &bob).await;
    let home = get(&app, "/", &bob_cookie).await.body;
    assert!(home.contains("open") && !home.contains("closed"), "{home}");
    let r = get(&app, &format!("/projects/{closed}/annotate"), &bob_cookie).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

async fn release_by_beacon_with_csrf_in_the_query(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(
        &project,
        "pairs",
        "{\"prompt\":\"p\",\"completion_a\":\"a\",\"completion_b\":\"b\"}\n",
    )
    .await;
    let token = app.annotator("ada").await;
    let cookie = sign_in(&app, &token).await;
    let page = get(&app, "/", &cookie).await.body;
    let csrf = csrf_of(&page);
    let (_, lease) = app.next(&project, &token).await;
    let id = lease["lease_id"].as_str().unwrap();
    let release = |q: &str| {
        Request::post(format!("/api/v1/leases/{id}/release{q}"))
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, release("")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, release(&format!("?csrf={csrf}"))).await.status,
        StatusCode::NO_CONTENT
    );
    // The pair is free again: someone else gets it.
    let other = app.annotator("bob").await;
    let (status, got) = app.next(&project, &other).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["pair_id"], lease["pair_id"]);
}

async fn post_form(app: &TestApp, path: &str, cookie: &str, form: &[(&str, &str)]) -> Resp {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencoding(v)))
        .collect::<Vec<_>>()
        .join("&");
    send(
        app,
        Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

/// Percent-encodes a form value.
fn urlencoding(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A settings form, a new project or a new person that the server refuses comes back as the same page
/// with the reason beside the form and every field as typed, and nothing is saved.
async fn refused_admin_forms_keep_what_was_typed(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "taken"})).await;
    let cookie = sign_in(&app, &app.admin).await;
    let csrf = csrf_of(&get(&app, "/admin", &cookie).await.body);
    let path = format!("/admin/projects/{project}/settings");
    let settings = |beta: &'static str, per_pair: &'static str| {
        vec![
            ("csrf", csrf.as_str()),
            (
                "guidelines",
                "Prefer the kinder reply.\r\nNever the ruder one.",
            ),
            ("criterion", "Which is kinder?"),
            ("label_budget", "77"),
            ("strategy", "random"),
            ("lease_seconds", "300"),
            ("train_every", "16"),
            ("loss", "ipo"),
            ("beta", beta),
            ("learning_rate", "0.0001"),
            ("epochs", "3"),
            ("batch_size", "4"),
            ("schedule", "reset"),
            ("labels_per_pair", per_pair),
            ("display", "raw"),
        ]
    };
    for (beta, per_pair, why) in [
        ("warm", "2", "beta must be a number"),
        ("0.3", "0", "labels_per_pair"),
    ] {
        let r = post_form(&app, &path, &cookie, &settings(beta, per_pair)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.body.contains("id=\"settings-error\""), "{}", r.body);
        assert!(r.body.contains(why), "the reason {why:?} is shown");
        for kept in [
            "Prefer the kinder reply.\nNever the ruder one.</textarea>",
            "value=\"Which is kinder?\"",
            "name=\"label_budget\" type=\"number\" min=\"0\" step=\"1\" value=\"77\"",
            &format!("name=\"beta\" value=\"{beta}\""),
            "name=\"epochs\" value=\"3\"",
            &format!("value=\"{per_pair}\""),
            "<option selected>ipo</option>",
            "<option selected>random</option>",
            "<option selected>raw</option>",
        ] {
            assert!(r.body.contains(kept), "{kept:?} is kept in {}", r.body);
        }
    }
    let uri = format!("/api/v1/projects/{project}");
    let stored = app.json("GET", &uri, &app.admin, None).await.1;
    assert_eq!(stored["guidelines"], "", "nothing was saved");
    assert_eq!(
        stored["beta"],
        prefloop::domain::LoopSettings::default().beta,
        "the default stays"
    );
    // Corrected, the same form saves.
    let r = post_form(&app, &path, &cookie, &settings("0.3", "2")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let stored = app.json("GET", &uri, &app.admin, None).await.1;
    assert_eq!(stored["beta"], 0.3);
    assert_eq!(stored["labels_per_pair"], 2);

    let r = post_form(
        &app,
        "/admin/projects",
        &cookie,
        &[("csrf", &csrf), ("name", "taken"), ("label_budget", "500")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("id=\"project-error\""), "{}", r.body);
    assert!(r.body.contains("value=\"taken\"") && r.body.contains("value=\"500\""));
    let long = "n".repeat(201);
    let r = post_form(
        &app,
        "/admin/users",
        &cookie,
        &[("csrf", &csrf), ("name", &long), ("role", "admin")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("id=\"user-error\""), "{}", r.body);
    assert!(r.body.contains(&format!("value=\"{long}\"")));
    assert!(
        r.body
            .contains("<option value=\"admin\" selected>admin</option>")
    );
}

/// The dashboard redraws the loss chart from this fragment while a run trains: it shows the newest run
/// that has taken a step, so a run in progress appears as its steps land.
async fn the_loss_chart_follows_the_run_in_progress(b: Backend) {
    use prefloop::domain::{RewardStats, StepMetrics};
    use prefloop::store::training::{create_training_run, record_run_step};
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    let cookie = sign_in(&app, &app.admin).await;
    let chart = format!("/admin/projects/{project}/loss-chart");
    let empty = get(&app, &chart, &cookie).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.body.starts_with("<svg") && !empty.body.contains("class=\"dot\""));
    let step = |n: usize, loss: f64| StepMetrics {
        step: n,
        total_steps: 4,
        epoch: 0,
        loss,
        rewards: RewardStats::default(),
        grad_norm: 1.0,
        learning_rate: 1e-4,
        tokens: 100,
        seconds: 0.1,
        optimizer_seconds: 0.01,
    };
    let first = create_training_run(&app.store, &project, None)
        .await
        .unwrap();
    record_run_step(&app.store, &first.id, &step(1, 0.693))
        .await
        .unwrap();
    let r = get(&app, &chart, &cookie).await;
    assert!(r.body.contains("1 steps: 0.693"), "{}", r.body);
    let second = create_training_run(&app.store, &project, None)
        .await
        .unwrap();
    // Queued, no step yet: the chart still shows the run that has some.
    assert!(
        get(&app, &chart, &cookie)
            .await
            .body
            .contains("1 steps: 0.693")
    );
    record_run_step(&app.store, &second.id, &step(1, 0.70))
        .await
        .unwrap();
    record_run_step(&app.store, &second.id, &step(2, 0.41))
        .await
        .unwrap();
    let r = get(&app, &chart, &cookie).await;
    assert!(
        r.body.contains("2 steps: 0.410") && !r.body.contains("0.693"),
        "{}",
        r.body
    );
    // Annotators do not see it.
    let ada = app.annotator("ada").await;
    let ada_cookie = sign_in(&app, &ada).await;
    assert_eq!(
        get(&app, &chart, &ada_cookie).await.status,
        StatusCode::FORBIDDEN
    );
}
