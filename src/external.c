/*-------------------------------------------------------------------------
 *
 * external.c
 *	  External workers: application processes, in any language, that claim
 *	  jobs of external kinds with jobq.claim() and finish them with
 *	  jobq.complete/fail/give_up/snooze(), holding each by a lease that
 *	  jobq.heartbeat() extends.
 *
 * A claim marks its jobs running as the servers' workers' claims do
 * (attempt counted), with attempted_by a random lease token drawn for the
 * call and lease_until = now + the kind's lease.  Finishing needs the
 * job's id and that token: job_state.c changes the job only while it is
 * still running under the token, so a worker whose lease expired and whose
 * job was rescued (rescuer.c), re-claimed or cancelled changes nothing and
 * gets an error saying so.  A job of an external kind is never claimed by
 * the servers' workers (their claim says "NOT external") and vice versa.
 *
 * jobq.claim() with a wait sleeps on its database's available_cv until a
 * commit makes jobs available (commit.c broadcasts it when claim_waiters
 * says someone waits), then claims again: no LISTEN, no polling, and it
 * works through a transaction-pooling PgBouncer.  It needs READ COMMITTED
 * (each attempt must see what committed meanwhile).  While it waits its
 * transaction is open and holds back vacuum like any other: keep waits
 * short (README, External workers).
 *
 * Every statement here runs as jobq's owner (through the trampoline in
 * api.c), under jobq's pinned search_path (jobq_execute_plan).
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#define MAX_CLAIM			1000	/* jobs one call may claim or complete
									 * (complete_many's match is n x n) */
#define WAIT_TICK_MS		1000	/* a waiting claim looks at its client */
#define LIMITED_TICK_MS		100 /* and at a full limited queue's count */
#define MAX_WORKER_NAME		128 /* bytes of jobq.claim()'s worker name */

/*
 * The claim: up to $3 available jobs of queue $2 whose kind is one of $4,
 * in run order, marked running under lease token $1 for the role $5 and
 * worker name $6.  As worker.c's claim: locked rows by address, one clock
 * reading after the snapshot.
 */
static const JobqStatement CLAIM = {"external claim",
"WITH locked AS MATERIALIZED ("
"    SELECT j.ctid AS tid"
"      FROM jobq.jobs j"
"     WHERE j.state = 'available' AND j.queue = $2 AND j.external"
"       AND j.kind = ANY ($4)"
"       AND NOT EXISTS (SELECT FROM jobq.queues q WHERE q.name = $2 AND q.paused)"
"     ORDER BY j.priority, j.scheduled_at, j.id"
"     LIMIT $3"
"     FOR UPDATE OF j SKIP LOCKED),"
" claimed AS ("
"    UPDATE jobq.jobs j"
"       SET state = 'running', attempt = j.attempt + 1,"
"           attempted_at = now_.at, attempted_by = $1,"
"           lease_until = now_.at + coalesce((SELECT h.lease FROM jobq.handlers h"
"                                              WHERE h.kind = j.kind), interval '5 minutes'),"
"           heartbeat_at = NULL, progress = NULL, leased_by = $5, worker = $6"
"      FROM locked, (SELECT clock_timestamp() AS at) AS now_"
"     WHERE j.ctid = locked.tid"
"    RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.lease_until,"
"              j.priority, j.scheduled_at)"
"SELECT c.id, c.kind, c.args, c.attempt, c.max_attempts, c.lease_until"
"  FROM claimed c ORDER BY c.priority, c.scheduled_at, c.id",
6, {INT8OID, TEXTOID, INT8OID, TEXTARRAYOID, REGROLEOID, TEXTOID}};

/* $3: the new lease, NULL for the kind's; $4: progress, NULL to keep it */
static const JobqStatement HEARTBEAT = {"heartbeat",
"UPDATE jobq.jobs j"
"   SET lease_until = now_.at + coalesce($3, (SELECT h.lease FROM jobq.handlers h"
"                                             WHERE h.kind = j.kind), interval '5 minutes'),"
"       heartbeat_at = now_.at, progress = coalesce($4, j.progress)"
"  FROM (SELECT clock_timestamp() AS at) AS now_"
JOBQ_THE_RUNNING_JOB
"   AND j.external"
" RETURNING j.lease_until",
4, {INT8OID, INT8OID, INTERVALOID, JSONBOID}};

