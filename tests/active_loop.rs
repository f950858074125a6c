//! The active-learning loop end to end over the HTTP API with a tiny random model: prompts in, pairs
//! generated and scored, leased in score order, judged by the sentiment judge, a background DPO update,
//! a new model version current, pending pairs re-scored, export correct. Plus restart recovery.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Backend, TestApp};
use prefloop::domain::SamplingWeights;
use prefloop::engine::active_loop::{ActiveLoop, LoopConfig};
use prefloop::engine::{EngineConfig, EngineHandle, GenerateRequest, PolicyRef};
use prefloop::http::{AppState, HttpConfig};
use prefloop::model::{LanguageModel, ModelConfig, TextTokenizer};
use prefloop::store::training::{
    RunStatus, create_training_run, ensure_reference_version, get_training_run, mark_run_started,
};
use serde_json::{Value, json};
use sqlx::Row;

db_tests!(
    loop_generates_scores_serves_trains_and_rescores,
    a_run_that_does_not_beat_the_serving_version_is_not_installed,
    a_waiting_next_gets_the_pair_the_model_makes,
    restart_retries_an_interrupted_run,
    a_full_model_queue_answers_429,
    a_lora_project_trains_and_serves_adapters,
);

/// A tiny random llama with a byte-level tokenizer, saved as a Hugging Face directory.
fn tiny_model(dir: &std::path::Path) -> std::path::PathBuf {
    let tok = TextTokenizer::byte_level_for_tests();
    let config = ModelConfig::tiny(tok.vocab_size());
    let model =
        LanguageModel::random(config, tok, &candle_core::Device::Cpu, 7).expect("tiny model");
    let path = dir.join("tiny");
    model.save(&path).expect("save tiny model");
    path
}

/// The test app with a model engine and the active loop, ticking fast.
async fn with_loop(app: &mut TestApp, model_dir: &std::path::Path) -> ActiveLoop {
    with_queue(app, model_dir, 8).await
}

async fn with_queue(
    app: &mut TestApp,
    model_dir: &std::path::Path,
    queue_capacity: usize,
) -> ActiveLoop {
    let path = tiny_model(model_dir);
    let reference = ensure_reference_version(&app.store, &path.display().to_string())
        .await
        .unwrap();
    let engine = EngineHandle::start(
        EngineConfig {
            model_path: path,
            device: "cpu".into(),
            checkpoint_dir: model_dir.join("checkpoints"),
            queue_capacity,
            max_loaded_policies: 2,
            sampling_weights: SamplingWeights::F32,
            dtype: Default::default(),
        },
        reference.id,
    )
    .await
    .expect("engine starts");
    let config = LoopConfig {
        tick: Duration::from_millis(100),
        low_water: 4,
        round_size: 4,
        wait_for_training: false,
    };
    let active = ActiveLoop::start(app.store.clone(), Some(engine), config)
        .await
        .unwrap();
    app.router = prefloop::http::app(
        AppState::new(app.store.clone(), HttpConfig::default()).with_loop(active.clone()),
    );
    active
}

