#!/usr/bin/env bash
# jobq benchmark (not a test: it asserts nothing and prints figures).
#
#   bash test/bench.sh [runs]        (as root on Debian 12; runs defaults to 3)
#
# On a throwaway cluster with jobq preloaded it measures, each figure the
# median of [runs] runs:
#   - enqueue: single-row jobq.enqueue() from 4 clients, and enqueue_many()
#     of 1000 jobs per call, against a baseline of plain single-row INSERTs
#     from 4 clients into a table of the same shape;
#   - drain: 20,000 no-op jobs with 1, 2 and 4 workers, and 20,000 jobs
#     whose handler calls jobq.current_job() with 1 worker, against a
#     baseline of the ideal one-transaction-per-job SQL claim-and-delete
#     (DELETE ... FOR UPDATE SKIP LOCKED) from 4 clients;
#   - latency: from just before the COMMIT of an enqueue to the start of the
#     handler, with idle workers, p50 and p99 over 200 jobs.
# Figures depend on the machine and on what else runs on it: compare the
# ratios to the baselines, which are measured in the same run.
set -euo pipefail

cd "$(dirname "$0")/.."
. test/cluster.sh

RUNS=${1:-3}
JOBS=20000
CLIENTS=4
SECONDS_PER_RUN=5

cluster_start "
max_worker_processes = 16
jobq.workers = 4
shared_buffers = '256MB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
"
work="$CLUSTER_DIR/bench"
mkdir -p "$work"
chown "$CLUSTER_USER" "$work" 2>/dev/null || true

