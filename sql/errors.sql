--
-- errors: every misuse of the API raises an ERROR with the right SQLSTATE
-- and writes nothing.
--
-- After each failing statement, err.check(:'SQLSTATE') shows the SQLSTATE
-- of that statement's error (00000 if it did not fail) and whether jobq's
-- tables are exactly as they were (a fingerprint of every row of
-- jobq.jobs, handlers, queues and schedules, taken by err.rebase()).
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

CREATE SCHEMA err;
-- SECURITY DEFINER: a superuser sees every row, whoever calls
CREATE FUNCTION err.fingerprint() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
	SELECT md5(concat_ws('/',
		(SELECT string_agg(t::text, '|' ORDER BY t.id) FROM jobq.jobs t),
		(SELECT string_agg(t::text, '|' ORDER BY t.kind) FROM jobq.handlers t),
		(SELECT string_agg(t::text, '|' ORDER BY t.name) FROM jobq.queues t),
		(SELECT string_agg(t::text, '|' ORDER BY t.name) FROM jobq.schedules t)))
$$;
CREATE TABLE err.base (fingerprint text);
CREATE FUNCTION err.rebase() RETURNS void LANGUAGE sql AS $$
	DELETE FROM err.base;
	INSERT INTO err.base SELECT err.fingerprint();
$$;
CREATE FUNCTION err.check(sqlstate text) RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
	SELECT sqlstate || CASE WHEN (SELECT fingerprint FROM err.base) = err.fingerprint()
							THEN ', nothing written' ELSE ', SOMETHING WAS WRITTEN' END
$$;