/// A session cookie for the admin, signed in with their token.
async fn admin_cookie(app: &TestApp) -> String {
    let (status, _, headers) = app
        .call_with_headers(
            "POST",
            "/login",
            None,
            Some(format!("token={}", app.admin).into_bytes()),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// A page as the holder of `cookie` sees it.
async fn page(app: &TestApp, path: &str, cookie: &str) -> (StatusCode, String) {
    let (status, body) = app
        .call("GET", path, None, None, &[("cookie", cookie)])
        .await;
    (status, String::from_utf8(body).unwrap())
}

async fn wait_for(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

const LOOP_PROJECT: &str = r#"{"name": "loop", "strategy": "certainty", "label_budget": 6, "train_every": 4,
  "epochs": 1, "batch_size": 2, "learning_rate": 0.001, "beta": 0.5,
  "completions": {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0},
  "oversample": {"prompts": 2, "pairs": 2}, "entropy_samples": 2, "seed": 3,
  "install_only_if_better": false}"#;

async fn loop_generates_scores_serves_trains_and_rescores(b: Backend) {
    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    let active = with_loop(&mut app, models.path()).await;
    let project = app
        .create_project(serde_json::from_str(LOOP_PROJECT).unwrap())
        .await;
    let prompts: String = [
        "The film",
        "A quiet story",
        "This sequel",
        "Her acting",
        "The ending",
        "My friends",
    ]
    .iter()
    .map(|p| json!({"prompt": p}).to_string() + "\n")
    .collect();
    assert_eq!(
        app.import(&project, "prompts", &prompts).await["inserted"],
        6
    );
    let eval = "{\"prompt\": \"The best film\", \"split\": \"eval\"}\n{\"prompt\": \"The worst film\", \"split\": \"eval\"}\n{\"prompt\": \"A third film\", \"split\": \"eval\"}\n";
    assert_eq!(app.import(&project, "prompts", eval).await["inserted"], 3);
    // Versions are measured on the project's first `eval_prompts` held-out prompts: two of the three.
    let (status, p) = app
        .json(
            "PATCH",
            &format!("/api/v1/projects/{project}"),
            &app.admin,
            Some(json!({"eval_prompts": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    active.wake();

    let stats = format!("/api/v1/projects/{project}/stats");
    let reference: String =
        sqlx::query_scalar("SELECT id FROM model_versions WHERE project_id IS NULL")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    wait_for("generated pairs", 60, async || {
        app.json("GET", &stats, &app.admin, None).await.1["pending_pairs"].as_i64() >= Some(4)
    })
    .await;
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    assert_eq!(
        s["model_version"],
        reference.as_str(),
        "the reference serves until a version is trained"
    );

    // The first lease is the best-scored pending pair.
    let ann = app.annotator("ann").await;
    let (status, lease) = app.next(&project, &ann).await;
    assert_eq!(status, StatusCode::OK);
    let best: f64 = sqlx::query_scalar(
        "SELECT MAX(score) FROM pairs WHERE project_id = $1 AND status = 'pending'",
    )
    .bind(&project)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let leased: f64 = sqlx::query_scalar("SELECT score FROM pairs WHERE id = $1")
        .bind(lease["pair_id"].as_str().unwrap())
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(leased, best, "pairs are leased in score order");
    let row = sqlx::query(
        "SELECT source, strategy, model_version_id, score_parts FROM pairs WHERE id = $1",
    )
    .bind(lease["pair_id"].as_str().unwrap())
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("source"), "generated");
    assert_eq!(row.get::<String, _>("strategy"), "certainty");
    assert_eq!(row.get::<String, _>("model_version_id"), reference);
    let parts: Value = serde_json::from_str(&row.get::<String, _>("score_parts")).unwrap();
    for key in ["reward_a", "reward_b", "certainty"] {
        assert!(parts[key].is_number(), "score parts keep {key}: {parts}");
    }
    app.call(
        "POST",
        &format!(
            "/api/v1/leases/{}/release",
            lease["lease_id"].as_str().unwrap()
        ),
        Some(&ann),
        None,
        &[],
    )
    .await;

    // The sentiment judge answers beside a person. A tiny random model writes byte noise with no
    // sentiment, so the judge mostly sees ties; the person's decisive answers give DPO something to learn.
    let (status, judge) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/judges"),
            &app.admin,
            Some(json!({"kind": "sentiment", "rate_per_minute": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{judge}");
    wait_for("the judge's first answer", 60, async || {
        app.json("GET", &stats, &app.admin, None).await.1["labels"].as_i64() >= Some(1)
    })
    .await;
    let mut answered = 0;
    while app.json("GET", &stats, &app.admin, None).await.1["labels"].as_i64() < Some(6) {
        match app.next(&project, &ann).await {
            (StatusCode::OK, l) => {
                let (status, _) = app
                    .judge(
                        l["lease_id"].as_str().unwrap(),
                        &ann,
                        if answered % 2 == 0 { "left" } else { "right" },
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED);
                answered += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Rounds count decisive labels; once the budget is spent, a last run trains on what is left. Wait
    // until a version has seen every decisive label, so no run is still to come.
    let versions_url = format!("/api/v1/projects/{project}/model-versions");
    wait_for("every decisive label trained on", 180, async || {
        let (_, s) = app.json("GET", &stats, &app.admin, None).await;
        let (_, v) = app.json("GET", &versions_url, &app.admin, None).await;
        let seen = v
            .as_array()
            .and_then(|v| v.last())
            .map(|v| v["decisive_seen"].clone());
        s["training"]["status"] == "succeeded"
            && s["model_version"] != reference.as_str()
            && seen == Some(s["decisive_labels"].clone())
    })
    .await;
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    let version = s["model_version"].as_str().unwrap().to_string();
    let run = &s["training"];
    assert_eq!(run["model_version"], version.as_str());
    assert!(run["step"].as_i64().unwrap() >= 1, "{run}");
    assert!(run["metrics"]["loss"].is_number(), "{run}");
    let (status, r) = app
        .json(
            "GET",
            &format!("/api/v1/training-runs/{}", run["id"].as_str().unwrap()),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["status"], "succeeded");

    assert_eq!(
        app.next(&project, &ann).await.0,
        StatusCode::NO_CONTENT,
        "nothing is served past the budget"
    );
    wait_for("pending pairs re-scored by the new version", 60, async || {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs WHERE project_id = $1 AND status = 'pending' AND model_version_id = $2")
            .bind(&project)
            .bind(&version)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        n > 0
    })
    .await;

    // The new version was evaluated against the reference on the eval prompts, by the judge.
    let (status, versions) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/model-versions"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v = versions
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == version.as_str())
        .expect("listed");
    let win = v["metrics"]["win_rate"].as_f64().expect("win rate stored");
    assert!((0.0..=1.0).contains(&win), "{v}");
    assert_eq!(v["metrics"]["eval_prompts"], 2);
    // With its 95% interval, which two prompts leave wide.
    let (low, high) = (
        v["metrics"]["win_rate_low"]
            .as_f64()
            .expect("interval stored"),
        v["metrics"]["win_rate_high"]
            .as_f64()
            .expect("interval stored"),
    );
    assert!(low <= win && win <= high && high - low > 0.4, "{v}");
    assert_eq!(v["labels_seen"].as_i64().map(|n| n >= 4), Some(true), "{v}");
    let (status, _) = app
        .json(
            "DELETE",
            &format!(
                "/api/v1/projects/{project}/judges/{}",
                judge["id"].as_str().unwrap()
            ),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The admin dashboard shows the version, the run with its loss curve, the win rate and the scores.
    let cookie = admin_cookie(&app).await;
    let (status, page) = page(&app, &format!("/admin/projects/{project}"), &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("Serving version <code>{}</code>", &version[..8])),
        "dashboard names the version"
    );
    assert!(page.contains("training loss") && page.contains("win rate against the reference"));
    assert!(page.contains("succeeded"), "the run is listed");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let runs_before = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/training-runs"),
            &app.admin,
            None,
        )
        .await
        .1
        .as_array()
        .unwrap()
        .len();
    let (status, _) = app
        .call(
            "POST",
            &format!("/admin/projects/{project}/train"),
            None,
            Some(format!("csrf={csrf}").into_bytes()),
            &[
                ("cookie", &cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "train now");
    let runs_after = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/training-runs"),
            &app.admin,
            None,
        )
        .await
        .1
        .as_array()
        .unwrap()
        .len();
    assert_eq!(runs_after, runs_before + 1, "the button queued a run");
    // That run may install a newer version (a tiny model trains in a moment): let it finish, so the
    // generation below is checked against the version serving then.
    let runs_url = format!("/api/v1/projects/{project}/training-runs");
    wait_for("the queued run to finish", 120, async || {
        let (_, runs) = app.json("GET", &runs_url, &app.admin, None).await;
        matches!(
            runs[0]["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
    .await;
    let serving = app.json("GET", &stats, &app.admin, None).await.1["model_version"]
        .as_str()
        .unwrap()
        .to_string();

    // Judgments are marked with who gave them and export as preferences.
    let full = app.export(&project, "full").await;
    assert_eq!(full.iter().filter(|r| r["choice"] != "skip").count(), 6);
    assert!(full.iter().any(|r| r["annotator_kind"] == "ai"));
    assert_eq!(
        full.iter()
            .filter(|r| r["annotator_kind"] == "human")
            .count(),
        answered
    );
    let (status, ai_only) = app
        .call(
            "GET",
            &format!("/api/v1/projects/{project}/export?format=full&annotators=ai"),
            Some(&app.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8(ai_only).unwrap().lines().count(),
        6 - answered
    );
    let decisive = full
        .iter()
        .filter(|r| r["choice"] == "left" || r["choice"] == "right")
        .count();
    assert_eq!(app.export(&project, "trl").await.len(), decisive);

    // Generation with the new version and the reference.
    let (status, g) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/generate"),
            &app.admin,
            Some(json!({"prompts": ["The film", "A story"], "max_new_tokens": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["completions"].as_array().unwrap().len(), 2);
    assert_eq!(g["model_version"], serving.as_str());
    let (status, _) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/generate"),
            &app.admin,
            Some(json!({"prompts": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn restart_retries_an_interrupted_run(b: Backend) {
    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    let project = app
        .create_project(serde_json::from_str(LOOP_PROJECT).unwrap())
        .await;
    app.import(&project, "pairs", &(0..4).map(|i| json!({"prompt": format!("p{i}"), "completion_a": "a wonderful film", "completion_b": "a dull film"}).to_string() + "\n").collect::<String>()).await;
    let ann = app.annotator("ann").await;
    for _ in 0..3 {
        let (_, l) = app.next(&project, &ann).await;
        let choice = if l["left"] == "a wonderful film" {
            "left"
        } else {
            "right"
        };
        app.judge(l["lease_id"].as_str().unwrap(), &ann, choice)
            .await;
    }
    // A run the previous server was in the middle of when it was killed.
    let dead = create_training_run(&app.store, &project, None)
        .await
        .unwrap();
    mark_run_started(&app.store, &dead.id).await.unwrap();

    let _active = with_loop(&mut app, models.path()).await;
    let dead = get_training_run(&app.store, &dead.id).await.unwrap();
    assert_eq!(dead.status, RunStatus::Failed);
    assert!(dead.error.unwrap().contains("interrupted"));
    let stats = format!("/api/v1/projects/{project}/stats");
    wait_for("the retried run", 120, async || {
        app.json("GET", &stats, &app.admin, None).await.1["training"]["status"] == "succeeded"
    })
    .await;
    assert_eq!(
        app.export(&project, "trl").await.len(),
        3,
        "every judgment is still there"
    );
    let (status, _) = app.next(&project, &ann).await;
    assert_eq!(status, StatusCode::OK, "serving continues");
}

async fn a_full_model_queue_answers_429(b: Backend) {
    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    with_queue(&mut app, models.path(), 1).await;
    let project = app
        .create_project(json!({"name": "q", "train_every": 0}))
        .await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (app, project) = (app.clone(), project.clone());
        tasks.push(tokio::spawn(async move {
            let prompts = vec![format!("prompt {i}"); 16];
            let body = json!({"prompts": prompts, "max_new_tokens": 256, "temperature": 1.0});
            app.json(
                "POST",
                &format!("/api/v1/projects/{project}/generate"),
                &app.admin,
                Some(body),
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error_type"], "too_many_requests");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "a full queue turns callers away: {statuses:?}"
    );
}

/// A real `prefloop serve` process killed (SIGKILL) in the middle of a training run, then started again:
/// every judgment is still there, the run is marked failed and retried, and serving goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_training_resumes() {
    use prefloop::domain::Choice;
    use prefloop::store::Store;
    use prefloop::store::leases::{JudgmentInput, lease_next_pair, record_judgment};
    use prefloop::store::projects::{ProjectInput, create_project};
    use prefloop::store::users::{Role, UserKind, create_user};

    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let store = Store::open_data_dir(dir.path()).await.unwrap();
    let (_, admin) = create_user(&store, "root", Role::Admin, UserKind::Human)
        .await
        .unwrap();
    let (ann, ann_token) = create_user(&store, "ann", Role::Annotator, UserKind::Human)
        .await
        .unwrap();
    // Enough epochs that the run is still going when the server is killed.
    let input = ProjectInput {
        name: Some("p".into()),
        train_every: Some(0),
        epochs: Some(100_000),
        batch_size: Some(1),
        ..Default::default()
    };
    let project = create_project(&store, input).await.unwrap();
    let pairs: String = (0..4).map(|i| json!({"prompt": format!("p{i}"), "completion_a": "a good one", "completion_b": "a bad one"}).to_string() + "\n").collect();
    prefloop::store::items::import_ndjson(
        &store,
        &project.id,
        prefloop::store::items::ImportKind::Pairs,
        pairs.as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let lease = lease_next_pair(&store, &project, &ann, &[])
            .await
            .unwrap()
            .unwrap();
        record_judgment(
            &store,
            &lease.lease_id,
            &ann,
            &JudgmentInput {
                choice: Choice::Left,
                rationale: None,
                seconds: None,
            },
            None,
        )
        .await
        .unwrap();
    }
    store.close().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_prefloop"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--model")
            .arg(&model)
            .env_remove("DATABASE_URL")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prefloop serve")
    };
    let client = reqwest::Client::new();
    let wait_up = async || {
        for _ in 0..300 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server did not come up");
    };
    let get = async |path: &str| -> Value {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };

    let mut server = start();
    wait_up().await;
    let started: Value = client
        .post(format!("{base}/api/v1/projects/{}/train", project.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = started["run_id"].as_str().unwrap().to_string();
    wait_for("the run to take steps", 60, async || {
        get(&format!("/api/v1/training-runs/{run_id}")).await["step"].as_i64() >= Some(1)
    })
    .await;
    server.kill().unwrap();
    server.wait().unwrap();

    let mut server = start();
    wait_up().await;
    let dead = get(&format!("/api/v1/training-runs/{run_id}")).await;
    assert_eq!(dead["status"], "failed", "{dead}");
    assert!(
        dead["error"].as_str().unwrap().contains("interrupted"),
        "{dead}"
    );
    let runs = get(&format!("/api/v1/projects/{}/training-runs", project.id)).await;
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "the interrupted run was queued again: {runs}"
    );
    let export = client
        .get(format!("{base}/api/v1/projects/{}/export", project.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        export.lines().count(),
        3,
        "every judgment survived the kill"
    );
    let next = client
        .post(format!("{base}/api/v1/projects/{}/next", project.id))
        .bearer_auth(&ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK, "serving continues");
    // The retried run is cancelled so the server stops promptly.
    let retry = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] != run_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = client
        .post(format!("{base}/api/v1/training-runs/{retry}/cancel"))
        .bearer_auth(&admin)
        .send()
        .await;
    server.kill().unwrap();
    server.wait().unwrap();
}

async fn a_run_that_does_not_beat_the_serving_version_is_not_installed(b: Backend) {
    use prefloop::domain::{EvalMetrics, RewardStats, TrainedMetrics};
    use prefloop::store::training::{NewVersion, create_model_version};

    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    let project = app
        .create_project(
            json!({"name": "bar", "train_every": 4, "epochs": 1, "batch_size": 2,
            "learning_rate": 0.001}),
        )
        .await;
    // Labelled before the model starts, so every answer is on these pairs (none on generated ones) and
    // the run has its two held-out pairs to be judged by.
    let held_out =
        "{\"prompt\": \"p4\", \"split\": \"eval\"}\n{\"prompt\": \"p5\", \"split\": \"eval\"}\n";
    assert_eq!(
        app.import(&project, "prompts", held_out).await["inserted"],
        2
    );
    let pairs: String = (0..6)
        .map(|i| {
            json!({"prompt": format!("p{i}"), "completion_a": "a wonderful film",
                "completion_b": "a dull film"})
            .to_string()
                + "\n"
        })
        .collect();
    assert_eq!(app.import(&project, "pairs", &pairs).await["inserted"], 6);
    let ann = app.annotator("ann").await;
    let stats = format!("/api/v1/projects/{project}/stats");
    for _ in 0..6 {
        let (status, l) = app.next(&project, &ann).await;
        assert_eq!(status, StatusCode::OK, "{l}");
        let choice = if l["left"] == "a wonderful film" {
            "left"
        } else {
            "right"
        };
        app.judge(l["lease_id"].as_str().unwrap(), &ann, choice)
            .await;
    }
    // A version serving the project already answers every held-out pair right: no run can beat it.
    // It uses the weights the engine is about to start with (`with_loop` saves them there).
    let perfect = TrainedMetrics {
        last_step: None,
        eval: Some(EvalMetrics {
            step: 1,
            pairs: 2,
            loss: 0.1,
            rewards: RewardStats {
                accuracies: 1.0,
                ..Default::default()
            },
        }),
    };
    let weights = models.path().join("tiny").display().to_string();
    create_model_version(
        &app.store,
        &NewVersion {
            id: "perfect",
            project_id: Some(&project),
            parent_id: None,
            path: &weights,
            labels_seen: 0,
            decisive_seen: 0,
            trained: perfect,
            installed: true,
        },
    )
    .await
    .unwrap();
    let _active = with_loop(&mut app, models.path()).await;
    wait_for("the run to finish", 120, async || {
        app.json("GET", &stats, &app.admin, None).await.1["training"]["status"] == "succeeded"
    })
    .await;
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    assert_eq!(
        s["model_version"], "perfect",
        "the better version keeps serving"
    );
    assert_eq!(s["decisive_labels"], 6);
    let new_id = s["training"]["model_version"].as_str().unwrap().to_string();
    let (_, versions) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}/model-versions"),
            &app.admin,
            None,
        )
        .await;
    let new = versions
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == new_id.as_str())
        .expect("the run's version is recorded");
    assert_eq!(new["installed"], false, "{new}");
    let reason = new["not_installed_reason"].as_str().unwrap();
    assert!(reason.contains("held-out DPO accuracy"), "{reason}");
    assert!(
        reason.contains("not above the serving version's 1.000"),
        "{reason}"
    );

    // The dashboard says why.
    let cookie = admin_cookie(&app).await;
    let (status, page) = page(&app, &format!("/admin/projects/{project}"), &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("not installed: its held-out DPO accuracy"),
        "{page}"
    );
}

async fn a_waiting_next_gets_the_pair_the_model_makes(b: Backend) {
    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    let _active = with_loop(&mut app, models.path()).await;
    let project = app
        .create_project(json!({"name": "fresh", "completions": {"max_new_tokens": 4}}))
        .await;
    let ann = app.annotator("ann").await;
    // Nothing yet, and no prompts: nothing will come.
    let (status, _, headers) = app
        .call_with_headers(
            "POST",
            &format!("/api/v1/projects/{project}/next?wait=0"),
            Some(&ann),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers.get("retry-after").is_none(),
        "no prompts, no pairs: finished"
    );
    let prompts: String = ["The film", "A quiet story", "This sequel"]
        .iter()
        .map(|p| json!({"prompt": p}).to_string() + "\n")
        .collect();
    app.import(&project, "prompts", &prompts).await;
    let stats = format!("/api/v1/projects/{project}/stats");
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    assert_eq!(s["generating"], true, "{s}");
    // The request waits while the model makes the first round, and answers with one of its pairs.
    let (status, lease) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/next?wait=30"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lease}");
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    assert!(s["pairs_per_minute"].as_f64().unwrap() > 0.0, "{s}");
}

/// An engine sampling from a Q8_0 copy: `/generate`'s path samples what the quantized model samples, and a
/// win rate's path (`full_precision`) what the f32 weights sample, each exactly, from the same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_samples_from_its_quantized_copy_and_judges_in_f32() {
    use prefloop::engine::GenerateRequest;
    use prefloop::learn::candidates::prompt_ids;
    use prefloop::model::SamplingParams;

    let dir = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::byte_level_for_tests();
    let config = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        ..ModelConfig::tiny(tok.vocab_size())
    };
    let model = LanguageModel::random(config, tok, &candle_core::Device::Cpu, 5).unwrap();
    let path = dir.path().join("model");
    model.save(&path).unwrap();
    let engine = EngineHandle::start(
        EngineConfig {
            model_path: path.clone(),
            device: "cpu".into(),
            checkpoint_dir: dir.path().join("checkpoints"),
            queue_capacity: 4,
            max_loaded_policies: 2,
            sampling_weights: SamplingWeights::Q8_0,
            dtype: Default::default(),
        },
        "reference".into(),
    )
    .await
    .expect("engine starts with a quantized sampling copy");
    let prompts = vec!["The film".to_string(), "A longer opening line".to_string()];
    let request = |full_precision| GenerateRequest {
        policy: engine.reference().clone(),
        prompts: prompts.clone(),
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: 12,
        seed: 17,
        chat_template: false,
        full_precision,
        first_prompt: 0,
    };
    let served = engine.generate(request(false)).await.unwrap();
    let judged = engine.generate(request(true)).await.unwrap();

    let loaded = LanguageModel::load(&path, &candle_core::Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| prompt_ids(loaded.tokenizer(), p).unwrap())
        .collect();
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: 12,
        seed: 17,
        ..Default::default()
    };
    let texts = |m: &LanguageModel| -> Vec<String> {
        m.sample(&ids, 1, &params)
            .unwrap()
            .into_iter()
            .map(|mut row| row.remove(0).text)
            .collect()
    };
    let f32_texts = texts(&loaded);
    let q8_texts = texts(&loaded.with_sampling_weights(SamplingWeights::Q8_0).unwrap());
    assert_ne!(
        f32_texts, q8_texts,
        "this seed should draw differently from the two weights, so the test can tell them apart"
    );
    assert_eq!(judged, f32_texts, "a win rate samples the f32 weights");
    assert_eq!(served, q8_texts, "/generate samples the quantized copy");

    // Asked in pieces (as evaluations ask), each prompt keeps the random stream of its place in the list.
    let rest = engine
        .generate(GenerateRequest {
            prompts: prompts[1..].to_vec(),
            first_prompt: 1,
            ..request(true)
        })
        .await
        .unwrap();
    assert_eq!(rest, judged[1..].to_vec());
}

/// A project with the `lora` setting trains adapters on the reference's weights: its version is a PEFT
/// adapter directory (megabytes, not a model), `/generate` serves it, and an engine started afresh loads it
/// onto its reference.
async fn a_lora_project_trains_and_serves_adapters(b: Backend) {
    let models = tempfile::tempdir().unwrap();
    let mut app = TestApp::new(b).await;
    let active = with_loop(&mut app, models.path()).await;
    let mut settings: Value = serde_json::from_str(LOOP_PROJECT).unwrap();
    settings["name"] = json!("lora");
    settings["label_budget"] = json!(4);
    settings["strategy"] = json!("random");
    settings["learning_rate"] = json!(0.01);
    settings["lora"] = json!({"rank": 2, "targets": ["v", "q"]});
    let project = app.create_project(settings).await;
    let (_, p) = app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(
        p["lora"],
        json!({"rank": 2, "alpha": 16.0, "dropout": 0.0, "targets": ["v", "q"]}),
        "missing fields take their defaults"
    );
    for (bad, says) in [
        (json!({"lora": {"rank": 0}}), "lora.rank must be 1 to 1024"),
        (json!({"lora": {"targets": ["q", "lm_head"]}}), "lm_head"),
        (json!({"lora": {"dropout": 1.5}}), "lora.dropout"),
    ] {
        let (status, e) = app
            .json(
                "PATCH",
                &format!("/api/v1/projects/{project}"),
                &app.admin,
                Some(bad),
            )
            .await;
        assert!(status.is_client_error(), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let prompts: String = [
        "The film",
        "A story",
        "Her acting",
        "The ending",
        "My friends",
    ]
    .iter()
    .map(|p| json!({"prompt": p}).to_string() + "\n")
    .collect();
    app.import(&project, "prompts", &prompts).await;

    let ann = app.annotator("ann").await;
    let stats = format!("/api/v1/projects/{project}/stats");
    let mut answered = 0;
    while app.json("GET", &stats, &app.admin, None).await.1["labels"].as_i64() < Some(4) {
        match app.next(&project, &ann).await {
            (StatusCode::OK, l) => {
                let side = if answered % 2 == 0 { "left" } else { "right" };
                app.judge(l["lease_id"].as_str().unwrap(), &ann, side).await;
                answered += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let reference: String =
        sqlx::query_scalar("SELECT id FROM model_versions WHERE project_id IS NULL")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    wait_for("an adapter version serving", 180, async || {
        let (_, s) = app.json("GET", &stats, &app.admin, None).await;
        s["training"]["status"] == "succeeded" && s["model_version"] != reference.as_str()
    })
    .await;
    let (_, s) = app.json("GET", &stats, &app.admin, None).await;
    let version = s["model_version"].as_str().unwrap().to_string();
    let path: String = sqlx::query_scalar("SELECT path FROM model_versions WHERE id = $1")
        .bind(&version)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let dir = std::path::Path::new(&path);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["target_modules"], json!(["q_proj", "v_proj"]));
    assert!(
        !dir.join("model.safetensors").exists(),
        "no copy of the model"
    );
    let adapter = std::fs::metadata(dir.join("adapter_model.safetensors"))
        .unwrap()
        .len();
    let base = std::fs::metadata(models.path().join("tiny/model.safetensors"))
        .unwrap()
        .len();
    assert!(adapter * 4 < base, "adapter {adapter} bytes, model {base}");

    let (status, g) = app
        .json(
            "POST",
            &format!("/api/v1/projects/{project}/generate"),
            &app.admin,
            Some(json!({"prompts": ["The film"], "max_new_tokens": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["model_version"], version.as_str());

    // An engine started afresh reads the adapter from disk onto its reference and samples what the
    // serving engine, which installed the trained adapter from memory, samples.
    let request = GenerateRequest {
        policy: PolicyRef {
            version_id: version.clone(),
            path: path.clone(),
        },
        prompts: vec!["The film".into(), "A story".into()],
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: 6,
        seed: 5,
        chat_template: false,
        full_precision: false,
        first_prompt: 0,
    };
    let fresh = EngineHandle::start(
        EngineConfig {
            model_path: models.path().join("tiny"),
            device: "cpu".into(),
            checkpoint_dir: models.path().join("checkpoints"),
            queue_capacity: 4,
            max_loaded_policies: 2,
            sampling_weights: SamplingWeights::F32,
            dtype: Default::default(),
        },
        reference.clone(),
    )
    .await
    .expect("engine starts");
    let serving = active
        .engine()
        .expect("engine")
        .generate(request.clone())
        .await
        .unwrap();
    assert_eq!(fresh.generate(request).await.unwrap(), serving);
}