/* A job as its finishing sees it; (SELECT ctid ...): see JOBQ_THE_RUNNING_JOB */
static const JobqStatement LOOK_UP = {"external job",
"SELECT j.kind, j.external, j.state::text, j.attempted_by, j.attempt,"
"       (extract(epoch FROM h.backoff_max) * 1000)::int8, jobq._may_work($2, h)"
"  FROM jobq.jobs j LEFT JOIN jobq.handlers h ON h.kind = j.kind"
" WHERE j.ctid = (SELECT ctid FROM jobq.jobs WHERE id = $1) AND j.id = $1",
2, {INT8OID, REGROLEOID}};

/*
 * The jobs a batch names, as look_up sees one: how many exist for the
 * caller (it may work their kinds), and whether all are external.
 */
static const JobqStatement LOOK_UP_MANY = {"external jobs",
"SELECT count(*) FILTER (WHERE (SELECT jobq._may_work($2, h) FROM jobq.handlers h"
"                                 WHERE h.kind = j.kind)),"
"       coalesce(bool_and(j.external), true)"
"  FROM jobq.jobs j WHERE j.id = ANY ($1)",
2, {INT8ARRAYOID, REGROLEOID}};

/* Whether the queue limits its running jobs; no row: it does not exist */
static const JobqStatement QUEUE_LIMITED = {"queue limited",
"SELECT concurrency IS NOT NULL FROM jobq.queues WHERE name = $1",
1, {TEXTOID}};

const JobqStatement *const jobq_external_statements[] = {
	&CLAIM, &HEARTBEAT, &LOOK_UP, &LOOK_UP_MANY, &QUEUE_LIMITED, NULL
};

static SPIPlanPtr claim_plan;
static SPIPlanPtr heartbeat_plan;
static SPIPlanPtr look_up_plan;
static SPIPlanPtr look_up_many_plan;
static SPIPlanPtr queue_limited_plan;
static SPIPlanPtr lock_queue_plan;
static SPIPlanPtr count_running_plan;

static SPIPlanPtr
plan(SPIPlanPtr *cached, const JobqStatement *statement)
{
	if (*cached == NULL)
		*cached = jobq_prepare_statement(statement);
	return *cached;
}

/* Runs one statement of jobq's SQL; returns SPI_processed. */
static uint64
run(SPIPlanPtr p, Datum *values, const char *nulls, int expected, const char *what)
{
	if (jobq_execute_plan(p, values, nulls, false, 0) != expected)
		elog(ERROR, "could not %s", what);
	return SPI_processed;
}

static bool
column_bool(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

/*
 * A lease that ends before the rescuer's next run (it plans for the leases
 * it saw) asks for a run once this transaction commits.
 */
static void
rescue_by(TimestampTz lease_until)
{
	int			db_index = jobq_db_index(MyDatabaseId);

	if (db_index >= 0 &&
		lease_until < (TimestampTz) pg_atomic_read_u64(&JobqShared->databases[db_index].rescue_due_at))
		jobq_at_commit_rescue_soon();
}

/* ---------------------------------------------------------------------
 * jobq.claim()
 * --------------------------------------------------------------------- */

typedef struct ClaimCall
{
	Datum		token;
	Datum		queue;
	int			max_jobs;
	Datum		kinds;			/* text[] the caller may work */
	Oid			caller;
	Datum		worker;
	bool		worker_isnull;
	ReturnSetInfo *rsinfo;
	TimestampTz earliest_lease;
	bool		waits;			/* it may look more than once */
	bool		limited;		/* the queue limits its running jobs */
} ClaimCall;

/* A random lease token, positive so that clients read it as they like. */
static int64
new_token(void)
{
	uint64		token = 0;

	if (!pg_strong_random(&token, sizeof(token)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a lease token")));
	token &= PG_INT64_MAX;
	return token == 0 ? 1 : (int64) token;
}

/* Claims into the result; returns how many, limit the queue's room. */
static int
claim_some(ClaimCall *c, int64 limit)
{
	Datum		values[6] = {c->token, c->queue, Int64GetDatum(limit), c->kinds,
		ObjectIdGetDatum(c->caller), c->worker};
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', c->worker_isnull ? 'n' : ' '};
	uint64		n;

	n = run(plan(&claim_plan, &CLAIM), values, nulls, SPI_OK_SELECT, "claim external jobs");
	for (uint64 i = 0; i < n; i++)
	{
		/* id, kind, args, attempt, max_attempts, lease_token, lease_until */
		Datum		row[7];
		bool		isnull[7];

		for (int col = 0; col < 5; col++)
			row[col] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col + 1,
									 &isnull[col]);
		row[5] = c->token;
		isnull[5] = false;
		row[6] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 6, &isnull[6]);
		c->earliest_lease = Min(c->earliest_lease, DatumGetTimestampTz(row[6]));
		tuplestore_putvalues(c->rsinfo->setResult, c->rsinfo->setDesc, row, isnull);
	}
	return (int) n;
}

/*
 * A look that may leave locks behind it for longer than a statement: a
 * waiting claim's (FOR UPDATE keeps the lock on a row that another claim
 * took after our snapshot, though the row no longer qualifies: its worker's
 * complete would wait for our whole wait), or a limited queue's (its row
 * is locked, as the servers' workers do, to count its running jobs and
 * claim within the room left).  In a subtransaction, rolled back when it
 * claimed nothing, so that such locks go at once.
 */
static int
claim_in_subtransaction(ClaimCall *c)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int			n = 0;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		bool		isnull;

		if (!c->limited)
			n = claim_some(c, c->max_jobs);
		else if (run(plan(&lock_queue_plan, &jobq_lock_queue_statement), &c->queue, NULL,
					 SPI_OK_SELECT, "lock a limited queue") == 1)
		{
			int32		concurrency = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
																  SPI_tuptable->tupdesc, 1, &isnull));
			int64		running;

			run(plan(&count_running_plan, &jobq_count_running_statement), &c->queue, NULL,
				SPI_OK_SELECT, "count the running jobs of a queue");
			running = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull));
			if (isnull || concurrency - running > 0)
				n = claim_some(c, Min(c->max_jobs, concurrency - running));
		}
		if (n > 0)
			ReleaseCurrentSubTransaction();
		else
			RollbackAndReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return n;
}

