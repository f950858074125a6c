//! `prefloop bench-api`: the annotator path under load, with no model. It fills a fresh database with
//! `--pending` pairs, serves it with the real router on a loopback port, and runs `--annotators`
//! serial flows (`/next`, then the judgment, then `/next` …) against it, open loop: each request has a
//! time it is due, `--rate` requests a second in all, and its latency counts from that time, so a slow
//! answer also counts against the requests queued behind it. Afterwards it checks integrity from the
//! full export: every judgment answered 201 is exported exactly once and no pair is labelled twice.
//!
//! The pending count stays where it started: as the loop's generated pairs do, a refill imports as many
//! new pairs as were labelled, every 200 ms, beside the load.
//!
//! The server runs on its own runtime (`--server-threads` workers) and the load on one more thread,
//! in one process, like a load generator beside the server on one machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::http::{AppState, HttpConfig};
use crate::store::items::{ImportKind, import_ndjson};
use crate::store::projects::{ProjectInput, create_project};
use crate::store::users::{Role, UserKind, create_user};
use crate::store::{Dialect, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A PostgreSQL server (postgres://…) to run on: a fresh database is made there for the run and
    /// dropped after it. Default: SQLite in a fresh temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Pending pairs in the project when the load starts.
    #[arg(long, default_value_t = 200_000)]
    pending: usize,
    #[arg(long, default_value_t = 100)]
    annotators: usize,
    /// Requests a second offered in all; each annotator's flow gets an equal share.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of load, the warm-up included.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seconds at the start left out of the figures.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// The project's label budget (default: none). With one, every lease also checks what is spent.
    #[arg(long)]
    budget: Option<i64>,
    /// Worker threads of the server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
}

/// What one request met.
#[derive(Debug, Clone, Copy)]
struct Sample {
    next: bool,
    /// Seconds from the start of the load to the time the request was due.
    due: f64,
    /// Seconds from due to answered (what the annotator waited, queueing behind their own flow
    /// included).
    latency: f64,
    /// Seconds from sent to answered.
    service: f64,
    status: u16,
}

/// One annotator's flow: what it met and the judgments the server said it created.
#[derive(Debug, Default)]
struct Flow {
    samples: Vec<Sample>,
    created: Vec<String>,
}

/// When one flow's requests are due: `origin + phase + k × period`, until `end` after the origin.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    origin: tokio::time::Instant,
    phase: Duration,
    period: Duration,
    end: Duration,
}

