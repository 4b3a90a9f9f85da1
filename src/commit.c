/*-------------------------------------------------------------------------
 *
 * commit.c
 *	  What a transaction asks to happen once it commits: wake idle workers
 *	  because it made jobs available, wake the leader because it changed
 *	  what is scheduled, wake jobq.wait() callers because jobs became final,
 *	  flush the workers' caches because handlers or queues changed, and tell
 *	  the launcher about CREATE/DROP EXTENSION, and tell the workers running
 *	  jobs this transaction cancelled.
 *
 * Nothing is signalled before COMMIT: a worker woken earlier could not see
 * the jobs yet, and a rolled-back transaction must wake nobody.  The
 * callback runs after the commit is visible to other backends (after
 * ProcArrayEndTransaction), so a woken worker finds the jobs.  It must not
 * fail: it only takes a shared LWLock and sets latches.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/memutils.h"

/*
 * A running job this transaction cancelled, and the subtransaction level
 * that did it: a rolled-back subtransaction takes its cancels with it, or
 * a worker would interrupt a job that was not cancelled.
 */
typedef struct CancelledJob
{
	int64		job_id;
	int			nest_level;
} CancelledJob;

typedef struct PendingActions
{
	bool		made_available; /* jobs became available: claims look again */
	int64		wake_workers;	/* idle workers to wake for them */
	bool		wake_leader;
	bool		rescue_soon;
	bool		jobs_finished;
	bool		config_changed;
	bool		recheck_database;
	bool		probe_database;
	bool		rescan_databases;
	Oid			off_database;	/* ALTER DATABASE ... jobq.enabled: which, */
	bool		off;			/* and whether it is now off */
	int			release_database;	/* db_index held by ddl.c, or -1 */
} PendingActions;

static PendingActions pending = {.release_database = -1};
static List *cancelled_running = NIL;	/* of CancelledJob, in TopMemoryContext */
static bool callback_registered = false;

static void
reset_pending(void)
{
	memset(&pending, 0, sizeof(pending));
	pending.release_database = -1;
	list_free_deep(cancelled_running);
	cancelled_running = NIL;
}

/* Asks the workers running the cancelled jobs to stop them. */
static void
signal_cancelled_jobs(void)
{
	int			db_index;
	ListCell   *lc;

	if (cancelled_running == NIL || (db_index = jobq_db_index(MyDatabaseId)) < 0)
		return;
	foreach(lc, cancelled_running)
		jobq_cancel_running_job(db_index, ((CancelledJob *) lfirst(lc))->job_id);
}

static void
run_pending_actions(void)
{
	int			db_index = -1;

	if (JobqShared == NULL)
		return;

	if (pending.config_changed)
		pg_atomic_fetch_add_u64(&JobqShared->config_generation, 1);

	if (pending.made_available || pending.wake_leader || pending.rescue_soon ||
		pending.recheck_database)
		db_index = jobq_db_index(MyDatabaseId);

	if (db_index >= 0)
	{
		JobqDatabase *db = &JobqShared->databases[db_index];

		if (pending.made_available)
		{
			/* a full barrier: a claimer counted before its look is seen */
			pg_atomic_fetch_add_u64(&db->available_generation, 1);
			if (pg_atomic_read_u32(&db->claim_waiters) > 0)
				ConditionVariableBroadcast(&db->available_cv);
		}
		if (pending.rescue_soon)
			pg_atomic_fetch_add_u32(&db->rescue_requests, 1);
		if (pending.recheck_database)
			jobq_wake_database(db_index);
		else if (pending.wake_workers > 0)
			jobq_wake_workers(db_index, (int) Min(pending.wake_workers, PG_INT32_MAX));
		if (pending.wake_leader || pending.rescue_soon)
			jobq_wake_leader(db_index);
	}

	if (pending.jobs_finished)
		ConditionVariableBroadcast(&JobqShared->job_finished_cv);

	signal_cancelled_jobs();

	if (pending.probe_database || pending.rescan_databases || pending.recheck_database ||
		OidIsValid(pending.off_database))
	{
		LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
		JobqShared->rescan_requested = true;
		for (int d = 0; d < JobqShared->max_databases; d++)
			if (OidIsValid(pending.off_database) &&
				JobqShared->databases[d].state != JOBQ_DB_FREE &&
				JobqShared->databases[d].dboid == pending.off_database)
				JobqShared->databases[d].off = pending.off;
		if (pending.probe_database || pending.recheck_database)
		{
			for (int d = 0; d < JobqShared->max_databases; d++)
			{
				JobqDatabase *db = &JobqShared->databases[d];

				/*
				 * One candidate finds out whether the extension is there:
				 * after CREATE EXTENSION where jobq did not run, and after a
				 * drop of jobq (whose processes the drop already stopped).
				 */
				if (db->dboid == MyDatabaseId &&
					(db->state == JOBQ_DB_ABSENT ||
					 (pending.recheck_database && db->state == JOBQ_DB_ACTIVE)))
					db->state = JOBQ_DB_PROBING;
			}
		}
		LWLockRelease(JobqShared->lock);
		jobq_wake_launcher();
	}
}

