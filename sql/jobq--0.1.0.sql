/* jobq--0.1.0.sql: the schema, SQL API and views of jobq 0.1.0 */

\echo Use "CREATE EXTENSION jobq" to load this file. \quit

/*
 * Privilege model.  Every table is owned by the extension owner (a
 * superuser) and is read-only to other roles, who see only the rows of roles
 * they have the privileges of (row level security).  Changes go through the
 * API functions below: each is a C trampoline (jobq_call_as_owner) that
 * records the calling role, then runs the internal function of the same name
 * with a leading underscore as the extension owner, passing that role as
 * "caller".  The internal functions are not executable by PUBLIC, so no role
 * can claim to be another.  A job runs as its owner, the caller that
 * enqueued it.
 */

CREATE FUNCTION jobq._require_preload() RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_require_preload_sql';
SELECT jobq._require_preload();

CREATE TYPE jobq.job_state AS ENUM (
	'scheduled', 'available', 'running', 'retryable',
	'completed', 'cancelled', 'discarded');
COMMENT ON TYPE jobq.job_state IS
	'State of a job; completed, cancelled and discarded are final';

CREATE TABLE jobq.queues (
	name		text PRIMARY KEY
				CHECK (name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
	paused		boolean NOT NULL DEFAULT false,
	concurrency integer CHECK (concurrency > 0),
	owner		regrole NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE jobq.queues IS
	'Queues of jobs: a paused queue runs nothing; concurrency limits how many of its jobs run at once';
INSERT INTO jobq.queues (name, owner) VALUES ('default', current_user::regrole);

CREATE TABLE jobq.handlers (
	kind		text PRIMARY KEY CHECK (kind <> '' AND octet_length(kind) <= 128),
	handler		regprocedure NOT NULL,
	queue		text NOT NULL,
	max_attempts integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
	timeout		interval NOT NULL CHECK (timeout > '0'),
	priority	smallint NOT NULL CHECK (priority >= 0),
	backoff_max interval CHECK (backoff_max >= '0'),
	owner		regrole NOT NULL,
	registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE jobq.handlers IS
	'Registered kinds: the handler each kind runs and its defaults';

/*
 * Column order is chosen for alignment (fixed-width first), which keeps a
 * job row small; README.md lists the columns by meaning.
 */
CREATE TABLE jobq.jobs (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	attempted_by bigint,
	scheduled_at timestamptz NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now(),
	attempted_at timestamptz,
	finalized_at timestamptz,
	owner		regrole NOT NULL,
	state		jobq.job_state NOT NULL,
	attempt		integer NOT NULL DEFAULT 0,
	max_attempts integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
	priority	smallint NOT NULL CHECK (priority >= 0),
	kind		text NOT NULL,
	queue		text NOT NULL,
	args		jsonb NOT NULL,
	errors		jsonb NOT NULL DEFAULT '[]',
	result		jsonb,
	unique_key	text
);
COMMENT ON TABLE jobq.jobs IS 'One row per job; see README.md for the state machine';
COMMENT ON COLUMN jobq.jobs.attempted_by IS
	'Incarnation of the worker that holds or last held the job (jobq.components.incarnation)';
COMMENT ON COLUMN jobq.jobs.errors IS
	'One entry per failed attempt: attempt, at, message, sqlstate, detail, hint, context (lost: true when the worker died)';

/* Serves the claim: the next available jobs of one queue, in run order. */
CREATE INDEX jobs_available ON jobq.jobs (queue, priority, scheduled_at, id)
	WHERE state = 'available';
/* Serves the scheduler: which waiting job is due next. */
CREATE INDEX jobs_waiting ON jobq.jobs (scheduled_at)
	WHERE state IN ('scheduled', 'retryable');
/* Serves the rescuer and per-queue concurrency: the running jobs. */
CREATE INDEX jobs_running ON jobq.jobs (queue)
	WHERE state = 'running';
/* Serves the cleaner: final jobs by age. */
CREATE INDEX jobs_final ON jobq.jobs (finalized_at)
	WHERE state IN ('completed', 'cancelled', 'discarded');
/* Uniqueness: one live job per (kind, owner, unique_key). */
CREATE UNIQUE INDEX jobs_unique ON jobq.jobs (kind, owner, unique_key)
	WHERE unique_key IS NOT NULL
	  AND state IN ('scheduled', 'available', 'running', 'retryable');

CREATE TABLE jobq.schedules (
	name		text PRIMARY KEY CHECK (name <> ''),
	cron		text NOT NULL,
	kind		text NOT NULL,
	args		jsonb NOT NULL,
	queue		text,
	priority	smallint,
	max_attempts integer,
	owner		regrole NOT NULL,
	next_fire_at timestamptz NOT NULL,
	last_fire_at timestamptz,
	last_job_id bigint,
	last_error	text,
	created_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE jobq.schedules IS
	'Periodic jobs: the leader enqueues one job per fire time of each cron expression';

ALTER TABLE jobq.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobq.schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY jobs_of_my_roles ON jobq.jobs FOR SELECT
	USING (pg_catalog.pg_has_role(owner, 'USAGE'));
CREATE POLICY schedules_of_my_roles ON jobq.schedules FOR SELECT
	USING (pg_catalog.pg_has_role(owner, 'USAGE'));

/* Readable by all (rows filtered as above); written only through the API. */
REVOKE ALL ON jobq.jobs, jobq.handlers, jobq.queues, jobq.schedules FROM PUBLIC;
GRANT SELECT ON jobq.jobs, jobq.handlers, jobq.queues, jobq.schedules TO PUBLIC;
GRANT USAGE ON SCHEMA jobq TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('jobq.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('jobq.jobs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('jobq.handlers', '');
SELECT pg_catalog.pg_extension_config_dump('jobq.queues', 'WHERE name <> ''default''');
SELECT pg_catalog.pg_extension_config_dump('jobq.schedules', '');

/* ---------------------------------------------------------------------
 * C helpers, internal: effects deferred to COMMIT, shared-memory readers
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._wake_workers_at_commit(jobs integer) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'jobq_wake_workers_at_commit_sql';
CREATE FUNCTION jobq._wake_leader_at_commit() RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_wake_leader_at_commit_sql';
CREATE FUNCTION jobq._jobs_finished_at_commit() RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_jobs_finished_at_commit_sql';
CREATE FUNCTION jobq._config_changed() RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_config_changed_sql';
CREATE FUNCTION jobq._backoff(attempt integer, backoff_max interval) RETURNS interval
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_backoff_sql';
COMMENT ON FUNCTION jobq._backoff(integer, interval) IS
	'Delay before the next attempt after attempt failed: attempt^4 seconds plus up to 10% jitter, at most backoff_max';
CREATE FUNCTION jobq._current_job_id() RETURNS bigint
	LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'jobq_current_job_id_sql';
CREATE FUNCTION jobq._cron_next(cron text, after timestamptz) RETURNS timestamptz
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'jobq_cron_next_sql';
COMMENT ON FUNCTION jobq._cron_next(text, timestamptz) IS
	'First fire time of a cron expression strictly after a moment; raises an error for a malformed expression';

/* ---------------------------------------------------------------------
 * Validation shared by the API
 *
 * Helpers called only from the internal functions (not executable by
 * PUBLIC) run under their caller's safe search_path; a SET clause of their
 * own would cost a GUC save and restore on every enqueue.
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._check_member(caller regrole, owner regrole, what text)
RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
	IF NOT pg_has_role(caller, owner, 'USAGE') THEN
		RAISE EXCEPTION 'permission denied for %', what
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It belongs to role %s.', owner);
	END IF;
END $$;

CREATE FUNCTION jobq._check_queue(queue text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
	IF queue IS NULL THEN
		RAISE EXCEPTION 'queue must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM FROM jobq.queues q WHERE q.name = queue;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', queue
			USING ERRCODE = 'undefined_object',
				  HINT = 'Create it with jobq.create_queue().';
	END IF;
END $$;

CREATE FUNCTION jobq._check_priority(priority integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF priority < 0 OR priority > 32767 THEN
		RAISE EXCEPTION 'priority % is out of range', priority
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A priority is between 0 and 32767; lower runs first.';
	END IF;
END $$;

CREATE FUNCTION jobq._check_max_attempts(max_attempts integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF max_attempts < 1 OR max_attempts > 1000 THEN
		RAISE EXCEPTION 'max_attempts % is out of range', max_attempts
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'max_attempts is between 1 and 1000.';
	END IF;
END $$;

CREATE FUNCTION jobq._check_args(args jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF pg_catalog.jsonb_typeof(args) <> 'object' THEN
		RAISE EXCEPTION 'job args must be a JSON object, not %', pg_catalog.jsonb_typeof(args)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Wrap the value, as in jsonb_build_object(''value'', ...).';
	END IF;
END $$;

/* The registration of a kind, or an error naming the problem. */
CREATE FUNCTION jobq._handler_of(kind text) RETURNS jobq.handlers
LANGUAGE plpgsql STABLE AS $$
DECLARE
	h jobq.handlers;
BEGIN
	IF kind IS NULL THEN
		RAISE EXCEPTION 'job kind must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO h FROM jobq.handlers WHERE handlers.kind = _handler_of.kind;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'job kind "%" is not registered', kind
			USING ERRCODE = 'undefined_object',
				  HINT = 'Register a handler for it with jobq.register().';
	END IF;
	RETURN h;
END $$;

/* ---------------------------------------------------------------------
 * Queues
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._create_queue(caller regrole, name text, concurrency integer)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'queue name must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
		RAISE EXCEPTION 'invalid queue name "%"', name
			USING ERRCODE = 'invalid_name',
				  DETAIL = 'A queue name has 1 to 63 letters, digits, or the characters _ . : -';
	END IF;
	IF concurrency < 1 THEN
		RAISE EXCEPTION 'queue concurrency must be at least 1, not %', concurrency
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use NULL for no limit, or jobq.pause() to stop a queue.';
	END IF;
	INSERT INTO jobq.queues (name, concurrency, owner)
		VALUES (_create_queue.name, _create_queue.concurrency, caller);
	PERFORM jobq._config_changed();
EXCEPTION WHEN unique_violation THEN
	RAISE EXCEPTION 'queue "%" already exists', name USING ERRCODE = 'duplicate_object';
END $$;

CREATE FUNCTION jobq.create_queue(name text, concurrency integer DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.create_queue(text, integer) IS
	'Creates a queue; concurrency limits how many of its jobs run at once (NULL: no limit)';

/* Changes a queue the caller owns; returns the updated row. */
CREATE FUNCTION jobq._alter_queue(caller regrole, queue text, paused boolean,
								  set_concurrency boolean, concurrency integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	q jobq.queues;
BEGIN
	PERFORM jobq._check_queue(queue);
	SELECT * INTO q FROM jobq.queues WHERE name = queue FOR UPDATE;
	PERFORM jobq._check_member(caller, q.owner, format('queue "%s"', queue));
	IF set_concurrency AND concurrency < 1 THEN
		RAISE EXCEPTION 'queue concurrency must be at least 1, not %', concurrency
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use NULL for no limit, or jobq.pause() to stop a queue.';
	END IF;
	UPDATE jobq.queues
	   SET paused = coalesce(_alter_queue.paused, queues.paused),
		   concurrency = CASE WHEN set_concurrency THEN _alter_queue.concurrency
							  ELSE queues.concurrency END
	 WHERE name = queue;
	PERFORM jobq._config_changed();
	/* resuming or raising a limit may make jobs runnable */
	PERFORM jobq._wake_workers_at_commit(2147483647);
END $$;

CREATE FUNCTION jobq._pause(caller regrole, queue text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
	SELECT jobq._alter_queue(caller, queue, true, false, NULL)
$$;
CREATE FUNCTION jobq.pause(queue text) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.pause(text) IS
	'Stops workers from starting jobs of a queue (running jobs finish); enqueueing continues';

CREATE FUNCTION jobq._resume(caller regrole, queue text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
	SELECT jobq._alter_queue(caller, queue, false, false, NULL)
$$;
CREATE FUNCTION jobq.resume(queue text) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.resume(text) IS 'Lets workers start jobs of a paused queue again';

CREATE FUNCTION jobq._set_queue_concurrency(caller regrole, queue text, concurrency integer)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
	SELECT jobq._alter_queue(caller, queue, NULL, true, concurrency)
$$;
CREATE FUNCTION jobq.set_queue_concurrency(queue text, concurrency integer) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.set_queue_concurrency(text, integer) IS
	'Sets how many jobs of a queue may run at once across all workers (NULL: no limit)';

CREATE FUNCTION jobq._drop_queue(caller regrole, queue text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	q jobq.queues;
BEGIN
	PERFORM jobq._check_queue(queue);
	IF queue = 'default' THEN
		RAISE EXCEPTION 'cannot drop the default queue' USING ERRCODE = 'object_in_use';
	END IF;
	SELECT * INTO q FROM jobq.queues WHERE name = queue FOR UPDATE;
	PERFORM jobq._check_member(caller, q.owner, format('queue "%s"', queue));
	PERFORM FROM jobq.handlers h WHERE h.queue = _drop_queue.queue;
	IF FOUND THEN
		RAISE EXCEPTION 'queue "%" is the default queue of a registered kind', queue
			USING ERRCODE = 'dependent_objects_still_exist';
	END IF;
	PERFORM FROM jobq.jobs j
	 WHERE j.queue = _drop_queue.queue
	   AND j.state IN ('scheduled', 'available', 'running', 'retryable');
	IF FOUND THEN
		RAISE EXCEPTION 'queue "%" still has jobs that are not final', queue
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Wait for them, or cancel them with jobq.cancel().';
	END IF;
	DELETE FROM jobq.queues WHERE name = queue;
	PERFORM jobq._config_changed();
END $$;
CREATE FUNCTION jobq.drop_queue(queue text) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.drop_queue(text) IS 'Drops an empty queue';

/* ---------------------------------------------------------------------
 * Handlers
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._register(caller regrole, kind text, handler regprocedure,
							   queue text, max_attempts integer, timeout interval,
							   priority integer, backoff_max interval)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	p pg_proc;
	old jobq.handlers;
	rettype_kind "char";
BEGIN
	IF kind IS NULL OR kind = '' THEN
		RAISE EXCEPTION 'job kind must not be null or empty' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(kind) > 128 THEN
		RAISE EXCEPTION 'job kind is too long'
			USING ERRCODE = 'string_data_right_truncation',
				  DETAIL = format('A kind is at most 128 bytes; this one has %s.', octet_length(kind));
	END IF;
	IF handler IS NULL THEN
		RAISE EXCEPTION 'handler must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO p FROM pg_proc WHERE oid = handler;
	IF p.prokind NOT IN ('f', 'p') OR p.pronargs <> 1
	   OR p.proargtypes[0] <> 'jsonb'::regtype OR p.proretset THEN
		RAISE EXCEPTION 'function % cannot be a job handler', handler
			USING ERRCODE = 'invalid_function_definition',
				  DETAIL = 'A handler is a function or procedure with exactly one argument of type jsonb that does not return a set.';
	END IF;
	SELECT typtype INTO rettype_kind FROM pg_type WHERE oid = p.prorettype;
	IF p.prokind = 'f' AND rettype_kind = 'p'
	   AND p.prorettype NOT IN ('void'::regtype, 'record'::regtype) THEN
		RAISE EXCEPTION 'function % cannot be a job handler', handler
			USING ERRCODE = 'invalid_function_definition',
				  DETAIL = format('Its result type %s cannot be stored as jsonb.', p.prorettype::regtype);
	END IF;
	IF NOT has_function_privilege(caller, handler, 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for function %', handler
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('Role %s may not execute the handler it registers.', caller);
	END IF;
	PERFORM jobq._check_queue(queue);
	PERFORM jobq._check_max_attempts(max_attempts);
	PERFORM jobq._check_priority(priority);
	IF max_attempts IS NULL OR priority IS NULL OR timeout IS NULL THEN
		RAISE EXCEPTION 'max_attempts, timeout and priority must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF timeout <= '0' THEN
		RAISE EXCEPTION 'timeout must be positive, not %', timeout
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF backoff_max < '0' THEN
		RAISE EXCEPTION 'backoff_max must not be negative, not %', backoff_max
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	SELECT * INTO old FROM jobq.handlers h WHERE h.kind = _register.kind FOR UPDATE;
	IF FOUND THEN
		PERFORM jobq._check_member(caller, old.owner, format('job kind "%s"', kind));
	END IF;
	INSERT INTO jobq.handlers AS h (kind, handler, queue, max_attempts, timeout,
									priority, backoff_max, owner)
	VALUES (kind, handler, queue, max_attempts, timeout, priority, backoff_max, caller)
	ON CONFLICT (kind) DO UPDATE
	   SET handler = excluded.handler, queue = excluded.queue,
		   max_attempts = excluded.max_attempts, timeout = excluded.timeout,
		   priority = excluded.priority, backoff_max = excluded.backoff_max,
		   registered_at = now();
	PERFORM jobq._config_changed();
END $$;

CREATE FUNCTION jobq.register(kind text, handler regprocedure,
							  queue text DEFAULT 'default',
							  max_attempts integer DEFAULT 25,
							  timeout interval DEFAULT '5 minutes',
							  priority integer DEFAULT 0,
							  backoff_max interval DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.register(text, regprocedure, text, integer, interval, integer, interval) IS
	'Registers (or updates) the handler of a job kind and the defaults of its jobs';

CREATE FUNCTION jobq._unregister(caller regrole, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	h jobq.handlers;
BEGIN
	h := jobq._handler_of(kind);
	PERFORM jobq._check_member(caller, h.owner, format('job kind "%s"', kind));
	PERFORM FROM jobq.jobs j
	 WHERE j.kind = _unregister.kind
	   AND j.state IN ('scheduled', 'available', 'running', 'retryable');
	IF FOUND THEN
		RAISE EXCEPTION 'job kind "%" still has jobs that are not final', kind
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Wait for them, or cancel them with jobq.cancel().';
	END IF;
	PERFORM FROM jobq.schedules s WHERE s.kind = _unregister.kind;
	IF FOUND THEN
		RAISE EXCEPTION 'job kind "%" is used by a schedule', kind
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Remove the schedule with jobq.unschedule().';
	END IF;
	DELETE FROM jobq.handlers WHERE handlers.kind = _unregister.kind;
	PERFORM jobq._config_changed();
END $$;
CREATE FUNCTION jobq.unregister(kind text) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.unregister(text) IS 'Removes the registration of a job kind that has no live jobs';

/* ---------------------------------------------------------------------
 * Enqueueing
 * --------------------------------------------------------------------- */

/* Validated attributes of a new job; shared by enqueue and enqueue_many. */
CREATE TYPE jobq._new_job AS (
	queue text, priority smallint, max_attempts integer,
	scheduled_at timestamptz, state jobq.job_state);

CREATE FUNCTION jobq._new_job(kind text, run_at timestamptz, queue text,
							  priority integer, max_attempts integer)
RETURNS jobq._new_job LANGUAGE plpgsql STABLE AS $$
DECLARE
	h jobq.handlers;
	j jobq._new_job;
BEGIN
	h := jobq._handler_of(kind);
	j.queue := coalesce(queue, h.queue);
	PERFORM jobq._check_queue(j.queue);
	PERFORM jobq._check_priority(priority);
	j.priority := coalesce(priority, h.priority);
	PERFORM jobq._check_max_attempts(max_attempts);
	j.max_attempts := coalesce(max_attempts, h.max_attempts);
	IF run_at IN ('infinity', '-infinity') THEN
		RAISE EXCEPTION 'run_at must be a finite time, not %', run_at
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	j.scheduled_at := coalesce(run_at, now());
	j.state := CASE WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'available' END;
	RETURN j;
END $$;

CREATE FUNCTION jobq._wake_for(state jobq.job_state, jobs integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	IF state = 'available' THEN
		PERFORM jobq._wake_workers_at_commit(jobs);
	ELSE
		PERFORM jobq._wake_leader_at_commit();
	END IF;
END $$;

CREATE FUNCTION jobq._enqueue(caller regrole, kind text, args jsonb, run_at timestamptz,
							  queue text, priority integer, max_attempts integer,
							  unique_key text)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	j jobq._new_job;
	job_id bigint;
BEGIN
	j := jobq._new_job(kind, run_at, queue, priority, max_attempts);
	args := coalesce(args, '{}');
	PERFORM jobq._check_args(args);

	IF unique_key IS NULL THEN
		INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at, owner)
		VALUES (kind, args, j.queue, j.priority, j.state, j.max_attempts, j.scheduled_at, caller)
		RETURNING id INTO job_id;
	ELSE
		/*
		 * The unique index decides between concurrent enqueuers; the loser
		 * returns the winner's job.  The loop covers that job becoming final
		 * between our insert attempt and our look-up.
		 */
		LOOP
			INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts,
								   scheduled_at, owner, unique_key)
			VALUES (kind, args, j.queue, j.priority, j.state, j.max_attempts,
					j.scheduled_at, caller, unique_key)
			ON CONFLICT (kind, owner, unique_key)
				WHERE unique_key IS NOT NULL
				  AND state IN ('scheduled', 'available', 'running', 'retryable')
				DO NOTHING
			RETURNING id INTO job_id;
			EXIT WHEN job_id IS NOT NULL;
			SELECT id INTO job_id FROM jobq.jobs
			 WHERE jobs.kind = _enqueue.kind AND jobs.owner = caller
			   AND jobs.unique_key = _enqueue.unique_key
			   AND state IN ('scheduled', 'available', 'running', 'retryable');
			IF FOUND THEN
				RETURN job_id;
			END IF;
		END LOOP;
	END IF;
	PERFORM jobq._wake_for(j.state, 1);
	RETURN job_id;
END $$;

CREATE FUNCTION jobq.enqueue(kind text, args jsonb DEFAULT '{}',
							 run_at timestamptz DEFAULT NULL,
							 queue text DEFAULT NULL,
							 priority integer DEFAULT NULL,
							 max_attempts integer DEFAULT NULL,
							 unique_key text DEFAULT NULL)
RETURNS bigint LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.enqueue(text, jsonb, timestamptz, text, integer, integer, text) IS
	'Enqueues a job that runs as the calling role once the transaction commits; returns its id (or, with unique_key, the id of the live job with that key)';

CREATE FUNCTION jobq._enqueue_many(caller regrole, kind text, args jsonb[], run_at timestamptz,
								   queue text, priority integer, max_attempts integer)
RETURNS bigint[] LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq._new_job;
	ids bigint[];
	bad integer;
BEGIN
	j := jobq._new_job(kind, run_at, queue, priority, max_attempts);
	IF args IS NULL THEN
		RAISE EXCEPTION 'args must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT min(n) INTO bad FROM unnest(args) WITH ORDINALITY AS a(v, n)
	 WHERE v IS NOT NULL AND jsonb_typeof(v) <> 'object';
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'job args must be JSON objects, element % is not', bad
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	/* identities are drawn in input order, so sorting ids restores it */
	WITH inserted AS (
		INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at, owner)
		SELECT kind, coalesce(a.v, '{}'), j.queue, j.priority, j.state, j.max_attempts,
			   j.scheduled_at, caller
		  FROM unnest(args) WITH ORDINALITY AS a(v, n)
		 ORDER BY a.n
		RETURNING id)
	SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM inserted;
	PERFORM jobq._wake_for(j.state, cardinality(ids));
	RETURN ids;
END $$;

CREATE FUNCTION jobq.enqueue_many(kind text, args jsonb[],
								  run_at timestamptz DEFAULT NULL,
								  queue text DEFAULT NULL,
								  priority integer DEFAULT NULL,
								  max_attempts integer DEFAULT NULL)
RETURNS bigint[] LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.enqueue_many(text, jsonb[], timestamptz, text, integer, integer) IS
	'Enqueues one job per element of args in one statement; returns their ids in the same order';

CREATE FUNCTION jobq.enqueue_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
		RAISE EXCEPTION 'jobq.enqueue_trigger() must be fired AFTER ... FOR EACH ROW'
			USING ERRCODE = 'trigger_protocol_violated';
	END IF;
	IF TG_NARGS <> 1 THEN
		RAISE EXCEPTION 'jobq.enqueue_trigger() takes one argument, the job kind, not %', TG_NARGS
			USING ERRCODE = 'trigger_protocol_violated';
	END IF;
	PERFORM jobq.enqueue(TG_ARGV[0], pg_catalog.jsonb_build_object(
		'op', TG_OP,
		'schema', TG_TABLE_SCHEMA,
		'table', TG_TABLE_NAME,
		'old', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN pg_catalog.to_jsonb(OLD) END,
		'new', CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN pg_catalog.to_jsonb(NEW) END));
	RETURN NULL;
END $$;
COMMENT ON FUNCTION jobq.enqueue_trigger() IS
	'Trigger: EXECUTE FUNCTION jobq.enqueue_trigger(''kind'') enqueues a job with args {op, schema, table, old, new} per row';

/* ---------------------------------------------------------------------
 * Changing jobs
 * --------------------------------------------------------------------- */

/* A job the caller may change, locked, or an error. */
CREATE FUNCTION jobq._job_for_change(caller regrole, id bigint) RETURNS jobq.jobs
LANGUAGE plpgsql AS $$
DECLARE
	j jobq.jobs;
BEGIN
	IF id IS NULL THEN
		RAISE EXCEPTION 'job id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO j FROM jobq.jobs WHERE jobs.id = _job_for_change.id FOR UPDATE;
	/* jobs of roles the caller is not a member of do not exist for it */
	IF NOT FOUND OR NOT pg_has_role(caller, j.owner, 'USAGE') THEN
		RAISE EXCEPTION 'job % does not exist', id USING ERRCODE = 'undefined_object';
	END IF;
	RETURN j;
END $$;

CREATE FUNCTION jobq._cancel(caller regrole, id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq.jobs;
BEGIN
	j := jobq._job_for_change(caller, id);
	IF j.state IN ('completed', 'cancelled', 'discarded') THEN
		RETURN false;
	END IF;
	/*
	 * A running job's worker finds the job cancelled when it goes to record
	 * the outcome, and rolls the job's effects back.
	 */
	UPDATE jobq.jobs SET state = 'cancelled', finalized_at = now()
	 WHERE jobs.id = j.id;
	PERFORM jobq._jobs_finished_at_commit();
	RETURN true;
END $$;
CREATE FUNCTION jobq.cancel(id bigint) RETURNS boolean
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.cancel(bigint) IS
	'Cancels a job that is not final; returns false if it already was. A running job''s effects are rolled back when it ends';

CREATE FUNCTION jobq._retry(caller regrole, id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq.jobs;
BEGIN
	j := jobq._job_for_change(caller, id);
	IF j.state IN ('available', 'running') THEN
		RETURN false;
	END IF;
	UPDATE jobq.jobs
	   SET state = 'available', scheduled_at = now(), finalized_at = NULL,
		   max_attempts = greatest(max_attempts, attempt + 1)
	 WHERE jobs.id = j.id;
	PERFORM jobq._wake_workers_at_commit(1);
	RETURN true;
END $$;
CREATE FUNCTION jobq.retry(id bigint) RETURNS boolean
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.retry(bigint) IS
	'Makes a waiting or final job available now (granting one more attempt if it had none left); false if it is available or running';

/* ---------------------------------------------------------------------
 * Periodic jobs
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._schedule(caller regrole, name text, cron text, kind text, args jsonb,
							   queue text, priority integer, max_attempts integer)
RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old jobq.schedules;
	next_fire timestamptz;
BEGIN
	IF name IS NULL OR name = '' THEN
		RAISE EXCEPTION 'schedule name must not be null or empty' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF cron IS NULL THEN
		RAISE EXCEPTION 'cron expression must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	next_fire := jobq._cron_next(cron, now());
	PERFORM jobq._new_job(kind, NULL, queue, priority, max_attempts);
	args := coalesce(args, '{}');
	PERFORM jobq._check_args(args);
	SELECT * INTO old FROM jobq.schedules s WHERE s.name = _schedule.name FOR UPDATE;
	IF FOUND THEN
		PERFORM jobq._check_member(caller, old.owner, format('schedule "%s"', name));
		UPDATE jobq.schedules s
		   SET cron = _schedule.cron, kind = _schedule.kind, args = _schedule.args,
			   queue = _schedule.queue, priority = _schedule.priority,
			   max_attempts = _schedule.max_attempts, next_fire_at = next_fire
		 WHERE s.name = _schedule.name;
	ELSE
		INSERT INTO jobq.schedules (name, cron, kind, args, queue, priority, max_attempts,
									owner, next_fire_at)
		VALUES (name, cron, kind, args, queue, priority, max_attempts, caller, next_fire);
	END IF;
	PERFORM jobq._wake_leader_at_commit();
	RETURN next_fire;
END $$;
CREATE FUNCTION jobq.schedule(name text, cron text, kind text, args jsonb DEFAULT '{}',
							  queue text DEFAULT NULL, priority integer DEFAULT NULL,
							  max_attempts integer DEFAULT NULL)
RETURNS timestamptz LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.schedule(text, text, text, jsonb, text, integer, integer) IS
	'Creates or replaces a periodic job: one job of kind per fire time of a 5-field cron expression (UTC); returns the first fire time';

CREATE FUNCTION jobq._unschedule(caller regrole, name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old jobq.schedules;
BEGIN
	SELECT * INTO old FROM jobq.schedules s WHERE s.name = _unschedule.name FOR UPDATE;
	IF NOT FOUND OR NOT pg_has_role(caller, old.owner, 'USAGE') THEN
		RETURN false;
	END IF;
	DELETE FROM jobq.schedules s WHERE s.name = _unschedule.name;
	RETURN true;
END $$;
CREATE FUNCTION jobq.unschedule(name text) RETURNS boolean
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.unschedule(text) IS 'Removes a schedule; false if there was none';

/* ---------------------------------------------------------------------
 * Claiming (used by the workers; internal)
 * --------------------------------------------------------------------- */

/*
 * Claims up to max_jobs available jobs of one queue for a worker, in run
 * order: locks them with SKIP LOCKED (so concurrent claimers never take the
 * same job), marks them running and counts the attempt.  The worker commits
 * this before running any of them.
 *
 * A job that must run alone -- its previous worker died, or its kind is one
 * of alone_kinds (procedures) -- is claimed at most max_alone (0 or 1) at a
 * time: if it kills its worker again, it must not take the attempts of
 * other such jobs claimed with it.  Locked rows not claimed are released at
 * commit.  (PL/pgSQL keeps the plan across calls; a SQL function would be
 * planned again on every claim.)  attempted_at is one clock reading taken
 * after the snapshot (an InitPlan), not now(): the claim transaction may
 * have begun before the job's enqueue did.
 */
CREATE FUNCTION jobq._claim(worker bigint, queue text, max_jobs bigint,
							alone_kinds text[], max_alone integer)
RETURNS TABLE (id bigint, kind text, args jsonb, owner oid, attempt integer,
			   max_attempts integer, alone boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
	RETURN QUERY
	WITH locked AS MATERIALIZED (
		SELECT j.id, j.priority, j.scheduled_at,
			   coalesce((j.errors -> -1 ->> 'lost')::boolean, false)
				 OR j.kind = ANY (alone_kinds) AS alone
		  FROM jobq.jobs j
		 WHERE j.state = 'available' AND j.queue = _claim.queue
		   AND NOT EXISTS (SELECT FROM jobq.queues q
							WHERE q.name = _claim.queue AND q.paused)
		 ORDER BY j.priority, j.scheduled_at, j.id
		 LIMIT max_jobs
		 FOR UPDATE SKIP LOCKED),
	picked AS (
		SELECT l.id, l.alone FROM locked l WHERE NOT l.alone
		UNION ALL
		(SELECT l.id, l.alone FROM locked l WHERE l.alone
		  ORDER BY l.priority, l.scheduled_at, l.id LIMIT max_alone)),
	claimed AS (
		UPDATE jobq.jobs j
		   SET state = 'running', attempt = j.attempt + 1,
			   attempted_at = (SELECT clock_timestamp()), attempted_by = worker
		  FROM picked
		 WHERE j.id = picked.id
		RETURNING j.id, j.kind, j.args, j.owner, j.attempt, j.max_attempts,
				  j.priority, j.scheduled_at, picked.alone)
	SELECT c.id, c.kind, c.args, c.owner::oid, c.attempt, c.max_attempts, c.alone
	  FROM claimed c ORDER BY c.priority, c.scheduled_at, c.id;
END $$;

/* ---------------------------------------------------------------------
 * Waiting and introspection
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq.wait(id bigint, timeout interval DEFAULT NULL)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_wait';
COMMENT ON FUNCTION jobq.wait(bigint, interval) IS
	'Waits until a job is final or the timeout passes (NULL: no timeout); returns its state';

CREATE FUNCTION jobq.wait_ready(timeout interval DEFAULT '10 seconds')
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_wait_ready';
COMMENT ON FUNCTION jobq.wait_ready(interval) IS
	'Waits until this database''s workers, leader and leader services run; false at the timeout';

/* PL/pgSQL keeps the plan; a SQL function would be planned on every call. */
CREATE FUNCTION jobq.current_job() RETURNS jobq.jobs
LANGUAGE plpgsql STABLE AS $$
DECLARE
	job jobq.jobs;
BEGIN
	SELECT * INTO job FROM jobq.jobs WHERE id = jobq._current_job_id();
	RETURN job;
END $$;
COMMENT ON FUNCTION jobq.current_job() IS
	'Inside a handler: the job being run (NULL elsewhere)';

CREATE FUNCTION jobq._components(
	OUT database name, OUT component text, OUT pid integer, OUT state text,
	OUT job_id bigint, OUT incarnation bigint, OUT started_at timestamptz,
	OUT heartbeat_at timestamptz, OUT restarts integer, OUT last_error text,
	OUT last_error_at timestamptz, OUT jobs_done bigint, OUT jobs_failed bigint)
RETURNS SETOF record LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_components';

CREATE VIEW jobq.components AS SELECT * FROM jobq._components();
COMMENT ON VIEW jobq.components IS
	'One row per jobq process and leader service: state, current job, restarts, last error';
GRANT SELECT ON jobq.components TO PUBLIC;

CREATE VIEW jobq.queue_stats AS
SELECT q.name AS queue,
	   q.paused,
	   q.concurrency,
	   coalesce(s.scheduled, 0) AS scheduled,
	   coalesce(s.available, 0) AS available,
	   coalesce(s.running, 0) AS running,
	   coalesce(s.retryable, 0) AS retryable,
	   coalesce(s.completed, 0) AS completed,
	   coalesce(s.cancelled, 0) AS cancelled,
	   coalesce(s.discarded, 0) AS discarded,
	   coalesce(now() - s.oldest_available, '0') AS lag,
	   coalesce(s.completed_last_minute, 0) AS completed_last_minute,
	   coalesce(s.failed_last_minute, 0) AS failed_last_minute
  FROM jobq.queues q
  LEFT JOIN (
	SELECT j.queue,
		   count(*) FILTER (WHERE j.state = 'scheduled') AS scheduled,
		   count(*) FILTER (WHERE j.state = 'available') AS available,
		   count(*) FILTER (WHERE j.state = 'running') AS running,
		   count(*) FILTER (WHERE j.state = 'retryable') AS retryable,
		   count(*) FILTER (WHERE j.state = 'completed') AS completed,
		   count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
		   count(*) FILTER (WHERE j.state = 'discarded') AS discarded,
		   min(j.scheduled_at) FILTER (WHERE j.state = 'available') AS oldest_available,
		   count(*) FILTER (WHERE j.state = 'completed'
							  AND j.finalized_at > now() - interval '1 minute') AS completed_last_minute,
		   count(*) FILTER (WHERE j.state IN ('retryable', 'discarded')
							  AND j.attempted_at > now() - interval '1 minute') AS failed_last_minute
	  FROM jobq.jobs j
	 GROUP BY j.queue) s ON s.queue = q.name;
COMMENT ON VIEW jobq.queue_stats IS
	'Per queue: jobs per state, lag (age of the oldest available job), jobs finished in the last minute';
GRANT SELECT ON jobq.queue_stats TO PUBLIC;

/*
 * Internal functions take the caller as an argument and run as the
 * extension's owner: only the public API may call them.  The pure helpers
 * stay callable: views and current_job() run them as the caller.
 */
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN
		SELECT p.oid FROM pg_proc p
		 WHERE p.pronamespace = 'jobq'::regnamespace AND p.proname LIKE '\_%'
		   AND p.proname NOT IN ('_cron_next', '_backoff', '_current_job_id', '_components')
	LOOP
		EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
	END LOOP;
END $$;
