//! `prefloop serve`: open the database, bind, serve until stopped.

use clap::Args;

use crate::config::DbArgs;
use crate::domain::SamplingWeights;
use crate::engine::active_loop::{ActiveLoop, LoopConfig};
use crate::engine::{EngineConfig, EngineHandle};
use crate::http::{AppState, HttpConfig};
use crate::model::Precision;
use crate::store::training::ensure_reference_version;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PREFLOOP_BIND", default_value = "127.0.0.1:3000")]
    pub bind: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Largest import body accepted, in MiB.
    #[arg(long, env = "PREFLOOP_MAX_IMPORT_MIB", default_value_t = 64)]
    pub max_import_mib: usize,
    /// The language model that picks pairs and learns from the labels: a Hugging Face directory or a
    /// .gguf file. Without one, pairs are served in random order and nothing trains.
    #[arg(long, env = "PREFLOOP_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, env = "PREFLOOP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// What sampling reads (acquisition's completions, /generate): f32, or a quantized copy of each model
    /// version (q8_0, q4_k), made when the version is loaded; scoring, training and win rates stay f32.
    /// Default on the CPU: the fastest this CPU has (q8_0 with AVX-512 VNNI or AVX-VNNI, q4_k with plain
    /// AVX2, else f32); f32 on a GPU.
    #[arg(long, env = "PREFLOOP_SAMPLING_WEIGHTS")]
    pub sampling_weights: Option<SamplingWeights>,
    /// What the model's weights compute in: f32, or bf16 on a GPU (training keeps f32 optimizer state and
    /// master weights; versions are saved in bf16).
    #[arg(long, env = "PREFLOOP_DTYPE", default_value = "f32")]
    pub dtype: Precision,
    /// Requests that may wait for the model before callers get 429.
    #[arg(long, env = "PREFLOOP_MODEL_QUEUE", default_value_t = 32)]
    pub model_queue: usize,
    /// Mark the session cookie Secure (serve behind HTTPS).
    #[arg(long, env = "PREFLOOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Public base URL, used in sign-in links.
    #[arg(long, env = "PREFLOOP_PUBLIC_URL", default_value = crate::http::DEFAULT_PUBLIC_URL)]
    pub public_url: String,
    /// Require `Authorization: Bearer <token>` on /metrics (open to anyone when unset).
    #[arg(long, env = "PREFLOOP_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seconds /metrics reuses the database counts it read.
    #[arg(long, env = "PREFLOOP_METRICS_CACHE_SECS", default_value_t = 5)]
    pub metrics_cache_secs: u64,
    /// Exports that may stream at once (each holds a database connection); more are told to retry.
    #[arg(long, env = "PREFLOOP_MAX_EXPORTS", default_value_t = 2)]
    pub max_exports: usize,
    /// Seconds a client has to send a request's header (and a kept-alive connection to start the next).
    #[arg(long, env = "PREFLOOP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,
    /// Seconds a request's body may take to arrive, from its header on.
    #[arg(long, env = "PREFLOOP_BODY_TIMEOUT_SECS", default_value_t = 120)]
    pub body_timeout_secs: u64,
    /// Seconds a connection may sit with no byte moving and no request being answered.
    #[arg(long, env = "PREFLOOP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Connections served at once; more wait until one closes.
    #[arg(long, env = "PREFLOOP_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
}

/// The sampling weights asked for, else the default for the device: on the CPU the quantized copy this CPU
/// samples fastest from ([`crate::model::cpu_sampling_weights`]; docs/BENCHMARKS.md), f32 elsewhere
/// (quantized copies are made on the CPU).
pub(crate) fn sampling_weights_for(
    chosen: Option<SamplingWeights>,
    device: &str,
) -> SamplingWeights {
    chosen.unwrap_or_else(|| {
        if device == "cpu" {
            crate::model::cpu_sampling_weights()
        } else {
            SamplingWeights::F32
        }
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = args.db.open().await?;
    // Load and warm up the model before binding, so a bound port means a ready server.
    let engine = match &args.model {
        Some(path) => {
            let reference = ensure_reference_version(&store, &path.display().to_string()).await?;
            tracing::info!(model = %path.display(), "loading the model");
            let config = EngineConfig {
                model_path: path.clone(),
                device: args.device.clone(),
                checkpoint_dir: args.db.data_dir.join("checkpoints"),
                queue_capacity: args.model_queue,
                max_loaded_policies: 2,
                sampling_weights: sampling_weights_for(args.sampling_weights, &args.device),
                dtype: args.dtype,
            };
            Some(EngineHandle::start(config, reference.id).await?)
        }
        None => None,
    };
    let active = ActiveLoop::start(store.clone(), engine, LoopConfig::default()).await?;
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let config = HttpConfig {
        max_import_bytes: args.max_import_mib << 20,
        secure_cookies: args.secure_cookies,
        public_url: args.public_url,
        metrics_token: args.metrics_token.filter(|t| !t.is_empty()),
        metrics_cache: std::time::Duration::from_secs(args.metrics_cache_secs),
        max_exports: args.max_exports,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_secs),
        body_timeout: std::time::Duration::from_secs(args.body_timeout_secs),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout_secs),
        max_connections: args.max_connections,
    };
    crate::http::serve(listener, AppState::new(store, config).with_loop(active)).await?;
    Ok(())
}
