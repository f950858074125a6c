-- Core tables. Keep column-for-column equal to migrations/sqlite/0001_core.sql.
-- Ids are UUID text, times are Unix milliseconds, JSON is text: one row mapping serves both databases.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'annotator')),
    kind        TEXT NOT NULL DEFAULT 'human' CHECK (kind IN ('human', 'ai')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    guidelines    TEXT NOT NULL DEFAULT '',
    label_budget  BIGINT,
    strategy      TEXT NOT NULL,
    settings      TEXT NOT NULL,
    lease_seconds BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE prompts (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    external_id TEXT,
    text        TEXT NOT NULL,
    text_hash   TEXT NOT NULL,
    meta        TEXT NOT NULL,
    split       TEXT NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'eval')),
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX prompts_external_id ON prompts (project_id, external_id);
CREATE INDEX prompts_project ON prompts (project_id, created_at);
CREATE INDEX prompts_text ON prompts (project_id, text_hash);

-- A model a project's policy can be: the reference the server started with (project_id NULL, no parent)
-- or the result of a training run. The newest version of a project is its current policy.
CREATE TABLE model_versions (
    id          TEXT PRIMARY KEY,
    project_id  TEXT REFERENCES projects(id) ON DELETE CASCADE,
    parent_id   TEXT REFERENCES model_versions(id),
    path        TEXT NOT NULL,
    labels_seen BIGINT NOT NULL DEFAULT 0,
    metrics     TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
CREATE INDEX model_versions_project ON model_versions (project_id, created_at);

CREATE TABLE training_runs (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    step             BIGINT NOT NULL DEFAULT 0,
    total_steps      BIGINT NOT NULL DEFAULT 0,
    metrics          TEXT NOT NULL DEFAULT '{}',
    error            TEXT,
    base_version_id  TEXT REFERENCES model_versions(id),
    model_version_id TEXT REFERENCES model_versions(id),
    checkpoint_path  TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX training_runs_project ON training_runs (project_id, created_at);

CREATE TABLE pairs (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    prompt_id        TEXT NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
    external_id      TEXT,
    completion_a     TEXT NOT NULL,
    completion_b     TEXT NOT NULL,
    meta             TEXT NOT NULL,
    source           TEXT NOT NULL CHECK (source IN ('imported', 'generated')),
    model_version_id TEXT REFERENCES model_versions(id),
    strategy         TEXT,
    score            DOUBLE PRECISION,
    score_parts      TEXT,
    random_key       DOUBLE PRECISION NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'labelled', 'retired')),
    lease_id         TEXT,
    leased_until     BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX pairs_external_id ON pairs (project_id, external_id);
-- The order /next serves in: best score first, then a random key fixed at insert.
CREATE INDEX pairs_queue ON pairs (project_id, status, score DESC, random_key);

CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    pair_id     TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id),
    left_is_a   BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'answered', 'released', 'expired')),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX leases_user ON leases (user_id, project_id, status);
CREATE INDEX leases_pair ON leases (pair_id);

-- seq orders judgments exactly (several can share a millisecond); id is what clients see.
CREATE TABLE judgments (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    project_id      TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    pair_id         TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    lease_id        TEXT NOT NULL UNIQUE REFERENCES leases(id),
    user_id         TEXT NOT NULL REFERENCES users(id),
    choice          TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad', 'skip')),
    left_is_a       BIGINT NOT NULL,
    rationale       TEXT,
    seconds         DOUBLE PRECISION NOT NULL,
    idempotency_key TEXT,
    created_at      BIGINT NOT NULL,
    superseded_at   BIGINT
);
CREATE INDEX judgments_project ON judgments (project_id, created_at);
CREATE INDEX judgments_user ON judgments (user_id, project_id, created_at);
CREATE INDEX judgments_pair ON judgments (pair_id);

-- AI judges: annotators that answer leases by themselves. Each acts through its own user (kind 'ai').
CREATE TABLE judges (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL CHECK (kind IN ('http', 'sentiment')),
    settings    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    detached_at BIGINT
);
CREATE INDEX judges_project ON judges (project_id);
