/*-------------------------------------------------------------------------
 *
 * cleaner.c
 *	  Leader service: deletes final jobs older than their retention
 *	  (jobq.completed_retention; jobq.discarded_retention for discarded and
 *	  cancelled jobs).
 *
 * Each cycle deletes at most DELETE_BATCH jobs of each kind of retention,
 * in one short transaction, skipping rows others have locked; when a batch
 * was full the cleaner runs again at once, so a backlog is worked off in
 * many small transactions that never hold locks for long.
 *
 * Each cycle also folds jobq.final_counts (see final_counts.c): the rows
 * statements appended more than a minute ago become one row per key.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"

#define DELETE_BATCH	1000

static SPIPlanPtr delete_completed_plan;
static SPIPlanPtr delete_failed_plan;
static SPIPlanPtr fold_counts_plan;	/* NULL on a 0.1.0 schema */

#define DELETE_SQL(states) \
"WITH old AS MATERIALIZED (" \
"    SELECT ctid AS tid FROM jobq.jobs" \
"     WHERE state IN " states \
"       AND finalized_at < now() - $1 * interval '1 second'" \
"     ORDER BY finalized_at" \
"     LIMIT " CppAsString2(DELETE_BATCH) \
"     FOR UPDATE SKIP LOCKED)" \
" DELETE FROM jobq.jobs j USING old WHERE j.ctid = old.tid"

static const JobqStatement DELETE_COMPLETED = {"delete completed",
	DELETE_SQL("('completed')"), 1, {FLOAT8OID}};
static const JobqStatement DELETE_FAILED = {"delete discarded and cancelled",
	DELETE_SQL("('discarded', 'cancelled')"), 1, {FLOAT8OID}};

/*
 * The counts older than a minute become one row per key (at NULL); the
 * newer rows are what queue_stats counts as ended in the last minute.
 * Rows appended by transactions still running wait for the next cycle.
 */
static const JobqStatement FOLD_COUNTS = {"fold final counts",
"WITH gone AS MATERIALIZED ("
"    DELETE FROM jobq.final_counts"
"     WHERE at IS NULL OR at OPERATOR(pg_catalog.<) now() - interval '1 minute'"
"    RETURNING queue, kind, owner, leased_by, state, jobs)"
" INSERT INTO jobq.final_counts (queue, kind, owner, leased_by, state, jobs, at)"
" SELECT queue, kind, owner, leased_by, state, sum(jobs), NULL"
"   FROM gone"
"  GROUP BY queue, kind, owner, leased_by, state"
" HAVING sum(jobs) OPERATOR(pg_catalog.<>) 0",
	0, {0}};

const JobqStatement *const jobq_cleaner_statements[] = {
	&DELETE_COMPLETED, &DELETE_FAILED, &FOLD_COUNTS, NULL
};

static void
cleaner_start(void)
{
	delete_completed_plan = jobq_prepare_statement(&DELETE_COMPLETED);
	delete_failed_plan = jobq_prepare_statement(&DELETE_FAILED);
	if (jobq_schema_is_current())
		fold_counts_plan = jobq_prepare_statement(&FOLD_COUNTS);
}

static void
cleaner_stop(void)
{
	jobq_free_plan(&delete_completed_plan);
	jobq_free_plan(&delete_failed_plan);
	jobq_free_plan(&fold_counts_plan);
}

static uint64
delete_older_than(SPIPlanPtr plan, int retention_s)
{
	Datum		values[1] = {Float8GetDatum((double) retention_s)};

	if (jobq_execute_plan(plan, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete old jobs");
	return SPI_processed;
}

static long
cleaner_run(int db_index)
{
	uint64		completed = delete_older_than(delete_completed_plan, jobq_completed_retention_s);
	uint64		failed = delete_older_than(delete_failed_plan, jobq_discarded_retention_s);

	if (completed + failed > 0)
		elog(DEBUG1, "jobq cleaner deleted " UINT64_FORMAT " completed and " UINT64_FORMAT " discarded or cancelled jobs",
			 completed, failed);
	if (completed == DELETE_BATCH || failed == DELETE_BATCH)
		return 0;
	if (fold_counts_plan != NULL &&
		jobq_execute_plan(fold_counts_plan, NULL, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not fold jobq.final_counts");
	return jobq_cleanup_interval_ms;
}

const JobqServiceDef jobq_cleaner_service = {
	JOBQ_CLEANER, cleaner_start, cleaner_stop, cleaner_run
};
