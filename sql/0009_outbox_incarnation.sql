-- Lifecycle events are announced at least once (CONTRACT.md section 3): each is written here
-- in the transaction of the snapshot that finishes (or fails, or pauses) the saga, published
-- by a relay with publisher confirms, and deleted once the broker confirmed it.
CREATE TABLE IF NOT EXISTS saga_outbox (
    id          bigserial PRIMARY KEY,
    saga_id     uuid        NOT NULL,
    routing_key text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Each running process of an instance id has its own incarnation: a second process with
-- the same SAGA_INSTANCE_ID finds the row held by a live incarnation and takes nothing.
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS incarnation uuid;
