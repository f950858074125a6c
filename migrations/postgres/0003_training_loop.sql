-- Training runs and versions as the loop sees them.

-- One row per optimizer step of a training run: the loss curve, appended as the run goes instead of
-- rewriting the run's whole history on every step. Values are NULL where a step's number was not finite.
CREATE TABLE training_steps (
    run_id      TEXT NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
    step        BIGINT NOT NULL,
    loss        DOUBLE PRECISION,
    margins     DOUBLE PRECISION,
    accuracies  DOUBLE PRECISION,
    PRIMARY KEY (run_id, step)
);

-- What a version was trained on, counted as rounds count it: decisive labels (left or right), since ties,
-- both-bad and skips teach DPO nothing. And whether it serves: a run that did not beat the version then
-- serving is recorded with the reason and is not installed (installed = 0, the reason set); a version
-- being evaluated before that decision has installed = 0 and no reason yet.
ALTER TABLE model_versions ADD COLUMN decisive_seen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE model_versions ADD COLUMN installed BIGINT NOT NULL DEFAULT 1;
ALTER TABLE model_versions ADD COLUMN not_installed_reason TEXT;
-- Versions trained before rounds counted decisive labels: take every label as seen, so none retrains at once.
UPDATE model_versions SET decisive_seen = labels_seen;

-- The queue index in the order the claim reads it (score DESC NULLS LAST, then the random key). PostgreSQL
-- puts NULLs first in a DESC index unless told, so every claim sorted all pending pairs (188 ms at 200,000
-- pending against 0.1 ms in index order); SQLite's DESC already keeps NULLs last, so its index is the same.
DROP INDEX pairs_queue;
CREATE INDEX pairs_queue ON pairs (project_id, status, score DESC NULLS LAST, random_key);
