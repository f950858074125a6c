//! Prompts and pairs: NDJSON import with a verdict per line, and the rows the queue serves from.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Any, Transaction};
use utoipa::ToSchema;

use super::text::{find_nul_in_json, nul_message};
use super::{Result, Store, new_id, now_ms};

/// Longest accepted line of an import, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Longest accepted prompt or completion, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Prompts,
    Pairs,
}

/// External ids may be JSON strings or integers; both are kept as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ExternalId {
    Text(String),
    Number(i64),
}

impl ExternalId {
    fn into_string(self) -> String {
        match self {
            ExternalId::Text(s) => s,
            ExternalId::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: String,
    id: Option<ExternalId>,
    meta: Option<serde_json::Map<String, serde_json::Value>>,
    split: Option<Split>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    prompt: String,
    completion_a: String,
    completion_b: String,
    /// Whether each completion is whole (ended where its author or model stopped) rather than cut at a
    /// length limit; training appends EOS to a whole one. Default true.
    ends_a: Option<bool>,
    ends_b: Option<bool>,
    /// A gold pair's known answer: the better completion, "a" or "b".
    gold: Option<String>,
    id: Option<ExternalId>,
    meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The better completion of a gold pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GoldSide {
    A,
    B,
}

impl GoldSide {
    fn parse(s: &str) -> Result<GoldSide, String> {
        match s {
            "a" => Ok(GoldSide::A),
            "b" => Ok(GoldSide::B),
            other => Err(format!(
                "gold must be \"a\" or \"b\" (the better completion), got {other:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GoldSide::A => "a",
            GoldSide::B => "b",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    #[default]
    Train,
    Eval,
}

impl Split {
    fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

/// One valid line of an import, ready to store.
#[derive(Debug, Clone)]
pub enum NewItem {
    Prompt {
        text: String,
        external_id: Option<String>,
        meta: String,
        split: Split,
    },
    Pair {
        prompt: String,
        completion_a: String,
        completion_b: String,
        ends_a: bool,
        ends_b: bool,
        gold: Option<GoldSide>,
        external_id: Option<String>,
        meta: String,
    },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RejectedLine {
    /// 1-based line number in the uploaded body.
    pub line: usize,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ImportReport {
    pub inserted: u64,
    /// Lines skipped because the project already had them, or an earlier line of the same upload
    /// did: by `id` when the line has one, else by content (a prompt's text; a pair's prompt and both
    /// completions). Importing a file again stores nothing twice.
    pub duplicates: u64,
    pub rejected: Vec<RejectedLine>,
    /// Lines stored, with something to look at (a pair whose two completions are the same text).
    pub warnings: Vec<LineWarning>,
}

/// A stored line worth a second look.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineWarning {
    pub line: usize,
    pub warning: String,
}

/// Warnings for lines that parse and will be stored.
fn warnings_of(items: &[(usize, NewItem)]) -> Vec<LineWarning> {
    items
        .iter()
        .filter_map(|(line, item)| match item {
            NewItem::Pair {
                completion_a,
                completion_b,
                ..
            } if completion_a == completion_b => Some(LineWarning {
                line: *line,
                warning: "completion_a and completion_b are the same text: nobody can prefer one, \
                          so this pair will only be skipped or tied"
                    .into(),
            }),
            _ => None,
        })
        .collect()
}

fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("\"{field}\" is empty"));
    }
    if s.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "\"{field}\" is {} bytes, over the limit of {MAX_TEXT_BYTES}",
            s.len()
        ));
    }
    Ok(())
}

fn parse_line(kind: ImportKind, line: &[u8]) -> Result<NewItem, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!(
            "line is {} bytes, over the limit of {MAX_LINE_BYTES}",
            line.len()
        ));
    }
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    // After the typed parse, so that a line with several faults reports its shape first.
    let storable = || match find_nul_in_json(line) {
        Some(field) => Err(nul_message(&field)),
        None => Ok(()),
    };
    let meta_text = |m: Option<serde_json::Map<String, serde_json::Value>>| {
        serde_json::Value::Object(m.unwrap_or_default()).to_string()
    };
    match kind {
        ImportKind::Prompts => {
            let l: PromptLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
            storable()?;
            check_text("prompt", &l.prompt)?;
            Ok(NewItem::Prompt {
                text: l.prompt,
                external_id: l.id.map(ExternalId::into_string),
                meta: meta_text(l.meta),
                split: l.split.unwrap_or_default(),
            })
        }
        ImportKind::Pairs => {
            let l: PairLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
            storable()?;
            check_text("prompt", &l.prompt)?;
            check_text("completion_a", &l.completion_a)?;
            check_text("completion_b", &l.completion_b)?;
            Ok(NewItem::Pair {
                prompt: l.prompt,
                completion_a: l.completion_a,
                completion_b: l.completion_b,
                ends_a: l.ends_a.unwrap_or(true),
                ends_b: l.ends_b.unwrap_or(true),
                gold: l.gold.as_deref().map(GoldSide::parse).transpose()?,
                external_id: l.id.map(ExternalId::into_string),
                meta: meta_text(l.meta),
            })
        }
    }
}

