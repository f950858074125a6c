//! `prefloop user add NAME --role R`: prints the new token alone on stdout; with `--link`, a one-time
//! sign-in link for the browser on the next line.

use clap::{Args, Subcommand, ValueEnum};

use crate::config::DbArgs;
use crate::store::users::{self, Role, UserKind};

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print their API token (shown once, stored hashed).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Also print a one-time sign-in link (valid 7 days) on a second line.
        #[arg(long)]
        link: bool,
        /// Base URL of the server, for the link.
        #[arg(long, env = "PREFLOOP_PUBLIC_URL", default_value = crate::http::DEFAULT_PUBLIC_URL)]
        public_url: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a user's token by name or id.
    Revoke {
        user: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    Annotator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Annotator => Role::Annotator,
        }
    }
}

pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    match args.command {
        UserCommand::Add {
            name,
            role,
            link,
            public_url,
            db,
        } => {
            let store = db.open().await?;
            let (user, token) =
                users::create_user(&store, &name, role.into(), UserKind::Human).await?;
            println!("{token}");
            if link {
                let code = crate::store::sessions::create_login_link(&store, &user.id).await?;
                println!("{}", crate::store::sessions::login_url(&public_url, &code));
            }
        }
        UserCommand::List { db } => {
            let store = db.open().await?;
            for u in users::list_users(&store).await? {
                let revoked = if u.revoked { "\trevoked" } else { "" };
                println!("{}\t{}\t{}{revoked}", u.id, u.name, u.role.as_str());
            }
        }
        UserCommand::Revoke { user, db } => {
            let store = db.open().await?;
            let found = users::list_users(&store)
                .await?
                .into_iter()
                .find(|u| u.id == user || u.name == user)
                .ok_or_else(|| anyhow::anyhow!("no user {user:?}"))?;
            users::revoke_user(&store, &found.id).await?;
            eprintln!("revoked {}", found.name);
        }
    }
    Ok(())
}
