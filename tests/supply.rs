//! What an annotator hears when no pair is free: `/next?wait=N` waits for one, a 204 says with
//! `Retry-After` whether more is coming, and the stats show the supply (ready pairs, decisive labels).

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use serde_json::json;

db_tests!(
    next_waits_for_a_pair_others_give_back,
    a_finished_project_answers_at_once_without_retry_after,
    wait_is_checked,
    stats_show_the_supply,
    metrics_show_each_project_s_supply_and_waiting,
);

fn pairs_ndjson(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"prompt": format!("p{i}"), "completion_a": "good", "completion_b": "bad"})
                .to_string()
                + "\n"
        })
        .collect()
}

/// `/next` with a wait, with the response's `Retry-After`.
async fn next_waiting(
    app: &TestApp,
    project: &str,
    token: &str,
    wait: &str,
) -> (StatusCode, serde_json::Value, Option<String>) {
    let (status, body, headers) = app
        .call_with_headers(
            "POST",
            &format!("/api/v1/projects/{project}/next?wait={wait}"),
            Some(token),
            None,
            &[],
        )
        .await;
    let retry = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, body, retry)
}

async fn next_waits_for_a_pair_others_give_back(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app
        .create_project(json!({"name": "p", "lease_seconds": 600}))
        .await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    let (status, held) = app.next(&project, &a1).await;
    assert_eq!(status, StatusCode::OK);

    // The only pair is a1's: nothing now, but it may come back, so a2 is told when to ask again.
    let (status, _, retry) = next_waiting(&app, &project, &a2, "0").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let secs: u64 = retry
        .expect("Retry-After while a pair may come back")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&secs));

    // a2 waits; a1 gives the pair back meanwhile, and a2's request answers with it.
    let lease = held["lease_id"].as_str().unwrap().to_string();
    let give_back = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _) = app
            .call(
                "POST",
                &format!("/api/v1/leases/{lease}/release"),
                Some(&a1),
                None,
                &[],
            )
            .await;
        assert!(status.is_success(), "release: {status}");
    };
    let ((status, got, _), ()) = tokio::join!(next_waiting(&app, &project, &a2, "20"), give_back);
    assert_eq!(status, StatusCode::OK, "the waiting request got the pair");
    assert_eq!(got["pair_id"], held["pair_id"]);
}

async fn a_finished_project_answers_at_once_without_retry_after(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    // No pairs and no model: finished.
    let empty = app.create_project(json!({"name": "empty"})).await;
    let quick = Duration::from_secs(10);
    let (status, _, retry) = tokio::time::timeout(quick, next_waiting(&app, &empty, &a1, "30"))
        .await
        .expect("a finished project does not make the caller wait");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(retry, None, "nothing is coming");

    // A spent budget: finished, although a pair is still pending.
    let spent = app
        .create_project(json!({"name": "spent", "label_budget": 1}))
        .await;
    app.import(&spent, "pairs", &pairs_ndjson(2)).await;
    let (_, l) = app.next(&spent, &a1).await;
    let (status, _) = app
        .judge(l["lease_id"].as_str().unwrap(), &a1, "left")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, retry) = tokio::time::timeout(quick, next_waiting(&app, &spent, &a2, "30"))
        .await
        .expect("a spent budget does not make the caller wait");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(retry, None);
}

async fn wait_is_checked(b: Backend) {
    let app = TestApp::new(b).await;
    let a1 = app.annotator("a1").await;
    let project = app.create_project(json!({"name": "p"})).await;
    let (status, e, _) = next_waiting(&app, &project, &a1, "31").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"].as_str().unwrap().contains("0 to 30"), "{e}");
    let (status, _, _) = next_waiting(&app, &project, &a1, "soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The workbench's call takes the same parameter.
    let (status, _) = app
        .call(
            "POST",
            &format!("/ui/api/projects/{project}/next?wait=99"),
            Some(&a1),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn stats_show_the_supply(b: Backend) {
    let app = TestApp::new(b).await;
    let a1 = app.annotator("a1").await;
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(4)).await;
    for choice in ["left", "tie", "skip"] {
        let (_, l) = app.next(&project, &a1).await;
        app.judge(l["lease_id"].as_str().unwrap(), &a1, choice)
            .await;
    }
    let (_, held) = app.next(&project, &a1).await;
    assert!(held["lease_id"].is_string());
    let s = app.stats(&project).await;
    assert_eq!(s["labels"], 2, "{s}");
    assert_eq!(s["decisive_labels"], 1, "a tie teaches DPO nothing: {s}");
    // The skipped pair is pending again, free for others; the held one is leased.
    assert_eq!(s["pending_pairs"], 2, "{s}");
    assert_eq!(s["leased_pairs"], 1, "{s}");
    assert_eq!(s["ready_pairs"], 1, "{s}");
    assert_eq!(s["generating"], false, "no model: {s}");
    assert_eq!(s["pairs_coming"], 0, "{s}");
    assert_eq!(
        s["pairs_per_minute"], 0.0,
        "imported pairs are not made by the model: {s}"
    );
}

async fn metrics_show_each_project_s_supply_and_waiting(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(2)).await;
    let (_, l) = app.next(&project, &a1).await;
    app.judge(l["lease_id"].as_str().unwrap(), &a1, "left")
        .await;
    let (_, _held) = app.next(&project, &a1).await;
    // a2 waits a second for the pair a1 holds, and gets none.
    let (status, _, retry) = next_waiting(&app, &project, &a2, "1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(retry.is_some());
    let (status, body) = app.call("GET", "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{project=\"{project}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} for the project in:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("prefloop_ready_pairs"), 0.0, "the pair left is held");
    assert_eq!(
        value("prefloop_answers_per_minute"),
        0.1,
        "one answer in ten minutes"
    );
    assert_eq!(value("prefloop_pairs_made_per_minute"), 0.0);
    assert!(value("prefloop_wait_seconds_total") >= 0.5, "a2 waited");
}
