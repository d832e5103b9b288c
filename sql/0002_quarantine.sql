-- Replies that named a known saga but could not be applied to it: dead-lettered and
-- kept here too, so an operator sees the saga and the bad message together.
CREATE TABLE saga_quarantine (
    id       bigserial   PRIMARY KEY,
    saga_id  uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    reason   text        NOT NULL,
    body     text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_quarantine_saga_idx ON saga_quarantine (saga_id, id);