cluster_psql >/dev/null <<'SQL'
CREATE EXTENSION jobq;
CREATE FUNCTION noop(args jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT jobq.register('noop', 'noop(jsonb)');
-- a handler that looks itself up, as many real handlers do
CREATE FUNCTION whoami(args jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
	RETURN (jobq.current_job()).id;
END $$;
SELECT jobq.register('whoami', 'whoami(jsonb)');

-- latency: the handler notes when it started
CREATE TABLE bench_started (job_id bigint PRIMARY KEY, at timestamptz);
CREATE TABLE bench_committing (job_id bigint PRIMARY KEY, at timestamptz);
CREATE FUNCTION stamp(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	started timestamptz := clock_timestamp();
BEGIN
	INSERT INTO bench_started VALUES ((args->>'i')::bigint, started);
END $$;
GRANT INSERT ON bench_started TO PUBLIC;
SELECT jobq.register('stamp', 'stamp(jsonb)');
CREATE PROCEDURE enqueue_one_by_one(n int) LANGUAGE plpgsql AS $$
DECLARE
	id bigint;
BEGIN
	FOR i IN 1..n LOOP
		id := jobq.enqueue('stamp', jsonb_build_object('i', i));
		INSERT INTO bench_committing VALUES (i, clock_timestamp());
		COMMIT;
		PERFORM jobq.wait(id, '10 s');
		COMMIT;
	END LOOP;
END $$;

-- baselines
CREATE TABLE plain_jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
						 kind text, args jsonb, created_at timestamptz DEFAULT now());
CREATE TABLE sql_queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, args jsonb);
SQL
cluster_psql -c "SELECT jobq.wait_ready('60 s')" >/dev/null

cat > "$work/enqueue.sql" <<'SQL'
SELECT jobq.enqueue('noop', '{}');
SQL
cat > "$work/insert.sql" <<'SQL'
INSERT INTO plain_jobs (kind, args) VALUES ('noop', '{}');
SQL
cat > "$work/enqueue_many.sql" <<'SQL'
SELECT jobq.enqueue_many('noop', array_fill('{}'::jsonb, ARRAY[1000]));
SQL
cat > "$work/claim_delete.sql" <<'SQL'
DELETE FROM sql_queue WHERE id = (SELECT id FROM sql_queue ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);
SQL
chown -R "$CLUSTER_USER" "$work" 2>/dev/null || true

# tps reported by pgbench for a script
pgbench_tps() {
	cluster_pgbench -n "$@" 2>/dev/null | awk '/^tps = / { printf "%.0f", $3 }'
}

median() {
	sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

reset_jobs() {
	cluster_psql -c "SELECT jobq.pause('default')" -c "TRUNCATE jobq.jobs" >/dev/null
}

# Enqueues JOBS jobs of kind $2 (default noop; queue paused), runs them with
# $1 workers and prints jobs/s from the resume to the last completion
# (server clock).
drain() {
	local workers=$1 kind=${2:-noop}
	reset_jobs
	cluster_psql -c "ALTER SYSTEM SET jobq.workers = $workers" -c "SELECT pg_reload_conf()" >/dev/null
	cluster_psql -c "SELECT jobq.enqueue_many('$kind', array_fill('{}'::jsonb, ARRAY[1000])) FROM generate_series(1, $JOBS / 1000)" >/dev/null
	# the pool has exactly $workers workers before the clock starts
	until [ "$(cluster_psql -At -c "SELECT count(*) FROM jobq.components WHERE component LIKE 'worker%' AND pid IS NOT NULL")" = "$workers" ]; do
		sleep 0.1
	done
	local started
	started=$(cluster_psql -At -c "SELECT jobq.resume('default')" -c "SELECT extract(epoch FROM clock_timestamp())")
	until [ "$(cluster_psql -At -c "SELECT count(*) FROM jobq.jobs WHERE state <> 'completed'")" = 0 ]; do
		sleep 0.2
	done
	cluster_psql -At -c "SELECT round($JOBS / (extract(epoch FROM max(finalized_at)) - $started))::int FROM jobq.jobs"
}

echo "jobq benchmark: $RUNS runs per figure, median shown; $(nproc) CPUs"
echo

declare -A result
for run in $(seq "$RUNS"); do
	reset_jobs
	cluster_psql -c "TRUNCATE plain_jobs" >/dev/null
	result[insert]+="$(pgbench_tps -c $CLIENTS -j 2 -T $SECONDS_PER_RUN -f "$work/insert.sql") "
	result[enqueue]+="$(pgbench_tps -c $CLIENTS -j 2 -T $SECONDS_PER_RUN -f "$work/enqueue.sql") "
	reset_jobs
	result[enqueue_many]+="$(( $(pgbench_tps -c 1 -t 20 -f "$work/enqueue_many.sql") * 1000 )) "

	cluster_psql -c "TRUNCATE sql_queue" -c "INSERT INTO sql_queue (args) SELECT '{}' FROM generate_series(1, $JOBS)" >/dev/null
	result[claim_delete]+="$(pgbench_tps -c $CLIENTS -j 2 -t $((JOBS / CLIENTS)) -f "$work/claim_delete.sql") "

	for w in 1 2 4; do
		result[drain$w]+="$(drain $w) "
	done
	result[whoami]+="$(drain 1 whoami) "
done
reset_jobs
cluster_psql -c "SELECT jobq.resume('default')" >/dev/null

m() { echo "${result[$1]}" | tr ' ' '\n' | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

printf "%-52s %10s %10s\n" "measurement" "jobs/s" "x baseline"
printf "%-52s %10s\n" "baseline: plain INSERT, $CLIENTS clients" "$(m insert)"
printf "%-52s %10s %10s\n" "jobq.enqueue(), $CLIENTS clients" "$(m enqueue)" "$(ratio "$(m enqueue)" "$(m insert)")"
printf "%-52s %10s %10s\n" "jobq.enqueue_many(), 1000 per call, 1 client" "$(m enqueue_many)" "$(ratio "$(m enqueue_many)" "$(m insert)")"
printf "%-52s %10s\n" "baseline: SQL claim-and-delete, 1 per xact, $CLIENTS clients" "$(m claim_delete)"
for w in 1 2 4; do
	printf "%-52s %10s %10s\n" "drain $JOBS no-op jobs, $w worker(s)" "$(m drain$w)" "$(ratio "$(m drain$w)" "$(m claim_delete)")"
done
printf "%-52s %10s %10s\n" "drain $JOBS jobs calling current_job(), 1 worker" "$(m whoami)" "$(ratio "$(m whoami)" "$(m claim_delete)")"

# latency with idle workers
cluster_psql -c "ALTER SYSTEM SET jobq.workers = 4" -c "SELECT pg_reload_conf()" >/dev/null
cluster_psql -c "SELECT jobq.wait_ready('60 s')" >/dev/null
cluster_psql -c "CALL enqueue_one_by_one(200)" >/dev/null
echo
cluster_psql -At -F ' ' -c "
SELECT 'enqueue COMMIT -> handler start, idle workers (200 jobs): p50 ' ||
	   round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 2) || ' ms, p99 ' ||
	   round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2) || ' ms'
  FROM (SELECT extract(epoch FROM s.at - c.at) * 1000 AS ms
		  FROM bench_started s JOIN bench_committing c USING (job_id)) l"
