//! Projects and their settings: guidelines, label budget, acquisition strategy, and the loop's DPO settings.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::text::check_storable;
use super::{Result, Store, StoreError, new_id, now_ms};
use crate::domain::{
    CompletionSettings, Display, EntropyEstimator, LabelAggregation, LoopSettings, LoraSettings,
    LossKind, Oversample, Schedule, Strategy,
};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub guidelines: String,
    pub label_budget: Option<i64>,
    pub strategy: Strategy,
    pub lease_seconds: i64,
    #[serde(flatten)]
    pub settings: LoopSettings,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fields a client may set when creating or editing a project. Unknown fields are refused by name.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: Option<String>,
    pub guidelines: Option<String>,
    /// Labels that may be spent; `null` = unlimited.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub label_budget: Option<Option<i64>>,
    pub strategy: Option<Strategy>,
    pub lease_seconds: Option<i64>,
    pub seed: Option<u64>,
    pub train_every: Option<u32>,
    pub loss: Option<LossKind>,
    pub beta: Option<f64>,
    pub label_smoothing: Option<f64>,
    pub schedule: Option<Schedule>,
    pub learning_rate: Option<f64>,
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub completions: Option<CompletionSettings>,
    pub oversample: Option<Oversample>,
    pub entropy_samples: Option<u32>,
    pub entropy_estimator: Option<EntropyEstimator>,
    pub chat_template: Option<bool>,
    pub install_only_if_better: Option<bool>,
    pub labels_per_pair: Option<u32>,
    pub label_aggregation: Option<LabelAggregation>,
    /// Share of served pairs drawn from gold (0–1); `null`: the default, 0.05 when there are gold pairs.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<f64>)]
    pub gold_rate: Option<Option<f64>>,
    /// Gold accuracy (0–1) below which an annotator stops receiving pairs after 10 gold answers;
    /// `null`: no bar.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<f64>)]
    pub min_gold_accuracy: Option<Option<f64>>,
    pub display: Option<Display>,
    /// One line shown on the workbench above every pair (at most 300 characters).
    pub criterion: Option<String>,
    /// Held-out prompts each new version's win rate is measured on (1 to 10,000; default 64).
    pub eval_prompts: Option<u32>,
    /// LoRA adapters for training (`{"rank", "alpha", "dropout", "targets"}`, missing fields at their
    /// defaults); `null`: full fine-tuning.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<LoraSettings>)]
    pub lora: Option<Option<LoraSettings>>,
}

/// Tells "absent" (keep) from an explicit `null` (clear) for PATCH.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::deserialize(d)?))
}

pub const DEFAULT_LEASE_SECONDS: i64 = 600;

impl ProjectInput {
    /// Applies the given fields to `p` and checks the result as a whole.
    fn apply(self, p: &mut Project) -> Result<()> {
        if let Some(name) = self.name {
            p.name = name.trim().to_string();
        }
        if let Some(g) = self.guidelines {
            p.guidelines = g;
        }
        if let Some(b) = self.label_budget {
            p.label_budget = b;
        }
        if let Some(s) = self.strategy {
            p.strategy = s;
        }
        if let Some(l) = self.lease_seconds {
            p.lease_seconds = l;
        }
        let s = &mut p.settings;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { s.$f = v; })* };
        }
        set!(
            seed,
            train_every,
            loss,
            beta,
            label_smoothing,
            schedule,
            learning_rate,
            epochs,
            batch_size,
            completions,
            oversample,
            entropy_samples,
            entropy_estimator,
            chat_template,
            install_only_if_better,
            labels_per_pair,
            label_aggregation,
            gold_rate,
            min_gold_accuracy,
            display,
            criterion,
            eval_prompts,
            lora
        );
        p.validate()
    }
}

