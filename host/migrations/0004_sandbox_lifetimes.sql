-- The lifetimes of a sandbox's profile when it was created: GC still stops,
-- expires and restarts a sandbox whose profile has since gone (removed from
-- wharf.toml, or with the pack that contributed it).
ALTER TABLE sandboxes ADD COLUMN idle_timeout_secs INTEGER;
ALTER TABLE sandboxes ADD COLUMN max_ttl_secs INTEGER;
ALTER TABLE sandboxes ADD COLUMN restart_once INTEGER;
