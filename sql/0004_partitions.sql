-- Partitioned ownership (several instances on one database; see README "Running several
-- instances"). Each saga belongs to one of N partitions, derived from its id by
-- saga_partition(); each partition is leased to one live instance at a time.

-- The partition of a saga id: the 16 bits of bytes 2..3 XOR bytes 14..15 of the UUID, mod n.
-- Must agree with cluster::partition_of in the Rust code (a unit test checks both).
CREATE FUNCTION saga_partition(id uuid, n int) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ((('x' || substr(id::text, 5, 4))::bit(16)::int
                 # ('x' || right(id::text, 4))::bit(16)::int) % n) $$;

-- One row per partition. A lease is held while expires_at is in the future; the epoch grows
-- by one at each change of hands and fences every snapshot write of the holder.
CREATE TABLE saga_partitions (
    partition  int PRIMARY KEY,
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

-- Live instances (heartbeats): each takes about partitions / live instances.
CREATE TABLE saga_instances (
    id         text PRIMARY KEY,
    partitions int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