/// What the load ran against.
struct Target {
    base: String,
    project: String,
    admin: String,
    annotators: Vec<String>,
    /// Labels acknowledged so far, for the refill.
    labelled: Arc<AtomicU64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let valid = args.annotators > 0
        && args.rate > 0.0
        && args.seconds > 0.0
        && (0.0..args.seconds).contains(&args.warmup)
        && args.server_threads > 0;
    if !valid {
        bail!(
            "--annotators, --rate, --seconds and --server-threads must be above 0, and --warmup \
             below --seconds"
        );
    }
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let temp = tempfile_dir()?;
    let (store, database) = server.block_on(open_fresh(&args, &temp))?;
    let outcome = bench(&args, &server, store.clone());
    server.block_on(async {
        store.close().await;
        if let (Some(url), Some(name)) = (&args.database_url, &database) {
            drop_database(url, name).await?;
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&temp);
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn bench(args: &Args, server: &tokio::runtime::Runtime, store: Store) -> anyhow::Result<Value> {
    let seeded = Instant::now();
    let target = server.block_on(seed(args, &store))?;
    let seed_seconds = seeded.elapsed().as_secs_f64();
    eprintln!(
        "seeded {} pending pairs in {seed_seconds:.1} s",
        args.pending
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(store.clone(), HttpConfig::default());
    let serving = server.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        crate::http::serve_with_shutdown(listener, state, async {
            let _ = stopped.await;
        })
        .await
    });
    let target = Target {
        base: format!("http://{addr}"),
        ..target
    };
    let refilling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refill = server.spawn(refill(
        store.clone(),
        target.project.clone(),
        args.pending,
        target.labelled.clone(),
        refilling.clone(),
    ));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = client_rt.block_on(load_and_check(args, &target, &refilling));
    let _ = stop.send(());
    server.block_on(serving)??;
    let refilled = server.block_on(refill)??;
    let (flows, integrity) = result?;
    let mut report = report(args, &store, seed_seconds, &flows, integrity);
    report["refilled_pairs"] = json!(refilled);
    Ok(report)
}

fn report(
    args: &Args,
    store: &Store,
    seed_seconds: f64,
    flows: &[Flow],
    integrity: Value,
) -> Value {
    let counted: Vec<Sample> = flows
        .iter()
        .flat_map(|f| f.samples.iter().copied())
        .filter(|s| s.due >= args.warmup)
        .collect();
    let window = args.seconds - args.warmup;
    let ok = |s: &Sample| (200..300).contains(&s.status);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for s in &counted {
        *statuses.entry(s.status.to_string()).or_default() += 1;
    }
    let figures = |next: bool| {
        let of_kind: Vec<&Sample> = counted.iter().filter(|s| s.next == next).collect();
        let latency: Vec<f64> = of_kind.iter().map(|s| s.latency).collect();
        let service: Vec<f64> = of_kind.iter().map(|s| s.service).collect();
        json!({
            "requests": of_kind.len(),
            "latency_ms": quantiles(latency),
            "service_ms": quantiles(service),
        })
    };
    // The p99 of each 10 s of the measured window, both kinds together: shows whether the path
    // degrades as the run goes on (dead rows, a growing WAL) or only has scattered spikes.
    let windows = (window / 10.0).ceil().max(1.0) as usize;
    let by_window: Vec<Value> = (0..windows)
        .map(|w| {
            let from = args.warmup + 10.0 * w as f64;
            let latency: Vec<f64> = counted
                .iter()
                .filter(|s| (from..from + 10.0).contains(&s.due))
                .map(|s| s.latency)
                .collect();
            quantiles(latency)["p99"].clone()
        })
        .collect();
    json!({
        "p99_ms_by_10s": by_window,
        "database": match store.dialect() { Dialect::Sqlite => "sqlite", Dialect::Postgres => "postgres" },
        "pending": args.pending,
        "annotators": args.annotators,
        "offered_per_second": args.rate,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "budget": args.budget,
        "server_threads": args.server_threads,
        "seed_seconds": seed_seconds,
        "served_per_second": counted.iter().filter(|s| ok(s)).count() as f64 / window,
        "statuses": statuses,
        "next": figures(true),
        "judgment": figures(false),
        "integrity": integrity,
    })
}

/// p50, p99 and max in milliseconds; nulls when nothing was measured.
fn quantiles(mut secs: Vec<f64>) -> Value {
    secs.sort_by(f64::total_cmp);
    let at = |q: f64| -> Option<f64> {
        let i = ((secs.len() as f64 * q).ceil() as usize).checked_sub(1)?;
        secs.get(i).map(|s| (s * 1e5).round() / 100.0)
    };
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

/// A directory for the SQLite run (unused with `--database-url`).
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "prefloop-bench-api-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The store to run on, and the name of the database made for it on PostgreSQL.
async fn open_fresh(
    args: &Args,
    temp: &std::path::Path,
) -> anyhow::Result<(Store, Option<String>)> {
    let Some(url) = &args.database_url else {
        return Ok((Store::open_data_dir(temp).await?, None));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--database-url must be a postgres:// URL (SQLite runs in a temporary directory)");
    }
    let name = format!("prefloop_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", crate::config::redact(url)))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let store = Store::connect(&with_database(url, &name)?).await?;
    Ok((store, Some(name)))
}

async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await?;
    Ok(())
}

/// `url` with its database (the path) replaced by `name`, its query kept.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("a URL has a scheme")? + 3;
    let (before_query, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let host_end = before_query[scheme_end..]
        .find('/')
        .map_or(before_query.len(), |i| scheme_end + i);
    Ok(format!("{}/{name}{query}", &before_query[..host_end]))
}

/// The project with its pending pairs (half of them with an acquisition score, as the loop's pairs
/// have), the annotators and an admin.
async fn seed(args: &Args, store: &Store) -> anyhow::Result<Target> {
    let project = create_project(
        store,
        ProjectInput {
            name: Some("bench-api".into()),
            label_budget: Some(args.budget),
            ..Default::default()
        },
    )
    .await?;
    add_pairs(store, &project.id, 0, args.pending).await?;
    sqlx::query("UPDATE pairs SET score = random_key WHERE project_id = $1 AND random_key < 0.5")
        .bind(&project.id)
        .execute(store.pool())
        .await?;
    if store.dialect() == Dialect::Postgres {
        // What autovacuum does shortly after a bulk import, done now so that the run starts in the
        // steady state.
        sqlx::query("ANALYZE").execute(store.pool()).await?;
    }
    let (_, admin) = create_user(store, "bench-admin", Role::Admin, UserKind::Human).await?;
    let mut annotators = Vec::with_capacity(args.annotators);
    for i in 0..args.annotators {
        let name = format!("bench-annotator-{i}");
        let (_, token) = create_user(store, &name, Role::Annotator, UserKind::Human).await?;
        annotators.push(token);
    }
    Ok(Target {
        base: String::new(),
        project: project.id,
        admin,
        annotators,
        labelled: Arc::default(),
    })
}

/// Imports pairs numbered `from..from + n` (over 1,000 prompts), as an NDJSON upload is stored.
async fn add_pairs(store: &Store, project: &str, from: usize, n: usize) -> anyhow::Result<()> {
    let mut body = Vec::with_capacity(n * 110);
    for i in from..from + n {
        let line = json!({
            "prompt": format!("Review {} begins: the film", i % 1000),
            "completion_a": format!("was a delight from start to end ({i}a)"),
            "completion_b": format!("dragged on far too long ({i}b)"),
        });
        serde_json::to_writer(&mut body, &line)?;
        body.push(b'\n');
    }
    let imported = import_ndjson(store, project, ImportKind::Pairs, &body).await?;
    if imported.inserted as usize != n {
        bail!("stored {} of {n} new pairs", imported.inserted);
    }
    Ok(())
}

/// Every 200 ms, as many new pairs as were labelled since the last look, numbered from `first`;
/// returns how many it added.
async fn refill(
    store: Store,
    project: String,
    first: usize,
    labelled: Arc<AtomicU64>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u64> {
    let start = labelled.load(Ordering::Relaxed);
    let mut added = 0;
    while running.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let due = labelled.load(Ordering::Relaxed) - start - added;
        if due > 0 {
            add_pairs(&store, &project, first + added as usize, due as usize).await?;
            added += due;
        }
    }
    Ok(added)
}

async fn load_and_check(
    args: &Args,
    target: &Target,
    refilling: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<(Vec<Flow>, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?;
    // Every flow offers rate / annotators requests a second; their phases are spread over one period.
    let period = Duration::from_secs_f64(args.annotators as f64 / args.rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for (i, token) in target.annotators.iter().enumerate() {
        let phase = period.mul_f64(i as f64 / args.annotators as f64);
        let (client, token) = (client.clone(), token.clone());
        let next_url = format!("{}/api/v1/projects/{}/next", target.base, target.project);
        let base = target.base.clone();
        let labelled = target.labelled.clone();
        tasks.push(tokio::spawn(async move {
            let clock = Schedule {
                origin: start,
                phase,
                period,
                end,
            };
            flow(&client, &base, &next_url, &token, clock, &labelled).await
        }));
    }
    let mut flows = Vec::new();
    for t in tasks {
        flows.push(t.await??);
    }
    refilling.store(false, Ordering::Relaxed);
    let integrity = check_integrity(&client, target, &flows).await?;
    Ok((flows, integrity))
}

async fn flow(
    client: &reqwest::Client,
    base: &str,
    next_url: &str,
    token: &str,
    clock: Schedule,
    labelled: &AtomicU64,
) -> anyhow::Result<Flow> {
    let Schedule {
        origin,
        phase,
        period,
        end,
    } = clock;
    let mut out = Flow::default();
    let mut lease: Option<String> = None;
    for k in 0.. {
        let due = origin + phase + period * k;
        if due.duration_since(origin) >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let sent = tokio::time::Instant::now();
        let (next, status) = match &lease {
            None => {
                let resp = client.post(next_url).bearer_auth(token).send().await?;
                let status = resp.status().as_u16();
                if status == 200 {
                    let body: Value = resp.json().await?;
                    let id = body["lease_id"].as_str().context("a lease has an id")?;
                    lease = Some(id.to_string());
                }
                (true, status)
            }
            Some(id) => {
                let choice = if rand::random::<bool>() {
                    "left"
                } else {
                    "right"
                };
                let resp = client
                    .post(format!("{base}/api/v1/leases/{id}/judgment"))
                    .bearer_auth(token)
                    .json(&json!({"choice": choice}))
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                if status == 201 {
                    let body: Value = resp.json().await?;
                    let id = body["id"].as_str().context("a judgment has an id")?;
                    out.created.push(id.to_string());
                    labelled.fetch_add(1, Ordering::Relaxed);
                }
                // Whatever the answer, the flow asks for a new pair next: a lost lease is not retried.
                lease = None;
                (false, status)
            }
        };
        let done = tokio::time::Instant::now();
        out.samples.push(Sample {
            next,
            due: due.duration_since(origin).as_secs_f64(),
            latency: done.duration_since(due).as_secs_f64(),
            service: done.duration_since(sent).as_secs_f64(),
            status,
        });
    }
    Ok(out)
}

/// Reads the full export and compares it with what the server acknowledged.
async fn check_integrity(
    client: &reqwest::Client,
    target: &Target,
    flows: &[Flow],
) -> anyhow::Result<Value> {
    let text = client
        .get(format!(
            "{}/api/v1/projects/{}/export?format=full",
            target.base, target.project
        ))
        .bearer_auth(&target.admin)
        .timeout(Duration::from_secs(600))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut exported: HashMap<String, usize> = HashMap::new();
    let mut labelled_pairs: HashMap<String, usize> = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).context("an export line is JSON")?;
        let id = row["judgment_id"].as_str().context("judgment_id")?;
        *exported.entry(id.to_string()).or_default() += 1;
        let decisive = row["superseded_at"].is_null() && row["choice"] != "skip";
        if decisive {
            let pair = row["pair_id"].as_str().context("pair_id")?;
            *labelled_pairs.entry(pair.to_string()).or_default() += 1;
        }
    }
    let created: HashSet<&String> = flows.iter().flat_map(|f| f.created.iter()).collect();
    let missing = created
        .iter()
        .filter(|id| exported.get(id.as_str()) != Some(&1))
        .count();
    let unacknowledged = exported.keys().filter(|id| !created.contains(id)).count();
    let labelled_twice = labelled_pairs.values().filter(|&&n| n > 1).count();
    Ok(json!({
        "acknowledged": created.len(),
        "exported": exported.len(),
        "acknowledged_not_exported_once": missing,
        "exported_not_acknowledged": unacknowledged,
        "pairs_labelled_twice": labelled_twice,
        "ok": missing == 0 && labelled_twice == 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_gets_the_fresh_database_in_place_of_its_own() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
        assert_eq!(
            with_database(url, "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u:p@h", "b").unwrap(),
            "postgres://u:p@h/b"
        );
    }

    #[test]
    fn quantiles_take_the_sample_at_or_above_the_rank() {
        let q = quantiles((1..=100).map(|i| i as f64 / 1000.0).collect());
        assert_eq!(q["p50"], json!(50.0));
        assert_eq!(q["p99"], json!(99.0));
        assert_eq!(q["max"], json!(100.0));
        assert!(quantiles(vec![])["p99"].is_null());
    }
}