impl Project {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::Invalid(m.to_string()));
        let s = &self.settings;
        // Forms and the CLI reach here without a JSON body's check.
        check_storable("name", &self.name)?;
        check_storable("guidelines", &self.guidelines)?;
        if self.name.is_empty() || self.name.chars().count() > 200 {
            return bad("name must be 1 to 200 characters");
        }
        if self.guidelines.len() > 200_000 {
            return bad("guidelines must be at most 200,000 bytes");
        }
        if matches!(self.label_budget, Some(b) if b < 0) {
            return bad("label_budget must be zero or more");
        }
        if !(1..=86_400).contains(&self.lease_seconds) {
            return bad("lease_seconds must be between 1 and 86400");
        }
        if !(s.beta > 0.0 && s.beta.is_finite()) {
            return bad("beta must be a positive number");
        }
        if !(0.0..0.5).contains(&s.label_smoothing) {
            return bad("label_smoothing must be in [0, 0.5)");
        }
        if !(s.learning_rate > 0.0 && s.learning_rate < 1.0) {
            return bad("learning_rate must be in (0, 1)");
        }
        if s.epochs == 0 || s.batch_size == 0 || s.entropy_samples == 0 {
            return bad("epochs, batch_size and entropy_samples must be at least 1");
        }
        let c = &s.completions;
        if c.max_new_tokens == 0 || c.max_new_tokens > 1024 {
            return bad("completions.max_new_tokens must be 1 to 1024");
        }
        let sane = (0.0..=5.0).contains(&c.temperature) && c.top_p > 0.0 && c.top_p <= 1.0;
        if !sane {
            return bad("completions.temperature must be in [0, 5] and top_p in (0, 1]");
        }
        if s.oversample.prompts == 0 || s.oversample.pairs == 0 {
            return bad("oversample.prompts and oversample.pairs must be at least 1");
        }
        if s.label_aggregation == LabelAggregation::Soft && s.loss == LossKind::Ipo {
            return bad(
                "label_aggregation \"soft\" smooths the dpo loss; the ipo loss has no smoothing",
            );
        }
        check_storable("criterion", &s.criterion)?;
        if s.criterion.chars().count() > 300 || s.criterion.contains(['\n', '\r']) {
            return bad("criterion must be one line of at most 300 characters");
        }
        if let Some(lora) = &s.lora {
            lora.check().map_err(StoreError::Invalid)?;
        }
        if !(1..=10_000).contains(&s.eval_prompts) {
            return bad("eval_prompts must be 1 to 10000");
        }
        if !(1..=100).contains(&s.labels_per_pair) {
            return bad("labels_per_pair must be 1 to 100");
        }
        let share = |x: Option<f64>| x.is_none_or(|x| (0.0..=1.0).contains(&x));
        if !share(s.gold_rate) {
            return bad("gold_rate must be between 0 and 1");
        }
        if !share(s.min_gold_accuracy) {
            return bad("min_gold_accuracy must be between 0 and 1");
        }
        Ok(())
    }
}

fn project_from_row(row: &AnyRow) -> Result<Project> {
    let strategy: String = row.try_get("strategy")?;
    let settings: String = row.try_get("settings")?;
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        guidelines: row.try_get("guidelines")?,
        label_budget: row.try_get("label_budget")?,
        strategy: strategy.parse().unwrap_or_default(),
        lease_seconds: row.try_get("lease_seconds")?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn create_project(store: &Store, input: ProjectInput) -> Result<Project> {
    if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(StoreError::Invalid("name is required".into()));
    }
    let now = now_ms();
    let mut project = Project {
        id: new_id(),
        name: String::new(),
        guidelines: String::new(),
        label_budget: None,
        strategy: Strategy::default(),
        lease_seconds: DEFAULT_LEASE_SECONDS,
        settings: LoopSettings::default(),
        created_at: now,
        updated_at: now,
    };
    input.apply(&mut project)?;
    sqlx::query(
        "INSERT INTO projects (id, name, guidelines, label_budget, strategy, settings, lease_seconds, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&project.id)
    .bind(&project.name)
    .bind(&project.guidelines)
    .bind(project.label_budget)
    .bind(project.strategy.as_str())
    .bind(serde_json::to_string(&project.settings).expect("settings serialise"))
    .bind(project.lease_seconds)
    .bind(now)
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(|e| StoreError::unique_or(e, &format!("project {:?}", project.name)))?;
    Ok(project)
}

pub async fn update_project(store: &Store, id: &str, input: ProjectInput) -> Result<Project> {
    let mut project = get_project(store, id).await?;
    input.apply(&mut project)?;
    project.updated_at = now_ms();
    sqlx::query(
        "UPDATE projects SET name = $1, guidelines = $2, label_budget = $3, strategy = $4, \
         settings = $5, lease_seconds = $6, updated_at = $7 WHERE id = $8",
    )
    .bind(&project.name)
    .bind(&project.guidelines)
    .bind(project.label_budget)
    .bind(project.strategy.as_str())
    .bind(serde_json::to_string(&project.settings).expect("settings serialise"))
    .bind(project.lease_seconds)
    .bind(project.updated_at)
    .bind(id)
    .execute(store.pool())
    .await
    .map_err(|e| StoreError::unique_or(e, &format!("project {:?}", project.name)))?;
    Ok(project)
}

pub async fn get_project(store: &Store, id: &str) -> Result<Project> {
    let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("project"))?;
    project_from_row(&row)
}

/// A project by id, or by name: the CLI lets people type either.
pub async fn find_project(store: &Store, id_or_name: &str) -> Result<Project> {
    let row = sqlx::query("SELECT * FROM projects WHERE id = $1 OR name = $1")
        .bind(id_or_name)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("project"))?;
    project_from_row(&row)
}

pub async fn list_projects(store: &Store) -> Result<Vec<Project>> {
    let rows = sqlx::query("SELECT * FROM projects ORDER BY created_at, name")
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(project_from_row).collect()
}
