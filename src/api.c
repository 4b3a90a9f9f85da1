/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable C functions of the API: the privilege trampoline behind
 *	  every changing function, jobq.wait(), jobq.wait_ready() and the id of
 *	  the running job.
 *
 * The trampoline (jobq_call_as_owner) is the only way into the internal
 * functions.  jobq.enqueue(...) is declared in SQL as this C function;
 * it records the calling role (GetUserId(): current_user, also inside a
 * SECURITY DEFINER function), switches to the owner of the internal
 * function jobq._enqueue(caller regrole, ...) and calls it with the caller
 * prepended.  The internal functions are not executable by PUBLIC, so the
 * caller argument cannot be forged.  The switch is a local user-id change:
 * the internal function cannot SET ROLE back out of it.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

typedef struct TrampolineTarget
{
	FmgrInfo	flinfo;			/* the internal function */
	Oid			owner;			/* runs as its owner */
} TrampolineTarget;

/* Finds jobq._name(regrole, <our argument types>) for the function called. */
static TrampolineTarget *
trampoline_target(FmgrInfo *flinfo)
{
	HeapTuple	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(flinfo->fn_oid));
	Form_pg_proc proc;
	Oid			argtypes[FUNC_MAX_ARGS];
	char	   *schema;
	char	   *internal_name;
	List	   *qualified;
	Oid			internal;
	TrampolineTarget *target;

	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for function %u", flinfo->fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(tp);
	if (proc->pronargs + 1 > FUNC_MAX_ARGS)
		elog(ERROR, "jobq function %u has too many arguments", flinfo->fn_oid);
	argtypes[0] = REGROLEOID;
	memcpy(&argtypes[1], proc->proargtypes.values, proc->pronargs * sizeof(Oid));
	schema = get_namespace_name(proc->pronamespace);
	internal_name = psprintf("_%s", NameStr(proc->proname));
	qualified = list_make2(makeString(schema), makeString(internal_name));
	internal = LookupFuncName(qualified, proc->pronargs + 1, argtypes, false);
	ReleaseSysCache(tp);

	target = MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(TrampolineTarget));
	fmgr_info_cxt(internal, &target->flinfo, flinfo->fn_mcxt);
	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(internal));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for function %u", internal);
	target->owner = ((Form_pg_proc) GETSTRUCT(tp))->proowner;
	ReleaseSysCache(tp);
	return target;
}

PG_FUNCTION_INFO_V1(jobq_call_as_owner);

Datum
jobq_call_as_owner(PG_FUNCTION_ARGS)
{
	TrampolineTarget *target = fcinfo->flinfo->fn_extra;
	LOCAL_FCINFO(inner, FUNC_MAX_ARGS);
	Oid			caller = GetUserId();
	Oid			save_userid;
	int			save_sec_context;
	Datum		result = (Datum) 0;

	jobq_require_preload();
	if (target == NULL)
		fcinfo->flinfo->fn_extra = target = trampoline_target(fcinfo->flinfo);

	/* resultinfo: a set-returning internal function returns through it */
	InitFunctionCallInfoData(*inner, &target->flinfo, fcinfo->nargs + 1,
							 fcinfo->fncollation, NULL, fcinfo->resultinfo);
	inner->args[0].value = ObjectIdGetDatum(caller);
	inner->args[0].isnull = false;
	for (int i = 0; i < fcinfo->nargs; i++)
		inner->args[i + 1] = fcinfo->args[i];

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(target->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		result = FunctionCallInvoke(inner);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();

	fcinfo->isnull = inner->isnull;
	return result;
}

/*
 * A timeout argument as milliseconds; NULL means forever (-1).  Capped at
 * 100 years, so that a deadline never overflows a timestamp.
 */
static long
timeout_arg_ms(FunctionCallInfo fcinfo, int argno)
{
	const int64 max_ms = INT64CONST(100) * 365 * 24 * 3600 * 1000;
	int64		ms;

	if (PG_ARGISNULL(argno))
		return -1;
	ms = jobq_interval_ms(PG_GETARG_INTERVAL_P(argno));
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return (long) Min(ms, max_ms);
}

/* ms left until deadline (0 when past); -1 for no deadline. */
static long
ms_left(TimestampTz deadline)
{
	long		secs;
	int			usecs;

	if (deadline == 0)
		return -1;
	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return secs * 1000 + usecs / 1000;
}

static bool
state_is_final(const char *state)
{
	return strcmp(state, "completed") == 0 ||
		strcmp(state, "cancelled") == 0 ||
		strcmp(state, "discarded") == 0;
}

/*
 * The waits: each sleeps on a condition variable that is broadcast whenever
 * a transaction that made jobs final commits; after each wake-up it looks
 * at the jobs again, with a fresh snapshot, as the caller (so the caller
 * sees only jobs it may see).  While it sleeps it notices, every second,
 * a client that went away (a waiting backend would otherwise live on until
 * its timeout).
 */
#define WAIT_LOOK_MS 1000		/* longest sleep between looks */

/* One look at the jobs waited for, as the caller sees them. */
typedef struct WaitedJob
{
	int64		id;
	char	   *state;
	Datum		result;
	bool		result_isnull;
	Datum		error;
	bool		error_isnull;
} WaitedJob;

/*
 * Looks at the jobs ids[0..n-1]; fills jobs (in the order of ids) and
 * returns how many are final.  Every id must exist; a job not yet final
 * that the current transaction changed is an error (no worker can see it).
 */
static int
look_at_jobs(SPIPlanPtr plan, const int64 *ids, int n, WaitedJob *jobs)
{
	Datum		values[1];
	int			final = 0;
	Datum	   *elems = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (jobq_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up jobs");

	for (int i = 0; i < n; i++)
	{
		bool		found = false;

		for (uint64 r = 0; r < SPI_processed && !found; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			if (DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)) != ids[i])
				continue;
			found = true;
			jobs[i].id = ids[i];
			jobs[i].state = SPI_getvalue(tup, desc, 2);
			jobs[i].result = SPI_getbinval(tup, desc, 3, &jobs[i].result_isnull);
			jobs[i].error = SPI_getbinval(tup, desc, 4, &jobs[i].error_isnull);
			if (state_is_final(jobs[i].state))
				final++;
			else if (TransactionIdIsCurrentTransactionId(DatumGetTransactionId(SPI_getbinval(tup, desc, 5, &isnull))))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot wait for job " INT64_FORMAT ": the current transaction has changed it", ids[i]),
						 errdetail("Workers see the job only once this transaction commits.")));
		}
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job " INT64_FORMAT " does not exist", ids[i])));
	}
	return final;
}

