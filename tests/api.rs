//! The REST contract of issue 2, over the real router, on SQLite and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::collections::HashSet;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use prefloop::http::HttpConfig;
use serde_json::{Value, json};

db_tests!(
    projects_contract,
    auth_is_enforced,
    import_reports_bad_lines_and_stores_good_ones,
    import_over_the_limit_is_413_and_stores_nothing,
    reimport_does_not_duplicate,
    lines_without_ids_are_deduplicated_by_content,
    left_right_mapping_survives_export,
    twenty_annotators_never_share_a_pair,
    a_budget_is_spent_exactly_by_annotators_at_once,
    same_lease_until_answered_and_expiry_reclaims,
    answers_are_idempotent_and_guarded,
    undo_supersedes_and_returns_the_pair,
    budget_exhaustion_gives_204,
    export_leaves_out_ties_skips_and_superseded,
    heartbeat_and_release,
    service_endpoints,
);

fn pairs_ndjson(n: usize) -> String {
    (0..n)
        .map(|i| json!({"prompt": format!("prompt {i}"), "completion_a": format!("a{i}"), "completion_b": format!("b{i}")}).to_string() + "\n")
        .collect()
}

async fn projects_contract(b: Backend) {
    let app = TestApp::new(b).await;
    let (status, p) = app
        .json("POST", "/api/v1/projects", &app.admin, Some(json!({"name": "reviews", "guidelines": "# Be kind", "label_budget": 100, "strategy": "hybrid"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["name"], "reviews");
    assert_eq!(p["label_budget"], 100);
    assert_eq!(p["strategy"], "hybrid");
    assert_eq!(p["guidelines"], "# Be kind");
    let id = p["id"].as_str().unwrap();

    let (status, list) = app.json("GET", "/api/v1/projects", &app.admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, got) = app
        .json("GET", &format!("/api/v1/projects/{id}"), &app.admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], id);

    // Same name again: 409. Unknown field: 422 naming it. Bad JSON: 400. Bad strategy: 422.
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"name": "reviews"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error_type"], "conflict");
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"name": "x", "colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"].as_str().unwrap().contains("colour"), "{e}");
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/projects",
            Some(&app.admin),
            Some(b"{\"name\":".to_vec()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"name": "y", "strategy": "best"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"name": "y", "label_budget": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"guidelines": "no name"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // PATCH changes only what it names; null lifts the budget.
    let (status, p) = app
        .json(
            "PATCH",
            &format!("/api/v1/projects/{id}"),
            &app.admin,
            Some(json!({"label_budget": null, "beta": 0.1, "entropy_estimator": "tokens"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["label_budget"], Value::Null);
    assert_eq!(p["beta"], 0.1);
    assert_eq!(p["entropy_estimator"], "tokens");
    assert_eq!(p["strategy"], "hybrid");

    let (status, e) = app
        .json("GET", "/api/v1/projects/nope", &app.admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error_type"], "not_found");
}

async fn auth_is_enforced(b: Backend) {
    let app = TestApp::new(b).await;
    let ann = app.annotator("ann").await;
    let (status, e) = app.call("GET", "/api/v1/projects", None, None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let e: Value = serde_json::from_slice(&e).unwrap();
    assert_eq!(e["error_type"], "unauthorized");
    let (status, _) = app.json("GET", "/api/v1/projects", "pfl_wrong", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, e) = app.json("GET", "/api/v1/projects", &ann, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    let (status, _) = app
        .json("POST", "/api/v1/projects", &ann, Some(json!({"name": "p"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let project = app.create_project(json!({"name": "p"})).await;
    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/projects/{project}/pairs"),
            Some(&ann),
            Some(pairs_ndjson(1).into_bytes()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/projects/{project}/export"),
            Some(&ann),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A revoked token stops working at once.
    let (status, created) = app
        .json(
            "POST",
            "/api/v1/users",
            &app.admin,
            Some(json!({"name": "temp", "role": "annotator"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = created["token"].as_str().unwrap();
    assert_eq!(app.next(&project, token).await.0, StatusCode::NO_CONTENT);
    let uid = created["user"]["id"].as_str().unwrap();
    let (status, _) = app
        .json(
            "POST",
            &format!("/api/v1/users/{uid}/revoke"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.next(&project, token).await.0, StatusCode::UNAUTHORIZED);
}

async fn import_reports_bad_lines_and_stores_good_ones(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    let long = "x".repeat(300 * 1024);
    let mut body = Vec::new();
    body.extend_from_slice(
        b"{\"prompt\": \"fine\", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n",
    ); // 1 ok
    body.extend_from_slice(b"{\"prompt\": \"broken\"\n"); // 2 bad JSON
    body.extend_from_slice(b"{\"prompt\": \"p\", \"completion_a\": \"a\"}\n"); // 3 missing field
    body.extend_from_slice(b"\n"); // 4 blank: ignored
    body.extend_from_slice(
        b"{\"prompt\": \"  \", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n",
    ); // 5 empty
    body.extend_from_slice(
        b"{\"prompt\": \"\xff\xfe\", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n",
    ); // 6 bad UTF-8
    body.extend_from_slice(
        format!("{{\"prompt\": \"p\", \"completion_a\": \"{long}\", \"completion_b\": \"b\"}}\n")
            .as_bytes(),
    ); // 7 too big
    body.extend_from_slice(b"{\"prompt\": \"ok too\", \"completion_a\": \"a\", \"completion_b\": \"b\", \"meta\": {\"k\": 1}}"); // 8 ok, no newline
    let (status, report) = app
        .call(
            "POST",
            &format!("/api/v1/projects/{project}/pairs"),
            Some(&app.admin),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let report: Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["inserted"], 2, "{report}");
    let lines: Vec<u64> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 5, 6, 7], "{report}");
    let errors: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert!(errors[1].contains("completion_b"), "{errors:?}");
    assert!(errors[3].contains("UTF-8"), "{errors:?}");
    assert!(errors[4].contains("limit"), "{errors:?}");

    let report = app
        .import(
            &project,
            "prompts",
            "{\"prompt\": \"a prompt\", \"id\": 7}\n{\"text\": \"wrong field\"}\n",
        )
        .await;
    assert_eq!(report["inserted"], 1);
    assert_eq!(report["rejected"][0]["line"], 2);
    let stats = app.stats(&project).await;
    assert_eq!(stats["pending_pairs"], 2, "{stats}");

    let (status, _) = app
        .call(
            "POST",
            "/api/v1/projects/unknown/pairs",
            Some(&app.admin),
            Some(pairs_ndjson(1).into_bytes()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn import_over_the_limit_is_413_and_stores_nothing(b: Backend) {
    let app = TestApp::with_config(
        b,
        HttpConfig {
            max_import_bytes: 4096,
            ..HttpConfig::default()
        },
    )
    .await;
    let project = app.create_project(json!({"name": "p"})).await;
    let (status, e) = app
        .call(
            "POST",
            &format!("/api/v1/projects/{project}/pairs"),
            Some(&app.admin),
            Some(pairs_ndjson(200).into_bytes()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value = serde_json::from_slice(&e).unwrap();
    assert_eq!(e["error_type"], "payload_too_large");
    let stats = app.stats(&project).await;
    assert_eq!(stats["pending_pairs"], 0);
    assert_eq!(stats["prompts"], 0);
}

async fn reimport_does_not_duplicate(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    let prompts = "{\"prompt\": \"one\", \"id\": \"p1\"}\n{\"prompt\": \"two\", \"id\": \"p2\"}\n";
    assert_eq!(
        app.import(&project, "prompts", prompts).await["inserted"],
        2
    );
    let again = app.import(&project, "prompts", prompts).await;
    assert_eq!(again["inserted"], 0);
    assert_eq!(again["duplicates"], 2);
    let pairs =
        "{\"id\": \"x\", \"prompt\": \"one\", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n";
    assert_eq!(app.import(&project, "pairs", pairs).await["inserted"], 1);
    assert_eq!(app.import(&project, "pairs", pairs).await["inserted"], 0);
    let stats = app.stats(&project).await;
    assert_eq!(
        stats["prompts"], 2,
        "a pair's prompt text reuses the existing prompt: {stats}"
    );
    assert_eq!(stats["pending_pairs"], 1);
}

/// Lines without an `id` are known by their content: a file imported twice, or a line repeated in one
/// file, is stored once and counted as a duplicate; a pair with two equal completions is stored with a
/// warning naming its line.
async fn lines_without_ids_are_deduplicated_by_content(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    let prompts = "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\n{\"prompt\": \"one\"}\n";
    let first = app.import(&project, "prompts", prompts).await;
    assert_eq!(
        (first["inserted"].as_u64(), first["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{first}"
    );
    let again = app.import(&project, "prompts", prompts).await;
    assert_eq!(
        (again["inserted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(3)),
        "{again}"
    );

    let pairs = concat!(
        "{\"prompt\": \"one\", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n",
        "{\"prompt\": \"one\", \"completion_a\": \"a\", \"completion_b\": \"b\"}\n",
        "{\"prompt\": \"one\", \"completion_a\": \"b\", \"completion_b\": \"a\"}\n",
        "{\"prompt\": \"two\", \"completion_a\": \"same\", \"completion_b\": \"same\"}\n",
    );
    let first = app.import(&project, "pairs", pairs).await;
    assert_eq!(
        (first["inserted"].as_u64(), first["duplicates"].as_u64()),
        (Some(3), Some(1)),
        "{first}"
    );
    assert_eq!(first["warnings"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["warnings"][0]["line"], 4, "{first}");
    assert!(
        first["warnings"][0]["warning"]
            .as_str()
            .unwrap()
            .contains("same text"),
        "{first}"
    );
    let again = app.import(&project, "pairs", pairs).await;
    assert_eq!(
        (again["inserted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(4)),
        "{again}"
    );
    let stats = app.stats(&project).await;
    assert_eq!(stats["pending_pairs"], 3, "{stats}");
    assert_eq!(stats["prompts"], 2, "{stats}");
}

async fn left_right_mapping_survives_export(b: Backend) {
    let app = TestApp::new(b).await;
    let ann = app.annotator("ann").await;
    let project = app.create_project(json!({"name": "p"})).await;
    let body: String = (0..16)
        .map(|i| json!({"prompt": format!("q{i}"), "completion_a": format!("GOOD {i}"), "completion_b": format!("BAD {i}")}).to_string() + "\n")
        .collect();
    app.import(&project, "pairs", &body).await;
    let mut lefts = HashSet::new();
    for _ in 0..16 {
        let (status, lease) = app.next(&project, &ann).await;
        assert_eq!(status, StatusCode::OK);
        let good_on_left = lease["left"].as_str().unwrap().starts_with("GOOD");
        lefts.insert(good_on_left);
        let choice = if good_on_left { "left" } else { "right" };
        let (status, j) = app
            .judge(lease["lease_id"].as_str().unwrap(), &ann, choice)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{j}");
    }
    assert_eq!(lefts.len(), 2, "the shown order is randomised per lease");
    let rows = app.export(&project, "trl").await;
    assert_eq!(rows.len(), 16);
    for r in &rows {
        assert_eq!(
            r.as_object().unwrap().len(),
            3,
            "trl lines are exactly prompt/chosen/rejected: {r}"
        );
        assert!(r["chosen"].as_str().unwrap().starts_with("GOOD"), "{r}");
        assert!(r["rejected"].as_str().unwrap().starts_with("BAD"), "{r}");
    }
    for r in app.export(&project, "full").await {
        assert_eq!(r["winner"], "a");
        assert_eq!(r["annotator"], "ann");
    }
}

/// Forty annotators labelling at once against a budget of 25: claims run side by side while the budget
/// has room for every claim in flight (PostgreSQL: a shared lock), one at a time near its end (the
/// exclusive one), and the budget is spent exactly, never passed.
async fn a_budget_is_spent_exactly_by_annotators_at_once(b: Backend) {
    const BUDGET: usize = 25;
    let app = std::sync::Arc::new(TestApp::new(b).await);
    let project = app
        .create_project(json!({"name": "p", "label_budget": BUDGET}))
        .await;
    app.import(&project, "pairs", &pairs_ndjson(60)).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = app.annotator(&format!("ann{i}")).await;
        let (app, project) = (app.clone(), project.clone());
        tasks.push(tokio::spawn(async move {
            let mut labelled = 0;
            for _ in 0..3 {
                let (status, lease) = app.next(&project, &token).await;
                if status == StatusCode::NO_CONTENT {
                    break;
                }
                assert_eq!(status, StatusCode::OK, "{lease}");
                let (status, j) = app
                    .judge(lease["lease_id"].as_str().unwrap(), &token, "left")
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{j}");
                labelled += 1;
            }
            labelled
        }));
    }
    let mut labels = 0;
    for t in tasks {
        labels += t.await.unwrap();
    }
    assert_eq!(labels, BUDGET, "every label the budget allows, and no more");
    assert_eq!(app.export(&project, "full").await.len(), BUDGET);
}

async fn twenty_annotators_never_share_a_pair(b: Backend) {
    let app = std::sync::Arc::new(TestApp::new(b).await);
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(30)).await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(app.annotator(&format!("ann{i}")).await);
    }
    let mut tasks = Vec::new();
    for t in tokens {
        let (app, project) = (app.clone(), project.clone());
        tasks.push(tokio::spawn(async move { app.next(&project, &t).await }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let (status, lease) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{lease}");
        assert!(
            seen.insert(lease["pair_id"].as_str().unwrap().to_string()),
            "pair leased twice"
        );
    }
    assert_eq!(seen.len(), 20);
}

async fn same_lease_until_answered_and_expiry_reclaims(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app
        .create_project(json!({"name": "p", "lease_seconds": 60}))
        .await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    let (_, first) = app.next(&project, &a1).await;
    let (_, again) = app.next(&project, &a1).await;
    assert_eq!(
        first["lease_id"], again["lease_id"],
        "asking again returns the same lease"
    );
    assert_eq!(first["left"], again["left"]);
    assert_eq!(
        app.next(&project, &a2).await.0,
        StatusCode::NO_CONTENT,
        "a leased pair is not handed to another"
    );
    let leased_pairs = async || {
        let uri = format!("/api/v1/projects/{project}/stats");
        app.json("GET", &uri, &app.admin, None).await.1["leased_pairs"].clone()
    };
    assert_eq!(leased_pairs().await, json!(1));
    // Let the lease run out on the store's clock rather than the wall clock.
    app.store
        .clock()
        .advance(std::time::Duration::from_secs(61));
    assert_eq!(
        leased_pairs().await,
        json!(0),
        "an expired lease holds nothing"
    );
    let (status, taken) = app.next(&project, &a2).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an expired lease returns its pair to the pool"
    );
    assert_eq!(taken["pair_id"], first["pair_id"]);
    // The first annotator's expired lease was re-leased: answering it now is a conflict.
    let (status, e) = app
        .judge(first["lease_id"].as_str().unwrap(), &a1, "left")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    let (status, _) = app
        .judge(taken["lease_id"].as_str().unwrap(), &a2, "left")
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn answers_are_idempotent_and_guarded(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(3)).await;
    let (_, lease) = app.next(&project, &a1).await;
    let lease_id = lease["lease_id"].as_str().unwrap();
    let (status, j1) = app.judge(lease_id, &a2, "left").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{j1}");
    let (status, j1) = app.judge(lease_id, &a1, "tie").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(j1["choice"], "tie");
    let (status, j2) = app.judge(lease_id, &a1, "tie").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(j1["id"], j2["id"]);
    let (status, _) = app.judge(lease_id, &a1, "left").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, e) = app
        .judge("00000000-0000-0000-0000-000000000000", &a1, "left")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = app.judge(lease_id, &a1, "maybe").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let rows = app.export(&project, "full").await;
    assert_eq!(rows.len(), 1, "a repeated answer never makes a second row");

    // With an idempotency key, the retry is recognised by the key.
    let (_, lease) = app.next(&project, &a1).await;
    let uri = format!(
        "/api/v1/leases/{}/judgment",
        lease["lease_id"].as_str().unwrap()
    );
    let body = json!({"choice": "right", "rationale": "clearer"})
        .to_string()
        .into_bytes();
    let (s1, r1) = app
        .call(
            "POST",
            &uri,
            Some(&a1),
            Some(body.clone()),
            &[("idempotency-key", "k-1")],
        )
        .await;
    let (s2, r2) = app
        .call(
            "POST",
            &uri,
            Some(&a1),
            Some(body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(r1, r2);
}

async fn undo_supersedes_and_returns_the_pair(b: Backend) {
    let app = TestApp::new(b).await;
    let ann = app.annotator("ann").await;
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(2)).await;
    let (status, _) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/undo"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing to undo yet");
    let (_, lease) = app.next(&project, &ann).await;
    app.judge(lease["lease_id"].as_str().unwrap(), &ann, "left")
        .await;
    let (status, undo) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/undo"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{undo}");
    assert_eq!(undo["undone"]["choice"], "left");
    assert!(undo["undone"]["superseded_at"].is_string());
    assert_eq!(
        undo["lease"]["pair_id"], lease["pair_id"],
        "the pair goes back to that annotator"
    );
    let (_, next) = app.next(&project, &ann).await;
    assert_eq!(next["lease_id"], undo["lease"]["lease_id"]);
    let (status, _) = app
        .judge(next["lease_id"].as_str().unwrap(), &ann, "right")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let full = app.export(&project, "full").await;
    assert_eq!(full.len(), 2, "the undone judgment is kept");
    assert_eq!(
        full.iter()
            .filter(|r| r["superseded_at"].is_string())
            .count(),
        1
    );
    let trl = app.export(&project, "trl").await;
    assert_eq!(trl.len(), 1);
    assert_eq!(
        trl[0]["chosen"], next["right"],
        "the answer after the undo counts"
    );
    let (_, stats) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/stats"),
            &ann,
            None,
        )
        .await;
    assert_eq!(stats["labels"], 1);
}

async fn budget_exhaustion_gives_204(b: Backend) {
    let app = TestApp::new(b).await;
    let ann = app.annotator("ann").await;
    let project = app
        .create_project(json!({"name": "p", "label_budget": 2}))
        .await;
    app.import(&project, "pairs", &pairs_ndjson(5)).await;
    let (_, l) = app.next(&project, &ann).await;
    app.judge(l["lease_id"].as_str().unwrap(), &ann, "skip")
        .await; // a skip spends nothing
    for _ in 0..2 {
        let (status, l) = app.next(&project, &ann).await;
        assert_eq!(status, StatusCode::OK);
        app.judge(l["lease_id"].as_str().unwrap(), &ann, "both_bad")
            .await;
    }
    assert_eq!(app.next(&project, &ann).await.0, StatusCode::NO_CONTENT);
    let stats = app.stats(&project).await;
    assert_eq!(stats["labels"], 2);
    assert_eq!(stats["remaining"], 0);
    assert_eq!(stats["label_budget"], 2);
    assert_eq!(stats["annotators"], 1);
    // Raising the budget reopens the queue.
    app.json(
        "PATCH",
        &format!("/api/v1/projects/{project}"),
        &app.admin,
        Some(json!({"label_budget": 3})),
    )
    .await;
    assert_eq!(app.next(&project, &ann).await.0, StatusCode::OK);
}

async fn export_leaves_out_ties_skips_and_superseded(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(5)).await;
    for choice in ["left", "tie", "skip", "both_bad", "right"] {
        let (_, l) = app.next(&project, &a1).await;
        let (status, _) = app
            .judge(l["lease_id"].as_str().unwrap(), &a1, choice)
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // The skipped pair is free for someone else, not for the one who skipped it.
    let (status, l) = app.next(&project, &a2).await;
    assert_eq!(status, StatusCode::OK);
    app.judge(l["lease_id"].as_str().unwrap(), &a2, "left")
        .await;
    assert_eq!(app.next(&project, &a1).await.0, StatusCode::NO_CONTENT);

    let trl = app.export(&project, "trl").await;
    assert_eq!(
        trl.len(),
        3,
        "left, right and a2's answer; ties, both-bad and skips left out"
    );
    let full = app.export(&project, "full").await;
    assert_eq!(full.len(), 6);
    let choices: Vec<&str> = full.iter().map(|r| r["choice"].as_str().unwrap()).collect();
    assert_eq!(
        choices,
        vec!["left", "tie", "skip", "both_bad", "right", "left"]
    );
    for key in [
        "judgment_id",
        "pair_id",
        "annotator",
        "choice",
        "left",
        "model_version",
        "acquisition_score",
        "created_at",
    ] {
        assert!(full[0].get(key).is_some(), "full export has {key}");
    }
    let (status, e) = app
        .call(
            "GET",
            &format!("/api/v1/projects/{project}/export?format=csv"),
            Some(&app.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&e)
    );
}

async fn heartbeat_and_release(b: Backend) {
    let app = TestApp::new(b).await;
    let (a1, a2) = (app.annotator("a1").await, app.annotator("a2").await);
    let project = app.create_project(json!({"name": "p"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    let (_, l) = app.next(&project, &a1).await;
    let id = l["lease_id"].as_str().unwrap();
    let (status, hb) = app
        .json("POST", &format!("/api/v1/leases/{id}/heartbeat"), &a1, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{hb}");
    assert!(hb["expires_at"].as_str().unwrap() >= l["expires_at"].as_str().unwrap());
    let (status, _) = app
        .json("POST", &format!("/api/v1/leases/{id}/heartbeat"), &a2, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.next(&project, &a2).await.0, StatusCode::NO_CONTENT);
    let (status, _) = app
        .json("POST", &format!("/api/v1/leases/{id}/release"), &a1, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, l2) = app.next(&project, &a2).await;
    assert_eq!(status, StatusCode::OK, "a released pair is free at once");
    assert_eq!(l2["pair_id"], l["pair_id"]);
    let (status, _) = app
        .json("POST", &format!("/api/v1/leases/{id}/heartbeat"), &a1, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

async fn service_endpoints(b: Backend) {
    let app = TestApp::new(b).await;
    let (status, body) = app.call("GET", "/healthz", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("ok"));
    let (status, body) = app.call("GET", "/api/openapi.json", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/{id}/next",
        "/api/v1/leases/{id}/judgment",
        "/api/v1/projects/{id}/export",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lists {path}");
    }
    let (status, body) = app.call("GET", "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("prefloop_http_responses_total{class=\"2xx\"}"),
        "{text}"
    );
    assert!(text.contains("prefloop_users 1"), "{text}");
}
