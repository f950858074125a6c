-- How many rounds have drawn each prompt. Rounds draw the least-drawn prompts first, in an order fixed by
-- the project's seed, so a run can be repeated from its seed and no prompt comes back before every other
-- one has had its turn.
ALTER TABLE prompts ADD COLUMN draws BIGINT NOT NULL DEFAULT 0;

-- A pair imported without an id is known by its content: the import looks up the prompt's pairs for one
-- with the same two completions before storing it, so a file imported twice is stored once.
CREATE INDEX pairs_prompt ON pairs (prompt_id);
