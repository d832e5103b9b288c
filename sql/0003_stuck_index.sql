-- GET /sagas?stuck=true: unfinished sagas with no transition since a time.
CREATE INDEX sagas_unfinished_updated_idx ON sagas (updated_at)
    WHERE status IN ('running', 'compensating', 'failed');
