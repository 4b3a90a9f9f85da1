--
-- external: the SQL surface of external workers, used by one session.
--
-- register_external, claim (and what it refuses), complete / fail /
-- give_up / snooze / heartbeat with a lease token and what a stale token
-- gets, the 'work' grant, jobq.leases, and that jobq's own workers leave
-- external jobs alone.  Lease expiry and concurrent claims need processes
-- and time: test/t/110_external_workers.pl.  No output depends on ids,
-- tokens or the time: they are kept in psql variables and compared.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never
SELECT jobq.wait_ready('60 s');

-- an error's SQLSTATE, checked right after it (psql's :LAST_ERROR_SQLSTATE)
CREATE FUNCTION pg_temp.sqlstate_is(got text, wanted text) RETURNS text LANGUAGE sql
	AS $$ SELECT CASE WHEN got = wanted THEN 'sqlstate ' || got ELSE 'got ' || got || ', wanted ' || wanted END $$;

CREATE SCHEMA ext;
CREATE TABLE ext.sent (job_id bigint PRIMARY KEY);
CREATE FUNCTION ext.inside(args jsonb) RETURNS void LANGUAGE sql AS '';
SELECT jobq.create_queue('ext_q');

-- registering
SELECT jobq.register_external('mail', queue => 'ext_q', max_attempts => 2, lease => '1 hour');
SELECT kind, handler, queue, max_attempts, lease, timeout FROM jobq.handlers WHERE kind = 'mail';
SELECT jobq.register_external('bad', lease => '0');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT jobq.register_external('bad', lease => NULL);
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22004');
SELECT jobq.register_external('bad', queue => 'nope');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42704');
SELECT jobq.register_external('', lease => '1 s');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22004');
SELECT count(*) FROM jobq.handlers WHERE kind IN ('bad', '');

-- an in-server kind on the same queue: jobq's workers run its jobs, not the external ones
SELECT jobq.register('inside', 'ext.inside(jsonb)', queue => 'ext_q');
SELECT jobq.enqueue('mail', '{"to": "a"}') AS a \gset
SELECT jobq.enqueue('mail', '{"to": "b"}', priority => 1) AS b \gset
SELECT jobq.enqueue('inside', '{}') AS inside \gset
SELECT jobq.wait(:inside, '60 s');
SELECT state, external FROM jobq.jobs WHERE id IN (:a, :b) ORDER BY id;

-- claiming: in run order, attempt counted, a lease
SELECT id = :a AS first, kind, args, attempt, max_attempts, lease_token > 0 AS token,
	   lease_until > now() + interval '59 minutes' AS leased
  FROM jobq.claim('ext_q');
SELECT id AS a_id, attempted_by AS a_tok FROM jobq.jobs WHERE id = :a \gset
SELECT id = :a AS a, kind, queue, leased_by = current_user::regrole AS by_me, worker, attempt,
	   expired, heartbeat_at IS NULL AS no_heartbeat
  FROM jobq.leases;
-- the other one (only one left)
SELECT id = :b AS b, attempt FROM jobq.claim('ext_q', max_jobs => 5, worker => 'w1');
SELECT attempted_by AS b_tok FROM jobq.jobs WHERE id = :b \gset
SELECT count(*) FROM jobq.claim('ext_q', max_jobs => 5);
SELECT count(*) FROM jobq.claim('ext_q', wait => '10 ms');
SELECT worker FROM jobq.leases WHERE id = :b;

-- what claim refuses
SELECT * FROM jobq.claim(NULL);
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22004');
SELECT * FROM jobq.claim('nope');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42704');
SELECT * FROM jobq.claim('ext_q', max_jobs => 0);
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT * FROM jobq.claim('ext_q', wait => '-1 s');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT * FROM jobq.claim('ext_q', worker => repeat('w', 129));
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22001');
SELECT * FROM jobq.claim('ext_q', kinds => '{inside}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42809');
SELECT * FROM jobq.claim('ext_q', kinds => '{nope}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42704');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM jobq.claim('ext_q', wait => '1 s');
ROLLBACK;
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '0A000');

-- heartbeat: a new lease and progress
SELECT jobq.heartbeat(:a_id, :a_tok, '2 hours', '{"done": 1}') > now() + interval '119 minutes' AS extended;
SELECT progress, heartbeat_at IS NOT NULL AS beat FROM jobq.leases WHERE id = :a_id;
SELECT jobq.heartbeat(:a_id, :a_tok, '0') AS x;
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');

