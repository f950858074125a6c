//! `prefloop project create NAME [--budget N]`: prints the project id.

use clap::{Args, Subcommand};

use crate::config::DbArgs;
use crate::domain::Strategy;
use crate::store::projects::{self, ProjectInput};

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    pub command: ProjectCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project and print its id.
    Create {
        name: String,
        /// Labels that may be spent (default: unlimited).
        #[arg(long)]
        budget: Option<i64>,
        /// random, entropy, certainty, uncertainty or hybrid.
        #[arg(long)]
        strategy: Option<String>,
        /// Guidelines for annotators, in Markdown (a file path).
        #[arg(long)]
        guidelines: Option<std::path::PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List projects: id, name, strategy, budget.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(args: ProjectArgs) -> anyhow::Result<()> {
    match args.command {
        ProjectCommand::Create {
            name,
            budget,
            strategy,
            guidelines,
            db,
        } => {
            let strategy = strategy.map(|s| s.parse::<Strategy>()).transpose()?;
            let guidelines = guidelines
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                })
                .transpose()?;
            let store = db.open().await?;
            let input = ProjectInput {
                name: Some(name),
                label_budget: Some(budget),
                strategy,
                guidelines,
                ..Default::default()
            };
            let project = projects::create_project(&store, input).await?;
            println!("{}", project.id);
        }
        ProjectCommand::List { db } => {
            let store = db.open().await?;
            for p in projects::list_projects(&store).await? {
                let budget = p
                    .label_budget
                    .map_or("unlimited".to_string(), |b| b.to_string());
                println!("{}\t{}\t{}\t{budget}", p.id, p.name, p.strategy.as_str());
            }
        }
    }
    Ok(())
}
