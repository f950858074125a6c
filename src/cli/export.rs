//! `prefloop export PROJECT [--format trl|full]`: NDJSON to stdout, streamed.

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::config::DbArgs;
use crate::store::export::{AnnotatorFilter, ExportFormat, export_judgments};
use crate::store::projects::find_project;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Project id or name.
    pub project: String,
    #[arg(long, value_enum, default_value = "trl")]
    pub format: FormatArg,
    /// Only judgments by people (human) or AI judges (ai).
    #[arg(long, value_enum, default_value = "all")]
    pub annotators: AnnotatorsArg,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Trl,
    Full,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AnnotatorsArg {
    All,
    Human,
    Ai,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let project = find_project(&store, &args.project).await?;
    let format = match args.format {
        FormatArg::Trl => ExportFormat::Trl,
        FormatArg::Full => ExportFormat::Full,
    };
    let filter = match args.annotators {
        AnnotatorsArg::All => AnnotatorFilter::All,
        AnnotatorsArg::Human => AnnotatorFilter::Human,
        AnnotatorsArg::Ai => AnnotatorFilter::Ai,
    };
    let mut rx = export_judgments(&store, &project.id, format, filter);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(chunk) = rx.recv().await {
        out.write_all(&chunk?)?;
    }
    out.flush()?;
    Ok(())
}
