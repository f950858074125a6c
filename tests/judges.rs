//! AI judges answering leases by themselves, with no model loaded: the built-in sentiment judge, and an
//! HTTP judge against a fake OpenAI-compatible endpoint (retries, A/B order, unparseable answers).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Backend, TestApp};
use prefloop::engine::active_loop::{ActiveLoop, LoopConfig};
use prefloop::http::{AppState, HttpConfig};
use serde_json::{Value, json};

db_tests!(
    sentiment_judge_prefers_the_positive_side,
    http_judge_maps_its_answers_back,
    an_evaluation_judge_spends_no_label,
);

async fn start_loop(app: &mut TestApp) -> ActiveLoop {
    let config = LoopConfig {
        tick: Duration::from_millis(50),
        ..LoopConfig::default()
    };
    let active = ActiveLoop::start(app.store.clone(), None, config)
        .await
        .unwrap();
    app.router = prefloop::http::app(
        AppState::new(app.store.clone(), HttpConfig::default()).with_loop(active.clone()),
    );
    active
}

async fn wait_for_labels(app: &TestApp, project: &str, n: i64) {
    let start = Instant::now();
    loop {
        let s = app.stats(project).await;
        if s["labels"].as_i64().unwrap_or(0) + s["skips"].as_i64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "judges did not answer: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn good_bad_pairs(n: usize) -> String {
    (0..n)
        .map(|i| json!({"prompt": format!("Review {i}:"), "completion_a": "a wonderful, moving and beautiful film", "completion_b": "a dull, boring and terrible mess"}).to_string() + "\n")
        .collect()
}

async fn sentiment_judge_prefers_the_positive_side(b: Backend) {
    let mut app = TestApp::new(b).await;
    start_loop(&mut app).await;
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &good_bad_pairs(5)).await;
    let (status, e) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/judges"),
            &app.admin,
            Some(json!({"kind": "oracle"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (status, j) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/judges"),
            &app.admin,
            Some(json!({"kind": "sentiment", "rate_per_minute": 6000})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    wait_for_labels(&app, &project, 5).await;
    let trl = app.export(&project, "trl").await;
    assert_eq!(trl.len(), 5);
    assert!(
        trl.iter()
            .all(|r| r["chosen"] == "a wonderful, moving and beautiful film")
    );
    let (status, list) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/judges"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// A fake chat-completions endpoint: prefers whichever of A/B says "GOOD", fails the first call with a
/// 500, and cannot decide when a continuation says "CONFUSE".
async fn fake_llm(calls: Arc<AtomicUsize>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": "warming up"})));
                }
                assert_eq!(headers.get("authorization").unwrap(), "Bearer sk-test", "the key from the env var is sent");
                let text = body["messages"][0]["content"].as_str().unwrap().to_string();
                let a = text.split("Continuation A:").nth(1).unwrap().split("Continuation B:").next().unwrap();
                let answer = if text.contains("CONFUSE") {
                    "They are equally fine; I cannot choose.".to_string()
                } else if a.contains("GOOD") {
                    "A is better.\nPreferred: A".to_string()
                } else {
                    "B is better.\nPreferred: B".to_string()
                };
                (StatusCode::OK, axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": answer}}]})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1/chat/completions")
}

async fn http_judge_maps_its_answers_back(b: Backend) {
    // SAFETY: set once before any judge reads it; the other tests do not read this variable.
    unsafe { std::env::set_var("PREFLOOP_TEST_JUDGE_KEY", "sk-test") };
    let calls = Arc::new(AtomicUsize::new(0));
    let url = fake_llm(calls.clone()).await;
    let mut app = TestApp::new(b).await;
    start_loop(&mut app).await;
    let project = app
        .create_project(json!({"name": "p", "guidelines": "Prefer GOOD."}))
        .await;
    let mut body: String = (0..6)
        .map(|i| json!({"prompt": format!("q{i}"), "completion_a": format!("GOOD answer {i}"), "completion_b": format!("poor answer {i}")}).to_string() + "\n")
        .collect();
    body.push_str(
        &(json!({"prompt": "odd", "completion_a": "CONFUSE one", "completion_b": "CONFUSE two"})
            .to_string()
            + "\n"),
    );
    app.import(&project, "pairs", &body).await;

    let (status, e) = app.json("POST", &format!("/api/v1/projects/{project}/judges"), &app.admin, Some(json!({"kind": "http", "url": url, "model": "m", "api_key_env": "PREFLOOP_TEST_JUDGE_KEY_MISSING"}))).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a missing key variable is refused up front: {e}"
    );
    let (status, e) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/judges"),
            &app.admin,
            Some(json!({"kind": "http", "url": url, "model": "m", "colour": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"].as_str().unwrap().contains("colour"), "{e}");
    let (status, j) = app.json("POST", &format!("/api/v1/projects/{project}/judges"), &app.admin, Some(json!({"kind": "http", "url": url, "model": "m", "api_key_env": "PREFLOOP_TEST_JUDGE_KEY", "rate_per_minute": 6000}))).await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    assert!(
        !j["settings"].to_string().contains("sk-test"),
        "the key itself is never stored"
    );

    wait_for_labels(&app, &project, 7).await;
    let trl = app.export(&project, "trl").await;
    assert_eq!(
        trl.len(),
        6,
        "the A/B order was random, yet every GOOD answer came out chosen"
    );
    assert!(
        trl.iter()
            .all(|r| r["chosen"].as_str().unwrap().starts_with("GOOD"))
    );
    let full = app.export(&project, "full").await;
    let skip = full
        .iter()
        .find(|r| r["choice"] == "skip")
        .expect("the undecided answer is a skip");
    assert!(
        skip["rationale"]
            .as_str()
            .unwrap()
            .contains("cannot choose"),
        "raw text kept: {skip}"
    );
    assert!(full.iter().all(|r| r["annotator_kind"] == "ai"));
    assert!(
        calls.load(Ordering::SeqCst) >= 8,
        "the failed first call was retried"
    );
}

/// `"role": "evaluate"`: the judge scores versions (with a model loaded; see tests/active_loop.rs) and
/// never answers a pair, while a labelling judge beside it does.
async fn an_evaluation_judge_spends_no_label(b: Backend) {
    let mut app = TestApp::new(b).await;
    start_loop(&mut app).await;
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &good_bad_pairs(4)).await;
    let judges = format!("/api/v1/projects/{project}/judges");
    let (status, e) = app
        .json(
            "POST",
            &judges,
            &app.admin,
            Some(json!({"kind": "http", "role": "evaluate", "url": "http://127.0.0.1:9/v1/chat/completions", "model": "m"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"].as_str().unwrap().contains("evaluate"), "{e}");
    let (status, e) = app
        .json(
            "POST",
            &judges,
            &app.admin,
            Some(json!({"kind": "sentiment", "role": "grade"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");

    let (status, j) = app
        .json(
            "POST",
            &judges,
            &app.admin,
            Some(json!({"kind": "sentiment", "role": "evaluate", "rate_per_minute": 6000})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    assert_eq!(j["settings"]["role"], "evaluate");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = app.stats(&project).await;
    assert_eq!(s["labels"], 0, "an evaluation judge answered a pair: {s}");
    assert_eq!(s["ready_pairs"], 4, "{s}");

    // A labelling judge beside it answers them all.
    let (status, j) = app
        .json(
            "POST",
            &judges,
            &app.admin,
            Some(json!({"kind": "sentiment", "rate_per_minute": 6000})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    assert_eq!(j["settings"]["role"], "label");
    wait_for_labels(&app, &project, 4).await;
}
