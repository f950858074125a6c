//! kill -9 at the worst moments, on the real binary: during a 200,000-line import, and during a training
//! run. Whatever the server acknowledged before the kill is there after the restart, exactly once;
//! what it had not finished is whole or absent (an import keeps whole chunks, an interrupted run
//! installs nothing and is marked as interrupted), and the restarted server goes on serving.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use prefloop::model::{LanguageModel, ModelConfig, TextTokenizer};
use serde_json::{Value, json};

db_tests!(
    kill_during_a_big_import_loses_no_acknowledged_label,
    kill_during_a_training_run_loses_nothing_and_installs_nothing,
);

/// `prefloop serve` in its own process on the test's database.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(app: &TestApp, extra: &[&str]) -> Server {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_prefloop"))
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(&app.db_args)
            .args(extra)
            .env_remove("DATABASE_URL")
            .env_remove("PREFLOOP_MODEL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("prefloop serve starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            // A guard against a hung server, not a speed check: importing 200,000 lines again (each
            // looked up as a possible duplicate) takes minutes in a debug build on a busy 2-core box.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        };
        let started = Instant::now();
        loop {
            let up = server
                .http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return server;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("the killed server is reaped");
    }

    async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req.send().await.expect("the server answers")).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        answer(req.send().await.expect("the server answers")).await
    }

    /// Every line of the full export.
    async fn export(&self, project: &str, token: &str) -> Vec<Value> {
        let text = self
            .http
            .get(format!(
                "{}/api/v1/projects/{project}/export?format=full",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("an export line is JSON"))
            .collect()
    }

    /// One `/next` and its answer; the judgment's id when the server acknowledged it (201).
    async fn label_one(&self, project: &str, token: &str) -> Option<String> {
        let (status, lease) = self
            .post(&format!("/api/v1/projects/{project}/next"), token, None)
            .await;
        if status != 200 {
            return None;
        }
        let lease_id = lease["lease_id"].as_str().unwrap();
        let (status, judgment) = self
            .post(
                &format!("/api/v1/leases/{lease_id}/judgment"),
                token,
                Some(json!({"choice": "left"})),
            )
            .await;
        assert!(status == 201, "a judgment answered {status}: {judgment}");
        Some(judgment["id"].as_str().unwrap().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every acknowledged judgment exported exactly once, and no pair labelled twice.
fn assert_all_there(export: &[Value], acknowledged: &[String]) {
    for id in acknowledged {
        let n = export.iter().filter(|j| j["judgment_id"] == *id).count();
        assert_eq!(n, 1, "acknowledged judgment {id} is exported {n} times");
    }
    let mut pairs: Vec<&str> = export
        .iter()
        .filter(|j| j["superseded_at"].is_null() && j["choice"] != "skip")
        .map(|j| j["pair_id"].as_str().unwrap())
        .collect();
    let labels = pairs.len();
    pairs.sort_unstable();
    pairs.dedup();
    assert_eq!(pairs.len(), labels, "a pair is labelled twice");
}

fn pair_lines(prefix: &str, n: usize) -> String {
    let mut out = String::with_capacity(n * 120);
    for i in 0..n {
        out.push_str(
            &json!({
                "id": format!("{prefix}-{i}"),
                "prompt": format!("Prompt {} of the {prefix} set", i % 997),
                "completion_a": format!("first answer {i}"),
                "completion_b": format!("second answer {i}"),
            })
            .to_string(),
        );
        out.push('\n');
    }
    out
}

async fn kill_during_a_big_import_loses_no_acknowledged_label(backend: Backend) {
    const BIG: usize = 200_000;
    const SMALL: usize = 300;
    let app = TestApp::new(backend).await;
    let project = app.create_project(json!({"name": "crash-import"})).await;
    let annotator = app.annotator("ann").await;
    app.import(&project, "pairs", &pair_lines("small", SMALL))
        .await;
    let big = pair_lines("big", BIG);
    let stats = format!("/api/v1/projects/{project}/stats");

    let server = Server::start(&app, &[]).await;
    let import = tokio::spawn({
        let (http, base, admin, body) = (
            server.http.clone(),
            server.base.clone(),
            app.admin.clone(),
            big.clone(),
        );
        let project = project.clone();
        async move {
            http.post(format!("{base}/api/v1/projects/{project}/pairs"))
                .bearer_auth(admin)
                .body(body)
                .send()
                .await
        }
    });
    // Label while the import runs, until a good part of it is stored.
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    loop {
        if let Some(id) = server.label_one(&project, &annotator).await {
            acknowledged.push(id);
        }
        let (_, s) = server.get(&stats, &app.admin).await;
        let stored = s["pending_pairs"].as_u64().unwrap() + s["labelled_pairs"].as_u64().unwrap();
        if stored >= (SMALL + BIG / 10) as u64 && acknowledged.len() >= 5 {
            break;
        }
        assert!(!import.is_finished(), "the import ended before the kill");
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the import did not get under way"
        );
    }
    server.kill();
    assert!(
        import.await.unwrap().is_err(),
        "an import cut by kill -9 is not acknowledged"
    );

    let server = Server::start(&app, &[]).await;
    assert_all_there(&server.export(&project, &app.admin).await, &acknowledged);
    let (_, s) = server.get(&stats, &app.admin).await;
    let stored = s["pending_pairs"].as_u64().unwrap() + s["labelled_pairs"].as_u64().unwrap();
    let from_big = stored as usize - SMALL;
    assert!(
        from_big > 0 && from_big < BIG,
        "the kill came mid-import: {from_big}"
    );
    assert_eq!(
        from_big % 500,
        0,
        "an import keeps whole chunks of 500 lines"
    );
    // The same file again stores the rest and nothing twice.
    let resp = server
        .http
        .post(format!("{}/api/v1/projects/{project}/pairs", server.base))
        .bearer_auth(&app.admin)
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, report) = answer(resp).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["inserted"], json!(BIG - from_big), "{report}");
    assert_eq!(report["duplicates"], json!(from_big), "{report}");
    let (_, s) = server.get(&stats, &app.admin).await;
    let stored = s["pending_pairs"].as_u64().unwrap() + s["labelled_pairs"].as_u64().unwrap();
    assert_eq!(stored as usize, SMALL + BIG);
    // Labelling goes on.
    assert!(server.label_one(&project, &annotator).await.is_some());
}

