#!/usr/bin/env bash
# jobq benchmark (not a test: it asserts nothing and prints figures).
#
#   bash test/bench.sh [runs]        (as root on Debian 12; runs defaults to 3)
#
# On a throwaway cluster with jobq preloaded it measures the figures of
# issue 10, each the median of [runs] runs and each shown against its
# baseline from the same run (the machine is noisy: compare ratios):
#   - drain: JOBS no-op jobs from a fresh (never analyzed) table with 1, 4
#     and 16 workers; with 4 workers after VACUUM ANALYZE; against the
#     4-worker fresh rate (and 16 and 4 workers against 4 and 1);
#   - with 1,000,000 completed jobs retained (database "retained", filled
#     once) against an empty history (database postgres), 4 workers each,
#     drains alternating between the two so that the machine's drift
#     does not enter the ratio;
#   - a held snapshot (an open REPEATABLE READ transaction): 4 rounds of
#     JOBS jobs under it and one after it ends, against the fresh rate and
#     round 1, and the dead tuples of jobq.jobs after round 4;
#   - SELECT * FROM jobq.queue_stats with 1,000,000 completed jobs retained;
#   - enqueue: jobq.enqueue() 1 job per transaction from 4 clients against
#     plain single-row INSERTs into a table of the same shape, and one
#     enqueue_many() of JOBS jobs against one INSERT ... SELECT of as many;
#   - a baseline SQL queue: claim-and-delete, 1 job per transaction, 4
#     clients;
#   - latency: from just before the COMMIT of an enqueue to the start of the
#     handler, with idle workers, p50 and p99 over 200 jobs.
# The side-by-side comparison with other job systems is ../shared/bench.
set -euo pipefail

cd "$(dirname "$0")/.."
. test/cluster.sh

RUNS=${1:-3}
JOBS=20000
RETAINED=1000000
CLIENTS=4
SECONDS_PER_RUN=5

cluster_start "
max_worker_processes = 32
jobq.workers = 4
shared_buffers = '1GB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
"
work="$CLUSTER_DIR/bench"
mkdir -p "$work"
chown "$CLUSTER_USER" "$work" 2>/dev/null || true

# what both databases need: jobq, the no-op kind, and the milliseconds one
# statement takes
setup_sql=$(cat <<'SQL'
CREATE EXTENSION jobq;
CREATE FUNCTION noop(args jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT jobq.register('noop', 'noop(jsonb)');
CREATE FUNCTION bench_ms(sql text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE sql;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
SQL
)

cluster_psql -c "$setup_sql" >/dev/null
cluster_psql >/dev/null <<'SQL'

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

# database retained: a million completed jobs; jobq runs there only while
# it is measured
cluster_psql -c "CREATE DATABASE retained" -c "ALTER DATABASE retained SET jobq.enabled = off" >/dev/null
cluster_psql -d retained -c "$setup_sql" >/dev/null
cluster_psql -d retained \
	-c "INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at,
	                           owner, attempt, attempted_at, finalized_at, result)
	    SELECT 'noop', '{}', 'default', 0, 'completed', 25, now(), current_user::regrole, 1,
	           now(), now() - i * interval '10 ms', NULL
	      FROM generate_series(1, $RETAINED) i" \
	-c "VACUUM ANALYZE jobq.jobs" -c "CHECKPOINT" >/dev/null

cat > "$work/enqueue.sql" <<'SQL'
SELECT jobq.enqueue('noop', '{}');
SQL
cat > "$work/insert.sql" <<'SQL'
INSERT INTO plain_jobs (kind, args) VALUES ('noop', '{}');
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

# psql in database $DB (default postgres)
q() { cluster_psql -At -d "${DB:-postgres}" "$@"; }

set_workers() {
	q -c "ALTER SYSTEM SET jobq.workers = $1" -c "SELECT pg_reload_conf()" >/dev/null
	until [ "$(q -c "SELECT count(*) FROM jobq.components WHERE component LIKE 'worker%' AND pid IS NOT NULL")" = "$1" ]; do
		sleep 0.1
	done
}

# An empty, never analyzed jobq.jobs, the default queue paused.
reset_jobs() {
	q -c "SELECT jobq.pause('default')" -c "TRUNCATE jobq.jobs" >/dev/null
}

# Enqueues JOBS no-op jobs into the paused queue, runs them with the workers
# there are, and prints jobs/s from the resume to the last completion
# (server clock).  $1: run VACUUM ANALYZE jobq.jobs before resuming.
drain() {
	local analyze=${1:-no} first started
	q -c "SELECT jobq.pause('default')" >/dev/null
	first=$(q -c "SELECT min(id) FROM unnest(jobq.enqueue_many('noop',
		(SELECT array_agg('{}'::jsonb) FROM generate_series(1, $JOBS)))) id")
	[ "$analyze" = analyze ] && q -c "VACUUM ANALYZE jobq.jobs" >/dev/null
	started=$(q -c "SELECT jobq.resume('default')" -c "SELECT extract(epoch FROM clock_timestamp())" | tail -1)
	until [ "$(q -c "SELECT EXISTS (SELECT FROM jobq.jobs WHERE state IN ('available', 'running'))")" = f ]; do
		sleep 0.05
	done
	q -c "SELECT round($JOBS / (extract(epoch FROM max(finalized_at)) - $started))::int
	        FROM jobq.jobs WHERE id >= $first"
}

# Holds a snapshot until release_snapshot: an open REPEATABLE READ
# transaction that has read something.
hold_snapshot() {
	cluster_psql -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT count(*) FROM pg_class" \
		-c "SELECT pg_sleep(3600) /* bench snapshot */" >/dev/null 2>&1 &
	until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%bench snapshot%' AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()")" = 1 ]; do
		sleep 0.05
	done
}
release_snapshot() {
	q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%bench snapshot%' AND pid <> pg_backend_pid()" >/dev/null
	wait || true
}