/*
 * From libpq/libpq.h, which cannot be included here: it needs the GSSAPI
 * headers, which a machine building extensions may not have.
 */
extern bool pq_check_connection(void);

/* Ends the session if its client has gone: nobody waits for the answer. */
void
jobq_leave_if_client_gone(void)
{
	if (whereToSendOutput == DestRemote && !pq_check_connection())
	{
		ClientConnectionLost = true;
		InterruptPending = true;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Waits until every job of ids (any: one of them) is final, or the timeout
 * passes.  Call between SPI_connect and SPI_finish: the jobs' values stay
 * in the SPI context.  Returns how many are final at the last look.
 */
static int
wait_for_jobs(const int64 *ids, int n, bool any, long timeout_ms, WaitedJob *jobs)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	TimestampTz deadline = 0;
	SPIPlanPtr	plan;
	int			final;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("jobq cannot wait for jobs in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Its snapshot would never show the jobs finishing.")));
	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	/* in the caller's session, under its search_path: every name qualified */
	plan = jobq_prepare_transient("SELECT j.id, j.state::pg_catalog.text, j.result,"
								  "       j.errors OPERATOR(pg_catalog.->) -1, j.xmin"
								  "  FROM jobq.jobs j WHERE j.id OPERATOR(pg_catalog.=) ANY ($1)",
								  1, argtypes);
	for (;;)
	{
		long		left;

		ConditionVariablePrepareToSleep(&JobqShared->job_finished_cv);
		final = look_at_jobs(plan, ids, n, jobs);
		if (final == n || (any && final > 0))
			break;
		left = ms_left(deadline);
		if (deadline != 0 && left <= 0)
			break;
		(void) ConditionVariableTimedSleep(&JobqShared->job_finished_cv,
										   left < 0 ? WAIT_LOOK_MS : Min(left, WAIT_LOOK_MS),
										   PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
		jobq_leave_if_client_gone();
	}
	ConditionVariableCancelSleep();
	return final;
}

static int64
job_id_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job id must not be null")));
	return PG_GETARG_INT64(0);
}

/* The values a wait returns, copied out of SPI into the caller's context. */
static void
waited_job_values(const WaitedJob *job, Oid state_type, MemoryContext cxt,
				  Datum *values, bool *nulls)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	values[0] = Int64GetDatum(job->id);
	nulls[0] = false;
	values[1] = DirectFunctionCall2(enum_in, CStringGetDatum(job->state),
									ObjectIdGetDatum(state_type));
	nulls[1] = false;
	values[2] = job->result_isnull ? (Datum) 0 : datumCopy(job->result, false, -1);
	nulls[2] = job->result_isnull;
	values[3] = job->error_isnull ? (Datum) 0 : datumCopy(job->error, false, -1);
	nulls[3] = job->error_isnull;
	MemoryContextSwitchTo(old);
}

PG_FUNCTION_INFO_V1(jobq_wait);

/* jobq.wait(id, timeout): the job's state once final, or at the timeout. */
Datum
jobq_wait(PG_FUNCTION_ARGS)
{
	int64		id;
	long		timeout_ms;
	WaitedJob	job;
	Datum		state;

	jobq_require_preload();
	id = job_id_arg(fcinfo);
	timeout_ms = timeout_arg_ms(fcinfo, 1);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	(void) wait_for_jobs(&id, 1, false, timeout_ms, &job);
	state = DirectFunctionCall2(enum_in, CStringGetDatum(job.state),
								ObjectIdGetDatum(get_func_rettype(fcinfo->flinfo->fn_oid)));
	SPI_finish();
	PG_RETURN_DATUM(state);
}

