-- The cluster's secret: instances sign the hand-overs they send one another with it
-- (HMAC-SHA256), so that a participant, who can publish to the broker but cannot reach
-- PostgreSQL, cannot forge one. One row; the first instance to start fills it with 32
-- random bytes (INSERT ... ON CONFLICT DO NOTHING), every instance reads it at start-up.
CREATE TABLE saga_cluster_secret (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