async fn kill_during_a_training_run_loses_nothing_and_installs_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let models = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::byte_level_for_tests();
    let model = LanguageModel::random(
        ModelConfig::tiny(tok.vocab_size()),
        tok,
        &candle_core::Device::Cpu,
        7,
    )
    .unwrap();
    let model_path = models.path().join("tiny");
    model.save(&model_path).unwrap();
    let model_flag = model_path.display().to_string();
    let serve_flags = ["--model", model_flag.as_str()];

    // Rounds far apart, so that only the run asked for below trains; enough epochs that it is still
    // running when the kill comes.
    let project = app
        .create_project(
            json!({"name": "crash-train", "train_every": 10000, "epochs": 5000,
                               "batch_size": 2}),
        )
        .await;
    let annotator = app.annotator("ann").await;
    app.import(&project, "pairs", &pair_lines("train", 40))
        .await;

    let server = Server::start(&app, &serve_flags).await;
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 8 {
        let id = server.label_one(&project, &annotator).await;
        acknowledged.push(id.expect("a pair to label"));
    }
    let (status, started) = server
        .post(
            &format!("/api/v1/projects/{project}/train"),
            &app.admin,
            None,
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let run_path = format!("/api/v1/training-runs/{run_id}");
    let began = Instant::now();
    loop {
        let (_, run) = server.get(&run_path, &app.admin).await;
        if run["status"] == "running" && run["step"].as_i64().unwrap() >= 2 {
            break;
        }
        assert!(
            run["status"] == "queued" || run["status"] == "running",
            "the run ended before the kill: {run}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more label in the middle of the run.
    acknowledged.push(
        server
            .label_one(&project, &annotator)
            .await
            .expect("a pair to label during training"),
    );
    server.kill();

    let server = Server::start(&app, &serve_flags).await;
    assert_all_there(&server.export(&project, &app.admin).await, &acknowledged);
    let (_, run) = server.get(&run_path, &app.admin).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("interrupted"),
        "{run}"
    );
    assert!(run["model_version"].is_null(), "{run}");
    // The killed run installed nothing: the project still serves the reference.
    let (_, versions) = server
        .get(
            &format!("/api/v1/projects/{project}/model-versions"),
            &app.admin,
        )
        .await;
    let trained = versions
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["project_id"] == json!(project))
        .count();
    assert_eq!(trained, 0, "{versions}");
    // The restarted server retries the run and goes on serving pairs meanwhile.
    let (_, runs) = server
        .get(
            &format!("/api/v1/projects/{project}/training-runs"),
            &app.admin,
        )
        .await;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] != json!(run_id)
                && (r["status"] == "queued" || r["status"] == "running")),
        "the interrupted run is retried: {runs}"
    );
    assert!(server.label_one(&project, &annotator).await.is_some());
}
