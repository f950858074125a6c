//! Issue 12, the store's part: what the store refuses and what it guards against, over the real router,
//! on SQLite and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use serde_json::{Value, json};

db_tests!(
    nul_characters_are_refused_by_field_and_by_line,
    identical_judgments_sent_together_are_one_judgment,
    undoing_a_skip_never_takes_the_pair_from_someone_else,
    a_removed_member_loses_the_lease_they_hold,
    a_bom_and_multibyte_names_are_read_as_text,
    a_model_completion_holding_nul_is_stored_without_it,
);

fn assert_names(status: StatusCode, e: &Value, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error_type"], "validation", "{e}");
    let message = e["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("\"{field}\"")) && message.contains("NUL"),
        "{e}"
    );
}

async fn nul_characters_are_refused_by_field_and_by_line(b: Backend) {
    let app = TestApp::new(b).await;
    let nul = "before\u{0}after";

    // JSON bodies: a 422 naming the field, nothing stored.
    for body in [
        json!({"name": nul}),
        json!({"name": "p", "guidelines": nul}),
    ] {
        let field = if body["name"] == nul {
            "name"
        } else {
            "guidelines"
        };
        let (status, e) = app
            .json("POST", "/api/v1/projects", &app.admin, Some(body))
            .await;
        assert_names(status, &e, field);
    }
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/users",
            &app.admin,
            Some(json!({"name": nul, "role": "annotator"})),
        )
        .await;
    assert_names(status, &e, "name");
    let project = app.create_project(json!({"name": "p"})).await;
    let (status, e) = app
        .json(
            "PATCH",
            &format!("/api/v1/projects/{project}"),
            &app.admin,
            Some(json!({"guidelines": nul})),
        )
        .await;
    assert_names(status, &e, "guidelines");

    // NDJSON: that line is refused by number, the others are stored.
    let pairs = [
        json!({"prompt": "one", "completion_a": "a", "completion_b": "b"}),
        json!({"prompt": nul, "completion_a": "a", "completion_b": "b"}),
        json!({"prompt": "three", "completion_a": "a", "completion_b": nul}),
        json!({"prompt": "four", "completion_a": "a", "completion_b": "b"}),
    ];
    let body: String = pairs.iter().map(|p| format!("{p}\n")).collect();
    let report = app.import(&project, "pairs", &body).await;
    assert_eq!(report["inserted"], 2, "{report}");
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{report}");
    assert_eq!(rejected[0]["line"], 2);
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("\"prompt\"")
    );
    assert_eq!(rejected[1]["line"], 3);
    assert!(
        rejected[1]["error"]
            .as_str()
            .unwrap()
            .contains("\"completion_b\"")
    );
    let prompts = format!(
        "{}\n{}\n",
        json!({"prompt": "fine"}),
        json!({"prompt": nul})
    );
    let report = app.import(&project, "prompts", &prompts).await;
    assert_eq!(report["inserted"], 1, "{report}");
    assert_eq!(report["rejected"][0]["line"], 2, "{report}");

    // A rationale or a flag note: 422, and the lease is still there to answer properly.
    let ada = app.annotator("ada").await;
    let (status, leased) = app.next(&project, &ada).await;
    assert_eq!(status, StatusCode::OK, "{leased}");
    let lease = leased["lease_id"].as_str().unwrap();
    let (status, e) = app
        .json(
            "POST",
            &format!("/api/v1/leases/{lease}/judgment"),
            &ada,
            Some(json!({"choice": "left", "rationale": nul})),
        )
        .await;
    assert_names(status, &e, "rationale");
    let (status, e) = app
        .json(
            "POST",
            &format!("/ui/api/leases/{lease}/flag"),
            &ada,
            Some(json!({"note": nul})),
        )
        .await;
    assert_names(status, &e, "note");
    let (status, j) = app.judge(lease, &ada, "left").await;
    assert_eq!(status, StatusCode::CREATED, "{j}");

    // A path or query: a 400 in our format, never a 500.
    for uri in [
        "/api/v1/projects/ab%00cd".to_string(),
        format!("/api/v1/projects/{project}/stats?x=%00"),
    ] {
        let (status, e) = app.json("GET", &uri, &app.admin, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {e}");
        assert_eq!(e["error_type"], "bad_request", "{e}");
    }
    let (status, e) = app.judge("ab%00cd", &ada, "left").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
}