/*
 * Whether jobq.enabled lets jobs be handed out here: not when this session
 * has it off (postgresql.conf, or the database's setting when it
 * connected), nor once ALTER DATABASE turned it off (see jobq.h).
 */
static bool
enabled_here(void)
{
	int			db_index = jobq_db_index(MyDatabaseId);
	bool		off = false;

	if (!jobq_enabled)
		return false;
	if (db_index >= 0)
	{
		LWLockAcquire(JobqShared->lock, LW_SHARED);
		off = JobqShared->databases[db_index].off;
		LWLockRelease(JobqShared->lock);
	}
	return !off;
}

/* One look: claims what it can now. */
static int
claim_once(ClaimCall *c)
{
	/* switched off (a restored copy, say): nothing is handed out */
	if (!enabled_here())
		return 0;
	if (run(plan(&queue_limited_plan, &QUEUE_LIMITED), &c->queue, NULL,
			SPI_OK_SELECT, "look at a queue") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", TextDatumGetCString(c->queue))));
	c->limited = column_bool(1);
	if (c->limited || c->waits)
		return claim_in_subtransaction(c);
	return claim_some(c, c->max_jobs);
}

static long
ms_until(TimestampTz deadline)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return secs * 1000 + usecs / 1000;
}

/*
 * Claims, and if nothing was there and wait_ms > 0, sleeps until a commit
 * makes jobs available (or, for a limited queue, a tick) and claims again,
 * until something is claimed or the wait is over.
 */
