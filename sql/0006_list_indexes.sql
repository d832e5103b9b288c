-- GET /sagas at a million rows (scripts/list-bench.sh, README "Performance").
-- Both indexes hold unfinished sagas only (a few in a thousand), so they stay small; a
-- transition of an unfinished saga adds an entry to each.

-- Stuck sagas, newest first: walk the unfinished sagas in list order and stop after one
-- page, instead of fetching every unfinished saga idle since the cut-off with the
-- (updated_at) index of 0003 and sorting them all. That index still serves a cut-off
-- that few sagas are idle since (the usual "is anything stuck?"); the planner picks.
CREATE INDEX sagas_unfinished_created_idx ON sagas (created_at DESC, id DESC)
    WHERE status IN ('running', 'compensating', 'failed');

-- A type with an unfinished status or stuck (`?saga=refund&status=failed`,
-- `?saga=trip&stuck=true`): that type's unfinished sagas in list order, instead of
-- intersecting the status and type indexes and sorting what both hold.
CREATE INDEX sagas_unfinished_saga_created_idx ON sagas (saga, created_at DESC, id DESC)
    WHERE status IN ('running', 'compensating', 'failed');
