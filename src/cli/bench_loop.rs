//! `prefloop bench-loop`: annotators at a steady pace against a running server, to measure whether the
//! model keeps them supplied. Each simulated annotator asks `/next?wait=30`, answers after `--every`
//! seconds, and asks again; the command reports how long each `/next` took to bring a pair (after a
//! warm-up), the share within `--within` seconds, and the pairs the model made per minute.
//!
//! It only talks HTTP to the address given (normally 127.0.0.1), and stops after `--minutes`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server, e.g. http://127.0.0.1:3000.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// An admin's API token (annotators are created with it).
    #[arg(long, env = "PREFLOOP_ADMIN_TOKEN")]
    token: String,
    /// The project, by id.
    #[arg(long)]
    project: String,
    #[arg(long, default_value_t = 2)]
    annotators: usize,
    /// Seconds each annotator spends on a pair.
    #[arg(long, default_value_t = 5.0)]
    every: f64,
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Minutes at the start left out of the figures.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The latency the report counts against, in seconds.
    #[arg(long, default_value_t = 2.0)]
    within: f64,
}

/// One `/next` as an annotator saw it.
#[derive(Debug, Clone, Copy)]
struct Ask {
    at: Duration,
    seconds: f64,
    got_pair: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.annotators == 0 || args.every < 0.0 || args.minutes <= 0.0 {
        bail!("--annotators must be at least 1, --every at least 0 and --minutes above 0");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = args.url.trim_end_matches('/').to_string();
    let stats_url = format!("{base}/api/v1/projects/{}/stats", args.project);
    let before = get_json(&client, &stats_url, &args.token).await?;
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let mut tasks = Vec::new();
    for i in 0..args.annotators {
        let name = format!("bench-{}-{i}", uuid::Uuid::new_v4().simple());
        let created: Value = client
            .post(format!("{base}/api/v1/users"))
            .bearer_auth(&args.token)
            .json(&json!({"name": name, "role": "annotator"}))
            .send()
            .await?
            .error_for_status()
            .context("creating a bench annotator (is --token an admin's?)")?
            .json()
            .await?;
        let token = created["token"]
            .as_str()
            .context("no token in the answer")?
            .to_string();
        let (client, base, project) = (client.clone(), base.clone(), args.project.clone());
        let every = Duration::from_secs_f64(args.every);
        tasks.push(tokio::spawn(async move {
            annotate(&client, &base, &project, &token, every, started, run_for).await
        }));
    }
    let mut asks = Vec::new();
    for t in tasks {
        asks.extend(t.await??);
    }
    let after = get_json(&client, &stats_url, &args.token).await?;
    let warmup = Duration::from_secs_f64(args.warmup * 60.0);
    let counted: Vec<Ask> = asks.iter().copied().filter(|a| a.at >= warmup).collect();
    let mut secs: Vec<f64> = counted
        .iter()
        .map(|a| if a.got_pair { a.seconds } else { f64::INFINITY })
        .collect();
    secs.sort_by(f64::total_cmp);
    let within = secs.iter().filter(|&&s| s <= args.within).count();
    let quantile = |q: f64| -> Option<f64> {
        let i = ((secs.len() as f64 * q).ceil() as usize).checked_sub(1)?;
        secs.get(i).copied().filter(|s| s.is_finite())
    };
    let made = |s: &Value| {
        s["pending_pairs"].as_i64().unwrap_or(0) + s["labelled_pairs"].as_i64().unwrap_or(0)
    };
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let report = json!({
        "annotators": args.annotators,
        "every_seconds": args.every,
        "minutes": minutes,
        "warmup_minutes": args.warmup,
        "next_calls": counted.len(),
        "share_within": if counted.is_empty() { Value::Null } else { json!(within as f64 / counted.len() as f64) },
        "within_seconds": args.within,
        "p50_seconds": quantile(0.5),
        "p95_seconds": quantile(0.95),
        "without_a_pair": counted.iter().filter(|a| !a.got_pair).count(),
        "pairs_made_per_minute": (made(&after) - made(&before)) as f64 / minutes,
        "answers": asks.iter().filter(|a| a.got_pair).count(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One annotator's session: ask, "read" for `every`, answer, until `run_for` has passed.
async fn annotate(
    client: &reqwest::Client,
    base: &str,
    project: &str,
    token: &str,
    every: Duration,
    started: Instant,
    run_for: Duration,
) -> anyhow::Result<Vec<Ask>> {
    let mut asks = Vec::new();
    while started.elapsed() < run_for {
        let at = started.elapsed();
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/api/v1/projects/{project}/next?wait=30"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        let seconds = t.elapsed().as_secs_f64();
        if status == reqwest::StatusCode::NO_CONTENT {
            let finished = resp.headers().get("retry-after").is_none();
            asks.push(Ask {
                at,
                seconds,
                got_pair: false,
            });
            if finished {
                break;
            }
            continue;
        }
        let lease: Value = resp.error_for_status()?.json().await?;
        asks.push(Ask {
            at,
            seconds,
            got_pair: true,
        });
        tokio::time::sleep(every).await;
        let choice = if rand::random::<bool>() {
            "left"
        } else {
            "right"
        };
        let lease_id = lease["lease_id"].as_str().context("no lease_id")?;
        client
            .post(format!("{base}/api/v1/leases/{lease_id}/judgment"))
            .bearer_auth(token)
            .json(&json!({"choice": choice}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(asks)
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}
