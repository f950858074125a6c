//! `prefloop simulate`: the paper's experiment, headless, through the server's own loop. For each strategy
//! and seed a project is created in a fresh SQLite file, fed the prompts, judged by an AI judge, and
//! retrained after every round; each version's win rate against the reference is collected into a CSV and
//! a chart of win rate against labels per strategy.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::domain::{
    CompletionSettings, EntropyEstimator, JudgeKind, JudgeRole, LoopSettings, LoraSettings,
    Oversample, SamplingWeights, Schedule, Strategy,
};
use crate::engine::active_loop::{ActiveLoop, LoopConfig};
use crate::engine::{EngineConfig, EngineHandle};
use crate::judge::JudgeSettings;
use crate::learn::data::read_prompts;
use crate::store::Store;
use crate::store::items::{Split, insert_prompts};
use crate::store::judges::create_judge;
use crate::store::leases::count_labels;
use crate::store::projects::{ProjectInput, create_project};
use crate::store::stats::count_decisive_labels;
use crate::store::training::{
    RunStatus, ensure_reference_version, latest_training_run, list_project_versions,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum JudgeArg {
    Sentiment,
    Http,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The starting (reference) model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts as NDJSON, {"prompt"} per line; the last --eval-prompts of them are held out.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, value_enum, default_value = "sentiment")]
    pub judge: JudgeArg,
    /// Strategies to compare (repeat the flag or separate with commas).
    #[arg(long, value_delimiter = ',', default_value = "random,hybrid")]
    pub strategy: Vec<String>,
    /// Labels per run.
    #[arg(long, default_value_t = 64)]
    pub labels: usize,
    /// Labels per round: the model is retrained after each (default: a new project's `train_every`).
    #[arg(long)]
    pub round: Option<usize>,
    /// Seeds per strategy.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Run only seeds from this one on (first-seed..seeds), so that two processes, each on a core of its
    /// own, can share one experiment's seeds; their results.csv rows concatenate into one.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Where results.csv, win_rate.svg and the run's database go.
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out prompts for the win rate.
    #[arg(long, default_value_t = 32)]
    pub eval_prompts: usize,
    // Every training and acquisition setting left out is what a new project gets (LoopSettings'
    // defaults), so that a run without them measures the defaults a user gets.
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub beta: Option<f64>,
    /// reset (each run starts from the reference and trains on every label) or continue (each run keeps
    /// training the serving policy).
    #[arg(long)]
    pub schedule: Option<Schedule>,
    #[arg(long)]
    pub batch_size: Option<u32>,
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    #[arg(long)]
    pub entropy_samples: Option<u32>,
    /// samples (N samples, −mean log π) or tokens (one sample, summed per-token entropy).
    #[arg(long)]
    pub entropy_estimator: Option<EntropyEstimator>,
    /// Prompts entropy-scored per pair acquired (entropy, hybrid).
    #[arg(long)]
    pub oversample_prompts: Option<u32>,
    /// Candidate pairs certainty-scored per pair acquired (certainty, uncertainty, hybrid).
    #[arg(long)]
    pub oversample_pairs: Option<u32>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What sampling reads, as `serve --sampling-weights`: f32, or a quantized copy (q8_0, q4_k); by
    /// default the fastest on this CPU (q8_0 or q4_k), f32 on a GPU.
    #[arg(long)]
    pub sampling_weights: Option<SamplingWeights>,
    /// Train LoRA adapters of this rank (alpha twice the rank, all seven linear layers) instead of every
    /// weight: the project setting `lora`.
    #[arg(long)]
    pub lora_rank: Option<u32>,
    /// Continue an experiment in --out: the runs (strategy, seed) already in its results.csv are kept and
    /// not run again; a run that was interrupted starts over (its database is discarded).
    #[arg(long)]
    pub resume: bool,
    /// Keep every version's checkpoint (a full model each); by default a run's checkpoints are deleted
    /// once its results are written.
    #[arg(long)]
    pub keep_checkpoints: bool,
}

/// One row of results.csv: a trained version of one run.
#[derive(Debug, Clone)]
struct Row {
    strategy: String,
    seed: u64,
    labels: i64,
    /// Of the labels, those that trained DPO (left or right).
    decisive: i64,
    win_rate: f64,
    /// The win rate's 95% interval over the eval prompts (Wilson, ties as half).
    win_rate_low: f64,
    win_rate_high: f64,
    reward: f64,
    /// Comparisons behind the win rate, and how many of them were ties (identical completions or
    /// equal judgments).
    eval_prompts: usize,
    ties: usize,
}

