-- Label quality (issue 14).

-- A gold pair carries its known answer, the better completion ('a' or 'b'). Gold pairs are mixed into what
-- annotators are served, each annotator answers one at most once, they never count as labelled and never
-- train or export as preferences: they measure the annotator.
ALTER TABLE pairs ADD COLUMN gold TEXT;

-- Review. A pair is held from serving while a flag on it is open; an admin resolves the flag by keeping the
-- pair (served and trained as before) or excluding it (never served, never trained, left out of the TRL
-- export; its votes stay in the full export).
ALTER TABLE pairs ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pairs ADD COLUMN excluded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE flags ADD COLUMN resolution TEXT;
ALTER TABLE flags ADD COLUMN resolved_by TEXT REFERENCES users(id);
ALTER TABLE flags ADD COLUMN resolved_at BIGINT;
CREATE INDEX flags_pair ON flags (pair_id);
