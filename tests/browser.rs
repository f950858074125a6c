//! The pages in a real browser: headless Chromium, driven over WebDriver (chromedriver) against the real
//! server on 127.0.0.1:0, on SQLite and (with TEST_DATABASE_URL) PostgreSQL. Skips with a note when
//! chromedriver or Chromium is absent (fails instead under PREFLOOP_TEST_STRICT=1); CI installs them. Screenshots land in <target>/screenshots/.

mod common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use prefloop::http::{AppState, HttpConfig, app};
use prefloop::store::sessions::create_login_link;
use prefloop::store::users::{Role, UserKind, create_user};
use serde_json::{Value, json};
use sqlx::Row;

db_tests!(
    annotator_answers_with_the_keyboard,
    admin_imports_and_reads_the_dashboard,
    script_in_a_completion_is_shown_as_text,
    the_workbench_waits_for_a_pair_and_goes_on_by_itself,
    raw_text_on_a_phone_and_the_review_of_a_flag,
);

fn chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file())
    })
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
}

/// The running server, a chromedriver and a browser session; everything stops on drop.
struct Browser {
    app: TestApp,
    base: String,
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `None` (and a note on stderr) when this machine has no chromedriver or Chromium; a panic instead
/// under PREFLOOP_TEST_STRICT=1.
async fn start(backend: Backend) -> Option<Browser> {
    let (driver_path, chrome) = match (chromedriver(), chromium()) {
        (Some(driver), Some(chrome)) => (driver, chrome),
        (driver, _) => {
            let missing = match driver {
                None => "chromedriver (or Chromium) is not on PATH",
                Some(_) => "Chromium is not on PATH",
            };
            common::skip_unless_strict(
                missing,
                "install them (Debian: apt-get install chromium chromium-driver) or set CHROMEDRIVER \
                 and CHROMIUM to their paths",
            );
            return None;
        }
    };
    let test_app = TestApp::new(backend).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = HttpConfig {
        public_url: base.clone(),
        ..HttpConfig::default()
    };
    let router = app(AppState::new(test_app.store.clone(), config));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let port = free_port();
    let driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("start a Chromium session");
    Some(Browser {
        app: test_app,
        base,
        client,
        driver,
        _profile: profile,
    })
}

impl Browser {
    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` until it returns something other than null/false; fails after 10 s.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.js(script).await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.js("return document.body.innerText").await;
                panic!("timed out waiting for {what}; the page says: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// Clicks the element `css` selects.
    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn screenshot(&self, name: &str, backend: Backend) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{backend:?}.png").to_lowercase());
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    async fn sign_in_with_token(&self, token: &str) {
        self.goto("/login").await;
        let input = self
            .client
            .find(Locator::Css("input[name=token]"))
            .await
            .unwrap();
        input.send_keys(token).await.unwrap();
        self.client
            .find(Locator::Css("form[action='/login'] button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for(
            "the start page",
            "return document.querySelector('header.bar') !== null",
        )
        .await;
    }

    /// The pair on screen now, once the workbench shows one different from `previous`.
    async fn shown_pair_after(&self, previous: &str) -> String {
        let script = format!(
            "const b = document.getElementById('bench'); \
             return (b.dataset.pair && b.dataset.pair !== '{previous}' && !document.getElementById('work').hidden) ? b.dataset.pair : null"
        );
        self.wait_for("the next pair", &script)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Flags the pair on screen with `note` by the keyboard and the dialog (the page then skips it).
    async fn flag(&self, note: &str) {
        self.press('f').await;
        self.wait_for(
            "the flag box",
            "return document.getElementById('flag-dialog').open",
        )
        .await;
        self.client
            .find(Locator::Id("flag-note"))
            .await
            .unwrap()
            .send_keys(note)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("#flag-form button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn answered(&self) -> String {
        self.text("#answered").await
    }
}

fn pairs_ndjson(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({
                "prompt": format!("Write the opening line of review {i}."),
                "completion_a": format!("**A{i}**: a *warm* opening.\n\n```rust\nlet x = {i};\n```"),
                "completion_b": format!("B{i}: a cold opening, with a list:\n\n- one\n- two"),
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Current and superseded judgments of one user, oldest first: (pair, choice, rationale, superseded).
async fn judgments_of(app: &TestApp, user_id: &str) -> Vec<(String, String, Option<String>, bool)> {
    sqlx::query(
        "SELECT pair_id, choice, rationale, superseded_at FROM judgments WHERE user_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(app.store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let superseded: Option<i64> = r.try_get("superseded_at").unwrap();
        (
            r.try_get("pair_id").unwrap(),
            r.try_get("choice").unwrap(),
            r.try_get("rationale").unwrap(),
            superseded.is_some(),
        )
    })
    .collect()
}

async fn annotator_answers_with_the_keyboard(backend: Backend) {
    let Some(b) = start(backend).await else {
        return;
    };
    let project = b
        .app
        .create_project(json!({"name": "reviews", "label_budget": 20,
            "guidelines": "# Prefer warmth\nPick the **warmer** opening."}))
        .await;
    b.app.import(&project, "pairs", &pairs_ndjson(8)).await;
    let (ann, token) = create_user(&b.app.store, "ada", Role::Annotator, UserKind::Human)
        .await
        .unwrap();

    b.sign_in_with_token(&token).await;
    assert!(b.text("main").await.contains("reviews"));
    b.goto(&format!("/projects/{project}/annotate")).await;

    // Five answers by keyboard: left (1), right (→), tie (T), skip (S) then undo (U), both bad (B), right (2).
    let mut pair = b.shown_pair_after("").await;
    // A first visit opens the guidelines; the criterion line (their first line) stays on the page.
    b.wait_for(
        "the guidelines on a first visit",
        "return document.getElementById('guidelines').open",
    )
    .await;
    b.client
        .find(Locator::Css("#guidelines button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(b.text("#criterion").await, "Criterion: Prefer warmth");
    b.screenshot("workbench", backend).await;
    let mut expected = Vec::new();
    b.client
        .find(Locator::Id("rationale"))
        .await
        .unwrap()
        .send_keys("warmer")
        .await
        .unwrap();
    // Leave the rationale box so the keys reach the page.
    b.press(Key::Escape.into()).await;
    for (key, choice) in [('1', "left"), (Key::Right.into(), "right"), ('t', "tie")] {
        b.press(key).await;
        expected.push((pair.clone(), choice));
        pair = b.shown_pair_after(&pair).await;
    }
    assert_eq!(b.answered().await, "3");
    let skipped = pair.clone();
    b.press('s').await;
    pair = b.shown_pair_after(&pair).await;
    assert_eq!(b.answered().await, "4");
    b.press('u').await;
    pair = b.shown_pair_after(&pair).await;
    assert_eq!(pair, skipped, "undo brings the skipped pair back");
    assert_eq!(b.answered().await, "3");
    b.press('b').await;
    expected.push((pair.clone(), "both_bad"));
    pair = b.shown_pair_after(&pair).await;
    b.press('2').await;
    expected.push((pair.clone(), "right"));
    b.wait_for(
        "five answers",
        "return document.getElementById('answered').textContent === '5'",
    )
    .await;
    pair = b.shown_pair_after(&pair).await;

    // The database holds exactly these answers, plus the undone skip kept as superseded.
    let rows = judgments_of(&b.app, &ann.id).await;
    let current: Vec<(String, &str)> = rows
        .iter()
        .filter(|r| !r.3)
        .map(|r| (r.0.clone(), r.1.as_str()))
        .collect();
    let mut want: Vec<(String, &str)> = expected.clone();
    let mut got = current.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let superseded: Vec<_> = rows.iter().filter(|r| r.3).collect();
    assert_eq!(superseded.len(), 1);
    assert_eq!(
        (superseded[0].0.as_str(), superseded[0].1.as_str()),
        (skipped.as_str(), "skip")
    );
    let first = rows.iter().find(|r| r.0 == expected[0].0 && !r.3).unwrap();
    assert_eq!(
        first.2.as_deref(),
        Some("warmer"),
        "the rationale is stored"
    );
    assert_eq!(b.text("#remaining").await, "15");

    // Guidelines are one key away, rendered.
    b.press('g').await;
    b.wait_for(
        "guidelines",
        "return document.getElementById('guidelines').open",
    )
    .await;
    let h = b.text("#guidelines .md h1").await;
    assert_eq!(h, "Prefer warmth");
    b.press(Key::Escape.into()).await;

    // Flag with a note: stored for the admins, and the pair is skipped.
    b.flag("completion B is cut off").await;
    b.shown_pair_after(&pair).await;
    let note: String = sqlx::query_scalar("SELECT note FROM flags WHERE user_id = $1")
        .bind(&ann.id)
        .fetch_one(b.app.store.pool())
        .await
        .unwrap();
    assert_eq!(note, "completion B is cut off");

    // An annotator never sees the admin pages.
    b.goto("/admin").await;
    assert!(b.text("main").await.contains("admin pages are for admins"));
    b.goto(&format!("/admin/projects/{project}")).await;
    assert!(b.text("h1").await.contains("Not for you"));

    // Signing out ends the session.
    b.goto("/").await;
    b.client
        .find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for("the sign-in page", "return location.pathname === '/login'")
        .await;
    b.goto("/").await;
    b.wait_for(
        "a redirect to sign in",
        "return location.pathname === '/login'",
    )
    .await;
}

async fn admin_imports_and_reads_the_dashboard(backend: Backend) {
    let Some(b) = start(backend).await else {
        return;
    };
    let admin = create_user(&b.app.store, "grace", Role::Admin, UserKind::Human)
        .await
        .unwrap()
        .0;
    let code = create_login_link(&b.app.store, &admin.id).await.unwrap();
    b.goto(&format!("/login/link/{code}")).await;
    // The link shows whom it signs in; only the button spends it.
    assert!(b.text("h1").await.contains("Sign in as grace"));
    b.client
        .find(Locator::Css(
            "form[action^='/login/link/'] button[type=submit]",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for("the admin page", "return location.pathname === '/admin'")
        .await;

    // Create a project with the form.
    b.client
        .find(Locator::Css(
            "form[action='/admin/projects'] input[name=name]",
        ))
        .await
        .unwrap()
        .send_keys("openings")
        .await
        .unwrap();
    b.client
        .find(Locator::Css(
            "form[action='/admin/projects'] input[name=label_budget]",
        ))
        .await
        .unwrap()
        .send_keys("40")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("form[action='/admin/projects'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for(
        "the dashboard",
        "return location.pathname.startsWith('/admin/projects/')",
    )
    .await;
    let project = b
        .js("return location.pathname.split('/')[3]")
        .await
        .as_str()
        .unwrap()
        .to_string();

    // Upload a file whose line 3 is broken.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    let mut body = pairs_ndjson(2);
    body.push_str("{\"prompt\": \"no completions\"\n");
    body.push_str(
        &pairs_ndjson(12)
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    std::fs::write(&file, body).unwrap();
    b.client
        .find(Locator::Id("import-file"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#import-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rejected = b
        .wait_for("the import report", "const li = document.querySelector('#import-result .rejected li'); return li ? li.textContent : null")
        .await;
    assert!(
        rejected.as_str().unwrap().starts_with("line 3:"),
        "{rejected}"
    );
    assert!(b.text("#import-result").await.contains("12 stored"));
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs WHERE project_id = $1")
        .bind(&project)
        .fetch_one(b.app.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 12);

    // Some answers from two annotators (one leaning left), then the dashboard shows them.
    for (name, lean_left) in [("ann", true), ("bob", false)] {
        let token = b.app.annotator(name).await;
        for i in 0..5 {
            let (_, lease) = b.app.next(&project, &token).await;
            let choice = if lean_left || i % 2 == 0 {
                "left"
            } else {
                "tie"
            };
            b.app
                .judge(lease["lease_id"].as_str().unwrap(), &token, choice)
                .await;
        }
    }
    // Spread the answers over the last hours with varied answer times, as a real day would have them,
    // so the charts in the screenshot have a shape (the counts asserted below do not depend on it).
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM judgments WHERE project_id = $1 ORDER BY id")
            .bind(&project)
            .fetch_all(b.app.store.pool())
            .await
            .unwrap();
    let now = prefloop::store::now_ms();
    for (i, id) in ids.iter().enumerate() {
        sqlx::query("UPDATE judgments SET created_at = $1, seconds = $2 WHERE id = $3")
            .bind(now - (ids.len() - i) as i64 * 1_500_000)
            .bind(4.0 + ((i * 7) % 11) as f64 * 2.5)
            .bind(id)
            .execute(b.app.store.pool())
            .await
            .unwrap();
    }
    b.client.set_window_size(1280, 1500).await.unwrap();
    b.goto(&format!("/admin/projects/{project}")).await;
    assert_eq!(b.text("#stat-labels").await, "10");
    let rows = b.text("#annotators tbody").await;
    assert!(rows.contains("ann") && rows.contains("100% of 5"), "{rows}");
    let lines = b
        .js("return document.querySelectorAll('svg.chart path.line').length")
        .await;
    assert_eq!(lines, json!(1), "the labels-over-time chart is drawn");
    let bars = b
        .js("return document.querySelectorAll('svg.chart rect.bar').length")
        .await;
    assert!(bars.as_i64().unwrap() > 0);
    assert!(b.text("#model").await.contains("No model attached"));
    b.screenshot("dashboard", backend).await;

    // A refused form comes back with the reason and everything as typed; corrected, it saves.
    let field = |name: &'static str| {
        let client = b.client.clone();
        async move {
            client
                .find(Locator::Css(&format!("#settings [name={name}]")))
                .await
                .unwrap()
        }
    };
    field("guidelines")
        .await
        .send_keys("Prefer the warmer reply.")
        .await
        .unwrap();
    let beta = field("beta").await;
    beta.clear().await.unwrap();
    beta.send_keys("warm").await.unwrap();
    b.click("#settings button[type=submit]").await;
    let why = b
        .wait_for(
            "the refusal beside the form",
            "const e = document.getElementById('settings-error'); return e ? e.innerText : null",
        )
        .await;
    assert!(why.as_str().unwrap().contains("beta"), "{why}");
    assert_eq!(
        field("beta").await.prop("value").await.unwrap().unwrap(),
        "warm"
    );
    assert!(
        field("guidelines")
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap()
            .contains("Prefer the warmer reply.")
    );
    b.js("document.getElementById('settings-error').scrollIntoView({block: 'start'})")
        .await;
    b.screenshot("settings-refused", backend).await;
    let beta = field("beta").await;
    beta.clear().await.unwrap();
    beta.send_keys("0.1").await.unwrap();

    // Settings save through the form.
    let budget = b
        .client
        .find(Locator::Css("#settings input[name=label_budget]"))
        .await
        .unwrap();
    budget.clear().await.unwrap();
    budget.send_keys("60").await.unwrap();
    b.click("#settings button[type=submit]").await;
    b.wait_for(
        "the saved notice",
        "return location.search.includes('saved')",
    )
    .await;
    let (_, p) = b
        .app
        .json(
            "GET",
            &format!("/api/v1/projects/{project}"),
            &b.app.admin,
            None,
        )
        .await;
    assert_eq!(p["label_budget"], 60);

    // Add an annotator: the sign-in link is shown once and signs them in.
    b.goto("/admin").await;
    b.client
        .find(Locator::Css("form[action='/admin/users'] input[name=name]"))
        .await
        .unwrap()
        .send_keys("carol")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("form[action='/admin/users'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = b
        .wait_for(
            "the sign-in link",
            "const i = document.querySelector('#new-link input'); return i ? i.value : null",
        )
        .await;
    let link = link.as_str().unwrap().to_string();
    assert!(
        link.starts_with(&format!("{}/login/link/", b.base)),
        "{link}"
    );
    b.screenshot("admin", backend).await;
    b.goto("/admin").await;
    assert!(
        b.js("return document.querySelector('#new-link')")
            .await
            .is_null(),
        "shown once"
    );

    // Revoke carol from the people table.
    b.js("window.confirm = () => true; return null").await;
    let carol: String = sqlx::query_scalar("SELECT id FROM users WHERE name = 'carol'")
        .fetch_one(b.app.store.pool())
        .await
        .unwrap();
    b.client
        .find(Locator::Css(&format!(
            "form[action='/admin/users/{carol}/revoke'] button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for(
        "the revoked row",
        "return document.querySelector('tr.revoked') !== null",
    )
    .await;
    let revoked: Option<i64> = sqlx::query_scalar("SELECT revoked_at FROM users WHERE id = $1")
        .bind(&carol)
        .fetch_one(b.app.store.pool())
        .await
        .unwrap();
    assert!(revoked.is_some());
}

async fn script_in_a_completion_is_shown_as_text(backend: Backend) {
    let Some(b) = start(backend).await else {
        return;
    };
    let project = b
        .app
        .create_project(json!({"name": "xss", "lease_seconds": 15}))
        .await;
    let payload = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">";
    b.app
        .import(
            &project,
            "pairs",
            &(json!({"prompt": "Say <b>hi</b>", "completion_a": payload, "completion_b": payload})
                .to_string()
                + "\n"),
        )
        .await;
    let token = b.app.annotator("eve").await;
    b.sign_in_with_token(&token).await;
    b.goto(&format!("/projects/{project}/annotate")).await;
    b.shown_pair_after("").await;
    let left = b.text("#left").await;
    assert!(
        left.contains("<script>window.__pwned = 1</script>"),
        "{left}"
    );
    assert!(b.text("#prompt").await.contains("Say <b>hi</b>"));
    let injected = b
        .js("return document.querySelectorAll('#work script, #work img, #prompt b').length")
        .await;
    assert_eq!(injected, json!(0));
    assert!(
        b.js("return window.__pwned === undefined")
            .await
            .as_bool()
            .unwrap()
    );

    // Answering the only pair leaves a clear screen; undo brings the pair back.
    b.press('1').await;
    b.wait_for(
        "the done screen",
        "return !document.getElementById('done').hidden",
    )
    .await;
    assert_eq!(b.text("#done-title").await, "Nothing left to label");
    b.press('u').await;
    b.wait_for(
        "the pair again",
        "return !document.getElementById('work').hidden",
    )
    .await;

    // On a phone the two completions stack.
    b.client.set_window_size(420, 900).await.unwrap();
    let stacked = b
        .js("const s = document.querySelectorAll('.side'); return s[1].getBoundingClientRect().top >= s[0].getBoundingClientRect().bottom")
        .await;
    assert_eq!(stacked, json!(true));

    // While the page is open its lease is kept alive (15 s leases, a heartbeat every 5 s) ...
    let expiry = || async {
        sqlx::query_scalar::<_, i64>("SELECT expires_at FROM leases WHERE status = 'active'")
            .fetch_one(b.app.store.pool())
            .await
            .unwrap()
    };
    let before = expiry().await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert!(expiry().await > before, "the heartbeat extends the lease");
    // ... and given back when the page closes.
    b.goto("/").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM leases ORDER BY created_at DESC LIMIT 1")
                .fetch_one(b.app.store.pool())
                .await
                .unwrap();
        if status == "released" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was not released: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_workbench_waits_for_a_pair_and_goes_on_by_itself(backend: Backend) {
    let Some(b) = start(backend).await else {
        return;
    };
    let project = b
        .app
        .create_project(json!({"name": "wait", "lease_seconds": 600}))
        .await;
    b.app.import(&project, "pairs", &pairs_ndjson(1)).await;
    // Another annotator holds the only pair.
    let holder = b.app.annotator("holder").await;
    let (_, held) = b.app.next(&project, &holder).await;
    let lease = held["lease_id"].as_str().unwrap().to_string();

    let token = b.app.annotator("eve").await;
    b.sign_in_with_token(&token).await;
    b.goto(&format!("/projects/{project}/annotate")).await;
    b.wait_for(
        "the waiting screen",
        "return !document.getElementById('waiting').hidden && document.getElementById('done').hidden",
    )
    .await;
    assert!(
        b.text("#waiting-text").await.contains("other annotators"),
        "it says where the pairs are"
    );
    b.screenshot("workbench-waiting", backend).await;

    // The holder gives the pair back: the page shows it without a reload.
    let (status, _) = b
        .app
        .call(
            "POST",
            &format!("/api/v1/leases/{lease}/release"),
            Some(&holder),
            None,
            &[],
        )
        .await;
    assert!(status.is_success());
    let pair = b.shown_pair_after("").await;
    assert_eq!(pair, held["pair_id"].as_str().unwrap());
    assert!(
        b.js("return document.getElementById('waiting').hidden")
            .await
            .as_bool()
            .unwrap()
    );

    // The answer counts, and the count survives a reload; with nothing left the page says so.
    b.press('1').await;
    b.wait_for(
        "the done screen",
        "return !document.getElementById('done').hidden",
    )
    .await;
    assert_eq!(b.answered().await, "1");
    b.goto(&format!("/projects/{project}/annotate")).await;
    b.wait_for(
        "the done screen again",
        "return !document.getElementById('done').hidden",
    )
    .await;
    assert_eq!(
        b.answered().await,
        "1",
        "answered this session survives a reload"
    );
    assert_eq!(b.text("#done-title").await, "Nothing left to label");
}

async fn raw_text_on_a_phone_and_the_review_of_a_flag(backend: Backend) {
    let Some(b) = start(backend).await else {
        return;
    };
    let project = b
        .app
        .create_project(
            json!({"name": "raw", "display": "raw", "labels_per_pair": 2,
            "criterion": "Which continuation is more positive?"}),
        )
        .await;
    let pairs: String = (0..3)
        .map(|i| {
            json!({"prompt": format!("The film {i}"), "completion_a": format!("\n    was a joy {i}"),
                   "completion_b": format!(" was dull {i}")})
            .to_string()
                + "\n"
        })
        .collect();
    b.app.import(&project, "pairs", &pairs).await;
    let token = b.app.annotator("ada").await;
    b.sign_in_with_token(&token).await;

    // A phone: one header row, the answer buttons fixed on screen, no key hints on touch.
    b.client.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("/projects/{project}/annotate")).await;
    let first = b.shown_pair_after("").await;
    assert_eq!(
        b.text("#criterion").await,
        "Criterion: Which continuation is more positive?"
    );
    // Raw: each side is the prompt (grey) and the continuation as written: an indented line is text,
    // not a code box.
    let raw = b
        .js("const l = [...document.querySelectorAll('#left pre.raw, #right pre.raw')].find((e) => e.textContent.includes('joy')); \
             return l && l.querySelector('.raw-prompt') \
             ? [l.querySelector('.raw-prompt').textContent, l.textContent, document.querySelectorAll('#work code').length] : null")
        .await;
    assert!(raw[0].as_str().unwrap().starts_with("The film"), "{raw}");
    assert!(raw[1].as_str().unwrap().contains("\n    was"), "{raw}");
    assert_eq!(raw[2], json!(0));
    let layout = b
        .js("const a = document.querySelector('.answers').getBoundingClientRect(); \
             const h = document.querySelector('header.bar').getBoundingClientRect(); \
             const r = document.querySelector('[data-choice=right]').getBoundingClientRect(); \
             return [a.bottom <= window.innerHeight + 1, h.height < 60, r.right <= window.innerWidth + 1, \
                     getComputedStyle(document.querySelector('.answers')).position]")
        .await;
    assert_eq!(layout, json!([true, true, true, "fixed"]), "phone layout");
    b.screenshot("workbench-phone", backend).await;

    // Flag the pair on screen: it is skipped, and held from everyone until an admin resolves it.
    b.flag("the continuation is cut").await;
    b.shown_pair_after(&first).await;
    let other = b.app.annotator("bob").await;
    let mut seen = Vec::new();
    while let (axum::http::StatusCode::OK, l) = b.app.next(&project, &other).await {
        seen.push(l["pair_id"].as_str().unwrap().to_string());
        b.app
            .judge(l["lease_id"].as_str().unwrap(), &other, "left")
            .await;
    }
    assert!(!seen.contains(&first), "a flagged pair is held: {seen:?}");

    // The admin sees the flag, excludes the pair, and finds it in the data browser.
    b.client.set_window_size(1280, 1400).await.unwrap();
    let admin = b.app.admin.clone();
    b.sign_in_with_token(&admin).await;
    b.goto(&format!("/admin/projects/{project}")).await;
    assert!(b.text("#flags").await.contains("the continuation is cut"));
    b.client
        .find(Locator::Css("#flags button[value=exclude]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for(
        "the flag resolved",
        "return document.querySelector('#flags') && document.querySelector('#flags').innerText.includes('excluded')",
    )
    .await;
    let excluded: i64 = sqlx::query_scalar("SELECT excluded FROM pairs WHERE id = $1")
        .bind(&first)
        .fetch_one(b.app.store.pool())
        .await
        .unwrap();
    assert_eq!(excluded, 1);
    b.goto(&format!("/admin/projects/{project}/pairs?flagged=true"))
        .await;
    let rows = b.text("#pairs").await;
    assert!(
        rows.contains("excluded") && rows.contains("ada: skip"),
        "{rows}"
    );
    b.screenshot("data-browser", backend).await;
}
