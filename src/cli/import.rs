//! `prefloop import PROJECT FILE|-`: NDJSON prompts or pairs (decided per file by its first valid line).

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use crate::config::DbArgs;
use crate::store::items::{ImportKind, import_ndjson};
use crate::store::projects::find_project;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Project id or name.
    pub project: String,
    /// NDJSON file, or - for standard input.
    pub file: PathBuf,
    /// What the lines are; by default pairs when the first line has "completion_a", else prompts.
    #[arg(long, value_parser = ["prompts", "pairs"])]
    pub kind: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

fn guess_kind(body: &[u8]) -> ImportKind {
    let first = body
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace));
    let is_pair = first
        .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .is_some_and(|v| v.get("completion_a").is_some());
    if is_pair {
        ImportKind::Pairs
    } else {
        ImportKind::Prompts
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let body = if args.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(&args.file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?
    };
    let kind = match args.kind.as_deref() {
        Some("pairs") => ImportKind::Pairs,
        Some(_) => ImportKind::Prompts,
        None => guess_kind(&body),
    };
    let store = args.db.open().await?;
    let project = find_project(&store, &args.project).await?;
    let report = import_ndjson(&store, &project.id, kind, &body).await?;
    for r in &report.rejected {
        eprintln!("line {}: {}", r.line, r.error);
    }
    println!("{}", serde_json::to_string(&report)?);
    if report.inserted == 0 && !report.rejected.is_empty() {
        anyhow::bail!("no line was imported");
    }
    Ok(())
}
