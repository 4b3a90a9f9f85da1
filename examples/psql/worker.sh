#!/usr/bin/env bash
# An external jobq worker in plain bash + psql: it claims the jobs of the
# external kind "send_email" (examples/setup.sql), "sends" each by a POST to
# an HTTP service (examples/stub_server.py) with curl (or python3 when curl
# is missing), and completes the job in the same transaction as its record
# of the sending (table example_sent).
#
#   JOBQ_EXAMPLE_STUB_URL=http://127.0.0.1:8025/send bash examples/psql/worker.sh
#
# Connection: DATABASE_URL, or the PG* variables (PGHOST, PGPORT,
# PGDATABASE, PGUSER, PGPASSWORD, PGAPPNAME) as for psql.
# Settings (environment):
#   JOBQ_EXAMPLE_STUB_URL     where to POST (default http://127.0.0.1:8025/send)
#   JOBQ_EXAMPLE_QUEUE        queue to claim from (default "default")
#   JOBQ_EXAMPLE_MAX_JOBS     jobs per claim (default 10)
#   JOBQ_EXAMPLE_WAIT         how long a claim waits for a job (default "10 s")
#   JOBQ_EXAMPLE_RETRY_IN     delay before retrying a transient failure (default "5 s")
#   JOBQ_EXAMPLE_WORKER       name shown in jobq.leases (default psql-<pid>)
#   JOBQ_EXAMPLE_HTTP_CLIENT  curl or python3 (default: curl if installed)
#
# SIGTERM or SIGINT: stops claiming, finishes the jobs in hand, exits 0.
#
# Each statement group is one psql run (one connection): simple, not fast.
# Values go to SQL as psql variables (-v name=value, used as :'name'),
# which psql quotes: no SQL is built by pasting strings.
set -uo pipefail

