--
-- plans: the access path of every statement on jobq's hot path holds
-- whatever the statistics of jobq.jobs say.
--
-- jobq's processes keep their statements prepared; PostgreSQL plans them
-- again after every ANALYZE of jobq.jobs and then runs a generic plan.
-- jobq._hot_path_plans() shows those generic plans (src/plans.c).  The
-- plans under the statistics of an empty table are shown in full; then,
-- for each realistic distribution, ANALYZEd, the statements whose plan
-- differs from them: there must be none.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET statement_timeout = '300 s';
SELECT jobq.wait_ready('60 s');

-- rows written here must keep the statistics they were analyzed with
ALTER TABLE jobq.jobs SET (autovacuum_enabled = off);
SELECT jobq.create_queue('plans');
SELECT jobq.pause('plans');

CREATE FUNCTION plans_fill(state jobq.job_state, n int) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts,
						   scheduled_at, owner, attempt, attempted_at,
						   attempted_by, finalized_at)
	SELECT 'plans', jsonb_build_object('i', i), 'plans', (i % 3)::smallint,
		   state, 25, now() - (i % 10000) * interval '1 s', current_user::regrole,
		   CASE WHEN state IN ('running', 'completed') THEN 1 ELSE 0 END,
		   CASE WHEN state IN ('running', 'completed') THEN now() END,
		   CASE WHEN state = 'running' THEN (i % 16) + 4294967296 END,
		   CASE WHEN state = 'completed' THEN now() - i * interval '1 ms' END
	  FROM generate_series(1, n) i
$$;

-- How a view reaches jobq.jobs, as the current role: the indexes it scans,
-- and whether it reads the whole table.
CREATE FUNCTION plans_reads(view regclass) RETURNS TABLE (reads text)
LANGUAGE plpgsql AS $$
DECLARE
	line text;
BEGIN
	FOR line IN EXECUTE format('EXPLAIN (COSTS OFF) SELECT * FROM %s', view) LOOP
		IF line ~ 'Seq Scan on jobs ' THEN
			reads := 'every job';
			RETURN NEXT;
		ELSIF line ~ 'Scan (using|on) jobs_' THEN
			reads := substring(line from 'Scan (?:using|on) (jobs_[a-z]+)');
			RETURN NEXT;
		END IF;
	END LOOP;
END $$;
CREATE ROLE plans_reader;

CREATE TEMP TABLE plans_base AS SELECT * FROM jobq._hot_path_plans();
CREATE FUNCTION plans_changed() RETURNS TABLE (statement text, plan text)
LANGUAGE sql AS $$
	SELECT p.statement, p.plan FROM jobq._hot_path_plans() p
	EXCEPT SELECT b.statement, b.plan FROM plans_base b
$$;

-- an empty table, analyzed: the plans
TRUNCATE jobq.jobs;
ANALYZE jobq.jobs;
TRUNCATE plans_base;
INSERT INTO plans_base SELECT * FROM jobq._hot_path_plans();
SELECT statement, plan FROM plans_base;

-- a backlog of a million available jobs
SELECT plans_fill('available', 1000000);
ANALYZE jobq.jobs;
SELECT * FROM plans_changed();

-- a drained queue with a million completed jobs retained
TRUNCATE jobq.jobs;
SELECT plans_fill('completed', 1000000);
ANALYZE jobq.jobs;
SELECT * FROM plans_changed();
-- queue_stats counts the live jobs through their indexes and reads the
-- final ones' counts; leases reads the running jobs: as a superuser, and as
-- a role under the jobs' policy
SELECT DISTINCT reads FROM plans_reads('jobq.queue_stats') ORDER BY reads;
SET ROLE plans_reader;
SELECT DISTINCT reads FROM plans_reads('jobq.queue_stats') ORDER BY reads;
SELECT reads FROM plans_reads('jobq.leases');
RESET ROLE;
SELECT queue, completed, available FROM jobq.queue_stats WHERE queue = 'plans';

-- ten thousand running jobs and that history
SELECT plans_fill('running', 10000);
ANALYZE jobq.jobs;
SELECT * FROM plans_changed();

-- all of it at once
SELECT plans_fill('available', 1000000);
ANALYZE jobq.jobs;
SELECT * FROM plans_changed();
SELECT DISTINCT reads FROM plans_reads('jobq.queue_stats') ORDER BY reads;
SET ROLE plans_reader;
SELECT DISTINCT reads FROM plans_reads('jobq.queue_stats') ORDER BY reads;
RESET ROLE;

TRUNCATE jobq.jobs;
ALTER TABLE jobq.jobs RESET (autovacuum_enabled);
DROP FUNCTION plans_changed();
DROP FUNCTION plans_reads(regclass);
DROP ROLE plans_reader;
DROP FUNCTION plans_fill(jobq.job_state, int);
SELECT jobq.drop_queue('plans');