static int
claim_waiting(ClaimCall *c, long wait_ms)
{
	int			db_index = jobq_db_index(MyDatabaseId);
	JobqDatabase *db = db_index >= 0 ? &JobqShared->databases[db_index] : NULL;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	int			n = claim_once(c);

	if (n > 0 || wait_ms <= 0)
		return n;

	/* counted before the generation is read: see commit.c */
	if (db != NULL)
		pg_atomic_fetch_add_u32(&db->claim_waiters, 1);
	PG_TRY();
	{
		if (db != NULL)
			ConditionVariablePrepareToSleep(&db->available_cv);
		for (;;)
		{
			uint64		generation = db ? pg_atomic_read_u64(&db->available_generation) : 0;

			n = claim_once(c);
			if (n > 0 || ms_until(deadline) <= 0)
				break;
			while (ms_until(deadline) > 0 &&
				   (db == NULL || generation == pg_atomic_read_u64(&db->available_generation)))
			{
				long		tick = c->limited || db == NULL ? LIMITED_TICK_MS : WAIT_TICK_MS;

				if (db != NULL)
					(void) ConditionVariableTimedSleep(&db->available_cv,
													   Min(ms_until(deadline), tick),
													   PG_WAIT_EXTENSION);
				else
					(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
									 Min(ms_until(deadline), tick), PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
				jobq_leave_if_client_gone();
				if (c->limited || db == NULL)
					break;		/* room may have been made without a commit's word */
			}
		}
	}
	PG_FINALLY();
	{
		if (db != NULL)
		{
			ConditionVariableCancelSleep();
			pg_atomic_fetch_sub_u32(&db->claim_waiters, 1);
		}
	}
	PG_END_TRY();
	return n;
}

PG_FUNCTION_INFO_V1(jobq_claim_external);

/*
 * jobq._claim(caller, queue, max_jobs, wait, kinds, worker), behind
 * jobq.claim(): see the header comment.
 */
Datum
jobq_claim_external(PG_FUNCTION_ARGS)
{
	ClaimCall	c;
	long		wait_ms = 0;
	Datum		kinds_arg[3];
	char		kinds_nulls[3];
	static SPIPlanPtr kinds_plan;

	jobq_require_preload();
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue must not be null")));
	if (PG_ARGISNULL(2) || PG_GETARG_INT32(2) < 1 || PG_GETARG_INT32(2) > MAX_CLAIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_jobs must be between 1 and %d", MAX_CLAIM)));
	if (!PG_ARGISNULL(3))
	{
		int64		ms = jobq_interval_ms(PG_GETARG_INTERVAL_P(3));

		if (ms < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the wait of jobq.claim() must not be negative")));
		wait_ms = (long) Min(ms, (int64) INT_MAX);
	}
	if (wait_ms > 0 && IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("jobq.claim() can wait only in a READ COMMITTED transaction"),
				 errdetail("A transaction that keeps its snapshot would not see the jobs committed while it waits."),
				 errhint("Call jobq.claim() in its own transaction, at READ COMMITTED.")));

	memset(&c, 0, sizeof(c));
	c.caller = PG_GETARG_OID(0);
	c.queue = PG_GETARG_DATUM(1);
	c.max_jobs = PG_GETARG_INT32(2);
	c.waits = wait_ms > 0;
	c.token = Int64GetDatum(new_token());
	c.earliest_lease = DT_NOEND;
	if (!PG_ARGISNULL(5))
	{
		c.worker = PG_GETARG_DATUM(5);
		if (VARSIZE_ANY_EXHDR(DatumGetPointer(c.worker)) > MAX_WORKER_NAME)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("a worker name is at most %d bytes", MAX_WORKER_NAME)));
	}
	else
	{
		const char *name = GetConfigOption("application_name", true, false);

		c.worker = name && name[0] ? CStringGetTextDatum(name) : (Datum) 0;
	}
	c.worker_isnull = c.worker == (Datum) 0;

	InitMaterializedSRF(fcinfo, 0);
	c.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	SPI_connect();
	if (kinds_plan == NULL)
	{
		Oid			types[3] = {REGROLEOID, TEXTOID, TEXTARRAYOID};

		kinds_plan = jobq_prepare("SELECT jobq._claim_kinds($1, $2, $3)", 3, types);
	}
	kinds_arg[0] = ObjectIdGetDatum(c.caller);
	kinds_arg[1] = c.queue;
	kinds_arg[2] = PG_GETARG_DATUM(4);
	kinds_nulls[0] = kinds_nulls[1] = ' ';
	kinds_nulls[2] = PG_ARGISNULL(4) ? 'n' : ' ';
	run(kinds_plan, kinds_arg, kinds_nulls, SPI_OK_SELECT, "find the kinds to claim");
	{
		bool		isnull;

		c.kinds = datumCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										  &isnull), false, -1);
	}

	if (claim_waiting(&c, wait_ms) > 0)
		rescue_by(c.earliest_lease);
	SPI_finish();
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * Finishing and heartbeats
 * --------------------------------------------------------------------- */

typedef struct HeldJob
{
	int64		id;
	int64		token;
	char	   *kind;
	char	   *state;
	int64		attempted_by;
	int32		attempt;
	int64		backoff_max_ms; /* -1: none */
} HeldJob;

/*
 * The job the caller names, for working it: an error unless it exists (for
 * the caller: it may work its kind) and is an external job.
 */