/// Splits an NDJSON body into valid items (with their line numbers) and rejected lines.
/// Blank lines are neither. A UTF-8 byte order mark at the start (some editors write one) is not part
/// of line 1. Nothing here touches the database.
pub fn parse_ndjson(kind: ImportKind, body: &[u8]) -> (Vec<(usize, NewItem)>, Vec<RejectedLine>) {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut items = Vec::new();
    let mut rejected = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(kind, line) {
            Ok(item) => items.push((i + 1, item)),
            Err(error) => rejected.push(RejectedLine { line: i + 1, error }),
        }
    }
    (items, rejected)
}

fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Stores parsed items in one transaction: all of them, or (on a database error) none.
/// Lines stored per transaction of an import. SQLite has one write lock: a whole 200,000-line import in
/// one transaction held it for half a minute, and annotators' answers failed behind it. Between
/// chunks the annotator path gets through.
const IMPORT_CHUNK: usize = 500;

/// Stores the items chunk by chunk (see [`IMPORT_CHUNK`]). A chunk is all or nothing; an import that
/// stops midway (the server killed, say) keeps the chunks committed before, and importing the same
/// file again skips what is stored for lines with an `id` and for prompts (both de-duplicated).
pub async fn insert_items(
    store: &Store,
    project_id: &str,
    items: Vec<(usize, NewItem)>,
) -> Result<(u64, u64)> {
    let (mut inserted, mut duplicates) = (0, 0);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<_> = items.by_ref().take(IMPORT_CHUNK).collect();
        let (i, d) = insert_chunk(store, project_id, chunk).await?;
        inserted += i;
        duplicates += d;
        tokio::task::yield_now().await;
    }
    Ok((inserted, duplicates))
}

async fn insert_chunk(
    store: &Store,
    project_id: &str,
    items: Vec<(usize, NewItem)>,
) -> Result<(u64, u64)> {
    let mut tx = store.begin_write().await?;
    let (mut inserted, mut duplicates) = (0, 0);
    for (_, item) in items {
        let fresh = match item {
            NewItem::Prompt {
                text,
                external_id,
                meta,
                split,
            } => {
                // Without an id, a prompt is known by its text.
                if external_id.is_none() && find_prompt(&mut tx, project_id, &text).await?.is_some()
                {
                    duplicates += 1;
                    continue;
                }
                insert_prompt(
                    &mut tx,
                    project_id,
                    &text,
                    external_id.as_deref(),
                    &meta,
                    split,
                )
                .await?
                .is_some()
            }
            NewItem::Pair {
                prompt,
                completion_a,
                completion_b,
                ends_a,
                ends_b,
                gold,
                external_id,
                meta,
            } => {
                let prompt_id = find_or_insert_prompt(&mut tx, project_id, &prompt).await?;
                if external_id.is_none()
                    && pair_exists(&mut tx, &prompt_id, &completion_a, &completion_b).await?
                {
                    duplicates += 1;
                    continue;
                }
                let done = sqlx::query(
                    "INSERT INTO pairs (id, project_id, prompt_id, external_id, completion_a, completion_b, \
                     ends_a, ends_b, gold, meta, source, random_key, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'imported', $11, 'pending', $12) \
                     ON CONFLICT (project_id, external_id) DO NOTHING",
                )
                .bind(new_id())
                .bind(project_id)
                .bind(prompt_id)
                .bind(external_id)
                .bind(completion_a)
                .bind(completion_b)
                .bind(ends_a as i64)
                .bind(ends_b as i64)
                .bind(gold.map(GoldSide::as_str))
                .bind(meta)
                .bind(rand::random::<f64>())
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
                done.rows_affected() == 1
            }
        };
        if fresh {
            inserted += 1;
        } else {
            duplicates += 1;
        }
    }
    tx.commit().await?;
    Ok((inserted, duplicates))
}

/// Whether the prompt already has a pair with exactly these two completions (in this order).
async fn pair_exists(
    tx: &mut Transaction<'static, Any>,
    prompt_id: &str,
    completion_a: &str,
    completion_b: &str,
) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM pairs WHERE prompt_id = $1 AND completion_a = $2 AND completion_b = $3 LIMIT 1",
    )
    .bind(prompt_id)
    .bind(completion_a)
    .bind(completion_b)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.is_some())
}

