--
-- security: jobs run as the role that enqueued them; no role can read or
-- change another role's jobs, kinds, queues or schedules, nor enqueue a
-- job that runs as another role.
--
-- Errors whose message holds a job id are shown with VERBOSITY sqlstate,
-- then as their SQLSTATE and message with digits replaced by N.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

CREATE ROLE regress_jobq_alice;
CREATE ROLE regress_jobq_bob;
CREATE ROLE regress_jobq_carol IN ROLE regress_jobq_alice;			-- inherits alice
CREATE ROLE regress_jobq_dave NOINHERIT IN ROLE regress_jobq_alice;	-- may only SET ROLE alice
CREATE ROLE regress_jobq_gone;

CREATE SCHEMA sec;
GRANT USAGE ON SCHEMA sec TO PUBLIC;
CREATE TABLE sec.log (job_id bigint, who name);
GRANT SELECT, INSERT ON sec.log TO PUBLIC;
CREATE TABLE sec.secret (s text);
INSERT INTO sec.secret VALUES ('only for superusers');
-- who runs the job, and which job it is
CREATE FUNCTION sec.whoami(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	INSERT INTO sec.log SELECT (jobq.current_job()).id, current_user;
	SELECT jsonb_build_object('current_user', current_user,
							  'owner', (jobq.current_job()).owner::text,
							  'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
$$;
CREATE FUNCTION sec.read_secret(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT to_jsonb(s) FROM sec.secret
$$;
CREATE FUNCTION sec.run_sql(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE args->>'sql';
END $$;
-- executable by alice only
CREATE FUNCTION sec.private(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT to_jsonb(current_user)
$$;
REVOKE EXECUTE ON FUNCTION sec.private(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sec.private(jsonb) TO regress_jobq_alice;
SELECT current_user AS superuser \gset

--
-- alice: a queue, kinds, jobs; they run as alice
--
SET ROLE regress_jobq_alice;
SELECT jobq.create_queue('alice_q');
SELECT jobq.pause('alice_q');
SELECT jobq.register('sec_whoami', 'sec.whoami(jsonb)');
SELECT jobq.register('sec_read_secret', 'sec.read_secret(jsonb)', max_attempts => 1);
SELECT jobq.register('sec_run_sql', 'sec.run_sql(jsonb)', max_attempts => 1);
SELECT jobq.register('sec_private', 'sec.private(jsonb)', max_attempts => 1);
SELECT kind, owner FROM jobq.handlers WHERE kind LIKE 'sec\_%' ORDER BY kind;
SELECT name, owner FROM jobq.queues WHERE name = 'alice_q';
SELECT jobq.enqueue('sec_whoami') AS alice_job \gset
SELECT jobq.wait(:alice_job, '60 s');
SELECT owner, state, result FROM jobq.jobs WHERE id = :alice_job;
-- a job has its owner's privileges, not the worker's
SELECT jobq.enqueue('sec_read_secret') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, result, errors->0->>'message' AS message, errors->0->>'sqlstate' AS sqlstate
  FROM jobq.jobs WHERE id = :id;
-- and cannot become the worker's superuser (the handler runs under a local
-- user id change, as a security-restricted operation)
SELECT jobq.enqueue_many('sec_run_sql', ARRAY[
	jsonb_build_object('sql', format('SET ROLE %I', :'superuser')),
	'{"sql": "SET ROLE regress_jobq_alice"}',
	'{"sql": "RESET ROLE"}',
	jsonb_build_object('sql', format('SET SESSION AUTHORIZATION %I', :'superuser')),
	'{"sql": "RESET SESSION AUTHORIZATION"}',
	'{"sql": "SELECT pg_read_file(''postgresql.conf'')"}',
	'{"sql": "CREATE TEMP TABLE t (i int)"}',
	'{"sql": "SELECT 1"}']) AS ids \gset
SELECT jobq.wait(id, '60 s') FROM unnest(:'ids'::bigint[]) id;
SELECT state, errors->0->>'message' AS message, errors->0->>'sqlstate' AS sqlstate
  FROM unnest(:'ids'::bigint[]) WITH ORDINALITY AS i(id, pos) JOIN jobq.jobs USING (id)
 ORDER BY pos;
-- a handler only alice may execute runs for alice
SELECT jobq.enqueue('sec_private') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, result FROM jobq.jobs WHERE id = :id;
-- jobs that stay put, for the other roles to try
SELECT jobq.enqueue('sec_whoami', '{"n": 1}', queue => 'alice_q', unique_key => 'k') AS alice_waiting \gset
SELECT jobq.enqueue('sec_whoami', '{"n": 2}', run_at => '2100-01-01') AS alice_scheduled \gset
SELECT jobq.schedule('alice_sched', '0 0 1 1 *', 'sec_whoami') IS NOT NULL AS scheduled;
SELECT count(*) AS my_jobs FROM jobq.jobs;
RESET ROLE;

--
-- kinds and queues are alice's: others use them only once granted.  A kind
-- needs its owner's grant and, because alice's handler would run as the
-- enqueuer, also a grant by a role with the enqueuer's privileges; the
-- superuser's grant is both.
--
SET ROLE regress_jobq_bob;
SELECT jobq.enqueue('sec_whoami');
SELECT jobq.enqueue('sec_whoami', queue => 'alice_q');
SELECT jobq.grant('kind', 'sec_whoami', 'regress_jobq_bob');
RESET ROLE;
SET ROLE regress_jobq_alice;
SELECT jobq.grant('kind', 'sec_whoami', 'regress_jobq_bob');
RESET ROLE;
SET ROLE regress_jobq_bob;
SELECT jobq.enqueue('sec_whoami');
RESET ROLE;
SELECT jobq.grant('kind', kind, 'public') FROM jobq.handlers
 WHERE kind IN ('sec_whoami', 'sec_read_secret', 'sec_private') ORDER BY kind;
SELECT jobq.grant('queue', 'alice_q', 'public');
SELECT object_type, object_name, grantee::regrole,
	   granted_by = (SELECT oid FROM pg_roles WHERE rolname = current_user) AS by_superuser
  FROM jobq.grants
 WHERE object_name LIKE 'sec\_%' OR object_name = 'alice_q' ORDER BY 1, 2, 3::text;

--
-- bob sees none of alice's jobs and can change none of them
--
SET ROLE regress_jobq_bob;
SELECT count(*) AS visible_jobs FROM jobq.jobs;
SELECT count(*) AS visible_jobs FROM jobq.jobs WHERE id IN (:alice_job, :alice_waiting);
SELECT count(*) AS visible_schedules FROM jobq.schedules;
\set VERBOSITY sqlstate
SELECT jobq.cancel(:alice_waiting);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
\set VERBOSITY sqlstate
SELECT jobq.cancel(:alice_job);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
\set VERBOSITY sqlstate
SELECT jobq.retry(:alice_job);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
\set VERBOSITY sqlstate
SELECT jobq.retry(:alice_scheduled);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
\set VERBOSITY sqlstate
SELECT jobq.wait(:alice_job, '1 s');
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
-- alice's kinds: bob may not re-register or unregister them
SELECT jobq.register('sec_whoami', 'sec.read_secret(jsonb)');
SELECT jobq.register('sec_whoami', 'sec.whoami(jsonb)', priority => 3);
SELECT jobq.unregister('sec_whoami');
-- alice's queue: bob may not pause, resume, limit or drop it
SELECT jobq.pause('alice_q');
SELECT jobq.resume('alice_q');
SELECT jobq.set_queue_concurrency('alice_q', 1);
SELECT jobq.drop_queue('alice_q');
-- alice's schedule: bob may not replace it, and removes nothing
SELECT jobq.schedule('alice_sched', '* * * * *', 'sec_whoami');
SELECT jobq.unschedule('alice_sched');
-- bob may not register a handler he cannot execute
SELECT jobq.register('bob_private', 'sec.private(jsonb)');
-- bob cannot choose the owner of a job
SELECT jobq.enqueue('sec_whoami', owner => 'regress_jobq_alice');
SELECT jobq._enqueue('regress_jobq_alice', 'sec_whoami', '{}', NULL, NULL, NULL, NULL, NULL);
SELECT jobq._hot_path_plans();
INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at, owner)
VALUES ('sec_whoami', '{}', 'default', 0, 'available', 1, now(), 'regress_jobq_alice');
UPDATE jobq.jobs SET owner = 'regress_jobq_bob';
RESET ROLE;
-- all of alice's things are as they were
SELECT kind, handler, priority, owner FROM jobq.handlers WHERE kind LIKE 'sec\_%' ORDER BY kind;
SELECT name, paused, concurrency, owner FROM jobq.queues WHERE name = 'alice_q';
SELECT name, cron, owner FROM jobq.schedules;
SELECT state, owner FROM jobq.jobs WHERE id IN (:alice_waiting, :alice_scheduled) ORDER BY id;

--
-- bob's own jobs: the kinds are shared, the jobs are his and run as him
--
SET ROLE regress_jobq_bob;
SELECT jobq.enqueue('sec_whoami') AS bob_job \gset
SELECT jobq.wait(:bob_job, '60 s');
SELECT owner, state, result FROM jobq.jobs WHERE id = :bob_job;
-- the same unique key as alice's: another job, bob's
SELECT jobq.enqueue('sec_whoami', '{"n": 3}', queue => 'alice_q', unique_key => 'k') AS bob_waiting \gset
SELECT :bob_waiting <> :alice_waiting AS not_alices;
SELECT owner, args FROM jobq.jobs WHERE unique_key = 'k';
-- alice's private handler, enqueued by bob, runs as bob, who may not run it
SELECT jobq.enqueue('sec_private') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT owner, state, result, errors->0->>'message' AS message, errors->0->>'sqlstate' AS sqlstate
  FROM jobq.jobs WHERE id = :id;
SELECT count(*) AS visible_jobs FROM jobq.jobs;
RESET ROLE;

--
-- alice sees bob's jobs of her kinds and in her queue, and may cancel them,
-- but not retry them: a retry runs the job as bob again
--
SET ROLE regress_jobq_alice;
SELECT count(*) AS visible_bob_jobs FROM jobq.jobs WHERE owner = 'regress_jobq_bob'::regrole;
\set VERBOSITY sqlstate
SELECT jobq.retry(:bob_job);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
SELECT jobq.cancel(:bob_waiting);
RESET ROLE;
-- a superuser sees everyone's
SELECT owner, count(*) FROM jobq.jobs
 WHERE owner IN ('regress_jobq_alice'::regrole, 'regress_jobq_bob'::regrole)
 GROUP BY owner ORDER BY owner::text;

--
-- members: carol (inherits alice) acts for alice; dave (no inherit) does not
--
SET ROLE regress_jobq_carol;
SELECT count(*) AS visible_alice_jobs FROM jobq.jobs WHERE owner = 'regress_jobq_alice'::regrole;
SELECT jobq.retry(:alice_waiting);
SELECT jobq.cancel(:alice_scheduled);
SELECT jobq.set_queue_concurrency('alice_q', 2);
SELECT jobq.set_queue_concurrency('alice_q', NULL);
SELECT jobq.enqueue('sec_whoami', '{"n": 4}', run_at => '2100-01-01') AS carol_job \gset
SELECT owner FROM jobq.jobs WHERE id = :carol_job;
RESET ROLE;
SET ROLE regress_jobq_dave;
SELECT count(*) AS visible_alice_jobs FROM jobq.jobs WHERE owner = 'regress_jobq_alice'::regrole;
SELECT jobq.pause('alice_q');
\set VERBOSITY sqlstate
SELECT jobq.cancel(:alice_waiting);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
RESET ROLE;
-- membership goes one way: alice sees carol's job only as the owner of
-- its kind, and may not retry it
SET ROLE regress_jobq_alice;
SELECT count(*) AS visible_carol_jobs FROM jobq.jobs WHERE id = :carol_job;
\set VERBOSITY sqlstate
SELECT jobq.retry(:carol_job);
\set VERBOSITY default
SELECT :'SQLSTATE' AS sqlstate, regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
RESET ROLE;

--
-- SECURITY DEFINER: the job belongs to the definer, whoever calls
--
CREATE FUNCTION sec.enqueue_for_alice() RETURNS bigint LANGUAGE sql SECURITY DEFINER
	AS $$ SELECT jobq.enqueue('sec_whoami', '{"via": "definer"}') $$;
ALTER FUNCTION sec.enqueue_for_alice() OWNER TO regress_jobq_alice;
SET ROLE regress_jobq_bob;
SELECT sec.enqueue_for_alice() AS definer_job \gset
SELECT count(*) AS visible_to_bob FROM jobq.jobs WHERE id = :definer_job;
RESET ROLE;
SET ROLE regress_jobq_alice;
SELECT jobq.wait(:definer_job, '60 s');
SELECT owner, args, result FROM jobq.jobs WHERE id = :definer_job;
RESET ROLE;

--
-- enqueue_trigger: the job belongs to the role whose statement fired it
--
CREATE TABLE sec.things (id int);
GRANT INSERT ON sec.things TO regress_jobq_alice, regress_jobq_bob;
CREATE TRIGGER things_jobs AFTER INSERT ON sec.things
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('sec_whoami');
ALTER TABLE sec.things OWNER TO regress_jobq_bob;
SET ROLE regress_jobq_alice;
INSERT INTO sec.things VALUES (1);
RESET ROLE;
SET ROLE regress_jobq_bob;
INSERT INTO sec.things VALUES (2);
RESET ROLE;
SELECT owner, args->'new' AS new FROM jobq.jobs WHERE args->>'schema' = 'sec' ORDER BY id;
SELECT jobq.wait(id, '60 s') FROM jobq.jobs WHERE args->>'schema' = 'sec' ORDER BY id;
SELECT result FROM jobq.jobs WHERE args->>'schema' = 'sec' ORDER BY id;

--
-- privileges are checked when the job runs, not only when it is enqueued
--
SET ROLE regress_jobq_alice;
SELECT jobq.enqueue('sec_private', queue => 'alice_q') AS id \gset
RESET ROLE;
REVOKE EXECUTE ON FUNCTION sec.private(jsonb) FROM regress_jobq_alice;
SET ROLE regress_jobq_alice;
SELECT jobq.resume('alice_q');
SELECT jobq.wait(:id, '60 s');
SELECT state, errors->0->>'message' AS message, errors->0->>'sqlstate' AS sqlstate
  FROM jobq.jobs WHERE id = :id;
SELECT jobq.pause('alice_q');
RESET ROLE;
-- a role with live jobs cannot be dropped; DROP OWNED cancels them, then it
-- can, and its final jobs go with it
SET ROLE regress_jobq_gone;
SELECT jobq.enqueue('sec_read_secret', queue => 'alice_q') AS gone_job \gset
RESET ROLE;
DROP ROLE regress_jobq_gone;
DROP OWNED BY regress_jobq_gone;
SELECT state FROM jobq.jobs WHERE id = :gone_job;
DROP ROLE regress_jobq_gone;
SELECT count(*) AS gone_jobs FROM jobq.jobs WHERE id = :gone_job;
SELECT count(*) FROM sec.log WHERE job_id = :gone_job;

-- every job ran as its owner
SELECT DISTINCT l.who::text = j.owner::text AS ran_as_owner
  FROM sec.log l JOIN jobq.jobs j ON j.id = l.job_id;

--
-- clean up: nothing of these roles may stay behind
--
SELECT jobq.unschedule('alice_sched');
SELECT count(*) FILTER (WHERE jobq.cancel(id)) >= 0 AS cancelled
  FROM jobq.jobs WHERE state NOT IN ('completed', 'cancelled', 'discarded');
SELECT jobq.unregister(kind) FROM jobq.handlers
 WHERE kind IN ('sec_whoami', 'sec_read_secret', 'sec_run_sql', 'sec_private') ORDER BY kind;
SELECT jobq.drop_queue('alice_q');
DELETE FROM jobq.jobs WHERE owner::text LIKE 'regress_jobq_%'
   OR owner::oid NOT IN (SELECT oid FROM pg_roles);
SELECT count(*) AS grants_left FROM jobq.grants
 WHERE object_name LIKE 'sec\_%' OR object_name = 'alice_q';
SET client_min_messages = warning;
DROP SCHEMA sec CASCADE;
RESET client_min_messages;
DROP ROLE regress_jobq_alice, regress_jobq_bob, regress_jobq_carol, regress_jobq_dave;
SELECT count(*) AS dangling FROM jobq.jobs WHERE owner::text ~ '^[0-9]+$';
