--
-- paused_queue: a paused queue starts no job, even when the pause commits
-- while a worker is in the middle of looking at the queues.
--
-- A worker reads the queues (paused or not) into a cache at the start of
-- its claim transaction, and reloads them when jobq.queues changed.  Here
-- the workers are held inside their claim transaction (after it took its
-- snapshot, before it read the queues) by a lock on pg_extension, which
-- the claim needs to check that jobq is still installed; the queue is
-- paused meanwhile; then the workers go on.  A job enqueued into the
-- paused queue afterwards must stay available until the queue is resumed.
--
-- The lock is held from a second session, opened with dblink.  The one
-- wait that is not for a job to finish (jobq.wait(..., '2 s') on the job
-- that must not run) is the time a worker has to wrongly start it.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

CREATE SCHEMA pq;
CREATE FUNCTION pq.noop(args jsonb) RETURNS void LANGUAGE sql AS '';
-- waits until exactly n jobq workers wait for a lock; false at the deadline
CREATE FUNCTION pq.await_blocked_workers(n int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	WHILE clock_timestamp() < deadline LOOP
		IF (SELECT count(*) FROM pg_stat_activity
			 WHERE backend_type = 'jobq worker' AND wait_event_type = 'Lock') = n THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.01);
	END LOOP;
	RETURN false;
END $$;

SELECT jobq.create_queue('pq');
SELECT jobq.register('pq_noop', 'pq.noop(jsonb)', queue => 'pq');
-- the workers know the queue, running
SELECT jobq.enqueue('pq_noop') AS id \gset
SELECT jobq.wait(:id, '60 s');

-- hold every worker inside its next claim
SELECT dblink_connect('locker', format('dbname=%s port=%s host=%s', current_database(),
	   current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('locker', 'BEGIN');
SELECT dblink_exec('locker', 'LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE');
-- wake every idle worker at once: each blocks for jobq's lock_timeout (then
-- backs off), so they are all seen blocked only if they start together
SELECT jobq._wake_workers_at_commit(current_setting('jobq.workers')::int);
SELECT pq.await_blocked_workers(current_setting('jobq.workers')::int);
-- pause the queue meanwhile, then let them go on
SELECT jobq.pause('pq');
SELECT dblink_exec('locker', 'COMMIT');
SELECT pq.await_blocked_workers(0);
SELECT dblink_disconnect('locker');

-- a job enqueued now must not start
SELECT jobq.enqueue('pq_noop') AS id \gset
SELECT jobq.wait(:id, '2 s');
SELECT state, attempt FROM jobq.jobs WHERE id = :id;
-- until the queue is resumed
SELECT jobq.resume('pq');
SELECT jobq.wait(:id, '60 s');

-- clean up
SELECT jobq.unregister('pq_noop');
SELECT jobq.drop_queue('pq');
SET client_min_messages = warning;
DROP SCHEMA pq CASCADE;
DROP EXTENSION dblink;
RESET client_min_messages;