/// Inserts a prompt; `None` when its external id is already in the project.
async fn insert_prompt(
    tx: &mut Transaction<'static, Any>,
    project_id: &str,
    text: &str,
    external_id: Option<&str>,
    meta: &str,
    split: Split,
) -> Result<Option<String>> {
    let id = new_id();
    let done = sqlx::query(
        "INSERT INTO prompts (id, project_id, external_id, text, text_hash, meta, split, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (project_id, external_id) DO NOTHING",
    )
    .bind(&id)
    .bind(project_id)
    .bind(external_id)
    .bind(text)
    .bind(text_hash(text))
    .bind(meta)
    .bind(split.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok((done.rows_affected() == 1).then_some(id))
}

/// The project's prompt with this exact text, if any.
async fn find_prompt(
    tx: &mut Transaction<'static, Any>,
    project_id: &str,
    text: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM prompts WHERE project_id = $1 AND text_hash = $2 AND text = $3 LIMIT 1",
    )
    .bind(project_id)
    .bind(text_hash(text))
    .bind(text)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The prompt row with this exact text, created when the project has none.
pub async fn find_or_insert_prompt(
    tx: &mut Transaction<'static, Any>,
    project_id: &str,
    text: &str,
) -> Result<String> {
    match find_prompt(tx, project_id, text).await? {
        Some(id) => Ok(id),
        None => Ok(
            insert_prompt(tx, project_id, text, None, "{}", Split::Train)
                .await?
                .expect("a prompt without external id never conflicts"),
        ),
    }
}

/// Stores prompt texts the program itself made (held-out ones with `Split::Eval`), skipping the NDJSON
/// round trip an upload needs.
pub async fn insert_prompts(
    store: &Store,
    project_id: &str,
    texts: &[String],
    split: Split,
) -> Result<u64> {
    let items = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let item = NewItem::Prompt {
                text: text.clone(),
                external_id: None,
                meta: "{}".into(),
                split,
            };
            (i + 1, item)
        })
        .collect();
    Ok(insert_items(store, project_id, items).await?.0)
}

/// Parses and stores one NDJSON upload. Bad lines are reported; good ones are stored.
pub async fn import_ndjson(
    store: &Store,
    project_id: &str,
    kind: ImportKind,
    body: &[u8],
) -> Result<ImportReport> {
    let (items, rejected) = parse_ndjson(kind, body);
    let warnings = warnings_of(&items);
    let (inserted, duplicates) = insert_items(store, project_id, items).await?;
    Ok(ImportReport {
        inserted,
        duplicates,
        rejected,
        warnings,
    })
}

/// Counts of a project's pairs by status, for stats and dashboards.
pub async fn count_pairs(store: &Store, project_id: &str) -> Result<PairCounts> {
    let row = sqlx::query(
        "SELECT \
           COALESCE(SUM(CASE WHEN status = 'pending' AND gold IS NULL AND excluded = 0 \
                             THEN 1 ELSE 0 END), 0) AS pending, \
           COALESCE(SUM(CASE WHEN status = 'labelled' THEN 1 ELSE 0 END), 0) AS labelled, \
           COALESCE(SUM(CASE WHEN status = 'pending' AND gold IS NULL AND lease_id IS NOT NULL \
                             AND leased_until > $2 THEN 1 ELSE 0 END), 0) AS leased, \
           COALESCE(SUM(CASE WHEN gold IS NOT NULL THEN 1 ELSE 0 END), 0) AS gold, \
           COALESCE(SUM(CASE WHEN held = 1 THEN 1 ELSE 0 END), 0) AS held, \
           COALESCE(SUM(CASE WHEN excluded = 1 THEN 1 ELSE 0 END), 0) AS excluded, \
           (SELECT COUNT(*) FROM prompts WHERE project_id = $1) AS prompts, \
           (SELECT COUNT(*) FROM prompts WHERE project_id = $1 AND split = 'train') AS train_prompts \
         FROM pairs WHERE project_id = $1",
    )
    .bind(project_id)
    .bind(store.clock().now_ms())
    .fetch_one(store.pool())
    .await?;
    let get = |name: &str| super::int(&row, name);
    Ok(PairCounts {
        pending: get("pending")?,
        labelled: get("labelled")?,
        leased: get("leased")?,
        gold: get("gold")?,
        held: get("held")?,
        excluded: get("excluded")?,
        prompts: get("prompts")?,
        train_prompts: get("train_prompts")?,
    })
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PairCounts {
    /// Pairs still waiting for (more) labels: not gold, not excluded.
    pub pending: i64,
    pub labelled: i64,
    pub leased: i64,
    /// Gold pairs (known answer), mixed into what annotators are served.
    pub gold: i64,
    /// Pairs held from serving while a flag on them is open.
    pub held: i64,
    /// Pairs an admin excluded on review: never served or trained.
    pub excluded: i64,
    pub prompts: i64,
    /// Prompts in the train split: what the model draws rounds from.
    pub train_prompts: i64,
}
