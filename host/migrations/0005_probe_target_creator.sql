-- The API key that created each target: its scheduled probes may reach private addresses only
-- while that key is an unrevoked admin key (or the operator allows private targets). Targets
-- from before this column have no creator and count as non-admin.
ALTER TABLE probe_targets ADD COLUMN created_by_key TEXT;
