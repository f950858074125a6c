//! Test harness: the real router over a real database. SQLite in a temp dir always; PostgreSQL (a fresh
//! database per test) when TEST_DATABASE_URL is set. `skip_unless_strict` is the one place a test that
//! lacks a dependency (PostgreSQL, Chromium, the demo model) decides between skipping and failing.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use prefloop::http::{AppState, HttpConfig, app};
use prefloop::store::Store;
use prefloop::store::users::{Role, UserKind, create_user};
use serde_json::Value;
use tower::ServiceExt;

pub struct TestApp {
    pub store: Store,
    pub router: Router,
    pub admin: String,
    /// The flags that point `prefloop serve` at this database (`--data-dir` or `--database-url`), for
    /// tests that run the real binary on it.
    pub db_args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
    pg_db: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether `PREFLOOP_TEST_STRICT` is set (to anything but empty or "0"): then no test may skip.
pub fn strict() -> bool {
    std::env::var("PREFLOOP_TEST_STRICT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Called by a test about to skip because `missing` is absent; `install` says how to get it. Prints a
/// note and returns, so the caller can return; under `PREFLOOP_TEST_STRICT=1` (as `.ci/run` sets) it
/// panics instead, so that a green run cannot hide a test that never ran.
pub fn skip_unless_strict(missing: &str, install: &str) {
    if strict() {
        panic!("{missing}, and PREFLOOP_TEST_STRICT is set, so this test may not skip: {install}");
    }
    eprintln!("{missing}: test skipped ({install}; PREFLOOP_TEST_STRICT=1 makes this a failure)");
}

/// Generates one test per database: `NAME::sqlite` always, `NAME::postgres` which skips (with a note)
/// when TEST_DATABASE_URL is not set, or fails under `PREFLOOP_TEST_STRICT=1`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if std::env::var("TEST_DATABASE_URL").is_err() {
                    $crate::common::skip_unless_strict(
                        "TEST_DATABASE_URL is not set",
                        "start PostgreSQL (Debian: apt-get install postgresql) and set \
                         TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres, or run .ci/run",
                    );
                    return;
                }
                super::$name($crate::common::Backend::Postgres).await;
            }
        }
    )*};
}

impl TestApp {
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_config(backend, HttpConfig::default()).await
    }

    pub async fn with_config(backend: Backend, config: HttpConfig) -> TestApp {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,prefloop=info"))
            .with_test_writer()
            .try_init();
        let (store, dir, pg_db, db_args) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = Store::open_data_dir(dir.path()).await.expect("open sqlite");
                let args = vec!["--data-dir".into(), dir.path().display().to_string()];
                (store, Some(dir), None, args)
            }
            Backend::Postgres => {
                let base = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
                let name = format!("prefloop_test_{}", uuid::Uuid::new_v4().simple());
                create_database(&base, &name).await;
                let url = match base.rfind('/') {
                    Some(i) if base[..i].ends_with(|c: char| c != '/') => {
                        format!("{}/{name}", &base[..i])
                    }
                    _ => format!("{base}/{name}"),
                };
                let store = Store::connect(&url).await.expect("connect test database");
                let args = vec!["--database-url".into(), url];
                (store, None, Some((base, name)), args)
            }
        };
        let (_, admin) = create_user(&store, "root", Role::Admin, UserKind::Human)
            .await
            .expect("admin");
        let router = app(AppState::new(store.clone(), config));
        TestApp {
            store,
            router,
            admin,
            db_args,
            _dir: dir,
            pg_db,
        }
    }

    pub async fn annotator(&self, name: &str) -> String {
        create_user(&self.store, name, Role::Annotator, UserKind::Human)
            .await
            .expect("annotator")
            .1
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>) {
        let (status, body, _) = self
            .call_with_headers(method, uri, token, body, headers)
            .await;
        (status, body)
    }

    /// Like `call`, also giving back the response headers.
    pub async fn call_with_headers(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router answers");
        let status = resp.status();
        let response_headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, bytes.to_vec(), response_headers)
    }

    /// A JSON request; the answer's body parsed as JSON (Null when empty).
    pub async fn json(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self
            .call(
                method,
                uri,
                Some(token),
                body.map(|b| b.to_string().into_bytes()),
                &[("content-type", "application/json")],
            )
            .await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn create_project(&self, body: Value) -> String {
        let (status, v) = self
            .json("POST", "/api/v1/projects", &self.admin, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn import(&self, project: &str, kind: &str, ndjson: &str) -> Value {
        let (status, bytes) = self
            .call(
                "POST",
                &format!("/api/v1/projects/{project}/{kind}"),
                Some(&self.admin),
                Some(ndjson.as_bytes().to_vec()),
                &[],
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The project's stats as an admin reads them.
    pub async fn stats(&self, project: &str) -> Value {
        let uri = format!("/api/v1/projects/{project}/stats");
        let (status, stats) = self.json("GET", &uri, &self.admin, None).await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        stats
    }

    pub async fn next(&self, project: &str, token: &str) -> (StatusCode, Value) {
        self.json(
            "POST",
            &format!("/api/v1/projects/{project}/next"),
            token,
            None,
        )
        .await
    }

    pub async fn judge(&self, lease: &str, token: &str, choice: &str) -> (StatusCode, Value) {
        self.json(
            "POST",
            &format!("/api/v1/leases/{lease}/judgment"),
            token,
            Some(serde_json::json!({"choice": choice})),
        )
        .await
    }

    pub async fn export(&self, project: &str, format: &str) -> Vec<Value> {
        let (status, bytes) = self
            .call(
                "GET",
                &format!("/api/v1/projects/{project}/export?format={format}"),
                Some(&self.admin),
                None,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each export line is JSON"))
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((base, name)) = self.pg_db.take() {
            let store = self.store.clone();
            // Best effort: a fresh runtime on another thread, since Drop may run inside one.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async move {
                    store.close().await;
                    let mut admin = connect_server(&base).await;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                    drop(admin);
                    Some(())
                })
            })
            .join();
        }
    }
}

/// A plain connection to the server in TEST_DATABASE_URL, for creating and dropping test databases
/// (a `Store` would migrate that database too).
async fn connect_server(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .expect("connect to TEST_DATABASE_URL")
}

async fn create_database(base: &str, name: &str) {
    let mut conn = connect_server(base).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
}
