/* jobq--0.1.0--0.2.0.sql: from 0.1.0 to 0.2.0 */

\echo Use "ALTER EXTENSION jobq UPDATE" to load this file. \quit

/* ---------------------------------------------------------------------
 * Permissions on kinds and queues
 *
 * Kinds and queues have owners, like tables.  Using one -- enqueueing a
 * kind, enqueueing into a queue, scheduling a kind, registering a kind on a
 * queue -- needs the privileges of its owner or a grant.  A kind's handler
 * runs as the role that enqueues: when the kind's owner does not have that
 * role's privileges, it would gain them through its handler, so such an
 * enqueue also needs a grant made by a role that does have them (a
 * superuser, typically).  jobq.grants holds the grants; grantee 0 ('-')
 * is PUBLIC.  Roles are regrole, as in the other tables: a dump names them
 * (a restore into another cluster finds the same roles, not whatever has
 * the OID there), and pg_upgrade accepts regrole (it keeps role OIDs).
 *
 * As in 0.1.0, internal helpers called only by internal functions (which
 * pin search_path, and are not executable by PUBLIC) have no SET clause of
 * their own: it would cost a GUC save and restore on every enqueue.
 * --------------------------------------------------------------------- */

CREATE TABLE jobq.grants (
	object_type text NOT NULL CHECK (object_type IN ('kind', 'queue', 'work')),
	object_name text NOT NULL,
	grantee		regrole NOT NULL,
	granted_by	regrole NOT NULL,
	granted_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (object_type, object_name, grantee)
);
COMMENT ON TABLE jobq.grants IS
	'Who may use a kind or queue, or work an external kind (''work''), besides its owner''s members (grantee 0, shown as -: PUBLIC)';
REVOKE ALL ON jobq.grants FROM PUBLIC;
GRANT SELECT ON jobq.grants TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('jobq.grants',
	'WHERE NOT (object_type = ''queue'' AND object_name = ''default'' AND grantee = 0)');

/* Everyone may use the default queue, as before. */
INSERT INTO jobq.grants (object_type, object_name, grantee, granted_by)
SELECT 'queue', 'default', 0, q.owner FROM jobq.queues q WHERE q.name = 'default';