/// A run's checkpoints (never the reference's files) once its rows are written: each is a full model.
fn remove_checkpoints(versions: &[crate::store::training::ModelVersion]) {
    for v in versions.iter().filter(|v| v.project_id.is_some()) {
        if let Err(e) = std::fs::remove_dir_all(&v.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove checkpoint {}: {e}", v.path);
        }
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(simulate(args))
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    if let JudgeArg::Http = args.judge {
        bail!("--judge http is not available in this build yet; use --judge sentiment");
    }
    let strategies: Vec<Strategy> = args
        .strategy
        .iter()
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let round = args
        .round
        .unwrap_or(LoopSettings::default().train_every as usize);
    if args.first_seed >= args.seeds {
        bail!(
            "--first-seed {} leaves no seed to run below --seeds {}",
            args.first_seed,
            args.seeds
        );
    }
    if round == 0 || args.labels < round {
        bail!("--round must be at least 1 and at most --labels ({round} given or defaulted)");
    }
    let file = std::fs::File::open(&args.prompts)
        .with_context(|| format!("opening {}", args.prompts.display()))?;
    let prompts = read_prompts(BufReader::new(file))
        .with_context(|| format!("reading {}", args.prompts.display()))?;
    if prompts.len() <= args.eval_prompts {
        bail!(
            "{} prompts leave none to train on after {} held out",
            prompts.len(),
            args.eval_prompts
        );
    }
    let (train, eval) = prompts.split_at(prompts.len() - args.eval_prompts);

    std::fs::create_dir_all(&args.out)?;
    let db = args.out.join("simulate.db");
    let csv = args.out.join("results.csv");
    let mut rows = Vec::new();
    if args.resume {
        if csv.exists() {
            rows = read_csv(&csv)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let f = args.out.join(format!("simulate.db{suffix}"));
            if f.exists() {
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            }
        }
    } else if db.exists() {
        bail!(
            "{} exists: remove it, choose another --out, or continue it with --resume",
            db.display()
        );
    }
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", db.display())).await?;
    let reference = ensure_reference_version(&store, &args.model.display().to_string()).await?;
    eprintln!("loading {}", args.model.display());
    let engine = EngineHandle::start(
        EngineConfig {
            model_path: args.model.clone(),
            device: args.device.clone(),
            checkpoint_dir: args.out.join("checkpoints"),
            queue_capacity: 8,
            max_loaded_policies: 2,
            sampling_weights: super::serve::sampling_weights_for(
                args.sampling_weights,
                &args.device,
            ),
            dtype: Default::default(),
        },
        reference.id,
    )
    .await?;
    let config = LoopConfig {
        tick: Duration::from_millis(200),
        low_water: 1,
        round_size: round,
        wait_for_training: true,
    };
    let _active = ActiveLoop::start(store.clone(), Some(engine), config).await?;

    // Seed by seed, every strategy in each: an experiment stopped early has as many runs of each.
    for seed in args.first_seed..args.seeds {
        for &strategy in &strategies {
            if rows
                .iter()
                .any(|r: &Row| r.strategy == strategy.as_str() && r.seed == seed)
            {
                eprintln!("{} seed {seed}: in results.csv already", strategy.as_str());
                continue;
            }
            let started = Instant::now();
            let project = create_project(&store, run_settings(&args, strategy, seed)).await?;
            insert_prompts(&store, &project.id, train, Split::Train).await?;
            insert_prompts(&store, &project.id, eval, Split::Eval).await?;
            let judge = JudgeSettings {
                role: JudgeRole::Label,
                rate_per_minute: 1.0e6,
                http: None,
            };
            create_judge(&store, &project.id, JudgeKind::Sentiment, &judge.to_json()).await?;
            let mut reported = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let versions = list_project_versions(&store, &project.id).await?;
                let evaluated: Vec<_> = versions
                    .iter()
                    .filter_map(|v| Some((v.labels_seen, v.decisive_seen, v.metrics.win?)))
                    .collect();
                for (labels, decisive, win) in evaluated.iter().skip(reported) {
                    eprintln!(
                        "{} seed {seed}: {labels} labels ({decisive} decisive), win rate {:.3} ({:.0} s)",
                        strategy.as_str(),
                        win.win_rate,
                        started.elapsed().as_secs_f64()
                    );
                }
                reported = evaluated.len();
                // Rounds count decisive labels, so ties make a run's rounds fewer than labels / round:
                // it is done once the budget is spent and a last, evaluated version saw every decisive one.
                let spent = count_labels(store.pool(), &project.id).await? >= args.labels as i64;
                let decisive = count_decisive_labels(&store, &project.id).await?;
                let done = spent
                    && evaluated.len() == versions.len()
                    && versions.last().is_some_and(|v| v.decisive_seen == decisive);
                if done {
                    rows.extend(evaluated.iter().map(|(labels, decisive, win)| Row {
                        strategy: strategy.as_str().to_string(),
                        seed,
                        labels: *labels,
                        decisive: *decisive,
                        win_rate: win.win_rate,
                        win_rate_low: win.win_rate_low.unwrap_or(f64::NAN),
                        win_rate_high: win.win_rate_high.unwrap_or(f64::NAN),
                        reward: win.mean_reward,
                        eval_prompts: win.eval_prompts,
                        ties: win.ties,
                    }));
                    if !args.keep_checkpoints {
                        remove_checkpoints(&versions);
                    }
                    eprintln!(
                        "{} seed {seed}: done in {:.0} s",
                        strategy.as_str(),
                        started.elapsed().as_secs_f64()
                    );
                    break;
                }
                if let Some(run) = latest_training_run(&store, &project.id).await?
                    && run.status == RunStatus::Failed
                {
                    bail!(
                        "{} seed {seed}: training failed: {}",
                        strategy.as_str(),
                        run.error.unwrap_or_default()
                    );
                }
            }
            write_csv(&csv, &rows)?;
        }
    }
    write_chart(&args.out.join("win_rate.svg"), &rows)?;
    let table_path = args.out.join("table.md");
    std::fs::write(&table_path, table(&rows))
        .with_context(|| format!("writing {}", table_path.display()))?;
    eprintln!(
        "wrote {}, {} and {}",
        csv.display(),
        args.out.join("win_rate.svg").display(),
        table_path.display()
    );
    Ok(())
}