static void
jobq_xact_callback(XactEvent event, void *arg)
{
	/* a hold ends with the transaction, committed or not */
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT) &&
		pending.release_database >= 0)
		jobq_release_database(pending.release_database);

	switch (event)
	{
		case XACT_EVENT_COMMIT:
			run_pending_actions();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/*
			 * A prepared transaction commits later in another session, which
			 * wakes nobody; jobq.poll_interval covers its jobs.
			 */
			break;
		default:
			return;
	}
	reset_pending();
}

static void
jobq_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	foreach(lc, cancelled_running)
	{
		CancelledJob *c = lfirst(lc);

		if (c->nest_level < level)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			c->nest_level = level - 1;
		else
		{
			cancelled_running = foreach_delete_current(cancelled_running, lc);
			pfree(c);
		}
	}
}

static void
ensure_callback(void)
{
	jobq_require_preload();
	if (!callback_registered)
	{
		RegisterXactCallback(jobq_xact_callback, NULL);
		RegisterSubXactCallback(jobq_subxact_callback, NULL);
		callback_registered = true;
	}
}

void
jobq_at_commit_cancel_running(int64 job_id)
{
	MemoryContext old;
	CancelledJob *c;

	ensure_callback();
	old = MemoryContextSwitchTo(TopMemoryContext);
	c = palloc(sizeof(CancelledJob));
	c->job_id = job_id;
	c->nest_level = GetCurrentTransactionNestLevel();
	cancelled_running = lappend(cancelled_running, c);
	MemoryContextSwitchTo(old);
}

/*
 * Jobs become available at commit: claims must look at them (the
 * generation), and howmany idle workers are woken for them (0 for jobs of
 * a paused queue: the resume wakes them).
 */
void
jobq_at_commit_wake_workers(int howmany)
{
	ensure_callback();
	pending.made_available = true;
	pending.wake_workers += Max(howmany, 0);
}

void
jobq_at_commit_wake_leader(void)
{
	ensure_callback();
	pending.wake_leader = true;
}

/* A lease was taken that ends before the rescuer's next run. */
void
jobq_at_commit_rescue_soon(void)
{
	ensure_callback();
	pending.rescue_soon = true;
}

void
jobq_at_commit_jobs_finished(void)
{
	ensure_callback();
	pending.jobs_finished = true;
}

void
jobq_at_commit_config_changed(void)
{
	ensure_callback();
	pending.config_changed = true;
}

void
jobq_at_commit_probe_database(void)
{
	ensure_callback();
	pending.probe_database = true;
}

/* Publishes a database's jobq.enabled, as the transaction leaves it. */
void
jobq_at_commit_set_database_off(Oid dboid, bool off)
{
	ensure_callback();
	pending.off_database = dboid;
	pending.off = off;
}

void
jobq_at_commit_recheck_database(void)
{
	ensure_callback();
	pending.recheck_database = true;
}

void
jobq_at_xact_end_release_database(int db_index)
{
	ensure_callback();
	pending.release_database = db_index;
}

void
jobq_at_commit_rescan_databases(void)
{
	ensure_callback();
	pending.rescan_databases = true;
}

/* SQL-callable wrappers, used by the API functions in jobq--*.sql */

PG_FUNCTION_INFO_V1(jobq_wake_workers_at_commit_sql);
PG_FUNCTION_INFO_V1(jobq_wake_leader_at_commit_sql);
PG_FUNCTION_INFO_V1(jobq_jobs_finished_at_commit_sql);
PG_FUNCTION_INFO_V1(jobq_config_changed_sql);
PG_FUNCTION_INFO_V1(jobq_cancel_running_at_commit_sql);

Datum
jobq_wake_workers_at_commit_sql(PG_FUNCTION_ARGS)
{
	jobq_at_commit_wake_workers(PG_GETARG_INT32(0));
	PG_RETURN_VOID();
}

Datum
jobq_wake_leader_at_commit_sql(PG_FUNCTION_ARGS)
{
	jobq_at_commit_wake_leader();
	PG_RETURN_VOID();
}

Datum
jobq_jobs_finished_at_commit_sql(PG_FUNCTION_ARGS)
{
	jobq_at_commit_jobs_finished();
	PG_RETURN_VOID();
}

Datum
jobq_config_changed_sql(PG_FUNCTION_ARGS)
{
	jobq_at_commit_config_changed();
	PG_RETURN_VOID();
}

Datum
jobq_cancel_running_at_commit_sql(PG_FUNCTION_ARGS)
{
	/* a handler cancelling its own job: see job_control.c */
	jobq_cancel_own_job(PG_GETARG_INT64(0));
	jobq_at_commit_cancel_running(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}
