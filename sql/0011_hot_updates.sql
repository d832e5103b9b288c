-- Per-step transitions as HOT updates (issue 12). A transition that keeps the saga's status
-- (every `done` but the last, every re-send) rewrites `state`, `version`, `step` and
-- `updated_at`; none of them is indexed once the (updated_at) index of unfinished sagas is
-- gone, so PostgreSQL updates the row in place on its page without writing an entry into any
-- of the table's indexes. Only a status change (completed, compensating, ...) touches them.
--
-- The stuck listings (`stuck=true`, `stuck_s=N`) walk `sagas_unfinished_created_idx` instead
-- (unfinished sagas only, a few in a thousand; README "Listing at a million rows").
DROP INDEX sagas_unfinished_updated_idx;

-- Room on each page for the new versions of its rows (HOT needs the same page).
ALTER TABLE sagas SET (fillfactor = 70);
