--
-- api: the SQL surface of jobq, used as intended.
--
-- Queues, registration, every enqueue option, enqueue_many, cancel/retry,
-- enqueue_trigger, current_job(), wait() and the views.  Jobs that must run
-- are waited for with jobq.wait(); jobs that must stay put live in a paused
-- queue or are scheduled in the future.  No output depends on job ids or on
-- the time: ids are kept in psql variables and compared.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';	-- a hang fails the test instead of blocking it
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

CREATE SCHEMA app;
CREATE TABLE app.effects (kind text, n int);
CREATE FUNCTION app.noop(args jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION app.echo(args jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT args';
CREATE FUNCTION app.answer(args jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 42';
CREATE FUNCTION app.effect(args jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.effects VALUES ('effect', (args->>'n')::int) $$;
CREATE PROCEDURE app.proc(args jsonb) LANGUAGE sql
	AS $$ INSERT INTO app.effects VALUES ('proc', (args->>'n')::int) $$;
CREATE FUNCTION app.fail(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.effects VALUES ('fail', (args->>'n')::int);
	RAISE EXCEPTION 'boom %', args->>'n'
		USING ERRCODE = 'data_exception', DETAIL = 'the detail', HINT = 'the hint';
END $$;
-- polls a job's state with a deadline (for states that are not final)
CREATE FUNCTION app.await_state(job bigint, wanted jobq.job_state, attempt int)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
	j jobq.jobs;
BEGIN
	LOOP
		SELECT * INTO j FROM jobq.jobs WHERE id = job;
		IF (j.state = wanted AND j.attempt = await_state.attempt)
		   OR clock_timestamp() > deadline THEN
			RETURN format('%s after attempt %s', j.state, j.attempt);
		END IF;
		PERFORM pg_sleep(0.01);
	END LOOP;
END $$;
-- waits until no worker runs a job (a cancelled job may still be running)
CREATE FUNCTION app.await_not_running(job bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	WHILE clock_timestamp() < deadline LOOP
		PERFORM FROM jobq.components WHERE job_id = job;
		IF NOT FOUND THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.01);
	END LOOP;
	RETURN false;
END $$;
-- a handler that runs until the test releases advisory lock 4242
CREATE FUNCTION app.blocked(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.effects VALUES ('blocked', (args->>'n')::int);
	PERFORM pg_advisory_xact_lock_shared(4242);
END $$;
-- a handler that enqueues another job
CREATE FUNCTION app.parent(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('child', jobq.enqueue('effect', args))
$$;
-- what a handler sees of itself
CREATE FUNCTION app.whoami(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object(
		'id', j.id, 'kind', j.kind, 'state', j.state, 'attempt', j.attempt,
		'args', j.args, 'is_owner', j.owner = current_user::regrole)
	  FROM jobq.current_job() j
$$;

--
-- Queues
--
SELECT jobq.create_queue('q_api');
SELECT jobq.create_queue('q-2.x:y_Z', 3);
SELECT name, paused, concurrency, owner = current_user::regrole AS mine
  FROM jobq.queues ORDER BY name;
SELECT jobq.pause('q_api');
SELECT jobq.set_queue_concurrency('q_api', 4);
SELECT name, paused, concurrency FROM jobq.queues WHERE name = 'q_api';
SELECT jobq.resume('q_api');
SELECT jobq.set_queue_concurrency('q_api', NULL);
SELECT name, paused, concurrency FROM jobq.queues WHERE name = 'q_api';
-- pausing twice and resuming a running queue are harmless
SELECT jobq.pause('q_api');
SELECT jobq.pause('q_api');
SELECT jobq.resume('q-2.x:y_Z');
SELECT name, paused, concurrency FROM jobq.queues ORDER BY name;
SELECT jobq.drop_queue('q-2.x:y_Z');
SELECT name FROM jobq.queues ORDER BY name;

--
-- Registration
--
SELECT jobq.register('noop', 'app.noop(jsonb)');
SELECT kind, handler, queue, max_attempts, timeout, priority, backoff_max,
	   owner = current_user::regrole AS mine
  FROM jobq.handlers;
SELECT jobq.register('echo', 'app.echo(jsonb)', queue => 'q_api', max_attempts => 3,
					 timeout => '10 s', priority => 5, backoff_max => '1 min');
-- registering again replaces the handler and all defaults
SELECT jobq.register('echo', 'app.whoami(jsonb)', queue => 'q_api', max_attempts => 4,
					 timeout => '20 s', priority => 6);
SELECT kind, handler, queue, max_attempts, timeout, priority, backoff_max
  FROM jobq.handlers ORDER BY kind;
SELECT jobq.register('echo', 'app.echo(jsonb)', queue => 'q_api', max_attempts => 3,
					 timeout => '10 s', priority => 5);
SELECT kind, handler, queue, max_attempts, timeout, priority, backoff_max
  FROM jobq.handlers ORDER BY kind;
-- unregister a kind without jobs, then register it again
SELECT jobq.unregister('noop');
SELECT count(*) FROM jobq.handlers WHERE kind = 'noop';
SELECT jobq.register('noop', 'app.noop(jsonb)');
SELECT kind, handler FROM jobq.handlers WHERE kind = 'noop';
-- a registered handler cannot be dropped, not even by a cascade
CREATE SCHEMA drop_me;
CREATE FUNCTION drop_me.handler(args jsonb) RETURNS void LANGUAGE sql AS '';
SELECT jobq.register('droppable', 'drop_me.handler(jsonb)', max_attempts => 1);
DROP FUNCTION drop_me.handler(jsonb);
DROP SCHEMA drop_me CASCADE;
-- kinds follow their handler by name: renamed away, its jobs find none
ALTER FUNCTION drop_me.handler(jsonb) RENAME TO renamed;
SELECT jobq.enqueue('droppable', '{}') AS renamed_job \gset
SELECT app.await_state(:renamed_job, 'discarded', 1);
SELECT errors->0->>'message' AS message, errors->0->>'detail' AS detail
  FROM jobq.jobs WHERE id = :renamed_job;
-- renamed back, it is found again
ALTER FUNCTION drop_me.renamed(jsonb) RENAME TO handler;
SELECT jobq.enqueue('droppable', '{}') AS back_job \gset
SELECT app.await_state(:back_job, 'completed', 1);
-- once unregistered, it may go
SELECT jobq.unregister('droppable');
DROP SCHEMA drop_me CASCADE;
-- handlers of every accepted shape: jsonb, void, a scalar, a procedure
SELECT jobq.register('answer', 'app.answer(jsonb)');
SELECT jobq.register('effect', 'app.effect(jsonb)');
SELECT jobq.register('proc', 'app.proc(jsonb)');
SELECT jobq.register('whoami', 'app.whoami(jsonb)');
SELECT jobq.register('fail', 'app.fail(jsonb)', max_attempts => 1);
-- backoff_max 0: a failed attempt is retried at once
SELECT jobq.register('fail3', 'app.fail(jsonb)', max_attempts => 3, backoff_max => '0');
-- the default backoff: 1 s after attempt 1, 16 s after attempt 2
SELECT jobq.register('fail_slow', 'app.fail(jsonb)', max_attempts => 3);
SELECT jobq.register('blocked', 'app.blocked(jsonb)', max_attempts => 1);
SELECT jobq.register('blocked_1s', 'app.blocked(jsonb)', max_attempts => 1, timeout => '1 s');
SELECT jobq.register('parent', 'app.parent(jsonb)');
SELECT kind, handler, queue, max_attempts, priority, backoff_max
  FROM jobq.handlers ORDER BY kind;

--
-- Jobs that run: state, result and errors
--
SELECT jobq.enqueue('noop') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT kind, args, queue, priority, state, attempt, max_attempts, errors, result,
	   owner = current_user::regrole AS mine, unique_key,
	   scheduled_at <= attempted_at AS sched_before_attempt,
	   attempted_at <= finalized_at AS attempt_before_final,
	   created_at <= scheduled_at AS created_before_sched,
	   attempted_by IS NOT NULL AS has_worker
  FROM jobq.jobs WHERE id = :id;
-- the job's effects commit with its completion
SELECT jobq.enqueue('effect', '{"n": 1}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT * FROM app.effects ORDER BY kind, n;
-- jsonb results are stored as is, other types through to_jsonb
SELECT jobq.enqueue('answer', '{"x": 1}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, result FROM jobq.jobs WHERE id = :id;
SELECT jobq.enqueue('echo', '{"a": [1, 2], "b": {"c": null}}', queue => 'default') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, result, queue, priority, max_attempts FROM jobq.jobs WHERE id = :id;
-- a procedure handler; a procedure has no result
SELECT jobq.enqueue('proc', '{"n": 2}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, result FROM jobq.jobs WHERE id = :id;
SELECT * FROM app.effects ORDER BY kind, n;
-- inside a handler, current_job() is the job being run, as its owner sees it
SELECT jobq.enqueue('whoami', '{"hello": "world"}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, (result->>'id')::bigint = :id AS same_id,
	   result - 'id' AS result_without_id
  FROM jobq.jobs WHERE id = :id;
-- outside a handler it is NULL
SELECT (jobq.current_job()).id IS NULL AS no_current_job;
-- it finds the job through the primary key, not by scanning every job
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM jobq.jobs WHERE id = jobq._current_job_id();
RESET enable_seqscan;
-- a failing handler: its effects are rolled back and the error recorded
SELECT jobq.enqueue('fail', '{"n": 3}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, attempt, max_attempts,
	   finalized_at = (errors->-1->>'at')::timestamptz AS finalized_at_error, result,
	   jsonb_array_length(errors) AS n_errors,
	   errors->0->'attempt' AS attempt_0, errors->0->>'message' AS message,
	   errors->0->>'sqlstate' AS sqlstate, errors->0->>'detail' AS detail,
	   errors->0->>'hint' AS hint, errors->0->>'context' IS NOT NULL AS has_context,
	   (errors->0->>'at')::timestamptz BETWEEN attempted_at AND clock_timestamp() AS at_ok
  FROM jobq.jobs WHERE id = :id;
SELECT count(*) FROM app.effects WHERE kind = 'fail';
-- retried until max_attempts, one error entry per attempt, then discarded
SELECT jobq.enqueue('fail3', '{"n": 4}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT state, attempt, max_attempts,
	   jsonb_path_query_array(errors, '$[*].attempt') AS error_attempts,
	   jsonb_path_query_array(errors, '$[*].message') AS messages
  FROM jobq.jobs WHERE id = :id;
-- retry() of a discarded job grants one more attempt
SELECT jobq.retry(:id);
SELECT jobq.wait(:id, '60 s');
SELECT state, attempt, max_attempts, jsonb_array_length(errors) AS n_errors
  FROM jobq.jobs WHERE id = :id;
-- a failed attempt with attempts left: retryable, due after the backoff;
-- retry() makes it available at once
SELECT jobq.enqueue('fail_slow', '{"n": 6}') AS id \gset
SELECT app.await_state(:id, 'retryable', 2);
SELECT state, attempt, finalized_at IS NULL AS not_final,
	   scheduled_at > now() + interval '10 s' AS backoff_over_10s,
	   scheduled_at < now() + interval '20 s' AS backoff_under_20s,
	   jsonb_path_query_array(errors, '$[*].attempt') AS error_attempts
  FROM jobq.jobs WHERE id = :id;
SELECT jobq.retry(:id);
SELECT jobq.wait(:id, '60 s');
SELECT state, attempt, max_attempts, jsonb_array_length(errors) AS n_errors
  FROM jobq.jobs WHERE id = :id;
-- retry() of a completed job runs it again
SELECT jobq.enqueue('effect', '{"n": 5}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT jobq.retry(:id);
SELECT jobq.wait(:id, '60 s');
SELECT state, attempt, max_attempts FROM jobq.jobs WHERE id = :id;
SELECT n, count(*) FROM app.effects WHERE kind = 'effect' GROUP BY n ORDER BY n;
-- a job can enqueue jobs; they run as the same owner
SELECT jobq.enqueue('parent', '{"n": 7}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT (result->>'child')::bigint AS child FROM jobq.jobs WHERE id = :id \gset
SELECT jobq.wait(:child, '60 s');
SELECT kind, args, owner = current_user::regrole AS mine FROM jobq.jobs WHERE id = :child;
SELECT n FROM app.effects WHERE n = 7;
-- a running job: visible in jobq.components, cannot be retried, keeps its
-- kind registered; a cancelled running job's effects are rolled back
SELECT pg_advisory_lock(4242);
SELECT jobq.enqueue('blocked', '{"n": 8}') AS id \gset
SELECT app.await_state(:id, 'running', 1);
SELECT state, attempt, attempted_by IN (SELECT claim FROM jobq.components) AS by_worker
  FROM jobq.jobs WHERE id = :id;
SELECT state, job_id = :id AS runs_it, claim >> 32 = incarnation >> 32 AS own_claim
  FROM jobq.components WHERE job_id = :id;
SELECT running FROM jobq.queue_stats WHERE queue = 'default';
SELECT jobq.retry(:id);
SELECT jobq.unregister('blocked');
SELECT jobq.cancel(:id);
SELECT jobq.wait(:id, '60 s');
SELECT pg_advisory_unlock(4242);
SELECT app.await_not_running(:id);
SELECT state, finalized_at IS NOT NULL AS finalized, errors FROM jobq.jobs WHERE id = :id;
SELECT count(*) FROM app.effects WHERE kind = 'blocked';
-- a handler that exceeds its kind's timeout fails with a message that says so
SELECT pg_advisory_lock(4242);
SELECT jobq.enqueue('blocked_1s', '{"n": 9}') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT pg_advisory_unlock(4242);
SELECT state, attempt, errors->0->>'message' AS message, errors->0->>'sqlstate' AS sqlstate
  FROM jobq.jobs WHERE id = :id;
SELECT count(*) FROM app.effects WHERE kind = 'blocked';
-- a kind name of any length that register() accepts must be runnable
-- (in a queue of its own, so that nothing below depends on the outcome)
SELECT jobq.create_queue('q_long');
CREATE FUNCTION app.try_register(kind text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	PERFORM jobq.register(kind, 'app.noop(jsonb)', queue => 'q_long', max_attempts => 1);
	RETURN true;
EXCEPTION WHEN OTHERS THEN
	RETURN false;
END $$;
SELECT coalesce(CASE WHEN app.try_register(repeat('k', 200))
					 THEN jobq.enqueue(repeat('k', 200)) END, 0) AS long_id \gset
SELECT CASE WHEN :long_id = 0 THEN 'refused by register'
			ELSE jobq.wait(:long_id, '60 s')::text END IN
	   ('refused by register', 'completed') AS long_kind_ok;
-- wait() on a final job returns at once, with or without a timeout
SELECT jobq.wait(:id);
SELECT jobq.wait(:id, '0 s');

--
-- Jobs that stay put: defaults, options and states
--
-- a job in a paused queue is available but does not run; wait() returns
-- the state it has at the timeout
SELECT jobq.enqueue('echo', '{"n": 1}') AS id \gset
SELECT jobq.wait(:id, '10 ms');
SELECT kind, args, queue, priority, state, attempt, max_attempts
  FROM jobq.jobs WHERE id = :id;
-- wait_result returns the state, result and last error: of a job still
-- waiting at the timeout, of a completed job, of a failed one
SELECT * FROM jobq.wait_result(:id, '10 ms');
SELECT id AS held_id FROM jobq.jobs WHERE id = :id \gset
SELECT jobq.enqueue('answer') AS answered_id, jobq.enqueue('fail', '{"why": "test"}') AS failed_id \gset
SELECT * FROM jobq.wait_result(:answered_id, '60 s');
SELECT state, result, error->>'message' AS message, error->>'attempt' AS attempt
  FROM jobq.wait_result(:failed_id, '60 s');
-- wait_any returns the jobs that are final once one is, none at the timeout
SELECT id = :failed_id AS is_failed, state FROM jobq.wait_any(ARRAY[:held_id, :failed_id], '60 s');
SELECT count(*) FROM jobq.wait_any(ARRAY[:held_id], '10 ms');
-- every option overrides the handler's default
SELECT jobq.create_queue('q_api2');
SELECT jobq.pause('q_api2');
SELECT jobq.enqueue('echo', '{"n": 2}', queue => 'q_api2', priority => 7,
					max_attempts => 9) AS id \gset
SELECT kind, args, queue, priority, state, max_attempts FROM jobq.jobs WHERE id = :id;
-- 0 is a priority, not "use the default"; the bounds are accepted
SELECT jobq.enqueue('echo', priority => 0) AS p0,
	   jobq.enqueue('echo', priority => 32767) AS p32767,
	   jobq.enqueue('echo', max_attempts => 1) AS m1,
	   jobq.enqueue('echo', max_attempts => 1000) AS m1000 \gset
SELECT priority, max_attempts FROM jobq.jobs
 WHERE id IN (:p0, :p32767, :m1, :m1000) ORDER BY id;
-- NULL args are an empty object; NULL options are the defaults
SELECT jobq.enqueue('echo', NULL, NULL, NULL, NULL, NULL, NULL) AS id \gset
SELECT args, queue, priority, max_attempts, state FROM jobq.jobs WHERE id = :id;
-- run_at in the future: scheduled at exactly that time
SELECT jobq.enqueue('noop', run_at => '2100-01-01 12:00:00+00') AS id \gset
SELECT state, scheduled_at, attempt FROM jobq.jobs WHERE id = :id;
-- run_at in the past: available, keeps its scheduled_at (so it runs early)
SELECT jobq.enqueue('echo', run_at => '2000-01-01 00:00:00+00') AS id \gset
SELECT state, scheduled_at FROM jobq.jobs WHERE id = :id;
-- run_at as text, in another time zone
SELECT jobq.enqueue('echo', '{}', '2100-06-01 02:00:00+02') AS id \gset
SELECT state, scheduled_at FROM jobq.jobs WHERE id = :id;
-- a scheduled job becomes due, then runs
BEGIN;
SELECT jobq.enqueue('noop', run_at => now() + interval '1 s') AS id \gset
SELECT state FROM jobq.jobs WHERE id = :id;
COMMIT;
SELECT jobq.wait(:id, '60 s');
SELECT attempted_at >= scheduled_at AS not_early FROM jobq.jobs WHERE id = :id;

--
-- unique_key: one live job per (kind, owner, key)
--
SELECT jobq.enqueue('echo', '{"v": 1}', unique_key => 'k1') AS u1 \gset
SELECT jobq.enqueue('echo', '{"v": 2}', unique_key => 'k1') AS u2 \gset
SELECT :u1 = :u2 AS same_job;
SELECT args, unique_key FROM jobq.jobs WHERE unique_key = 'k1';
-- another key, or no key, or another kind: another job
SELECT jobq.enqueue('echo', unique_key => 'k2') AS u3 \gset
SELECT jobq.enqueue('echo') AS u4 \gset
SELECT jobq.enqueue('echo') AS u5 \gset
SELECT jobq.enqueue('noop', run_at => '2100-01-01', unique_key => 'k1') AS u6 \gset
SELECT count(DISTINCT x) AS distinct_ids FROM unnest(ARRAY[:u1, :u3, :u4, :u5, :u6]) x;
-- a scheduled job is live too
SELECT jobq.enqueue('noop', run_at => '2100-01-01', unique_key => 'k1') = :u6 AS same_job;
-- once the job is final, the key is free again
SELECT jobq.cancel(:u1);
SELECT jobq.enqueue('echo', '{"v": 3}', unique_key => 'k1') AS u7 \gset
SELECT :u7 <> :u1 AS new_job;
SELECT jobq.enqueue('echo', '{"v": 4}', unique_key => 'k1') = :u7 AS same_job;
SELECT args, state FROM jobq.jobs WHERE kind = 'echo' AND unique_key = 'k1' ORDER BY id;
-- a completed job frees its key as well
SELECT jobq.enqueue('noop', unique_key => 'done') AS u8 \gset
SELECT jobq.wait(:u8, '60 s');
SELECT jobq.enqueue('noop', unique_key => 'done') AS u9 \gset
SELECT :u9 <> :u8 AS new_job;
SELECT jobq.wait(:u9, '60 s');
-- in one transaction, the second enqueue finds the first
BEGIN;
SELECT jobq.enqueue('echo', unique_key => 'k3') AS u10 \gset
SELECT jobq.enqueue('echo', unique_key => 'k3') = :u10 AS same_job;
COMMIT;
SELECT count(*) FROM jobq.jobs WHERE unique_key = 'k3';

--
-- enqueue_many: ids in input order
--
SELECT jobq.enqueue_many('echo', ARRAY['{"n": 3}', '{"n": 1}', NULL, '{"n": 2}']::jsonb[]) AS ids \gset
SELECT cardinality(:'ids'::bigint[]) AS n_ids;
SELECT j.args, j.queue, j.priority, j.max_attempts, j.state
  FROM unnest(:'ids'::bigint[]) WITH ORDINALITY AS i(id, pos)
  JOIN jobq.jobs j USING (id) ORDER BY i.pos;
SELECT jobq.enqueue_many('echo', '{}') AS empty;
SELECT jobq.enqueue_many('echo', ARRAY['{"n": 1}', '{"n": 2}']::jsonb[],
						 run_at => '2100-01-01', queue => 'q_api2', priority => 1,
						 max_attempts => 2) AS ids \gset
SELECT j.args, j.queue, j.priority, j.max_attempts, j.state, j.scheduled_at
  FROM unnest(:'ids'::bigint[]) WITH ORDINALITY AS i(id, pos)
  JOIN jobq.jobs j USING (id) ORDER BY i.pos;
-- jobs enqueued together run
SELECT jobq.enqueue_many('effect', ARRAY['{"n": 10}', '{"n": 11}', '{"n": 12}']::jsonb[]) AS ids \gset
SELECT jobq.wait(id, '60 s') FROM unnest(:'ids'::bigint[]) id;
SELECT n FROM app.effects WHERE n >= 10 ORDER BY n;

--
-- cancel and retry
--
SELECT jobq.enqueue('echo', '{"c": 1}') AS id \gset
SELECT jobq.cancel(:id);
SELECT state, finalized_at IS NOT NULL AS finalized FROM jobq.jobs WHERE id = :id;
-- cancelling a final job changes nothing
SELECT jobq.cancel(:id);
-- retry of a final job: available now, not final
SELECT jobq.retry(:id);
SELECT state, finalized_at IS NULL AS not_final, scheduled_at <= now() AS due
  FROM jobq.jobs WHERE id = :id;
-- retry of an available job: false, nothing changes
SELECT jobq.retry(:id);
SELECT state FROM jobq.jobs WHERE id = :id;
-- cancel of an available job
SELECT jobq.cancel(:id);
-- retry of a scheduled job makes it available now
SELECT jobq.enqueue('echo', run_at => '2100-01-01') AS id \gset
SELECT jobq.retry(:id);
SELECT state, scheduled_at <= now() AS due FROM jobq.jobs WHERE id = :id;
-- cancel of a scheduled job
SELECT jobq.enqueue('noop', run_at => '2100-01-01') AS id \gset
SELECT jobq.cancel(:id);
SELECT state FROM jobq.jobs WHERE id = :id;
SELECT jobq.wait(:id);
-- cancel of a completed job: false
SELECT jobq.enqueue('noop') AS id \gset
SELECT jobq.wait(:id, '60 s');
SELECT jobq.cancel(:id);
SELECT state FROM jobq.jobs WHERE id = :id;
-- a cancelled job in a resumed queue stays cancelled
SELECT jobq.enqueue('effect', '{"n": 20}', queue => 'q_api2') AS c1 \gset
SELECT jobq.enqueue('effect', '{"n": 21}', queue => 'q_api2') AS c2 \gset
SELECT jobq.cancel(:c1);
SELECT jobq.resume('q_api2');
SELECT jobq.wait(:c2, '60 s');
SELECT jobq.wait(:c1, '60 s');
SELECT n FROM app.effects WHERE n IN (20, 21);
-- and so does the job waiting there since the top (priority 7)
SELECT count(*) FILTER (WHERE jobq.wait(id, '60 s') <> 'completed') AS not_completed
  FROM jobq.jobs WHERE queue = 'q_api2' AND priority = 7;
SELECT jobq.pause('q_api2');
-- enqueueing into a paused queue, then resuming it, runs the job
SELECT jobq.enqueue('effect', '{"n": 22}', queue => 'q_api2') AS id \gset
SELECT state FROM jobq.jobs WHERE id = :id;
SELECT jobq.resume('q_api2');
SELECT jobq.wait(:id, '60 s');
SELECT jobq.pause('q_api2');
-- a cancelled job's kind has no live job left: it can be unregistered
SELECT jobq.register('temp', 'app.noop(jsonb)', queue => 'q_api2');
SELECT jobq.enqueue('temp') AS id \gset
SELECT jobq.cancel(:id);
SELECT jobq.unregister('temp');

--
-- enqueue_trigger: one job per row, args {op, schema, table, old, new}
--
SELECT jobq.register('thing_changed', 'app.echo(jsonb)', queue => 'q_api2');
CREATE TABLE app.things (id int PRIMARY KEY, name text);
CREATE TRIGGER things_jobs AFTER INSERT OR UPDATE OR DELETE ON app.things
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('thing_changed');
INSERT INTO app.things VALUES (1, 'one'), (2, 'two');
UPDATE app.things SET name = 'uno' WHERE id = 1;
DELETE FROM app.things WHERE id = 2;
-- a rolled-back change enqueues nothing
BEGIN;
INSERT INTO app.things VALUES (3, 'three');
ROLLBACK;
SELECT args, queue, state, owner = current_user::regrole AS mine
  FROM jobq.jobs WHERE kind = 'thing_changed' ORDER BY id;
-- the trigger can be limited to some operations and columns
DROP TRIGGER things_jobs ON app.things;
CREATE TRIGGER things_ins AFTER INSERT ON app.things
	FOR EACH ROW WHEN (NEW.id > 10) EXECUTE FUNCTION jobq.enqueue_trigger('thing_changed');
INSERT INTO app.things VALUES (4, 'four'), (11, 'eleven');
SELECT args->'new' FROM jobq.jobs WHERE kind = 'thing_changed' ORDER BY id DESC LIMIT 1;
SELECT count(*) FROM jobq.jobs WHERE kind = 'thing_changed';

--
-- wait()
--
-- without a timeout, on a job that becomes final
SELECT jobq.enqueue('noop') AS id \gset
SELECT jobq.wait(:id);
-- in a READ COMMITTED transaction, on a committed job
BEGIN;
SELECT jobq.enqueue('noop') AS id \gset
COMMIT;
BEGIN;
SELECT jobq.wait(:id, '60 s');
COMMIT;

--
-- Views
--
SELECT column_name, data_type FROM information_schema.columns
 WHERE table_schema = 'jobq' AND table_name = 'queue_stats' ORDER BY ordinal_position;
SELECT queue, paused, concurrency, scheduled, available, running, retryable,
	   completed, cancelled, discarded, lag >= '0' AS lag_ok
  FROM jobq.queue_stats WHERE queue IN ('q_api', 'q_api2') ORDER BY queue;
-- the counts are the jobs' states
SELECT (SELECT count(*) FROM jobq.jobs WHERE queue = 'q_api' AND state = 'available') =
	   (SELECT available FROM jobq.queue_stats WHERE queue = 'q_api') AS available_matches;
SELECT lag > '0' AS has_lag FROM jobq.queue_stats WHERE queue = 'q_api';
SELECT completed > 0 AS some_completed, discarded AS discarded, completed_last_minute > 0 AS recent,
	   failed_last_minute > 0 AS recent_failures
  FROM jobq.queue_stats WHERE queue = 'default';
-- a queue without jobs shows zeros
SELECT jobq.create_queue('q_empty', 1);
SELECT * FROM jobq.queue_stats WHERE queue = 'q_empty';
SELECT jobq.drop_queue('q_empty');
SELECT column_name, data_type FROM information_schema.columns
 WHERE table_schema = 'jobq' AND table_name = 'components' ORDER BY ordinal_position;
SELECT database IS NULL AS no_database, component, pid IS NOT NULL AS has_pid, state,
	   incarnation IS NULL AS no_incarnation, jobs_done IS NULL AS no_counters
  FROM jobq.components WHERE component = 'launcher';
SELECT regexp_replace(component, '[0-9]+$', 'N') AS component, count(*),
	   bool_and(pid IS NOT NULL) AS have_pids,
	   bool_and(state IN ('idle', 'busy', 'running')) AS up,
	   bool_and(incarnation IS NOT NULL) AS have_incarnations,
	   bool_and(jobs_done IS NOT NULL AND jobs_failed IS NOT NULL) AS have_counters,
	   bool_and(started_at <= now()) AS started
  FROM jobq.components WHERE database = current_database()
 GROUP BY 1 ORDER BY 1;
SELECT sum(jobs_done) > 0 AS did_jobs, sum(jobs_failed) > 0 AS failed_jobs
  FROM jobq.components WHERE database = current_database() AND component LIKE 'worker%';
-- every job's attempted_by is a claim of a worker: its incarnation plus a count
SELECT count(*) AS unknown_workers FROM jobq.jobs j
 WHERE attempted_by IS NOT NULL AND state = 'completed'
   AND attempted_by >> 32 NOT IN (SELECT incarnation >> 32 FROM jobq.components
								   WHERE incarnation IS NOT NULL);
SELECT count(*) AS uncounted_claims FROM jobq.components
 WHERE incarnation & x'ffffffff'::bigint <> 0;

--
-- Clean up: what is left is in paused queues or in the future
--
SELECT count(*) AS not_final FROM jobq.jobs
 WHERE state NOT IN ('completed', 'cancelled', 'discarded');
SELECT count(*) FILTER (WHERE jobq.cancel(id)) AS cancelled FROM jobq.jobs
 WHERE state NOT IN ('completed', 'cancelled', 'discarded');
SELECT jobq.unregister('thing_changed');
SELECT jobq.drop_queue('q_api2');
SELECT state, count(*) FROM jobq.jobs WHERE queue <> 'q_long' GROUP BY state ORDER BY state;