/* How messages name a kind or a queue. */
CREATE FUNCTION jobq._object_label(object_type text, object_name text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT format(CASE object_type WHEN 'kind' THEN 'job kind "%s"'
								   WHEN 'work' THEN 'working job kind "%s"'
								   ELSE 'queue "%s"' END, object_name)
$$;

/*
 * Whether a grant of the object to caller (to it, a role it has the
 * privileges of, or PUBLIC) was made by a role with the privileges of
 * granted_by_of.
 */
CREATE FUNCTION jobq._granted(caller regrole, object_type text, object_name text,
							  granted_by_of regrole)
RETURNS boolean LANGUAGE sql STABLE AS $$
	SELECT EXISTS (
		SELECT FROM jobq.grants g
		 WHERE g.object_type = _granted.object_type
		   AND g.object_name = _granted.object_name
		   AND (g.grantee = 0 OR pg_has_role(caller, g.grantee, 'USAGE'))
		   AND pg_has_role(g.granted_by, granted_by_of, 'USAGE'))
$$;

/*
 * Whether caller may use an object owned by owner: it has the owner's
 * privileges, or holds a grant made by a role with the owner's privileges.
 * With run_as_caller (a kind: the owner's code will run as caller) an
 * owner without the caller's privileges also needs such a grant made by a
 * role with the caller's privileges.
 */
CREATE FUNCTION jobq._check_use(caller regrole, object_type text, object_name text,
								owner regrole, run_as_caller boolean)
RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
	IF NOT pg_has_role(caller, owner, 'USAGE')
	   AND NOT jobq._granted(caller, object_type, object_name, owner) THEN
		RAISE EXCEPTION 'permission denied for %', jobq._object_label(object_type, object_name)
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It belongs to role %s.', owner),
				  HINT = format('Its owner can allow it with jobq.grant(%L, %L, %L).',
								object_type, object_name, caller::text);
	END IF;
	IF run_as_caller AND NOT pg_has_role(owner, caller, 'USAGE')
	   AND NOT jobq._granted(caller, object_type, object_name, caller) THEN
		RAISE EXCEPTION 'permission denied for %', jobq._object_label(object_type, object_name)
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('Its handler belongs to role %s, which does not have the privileges of role %s; running it as %s would give them to it.',
								  owner, caller, caller),
				  HINT = format('A role with the privileges of %s (a superuser, say) can allow it with jobq.grant(%L, %L, %L).',
								caller, object_type, object_name, caller::text);
	END IF;
END $$;

/* The owner of a kind or queue, or an error naming what does not exist. */
CREATE FUNCTION jobq._owner_of(object_type text, object_name text) RETURNS regrole
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	o regrole;
BEGIN
	IF object_type IN ('kind', 'work') THEN
		SELECT h.owner INTO o FROM jobq.handlers h WHERE h.kind = object_name;
	ELSIF object_type = 'queue' THEN
		SELECT q.owner INTO o FROM jobq.queues q WHERE q.name = object_name;
	ELSE
		RAISE EXCEPTION 'cannot grant on "%"', object_type
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Grants are on a ''kind'', a ''queue'', or ''work'' (claiming and finishing the jobs of an external kind).';
	END IF;
	IF o IS NULL THEN
		RAISE EXCEPTION '% does not exist', jobq._object_label(object_type, object_name)
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN o;
END $$;

/* A grantee as an oid: a role name, or PUBLIC (0). */
CREATE FUNCTION jobq._grantee(grantee text) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r oid;
BEGIN
	IF grantee IS NULL THEN
		RAISE EXCEPTION 'grantee must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF lower(grantee) = 'public' THEN
		RETURN 0;
	END IF;
	SELECT a.oid INTO r FROM pg_roles a WHERE a.rolname = grantee;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'role "%" does not exist', grantee USING ERRCODE = 'undefined_object';
	END IF;
	RETURN r;
END $$;

CREATE FUNCTION jobq._grant(caller regrole, object_type text, object_name text, grantee text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	owner regrole := jobq._owner_of(object_type, object_name);
	r oid := jobq._grantee(grantee);
BEGIN
	PERFORM jobq._check_member(caller, owner, jobq._object_label(object_type, object_name));
	INSERT INTO jobq.grants AS g (object_type, object_name, grantee, granted_by)
	VALUES (object_type, object_name, r, caller)
	ON CONFLICT ON CONSTRAINT grants_pkey DO UPDATE
	   SET granted_by = excluded.granted_by, granted_at = excluded.granted_at;
END $$;
CREATE FUNCTION jobq.grant(object_type text, object_name text, grantee text) RETURNS void
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.grant(text, text, text) IS
	'Lets a role (or PUBLIC) use a kind (enqueue, schedule) or a queue (enqueue into, register on) the caller owns';

CREATE FUNCTION jobq._revoke(caller regrole, object_type text, object_name text, grantee text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	owner regrole := jobq._owner_of(object_type, object_name);
	r oid := jobq._grantee(grantee);
BEGIN
	PERFORM jobq._check_member(caller, owner, jobq._object_label(object_type, object_name));
	DELETE FROM jobq.grants g
	 WHERE g.object_type = _revoke.object_type AND g.object_name = _revoke.object_name
	   AND g.grantee = r;
	RETURN FOUND;
END $$;
CREATE FUNCTION jobq.revoke(object_type text, object_name text, grantee text) RETURNS boolean
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.revoke(text, text, text) IS
	'Takes back a grant made with jobq.grant(); false if there was none';

/* ---------------------------------------------------------------------
 * Enqueueing checks who may use the kind and the queue
 * --------------------------------------------------------------------- */

DROP FUNCTION jobq._new_job(text, timestamptz, text, integer, integer);
/* whether the queue is paused: its new jobs wake no worker (resume does) */
ALTER TYPE jobq._new_job ADD ATTRIBUTE paused boolean;
/* whether its kind is worked by external workers (jobq.claim) */
ALTER TYPE jobq._new_job ADD ATTRIBUTE external boolean;
CREATE FUNCTION jobq._new_job(caller regrole, kind text, run_at timestamptz, queue text,
							  priority integer, max_attempts integer)
RETURNS jobq._new_job LANGUAGE plpgsql STABLE AS $$
DECLARE
	h jobq.handlers;
	j jobq._new_job;
	q regrole;
BEGIN
	h := jobq._handler_of(kind);
	/*
	 * An owner using its own kind and queue needs no look at the grants.
	 * An external kind runs no code as the caller.
	 */
	j.external := h.handler IS NULL;
	IF h.owner <> caller THEN
		PERFORM jobq._check_use(caller, 'kind', kind, h.owner, NOT j.external);
	END IF;
	j.queue := coalesce(queue, h.queue);
	PERFORM jobq._check_queue(j.queue);
	SELECT qs.owner, qs.paused INTO q, j.paused FROM jobq.queues qs WHERE qs.name = j.queue;
	IF q <> caller THEN
		PERFORM jobq._check_use(caller, 'queue', j.queue, q, false);
	END IF;
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
REVOKE ALL ON FUNCTION jobq._new_job(regrole, text, timestamptz, text, integer, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION jobq._enqueue(caller regrole, kind text, args jsonb, run_at timestamptz,
										 queue text, priority integer, max_attempts integer,
										 unique_key text)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
	j jobq._new_job;
	job_id bigint;
BEGIN
	j := jobq._new_job(caller, kind, run_at, queue, priority, max_attempts);
	args := coalesce(args, '{}');
	PERFORM jobq._check_args(args);

	IF unique_key IS NULL THEN
		INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at,
							   owner, external)
		VALUES (kind, args, j.queue, j.priority, j.state, j.max_attempts, j.scheduled_at,
				caller, j.external)
		RETURNING id INTO job_id;
	ELSE
		/*
		 * The unique index decides between concurrent enqueuers; the loser
		 * returns the winner's job.  The loop covers that job becoming final
		 * between our insert attempt and our look-up.
		 */
		LOOP
			INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts,
								   scheduled_at, owner, unique_key, external)
			VALUES (kind, args, j.queue, j.priority, j.state, j.max_attempts,
					j.scheduled_at, caller, unique_key, j.external)
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
	/* jobq's workers do not run external jobs: waiting claims are woken */
	PERFORM jobq._wake_for(j.state, CASE WHEN j.paused OR j.external THEN 0 ELSE 1 END);
	RETURN job_id;
END $$;

CREATE OR REPLACE FUNCTION jobq._enqueue_many(caller regrole, kind text, args jsonb[], run_at timestamptz,
											  queue text, priority integer, max_attempts integer)
RETURNS bigint[] LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq._new_job;
	ids bigint[];
	bad integer;
BEGIN
	j := jobq._new_job(caller, kind, run_at, queue, priority, max_attempts);
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
		INSERT INTO jobq.jobs (kind, args, queue, priority, state, max_attempts, scheduled_at,
							   owner, external)
		SELECT kind, coalesce(a.v, '{}'), j.queue, j.priority, j.state, j.max_attempts,
			   j.scheduled_at, caller, j.external
		  FROM unnest(args) WITH ORDINALITY AS a(v, n)
		 ORDER BY a.n
		RETURNING id)
	SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM inserted;
	PERFORM jobq._wake_for(j.state, CASE WHEN j.paused OR j.external THEN 0 ELSE cardinality(ids) END);
	RETURN ids;
END $$;

/* (jobq._schedule: see "Cron time zones" below) */

/* ---------------------------------------------------------------------
 * Registering: the queue must be usable, the handler's schema too, and a
 * timeout is positive the way the worker measures it
 * --------------------------------------------------------------------- */

/* What registering any kind checks: its name, queue and defaults. */
CREATE FUNCTION jobq._check_kind(caller regrole, kind text, queue text, max_attempts integer,
								 priority integer, backoff_max interval)
RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
	queue_owner regrole;
BEGIN
	IF kind IS NULL OR kind = '' THEN
		RAISE EXCEPTION 'job kind must not be null or empty' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF octet_length(kind) > 128 THEN
		RAISE EXCEPTION 'job kind is too long'
			USING ERRCODE = 'string_data_right_truncation',
				  DETAIL = format('A kind is at most 128 bytes; this one has %s.', octet_length(kind));
	END IF;
	PERFORM jobq._check_queue(queue);
	SELECT q.owner INTO queue_owner FROM jobq.queues q WHERE q.name = _check_kind.queue;
	PERFORM jobq._check_use(caller, 'queue', queue, queue_owner, false);
	PERFORM jobq._check_max_attempts(max_attempts);
	PERFORM jobq._check_priority(priority);
	IF max_attempts IS NULL OR priority IS NULL THEN
		RAISE EXCEPTION 'max_attempts and priority must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF extract(epoch FROM backoff_max) < 0 THEN
		RAISE EXCEPTION 'backoff_max must not be negative, not %', backoff_max
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END $$;

/* A positive interval, as the worker measures it (a month is not always 30 days here). */
CREATE FUNCTION jobq._check_positive(what text, span interval) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF span IS NULL THEN
		RAISE EXCEPTION '% must not be null', what USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF extract(epoch FROM span) <= 0 THEN
		RAISE EXCEPTION '% must be positive, not %', what, span
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END $$;

/*
 * Registers or re-registers a kind: handler NULL and a lease for one
 * worked by external workers.  Its waiting jobs follow it: a kind that
 * moves between the servers' workers and external ones takes them along
 * (running ones end where they run).
 */
CREATE FUNCTION jobq._save_kind(caller regrole, kind text, handler text, queue text,
								max_attempts integer, timeout interval, priority integer,
								backoff_max interval, lease interval)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
	old jobq.handlers;
	existed boolean;
BEGIN
	SELECT * INTO old FROM jobq.handlers h WHERE h.kind = _save_kind.kind FOR UPDATE;
	existed := FOUND;
	IF existed THEN
		PERFORM jobq._check_member(caller, old.owner, format('job kind "%s"', kind));
	END IF;
	INSERT INTO jobq.handlers AS h (kind, handler, queue, max_attempts, timeout,
									priority, backoff_max, owner, lease)
	VALUES (kind, handler, queue, max_attempts, timeout, priority, backoff_max, caller, lease)
	ON CONFLICT (kind) DO UPDATE
	   SET handler = excluded.handler, queue = excluded.queue,
		   max_attempts = excluded.max_attempts, timeout = excluded.timeout,
		   priority = excluded.priority, backoff_max = excluded.backoff_max,
		   lease = excluded.lease, registered_at = now();
	IF existed AND (old.handler IS NULL) <> (handler IS NULL) THEN
		UPDATE jobq.jobs j SET external = (_save_kind.handler IS NULL)
		 WHERE j.kind = _save_kind.kind AND j.state IN ('scheduled', 'available', 'retryable');
		PERFORM jobq._wake_workers_at_commit(1);
	END IF;
	PERFORM jobq._config_changed();
END $$;

CREATE OR REPLACE FUNCTION jobq._register(caller regrole, kind text, handler regprocedure,
										  queue text, max_attempts integer, timeout interval,
										  priority integer, backoff_max interval)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p pg_proc;
	rettype_kind "char";
BEGIN
	PERFORM jobq._check_kind(caller, kind, queue, max_attempts, priority, backoff_max);
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
	/* as for a call by name: usage of the schema, and execute */
	IF NOT has_schema_privilege(caller, p.pronamespace, 'USAGE') THEN
		RAISE EXCEPTION 'permission denied for schema %', p.pronamespace::regnamespace
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('Role %s may not use the schema of the handler it registers.', caller);
	END IF;
	IF NOT has_function_privilege(caller, handler, 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for function %', handler
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('Role %s may not execute the handler it registers.', caller);
	END IF;
	PERFORM jobq._check_positive('timeout', timeout);
	PERFORM jobq._save_kind(caller, kind,
							(pg_identify_object('pg_proc'::regclass, handler, 0)).identity,
							queue, max_attempts, timeout, priority, backoff_max, NULL);
END $$;

/* Grants on a kind or queue go with it. */
CREATE OR REPLACE FUNCTION jobq._unregister(caller regrole, kind text) RETURNS void
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
	DELETE FROM jobq.grants g
	 WHERE g.object_type IN ('kind', 'work') AND g.object_name = _unregister.kind;
	PERFORM jobq._config_changed();
END $$;

CREATE OR REPLACE FUNCTION jobq._drop_queue(caller regrole, queue text) RETURNS void
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
	DELETE FROM jobq.grants g WHERE g.object_type = 'queue' AND g.object_name = _drop_queue.queue;
	PERFORM jobq._config_changed();
END $$;

/* ---------------------------------------------------------------------
 * Who sees and changes which jobs: the job's owner; for seeing and
 * cancelling also the owners of its queue and of its kind; for seeing
 * also members of pg_read_all_stats (as pg_stat_activity does).
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._sees_job(owner regrole, queue text, kind text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT EXISTS (SELECT FROM jobq.queues q
					WHERE q.name = _sees_job.queue AND pg_has_role(q.owner, 'USAGE'))
		OR EXISTS (SELECT FROM jobq.handlers h
					WHERE h.kind = _sees_job.kind AND pg_has_role(h.owner, 'USAGE'))
$$;

DROP POLICY jobs_of_my_roles ON jobq.jobs;
/* the common case first: no function call for a role's own jobs */
CREATE POLICY jobs_visible ON jobq.jobs FOR SELECT
	USING (pg_catalog.pg_has_role(owner, 'USAGE')
		   OR pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
		   OR jobq._sees_job(owner, queue, kind));

DROP FUNCTION jobq._job_for_change(regrole, bigint);
/*
 * A job the caller may change, or an error.  Not locked: a running job
 * must never be locked by a session that may stay open (its worker would
 * wait to record the outcome); the changes below re-check its state.
 */
CREATE FUNCTION jobq._job_for_change(caller regrole, id bigint, cancelling boolean)
RETURNS jobq.jobs LANGUAGE plpgsql STABLE AS $$
DECLARE
	j jobq.jobs;
BEGIN
	IF id IS NULL THEN
		RAISE EXCEPTION 'job id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT * INTO j FROM jobq.jobs WHERE jobs.id = _job_for_change.id;
	/* jobs the caller may not change do not exist for it */
	IF NOT FOUND OR NOT (pg_has_role(caller, j.owner, 'USAGE')
						 OR (cancelling AND (
							 EXISTS (SELECT FROM jobq.queues q WHERE q.name = j.queue
									  AND pg_has_role(caller, q.owner, 'USAGE'))
							 OR EXISTS (SELECT FROM jobq.handlers h WHERE h.kind = j.kind
										 AND pg_has_role(caller, h.owner, 'USAGE'))))) THEN
		RAISE EXCEPTION 'job % does not exist', id USING ERRCODE = 'undefined_object';
	END IF;
	RETURN j;
END $$;
REVOKE ALL ON FUNCTION jobq._job_for_change(regrole, bigint, boolean) FROM PUBLIC;

CREATE FUNCTION jobq._cancel_running_at_commit(id bigint) RETURNS void
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'jobq_cancel_running_at_commit_sql';
REVOKE ALL ON FUNCTION jobq._cancel_running_at_commit(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION jobq._cancel(caller regrole, id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq.jobs;
	was jobq.job_state;
BEGIN
	j := jobq._job_for_change(caller, id, true);
	WITH old AS (
		SELECT o.id, o.state FROM jobq.jobs o
		 WHERE o.id = j.id AND o.state IN ('scheduled', 'available', 'running', 'retryable')
		   FOR UPDATE)
	UPDATE jobq.jobs SET state = 'cancelled', finalized_at = now()
	  FROM old WHERE jobs.id = old.id
	RETURNING old.state INTO was;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	/*
	 * A running job's handler is interrupted once this commits, and its
	 * worker terminated if it does not stop; the worker finds the job
	 * cancelled when it goes to record the outcome, and rolls its effects
	 * back.
	 */
	IF was = 'running' THEN
		PERFORM jobq._cancel_running_at_commit(j.id);
	END IF;
	PERFORM jobq._jobs_finished_at_commit();
	RETURN true;
END $$;

/*
 * retry takes a running job no live worker holds (a stuck job), or an
 * external job whose lease expired, as the rescuer would; a job a live
 * worker or an unexpired lease holds is left to it.
 */
CREATE FUNCTION jobq._claim_is_live(claim bigint) RETURNS boolean
	LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'jobq_claim_is_live_sql';
REVOKE ALL ON FUNCTION jobq._claim_is_live(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION jobq._retry(caller regrole, id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	j jobq.jobs;
BEGIN
	j := jobq._job_for_change(caller, id, false);
	/* the state test comes before the row lock: held jobs are not locked */
	UPDATE jobq.jobs
	   SET state = 'available', scheduled_at = now(), finalized_at = NULL,
		   max_attempts = greatest(max_attempts, attempt + 1)
	 WHERE jobs.id = j.id
	   AND (state NOT IN ('available', 'running')
			OR (state = 'running'
				AND CASE WHEN external THEN lease_until < clock_timestamp()
						 ELSE NOT jobq._claim_is_live(attempted_by) END));
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	PERFORM jobq._wake_workers_at_commit(1);
	RETURN true;
END $$;
COMMENT ON FUNCTION jobq.retry(bigint) IS
	'Makes a waiting, final or stuck (running with no live worker, or an expired lease) job available now, granting one more attempt if it had none left; false if it is available or a worker or lease holds it';

/* ---------------------------------------------------------------------
 * Functions any role may call resolve names as jobq chose, not through
 * the caller's search_path
 * --------------------------------------------------------------------- */

/*
 * current_job() runs once or more per job, inside handlers: its names are
 * qualified instead (a SET clause would cost a GUC save and restore per
 * call).  PL/pgSQL re-parses it under the caller's search_path, which can
 * then change nothing.
 */
CREATE OR REPLACE FUNCTION jobq.current_job() RETURNS jobq.jobs
LANGUAGE plpgsql STABLE AS $$
DECLARE
	job jobq.jobs;
BEGIN
	SELECT * INTO job FROM jobq.jobs
	 WHERE id OPERATOR(pg_catalog.=) jobq._current_job_id();
	RETURN job;
END $$;
ALTER FUNCTION jobq.enqueue_trigger() SET search_path = pg_catalog, pg_temp;

/* ---------------------------------------------------------------------
 * Roles owning jobq objects: DROP ROLE, REASSIGN OWNED, DROP OWNED
 * (called by the utility hook, see src/ddl.c)
 * --------------------------------------------------------------------- */

/* What a role owns in jobq in this database, as a description, or NULL. */
CREATE FUNCTION jobq._owned_by(role oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT nullif(concat_ws(', ',
		(SELECT format('%s job kinds', count(*)) FROM jobq.handlers h
		  WHERE h.owner::oid = role HAVING count(*) > 0),
		(SELECT format('%s queues', count(*)) FROM jobq.queues q
		  WHERE q.owner::oid = role HAVING count(*) > 0),
		(SELECT format('%s schedules', count(*)) FROM jobq.schedules s
		  WHERE s.owner::oid = role HAVING count(*) > 0),
		(SELECT format('%s grants', count(*)) FROM jobq.grants g
		  WHERE g.grantee = role OR g.granted_by = role HAVING count(*) > 0),
		(SELECT format('%s jobs that are not final', count(*)) FROM jobq.jobs j
		  WHERE j.owner::oid = role
			AND j.state IN ('scheduled', 'available', 'running', 'retryable')
		 HAVING count(*) > 0)), '')
$$;

CREATE FUNCTION jobq._reassign_owned(old_role oid, new_role oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	UPDATE jobq.handlers SET owner = new_role::regrole WHERE owner::oid = old_role;
	UPDATE jobq.queues SET owner = new_role::regrole WHERE owner::oid = old_role;
	UPDATE jobq.schedules SET owner = new_role::regrole WHERE owner::oid = old_role;
	UPDATE jobq.grants SET granted_by = new_role WHERE granted_by = old_role;
	/* final jobs too: their owner column must name a role that exists */
	UPDATE jobq.jobs SET owner = new_role::regrole WHERE owner::oid = old_role;
	PERFORM jobq._config_changed();
END $$;

/*
 * DROP OWNED: the role's kinds, queues, schedules and grants go; its live
 * jobs, and those of its kinds and queues, end cancelled.  With
 * forget_jobs (DROP ROLE, once nothing live is left) its final jobs go too.
 */
CREATE FUNCTION jobq._drop_owned(role oid, forget_jobs boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	cancelled_running bigint[];
BEGIN
	WITH gone AS (
		UPDATE jobq.jobs j SET state = 'cancelled', finalized_at = now()
		 WHERE j.state IN ('scheduled', 'available', 'running', 'retryable')
		   AND (j.owner::oid = role
				OR j.kind IN (SELECT h.kind FROM jobq.handlers h WHERE h.owner::oid = role)
				OR j.queue IN (SELECT q.name FROM jobq.queues q WHERE q.owner::oid = role))
		RETURNING j.id)
	SELECT array_agg(id) INTO cancelled_running FROM gone;
	/* the workers of those that were running stop them */
	PERFORM jobq._cancel_running_at_commit(x) FROM unnest(cancelled_running) AS x;
	IF forget_jobs THEN
		DELETE FROM jobq.jobs j WHERE j.owner::oid = role;
	END IF;
	DELETE FROM jobq.schedules s
	 WHERE s.owner::oid = role
		OR s.kind IN (SELECT h.kind FROM jobq.handlers h WHERE h.owner::oid = role);
	DELETE FROM jobq.grants g
	 WHERE g.grantee = role OR g.granted_by = role
		OR (g.object_type IN ('kind', 'work')
			AND g.object_name IN (SELECT h.kind FROM jobq.handlers h WHERE h.owner::oid = role))
		OR (g.object_type = 'queue'
			AND g.object_name IN (SELECT q.name FROM jobq.queues q WHERE q.owner::oid = role));
	DELETE FROM jobq.handlers h WHERE h.owner::oid = role;
	/* a queue that another role's kind still defaults to stays, given to that kind's owner */
	UPDATE jobq.queues q SET owner = (SELECT h.owner FROM jobq.handlers h WHERE h.queue = q.name LIMIT 1)
	 WHERE q.owner::oid = role AND EXISTS (SELECT FROM jobq.handlers h WHERE h.queue = q.name);
	DELETE FROM jobq.queues q WHERE q.owner::oid = role AND q.name <> 'default';
	PERFORM jobq._jobs_finished_at_commit();
	PERFORM jobq._config_changed();
END $$;

REVOKE ALL ON FUNCTION jobq._object_label(text, text),
	jobq._granted(regrole, text, text, regrole),
	jobq._check_use(regrole, text, text, regrole, boolean),
	jobq._owner_of(text, text), jobq._grantee(text),
	jobq._grant(regrole, text, text, text), jobq._revoke(regrole, text, text, text),
	jobq._owned_by(oid), jobq._reassign_owned(oid, oid), jobq._drop_owned(oid, boolean)
	FROM PUBLIC;
/* the RLS policy calls it as the reading role */
GRANT EXECUTE ON FUNCTION jobq._sees_job(regrole, text, text) TO PUBLIC;

/* ---------------------------------------------------------------------
 * jobq.components shows the claim a worker holds (what attempted_by of
 * its running jobs is) and when it started the job it runs.  Its job_id is shown only to roles that may see
 * the job (see views.c).
 * --------------------------------------------------------------------- */

DROP VIEW jobq.components;
DROP FUNCTION jobq._components();
CREATE FUNCTION jobq._components(
	OUT database name, OUT component text, OUT pid integer, OUT state text,
	OUT job_id bigint, OUT incarnation bigint, OUT started_at timestamptz,
	OUT heartbeat_at timestamptz, OUT restarts integer, OUT last_error text,
	OUT last_error_at timestamptz, OUT jobs_done bigint, OUT jobs_failed bigint,
	OUT claim bigint, OUT job_started_at timestamptz)
RETURNS SETOF record LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_components';

CREATE VIEW jobq.components AS SELECT * FROM jobq._components();
COMMENT ON VIEW jobq.components IS
	'One row per jobq process and leader service: state, current job, restarts, last error';
GRANT SELECT ON jobq.components TO PUBLIC;

/* ---------------------------------------------------------------------
 * Handlers stop their own job: give up, snooze, cancel (src/job_control.c)
 * --------------------------------------------------------------------- */

ALTER TABLE jobq.jobs ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN jobq.jobs.snoozes IS
	'How often the handler snoozed the job (jobq.snooze); a snooze does not count as an attempt';

CREATE FUNCTION jobq.give_up(reason text) RETURNS void
	LANGUAGE C CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'jobq_give_up';
COMMENT ON FUNCTION jobq.give_up(text) IS
	'In a handler: ends it and discards its job now, effects rolled back, reason recorded in errors';

CREATE FUNCTION jobq.snooze(delay interval) RETURNS void
	LANGUAGE C CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'jobq_snooze_for';
COMMENT ON FUNCTION jobq.snooze(interval) IS
	'In a handler: ends it, effects rolled back; its job runs again after delay, the attempt not counted';

CREATE FUNCTION jobq.snooze(run_at timestamptz) RETURNS void
	LANGUAGE C CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'jobq_snooze_until';
COMMENT ON FUNCTION jobq.snooze(timestamptz) IS
	'In a handler: ends it, effects rolled back; its job runs again at run_at, the attempt not counted';

/* ---------------------------------------------------------------------
 * Plans of the hot path (src/plans.c)
 * --------------------------------------------------------------------- */

/* the workers' own claim statement (src/worker.c), for the isolation tests */
CREATE OR REPLACE FUNCTION jobq._claim(worker bigint, queue text, max_jobs bigint,
									   alone_kinds text[], max_alone integer)
RETURNS TABLE (id bigint, kind text, args jsonb, owner oid, attempt integer,
			   max_attempts integer, alone boolean)
LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'jobq_claim_sql';

CREATE FUNCTION jobq._hot_path_plans(OUT statement text, OUT plan text)
RETURNS SETOF record LANGUAGE C
SET search_path = pg_catalog
AS 'MODULE_PATHNAME', 'jobq_hot_path_plans';
COMMENT ON FUNCTION jobq._hot_path_plans() IS
	'The generic plan of every statement of jobq''s hot path under the statistics of the moment';
REVOKE ALL ON FUNCTION jobq._hot_path_plans() FROM PUBLIC;

/*
 * Every UPDATE of a job checked its CHECK constraints again, rebuilding
 * their expressions per statement (about a tenth of a worker's time per
 * job).  The values come only through the API, which validates them with
 * clear errors (_check_priority, _check_max_attempts).
 */
ALTER TABLE jobq.jobs DROP CONSTRAINT jobs_max_attempts_check,
					  DROP CONSTRAINT jobs_priority_check;

/* ---------------------------------------------------------------------
 * Handlers by signature (issue 11)
 * --------------------------------------------------------------------- */

/*
 * A regprocedure column makes pg_upgrade refuse the cluster (function OIDs
 * are not preserved).  The handler is its function's qualified signature,
 * as pg_identify_object() spells it; the workers resolve it by that name, so
 * a function dropped and created again, a restore and pg_upgrade all find
 * it.  A handler that no longer exists keeps a name that resolves to
 * nothing.
 */
ALTER TABLE jobq.handlers ALTER COLUMN handler TYPE text
	USING coalesce((pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,
												   handler::pg_catalog.oid, 0)).identity,
				   pg_catalog.format('jobq.%I(pg_catalog.jsonb)', 'dropped function ' || handler::pg_catalog.oid));
COMMENT ON COLUMN jobq.handlers.handler IS
	'The handler''s qualified signature; resolved by name when the kind''s jobs run';

/*
 * A registered handler cannot be dropped (as a function a view uses
 * cannot): its kind's jobs would fail and be discarded.  This sees every
 * drop, cascaded ones included.
 */
CREATE FUNCTION jobq._refuse_handler_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	k text;
	f text;
BEGIN
	SELECT h.kind, h.handler INTO k, f
	  FROM pg_event_trigger_dropped_objects() d
	  JOIN jobq.handlers h ON h.handler = d.object_identity
	 WHERE d.classid = 'pg_proc'::regclass
	 ORDER BY h.kind
	 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'cannot drop function % because it is the handler of job kind "%"', f, k
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = format('Unregister the kind first (jobq.unregister(%L)), or change the function with CREATE OR REPLACE.', k);
	END IF;
END $$;
REVOKE ALL ON FUNCTION jobq._refuse_handler_drop() FROM PUBLIC;
CREATE EVENT TRIGGER jobq_refuse_handler_drop ON sql_drop
	EXECUTE FUNCTION jobq._refuse_handler_drop();

/*
 * pg_dump reads the sequence behind job ids: without this a database
 * owner's dump fails, and a dump that skips it restores a sequence behind
 * the ids it restores.  (Its value tells no more than the ids do.)
 */
GRANT SELECT ON SEQUENCE jobq.jobs_id_seq TO pg_database_owner;

/* ---------------------------------------------------------------------
 * Waiting (issue 11): a default timeout, the result with the state, any
 * of several jobs; a waiting backend whose client left ends (src/api.c)
 * --------------------------------------------------------------------- */

CREATE OR REPLACE FUNCTION jobq.wait(id bigint, timeout interval DEFAULT '30 seconds')
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_wait';
COMMENT ON FUNCTION jobq.wait(bigint, interval) IS
	'Waits until a job is final or the timeout passes (default 30 s, NULL: none); returns its state';

CREATE FUNCTION jobq.wait_result(id bigint, timeout interval DEFAULT '30 seconds',
								 OUT state jobq.job_state, OUT result jsonb, OUT error jsonb)
RETURNS record LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_wait_result';
COMMENT ON FUNCTION jobq.wait_result(bigint, interval) IS
	'Waits until a job is final or the timeout passes (default 30 s, NULL: none); returns its state, result and last error entry';

CREATE FUNCTION jobq.wait_any(ids bigint[], timeout interval DEFAULT '30 seconds')
RETURNS TABLE (id bigint, state jobq.job_state, result jsonb, error jsonb)
LANGUAGE C ROWS 1 AS 'MODULE_PATHNAME', 'jobq_wait_any';
COMMENT ON FUNCTION jobq.wait_any(bigint[], interval) IS
	'Waits until one of the jobs is final or the timeout passes (default 30 s, NULL: none); returns the jobs that are final then (none at the timeout)';

/* ---------------------------------------------------------------------
 * Cron time zones (issue 11): a schedule's fields may be local times of a
 * zone, kept in its cron expression as a CRON_TZ= prefix (src/cron.c), so
 * that the one column keeps all of it and the leader's statements stay
 * the same
 * --------------------------------------------------------------------- */

DROP FUNCTION jobq.schedule(text, text, text, jsonb, text, integer, integer);
DROP FUNCTION jobq._schedule(regrole, text, text, text, jsonb, text, integer, integer);

CREATE FUNCTION jobq._schedule(caller regrole, name text, cron text, kind text, args jsonb,
							   queue text, priority integer, max_attempts integer, timezone text)
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
	IF timezone IS NOT NULL THEN
		IF cron ~* '^\s*CRON_TZ=' THEN
			RAISE EXCEPTION 'cron expression "%" already names a time zone', cron
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give the time zone either as CRON_TZ= or as timezone, not both.';
		END IF;
		IF timezone !~ '^[A-Za-z0-9_+/-]+$' THEN
			RAISE EXCEPTION 'time zone "%" is not recognized', timezone
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		cron := format('CRON_TZ=%s %s', timezone, cron);
	END IF;
	next_fire := jobq._cron_next(cron, now());
	PERFORM jobq._new_job(caller, kind, NULL, queue, priority, max_attempts);
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
REVOKE ALL ON FUNCTION jobq._schedule(regrole, text, text, text, jsonb, text, integer, integer, text) FROM PUBLIC;

CREATE FUNCTION jobq.schedule(name text, cron text, kind text, args jsonb DEFAULT '{}',
							  queue text DEFAULT NULL, priority integer DEFAULT NULL,
							  max_attempts integer DEFAULT NULL, timezone text DEFAULT NULL)
RETURNS timestamptz LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.schedule(text, text, text, jsonb, text, integer, integer, text) IS
	'Creates or replaces a periodic job: one job of kind per fire time of a 5-field cron expression (UTC, or local times of timezone); returns the first fire time';

/* ---------------------------------------------------------------------
 * Counters for monitoring (issue 11, src/metrics.c): attempts that ended
 * on a worker, per queue and kind, with a histogram of their durations.
 * Each worker adds its batches' counts to its own rows (worker), in the
 * batch's transaction.  Dumped with the jobs, so a restore keeps counting.
 * --------------------------------------------------------------------- */

CREATE FUNCTION jobq._duration_bounds() RETURNS float8[]
	LANGUAGE C IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'jobq_duration_bounds';
COMMENT ON FUNCTION jobq._duration_bounds() IS
	'Upper bounds, in seconds, of the buckets of jobq.job_counts.duration_buckets';

CREATE TABLE jobq.job_counts (
	queue		text NOT NULL,
	kind		text NOT NULL,
	worker		integer NOT NULL,
	completed	bigint NOT NULL,
	failed		bigint NOT NULL,
	duration_buckets bigint[] NOT NULL,
	duration_sum float8 NOT NULL,
	PRIMARY KEY (queue, kind, worker)
);
COMMENT ON TABLE jobq.job_counts IS
	'Attempts that ended on each worker, per queue and kind, since the extension was created; see jobq.job_metrics';
COMMENT ON COLUMN jobq.job_counts.duration_buckets IS
	'Attempts per duration bucket: element i counts those up to jobq._duration_bounds()[i] seconds (and above the one before), the last those longer';
REVOKE ALL ON jobq.job_counts FROM PUBLIC;
GRANT SELECT ON jobq.job_counts TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('jobq.job_counts', '');

CREATE VIEW jobq.job_metrics AS
SELECT c.queue, c.kind, c.completed, c.failed,
	   c.completed + c.failed AS duration_count, c.duration_sum,
	   jobq._duration_bounds() AS duration_bounds,
	   b.cumulative AS duration_buckets
  FROM (SELECT queue, kind, sum(completed)::bigint AS completed, sum(failed)::bigint AS failed,
			   sum(duration_sum) AS duration_sum
		  FROM jobq.job_counts
		 GROUP BY queue, kind) c
 CROSS JOIN LATERAL (
	SELECT array_agg(s.running ORDER BY s.i) AS cumulative
	  FROM (SELECT u.i, sum(sum(u.n)) OVER (ORDER BY u.i)::bigint AS running
			  FROM jobq.job_counts x, unnest(x.duration_buckets) WITH ORDINALITY AS u (n, i)
			 WHERE x.queue = c.queue AND x.kind = c.kind
			 GROUP BY u.i) s
	 WHERE s.i <= cardinality(jobq._duration_bounds())) b;
COMMENT ON VIEW jobq.job_metrics IS
	'Per queue and kind: attempts completed and failed on workers, and their durations as a cumulative histogram (Prometheus style: duration_buckets[i] counts those up to duration_bounds[i] seconds)';
GRANT SELECT ON jobq.job_metrics TO PUBLIC;

/* ---------------------------------------------------------------------
 * External workers (issue 12, src/external.c): kinds whose jobs
 * application processes claim with jobq.claim() and finish with
 * jobq.complete/fail/give_up/snooze, holding them by a lease that
 * jobq.heartbeat() extends and whose expiry the rescuer acts on.
 * --------------------------------------------------------------------- */

/* An external kind has no handler and a lease instead. */
ALTER TABLE jobq.handlers ALTER COLUMN handler DROP NOT NULL,
	ADD COLUMN lease interval,
	ADD CONSTRAINT handlers_handler_or_lease CHECK ((handler IS NULL) = (lease IS NOT NULL));
COMMENT ON COLUMN jobq.handlers.lease IS
	'External kinds (no handler): how long a claim holds a job before the rescuer takes it back, unless extended by jobq.heartbeat()';

ALTER TABLE jobq.jobs ADD COLUMN external boolean NOT NULL DEFAULT false,
	ADD COLUMN lease_until timestamptz,
	ADD COLUMN heartbeat_at timestamptz,
	ADD COLUMN leased_by regrole,
	ADD COLUMN worker text,
	ADD COLUMN progress jsonb;
COMMENT ON COLUMN jobq.jobs.external IS
	'Worked by external workers (jobq.claim), not by the server''s workers';
COMMENT ON COLUMN jobq.jobs.lease_until IS
	'External jobs: when the lease of the claim that holds or last held it ends (attempted_by is its lease token)';
COMMENT ON COLUMN jobq.jobs.leased_by IS
	'External jobs: the role that claimed it';
COMMENT ON COLUMN jobq.jobs.worker IS
	'External jobs: the name the claiming worker gave (its application_name by default)';
COMMENT ON COLUMN jobq.jobs.progress IS
	'External jobs: what the worker last reported with jobq.heartbeat()';

/*
 * The claim of each side walks only its own jobs: the servers' workers
 * claim with "NOT external", external workers with "external".
 */
DROP INDEX jobq.jobs_available;
CREATE INDEX jobs_available ON jobq.jobs (queue, external, priority, scheduled_at, id)
	WHERE state = 'available';

CREATE FUNCTION jobq._register_external(caller regrole, kind text, queue text,
										max_attempts integer, lease interval, priority integer,
										backoff_max interval)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM jobq._check_kind(caller, kind, queue, max_attempts, priority, backoff_max);
	PERFORM jobq._check_positive('lease', lease);
	PERFORM jobq._save_kind(caller, kind, NULL, queue, max_attempts, lease, priority,
							backoff_max, lease);
END $$;
CREATE FUNCTION jobq.register_external(kind text, queue text DEFAULT 'default',
									   max_attempts integer DEFAULT 25,
									   lease interval DEFAULT '5 minutes',
									   priority integer DEFAULT 0,
									   backoff_max interval DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.register_external(text, text, integer, interval, integer, interval) IS
	'Registers a job kind worked by external workers (jobq.claim); its owner''s members and roles granted ''work'' may work it';

/*
 * Claiming.  jobq.claim is a C function that checks who may work which
 * kinds (below), claims as jobq's owner and, with a wait, sleeps until a
 * commit makes jobs available.
 */
/*
 * Whether caller may claim and finish the external jobs of a kind (a kind
 * moved to jobq's workers keeps its held external jobs until they end).
 */
CREATE FUNCTION jobq._may_work(caller regrole, h jobq.handlers) RETURNS boolean
LANGUAGE sql STABLE AS $$
	SELECT pg_has_role(caller, h.owner, 'USAGE') OR jobq._granted(caller, 'work', h.kind, h.owner)
$$;

/* The kinds a claim of caller takes from the queue: kinds, or all it may work. */
CREATE FUNCTION jobq._claim_kinds(caller regrole, queue text, kinds text[]) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	h jobq.handlers;
	k text;
	allowed text[];
BEGIN
	PERFORM jobq._check_queue(queue);
	IF kinds IS NULL THEN
		SELECT coalesce(array_agg(x.kind ORDER BY x.kind), '{}') INTO allowed
		  FROM jobq.handlers x WHERE x.handler IS NULL AND jobq._may_work(caller, x);
		IF allowed = '{}' THEN
			RAISE EXCEPTION 'role % may work no external job kind', caller
				USING ERRCODE = 'insufficient_privilege',
					  HINT = 'Register one with jobq.register_external(), or ask the owner of one for jobq.grant(''work'', kind, role).';
		END IF;
		RETURN allowed;
	END IF;
	FOREACH k IN ARRAY kinds LOOP
		h := jobq._handler_of(k);
		IF h.handler IS NOT NULL THEN
			RAISE EXCEPTION 'job kind "%" is not worked by external workers', k
				USING ERRCODE = 'wrong_object_type',
					  HINT = 'jobq''s own workers run its jobs; register it with jobq.register_external() to work it outside.';
		END IF;
		IF NOT jobq._may_work(caller, h) THEN
			PERFORM jobq._check_use(caller, 'work', k, h.owner, false);
		END IF;
	END LOOP;
	RETURN kinds;
END $$;

CREATE FUNCTION jobq._claim(caller regrole, queue text, max_jobs integer, wait interval,
							kinds text[], worker text)
RETURNS TABLE (id bigint, kind text, args jsonb, attempt integer, max_attempts integer,
			   lease_token bigint, lease_until timestamptz)
LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_claim_external';
CREATE FUNCTION jobq.claim(queue text DEFAULT 'default', max_jobs integer DEFAULT 1,
						   wait interval DEFAULT '0', kinds text[] DEFAULT NULL,
						   worker text DEFAULT NULL)
RETURNS TABLE (id bigint, kind text, args jsonb, attempt integer, max_attempts integer,
			   lease_token bigint, lease_until timestamptz)
LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.claim(text, integer, interval, text[], text) IS
	'External workers: claims up to max_jobs available jobs of the queue (of kinds, or every external kind the caller may work), waiting up to wait for one; each is held by its lease_token until lease_until';

/* Finishing: each checks the lease token; a stale one changes nothing. */
CREATE FUNCTION jobq._complete(caller regrole, id bigint, lease_token bigint, result jsonb)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_complete_external';
CREATE FUNCTION jobq.complete(id bigint, lease_token bigint, result jsonb DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.complete(bigint, bigint, jsonb) IS
	'External workers: completes a claimed job (in the caller''s transaction: commits with its other effects)';

/* one statement for all: planned as jobq's processes plan (src/settings.c) */
CREATE FUNCTION jobq._complete_many(caller regrole, ids bigint[], lease_tokens bigint[],
									results jsonb[])
RETURNS integer LANGUAGE C
SET enable_seqscan = off SET plan_cache_mode = force_generic_plan SET jit = off
AS 'MODULE_PATHNAME', 'jobq_complete_many_external';
CREATE FUNCTION jobq.complete_many(ids bigint[], lease_tokens bigint[], results jsonb[] DEFAULT NULL)
RETURNS integer LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.complete_many(bigint[], bigint[], jsonb[]) IS
	'External workers: completes claimed jobs (ids[i] held by lease_tokens[i], result results[i]), all or none; returns how many';

CREATE FUNCTION jobq._fail(caller regrole, id bigint, lease_token bigint, error text,
						   retry_in interval)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_fail_external';
CREATE FUNCTION jobq.fail(id bigint, lease_token bigint, error text,
						  retry_in interval DEFAULT NULL)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.fail(bigint, bigint, text, interval) IS
	'External workers: records a failed attempt; the job is retried after retry_in (default: the backoff) or discarded when out of attempts; returns its new state';
CREATE FUNCTION jobq._fail(caller regrole, id bigint, lease_token bigint, error jsonb,
						   retry_in interval)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_fail_external_jsonb';
CREATE FUNCTION jobq.fail(id bigint, lease_token bigint, error jsonb,
						  retry_in interval DEFAULT NULL)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.fail(bigint, bigint, jsonb, interval) IS
	'External workers: records a failed attempt with an error object (message, detail, hint, context, sqlstate); as fail(id, lease_token, text)';

CREATE FUNCTION jobq._give_up(caller regrole, id bigint, lease_token bigint, reason text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_give_up_external';
CREATE FUNCTION jobq.give_up(id bigint, lease_token bigint, reason text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.give_up(bigint, bigint, text) IS
	'External workers: discards a claimed job now, with the reason in its errors';

CREATE FUNCTION jobq._snooze(caller regrole, id bigint, lease_token bigint, delay interval)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_snooze_external_for';
CREATE FUNCTION jobq.snooze(id bigint, lease_token bigint, delay interval)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.snooze(bigint, bigint, interval) IS
	'External workers: gives a claimed job back to run again after delay, the attempt not counted';
CREATE FUNCTION jobq._snooze(caller regrole, id bigint, lease_token bigint, run_at timestamptz)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_snooze_external_until';
CREATE FUNCTION jobq.snooze(id bigint, lease_token bigint, run_at timestamptz)
RETURNS jobq.job_state LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.snooze(bigint, bigint, timestamptz) IS
	'External workers: gives a claimed job back to run again at run_at, the attempt not counted';

CREATE FUNCTION jobq._heartbeat(caller regrole, id bigint, lease_token bigint, extend interval,
								progress jsonb)
RETURNS timestamptz LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_heartbeat_external';
CREATE FUNCTION jobq.heartbeat(id bigint, lease_token bigint, extend interval DEFAULT NULL,
							   progress jsonb DEFAULT NULL)
RETURNS timestamptz LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_call_as_owner';
COMMENT ON FUNCTION jobq.heartbeat(bigint, bigint, interval, jsonb) IS
	'External workers: extends the lease of a claimed job to now + extend (default: its kind''s lease), records progress; returns the new lease_until';

REVOKE ALL ON FUNCTION jobq._check_kind(regrole, text, text, integer, integer, interval),
	jobq._check_positive(text, interval),
	jobq._save_kind(regrole, text, text, text, integer, interval, integer, interval, interval),
	jobq._register_external(regrole, text, text, integer, interval, integer, interval),
	jobq._may_work(regrole, jobq.handlers),
	jobq._claim_kinds(regrole, text, text[]),
	jobq._claim(regrole, text, integer, interval, text[], text),
	jobq._complete(regrole, bigint, bigint, jsonb),
	jobq._complete_many(regrole, bigint[], bigint[], jsonb[]),
	jobq._fail(regrole, bigint, bigint, text, interval),
	jobq._fail(regrole, bigint, bigint, jsonb, interval),
	jobq._give_up(regrole, bigint, bigint, text),
	jobq._snooze(regrole, bigint, bigint, interval),
	jobq._snooze(regrole, bigint, bigint, timestamptz),
	jobq._heartbeat(regrole, bigint, bigint, interval, jsonb)
	FROM PUBLIC;

/*
 * Whether the calling role sees a job (the policy of jobq.jobs): it has the
 * privileges of the job's owner or of pg_read_all_stats, owns its queue or
 * kind, or claimed it as an external worker.  Plain SQL with no SET clause,
 * so that it is inlined.
 */
CREATE FUNCTION jobq._sees(owner regrole, queue text, kind text, leased_by regrole)
RETURNS boolean LANGUAGE sql STABLE AS $$
	SELECT pg_catalog.pg_has_role(owner, 'USAGE')
		OR pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
		OR jobq._sees_job(owner, queue, kind)
		OR (leased_by IS NOT NULL AND pg_catalog.pg_has_role(leased_by, 'USAGE'))
$$;

/* An external worker sees the jobs it claimed. */
ALTER POLICY jobs_visible ON jobq.jobs
	USING (jobq._sees(owner, queue, kind, leased_by));

/*
 * Who holds which external job, since when, until when: the jobs the caller
 * sees (the policy applied by the view itself, as in jobq.queue_stats, so
 * that the running jobs are read through their index).
 */
CREATE VIEW jobq.leases WITH (security_barrier = true) AS
SELECT j.id, j.kind, j.queue, j.owner, j.leased_by, j.worker, j.attempt,
	   j.attempted_at AS claimed_at, j.lease_until, j.heartbeat_at, j.progress,
	   j.lease_until < now() AS expired
  FROM jobq.jobs j
 WHERE j.state = 'running' AND j.external
   AND jobq._sees(j.owner, j.queue, j.kind, j.leased_by);
COMMENT ON VIEW jobq.leases IS
	'External workers: the jobs they hold, who claimed each (role and worker name), when, and until when';
GRANT SELECT ON jobq.leases TO PUBLIC;

/* ---------------------------------------------------------------------
 * queue_stats reads the live jobs and counts of the final ones, not every
 * final job kept (src/final_counts.c)
 * --------------------------------------------------------------------- */

CREATE TABLE jobq.final_counts (
	queue		text NOT NULL,
	kind		text NOT NULL,
	owner		regrole NOT NULL,
	leased_by	regrole,
	state		jobq.job_state NOT NULL,
	jobs		bigint NOT NULL,
	at			timestamptz
);
COMMENT ON TABLE jobq.final_counts IS
	'Final jobs kept in jobq.jobs: the rows of a (queue, kind, owner, leased_by, state) add up to its count. Appended by triggers on jobq.jobs, folded by the cleaner; read by jobq.queue_stats';
COMMENT ON COLUMN jobq.final_counts.jobs IS
	'Jobs that became (positive) or stopped being (negative) final in this state';
COMMENT ON COLUMN jobq.final_counts.at IS
	'When the change was made; NULL for the rows the cleaner folded (changes older than a minute)';
/* a publication FOR ALL TABLES would refuse the cleaner's DELETE without it */
ALTER TABLE jobq.final_counts REPLICA IDENTITY FULL;
/* the counts a role may read are those of the jobs it may see */
ALTER TABLE jobq.final_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY final_counts_visible ON jobq.final_counts FOR SELECT
	USING (jobq._sees(owner, queue, kind, leased_by));
REVOKE ALL ON jobq.final_counts FROM PUBLIC;
GRANT SELECT ON jobq.final_counts TO PUBLIC;

CREATE FUNCTION jobq._count_final_jobs() RETURNS trigger
	LANGUAGE C AS 'MODULE_PATHNAME', 'jobq_count_final_jobs';
REVOKE ALL ON FUNCTION jobq._count_final_jobs() FROM PUBLIC;
/* one trigger per event: transition tables allow no more */
CREATE TRIGGER count_inserted AFTER INSERT ON jobq.jobs
	REFERENCING NEW TABLE AS inserted
	FOR EACH STATEMENT EXECUTE FUNCTION jobq._count_final_jobs();
CREATE TRIGGER count_updated AFTER UPDATE ON jobq.jobs
	REFERENCING OLD TABLE AS before NEW TABLE AS after
	FOR EACH STATEMENT EXECUTE FUNCTION jobq._count_final_jobs();
CREATE TRIGGER count_deleted AFTER DELETE ON jobq.jobs
	REFERENCING OLD TABLE AS deleted
	FOR EACH STATEMENT EXECUTE FUNCTION jobq._count_final_jobs();
CREATE TRIGGER count_truncated AFTER TRUNCATE ON jobq.jobs
	FOR EACH STATEMENT EXECUTE FUNCTION jobq._count_final_jobs();
/* also on a logical replica and under session_replication_role = replica */
ALTER TABLE jobq.jobs ENABLE ALWAYS TRIGGER count_inserted,
	ENABLE ALWAYS TRIGGER count_updated,
	ENABLE ALWAYS TRIGGER count_deleted,
	ENABLE ALWAYS TRIGGER count_truncated;

/*
 * Counts the final jobs again from jobq.jobs.  The lock keeps every change
 * to the jobs out, the cleaner's folding of the counts with it (it deletes
 * jobs first); the statements after it must see what committed before it,
 * so jobq.recount_final_jobs() wants READ COMMITTED.  The update to this
 * version calls it holding jobq.jobs exclusively already.
 */
CREATE FUNCTION jobq._recount_final_jobs() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	LOCK TABLE jobq.jobs IN SHARE MODE;
	DELETE FROM jobq.final_counts;
	INSERT INTO jobq.final_counts (queue, kind, owner, leased_by, state, jobs, at)
	SELECT queue, kind, owner, leased_by, state, count(*), NULL
	  FROM jobq.jobs
	 WHERE state IN ('completed', 'cancelled', 'discarded')
	 GROUP BY queue, kind, owner, leased_by, state;
END $$;
REVOKE ALL ON FUNCTION jobq._recount_final_jobs() FROM PUBLIC;
SELECT jobq._recount_final_jobs();

/* After the triggers were disabled (pg_restore --disable-triggers). */
CREATE FUNCTION jobq.recount_final_jobs() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'jobq.recount_final_jobs() must run at isolation level READ COMMITTED'
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'It counts the jobs committed before it locks jobq.jobs.';
	END IF;
	PERFORM jobq._recount_final_jobs();
END $$;
REVOKE ALL ON FUNCTION jobq.recount_final_jobs() FROM PUBLIC;
COMMENT ON FUNCTION jobq.recount_final_jobs() IS
	'Counts the final jobs jobq.queue_stats shows again from jobq.jobs (after its triggers were disabled)';

/*
 * queue_stats counts the jobs the caller sees.  It runs with its owner's
 * rights and applies the jobs' policy itself (pg_has_role tests
 * current_user, the caller): under row level security PostgreSQL could not
 * use the partial indexes (a state test is not leakproof) and would read
 * every job, a million kept ones included.  A security barrier keeps the
 * caller's conditions above the counts.  The jobs that ended in the last
 * minute are the final counts' increases of the last minute.
 */
DROP VIEW jobq.queue_stats;
CREATE VIEW jobq.queue_stats WITH (security_barrier = true) AS
SELECT q.name AS queue,
	   q.paused,
	   q.concurrency,
	   coalesce(w.scheduled, 0) AS scheduled,
	   coalesce(a.available, 0) AS available,
	   coalesce(r.running, 0) AS running,
	   coalesce(w.retryable, 0) AS retryable,
	   coalesce(f.completed, 0) AS completed,
	   coalesce(f.cancelled, 0) AS cancelled,
	   coalesce(f.discarded, 0) AS discarded,
	   coalesce(now() - a.oldest_available, '0') AS lag,
	   coalesce(f.completed_last_minute, 0) AS completed_last_minute,
	   coalesce(w.failed_last_minute, 0) + coalesce(f.discarded_last_minute, 0) AS failed_last_minute
  FROM jobq.queues q
  /* each state through its own partial index */
  LEFT JOIN (
	SELECT j.queue, count(*) AS available, min(j.scheduled_at) AS oldest_available
	  FROM jobq.jobs j
	 WHERE j.state = 'available'
	   AND jobq._sees(j.owner, j.queue, j.kind, j.leased_by)
	 GROUP BY j.queue) a ON a.queue = q.name
  LEFT JOIN (
	SELECT j.queue, count(*) AS running
	  FROM jobq.jobs j
	 WHERE j.state = 'running'
	   AND jobq._sees(j.owner, j.queue, j.kind, j.leased_by)
	 GROUP BY j.queue) r ON r.queue = q.name
  LEFT JOIN (
	SELECT j.queue,
		   count(*) FILTER (WHERE j.state = 'scheduled') AS scheduled,
		   count(*) FILTER (WHERE j.state = 'retryable') AS retryable,
		   count(*) FILTER (WHERE j.state = 'retryable'
							  AND j.attempted_at > now() - interval '1 minute') AS failed_last_minute
	  FROM jobq.jobs j
	 WHERE j.state IN ('scheduled', 'retryable')
	   AND jobq._sees(j.owner, j.queue, j.kind, j.leased_by)
	 GROUP BY j.queue) w ON w.queue = q.name
  LEFT JOIN (
	SELECT c.queue,
		   sum(c.jobs) FILTER (WHERE c.state = 'completed')::bigint AS completed,
		   sum(c.jobs) FILTER (WHERE c.state = 'cancelled')::bigint AS cancelled,
		   sum(c.jobs) FILTER (WHERE c.state = 'discarded')::bigint AS discarded,
		   sum(c.jobs) FILTER (WHERE c.state = 'completed' AND c.jobs > 0
									 AND c.at > now() - interval '1 minute')::bigint AS completed_last_minute,
		   sum(c.jobs) FILTER (WHERE c.state = 'discarded' AND c.jobs > 0
									 AND c.at > now() - interval '1 minute')::bigint AS discarded_last_minute
	  FROM jobq.final_counts c
	 WHERE jobq._sees(c.owner, c.queue, c.kind, c.leased_by)
	 GROUP BY c.queue) f ON f.queue = q.name;
COMMENT ON VIEW jobq.queue_stats IS
	'Per queue: jobs per state, lag (age of the oldest available job), jobs finished in the last minute; the jobs the caller may see';
GRANT SELECT ON jobq.queue_stats TO PUBLIC;
