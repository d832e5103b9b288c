-- The history's reference to `sagas` goes (issue 12). Every transition inserts one history
-- row, and the foreign key made each insert run a referential check: a query on the
-- primary key of `sagas` that locks the row FOR KEY SHARE, inside the very statement that
-- has just updated that row. Four of the eight index probes of `sagas` per 3-step saga were
-- these checks. The history is only ever written by the statement that inserts or updates
-- its saga (joined to the rows it changed, src/store/snapshots.rs), and the retention sweep
-- deletes a saga's history in the statement that deletes the saga, so the reference never
-- caught anything; its ON DELETE CASCADE only made each deleted saga look for history rows
-- the sweep had already deleted.
ALTER TABLE saga_events DROP CONSTRAINT IF EXISTS saga_events_saga_id_fkey;
