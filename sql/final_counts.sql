--
-- final_counts: jobq.queue_stats counts final jobs from jobq.final_counts,
-- which triggers on jobq.jobs keep; whatever changes the jobs, the counts
-- must equal the final jobs kept.  After each change, counts_differ()
-- lists every (queue, kind, owner, lessee, state) whose counted total is
-- not the number of such jobs in jobq.jobs: it must list none.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

CREATE FUNCTION counts_differ()
RETURNS TABLE (queue text, kind text, owner regrole, state jobq.job_state, counted bigint, kept bigint)
LANGUAGE sql AS $$
	WITH counted AS (
		SELECT c.queue, c.kind, c.owner, c.leased_by, c.state, sum(c.jobs)::bigint AS n
		  FROM jobq.final_counts c
		 GROUP BY 1, 2, 3, 4, 5 HAVING sum(c.jobs) <> 0),
	kept AS (
		SELECT j.queue, j.kind, j.owner, j.leased_by, j.state, count(*) AS n
		  FROM jobq.jobs j
		 WHERE j.state IN ('completed', 'cancelled', 'discarded')
		 GROUP BY 1, 2, 3, 4, 5)
	SELECT coalesce(c.queue, k.queue), coalesce(c.kind, k.kind), coalesce(c.owner, k.owner),
		   coalesce(c.state, k.state), c.n, k.n
	  FROM counted c
	  FULL JOIN kept k
		ON c.queue = k.queue AND c.kind = k.kind AND c.owner = k.owner
	   AND c.leased_by IS NOT DISTINCT FROM k.leased_by AND c.state = k.state
	 WHERE c.n IS DISTINCT FROM k.n
$$;

