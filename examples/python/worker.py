#!/usr/bin/env python3
"""An external jobq worker in Python with psycopg 3.

It claims the jobs of the external kind "send_email" (examples/setup.sql),
"sends" each by a POST to an HTTP service (examples/stub_server.py), and
completes the job in the same transaction as its record of the sending
(table example_sent).

    apt-get install python3-psycopg      # or: pip install 'psycopg[binary]'
    JOBQ_EXAMPLE_STUB_URL=http://127.0.0.1:8025/send python3 examples/python/worker.py

Connection: DATABASE_URL, or the PG* variables (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, PGAPPNAME) as for psql.
Settings (environment):
  JOBQ_EXAMPLE_STUB_URL  where to POST (default http://127.0.0.1:8025/send)
  JOBQ_EXAMPLE_QUEUE     queue to claim from (default "default")
  JOBQ_EXAMPLE_MAX_JOBS  jobs per claim (default 10)
  JOBQ_EXAMPLE_WAIT      how long a claim waits for a job (default "10 s")
  JOBQ_EXAMPLE_RETRY_IN  delay before retrying a transient failure (default "5 s")
  JOBQ_EXAMPLE_WORKER    name shown in jobq.leases (default python-<pid>)

SIGTERM or SIGINT: stops claiming, finishes the jobs in hand, exits 0.
"""

import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
from psycopg.rows import dict_row

env = os.environ
STUB_URL = env.get("JOBQ_EXAMPLE_STUB_URL", "http://127.0.0.1:8025/send")
QUEUE = env.get("JOBQ_EXAMPLE_QUEUE", "default")
MAX_JOBS = int(env.get("JOBQ_EXAMPLE_MAX_JOBS", "10"))
WAIT = env.get("JOBQ_EXAMPLE_WAIT", "10 s")
RETRY_IN = env.get("JOBQ_EXAMPLE_RETRY_IN", "5 s")
WORKER = env.get("JOBQ_EXAMPLE_WORKER", "python-%d" % os.getpid())

HTTP_TIMEOUT = 10  # seconds; well under the kind's lease (30 s in setup.sql)

# SQLSTATE 55000: the lease token no longer holds the job (the lease ended
# and jobq gave the job back, or it was cancelled).  Nothing was changed;
# another attempt (maybe another worker's) owns the job now.
LEASE_LOST = "55000"


def log(msg):
    print("[%s] %s" % (WORKER, msg), file=sys.stderr, flush=True)


# Graceful shutdown.  A claim may be waiting (up to WAIT) for a job: cancel
# it.  A cancelled claim takes nothing (it is one statement in its own
# transaction: either it returned jobs, or it took none).  A cancel that
# reaches the server before the claim's statement starts is ignored: so a
# thread sends it again every second until the claim returns.
stopping = False
claiming = False


def cancel_claim():
    while claiming:
        claimer.cancel()  # psycopg: may be called from another thread
        time.sleep(1)


def on_signal(signum, frame):
    global stopping
    name = signal.Signals(signum).name
    if stopping:
        # a second signal: exit now; the jobs in hand go back to the queue
        # when their lease ends (at-least-once: they will be sent again)
        log("%s again: exiting at once" % name)
        os._exit(1)
    log("%s: stopping (finishing the jobs in hand)" % name)
    stopping = True
    threading.Thread(target=cancel_claim, daemon=True).start()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

# Two connections, both autocommit: "claimer" only ever runs jobq.claim (so
# that cancelling a waiting claim at shutdown can hit nothing else), "db"
# runs each job's statements, in explicit transactions where they belong
# together.  An empty conninfo: libpq reads the PG* variables.
claimer = psycopg.connect(env.get("DATABASE_URL", ""), autocommit=True)
db = psycopg.connect(env.get("DATABASE_URL", ""), autocommit=True)


class NoAnswer(Exception):
    """The HTTP service did not answer: connection refused or reset, timeout."""


