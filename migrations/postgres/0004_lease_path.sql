-- The lease path at scale. A project with a label budget counts, on every lease, the labels spent and the
-- leases still open; both counts read the project's rows through an index made for them, instead of
-- walking every judgment or every pending pair (200,000 of them) row by row.

-- Open leases: a project's active leases, by expiry (those run out are skipped in the index).
CREATE INDEX leases_open ON leases (project_id, status, expires_at);

-- Labels spent: current judgments that are not skips.
CREATE INDEX judgments_labels ON judgments (project_id) WHERE superseded_at IS NULL AND choice <> 'skip';