-- complete in the caller's transaction: rolled back, the job stays held
BEGIN;
INSERT INTO ext.sent VALUES (:a_id);
SELECT jobq.complete(:a_id, :a_tok, '{"ok": true}');
ROLLBACK;
SELECT state, (SELECT count(*) FROM ext.sent) AS sent FROM jobq.jobs WHERE id = :a_id;
BEGIN;
INSERT INTO ext.sent VALUES (:a_id);
SELECT jobq.complete(:a_id, :a_tok, '{"ok": true}');
COMMIT;
SELECT state, result, (SELECT count(*) FROM ext.sent) AS sent FROM jobq.jobs WHERE id = :a_id;
-- a second complete: the token no longer holds it (ERROR 55000; the
-- message names the job and the token, so only the SQLSTATE is shown)
\set VERBOSITY sqlstate
SELECT jobq.complete(:a_id, :a_tok);
\set VERBOSITY default
-- wrong token, unknown job, a job of an in-server kind, NULLs
\set VERBOSITY sqlstate
SELECT jobq.complete(:b, :b_tok + 1);
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT jobq.complete(-1, 1);
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT jobq.complete(:inside, 1);
\set VERBOSITY default
SELECT jobq.complete(NULL, 1);
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22004');

-- fail: retried after retry_in, the error recorded; then out of attempts
SELECT jobq.fail(:b, :b_tok, 'smtp down', retry_in => '0');
SELECT state, attempt, errors->-1->>'message' AS message, errors->-1 ? 'sqlstate' AS has_sqlstate
  FROM jobq.jobs WHERE id = :b;
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS b_tok FROM jobq.jobs WHERE id = :b \gset
SELECT jobq.fail(:b, :b_tok, '{"message": "rejected", "detail": "550", "sqlstate": "XX550"}'::jsonb);
SELECT state, finalized_at IS NOT NULL AS final, (errors->-1) - 'at' AS entry FROM jobq.jobs WHERE id = :b;
\set VERBOSITY sqlstate
SELECT jobq.fail(:b, :b_tok, 'again');
\set VERBOSITY default
SELECT jobq.fail(:b, :b_tok, '[1]'::jsonb);
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');

-- snooze: back later, no attempt counted; give_up: discarded at once
SELECT jobq.enqueue('mail', '{"to": "c"}') AS c \gset
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS c_tok FROM jobq.jobs WHERE id = :c \gset
SELECT jobq.snooze(:c, :c_tok, interval '1 hour');
SELECT state, attempt, snoozes, scheduled_at > now() + interval '59 minutes' AS later
  FROM jobq.jobs WHERE id = :c;
SELECT jobq.retry(:c);
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS c_tok FROM jobq.jobs WHERE id = :c \gset
SELECT jobq.snooze(:c, :c_tok, now() - interval '1 s');
SELECT state, attempt, snoozes FROM jobq.jobs WHERE id = :c;
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS c_tok FROM jobq.jobs WHERE id = :c \gset
SELECT jobq.snooze(:c, :c_tok, interval '-1 s');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT jobq.give_up(:c, :c_tok, 'no such mailbox');
SELECT state, errors->-1->>'message' AS message, errors->-1->'given_up' AS given_up
  FROM jobq.jobs WHERE id = :c;

-- complete_many: all of a claim in one call, or none of it
SELECT jobq.enqueue_many('mail', ARRAY['{"to": "m1"}', '{"to": "m2"}', '{"to": "m3"}']::jsonb[]) AS m \gset
SELECT count(*) FROM jobq.claim('ext_q', max_jobs => 3);
SELECT array_agg(id ORDER BY id) AS m_ids, array_agg(attempted_by ORDER BY id) AS m_toks
  FROM jobq.jobs WHERE id = ANY (:'m') \gset
\set VERBOSITY sqlstate
SELECT jobq.complete_many(:'m_ids', (:'m_toks'::bigint[])[1:2] || 0::bigint);
\set VERBOSITY default
SELECT count(*) FILTER (WHERE state = 'running') AS running FROM jobq.jobs WHERE id = ANY (:'m');
SELECT jobq.complete_many(:'m_ids', :'m_toks', ARRAY['{"n": 1}', NULL, '{"n": 3}']::jsonb[]);
SELECT state, result FROM jobq.jobs WHERE id = ANY (:'m') ORDER BY id;
\set VERBOSITY sqlstate
SELECT jobq.complete_many(:'m_ids', :'m_toks');
\set VERBOSITY default
SELECT jobq.complete_many(:'m_ids', '{1}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT jobq.complete_many(ARRAY[NULL]::bigint[], '{1}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22004');
SELECT jobq.complete_many(ARRAY[:inside]::bigint[], '{1}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42809');
SELECT jobq.complete_many('{-1}', '{1}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42704');
SELECT jobq.complete_many(array_fill(1::bigint, ARRAY[1001]), array_fill(1::bigint, ARRAY[1001]));
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '22023');
SELECT jobq.complete_many('{}', '{}');

