//! Who may annotate which project. The rule: admins see every project; an annotator sees a project when
//! they are one of its members, or when the project has no members at all (open to every annotator, so a
//! small team needs no assignment step).

use sqlx::Row;

use super::projects::{Project, list_projects};
use super::users::{Role, User, get_user};
use super::{Result, Store, StoreError, now_ms};

/// Whether `user` may lease, answer and see the stats of `project_id`.
pub async fn can_access(store: &Store, project_id: &str, user: &User) -> Result<bool> {
    may_access(store.pool(), project_id, user).await
}

/// `can_access` in a pool or a transaction: the one place the rule is written.
pub(crate) async fn may_access<'e, E>(executor: E, project_id: &str, user: &User) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if user.role == Role::Admin {
        return Ok(true);
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS members, \
                COALESCE(SUM(CASE WHEN user_id = $2 THEN 1 ELSE 0 END), 0) AS mine \
         FROM project_members WHERE project_id = $1",
    )
    .bind(project_id)
    .bind(&user.id)
    .fetch_one(executor)
    .await?;
    Ok(super::int(&row, "members")? == 0 || super::int(&row, "mine")? > 0)
}

/// `Forbidden` unless `user` may work on the project.
pub async fn ensure_access(store: &Store, project_id: &str, user: &User) -> Result<()> {
    if can_access(store, project_id, user).await? {
        Ok(())
    } else {
        Err(StoreError::Forbidden(
            "you are not assigned to this project".into(),
        ))
    }
}

/// The projects `user` may work on, oldest first.
pub async fn projects_for_user(store: &Store, user: &User) -> Result<Vec<Project>> {
    let projects = list_projects(store).await?;
    if user.role == Role::Admin {
        return Ok(projects);
    }
    let rows = sqlx::query("SELECT project_id, user_id FROM project_members")
        .fetch_all(store.pool())
        .await?;
    let mut restricted = std::collections::HashSet::new();
    let mut mine = std::collections::HashSet::new();
    for row in &rows {
        let project: String = row.try_get("project_id")?;
        let member: String = row.try_get("user_id")?;
        if member == user.id {
            mine.insert(project.clone());
        }
        restricted.insert(project);
    }
    Ok(projects
        .into_iter()
        .filter(|p| !restricted.contains(&p.id) || mine.contains(&p.id))
        .collect())
}

pub async fn list_members(store: &Store, project_id: &str) -> Result<Vec<User>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT m.user_id FROM project_members m JOIN users u ON u.id = m.user_id \
         WHERE m.project_id = $1 ORDER BY u.name",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    let mut users = Vec::with_capacity(ids.len());
    for id in ids {
        users.push(get_user(store, &id).await?);
    }
    Ok(users)
}

/// Assigns a user to a project; assigning twice is not an error.
pub async fn add_member(store: &Store, project_id: &str, user_id: &str) -> Result<()> {
    get_user(store, user_id).await?;
    sqlx::query(
        "INSERT INTO project_members (project_id, user_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id, user_id) DO NOTHING",
    )
    .bind(project_id)
    .bind(user_id)
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    Ok(())
}

pub async fn remove_member(store: &Store, project_id: &str, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
        .bind(project_id)
        .bind(user_id)
        .execute(store.pool())
        .await?;
    Ok(())
}
