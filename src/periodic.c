/*-------------------------------------------------------------------------
 *
 * periodic.c
 *	  Leader service: enqueues the jobs of cron schedules (jobq.schedules).
 *
 * A due schedule is locked, its job enqueued (as the schedule's owner) and
 * its next fire time advanced in one transaction, so each fire time
 * enqueues exactly one job, even when the leader dies half-way: the next
 * leader finds the schedule still due and does it again from scratch.  The
 * job's unique key names the schedule and fire time as well.
 *
 * After downtime a schedule fires once for the missed time, then moves to
 * its next fire time after now: missed fires are not back-filled.  A
 * schedule whose job cannot be enqueued (its kind was unregistered, say)
 * keeps the error in jobq.schedules.last_error and still moves on.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#define DUE_BATCH			100
#define IDLE_RECHECK_MS		60000

static SPIPlanPtr due_plan;
static SPIPlanPtr enqueue_plan;
static SPIPlanPtr advance_plan;
static SPIPlanPtr next_plan;

static const char *DUE_SQL =
"SELECT name, kind, args, queue, priority::int4, max_attempts, owner::oid, next_fire_at"
"  FROM jobq.schedules WHERE next_fire_at <= now()"
" ORDER BY next_fire_at LIMIT " CppAsString2(DUE_BATCH)
" FOR UPDATE SKIP LOCKED";

static const char *ENQUEUE_SQL =
"SELECT jobq._enqueue($1::regrole, $2, $3, NULL, $4, $5, $6,"
"                     'jobq.schedule:' || $7 || ':' || extract(epoch FROM $8)::int8::text)";

static const char *ADVANCE_SQL =
"UPDATE jobq.schedules"
"   SET next_fire_at = jobq._cron_next(cron, now()),"
"       last_fire_at = $2, last_job_id = $3, last_error = $4"
" WHERE name = $1";

static const char *NEXT_SQL =
"SELECT (extract(epoch FROM min(next_fire_at) - clock_timestamp()) * 1000)::int8"
"  FROM jobq.schedules";

static void
periodic_start(void)
{
	Oid			enqueue_types[8] = {OIDOID, TEXTOID, JSONBOID, TEXTOID, INT4OID,
	INT4OID, TEXTOID, TIMESTAMPTZOID};
	Oid			advance_types[4] = {TEXTOID, TIMESTAMPTZOID, INT8OID, TEXTOID};

	due_plan = jobq_prepare(DUE_SQL, 0, NULL);
	enqueue_plan = jobq_prepare(ENQUEUE_SQL, 8, enqueue_types);
	advance_plan = jobq_prepare(ADVANCE_SQL, 4, advance_types);
	next_plan = jobq_prepare(NEXT_SQL, 0, NULL);
}

static void
periodic_stop(void)
{
	jobq_free_plan(&due_plan);
	jobq_free_plan(&enqueue_plan);
	jobq_free_plan(&advance_plan);
	jobq_free_plan(&next_plan);
}

/*
 * Enqueues one fire of a schedule in a subtransaction; returns the job id,
 * or 0 with *error set.
 */
static int64
enqueue_fire(HeapTuple due, TupleDesc desc, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Datum		values[8];
	char		nulls[8];
	int64		job_id = 0;

	/* _enqueue's arguments, as columns of the due row */
	static const int columns[8] = {7, 2, 3, 4, 5, 6, 1, 8};

	for (int i = 0; i < 8; i++)
	{
		bool		isnull;

		values[i] = SPI_getbinval(due, desc, columns[i], &isnull);
		nulls[i] = isnull ? 'n' : ' ';
	}

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		bool		isnull;

		if (jobq_execute_plan(enqueue_plan, values, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not enqueue a scheduled job");
		job_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		*error = edata->message;
		job_id = 0;
	}
	PG_END_TRY();
	return job_id;
}

static long
periodic_run(int db_index)
{
	SPITupleTable *due;
	uint64		ndue;
	bool		isnull;
	int64		next_ms;

	if (jobq_execute_plan(due_plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find due schedules");
	due = SPI_tuptable;
	ndue = SPI_processed;

	for (uint64 i = 0; i < ndue; i++)
	{
		HeapTuple	tup = due->vals[i];
		char	   *name = SPI_getvalue(tup, due->tupdesc, 1);
		char	   *error = NULL;
		int64		job_id = enqueue_fire(tup, due->tupdesc, &error);
		Datum		values[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};

		if (error != NULL)
			ereport(WARNING,
					(errcode(ERRCODE_WARNING),
					 errmsg("jobq schedule \"%s\" could not enqueue its job: %s", name, error)));
		values[0] = CStringGetTextDatum(name);
		values[1] = SPI_getbinval(tup, due->tupdesc, 8, &isnull);
		values[2] = Int64GetDatum(job_id);
		nulls[2] = job_id == 0 ? 'n' : ' ';
		values[3] = error ? CStringGetTextDatum(error) : (Datum) 0;
		nulls[3] = error ? ' ' : 'n';
		if (jobq_execute_plan(advance_plan, values, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not advance schedule \"%s\"", name);
	}
	if (ndue == DUE_BATCH)
		return 0;

	if (jobq_execute_plan(next_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find the next schedule");
	next_ms = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		return IDLE_RECHECK_MS;
	if (next_ms <= 0)
		return ndue > 0 ? 0 : 100;	/* due but locked by others: do not spin */
	return (long) Min(next_ms, IDLE_RECHECK_MS);
}

const JobqServiceDef jobq_periodic_service = {
	JOBQ_PERIODIC, periodic_start, periodic_stop, periodic_run
};
