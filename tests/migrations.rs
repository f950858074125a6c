//! The two migration sets (migrations/sqlite, migrations/postgres) are kept column for column equal: the
//! same files, line for line the same, except for the dialect lines listed below. A new difference fails
//! here with its file and line; when it is a deliberate dialect difference, add it to `DIALECT_LINES`.
//! No database needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lines that may differ, as (SQLite, PostgreSQL), compared with surrounding whitespace trimmed.
const DIALECT_LINES: &[(&str, &str)] = &[
    // The judgment order: SQLite's rowid alias against a PostgreSQL sequence.
    (
        "seq             INTEGER PRIMARY KEY AUTOINCREMENT,",
        "seq             BIGSERIAL PRIMARY KEY,",
    ),
    // The queue order: PostgreSQL must be told to keep NULL scores last; SQLite's DESC already does.
    (
        "CREATE INDEX pairs_queue ON pairs (project_id, status, score DESC, random_key);",
        "CREATE INDEX pairs_queue ON pairs (project_id, status, score DESC NULLS LAST, random_key);",
    ),
];

/// Each file's header names its twin in the other set; the names are made alike before comparing.
const TWIN_NAMES: (&str, &str) = ("migrations/postgres/", "migrations/sqlite/");

fn migration_dir(dialect: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect)
}

fn sql_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .map(|name| name.into_string().expect("UTF-8 file name"))
        .filter(|name| name.ends_with(".sql"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Where the two texts of one migration differ beyond the allowed lines, one message per line. Records
/// in `used` which allowed pairs matched, so that a pair no longer needed can be noticed.
fn differences(
    name: &str,
    sqlite: &str,
    postgres: &str,
    used: &mut BTreeSet<usize>,
) -> Vec<String> {
    let sqlite = sqlite.replace(TWIN_NAMES.0, "migrations/<twin>/");
    let postgres = postgres.replace(TWIN_NAMES.1, "migrations/<twin>/");
    let (s_lines, p_lines): (Vec<&str>, Vec<&str>) =
        (sqlite.lines().collect(), postgres.lines().collect());
    let mut out = Vec::new();
    for (i, (s, p)) in s_lines.iter().zip(&p_lines).enumerate() {
        if s == p {
            continue;
        }
        let allowed = DIALECT_LINES
            .iter()
            .position(|&(ds, dp)| s.trim() == ds && p.trim() == dp);
        match allowed {
            Some(k) => {
                used.insert(k);
            }
            None => out.push(format!(
                "{name}:{}: sqlite has\n    {s}\n  postgres has\n    {p}",
                i + 1
            )),
        }
    }
    if s_lines.len() != p_lines.len() {
        out.push(format!(
            "{name}: sqlite has {} lines, postgres {} (the longer one goes on from line {})",
            s_lines.len(),
            p_lines.len(),
            s_lines.len().min(p_lines.len()) + 1
        ));
    }
    out
}

#[test]
fn sqlite_and_postgres_migrations_differ_only_in_listed_dialect_lines() {
    let (sqlite_dir, postgres_dir) = (migration_dir("sqlite"), migration_dir("postgres"));
    let names = sql_files(&sqlite_dir);
    assert!(
        !names.is_empty(),
        "no migrations in {}",
        sqlite_dir.display()
    );
    assert_eq!(
        names,
        sql_files(&postgres_dir),
        "both dialects have the same migration files"
    );

    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for name in &names {
        problems.extend(differences(
            name,
            &read(&sqlite_dir.join(name)),
            &read(&postgres_dir.join(name)),
            &mut used,
        ));
    }
    assert!(
        problems.is_empty(),
        "the migrations differ beyond DIALECT_LINES (tests/migrations.rs):\n{}",
        problems.join("\n")
    );
    for (k, pair) in DIALECT_LINES.iter().enumerate() {
        assert!(
            used.contains(&k),
            "DIALECT_LINES lists {pair:?}, which no migration has any more: remove it"
        );
    }
}

#[test]
fn an_unlisted_difference_is_reported_with_file_and_line() {
    let mut used = BTreeSet::new();
    let found = differences(
        "0009_x.sql",
        "CREATE TABLE t (\n    flag BIGINT NOT NULL\n);\n",
        "CREATE TABLE t (\n    flag BOOLEAN NOT NULL\n);\n",
        &mut used,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("0009_x.sql:2:"), "{}", found[0]);
    assert!(used.is_empty());
}
