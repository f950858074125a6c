//! Label quality (issue 14) through the real router, on both databases: several annotators per pair,
//! agreement, majority export, gold pairs and the gold bar, and the review of flagged pairs.

mod common;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use prefloop::store::queue::training_preferences;
use serde_json::{Value, json};

db_tests!(
    a_pair_goes_to_labels_per_pair_distinct_annotators_and_agreement_is_reported,
    the_trl_export_and_training_take_each_pairs_majority,
    gold_pairs_measure_annotators_and_never_train,
    the_gold_bar_stops_an_annotator_who_misses_it,
    a_flagged_pair_waits_for_review_and_an_excluded_one_never_comes_back,
);

fn pairs(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"prompt": format!("Review {i}:"), "completion_a": format!(" loved it {i}"),
                   "completion_b": format!(" hated it {i}")})
            .to_string()
                + "\n"
        })
        .collect()
}

/// The named fields of a JSON object, in order.
fn fields<const N: usize>(v: &Value, names: [&str; N]) -> [Value; N] {
    names.map(|n| v[n].clone())
}

/// Leases the next pair; `None` on 204.
async fn next(app: &TestApp, project: &str, token: &str) -> Option<Value> {
    let (status, v) = app.next(project, token).await;
    match status {
        StatusCode::OK => Some(v),
        StatusCode::NO_CONTENT => None,
        other => panic!("next: {other} {v}"),
    }
}