static HeldJob
look_up(Oid caller, int64 id, int64 token)
{
	Datum		values[2] = {Int64GetDatum(id), ObjectIdGetDatum(caller)};
	HeldJob		job;
	bool		isnull;
	Datum		d;

	if (run(plan(&look_up_plan, &LOOK_UP), values, NULL, SPI_OK_SELECT, "look up a job") == 0 ||
		!column_bool(7))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " does not exist", id)));
	if (!column_bool(2))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("job " INT64_FORMAT " is not an external job", id),
				 errdetail("jobq's own workers run it.")));
	job.id = id;
	job.token = token;
	job.kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	job.state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
	job.attempted_by = isnull ? 0 : DatumGetInt64(d);
	job.attempt = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  5, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
	job.backoff_max_ms = isnull ? -1 : DatumGetInt64(d);
	return job;
}

/* The token does not hold the job (any more): say what became of it. */
static void pg_attribute_noreturn()
not_held(Oid caller, const HeldJob *job)
{
	HeldJob		now = look_up(caller, job->id, job->token);

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("job " INT64_FORMAT " is not held by lease token " INT64_FORMAT,
					job->id, job->token),
			 strcmp(now.state, "running") != 0 ?
			 errdetail("The job is %s now; nothing was changed.", now.state) :
			 errdetail("The job is running under another lease (attempt %d); nothing was changed.",
					   now.attempt),
			 errhint("A lease ends at its lease_until unless jobq.heartbeat() extends it; the job was then given back, claimed again or cancelled.")));
}

/* The arguments every finishing function starts with: caller, id, token. */
static HeldJob
held_job_arg(FunctionCallInfo fcinfo)
{
	jobq_require_preload();
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job id and lease token must not be null")));
	SPI_connect();
	return look_up(PG_GETARG_OID(0), PG_GETARG_INT64(1), PG_GETARG_INT64(2));
}

/* What a job's new state asks of others at commit. */
static void
announce(JobqEnd end)
{
	switch (end)
	{
		case JOBQ_END_AVAILABLE:
			/* for waiting claims: jobq's workers do not run external jobs */
			jobq_at_commit_wake_workers(0);
			break;
		case JOBQ_END_SCHEDULED:
		case JOBQ_END_RETRYABLE:
			jobq_at_commit_wake_leader();
			break;
		case JOBQ_END_DISCARDED:
			jobq_at_commit_jobs_finished();
			break;
		default:
			break;
	}
}

/* A new state as the function's result (a jobq.job_state). */
static Datum
state_datum(FunctionCallInfo fcinfo, JobqEnd end)
{
	static const char *const names[JOBQ_NUM_ENDS] = {
		NULL, "available", "scheduled", "retryable", "discarded"
	};

	return DirectFunctionCall2(enum_in, CStringGetDatum(names[end]),
							   ObjectIdGetDatum(get_func_rettype(fcinfo->flinfo->fn_oid)));
}

PG_FUNCTION_INFO_V1(jobq_complete_external);
PG_FUNCTION_INFO_V1(jobq_complete_many_external);
PG_FUNCTION_INFO_V1(jobq_fail_external);
PG_FUNCTION_INFO_V1(jobq_fail_external_jsonb);
PG_FUNCTION_INFO_V1(jobq_give_up_external);
PG_FUNCTION_INFO_V1(jobq_snooze_external_for);
PG_FUNCTION_INFO_V1(jobq_snooze_external_until);
PG_FUNCTION_INFO_V1(jobq_heartbeat_external);

/* jobq._complete(caller, id, lease_token, result) */
Datum
jobq_complete_external(PG_FUNCTION_ARGS)
{
	HeldJob		job = held_job_arg(fcinfo);

	if (!jobq_job_complete(job.id, (uint64) job.token,
						   PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3), PG_ARGISNULL(3)))
		not_held(PG_GETARG_OID(0), &job);
	jobq_at_commit_jobs_finished();
	SPI_finish();
	PG_RETURN_VOID();
}