CREATE ROLE fc_user;
CREATE ROLE fc_other;
CREATE SCHEMA fc;
GRANT USAGE ON SCHEMA fc TO fc_user;
CREATE FUNCTION fc.ok(args jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION fc.fail(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'fails' USING ERRCODE = 'data_exception';
END $$;
GRANT EXECUTE ON FUNCTION fc.ok(jsonb), fc.fail(jsonb) TO fc_user;
SELECT jobq.create_queue('fc');
SELECT jobq.create_queue('fc_held');
SELECT jobq.pause('fc_held');
SELECT jobq.grant('queue', 'fc', 'fc_user'), jobq.grant('queue', 'fc_held', 'fc_user');
SET ROLE fc_user;
SELECT jobq.register('fc_ok', 'fc.ok(jsonb)', queue => 'fc');
SELECT jobq.register('fc_fail', 'fc.fail(jsonb)', queue => 'fc', max_attempts => 1);
RESET ROLE;

-- workers complete and discard jobs, in batches
SET ROLE fc_user;
SELECT cardinality(jobq.enqueue_many('fc_ok', array_fill('{}'::jsonb, ARRAY[30])));
SELECT cardinality(jobq.enqueue_many('fc_fail', array_fill('{}'::jsonb, ARRAY[4])));
RESET ROLE;
DO $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	WHILE EXISTS (SELECT FROM jobq.jobs WHERE queue = 'fc'
				   AND state NOT IN ('completed', 'cancelled', 'discarded')) LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'jobs did not end';
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END $$;
SELECT kind, state, count(*) FROM jobq.jobs WHERE queue = 'fc' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT * FROM counts_differ();
SELECT completed, discarded, cancelled, completed_last_minute, failed_last_minute
  FROM jobq.queue_stats WHERE queue = 'fc';

-- the caller sees the counts of the jobs it may see
SET ROLE fc_user;
SELECT completed, discarded FROM jobq.queue_stats WHERE queue = 'fc';
SET ROLE fc_other;
SELECT completed, discarded FROM jobq.queue_stats WHERE queue = 'fc';
SELECT count(*) AS counts_seen FROM jobq.final_counts;
RESET ROLE;

-- cancel waiting jobs, retry final ones
SET ROLE fc_user;
SELECT jobq.enqueue('fc_ok', queue => 'fc_held') AS held1 \gset
SELECT jobq.enqueue('fc_ok', queue => 'fc_held') AS held2 \gset
SELECT jobq.cancel(:held1), jobq.cancel(:held2);
SELECT jobq.retry(:held1);
RESET ROLE;
SELECT * FROM counts_differ();
SELECT available, cancelled FROM jobq.queue_stats WHERE queue = 'fc_held';

-- a rolled back change, and one in a subtransaction rolled back
BEGIN;
SELECT jobq.cancel(:held1);
SAVEPOINT s;
UPDATE jobq.jobs SET state = 'available', finalized_at = NULL WHERE queue = 'fc' AND state = 'discarded';
ROLLBACK TO s;
SELECT * FROM counts_differ();
ROLLBACK;
SELECT * FROM counts_differ();
SELECT cancelled FROM jobq.queue_stats WHERE queue = 'fc_held';

-- a superuser's changes: a final job moved to another queue and owner,
-- one deleted, one made final by hand, final jobs inserted
UPDATE jobq.jobs SET queue = 'fc_held', owner = 'fc_other'
 WHERE id = (SELECT min(id) FROM jobq.jobs WHERE queue = 'fc' AND state = 'completed');
DELETE FROM jobq.jobs WHERE id = (SELECT min(id) FROM jobq.jobs WHERE queue = 'fc' AND state = 'discarded');
UPDATE jobq.jobs SET state = 'discarded', finalized_at = now() WHERE id = :held1;
INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at, owner, finalized_at)
SELECT 'fc_ok', '{}', 'fc', 0, 'completed', 25, now(), 'fc_user', now() FROM generate_series(1, 5);
SELECT * FROM counts_differ();
SELECT queue, completed, discarded, cancelled FROM jobq.queue_stats WHERE queue LIKE 'fc%' ORDER BY queue;

-- the cleaner deletes expired jobs and folds the counts older than a
-- minute into a row per key (made older here)
UPDATE jobq.final_counts SET at = at - interval '2 minutes';
SELECT completed_last_minute, failed_last_minute FROM jobq.queue_stats WHERE queue = 'fc';
-- (with every table published: deleting from a table needs a replica identity)
SET client_min_messages = error;
CREATE PUBLICATION fc_everything FOR ALL TABLES;
RESET client_min_messages;
ALTER SYSTEM SET jobq.completed_retention = '1 ms';
SELECT pg_reload_conf();
DO $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	WHILE EXISTS (SELECT FROM jobq.jobs WHERE queue LIKE 'fc%' AND state = 'completed')
		  OR EXISTS (SELECT FROM jobq.final_counts WHERE queue LIKE 'fc%' AND at IS NOT NULL
					  AND at < now() - interval '1 minute')
		  OR (SELECT count(*) FROM jobq.final_counts WHERE queue LIKE 'fc%' AND at IS NULL)
			 > (SELECT count(DISTINCT (queue, kind, owner, leased_by, state))
				  FROM jobq.final_counts WHERE queue LIKE 'fc%' AND at IS NULL) LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'the cleaner did not delete and fold';
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END $$;
ALTER SYSTEM RESET jobq.completed_retention;
SELECT pg_reload_conf();
DROP PUBLICATION fc_everything;
SELECT * FROM counts_differ();
SELECT queue, completed, discarded, cancelled FROM jobq.queue_stats WHERE queue LIKE 'fc%' ORDER BY queue;

-- REASSIGN OWNED moves the jobs, and their counts, to the new owner
REASSIGN OWNED BY fc_other TO fc_user;
SELECT * FROM counts_differ();

-- counted again from scratch: the same; TRUNCATE empties the counts
DELETE FROM jobq.final_counts;
SELECT count(*) > 0 AS differ_when_lost FROM counts_differ();
SELECT jobq.recount_final_jobs();
SELECT * FROM counts_differ();
SET ROLE fc_user;
SELECT jobq.recount_final_jobs();
RESET ROLE;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT jobq.recount_final_jobs();
ROLLBACK;
-- TRUNCATE jobq.jobs empties the counts
BEGIN;
TRUNCATE jobq.jobs;
SELECT count(*) AS count_rows FROM jobq.final_counts;
ROLLBACK;
SELECT * FROM counts_differ();

-- a trigger refuses to be anything but an AFTER statement trigger
CREATE TABLE fc.t (x int);
CREATE TRIGGER t BEFORE INSERT ON fc.t FOR EACH ROW EXECUTE FUNCTION jobq._count_final_jobs();
INSERT INTO fc.t VALUES (1);

SELECT jobq.unregister('fc_ok'), jobq.unregister('fc_fail');
DELETE FROM jobq.jobs WHERE queue LIKE 'fc%';
SELECT * FROM counts_differ();
SELECT jobq.drop_queue('fc'), jobq.drop_queue('fc_held');
DROP SCHEMA fc CASCADE;
DROP FUNCTION counts_differ();
DROP ROLE fc_user, fc_other;