/// Answers the lease so that completion A (`a` true) or B wins.
async fn vote(app: &TestApp, lease: &Value, token: &str, a: bool) {
    let left_is_a = lease["left"].as_str().unwrap().contains("loved")
        || lease["left"].as_str().unwrap().contains("gold-a");
    let choice = if left_is_a == a { "left" } else { "right" };
    let (status, v) = app
        .judge(lease["lease_id"].as_str().unwrap(), token, choice)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

async fn a_pair_goes_to_labels_per_pair_distinct_annotators_and_agreement_is_reported(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app
        .create_project(json!({"name": "overlap", "labels_per_pair": 2}))
        .await;
    app.import(&project, "pairs", &pairs(1)).await;
    let (ann1, ann2, ann3) = (
        app.annotator("ann1").await,
        app.annotator("ann2").await,
        app.annotator("ann3").await,
    );
    let first = next(&app, &project, &ann1).await.expect("a pair");
    vote(&app, &first, &ann1, true).await;
    // Never twice to one person; still open to the next.
    assert!(next(&app, &project, &ann1).await.is_none());
    let stats = app.stats(&project).await;
    assert_eq!(
        fields(&stats, ["labelled_pairs", "pending_pairs"]),
        [json!(0), json!(1)]
    );
    let second = next(&app, &project, &ann2).await.expect("the same pair");
    assert_eq!(second["pair_id"], first["pair_id"]);
    vote(&app, &second, &ann2, false).await;
    // Two votes: labelled, nobody gets it again.
    assert!(next(&app, &project, &ann3).await.is_none());
    let stats = app.stats(&project).await;
    assert_eq!(
        stats["labels"], 2,
        "the budget counts every answer: {stats}"
    );
    assert_eq!(stats["labelled_pairs"], 1);
    assert_eq!(stats["agreement_pairs"], 1);
    assert_eq!(stats["agreement_rate"], 0.0, "they disagreed: {stats}");
    // One vote each way on one pair: alpha is defined, and no better than chance.
    assert_eq!(stats["krippendorff_alpha"], 0.0, "{stats}");

    // Undoing one vote puts the pair back to be answered.
    let (status, undo) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/undo"),
            &ann2,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{undo}");
    assert_eq!(app.stats(&project).await["labelled_pairs"], 0);
    let (status, v) = app
        .json("POST", "/api/v1/projects/nope/undo", &ann2, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    let (status, v) = app
        .json(
            "PATCH",
            &format!("/api/v1/projects/{project}"),
            &app.admin,
            Some(json!({"labels_per_pair": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("labels_per_pair"), "{v}");
}

async fn the_trl_export_and_training_take_each_pairs_majority(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app
        .create_project(
            json!({"name": "majority", "labels_per_pair": 3, "label_aggregation": "soft"}),
        )
        .await;
    app.import(&project, "pairs", &pairs(2)).await;
    let anns = [
        app.annotator("a1").await,
        app.annotator("a2").await,
        app.annotator("a3").await,
    ];
    // Review 0: A, A, B (2–1 for A). Review 1: A, B, and a tie (no majority of decisive votes).
    for (k, ann) in anns.iter().enumerate() {
        for _ in 0..2 {
            let lease = next(&app, &project, ann).await.expect("a pair");
            let review0 = lease["prompt"] == "Review 0:";
            if review0 {
                vote(&app, &lease, ann, k < 2).await;
            } else if k == 2 {
                let (status, v) = app
                    .judge(lease["lease_id"].as_str().unwrap(), ann, "tie")
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{v}");
            } else {
                vote(&app, &lease, ann, k == 0).await;
            }
        }
    }
    let trl = app.export(&project, "trl").await;
    assert_eq!(trl.len(), 1, "{trl:?}");
    assert_eq!(trl[0]["prompt"], "Review 0:");
    assert_eq!(trl[0]["chosen"], " loved it 0");
    assert_eq!(app.export(&project, "full").await.len(), 6, "every vote");

    let prefs = training_preferences(&app.store, &project).await.unwrap();
    assert_eq!(prefs.len(), 1);
    assert_eq!((prefs[0].votes_for, prefs[0].votes_against), (2, 1));

    let stats = app.stats(&project).await;
    assert_eq!(stats["agreement_pairs"], 2);
    assert_eq!(stats["agreement_rate"], 0.0);
}

async fn gold_pairs_measure_annotators_and_never_train(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app
        .create_project(json!({"name": "gold", "gold_rate": 1.0}))
        .await;
    let gold = json!({"prompt": "Check:", "completion_a": " gold-a right", "completion_b": " wrong",
                      "gold": "a"});
    app.import(&project, "pairs", &(gold.to_string() + "\n" + &pairs(1)))
        .await;
    let bad = json!({"prompt": "x", "completion_a": "1", "completion_b": "2", "gold": "c"});
    let report = app
        .import(&project, "pairs", &(bad.to_string() + "\n"))
        .await;
    assert_eq!(report["inserted"], 0);
    assert!(
        report["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("gold"),
        "{report}"
    );

    let (ann1, ann2) = (app.annotator("ann1").await, app.annotator("ann2").await);
    // A gold rate of 1: the gold pair first, to each annotator once; then the ordinary pair.
    for (ann, right) in [(&ann1, true), (&ann2, false)] {
        let lease = next(&app, &project, ann).await.unwrap();
        assert_eq!(lease["prompt"], "Check:");
        vote(&app, &lease, ann, right).await;
    }
    let lease = next(&app, &project, &ann1).await.unwrap();
    assert_eq!(lease["prompt"], "Review 0:");
    vote(&app, &lease, &ann1, true).await;
    assert!(next(&app, &project, &ann1).await.is_none());

    let stats = app.stats(&project).await;
    assert_eq!(
        fields(&stats, ["gold_pairs", "pending_pairs"]),
        [json!(1), json!(0)]
    );
    assert_eq!(stats["labels"], 3, "gold answers are answers");
    assert_eq!(stats["decisive_labels"], 1, "but they train nothing");
    let trl = app.export(&project, "trl").await;
    assert_eq!(trl.len(), 1);
    assert_eq!(trl[0]["prompt"], "Review 0:");
    let full = app.export(&project, "full").await;
    assert_eq!(full.iter().filter(|l| l["gold"] == "a").count(), 2);
    let prefs = training_preferences(&app.store, &project).await.unwrap();
    assert_eq!(prefs.len(), 1);

    let (status, list) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/annotators"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()
            .clone()
    };
    let a1 = by_name("ann1");
    assert_eq!(
        fields(&a1, ["labels", "gold_answered", "gold_correct"]),
        [json!(2), json!(1), json!(1)]
    );
    assert_eq!(a1["skips"], 0);
    assert!(
        a1["median_seconds"].is_number() && a1["left_rate"].is_number(),
        "{a1}"
    );
    let a2 = by_name("ann2");
    assert_eq!(
        fields(&a2, ["gold_answered", "gold_correct"]),
        [json!(1), json!(0)]
    );
    // Annotators may not read the list.
    let (status, _) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/annotators"),
            &ann1,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn the_gold_bar_stops_an_annotator_who_misses_it(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app
        .create_project(json!({"name": "bar", "gold_rate": 1.0, "min_gold_accuracy": 0.8}))
        .await;
    let gold: String = (0..11)
        .map(|i| {
            json!({"prompt": format!("Check {i}:"), "completion_a": format!(" gold-a {i}"),
                   "completion_b": format!(" no {i}"), "gold": "a"})
            .to_string()
                + "\n"
        })
        .collect();
    app.import(&project, "pairs", &gold).await;
    let (good, careless) = (app.annotator("good").await, app.annotator("careless").await);
    for _ in 0..10 {
        let l = next(&app, &project, &good).await.unwrap();
        vote(&app, &l, &good, true).await;
        let l = next(&app, &project, &careless).await.unwrap();
        vote(&app, &l, &careless, false).await;
    }
    assert!(next(&app, &project, &good).await.is_some());
    let (status, v) = app.next(&project, &careless).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v.to_string().contains("0 of 10"), "{v}");
    let (_, list) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/annotators"),
            &app.admin,
            None,
        )
        .await;
    let flagged: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["below_gold_bar"] == true)
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(flagged, ["careless"]);
}

async fn a_flagged_pair_waits_for_review_and_an_excluded_one_never_comes_back(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "review"})).await;
    app.import(&project, "pairs", &pairs(2)).await;
    let (ann1, ann2) = (app.annotator("ann1").await, app.annotator("ann2").await);
    let mut flags = Vec::new();
    for _ in 0..2 {
        let lease = next(&app, &project, &ann1).await.unwrap();
        let id = lease["lease_id"].as_str().unwrap();
        let (status, v) = app
            .json(
                "POST",
                &format!("/api/v1/leases/{id}/flag"),
                &ann1,
                Some(json!({"note": "garbled"})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
        let (status, _) = app.judge(id, &ann1, "skip").await;
        assert_eq!(status, StatusCode::CREATED);
        flags.push(lease);
    }
    let (status, v) = app
        .json(
            "POST",
            "/api/v1/leases/nope/flag",
            &ann1,
            Some(json!({"note": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    // Both held: nobody is served them.
    assert!(next(&app, &project, &ann2).await.is_none());
    assert_eq!(app.stats(&project).await["held_pairs"], 2);

    let (status, open) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/flags?open=true"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{open}");
    let open = open.as_array().unwrap().clone();
    assert_eq!(open.len(), 2);
    assert!(
        open.iter()
            .all(|f| f["note"] == "garbled" && f["resolution"].is_null())
    );
    let flag_of = |pair: &Value| {
        open.iter()
            .find(|f| f["pair_id"] == pair["pair_id"])
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (keep, exclude) = (flag_of(&flags[0]), flag_of(&flags[1]));
    let resolve = |id: String, action: &'static str| {
        let app = &app;
        async move {
            app.json(
                "POST",
                &format!("/api/v1/flags/{id}/resolve"),
                &app.admin,
                Some(json!({"action": action})),
            )
            .await
        }
    };
    let (status, v) = resolve(keep.clone(), "keep").await;
    assert_eq!(
        (status, v["resolution"].clone()),
        (StatusCode::OK, json!("keep"))
    );
    let (status, _) = resolve(keep.clone(), "keep").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the same answer again changes nothing"
    );
    let (status, v) = resolve(keep.clone(), "exclude").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = resolve(exclude.clone(), "delete").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, _) = resolve("nope".into(), "keep").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .json(
            "POST",
            &format!("/api/v1/flags/{exclude}/resolve"),
            &ann2,
            Some(json!({"action": "keep"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "annotators do not review");
    let (status, _) = resolve(exclude.clone(), "exclude").await;
    assert_eq!(status, StatusCode::OK);

    // The kept pair is served again; the excluded one never.
    let lease = next(&app, &project, &ann2).await.expect("the kept pair");
    assert_eq!(lease["pair_id"], flags[0]["pair_id"]);
    vote(&app, &lease, &ann2, true).await;
    assert!(next(&app, &project, &ann2).await.is_none());
    let stats = app.stats(&project).await;
    assert_eq!(
        fields(&stats, ["held_pairs", "excluded_pairs"]),
        [json!(0), json!(1)]
    );
    let (_, open) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/flags?open=true"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(open, json!([]));
}