echo "jobq benchmark: $RUNS runs per figure, median shown; $(nproc) CPUs; $JOBS jobs per drain"
echo

declare -A result
add() { result[$1]+="$2 "; }
for run in $(seq "$RUNS"); do
	echo "run $run of $RUNS ..." >&2
	reset_jobs
	q -c "TRUNCATE plain_jobs" >/dev/null
	add insert "$(pgbench_tps -c $CLIENTS -j 2 -T $SECONDS_PER_RUN -f "$work/insert.sql")"
	add enqueue "$(pgbench_tps -c $CLIENTS -j 2 -T $SECONDS_PER_RUN -f "$work/enqueue.sql")"
	reset_jobs
	add insert_select "$(q -c "SELECT round($JOBS / bench_ms('INSERT INTO plain_jobs (kind, args) SELECT ''noop'', ''{}'' FROM generate_series(1, $JOBS)') * 1000)")"
	add enqueue_many "$(q -c "SELECT round($JOBS / bench_ms('SELECT jobq.enqueue_many(''noop'', (SELECT array_agg(''{}''::jsonb) FROM generate_series(1, $JOBS)))') * 1000)")"

	q -c "TRUNCATE sql_queue" -c "INSERT INTO sql_queue (args) SELECT '{}' FROM generate_series(1, $JOBS)" >/dev/null
	add claim_delete "$(pgbench_tps -c $CLIENTS -j 2 -t $((JOBS / CLIENTS)) -f "$work/claim_delete.sql")"

	for w in 1 4 16; do
		set_workers $w
		reset_jobs
		add "drain$w" "$(drain)"
	done
	set_workers 4
	reset_jobs
	add analyzed "$(drain analyze)"

	# a held snapshot
	reset_jobs
	add held0 "$(drain)"
	hold_snapshot
	for r in 1 2 3 4; do
		add "held$r" "$(drain)"
	done
	add dead "$(q -c "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'jobq.jobs'::regclass")"
	release_snapshot
	add held_after "$(drain)"

	# a million completed jobs retained, against an empty history: jobq
	# runs in database retained only now (its workers would count in
	# set_workers), after a first drain in each database
	q -c "ALTER DATABASE retained RESET jobq.enabled" >/dev/null
	DB=retained q -c "SELECT jobq.wait_ready('60 s')" >/dev/null
	reset_jobs
	drain >/dev/null
	DB=retained drain >/dev/null
	for i in 1 2; do
		add empty_history "$(drain)"
		add retained "$(DB=retained drain)"
	done
	add queue_stats_ms "$(DB=retained q -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY bench_ms('SELECT * FROM jobq.queue_stats'))::numeric, 2) FROM generate_series(1, 5)")"
	q -c "ALTER DATABASE retained SET jobq.enabled = off" >/dev/null
	until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'retained' AND backend_type LIKE 'jobq%'")" = 0 ]; do
		sleep 0.1
	done
done
reset_jobs

m() { echo "${result[$1]}" | tr ' ' '\n' | grep -v '^$' | median; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN { printf "%.2f", a / b }'; }
row() { printf "%-62s %10s %8s  %s\n" "$1" "$(m "$2")" "${3:+$(ratio "$2" "$3")}" "${4:-}"; }

printf "%-62s %10s %8s  %s\n" "measurement" "jobs/s" "ratio" "(ratio against)"
row "drain, 1 worker (fresh table)" drain1
row "drain, 4 workers (fresh table; the default)" drain4 drain1 "1 worker"
row "drain, 16 workers" drain16 drain4 "4 workers"
row "drain, 4 workers, after VACUUM ANALYZE" analyzed drain4 "fresh, 4 workers"
row "drain, 4 workers, $RETAINED completed jobs retained" retained empty_history "empty history, same run"
row "baseline: SQL claim-and-delete, 1 per xact, $CLIENTS clients" claim_delete
row "drain, 4 workers (fresh, before the snapshot)" held0
for r in 1 2 3 4; do
	row "drain under a held snapshot, round $r" "held$r" held0 "fresh"
done
printf "%-62s %10s %8s  %s\n" "round 4 against round 1" "" "$(ratio held4 held1)" ""
row "drain after the snapshot ended" held_after held0 "fresh"
printf "%-62s %10s\n" "dead tuples of jobq.jobs after round 4" "$(m dead)"
printf "%-62s %10s ms\n" "SELECT * FROM jobq.queue_stats, $RETAINED retained" "$(m queue_stats_ms)"
row "baseline: plain INSERT, 1 per xact, $CLIENTS clients" insert
row "jobq.enqueue(), 1 per xact, $CLIENTS clients" enqueue insert "plain INSERT"
row "baseline: one INSERT ... SELECT of $JOBS rows" insert_select
row "one jobq.enqueue_many() of $JOBS jobs" enqueue_many insert_select "INSERT ... SELECT"

# latency with idle workers
set_workers 4
q -c "SELECT jobq.resume('default')" >/dev/null
q -c "CALL enqueue_one_by_one(200)" >/dev/null
echo
q -F ' ' -c "
SELECT 'enqueue COMMIT -> handler start, idle workers (200 jobs): p50 ' ||
	   round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 2) || ' ms, p99 ' ||
	   round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2) || ' ms'
  FROM (SELECT extract(epoch FROM s.at - c.at) * 1000 AS ms
		  FROM bench_started s JOIN bench_committing c USING (job_id)) l"
