//! Browser sign-in: sessions behind a cookie, and one-time sign-in links.
//!
//! Both secrets (the cookie value, the link code) are 256 random bits kept only as their SHA-256, like API
//! tokens: a leaked database does not sign anyone in.

use rand::RngCore;
use sqlx::Row;

use super::users::{User, get_user, hash_token};
use super::{Result, Store, now_ms};

/// How long a browser stays signed in.
pub const SESSION_MS: i64 = 14 * 24 * 3600 * 1000;
/// How long a sign-in link can be used (once).
pub const LOGIN_LINK_MS: i64 = 7 * 24 * 3600 * 1000;

/// A signed-in browser: whose it is and the token every form and fetch must echo back.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_at: i64,
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Opens a session for `user`; returns the cookie secret (never stored in clear) and the session.
pub async fn create_session(store: &Store, user: &User) -> Result<(String, Session)> {
    let secret = random_secret();
    let csrf_token = random_secret();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash_token(&secret))
    .bind(&user.id)
    .bind(&csrf_token)
    .bind(now)
    .bind(now + SESSION_MS)
    .execute(store.pool())
    .await?;
    let session = Session {
        user: user.clone(),
        csrf_token,
        expires_at: now + SESSION_MS,
    };
    Ok((secret, session))
}

/// The live session a cookie secret belongs to; `None` when unknown, expired or its user was revoked.
pub async fn find_session(store: &Store, secret: &str) -> Result<Option<Session>> {
    let row = sqlx::query(
        "SELECT s.user_id, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id = $1 AND s.expires_at > $2 AND u.revoked_at IS NULL",
    )
    .bind(hash_token(secret))
    .bind(now_ms())
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let user_id: String = row.try_get("user_id")?;
    Ok(Some(Session {
        user: get_user(store, &user_id).await?,
        csrf_token: row.try_get("csrf_token")?,
        expires_at: row.try_get("expires_at")?,
    }))
}

/// Signs a browser out; unknown secrets are fine (signing out twice is not an error).
pub async fn delete_session(store: &Store, secret: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id = $1 OR expires_at <= $2")
        .bind(hash_token(secret))
        .bind(now_ms())
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Makes a one-time sign-in code for `user_id`, valid for `LOGIN_LINK_MS`.
pub async fn create_login_link(store: &Store, user_id: &str) -> Result<String> {
    let code = random_secret();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO login_links (code_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_token(&code))
    .bind(user_id)
    .bind(now)
    .bind(now + LOGIN_LINK_MS)
    .execute(store.pool())
    .await?;
    Ok(code)
}

/// Whom a sign-in code would sign in, without using it up: `None` when unknown, used, expired or
/// revoked. What the page a link opens shows before its button spends the code.
pub async fn peek_login_link(store: &Store, code: &str) -> Result<Option<User>> {
    let user_id: Option<String> = sqlx::query_scalar(
        "SELECT user_id FROM login_links WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(hash_token(code))
    .bind(now_ms())
    .fetch_optional(store.pool())
    .await?;
    live_user(store, user_id).await
}

/// The user a link names, unless revoked since it was made.
async fn live_user(store: &Store, user_id: Option<String>) -> Result<Option<User>> {
    let Some(user_id) = user_id else {
        return Ok(None);
    };
    let user = get_user(store, &user_id).await?;
    Ok((!user.revoked).then_some(user))
}

/// Uses up a sign-in code: the user it signs in, or `None` when unknown, used, expired or revoked.
/// One conditional UPDATE, so two clicks racing can never both succeed.
pub async fn redeem_login_link(store: &Store, code: &str) -> Result<Option<User>> {
    let now = now_ms();
    let user_id: Option<String> = sqlx::query_scalar(
        "UPDATE login_links SET used_at = $1 \
         WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
    )
    .bind(now)
    .bind(hash_token(code))
    .fetch_optional(store.pool())
    .await?;
    live_user(store, user_id).await
}

/// The public sign-in URL for a code, under `base` (e.g. http://127.0.0.1:3000).
pub fn login_url(base: &str, code: &str) -> String {
    format!("{}/login/link/{code}", base.trim_end_matches('/'))
}
