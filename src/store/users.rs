//! Users and their API tokens. A token is shown once and stored only as its SHA-256: tokens are 256 random
//! bits, so a fast hash is as safe as a slow one and keeps every request's lookup cheap.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::text::check_storable;
use super::{Result, Store, StoreError, new_id, now_ms};
use crate::domain::named_enum;

named_enum! {
    /// What a user may do: admins everything, annotators label the projects they are members of.
    pub enum Role ("role") {
        Admin = "admin",
        Annotator = "annotator",
    }
}

named_enum! {
    /// Who gave a judgment: a person, or an AI judge answering leases by itself.
    pub enum UserKind ("user kind") {
        Human = "human",
        Ai = "ai",
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub kind: UserKind,
    pub created_at: i64,
    pub revoked: bool,
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    let role: String = row.try_get("role")?;
    let kind: String = row.try_get("kind")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role.parse()?,
        kind: kind.parse()?,
        created_at: row.try_get("created_at")?,
        revoked: revoked_at.is_some(),
    })
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pfl_{}", hex::encode(bytes))
}

/// Creates a user and returns it with its token, which exists nowhere else afterwards.
pub async fn create_user(
    store: &Store,
    name: &str,
    role: Role,
    kind: UserKind,
) -> Result<(User, String)> {
    let name = name.trim();
    check_storable("name", name)?;
    if name.is_empty() || name.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "user name must be 1 to 200 characters".into(),
        ));
    }
    let token = new_token();
    let id = new_id();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO users (id, name, role, kind, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(kind.as_str())
    .bind(hash_token(&token))
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(|e| StoreError::unique_or(e, &format!("user {name:?}")))?;
    let user = User {
        id,
        name: name.to_string(),
        role,
        kind,
        created_at: now,
        revoked: false,
    };
    Ok((user, token))
}

/// The live (not revoked) user a token belongs to.
pub async fn find_user_by_token(store: &Store, token: &str) -> Result<Option<User>> {
    let row = sqlx::query("SELECT * FROM users WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(hash_token(token))
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn get_user(store: &Store, id: &str) -> Result<User> {
    let row = sqlx::query("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("user"))?;
    user_from_row(&row)
}

pub async fn list_users(store: &Store) -> Result<Vec<User>> {
    let rows = sqlx::query("SELECT * FROM users ORDER BY created_at, name")
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(user_from_row).collect()
}

/// Revokes a user's token: every request with it is refused from now on; their judgments stay.
pub async fn revoke_user(store: &Store, id: &str) -> Result<()> {
    let done = sqlx::query("UPDATE users SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(id)
        .execute(store.pool())
        .await?;
    if done.rows_affected() == 0 {
        get_user(store, id).await?;
    }
    Ok(())
}