def post(url, args, key):
    """POSTs args as JSON with an Idempotency-Key header: (status, body text)."""
    req = urllib.request.Request(
        url,
        data=json.dumps(args).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as res:
            return res.status, res.read().decode(errors="replace")
    except urllib.error.HTTPError as err:  # an answer, 4xx or 5xx
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NoAnswer("%s: %s" % (type(reason).__name__, reason)) from err


def work(job):
    """One claimed job: a dict with id, args, attempt, max_attempts, lease_token..."""
    what = "job %d (attempt %d/%d)" % (job["id"], job["attempt"], job["max_attempts"])

    # Args no attempt can do anything with: give up at once (raising here
    # instead would crash the worker on this job again at every attempt).
    if not isinstance(job["args"], dict) or not isinstance(job["args"].get("to"), str):
        return give_up(job, what, "args.to must be a string")

    # Before the side effect: make sure the lease is still ours and long
    # enough for the call (the jobs of a claim are worked one after the
    # other; a long job would call jobq.heartbeat() every so often).
    try:
        db.execute("SELECT jobq.heartbeat(%s, %s)", (job["id"], job["lease_token"]))
    except psycopg.Error as err:
        if err.sqlstate == LEASE_LOST:
            return log("%s: lease lost before sending, skipped" % what)
        raise

    # The outside effect.  It may happen more than once for a job (at-least-
    # once: the worker may die after it and before the commit below), so the
    # job id goes along as an idempotency key: the service can tell a retry
    # from a new request.
    try:
        status, body = post(STUB_URL, job["args"], str(job["id"]))
    except NoAnswer as err:
        return fail(job, what, "POST failed: %s" % err)

    if 200 <= status < 300:
        return complete(job, what, status, body)
    if status >= 500 or status in (408, 429):
        return fail(job, what, "HTTP %d: %s" % (status, body))
    # any other 4xx: retrying would not help
    return give_up(job, what, "HTTP %d: %s" % (status, body))


def complete(job, what, status, body):
    """Success: the database effect and the completion commit together or not
    at all -- exactly once, even if the job was worked twice."""
    try:
        with db.transaction():  # BEGIN ... COMMIT, or ROLLBACK on an exception
            db.execute(
                "INSERT INTO example_sent (job_id, recipient, attempt, worker, response)"
                " VALUES (%s, %s, %s, 'python', %s)",
                (job["id"], job["args"]["to"], job["attempt"], body),
            )
            db.execute(
                "SELECT jobq.complete(%s, %s, %s::jsonb)",
                (job["id"], job["lease_token"],
                 json.dumps({"http_status": status, "response": body})),
            )
        log("%s: sent, completed" % what)
    except psycopg.Error as err:
        if err.sqlstate == LEASE_LOST:
            return log("%s: sent, but the lease was lost: rolled back" % what)
        raise


def fail(job, what, error):
    """A transient failure: retried after RETRY_IN (or discarded when it was
    the last attempt; jobq.fail returns the new state)."""
    try:
        state = db.execute(
            "SELECT jobq.fail(%s, %s, %s::text, %s::interval)",
            (job["id"], job["lease_token"], error, RETRY_IN),
        ).fetchone()[0]
        log("%s: %s -> %s" % (what, error, state))
    except psycopg.Error as err:
        if err.sqlstate == LEASE_LOST:
            return log("%s: %s; the lease was lost meanwhile" % (what, error))
        raise


def give_up(job, what, reason):
    """A permanent failure: discarded now, with the reason in the job's errors."""
    try:
        db.execute("SELECT jobq.give_up(%s, %s, %s)", (job["id"], job["lease_token"], reason))
        log("%s: %s -> given up" % (what, reason))
    except psycopg.Error as err:
        if err.sqlstate == LEASE_LOST:
            return log("%s: %s; the lease was lost meanwhile" % (what, reason))
        raise


def main():
    global claiming
    log("claiming from queue %s, posting to %s" % (QUEUE, STUB_URL))
    while not stopping:
        # Autocommit: the claim commits as it returns.  It waits up to WAIT
        # for a job, woken as soon as one is enqueued.
        claiming = True
        try:
            if stopping:
                break  # a signal came before claiming was set: no claim
            cur = claimer.cursor(row_factory=dict_row)
            jobs = cur.execute(
                "SELECT id, kind, args, attempt, max_attempts, lease_token, lease_until"
                "  FROM jobq.claim(queue => %s, max_jobs => %s, wait => %s::interval,"
                "                  worker => %s)",
                (QUEUE, MAX_JOBS, WAIT, WORKER),
            ).fetchall()
        except psycopg.errors.QueryCanceled:
            if stopping:
                break  # our cancel: nothing claimed
            raise
        finally:
            claiming = False
        # the jobs in hand are finished even when a signal came meanwhile
        for job in jobs:
            work(job)
    claimer.close()
    db.close()
    log("stopped")


if __name__ == "__main__":
    try:
        main()
    except Exception as err:
        # the database went away, say: let a supervisor restart us; the jobs
        # in hand go back to the queue when their lease ends
        log("fatal: %r" % err)
        sys.exit(1)
