-- Non-ready results of a scheduled target in a row: a ready target's verdict moves to a failure
-- only after `[probes] failure_threshold` of them, so one lost request does not flap its state.
ALTER TABLE probe_targets ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