/* The elements of a one-dimensional array argument; NULLs refused unless nulls. */
static int
array_arg(FunctionCallInfo fcinfo, int argno, Oid type, const char *name,
		  Datum **values, bool **nulls)
{
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(argno);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	bool	   *isnull;
	int			n;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name)));
	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	deconstruct_array(array, type, typlen, typbyval, typalign, values, &isnull, &n);
	for (int i = 0; nulls == NULL && i < n; i++)
		if (isnull[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", name)));
	if (nulls != NULL)
		*nulls = isnull;
	return n;
}

/*
 * jobq._complete_many(caller, ids, lease_tokens, results): completes every
 * job, or none (an error, as jobq.complete's, for the first not held).
 */
Datum
jobq_complete_many_external(PG_FUNCTION_ARGS)
{
	Datum	   *ids;
	Datum	   *tokens;
	Datum	   *results = NULL;
	bool	   *result_nulls = NULL;
	bool	   *completed;
	int			n;
	Datum		values[2];
	bool		isnull;

	jobq_require_preload();
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job ids and lease tokens must not be null")));
	n = array_arg(fcinfo, 1, INT8OID, "job ids", &ids, NULL);
	if (n > MAX_CLAIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("jobq.complete_many() completes at most %d jobs", MAX_CLAIM)));
	if (array_arg(fcinfo, 2, INT8OID, "lease tokens", &tokens, NULL) != n ||
		(!PG_ARGISNULL(3) &&
		 array_arg(fcinfo, 3, JSONBOID, "results", &results, &result_nulls) != n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job ids, lease tokens and results must have as many elements")));

	SPI_connect();
	values[0] = PG_GETARG_DATUM(1);
	values[1] = PG_GETARG_DATUM(0);
	run(plan(&look_up_many_plan, &LOOK_UP_MANY), values, NULL, SPI_OK_SELECT, "look up jobs");
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) != n)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("some of the jobs do not exist, or are named twice")));
	if (!column_bool(2))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("some of the jobs are not external jobs"),
				 errdetail("jobq's own workers run them.")));
	completed = palloc(sizeof(bool) * Max(n, 1));
	jobq_jobs_complete_leased(PG_GETARG_DATUM(1), PG_GETARG_DATUM(2),
							  PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3), n, completed);
	for (int i = 0; i < n; i++)
	{
		if (!completed[i])
		{
			HeldJob		job = {.id = DatumGetInt64(ids[i]), .token = DatumGetInt64(tokens[i])};

			not_held(PG_GETARG_OID(0), &job);
		}
	}
	if (n > 0)
		jobq_at_commit_jobs_finished();
	SPI_finish();
	PG_RETURN_INT32(n);
}

/* An error entry from the error argument: text, or an object of its fields. */
static void
error_from_arg(FunctionCallInfo fcinfo, bool is_jsonb, ErrorData *edata)
{
	memset(edata, 0, sizeof(*edata));
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the error of jobq.fail() must not be null")));
	if (!is_jsonb)
	{
		edata->message = TextDatumGetCString(PG_GETARG_DATUM(3));
		return;
	}
	{
		Jsonb	   *error = PG_GETARG_JSONB_P(3);
		static const char *const keys[] = {"message", "detail", "hint", "context", "sqlstate"};
		char	   *fields[5] = {0};

		if (!JB_ROOT_IS_OBJECT(error) || JB_ROOT_IS_SCALAR(error))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the error of jobq.fail() must be text or a JSON object")));
		for (int i = 0; i < 5; i++)
		{
			JsonbValue	key;
			JsonbValue *v;

			key.type = jbvString;
			key.val.string.val = (char *) keys[i];
			key.val.string.len = strlen(keys[i]);
			v = findJsonbValueFromContainer(&error->root, JB_FOBJECT, &key);
			if (v == NULL || v->type == jbvNull)
				continue;
			if (v->type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("\"%s\" of the error of jobq.fail() must be a string", keys[i])));
			fields[i] = pnstrdup(v->val.string.val, v->val.string.len);
		}
		edata->message = fields[0] ? fields[0] : JsonbToCString(NULL, &error->root, VARSIZE(error));
		edata->detail = fields[1];
		edata->hint = fields[2];
		edata->context = fields[3];
		if (fields[4] != NULL)
		{
			const char *s = fields[4];

			if (strlen(s) != 5 || strspn(s, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != 5)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("\"%s\" is not an SQLSTATE", s),
						 errdetail("An SQLSTATE is five digits or upper-case letters.")));
			edata->sqlerrcode = MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
		}
	}
}

