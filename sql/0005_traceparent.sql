-- W3C trace context: the traceparent a participant sent with the reply that caused a
-- transition (or the one POST /start carried, for the start), so its traces join the saga's.
ALTER TABLE saga_events ADD COLUMN traceparent text;
