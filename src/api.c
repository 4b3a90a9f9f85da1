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
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
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

	InitFunctionCallInfoData(*inner, &target->flinfo, fcinfo->nargs + 1,
							 fcinfo->fncollation, NULL, NULL);
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
 * jobq.wait(id, timeout): sleeps on a condition variable that is broadcast
 * whenever a transaction that made jobs final commits; after each wake-up
 * it looks at the job again, with a fresh snapshot, as the caller (so the
 * caller sees only jobs it may see).
 */
PG_FUNCTION_INFO_V1(jobq_wait);

Datum
jobq_wait(PG_FUNCTION_ARGS)
{
	int64		job_id;
	long		timeout_ms;
	TimestampTz deadline = 0;
	Oid			argtypes[1] = {INT8OID};
	SPIPlanPtr	plan;
	Datum		values[1];
	char	   *state = NULL;
	Datum		result = (Datum) 0;

	jobq_require_preload();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job id must not be null")));
	job_id = PG_GETARG_INT64(0);
	timeout_ms = timeout_arg_ms(fcinfo, 1);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("jobq.wait() cannot be used in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Its snapshot would never show the job finishing.")));
	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	values[0] = Int64GetDatum(job_id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = jobq_prepare_transient("SELECT state::text, xmin FROM jobq.jobs WHERE id = $1", 1, argtypes);

	for (;;)
	{
		long		left;

		ConditionVariablePrepareToSleep(&JobqShared->job_finished_cv);
		if (jobq_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job " INT64_FORMAT " does not exist", job_id)));
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		if (state_is_final(state))
			break;
		{
			bool		isnull;
			TransactionId xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
																	 SPI_tuptable->tupdesc, 2, &isnull));

			if (TransactionIdIsCurrentTransactionId(xmin))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot wait for job " INT64_FORMAT ": the current transaction has changed it", job_id),
						 errdetail("Workers see the job only once this transaction commits.")));
		}
		left = ms_left(deadline);
		if (deadline != 0 && left <= 0)
			break;
		(void) ConditionVariableTimedSleep(&JobqShared->job_finished_cv,
										   left < 0 ? 1000 : Min(left, 1000),
										   PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();

	result = DirectFunctionCall2(enum_in, CStringGetDatum(state),
								 ObjectIdGetDatum(get_func_rettype(fcinfo->flinfo->fn_oid)));
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/*
 * Whether this database's jobq is fully up: the launcher, every configured
 * worker, a leader and all its services.
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