stub_url=${JOBQ_EXAMPLE_STUB_URL:-http://127.0.0.1:8025/send}
queue=${JOBQ_EXAMPLE_QUEUE:-default}
max_jobs=${JOBQ_EXAMPLE_MAX_JOBS:-10}
wait_for=${JOBQ_EXAMPLE_WAIT:-10 s}
retry_in=${JOBQ_EXAMPLE_RETRY_IN:-5 s}
worker=${JOBQ_EXAMPLE_WORKER:-psql-$$}
if [ -z "${JOBQ_EXAMPLE_HTTP_CLIENT:-}" ]; then
	if command -v curl >/dev/null; then http_client=curl; else http_client=python3; fi
else
	http_client=$JOBQ_EXAMPLE_HTTP_CLIENT
fi
http_timeout=10 # seconds; well under the kind's lease (30 s in setup.sql)

# -X: no ~/.psqlrc; -A -t: bare values; -q: no BEGIN/COMMIT tags;
# ON_ERROR_STOP: an error ends psql with status 3, rolling back an open
# transaction; VERBOSITY verbose: errors show their SQLSTATE.
psql=(psql -X -A -t -q -v ON_ERROR_STOP=1 -v VERBOSITY=verbose)
[ -n "${DATABASE_URL:-}" ] && psql+=(-d "$DATABASE_URL")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log() { echo "[$worker] $*" >&2; }

# SQLSTATE 55000: the lease token no longer holds the job (the lease ended
# and jobq gave the job back, or it was cancelled).  Nothing was changed;
# another attempt (maybe another worker's) owns the job now.
lease_lost() { grep -q 'ERROR:  55000' "$tmp/psql.err"; }

# psql failed otherwise (the database went away, say): let a supervisor
# restart us; the jobs in hand go back to the queue when their lease ends.
fatal() {
	log "fatal: $1"
	cat "$tmp/psql.err" >&2
	exit 1
}

# Graceful shutdown.  A claim may be waiting (up to JOBQ_EXAMPLE_WAIT) for
# a job: cancel it (psql sends the server a cancel request on SIGINT).  A
# cancelled claim takes nothing: it is one statement in its own
# transaction, either it returned jobs or it took none.  A cancel that
# reaches the server before the claim's statement starts is ignored: so
# it is sent again every 0.2 s while the claim runs ($tmp/claiming).
# Bash runs a trap once the foreground command (psql, curl) is over, or at
# once while it is in "wait" for a background one: so the claim runs in
# the background.
stopping=0
interrupted=0
claim_pid=
cancel_claim() {
	(while [ -e "$tmp/claiming" ] && kill -INT "$claim_pid"; do sleep 0.2; done) >/dev/null 2>&1 &
}
on_signal() {
	if [ "$stopping" = 1 ]; then
		# a second signal: exit now; the jobs in hand go back to the queue
		# when their lease ends (at-least-once: they will be sent again)
		log "$1 again: exiting at once"
		[ -n "$claim_pid" ] && kill -INT "$claim_pid" 2>/dev/null
		exit 1
	fi
	log "$1: stopping (finishing the jobs in hand)"
	stopping=1
	interrupted=1
	[ -n "$claim_pid" ] && cancel_claim
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

# http_post BODY KEY: POSTs the JSON body with an Idempotency-Key header.
# Sets http_status (000 when there was no answer: connection refused or
# reset, timeout; http_error says why) and http_body.
http_post() {
	: >"$tmp/body"
	if [ "$http_client" = curl ]; then
		http_status=$(printf '%s' "$1" | curl -sS --max-time "$http_timeout" -X POST \
			-H 'Content-Type: application/json' -H "Idempotency-Key: $2" \
			--data-binary @- -o "$tmp/body" -w '%{http_code}' "$stub_url" 2>"$tmp/http.err")
	else
		http_status=$(python3 - "$stub_url" "$2" "$1" "$tmp/body" "$http_timeout" 2>"$tmp/http.err" <<'PY'
import sys, urllib.error, urllib.request
url, key, body, out, timeout = sys.argv[1:]
req = urllib.request.Request(url, data=body.encode(), method="POST",
                             headers={"Content-Type": "application/json", "Idempotency-Key": key})
try:
    with urllib.request.urlopen(req, timeout=float(timeout)) as res:
        status, data = res.status, res.read()
except urllib.error.HTTPError as err:
    status, data = err.code, err.read()
except Exception as err:
    reason = getattr(err, "reason", err)
    print("%s: %s" % (type(reason).__name__, reason), file=sys.stderr)
    status, data = 0, b""
open(out, "wb").write(data)
print("%03d" % status)
PY
)
	fi
	http_body=$(cat "$tmp/body")
	http_error=$(cat "$tmp/http.err")
	http_error=${http_error//$'\n'/ }
	[ -n "$http_status" ] || http_status=000
}

# give_up ERROR: a permanent failure: discarded now, with the reason in
# the job's errors.  Uses work_job's locals.
give_up() {
	if "${psql[@]}" "${job[@]}" -v reason="$1" >/dev/null \
		2>"$tmp/psql.err" <<<"SELECT jobq.give_up(:id, :token, :'reason');"; then
		log "$what: $1 -> given up"
	else
		lease_lost || fatal "$what: give_up"
		log "$what: $1; the lease was lost meanwhile"
	fi
}

# work_job ID TOKEN ATTEMPT MAX_ATTEMPTS TO_TYPE ARGS: one claimed job
# (TO_TYPE: the JSON type of args.to).
work_job() {
	local id=$1 token=$2 attempt=$3 args=$6 state
	local what="job $id (attempt $attempt/$4)"
	local job=(-v id="$id" -v token="$token")

	# Args no attempt can do anything with: give up at once (failing here
	# instead would stop the worker on this job again at every attempt).
	if [ "$5" != string ]; then
		give_up "args.to must be a string"
		return
	fi

	# Before the side effect: make sure the lease is still ours and long
	# enough for the call (the jobs of a claim are worked one after the
	# other; a long job would call jobq.heartbeat() every so often).
	if ! "${psql[@]}" "${job[@]}" >/dev/null 2>"$tmp/psql.err" <<<'SELECT jobq.heartbeat(:id, :token);'; then
		lease_lost || fatal "$what: heartbeat"
		log "$what: lease lost before sending, skipped"
		return
	fi

	# The outside effect.  It may happen more than once for a job (at-least-
	# once: the worker may die after it and before the commit below), so the
	# job id goes along as an idempotency key: the service can tell a retry
	# from a new request.
	http_post "$args" "$id"

	if [ "$http_status" -ge 200 ] && [ "$http_status" -lt 300 ]; then
		# Success: the database effect and the completion commit together
		# or not at all -- exactly once, even if the job was worked twice.
		if "${psql[@]}" "${job[@]}" -v attempt="$attempt" -v args="$args" \
			-v status="$http_status" -v body="$http_body" >/dev/null 2>"$tmp/psql.err" <<'SQL'
BEGIN;
INSERT INTO example_sent (job_id, recipient, attempt, worker, response)
VALUES (:id, :'args'::jsonb ->> 'to', :attempt, 'psql', :'body');
SELECT jobq.complete(:id, :token,
                     jsonb_build_object('http_status', :status, 'response', :'body'::text));
COMMIT;
SQL
		then
			log "$what: sent, completed"
		else
			lease_lost || fatal "$what: complete"
			log "$what: sent, but the lease was lost: rolled back"
		fi
		return
	fi

	local error
	if [ "$http_status" = 000 ]; then
		error="POST failed: $http_error"
	else
		error="HTTP $http_status: $http_body"
	fi
	if [ "$http_status" = 000 ] || [ "$http_status" -ge 500 ] ||
		[ "$http_status" = 408 ] || [ "$http_status" = 429 ]; then
		# A transient failure: retried after retry_in (or discarded when it
		# was the last attempt; jobq.fail returns the new state).
		if state=$("${psql[@]}" "${job[@]}" -v error="$error" -v retry_in="$retry_in" \
			2>"$tmp/psql.err" <<<"SELECT jobq.fail(:id, :token, :'error'::text, :'retry_in'::interval);"); then
			log "$what: $error -> $state"
		else
			lease_lost || fatal "$what: fail"
			log "$what: $error; the lease was lost meanwhile"
		fi
	else
		give_up "$error" # any other 4xx: retrying would not help
	fi
}

log "claiming from queue $queue, posting to $stub_url (with $http_client)"
while [ "$stopping" = 0 ]; do
	# Autocommit: the claim commits as it returns.  It waits up to
	# $wait_for for a job, woken as soon as one is enqueued.  One line per
	# job: id, lease token, attempt, max attempts, the JSON type of args.to,
	# args (jsonb's text has no tab nor newline: they are escaped in JSON
	# strings).
	interrupted=0
	touch "$tmp/claiming"
	"${psql[@]}" -F $'\t' -v queue="$queue" -v max_jobs="$max_jobs" -v wait="$wait_for" \
		-v worker="$worker" >"$tmp/jobs" 2>"$tmp/psql.err" <<'SQL' &
SELECT id, lease_token, attempt, max_attempts, coalesce(jsonb_typeof(args->'to'), '-'), args
  FROM jobq.claim(queue => :'queue', max_jobs => :'max_jobs', wait => :'wait',
                  worker => :'worker');
SQL
	claim_pid=$!
	# a signal between the start of psql and here found no claim_pid
	[ "$stopping" = 1 ] && cancel_claim
	# a trapped signal ends "wait" early: then wait again for psql's status
	# (bash keeps it: waiting again for a process that is over returns it)
	wait "$claim_pid"
	status=$?
	while [ "$interrupted" = 1 ]; do
		interrupted=0
		wait "$claim_pid"
		status=$?
	done
	rm -f "$tmp/claiming"
	claim_pid=
	if [ "$status" != 0 ]; then
		[ "$stopping" = 1 ] && break # cancelled (a failed claim took nothing)
		fatal "claim"
	fi

	# the jobs in hand are finished even when a signal came meanwhile
	while IFS=$'\t' read -r -u 3 id token attempt max_attempts to_type args; do
		work_job "$id" "$token" "$attempt" "$max_attempts" "$to_type" "$args"
	done 3<"$tmp/jobs"
done
log "stopped"
exit 0
