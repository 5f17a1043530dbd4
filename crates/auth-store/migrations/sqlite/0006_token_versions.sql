-- A role change or disabling makes a user's earlier access tokens stale by
-- version, not by time: every token carries the version it was minted
-- from, so one minted from data read before a change never outlives it,
-- however the clock and the locks fell. The time cut-off of 0005 goes.
ALTER TABLE users ADD COLUMN tokens_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users DROP COLUMN tokens_not_before;