PG_FUNCTION_INFO_V1(jobq_wait_result);

/* jobq.wait_result(id, timeout): (state, result, error) of the job. */
Datum
jobq_wait_result(PG_FUNCTION_ARGS)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	int64		id;
	long		timeout_ms;
	WaitedJob	job;
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4];

	jobq_require_preload();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "jobq.wait_result() must return a record");
	desc = BlessTupleDesc(desc);
	id = job_id_arg(fcinfo);
	timeout_ms = timeout_arg_ms(fcinfo, 1);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	(void) wait_for_jobs(&id, 1, false, timeout_ms, &job);
	waited_job_values(&job, TupleDescAttr(desc, 0)->atttypid, caller_cxt, values, nulls);
	SPI_finish();
	/* without the id */
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values + 1, nulls + 1)));
}

PG_FUNCTION_INFO_V1(jobq_wait_any);

/*
 * jobq.wait_any(ids, timeout): once one of the jobs is final, the rows of
 * those that are; none at the timeout.
 */
Datum
jobq_wait_any(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *array;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	int64	   *ids;
	WaitedJob  *jobs;
	long		timeout_ms;
	Oid			state_type;

	jobq_require_preload();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job ids must not be null")));
	array = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(array, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &elem_nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job ids must not be empty")));
	ids = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
	{
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("job ids must not contain null")));
		ids[i] = DatumGetInt64(elems[i]);
	}
	timeout_ms = timeout_arg_ms(fcinfo, 1);
	InitMaterializedSRF(fcinfo, 0);
	state_type = TupleDescAttr(rsinfo->setDesc, 1)->atttypid;

	jobs = palloc(sizeof(WaitedJob) * n);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (wait_for_jobs(ids, n, true, timeout_ms, jobs) > 0)
	{
		for (int i = 0; i < n; i++)
		{
			Datum		values[4];
			bool		nulls[4];

			if (!state_is_final(jobs[i].state))
				continue;
			waited_job_values(&jobs[i], state_type, rsinfo->econtext->ecxt_per_query_memory,
							  values, nulls);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * Whether this database's jobq is fully up: the launcher, every configured
 * worker, both candidates (one of them the leader) and all its services.
 */
static bool
database_ready(void)
{
	int			d = jobq_db_index(MyDatabaseId);
	int			nworkers = Min(jobq_workers, max_worker_processes);
	JobqDatabase *db;
	bool		ready;

	if (d < 0)
		return false;
	db = &JobqShared->databases[d];

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	ready = db->state == JOBQ_DB_ACTIVE && db->leader >= 0 && db->hold_pid == 0;
	LWLockRelease(JobqShared->lock);

	SpinLockAcquire(&JobqShared->launcher.mutex);
	ready &= JobqShared->launcher.pid != 0;
	SpinLockRelease(&JobqShared->launcher.mutex);

	for (int i = 0; i < nworkers && ready; i++)
	{
		JobqComponent *c = jobq_component(d, JOBQ_WORKER, i);

		SpinLockAcquire(&c->mutex);
		ready = c->pid != 0 && (c->state == JOBQ_IDLE || c->state == JOBQ_BUSY);
		SpinLockRelease(&c->mutex);
	}
	/* the standby candidate too: slots short, it is the first to go */
	for (int i = 0; i < JOBQ_CANDIDATES && ready; i++)
	{
		JobqComponent *c = jobq_component(d, JOBQ_CANDIDATE, i);

		SpinLockAcquire(&c->mutex);
		ready = c->pid != 0;
		SpinLockRelease(&c->mutex);
	}
	for (int i = 0; i < JOBQ_NUM_SERVICES && ready; i++)
	{
		JobqComponent *c = jobq_component(d, JOBQ_SERVICE, i);

		SpinLockAcquire(&c->mutex);
		ready = c->state == JOBQ_RUNNING;
		SpinLockRelease(&c->mutex);
	}
	return ready;
}

PG_FUNCTION_INFO_V1(jobq_wait_ready);

Datum
jobq_wait_ready(PG_FUNCTION_ARGS)
{
	long		timeout_ms;
	TimestampTz deadline = 0;
	bool		ready;

	jobq_require_preload();
	timeout_ms = timeout_arg_ms(fcinfo, 0);
	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	ConditionVariablePrepareToSleep(&JobqShared->components_cv);
	while (!(ready = database_ready()))
	{
		long		left = ms_left(deadline);

		if (deadline != 0 && left <= 0)
			break;
		/* states change without a broadcast too (idle/busy): look again */
		(void) ConditionVariableTimedSleep(&JobqShared->components_cv,
										   left < 0 ? 100 : Min(left, 100),
										   PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
	PG_RETURN_BOOL(ready);
}

PG_FUNCTION_INFO_V1(jobq_current_job_id_sql);

Datum
jobq_current_job_id_sql(PG_FUNCTION_ARGS)
{
	if (jobq_current_job_id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(jobq_current_job_id);
}