-- handlers, good and bad
CREATE FUNCTION err.ok(args jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.secret(args jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION err.secret(jsonb) FROM PUBLIC;
CREATE FUNCTION err.no_args() RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.two_args(args jsonb, n int) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.default_arg(args jsonb, n int DEFAULT 0) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.text_arg(args text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.json_arg(args json) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.array_arg(args jsonb[]) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION err.setof(args jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION err.table_fn(args jsonb) RETURNS TABLE (n int) LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION err.trigger_fn(args jsonb) RETURNS trigger
	LANGUAGE internal AS 'suppress_redundant_updates_trigger';
CREATE FUNCTION err.cstring_fn(args jsonb) RETURNS cstring LANGUAGE internal AS 'textout';
CREATE PROCEDURE err.two_arg_proc(args jsonb, n int) LANGUAGE sql AS '';
CREATE AGGREGATE err.agg(jsonb) (sfunc = jsonb_concat, stype = jsonb);
CREATE ROLE regress_jobq_err;
GRANT USAGE ON SCHEMA err TO regress_jobq_err;

SELECT jobq.create_queue('err_paused');
SELECT jobq.pause('err_paused');
SELECT jobq.register('err_ok', 'err.ok(jsonb)', queue => 'err_paused');
SELECT err.rebase();

--
-- register
--
SELECT jobq.register(NULL, 'err.ok(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('', 'err.ok(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register(repeat('k', 129), 'err.ok(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.missing(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.no_args()');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.two_args(jsonb, int)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.default_arg(jsonb, int)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.text_arg(text)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.json_arg(json)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.array_arg(jsonb[])');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.setof(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.table_fn(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.trigger_fn(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.cstring_fn(jsonb)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.two_arg_proc(jsonb, int)');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.agg(jsonb)');
SELECT err.check(:'SQLSTATE');
-- a handler the caller may not execute
SET ROLE regress_jobq_err;
SELECT jobq.register('k', 'err.secret(jsonb)');
SELECT err.check(:'SQLSTATE');
RESET ROLE;
SELECT jobq.register('k', 'err.ok(jsonb)', queue => 'nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', queue => NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', max_attempts => 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', max_attempts => 1001);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', max_attempts => NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', priority => -1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', priority => 40000);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', priority => NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', timeout => '0');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', timeout => '-1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', timeout => NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('k', 'err.ok(jsonb)', backoff_max => '-1 s');
SELECT err.check(:'SQLSTATE');
-- a failed re-registration leaves the old one as it was
SELECT jobq.register('err_ok', 'err.two_args(jsonb, int)', queue => 'err_paused');
SELECT err.check(:'SQLSTATE');
SELECT jobq.register('err_ok', 'err.ok(jsonb)', queue => 'err_paused', priority => -5);
SELECT err.check(:'SQLSTATE');

--
-- unregister
--
SELECT jobq.unregister(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.unregister('nope');
SELECT err.check(:'SQLSTATE');
-- a kind with live jobs, in every live state
SELECT jobq.enqueue('err_ok') AS live_id \gset
SELECT err.rebase();
SELECT jobq.unregister('err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.cancel(:live_id);
SELECT jobq.enqueue('err_ok', run_at => '2100-01-01') AS live_id \gset
SELECT err.rebase();
SELECT jobq.unregister('err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.cancel(:live_id);
-- a kind used by a schedule
SELECT jobq.schedule('err_sched', '0 0 1 1 *', 'err_ok') IS NOT NULL AS scheduled;
SELECT err.rebase();
SELECT jobq.unregister('err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.unschedule('err_sched');
SELECT err.rebase();

--
-- enqueue
--
SELECT jobq.enqueue(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', priority => -1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', priority => 40000);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', max_attempts => 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', max_attempts => 1001);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', run_at => 'infinity');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', run_at => '-infinity');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', run_at => 'next tuesday');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', run_at => '2026-02-30 00:00');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', '[1, 2]');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', '"a string"');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', '42');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', 'true');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', 'null');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', '{"unclosed": 1');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', queue => 'nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', queue => '');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok', '[]', unique_key => 'u');
SELECT err.check(:'SQLSTATE');
-- an error after a good enqueue in the same statement writes nothing either
SELECT jobq.enqueue('err_ok', a) FROM (VALUES ('{}'::jsonb), ('[]')) v(a);
SELECT err.check(:'SQLSTATE');

--
-- enqueue_many
--
SELECT jobq.enqueue_many(NULL, ARRAY['{}']::jsonb[]);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('nope', ARRAY['{}']::jsonb[]);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', ARRAY['{}', '[]', '{}', '1']::jsonb[]);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', ARRAY['{}']::jsonb[], priority => -1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', ARRAY['{}']::jsonb[], max_attempts => 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', ARRAY['{}']::jsonb[], run_at => 'infinity');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue_many('err_ok', ARRAY['{}']::jsonb[], queue => 'nope');
SELECT err.check(:'SQLSTATE');

--
-- queues
--
SELECT jobq.create_queue(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('');
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('has space');
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('a/b');
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('é');
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue(repeat('q', 64));
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('ok_name', 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('default');
SELECT err.check(:'SQLSTATE');
SELECT jobq.create_queue('err_paused');
SELECT err.check(:'SQLSTATE');
-- 63 characters is the limit
SELECT jobq.create_queue(repeat('q', 63));
SELECT jobq.drop_queue(repeat('q', 63));
SELECT jobq.pause('nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.pause(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.resume('nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.set_queue_concurrency('nope', 1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.set_queue_concurrency('err_paused', 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.set_queue_concurrency('err_paused', -1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.drop_queue('nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.drop_queue(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.drop_queue('default');
SELECT err.check(:'SQLSTATE');
-- a queue that is the default queue of a kind
SELECT jobq.drop_queue('err_paused');
SELECT err.check(:'SQLSTATE');
-- a queue with live jobs
SELECT jobq.create_queue('err_busy');
SELECT jobq.pause('err_busy');
SELECT jobq.enqueue('err_ok', queue => 'err_busy') AS live_id \gset
SELECT err.rebase();
SELECT jobq.drop_queue('err_busy');
SELECT err.check(:'SQLSTATE');
SELECT jobq.cancel(:live_id);
SELECT jobq.drop_queue('err_busy');
SELECT err.rebase();

--
-- cancel and retry
--
SELECT jobq.cancel(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.cancel(-1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.cancel(9223372036854775807);
SELECT err.check(:'SQLSTATE');
SELECT jobq.retry(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.retry(-1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.retry(9223372036854775807);
SELECT err.check(:'SQLSTATE');

--
-- enqueue_trigger misuse
--
CREATE TABLE err.t (id int);
SELECT err.rebase();
CREATE TRIGGER before_row BEFORE INSERT ON err.t
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('err_ok');
INSERT INTO err.t VALUES (1);
SELECT err.check(:'SQLSTATE'), (SELECT count(*) FROM err.t) AS rows;
DROP TRIGGER before_row ON err.t;
CREATE TRIGGER after_statement AFTER INSERT ON err.t
	FOR EACH STATEMENT EXECUTE FUNCTION jobq.enqueue_trigger('err_ok');
INSERT INTO err.t VALUES (1);
SELECT err.check(:'SQLSTATE'), (SELECT count(*) FROM err.t) AS rows;
DROP TRIGGER after_statement ON err.t;
CREATE TRIGGER no_kind AFTER INSERT ON err.t
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger();
INSERT INTO err.t VALUES (1);
SELECT err.check(:'SQLSTATE'), (SELECT count(*) FROM err.t) AS rows;
DROP TRIGGER no_kind ON err.t;
CREATE TRIGGER two_kinds AFTER INSERT ON err.t
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('err_ok', 'err_ok');
INSERT INTO err.t VALUES (1);
SELECT err.check(:'SQLSTATE'), (SELECT count(*) FROM err.t) AS rows;
DROP TRIGGER two_kinds ON err.t;
CREATE TRIGGER unknown_kind AFTER INSERT ON err.t
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('nope');
INSERT INTO err.t VALUES (1);
SELECT err.check(:'SQLSTATE'), (SELECT count(*) FROM err.t) AS rows;
DROP TRIGGER unknown_kind ON err.t;
-- not as a trigger at all
SELECT jobq.enqueue_trigger();
SELECT err.check(:'SQLSTATE');

--
-- wait and wait_ready
--
SELECT jobq.wait(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait(-1, '1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.enqueue('err_ok') AS live_id \gset
SELECT err.rebase();
SELECT jobq.wait(:live_id, '-1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_ready('-1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_result(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_result(-1, '1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_any(NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_any('{}');
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_any(ARRAY[NULL::bigint]);
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_any(ARRAY[:live_id, -1], '1 s');
SELECT err.check(:'SQLSTATE');
SELECT jobq.wait_any(ARRAY[:live_id], '-1 s');
SELECT err.check(:'SQLSTATE');
-- a snapshot that never changes would never see the job finish
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT jobq.wait(:live_id, '1 s');
\set st :SQLSTATE
ROLLBACK;
SELECT err.check(:'st');
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT jobq.wait(:live_id, '1 s');
\set st :SQLSTATE
ROLLBACK;
SELECT err.check(:'st');
-- a job enqueued in the waiting transaction cannot run before it commits
-- (the message has the job id: shown with digits replaced)
BEGIN;
SELECT jobq.enqueue('err_ok') AS new_id \gset
\set VERBOSITY sqlstate
SELECT jobq.wait(:new_id, '1 s');
\set VERBOSITY default
\set st :SQLSTATE
ROLLBACK;
SELECT err.check(:'st'), regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
-- nor can a job the waiting transaction made available again
SELECT jobq.cancel(:live_id);
SELECT err.rebase();
BEGIN;
SELECT jobq.retry(:live_id);
\set VERBOSITY sqlstate
SELECT jobq.wait(:live_id, '1 s');
\set VERBOSITY default
\set st :SQLSTATE
ROLLBACK;
SELECT err.check(:'st'), regexp_replace(:'LAST_ERROR_MESSAGE', '[0-9]+', 'N') AS message;
-- but a job it made final is final
BEGIN;
SELECT jobq.enqueue('err_ok') AS new_id \gset
SELECT jobq.cancel(:new_id);
SELECT jobq.wait(:new_id, '1 s');
\set st :SQLSTATE
ROLLBACK;
SELECT err.check(:'st');

--
-- schedule and unschedule (cron syntax: see the cron test)
--
SELECT jobq.schedule(NULL, '* * * * *', 'err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('', '* * * * *', 'err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', NULL, 'err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', 'every minute', 'err_ok');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', 'nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', 'err_ok', '[]');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', 'err_ok', queue => 'nope');
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', 'err_ok', priority => -1);
SELECT err.check(:'SQLSTATE');
SELECT jobq.schedule('s', '* * * * *', 'err_ok', max_attempts => 0);
SELECT err.check(:'SQLSTATE');
SELECT jobq.unschedule('nope');
SELECT jobq.unschedule(NULL);

--
-- the internal functions are not for PUBLIC
--
SET ROLE regress_jobq_err;
SELECT jobq._hot_path_plans();
SELECT err.check(:'SQLSTATE');
SELECT jobq._enqueue('regress_jobq_err', 'err_ok', '{}', NULL, NULL, NULL, NULL, NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq._register('regress_jobq_err', 'k', 'err.ok(jsonb)', 'default', 1, '1 s', 0, NULL);
SELECT err.check(:'SQLSTATE');
SELECT jobq._cancel('regress_jobq_err', 1);
SELECT err.check(:'SQLSTATE');
SELECT jobq._wake_workers_at_commit(1);
SELECT err.check(:'SQLSTATE');
-- nor are the tables writable
INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at, owner)
VALUES ('err_ok', '{}', 'default', 0, 'available', 1, now(), 'regress_jobq_err');
SELECT err.check(:'SQLSTATE');
UPDATE jobq.queues SET paused = false;
SELECT err.check(:'SQLSTATE');
DELETE FROM jobq.handlers;
SELECT err.check(:'SQLSTATE');
RESET ROLE;

--
-- clean up
--
SELECT jobq.unregister('err_ok');
SELECT jobq.drop_queue('err_paused');
SET client_min_messages = warning;
DROP SCHEMA err CASCADE;
RESET client_min_messages;
DROP ROLE regress_jobq_err;
