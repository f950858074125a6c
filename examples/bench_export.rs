//! Export benchmark: fills a project with N judgments (default 1,000,000) and streams its TRL and full
//! exports through the real router, reporting rows per second and how much the peak memory grew.
//!
//!     cargo run --release --example bench_export [-- N]        # SQLite in a temp dir
//!     DATABASE_URL=postgres://… cargo run --release --example bench_export

use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use prefloop::http::{AppState, HttpConfig, app};
use prefloop::store::Store;
use prefloop::store::users::{Role, UserKind, create_user};
use tower::ServiceExt;

/// Peak resident memory of this process so far, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

const FILL: [&str; 4] = [
    "INSERT INTO prompts (id, project_id, text, text_hash, meta, split, created_at) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
     SELECT 'q' || i, $1, 'A prompt about film number ' || i, 'h' || i, '{}', 'train', i FROM n",
    "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, meta, source, random_key, \
       status, created_at) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
     SELECT 'p' || i, $1, 'q' || i, 'a fine and moving picture, number ' || i, \
       'a dull and noisy picture, number ' || i, '{}', 'imported', 0.5, 'labelled', i FROM n",
    "INSERT INTO leases (id, pair_id, project_id, user_id, left_is_a, status, created_at, expires_at) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
     SELECT 'l' || i, 'p' || i, $1, $3, i % 2, 'answered', i, i FROM n",
    "INSERT INTO judgments (id, project_id, pair_id, lease_id, user_id, choice, left_is_a, seconds, \
       created_at) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
     SELECT 'j' || i, $1, 'p' || i, 'l' || i, $3, CASE WHEN i % 10 = 0 THEN 'tie' ELSE 'left' END, \
       i % 2, 3.5, i FROM n",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let store = match std::env::var("DATABASE_URL") {
        Ok(url) => Store::connect(&url).await?,
        Err(_) => Store::open_data_dir(dir.path()).await?,
    };
    let (user, token) = create_user(&store, "bench", Role::Admin, UserKind::Human).await?;
    let input = prefloop::store::projects::ProjectInput {
        name: Some(format!("bench-{}", uuid::Uuid::new_v4().simple())),
        ..Default::default()
    };
    let project = prefloop::store::projects::create_project(&store, input).await?;

    let t = Instant::now();
    let mut tx = store.begin_write().await?;
    for sql in FILL {
        sqlx::query(sql)
            .bind(&project.id)
            .bind(n)
            .bind(&user.id)
            .execute(&mut **tx)
            .await?;
    }
    tx.commit().await?;
    println!("filled {n} judgments in {:.1} s", t.elapsed().as_secs_f64());

    let router = app(AppState::new(store.clone(), HttpConfig::default()));
    for format in ["trl", "full"] {
        let before = peak_rss_mib();
        let t = Instant::now();
        let req = Request::get(format!(
            "/api/v1/projects/{}/export?format={format}",
            project.id
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())?;
        let mut body = router.clone().oneshot(req).await?.into_body();
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes += data.len();
                lines += data.iter().filter(|&&b| b == b'\n').count();
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "export {format}: {lines} lines, {:.0} MiB in {secs:.1} s ({:.0} lines/s); \
             peak RSS {before:.0} MiB before, {:.0} MiB after",
            bytes as f64 / (1 << 20) as f64,
            lines as f64 / secs,
            peak_rss_mib()
        );
    }
    Ok(())
}
