-- Stored saga definitions: a saga finishes on the version it started with.
CREATE TABLE saga_definitions (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- One row per saga: the actor's snapshot, rewritten on every transition.
CREATE TABLE sagas (
    id                  uuid        PRIMARY KEY,
    saga                text        NOT NULL,
    definition_version  integer     NOT NULL,
    status              text        NOT NULL,
    version             bigint      NOT NULL,
    step                text,
    payload             jsonb       NOT NULL,
    state               jsonb       NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (saga, definition_version) REFERENCES saga_definitions (name, version)
);

-- GET /sagas: newest first, optionally by status or type, keyset pagination on (created_at, id).
CREATE INDEX sagas_created_idx ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_status_created_idx ON sagas (status, created_at DESC, id DESC);
CREATE INDEX sagas_saga_created_idx ON sagas (saga, created_at DESC, id DESC);
-- Rehydration on start-up reads only unfinished sagas.
CREATE INDEX sagas_unfinished_idx ON sagas (id) WHERE status IN ('running', 'compensating', 'failed');

-- History: one row per transition; version equals the saga's version after it.
CREATE TABLE saga_events (
    saga_id  uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    version  bigint      NOT NULL,
    event    text        NOT NULL,
    step     text,
    status   text        NOT NULL,
    detail   text,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, version)
);
