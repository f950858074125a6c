-- Whether each completion of a pair ended where the model chose to stop (it sampled EOS) rather than
-- where the length limit cut it. Training and re-scoring append EOS to a completion that ended, as TRL
-- does, so DPO learns when to stop; a completion cut at the limit is scored as it is. Imported
-- completions are whole texts and count as ended (1), which is also what TRL assumes of its files.
ALTER TABLE pairs ADD COLUMN ends_a BIGINT NOT NULL DEFAULT 1;
ALTER TABLE pairs ADD COLUMN ends_b BIGINT NOT NULL DEFAULT 1;