-- cancel of a held job: the worker's complete is refused, and says why
SELECT jobq.enqueue('mail', '{"to": "d"}') AS d \gset
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS d_tok FROM jobq.jobs WHERE id = :d \gset
SELECT jobq.cancel(:d);
\set VERBOSITY sqlstate
SELECT jobq.complete(:d, :d_tok);
\set VERBOSITY default
-- (the message names the job and token, its detail says: The job is cancelled now)
-- retry takes a held job only once its lease has ended
SELECT jobq.enqueue('mail', '{"to": "e"}') AS e \gset
SELECT attempt FROM jobq.claim('ext_q');
SELECT jobq.retry(:e);
UPDATE jobq.jobs SET lease_until = now() - interval '1 s' WHERE id = :e;
SELECT jobq.retry(:e);
SELECT state FROM jobq.jobs WHERE id = :e;

-- who may work: the kind's owner's members, and roles granted 'work'
CREATE ROLE regress_jobq_mailer;
GRANT USAGE ON SCHEMA ext TO regress_jobq_mailer;
SET ROLE regress_jobq_mailer;
SELECT * FROM jobq.claim('ext_q');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42501');
SELECT * FROM jobq.claim('ext_q', kinds => '{mail}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42501');
RESET ROLE;
SELECT attempt FROM jobq.claim('ext_q');
SELECT attempted_by AS e_tok FROM jobq.jobs WHERE id = :e \gset
SET ROLE regress_jobq_mailer;
\set VERBOSITY sqlstate
SELECT jobq.complete(:e, :e_tok);
\set VERBOSITY default
RESET ROLE;
SELECT jobq.grant('work', 'mail', 'regress_jobq_mailer');
SET ROLE regress_jobq_mailer;
SELECT jobq.complete(:e, :e_tok);
SELECT jobq.enqueue('mail', '{"to": "f"}');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '42501');
RESET ROLE;
SELECT jobq.enqueue('mail', '{"to": "f"}') AS f \gset
SET ROLE regress_jobq_mailer;
SELECT id = :f AS f, attempt FROM jobq.claim('ext_q');
SELECT leased_by FROM jobq.leases WHERE id = :f;
RESET ROLE;

-- a kind that moves to jobq's own workers takes its waiting jobs along
CREATE FUNCTION ext.mail(args jsonb) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO ext.sent VALUES ((jobq.current_job()).id) $$;
SELECT jobq.pause('ext_q');
SELECT jobq.enqueue('mail', '{"to": "g"}') AS g \gset
SELECT jobq.register('mail', 'ext.mail(jsonb)', queue => 'ext_q');
SELECT external FROM jobq.jobs WHERE id IN (:f, :g) ORDER BY id;
SELECT jobq.resume('ext_q');
SELECT jobq.wait(:g, '60 s');
SELECT EXISTS (SELECT FROM ext.sent WHERE job_id = :g) AS sent;
-- the held one ends where it runs: external, its token still good
SELECT attempted_by AS f_tok FROM jobq.jobs WHERE id = :f \gset
SET ROLE regress_jobq_mailer;
SELECT jobq.complete(:f, :f_tok);
RESET ROLE;
SELECT state FROM jobq.jobs WHERE id = :f;

-- unregistering an external kind with live jobs is refused, then allowed
SELECT jobq.register_external('mail', queue => 'ext_q', lease => '1 hour');
SELECT jobq.enqueue('mail', '{}') AS h \gset
SELECT jobq.unregister('mail');
SELECT pg_temp.sqlstate_is(:'LAST_ERROR_SQLSTATE', '2BP01');
SELECT jobq.cancel(:h);
SELECT jobq.unregister('mail');
SELECT count(*) FROM jobq.grants WHERE object_name = 'mail';

-- clean up
SELECT jobq.unregister('inside');
DELETE FROM jobq.jobs WHERE queue = 'ext_q';
SELECT jobq.drop_queue('ext_q');
SET client_min_messages = warning;
DROP SCHEMA ext CASCADE;
RESET client_min_messages;
DROP ROLE regress_jobq_mailer;
