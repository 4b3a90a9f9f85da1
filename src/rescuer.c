/*-------------------------------------------------------------------------
 *
 * rescuer.c
 *	  Leader service: gives back the running jobs no live worker holds.
 *
 * A running job's attempted_by is the claim that took it; every live
 * worker publishes the claim it holds in shared memory, from before it
 * claims until the claimed jobs' outcomes are committed.  A running job
 * whose claim is not held lost its worker (killed, crashed, terminated for
 * overrunning its timeout, server restart, failover to a standby) or was
 * left behind by one (its outcome could not be recorded), and becomes
 * retryable, or discarded when it has no attempts left, with an error
 * entry marked "lost".  The launcher wakes the leader the moment a worker
 * exits, and a worker that leaves a job behind wakes it too, so a rescue
 * follows within one leader cycle; jobq.rescue_interval is a safety net.
 *
 * Ordering is what makes this exact: the running jobs are read first, and
 * the held claims after that.  A job seen running was claimed before our
 * read, by a worker that published the claim before claiming; if the claim
 * is not held after our read, the worker has moved on or exited.  So a job
 * is never taken from a live claim, however long its handler runs.  The
 * update re-checks state and claim, in case the job moved on, and skips
 * rows locked by others (a user's jobq.cancel in progress): no user
 * session can make the rescuer wait.
 *
 * An external job (external.c) is held by a lease instead: it is lost
 * once lease_until has passed, and the rescuer runs again when the
 * earliest lease ends.  It publishes that time (rescue_due_at); a claim
 * whose lease ends before it asks for a run at its commit.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define LOCKED_RECHECK_MS	1000	/* lost jobs locked by a user session */

static SPIPlanPtr running_plan;

/* lease_ms: for an external job, how long until its lease ends (< 0: ended) */
static const JobqStatement RUNNING = {"running jobs",
"SELECT id, attempted_by, external,"
"       (extract(epoch FROM lease_until - (SELECT clock_timestamp())) * 1000)::float8"
"  FROM jobq.jobs WHERE state = 'running'",
0, {0}};

/* The same on a 0.1.0 schema (jobq_schema_is_current): no leases */
static const JobqStatement RUNNING_0_1 = {"running jobs (0.1.0)",
"SELECT id, attempted_by, false, NULL::float8 FROM jobq.jobs WHERE state = 'running'",
0, {0}};

const JobqStatement *const jobq_rescuer_statements[] = {&RUNNING, NULL};

static void
rescuer_start(void)
{
	running_plan = jobq_prepare_statement(jobq_schema_is_current() ? &RUNNING : &RUNNING_0_1);
}

static void
rescuer_stop(void)
{
	jobq_free_plan(&running_plan);
	jobq_job_state_forget_rescue_plan();
}

static bool
is_live(uint64 claim, const uint64 *live, int nlive)
{
	for (int i = 0; i < nlive; i++)
		if (live[i] == claim)
			return true;
	return false;
}

static long
rescuer_run_once(int db_index)
{
	uint64	   *live = palloc(sizeof(uint64) * max_worker_processes);
	int			nlive;
	int64	   *ids;
	uint64	   *claims;
	int			nlost = 0;
	int			ends[JOBQ_NUM_ENDS] = {0};
	int			rescued;
	uint64		nrunning;
	long		next_ms = jobq_rescue_interval_ms;

	if (jobq_execute_plan(running_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list running jobs");
	/* only now: see the header comment */
	nlive = jobq_live_claims(db_index, live);

	nrunning = SPI_processed;
	ids = palloc(sizeof(int64) * Max(nrunning, 1));
	claims = palloc(sizeof(uint64) * Max(nrunning, 1));
	for (uint64 i = 0; i < nrunning; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		id = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		bool		external = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
		Datum		lease_ms = SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull);
		Datum		by;

		if (external && !isnull && DatumGetFloat8(lease_ms) >= 0)
		{
			/* 1 ms after it ends: a lease ends once lease_until has passed */
			next_ms = Min(next_ms, (long) DatumGetFloat8(lease_ms) + 1);
			continue;
		}
		by = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
		if (!external && !isnull && is_live((uint64) DatumGetInt64(by), live, nlive))
			continue;
		ids[nlost] = DatumGetInt64(id);
		claims[nlost] = isnull ? 0 : (uint64) DatumGetInt64(by);
		nlost++;
	}
	if (nlost == 0)
		return next_ms;

	jobq_jobs_rescue(ids, claims, nlost, ends);
	rescued = ends[JOBQ_END_RETRYABLE] + ends[JOBQ_END_DISCARDED];
	if (rescued > 0)
	{
		ereport(LOG,
				(errmsg("jobq rescuer of database \"%s\" gave back %d jobs of lost workers (%d discarded: no attempts left)",
						jobq_process_database(), rescued, ends[JOBQ_END_DISCARDED])));
		/* the scheduler picks up the retryable ones when due */
		jobq_at_commit_wake_leader();
		if (ends[JOBQ_END_DISCARDED] > 0)
			jobq_at_commit_jobs_finished();
	}
	/* some were locked by a user session (or ended meanwhile): look again soon */
	if (nlost > rescued)
		return Min(next_ms, LOCKED_RECHECK_MS);
	return next_ms;
}

static long
rescuer_run(int db_index)
{
	long		next_ms = rescuer_run_once(db_index);

	pg_atomic_write_u64(&JobqShared->databases[db_index].rescue_due_at,
						(uint64) TimestampTzPlusMilliseconds(GetCurrentTimestamp(), next_ms));
	return next_ms;
}

const JobqServiceDef jobq_rescuer_service = {
	JOBQ_RESCUER, rescuer_start, rescuer_stop, rescuer_run
};