async fn identical_judgments_sent_together_are_one_judgment(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "p"})).await;
    const ROUNDS: usize = 30;
    const SENDERS: usize = 4;
    app.import(&project, "pairs", &pairs_ndjson(ROUNDS)).await;
    let ada = app.annotator("ada").await;
    for round in 0..ROUNDS {
        let (status, leased) = app.next(&project, &ada).await;
        assert_eq!(status, StatusCode::OK, "{leased}");
        let lease = leased["lease_id"].as_str().unwrap();
        // A double click, or a client retrying before the first answer came back.
        let answers =
            futures::future::join_all((0..SENDERS).map(|_| app.judge(lease, &ada, "left"))).await;
        let created = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count();
        for (status, j) in &answers {
            assert!(
                *status == StatusCode::CREATED || *status == StatusCode::OK,
                "round {round}: {status} {j}"
            );
            assert_eq!(j["id"], answers[0].1["id"], "round {round}: one judgment");
        }
        assert_eq!(created, 1, "round {round}: {answers:?}");
    }
    assert_eq!(app.export(&project, "full").await.len(), ROUNDS);
}

async fn undo(app: &TestApp, project: &str, token: &str) -> Value {
    let (status, undo) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/undo"),
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{undo}");
    assert!(undo["undone"]["superseded_at"].is_string(), "{undo}");
    undo
}

/// A leases the project's one pair and skips it; the lease's pair id.
async fn skip_first(app: &TestApp, project: &str, token: &str) -> String {
    let (status, leased) = app.next(project, token).await;
    assert_eq!(status, StatusCode::OK, "{leased}");
    let (status, j) = app
        .judge(leased["lease_id"].as_str().unwrap(), token, "skip")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    leased["pair_id"].as_str().unwrap().to_string()
}

