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
