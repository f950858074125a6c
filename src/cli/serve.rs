//! `prefloop serve`: open the database, bind, serve until stopped.

use clap::Args;

use crate::config::DbArgs;
use crate::http::{AppState, HttpConfig};

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
    /// Mark the session cookie Secure (serve behind HTTPS).
    #[arg(long, env = "PREFLOOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Public base URL, used in sign-in links.
    #[arg(long, env = "PREFLOOP_PUBLIC_URL", default_value = crate::http::DEFAULT_PUBLIC_URL)]
    pub public_url: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = args.db.open().await?;
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let config = HttpConfig {
        max_import_bytes: args.max_import_mib << 20,
        secure_cookies: args.secure_cookies,
        public_url: args.public_url,
    };
    crate::http::serve(listener, AppState::new(store, config)).await?;
    Ok(())
}