async fn undoing_a_skip_never_takes_the_pair_from_someone_else(b: Backend) {
    let app = TestApp::new(b).await;
    let ada = app.annotator("ada").await;
    let bob = app.annotator("bob").await;

    // Untouched since: the skip's pair comes back to the one who skipped it.
    let project = app.create_project(json!({"name": "untouched"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    let pair = skip_first(&app, &project, &ada).await;
    assert_eq!(undo(&app, &project, &ada).await["lease"]["pair_id"], pair);

    // Labelled by someone else since: the skip is superseded, the pair stays theirs, one label.
    let project = app.create_project(json!({"name": "labelled"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    skip_first(&app, &project, &ada).await;
    let (_, leased) = app.next(&project, &bob).await;
    let (status, _) = app
        .judge(leased["lease_id"].as_str().unwrap(), &bob, "left")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let u = undo(&app, &project, &ada).await;
    assert_eq!(u["undone"]["choice"], "skip");
    assert!(u["lease"].is_null(), "{u}");
    let (status, next) = app.next(&project, &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{next}");
    assert_eq!(app.export(&project, "trl").await.len(), 1);

    // Leased by someone else since, even if given back: not handed to the undoer.
    let project = app.create_project(json!({"name": "released"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    skip_first(&app, &project, &ada).await;
    let (_, leased) = app.next(&project, &bob).await;
    let bob_lease = leased["lease_id"].as_str().unwrap();
    let u = undo(&app, &project, &ada).await;
    assert!(u["lease"].is_null(), "held by bob: {u}");
    let (status, _) = app.judge(bob_lease, &bob, "right").await;
    assert_eq!(status, StatusCode::CREATED, "bob's lease is still his");
    let project = app.create_project(json!({"name": "given back"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    skip_first(&app, &project, &ada).await;
    let (_, leased) = app.next(&project, &bob).await;
    let (status, _) = app
        .call(
            "POST",
            &format!(
                "/api/v1/leases/{}/release",
                leased["lease_id"].as_str().unwrap()
            ),
            Some(&bob),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let u = undo(&app, &project, &ada).await;
    assert!(u["lease"].is_null(), "{u}");

    // The budget is spent by open leases: a skip's undo does not open one more.
    let project = app
        .create_project(json!({"name": "budget", "label_budget": 1}))
        .await;
    app.import(&project, "pairs", &pairs_ndjson(2)).await;
    let (_, first) = app.next(&project, &ada).await;
    app.judge(first["lease_id"].as_str().unwrap(), &ada, "skip")
        .await;
    let (status, second) = app.next(&project, &ada).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(second["pair_id"], first["pair_id"]);
    let u = undo(&app, &project, &ada).await;
    assert!(u["lease"].is_null(), "the one label left is promised: {u}");
    app.judge(second["lease_id"].as_str().unwrap(), &ada, "left")
        .await;
    let (status, _) = app.next(&project, &ada).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let stats = app.stats(&project).await;
    assert_eq!(stats["labels"], 1, "{stats}");
}

async fn a_removed_member_loses_the_lease_they_hold(b: Backend) {
    use prefloop::store::members::{add_member, remove_member};
    use prefloop::store::users::{Role, UserKind, create_user};
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "closed"})).await;
    app.import(&project, "pairs", &pairs_ndjson(1)).await;
    let (ada, ada_token) = create_user(&app.store, "ada", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    let (bob, bob_token) = create_user(&app.store, "bob", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    for user in [&ada, &bob] {
        add_member(&app.store, &project, &user.id).await.unwrap();
    }
    let (status, leased) = app.next(&project, &ada_token).await;
    assert_eq!(status, StatusCode::OK, "{leased}");
    let lease = leased["lease_id"].as_str().unwrap();
    remove_member(&app.store, &project, &ada.id).await.unwrap();

    // Nor can they flag it from the workbench.
    let (status, e) = app
        .json(
            "POST",
            &format!("/ui/api/leases/{lease}/flag"),
            &ada_token,
            Some(json!({"note": "broken"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");

    let (status, e) = app
        .json(
            "POST",
            &format!("/api/v1/leases/{lease}/heartbeat"),
            &ada_token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["error_type"], "forbidden");
    assert!(e["error"].as_str().unwrap().contains("assigned"), "{e}");
    let (status, e) = app.judge(lease, &ada_token, "left").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");

    // The pair is back in the pool at once, not when the lease would have run out.
    let (status, next) = app.next(&project, &bob_token).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["pair_id"], leased["pair_id"]);
    let (status, _) = app
        .judge(next["lease_id"].as_str().unwrap(), &bob_token, "right")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let full = app.export(&project, "full").await;
    assert_eq!(full.len(), 1, "{full:?}");
}

async fn a_bom_and_multibyte_names_are_read_as_text(b: Backend) {
    let app = TestApp::new(b).await;
    // "é" is two bytes: 150 characters are 300 bytes, and the limits count characters.
    let name = "é".repeat(150);
    let project = app.create_project(json!({"name": name})).await;
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/projects",
            &app.admin,
            Some(json!({"name": "é".repeat(201)})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"].as_str().unwrap().contains("characters"), "{e}");
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/users",
            &app.admin,
            Some(json!({"name": name, "role": "annotator"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    let (status, e) = app
        .json(
            "POST",
            "/api/v1/users",
            &app.admin,
            Some(json!({"name": "é".repeat(201), "role": "annotator"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");

    // Files saved by some Windows editors start with a byte order mark.
    let body = format!("\u{feff}{}", pairs_ndjson(2));
    let report = app.import(&project, "pairs", &body).await;
    assert_eq!(report["inserted"], 2, "{report}");
    assert_eq!(report["rejected"], json!([]), "{report}");
    let report = app
        .import(&project, "prompts", "\u{feff}{\"prompt\": \"hello\"}\n")
        .await;
    assert_eq!(report["inserted"], 1, "{report}");
}

fn pairs_ndjson(n: usize) -> String {
    (0..n)
        .map(|i| {
            let pair =
                json!({"prompt": format!("prompt {i}"), "completion_a": "a", "completion_b": "b"});
            format!("{pair}\n")
        })
        .collect()
}

/// D2: a large import on SQLite used to hold the one write lock until it finished, and the annotators'
/// writes behind it failed with "database is locked" once their busy timeout ran out. With a short busy
/// timeout and an import that takes several times longer, every lease and release still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_sqlite_import_lets_the_annotators_through() {
    use prefloop::store::items::{ImportKind, import_ndjson};
    use prefloop::store::leases::{lease_next_pair, release_lease};
    use prefloop::store::projects::{ProjectInput, create_project};
    use prefloop::store::users::{Role, UserKind, create_user};
    use prefloop::store::{Store, StoreOptions};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        sqlite_busy_timeout: Duration::from_millis(1000),
    };
    let store = Store::open_data_dir_with(dir.path(), &options)
        .await
        .unwrap();
    let project = create_project(
        &store,
        ProjectInput {
            name: Some("big".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (ann, _) = create_user(&store, "ann", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    let line = |i: usize| {
        json!({"id": format!("x{i}"), "prompt": format!("p{i}"), "completion_a": "a", "completion_b": "b"})
            .to_string()
            + "\n"
    };
    import_ndjson(&store, &project.id, ImportKind::Pairs, line(0).as_bytes())
        .await
        .unwrap();
    let big: String = (1..=40_000).map(line).collect();
    let importer = {
        let (store, id) = (store.clone(), project.id.clone());
        tokio::spawn(
            async move { import_ndjson(&store, &id, ImportKind::Pairs, big.as_bytes()).await },
        )
    };
    let mut writes = 0;
    while !importer.is_finished() {
        let lease = lease_next_pair(&store, &project, &ann, &[])
            .await
            .expect("a lease during the import")
            .expect("a pair to lease");
        release_lease(&store, &lease.lease_id, &ann)
            .await
            .expect("a release during the import");
        writes += 1;
    }
    let report = importer.await.unwrap().unwrap();
    assert_eq!(report.inserted, 40_000);
    assert!(writes > 0, "the annotator wrote while the import ran");
}

/// A byte-level model can write the byte 0; on PostgreSQL one such completion used to fail the whole
/// round of pairs ("invalid byte sequence for encoding UTF8: 0x00"). It is stored without it.
async fn a_model_completion_holding_nul_is_stored_without_it(b: Backend) {
    use prefloop::domain::{PairScores, ScoreParts, Strategy};
    use prefloop::store::queue::{GeneratedPair, draw_prompts, insert_generated_pairs};
    use prefloop::store::training::ensure_reference_version;

    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "generated"})).await;
    app.import(&project, "prompts", "{\"prompt\": \"The film\"}\n")
        .await;
    let prompt = draw_prompts(&app.store, &project, 1, 0)
        .await
        .unwrap()
        .remove(0);
    let version = ensure_reference_version(&app.store, "models/tiny")
        .await
        .unwrap();
    let pair = GeneratedPair {
        prompt_id: prompt.id,
        completion_a: " was\u{0} fine".into(),
        completion_b: " was dull".into(),
        ends_a: true,
        ends_b: false,
        model_version_id: version.id,
        score_parts: ScoreParts {
            strategy: Strategy::Random,
            scores: PairScores {
                entropy: None,
                reward_a: 0.0,
                reward_b: 0.0,
                certainty: 0.0,
            },
            rank: None,
        },
        tie_key: 0.5,
    };
    insert_generated_pairs(&app.store, &project, &[pair])
        .await
        .expect("stored");
    let token = app.annotator("ann").await;
    let (status, lease) = app.next(&project, &token).await;
    assert_eq!(status, StatusCode::OK, "{lease}");
    let shown = [&lease["left"], &lease["right"]];
    assert!(shown.contains(&&json!(" was fine")), "{lease}");
}
