-- The browser: sign-in sessions, one-time sign-in links, project membership, flags on pairs.
-- Keep column-for-column equal to migrations/postgres/0002_browser.sql.

-- A signed-in browser. The cookie holds a random secret; only its SHA-256 is stored here.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- A one-time sign-in link: the code in the URL is random, stored hashed, usable once before it expires.
CREATE TABLE login_links (
    code_hash   TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Annotators assigned to a project. A project with no members is open to every annotator.
CREATE TABLE project_members (
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

-- An annotator's note that a pair is broken (bad prompt, truncated completion, offensive content).
CREATE TABLE flags (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    pair_id     TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id),
    note        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX flags_project ON flags (project_id, created_at);
