-- How many rounds have drawn each prompt. Rounds draw the least-drawn prompts first, in an order fixed by
-- the project's seed, so a run can be repeated from its seed and no prompt comes back before every other
-- one has had its turn.
ALTER TABLE prompts ADD COLUMN draws BIGINT NOT NULL DEFAULT 0;
