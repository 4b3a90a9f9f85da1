/*-------------------------------------------------------------------------
 *
 * scheduler.c
 *	  Leader service: makes due scheduled and retryable jobs available and
 *	  wakes workers for them.
 *
 * It runs when the next waiting job is due, and whenever the leader is
 * woken (a transaction that enqueued a future job, or made a job
 * retryable, wakes it at commit).  Jobs move in batches of PROMOTE_BATCH,
 * each batch its own transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "executor/spi.h"

#define PROMOTE_BATCH		1000
#define IDLE_RECHECK_MS		60000	/* nothing waiting: we are woken anyway */
#define LOCKED_RECHECK_MS	100 /* due jobs locked by others: do not spin */

static SPIPlanPtr promote_plan;
static SPIPlanPtr next_due_plan;

static const JobqStatement PROMOTE = {"promote",
"WITH due AS MATERIALIZED ("
"    SELECT ctid AS tid FROM jobq.jobs"
"     WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()"
"     ORDER BY scheduled_at"
"     LIMIT " CppAsString2(PROMOTE_BATCH)
"     FOR UPDATE SKIP LOCKED)"
" UPDATE jobq.jobs j SET state = 'available'"
"   FROM due WHERE j.ctid = due.tid",
0, {0}};

static const JobqStatement NEXT_DUE = {"next due",
"SELECT (extract(epoch FROM scheduled_at - clock_timestamp()) * 1000)::int8"
"  FROM jobq.jobs WHERE state IN ('scheduled', 'retryable')"
" ORDER BY scheduled_at LIMIT 1",
0, {0}};

const JobqStatement *const jobq_scheduler_statements[] = {&PROMOTE, &NEXT_DUE, NULL};

static void
scheduler_start(void)
{
	promote_plan = jobq_prepare_statement(&PROMOTE);
	next_due_plan = jobq_prepare_statement(&NEXT_DUE);
}

static void
scheduler_stop(void)
{
	jobq_free_plan(&promote_plan);
	jobq_free_plan(&next_due_plan);
}

static long
scheduler_run(int db_index)
{
	uint64		promoted;
	bool		isnull;
	int64		due_in_ms;

	if (jobq_execute_plan(promote_plan, NULL, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not make due jobs available");
	promoted = SPI_processed;
	if (promoted > 0)
		jobq_at_commit_wake_workers((int) promoted);
	if (promoted == PROMOTE_BATCH)
		return 0;

	if (jobq_execute_plan(next_due_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find the next due job");
	if (SPI_processed == 0)
		return IDLE_RECHECK_MS;
	due_in_ms = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	if (due_in_ms <= 0)
		return promoted > 0 ? 0 : LOCKED_RECHECK_MS;
	return (long) Min(due_in_ms, IDLE_RECHECK_MS);
}

const JobqServiceDef jobq_scheduler_service = {
	JOBQ_SCHEDULER, scheduler_start, scheduler_stop, scheduler_run
};
