//! Settings shared by several commands, from flags or the environment.

use std::path::PathBuf;

use clap::Args;

use crate::store::Store;

/// Where the data lives: PostgreSQL when a URL is given, else the embedded SQLite file in the data dir.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// postgres://… (or sqlite://PATH); default: SQLite at <data dir>/prefloop.db.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory for the embedded database, models and checkpoints.
    #[arg(long, env = "PREFLOOP_DATA_DIR", default_value = "./prefloop-data")]
    pub data_dir: PathBuf,
}

impl DbArgs {
    pub async fn open(&self) -> anyhow::Result<Store> {
        use anyhow::Context;
        match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Store::connect(url)
                .await
                .with_context(|| format!("cannot open database {}", redact(url))),
            None => Store::open_data_dir(&self.data_dir).await.with_context(|| {
                format!("cannot open the database in {}", self.data_dir.display())
            }),
        }
    }
}

/// A database URL with its password hidden, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
