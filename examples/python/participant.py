"""A saga-service participant in Python with exactly-once effects: the inbox pattern of
the README ("Writing a participant"). A "payments" service: charges in execute, refunds
in compensate. Needs pika and psycopg (3): bash scripts/python-venv.sh.

  SAGA_PARTICIPANT_QUEUE=payments SAGA_PARTICIPANT_DATABASE_URL=postgres://... \
  python3 examples/python/participant.py

A failure of the database or the broker raises out of start_consuming: the process exits
and the unacked command is redelivered to its restart (run it under a supervisor)."""
import json, os
import pika, psycopg
from psycopg.types.json import Jsonb

SCHEMA = """
CREATE TABLE IF NOT EXISTS saga_inbox (command_id text PRIMARY KEY, saga_id text NOT NULL,
  step text NOT NULL, action text NOT NULL, status text NOT NULL, output jsonb, error text,
  at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS saga_inbox_step ON saga_inbox (saga_id, step, action);
CREATE TABLE IF NOT EXISTS payments (saga_id text PRIMARY KEY, amount bigint NOT NULL,
  status text NOT NULL);"""

class Retryable(Exception):
    """A transient failure: rolled back, not recorded, replied "retryable": true."""

def work(db, cmd):  # the service's own local transaction: write through `db` only
    if cmd["action"] == "compensate":
        db.execute("UPDATE payments SET status = 'refunded' WHERE saga_id = %s", (cmd["saga_id"],))
        return "done", {"refunded": True}, None
    amount = (cmd.get("payload") or {}).get("amount", 100)
    if amount > 1000:  # a plain error: recorded, every re-send gets it again
        return "error", None, f"card declined for {amount}"
    db.execute("INSERT INTO payments VALUES (%s, %s, 'charged')", (cmd["saga_id"], amount))
    return "done", {"charged": amount}, None

def outcome(db, cmd):  # inside the one transaction that also holds work()'s writes
    key = (cmd["command_id"], cmd["saga_id"], cmd["step"], cmd["action"])
    if db.execute("INSERT INTO saga_inbox (command_id, saga_id, step, action, status) VALUES"
                  " (%s, %s, %s, %s, 'running') ON CONFLICT DO NOTHING", key).rowcount == 0:
        return db.execute("SELECT status, output, error FROM saga_inbox WHERE command_id = %s",
                          key[:1]).fetchone()  # a repeat (or a concurrent copy): as recorded
    # One step's execute and compensate never interleave; then look at the other half.
    db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s::text || '/' || %s::text, 0))", key[1:3])
    other = "compensate" if cmd["action"] == "execute" else "execute"
    seen = db.execute("SELECT EXISTS (SELECT 1 FROM saga_inbox WHERE saga_id = %s AND step = %s"
                      " AND action = %s AND status = 'done')", (*key[1:3], other)).fetchone()[0]
    if other == "compensate" and seen:    # compensated before it ran: the fence
        result = "error", None, f"step {cmd['step']} was compensated before it ran: not run"
    elif other == "execute" and not seen:  # never executed: record the fence, undo nothing
        result = "done", {"fenced": True}, None
    else:
        result = work(db, cmd)
    status, output, error = result
    db.execute("UPDATE saga_inbox SET status = %s, output = %s, error = %s WHERE command_id = %s",
               (status, Jsonb(output) if output is not None else None, error, key[0]))
    return result

def on_command(ch, method, props, body):
    cmd = json.loads(body)
    reply = {"command_id": cmd["command_id"], "saga_id": cmd["saga_id"], "service": "payments"}
    try:
        with db.transaction():  # effect and inbox row commit together, or neither does
            status, output, error = outcome(db, cmd)
        reply.update(status=status, output=output or {}, error=error)
    except (Retryable, psycopg.errors.LockNotAvailable) as e:  # rolled back, not recorded
        reply.update(status="error", output={}, error=str(e), retryable=True)
    # Mandatory + confirms: raises unless the broker confirmed the reply reached a queue.
    ch.basic_publish("", props.reply_to or "responses", json.dumps(reply), mandatory=True,
                     properties=pika.BasicProperties(correlation_id=cmd["command_id"],
                                                     delivery_mode=2, content_type="application/json"))
    ch.basic_ack(method.delivery_tag)  # only now: the outcome is committed, the reply confirmed

db = psycopg.connect(os.environ["SAGA_PARTICIPANT_DATABASE_URL"], autocommit=True)
db.execute(SCHEMA)
queue = os.environ.get("SAGA_PARTICIPANT_QUEUE", "payments")
conn = pika.BlockingConnection(pika.URLParameters(
    os.environ.get("SAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")))
ch = conn.channel()
ch.confirm_delivery()
ch.queue_declare(queue, durable=True)
ch.basic_qos(prefetch_count=1)
ch.basic_consume(queue, on_command)
print(f"participant consuming {queue}", flush=True)
ch.start_consuming()