/* jobq._fail(caller, id, lease_token, error text | jsonb, retry_in) */
static Datum
fail_external(FunctionCallInfo fcinfo, bool error_is_jsonb)
{
	HeldJob		job = held_job_arg(fcinfo);
	ErrorData	edata;
	int64		delay_ms;
	JobqEnd		end;

	error_from_arg(fcinfo, error_is_jsonb, &edata);
	if (PG_ARGISNULL(4))
		delay_ms = jobq_retry_backoff_ms(job.attempt, job.backoff_max_ms);
	else if ((delay_ms = jobq_interval_ms(PG_GETARG_INTERVAL_P(4))) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_in must not be negative")));
	end = jobq_job_fail(job.id, (uint64) job.token, delay_ms, &edata);
	if (end == JOBQ_END_GONE)
		not_held(PG_GETARG_OID(0), &job);
	announce(end);
	SPI_finish();
	PG_RETURN_DATUM(state_datum(fcinfo, end));
}

Datum
jobq_fail_external(PG_FUNCTION_ARGS)
{
	return fail_external(fcinfo, false);
}

Datum
jobq_fail_external_jsonb(PG_FUNCTION_ARGS)
{
	return fail_external(fcinfo, true);
}

/* jobq._give_up(caller, id, lease_token, reason) */
Datum
jobq_give_up_external(PG_FUNCTION_ARGS)
{
	HeldJob		job = held_job_arg(fcinfo);

	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the reason for giving up must not be null")));
	if (!jobq_job_give_up(job.id, (uint64) job.token, TextDatumGetCString(PG_GETARG_DATUM(3))))
		not_held(PG_GETARG_OID(0), &job);
	announce(JOBQ_END_DISCARDED);
	SPI_finish();
	PG_RETURN_VOID();
}

/* jobq._snooze(caller, id, lease_token, delay interval | run_at timestamptz) */
static Datum
snooze_external(FunctionCallInfo fcinfo, bool is_delay)
{
	HeldJob		job = held_job_arg(fcinfo);
	TimestampTz run_at;
	JobqEnd		end;

	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the delay or time of jobq.snooze() must not be null")));
	if (is_delay)
	{
		if (jobq_interval_ms(PG_GETARG_INTERVAL_P(3)) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the delay of jobq.snooze() must not be negative")));
		run_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														 TimestampTzGetDatum(GetCurrentTimestamp()),
														 PG_GETARG_DATUM(3)));
	}
	else
		run_at = PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job cannot be snoozed until an infinite time")));
	end = jobq_job_snooze(job.id, (uint64) job.token, run_at);
	if (end == JOBQ_END_GONE)
	{
		HeldJob		now = look_up(PG_GETARG_OID(0), job.id, job.token);

		if (strcmp(now.state, "running") == 0 && now.attempted_by == job.token)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("job " INT64_FORMAT " was snoozed jobq.max_snoozes (%d) times already",
							job.id, jobq_max_snoozes),
					 errhint("Complete it, fail it or give it up.")));
		not_held(PG_GETARG_OID(0), &job);
	}
	announce(end);
	SPI_finish();
	PG_RETURN_DATUM(state_datum(fcinfo, end));
}

Datum
jobq_snooze_external_for(PG_FUNCTION_ARGS)
{
	return snooze_external(fcinfo, true);
}

Datum
jobq_snooze_external_until(PG_FUNCTION_ARGS)
{
	return snooze_external(fcinfo, false);
}

/* jobq._heartbeat(caller, id, lease_token, extend, progress) */
Datum
jobq_heartbeat_external(PG_FUNCTION_ARGS)
{
	HeldJob		job = held_job_arg(fcinfo);
	Datum		values[4] = {Int64GetDatum(job.id), Int64GetDatum(job.token),
	PG_GETARG_DATUM(3), PG_GETARG_DATUM(4)};
	char		nulls[4] = {' ', ' ', PG_ARGISNULL(3) ? 'n' : ' ', PG_ARGISNULL(4) ? 'n' : ' '};
	TimestampTz until;
	bool		isnull;

	if (!PG_ARGISNULL(3) && jobq_interval_ms(PG_GETARG_INTERVAL_P(3)) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the extension of a lease must be positive")));
	if (run(plan(&heartbeat_plan, &HEARTBEAT), values, nulls,
			SPI_OK_UPDATE_RETURNING, "extend a lease") == 0)
		not_held(PG_GETARG_OID(0), &job);
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
	rescue_by(until);			/* a shorter lease than the one it had */
	SPI_finish();
	PG_RETURN_TIMESTAMPTZ(until);
}
