-- The `paused` status (CONTRACT.md section 4): a paused saga is unfinished. It is rehydrated,
-- listed as stuck, counted by the status gauges and never deleted by retention, so the
-- partial indexes of unfinished sagas cover it too (their queries name the same statuses).
DROP INDEX sagas_unfinished_idx;
CREATE INDEX sagas_unfinished_idx ON sagas (id)
    WHERE status IN ('running', 'compensating', 'paused', 'failed');

DROP INDEX sagas_unfinished_updated_idx;
CREATE INDEX sagas_unfinished_updated_idx ON sagas (updated_at)
    WHERE status IN ('running', 'compensating', 'paused', 'failed');

DROP INDEX sagas_unfinished_created_idx;
CREATE INDEX sagas_unfinished_created_idx ON sagas (created_at DESC, id DESC)
    WHERE status IN ('running', 'compensating', 'paused', 'failed');

DROP INDEX sagas_unfinished_saga_created_idx;
CREATE INDEX sagas_unfinished_saga_created_idx ON sagas (saga, created_at DESC, id DESC)
    WHERE status IN ('running', 'compensating', 'paused', 'failed');