fn run_settings(args: &SimulateArgs, strategy: Strategy, seed: u64) -> ProjectInput {
    let defaults = LoopSettings::default();
    ProjectInput {
        name: Some(format!("simulate-{}-{seed}", strategy.as_str())),
        label_budget: Some(Some(args.labels as i64)),
        strategy: Some(strategy),
        seed: Some(seed),
        train_every: args.round.map(|r| r as u32),
        beta: args.beta,
        schedule: args.schedule,
        learning_rate: args.learning_rate,
        epochs: args.epochs,
        batch_size: args.batch_size,
        completions: args
            .max_new_tokens
            .map(|max_new_tokens| CompletionSettings {
                max_new_tokens,
                ..defaults.completions
            }),
        oversample: (args.oversample_prompts.is_some() || args.oversample_pairs.is_some()).then(
            || Oversample {
                prompts: args
                    .oversample_prompts
                    .unwrap_or(defaults.oversample.prompts),
                pairs: args.oversample_pairs.unwrap_or(defaults.oversample.pairs),
            },
        ),
        entropy_samples: args.entropy_samples,
        entropy_estimator: args.entropy_estimator,
        // Every held-out prompt counts (a project measures 64 by default).
        eval_prompts: Some(args.eval_prompts as u32),
        // The paper's protocol: each round is acquired by the policy trained on every label before it.
        install_only_if_better: Some(false),
        lora: args.lora_rank.map(|rank| {
            Some(LoraSettings {
                rank,
                alpha: 2.0 * rank as f64,
                ..LoraSettings::default()
            })
        }),
        ..Default::default()
    }
}

const CSV_HEADER: &str = "strategy,seed,labels,decisive_labels,win_rate,win_rate_low,win_rate_high,reward,eval_prompts,ties";

fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{}\n",
            r.strategy,
            r.seed,
            r.labels,
            r.decisive,
            r.win_rate,
            r.win_rate_low,
            r.win_rate_high,
            r.reward,
            r.eval_prompts,
            r.ties
        ));
    }
    // Written beside and renamed, so an interrupted write never leaves half a file to resume from.
    let tmp = path.with_extension("csv.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The rows of a results.csv this command wrote.
fn read_csv(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        bail!(
            "{}: not a results.csv of this version (its header is not {CSV_HEADER})",
            path.display()
        );
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').collect();
            let bad = || {
                anyhow::anyhow!(
                    "{} line {}: {l:?} is not a result row",
                    path.display(),
                    i + 2
                )
            };
            if f.len() != 10 {
                return Err(bad());
            }
            let num = |k: usize| f[k].parse::<f64>().map_err(|_| bad());
            Ok(Row {
                strategy: f[0].to_string(),
                seed: f[1].parse().map_err(|_| bad())?,
                labels: f[2].parse().map_err(|_| bad())?,
                decisive: f[3].parse().map_err(|_| bad())?,
                win_rate: num(4)?,
                win_rate_low: num(5)?,
                win_rate_high: num(6)?,
                reward: num(7)?,
                eval_prompts: f[8].parse().map_err(|_| bad())?,
                ties: f[9].parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// One point of a strategy's curve: its runs' k-th versions together.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RoundSummary {
    /// Mean labels and decisive labels the k-th versions saw (rounds count decisive labels, so the
    /// labels differ a little between seeds).
    labels: f64,
    decisive: f64,
    /// Mean win rate over the seeds, and Wilson's 95% interval over every seed's comparisons pooled
    /// (ties as half), so the bar narrows with seeds and prompts.
    win_rate: f64,
    low: f64,
    high: f64,
    seeds: usize,
}

/// Per strategy, per round (the k-th version of each run, in results.csv's order): see [`RoundSummary`].
fn pooled(rows: &[Row]) -> BTreeMap<&str, Vec<RoundSummary>> {
    #[derive(Default)]
    struct Sums {
        labels: f64,
        decisive: f64,
        win_rate: f64,
        score: f64,
        n: f64,
        seeds: usize,
    }
    let mut sums: BTreeMap<&str, BTreeMap<usize, Sums>> = BTreeMap::new();
    let mut seen: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for r in rows {
        let k = seen.entry((&r.strategy, r.seed)).or_insert(0);
        let e = sums.entry(&r.strategy).or_default().entry(*k).or_default();
        *k += 1;
        e.labels += r.labels as f64;
        e.decisive += r.decisive as f64;
        e.win_rate += r.win_rate;
        e.score += r.win_rate * r.eval_prompts as f64;
        e.n += r.eval_prompts as f64;
        e.seeds += 1;
    }
    sums.into_iter()
        .map(|(s, by)| {
            let points = by
                .into_values()
                .map(|e| {
                    let k = e.seeds as f64;
                    let (low, high) = crate::domain::wilson_interval(e.score, e.n.max(1.0));
                    RoundSummary {
                        labels: e.labels / k,
                        decisive: e.decisive / k,
                        win_rate: e.win_rate / k,
                        low,
                        high,
                        seeds: e.seeds,
                    }
                })
                .collect();
            (s, points)
        })
        .collect()
}

/// The experiment's table as Markdown: per strategy and round, the mean labels (decisive labels) the
/// versions saw and the mean win rate with its pooled interval; then the labels each strategy needed for
/// its mean to reach random's final mean (none when random was not run).
fn table(rows: &[Row]) -> String {
    let summary = pooled(rows);
    let mut out = String::from(
        "| strategy | round | labels (decisive) | seeds | mean win rate | 95% interval (pooled) |\n|---|---|---|---|---|---|\n",
    );
    for (strategy, rounds) in &summary {
        for (k, m) in rounds.iter().enumerate() {
            out.push_str(&format!(
                "| {strategy} | {} | {:.1} ({:.1}) | {} | {:.3} | {:.3}–{:.3} |\n",
                k + 1,
                m.labels,
                m.decisive,
                m.seeds,
                m.win_rate,
                m.low,
                m.high
            ));
        }
    }
    if let Some(bar) = summary.get("random").and_then(|r| r.last()) {
        out.push_str(&format!(
            "\nLabels each strategy needed for its mean win rate to reach random's final {:.3} \
             (at {:.1} labels):\n\n",
            bar.win_rate, bar.labels
        ));
        for (strategy, rounds) in &summary {
            let reached = rounds.iter().find(|m| m.win_rate >= bar.win_rate);
            out.push_str(&match reached {
                Some(m) => format!("- {strategy}: {:.1}\n", m.labels),
                None => format!("- {strategy}: not reached\n"),
            });
        }
    }
    out
}

/// Mean win rate per strategy against labels with its pooled 95% interval, every seed's point behind it,
/// and the 0.5 line (no better than the reference).
fn write_chart(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let max_labels = rows.iter().map(|r| r.labels).max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Win rate against the reference model", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0i64..max_labels + max_labels / 10, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("labels")
        .y_desc("win rate")
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(0, 0.5), (max_labels + max_labels / 10, 0.5)],
        BLACK.mix(0.4),
    ))?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (strategy, summary)) in pooled(rows).iter().enumerate() {
        let colour = colours[i % colours.len()];
        let means: Vec<(i64, f64)> = summary
            .iter()
            .map(|m| (m.labels.round() as i64, m.win_rate))
            .collect();
        // Bars side by side: each strategy's a little to the right of the one before.
        let shift = (max_labels / 100).max(1) * i as i64;
        chart.draw_series(summary.iter().map(|m| {
            let x = m.labels.round() as i64 + shift;
            PathElement::new([(x, m.low), (x, m.high)], colour.mix(0.6))
        }))?;
        chart
            .draw_series(LineSeries::new(means, colour.stroke_width(2)))?
            .label(*strategy)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(
            rows.iter()
                .filter(|r| r.strategy == *strategy)
                .map(|r| Circle::new((r.labels, r.win_rate), 3, colour.mix(0.35).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: &str, seed: u64, labels: i64, win_rate: f64) -> Row {
        Row {
            strategy: strategy.into(),
            seed,
            labels,
            decisive: labels - 1,
            win_rate,
            win_rate_low: win_rate - 0.1,
            win_rate_high: win_rate + 0.1,
            reward: 0.25,
            eval_prompts: 100,
            ties: 7,
        }
    }

    #[test]
    fn results_read_back_as_written_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let rows = vec![row("random", 0, 32, 0.5), row("kcenter", 2, 64, 0.625)];
        write_csv(&path, &rows).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (
                back[1].strategy.as_str(),
                back[1].seed,
                back[1].labels,
                back[1].decisive
            ),
            ("kcenter", 2, 64, 63)
        );
        assert_eq!(
            (back[1].win_rate, back[1].eval_prompts, back[1].ties),
            (0.625, 100, 7)
        );
        std::fs::write(&path, "strategy,seed,labels,win_rate\nrandom,0,8,0.5\n").unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(err.contains("not a results.csv"), "{err}");
        std::fs::write(
            &path,
            format!("{CSV_HEADER}\nrandom,zero,8,8,0.5,0.4,0.6,0,10,0\n"),
        )
        .unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_table_says_what_reached_randoms_final_win_rate() {
        let rows = vec![
            row("random", 0, 32, 0.5),
            row("random", 0, 64, 0.6),
            row("kcenter", 0, 32, 0.65),
            row("kcenter", 0, 64, 0.7),
            row("entropy", 0, 32, 0.4),
            row("entropy", 0, 64, 0.55),
        ];
        let t = table(&rows);
        assert!(
            t.contains("| kcenter | 1 | 32.0 (31.0) | 1 | 0.650 |"),
            "{t}"
        );
        assert!(t.contains("- kcenter: 32.0"), "{t}");
        assert!(t.contains("- random: 64.0"), "{t}");
        assert!(t.contains("- entropy: not reached"), "{t}");
    }

    #[test]
    fn the_pooled_interval_is_over_every_seeds_comparisons() {
        // Two seeds of 100 comparisons at 0.6 and 0.8 in their first round (32 and 36 labels): the
        // mean 0.7 at 34 labels, and Wilson's interval for 140 of 200.
        let rows = vec![
            row("hybrid", 0, 32, 0.6),
            row("hybrid", 1, 36, 0.8),
            row("hybrid", 0, 64, 0.5),
        ];
        let p = pooled(&rows);
        let first = p["hybrid"][0];
        assert!((first.win_rate - 0.7).abs() < 1e-12);
        assert_eq!((first.labels, first.seeds), (34.0, 2));
        assert_eq!(
            (first.low, first.high),
            crate::domain::wilson_interval(140.0, 200.0)
        );
        assert!(first.low < 0.7 && first.high > 0.7 && first.high - first.low < 0.14);
        assert_eq!((p["hybrid"][1].seeds, p["hybrid"][1].labels), (1, 64.0));
    }
}
