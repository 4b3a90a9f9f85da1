/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: the one static background worker.  It keeps the table of
 *	  databases in shared memory in step with pg_database, and in every
 *	  database where the extension is installed keeps jobq.workers workers
 *	  and JOBQ_CANDIDATES leader candidates running.
 *
 * A database starts PROBING: one candidate connects and reports whether
 * the extension is there (ACTIVE) or not (ABSENT).  CREATE EXTENSION moves
 * a database back to PROBING (ddl.c), and a process finding the extension
 * dropped marks it ABSENT.  The launcher never connects to a database
 * itself: it reads only the shared catalog pg_database.  jobq.enabled =
 * off, the launcher's own (server-wide) or a database's (JobqDatabase.off),
 * stops a database's processes and starts none until it is on again.
 *
 * Every process it starts has bgw_notify_pid set to the launcher, so the
 * postmaster wakes it at each start and exit.  An exit the launcher did
 * not ask for is answered with a restart after 1 s, 2 s, 4 s, ... (capped);
 * a process that lived longer than the cap starts the series again.  A
 * worker that exits on purpose (its job watchdog terminated it) says so
 * (restart_at_once) and is restarted at once.  When
 * the postmaster has no free background worker slot, the launcher says so
 * in the log, naming max_worker_processes, and retries on the same backoff.
 *
 * The launcher starts only after recovery, so a hot standby runs nothing.
 * If the launcher itself restarts, processes it started earlier are
 * orphans it has no handle for: it terminates them and starts new ones
 * once their slots are free.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"
#include "storage/ipc.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define RESCAN_INTERVAL_MS	60000	/* look at pg_database without being asked */
#define NO_SLOT_RETRY_MS	1000	/* look for a free worker slot this often */

/* Launcher-local bookkeeping for one component slot. */
typedef struct LaunchedProcess
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz next_start;		/* do not start before this */
	int			failures;		/* consecutive early exits or failed starts */
	bool		terminating;	/* TerminateBackgroundWorker() sent */
	bool		no_slot;		/* wanted, but its last start found no free slot */
} LaunchedProcess;

/* What one database should run now (plan_database). */
typedef struct DatabasePlan
{
	bool		in_use;
	bool		active;			/* jobq is installed and may run there */
	int			nworkers;
	int			ncandidates;
	bool		any_running;
} DatabasePlan;

typedef struct DatabaseSeen
{
	Oid			oid;
	char		name[NAMEDATALEN];
} DatabaseSeen;

static LaunchedProcess *launched;	/* [max_databases * slots_per_db] */
static bool *database_gone;		/* [max_databases]: no longer in pg_database */
static JobqDatabaseState *logged_state; /* [max_databases]: last state logged */
static bool *logged_off;		/* [max_databases]: last jobq.enabled logged */
static DatabasePlan *plans;		/* [max_databases] */
static int	warned_needed = 0;	/* slots needed when last warned, or 0 */
static List *warned_full = NIL; /* OIDs warned about jobq.max_databases */

void
jobq_launcher_register(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 1;
	strlcpy(bgw.bgw_library_name, "jobq", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "jobq_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "jobq launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "jobq launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

static const char *
process_kind_name(JobqComponentKind kind)
{
	return kind == JOBQ_WORKER ? "worker" : "candidate";
}

/* The connectable, non-template databases, read from pg_database. */
static List *
list_databases(MemoryContext cxt)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database pgdb = (Form_pg_database) GETSTRUCT(tup);
		DatabaseSeen *seen;

		if (!pgdb->datallowconn || pgdb->datistemplate ||
			database_is_invalid_form(pgdb))
			continue;
		seen = MemoryContextAlloc(cxt, sizeof(DatabaseSeen));
		seen->oid = pgdb->oid;
		strlcpy(seen->name, NameStr(pgdb->datname), NAMEDATALEN);
		result = lappend(result, seen);	/* list cells in cxt too */
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

static void
reset_database_slots(int d)
{
	for (int i = 0; i < JobqShared->slots_per_db; i++)
	{
		JobqComponent *c = &JobqShared->components[d * JobqShared->slots_per_db + i];

		SpinLockAcquire(&c->mutex);
		c->restarts = 0;
		c->jobs_done = 0;
		c->jobs_failed = 0;
		c->last_error[0] = '\0';
		c->last_error_at = 0;
		c->started_at = 0;
		c->state = JOBQ_STOPPED;
		SpinLockRelease(&c->mutex);
		memset(&launched[d * JobqShared->slots_per_db + i], 0, sizeof(LaunchedProcess));
	}
}

/* Brings the database table in step with pg_database. */
static void
scan_databases(void)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "jobq scan",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	List	   *seen = list_databases(cxt);
	ListCell   *lc;

	MemoryContextSwitchTo(old);

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->rescan_requested = false;

	for (int d = 0; d < JobqShared->max_databases; d++)
	{
		JobqDatabase *db = &JobqShared->databases[d];
		bool		found = false;

		if (db->state == JOBQ_DB_FREE)
			continue;
		foreach(lc, seen)
		{
			DatabaseSeen *s = lfirst(lc);

			if (s->oid == db->dboid)
			{
				found = true;
				strlcpy(db->name, s->name, NAMEDATALEN);	/* may be renamed */
				break;
			}
		}
		database_gone[d] = !found;
	}

	foreach(lc, seen)
	{
		DatabaseSeen *s = lfirst(lc);
		int			free_slot = -1;
		bool		known = false;

		for (int d = 0; d < JobqShared->max_databases; d++)
		{
			JobqDatabase *db = &JobqShared->databases[d];

			if (db->state != JOBQ_DB_FREE && db->dboid == s->oid)
				known = true;
			else if (db->state == JOBQ_DB_FREE && free_slot < 0)
				free_slot = d;
		}
		if (known)
			continue;
		if (free_slot < 0)
		{
			if (!list_member_oid(warned_full, s->oid))
			{
				MemoryContext top = MemoryContextSwitchTo(TopMemoryContext);

				warned_full = lappend_oid(warned_full, s->oid);
				MemoryContextSwitchTo(top);
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("jobq cannot watch database \"%s\": all %d database slots are in use",
								s->name, JobqShared->max_databases),
						 errhint("Raise jobq.max_databases and restart the server.")));
			}
			continue;
		}
		JobqShared->databases[free_slot].dboid = s->oid;
		strlcpy(JobqShared->databases[free_slot].name, s->name, NAMEDATALEN);
		JobqShared->databases[free_slot].state = JOBQ_DB_PROBING;
		JobqShared->databases[free_slot].hold_pid = 0;
		JobqShared->databases[free_slot].off = false;	/* until a process looks */
		JobqShared->databases[free_slot].leader = -1;
		JobqShared->databases[free_slot].leader_latch = NULL;
		JobqShared->databases[free_slot].leader_key = 0;
		JobqShared->databases[free_slot].leader_key_used = false;
		database_gone[free_slot] = false;
		logged_state[free_slot] = JOBQ_DB_PROBING;
		reset_database_slots(free_slot);
	}
	LWLockRelease(JobqShared->lock);

	MemoryContextDelete(cxt);
}

static void
warn_short(int needed, int databases)
{
	ereport(WARNING,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("jobq needs %d background worker slots for %d databases, but max_worker_processes is %d",
					needed, databases, max_worker_processes),
			 errdetail("The slots are shared out fairly: each database gets a leader and a worker before any gets more."),
			 errhint("Raise max_worker_processes: jobq needs 1 + (jobq.workers + %d) per database, besides other background workers.",
					 JOBQ_CANDIDATES)));
}

/* Background worker slots jobq wants for this many databases. */
int
jobq_slots_needed(int databases)
{
	return 1 + databases * (Min(jobq_workers, max_worker_processes) + JOBQ_CANDIDATES);
}

/*
 * At CREATE EXTENSION jobq: tells the user at once when the databases that
 * run jobq, this one included, want more slots than there are.
 */
void
jobq_warn_if_slots_short(void)
{
	int			databases = 1;
	int			needed;

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	for (int d = 0; d < JobqShared->max_databases; d++)
	{
		JobqDatabase *db = &JobqShared->databases[d];

		if (db->state == JOBQ_DB_ACTIVE && !db->off && db->dboid != MyDatabaseId)
			databases++;
	}
	LWLockRelease(JobqShared->lock);
	needed = jobq_slots_needed(databases);
	if (needed > max_worker_processes)
		warn_short(needed, databases);
}

static bool
start_process(int d, JobqComponent *c, LaunchedProcess *p)
{
	BackgroundWorker bgw;
	JobqDatabase *db = &JobqShared->databases[d];
	const char *kind = process_kind_name(c->kind);

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "jobq", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name,
			c->kind == JOBQ_WORKER ? "jobq_worker_main" : "jobq_candidate_main",
			BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "jobq %s %d for database %s",
			 kind, c->number, db->name);
	snprintf(bgw.bgw_type, BGW_MAXLEN, "jobq %s", kind);
	bgw.bgw_main_arg = Int32GetDatum(jobq_slot_index(c));
	memcpy(bgw.bgw_extra, &db->dboid, sizeof(Oid));
	bgw.bgw_notify_pid = MyProcPid;

	return RegisterDynamicBackgroundWorker(&bgw, &p->handle);
}

/* A process of ours has ended: decide when it may start again. */
static void
process_exited(int d, JobqComponent *c, LaunchedProcess *p, bool wanted,
			   TimestampTz now)
{
	JobqDatabase *db = &JobqShared->databases[d];
	bool		expected;
	bool		at_once;
	bool		said_why;

	SpinLockAcquire(&c->mutex);
	expected = !wanted || c->stop_requested;
	at_once = c->restart_at_once;
	said_why = c->last_error_at >= p->started_at;
	if (at_once && !expected)
		c->restarts++;
	SpinLockRelease(&c->mutex);

	/* a worker's jobs may need rescue; a leader may need replacing */
	if (c->kind == JOBQ_WORKER)
		pg_atomic_fetch_add_u32(&db->rescue_requests, 1);
	jobq_wake_database(d);
	jobq_wake_leader(d);

	if (expected || at_once)
	{
		p->failures = 0;
		p->next_start = now;
		return;
	}

	p->failures = TimestampDifferenceExceeds(p->started_at, now, JOBQ_MAX_BACKOFF_MS)
		? 1 : p->failures + 1;
	p->next_start = TimestampTzPlusMilliseconds(now, jobq_restart_backoff_ms(p->failures));

	SpinLockAcquire(&c->mutex);
	c->restarts++;
	SpinLockRelease(&c->mutex);
	if (!said_why)
		jobq_component_error(c, "process exited unexpectedly");

	ereport(LOG,
			(errmsg("jobq %s %d of database \"%s\" exited unexpectedly; restarting it in %d ms",
					process_kind_name(c->kind), c->number, db->name,
					jobq_restart_backoff_ms(p->failures))));
}

static long
ms_until(TimestampTz now, TimestampTz when)
{
	long		secs;
	int			usecs;

	if (when <= now)
		return 0;
	TimestampDifference(now, when, &secs, &usecs);
	return secs * 1000 + usecs / 1000 + 1;
}

/*
 * Brings one slot to where it should be; returns ms until it needs looking
 * at again, or -1 when only a notification from the postmaster matters.
 */
static long
manage_process(int d, JobqComponent *c, bool wanted, TimestampTz now)
{
	LaunchedProcess *p = &launched[jobq_slot_index(c)];
	JobqDatabase *db = &JobqShared->databases[d];
	pid_t		pid;
	pid_t		orphan_pid;

	if (p->handle != NULL)
	{
		BgwHandleStatus status = GetBackgroundWorkerPid(p->handle, &pid);

		if (status == BGWH_POSTMASTER_DIED)
			proc_exit(1);
		if (status == BGWH_STOPPED)
		{
			pfree(p->handle);
			p->handle = NULL;
			p->terminating = false;
			process_exited(d, c, p, wanted, now);
		}
	}

	if (p->handle != NULL)
	{
		if (wanted)
		{
			SpinLockAcquire(&c->mutex);
			c->stop_requested = false;
			SpinLockRelease(&c->mutex);
		}
		else if (c->kind == JOBQ_WORKER && db->state == JOBQ_DB_ACTIVE &&
				 db->hold_pid == 0 && !database_gone[d])
		{
			/* the pool shrank or jobq is off: let the worker leave between jobs */
			Latch	   *latch;

			SpinLockAcquire(&c->mutex);
			c->stop_requested = true;
			latch = c->pid != 0 ? c->latch : NULL;
			SpinLockRelease(&c->mutex);
			if (latch)
				SetLatch(latch);
		}
		else if (!p->terminating)
		{
			TerminateBackgroundWorker(p->handle);
			p->terminating = true;
		}
		return -1;
	}

	if (!wanted)
	{
		p->no_slot = false;
		return -1;
	}

	/* a process of an earlier launcher still has the slot */
	SpinLockAcquire(&c->mutex);
	orphan_pid = c->pid;
	SpinLockRelease(&c->mutex);
	if (orphan_pid != 0)
		return 100;

	if (now < p->next_start)
		return ms_until(now, p->next_start);

	if (start_process(d, c, p))
	{
		p->started_at = now;
		p->terminating = false;
		p->no_slot = false;
		return -1;
	}

	/*
	 * Looking for a free slot costs little: look every second, so that a
	 * slot another process gives up is taken at once.  Say so once.
	 */
	p->handle = NULL;
	p->next_start = TimestampTzPlusMilliseconds(now, NO_SLOT_RETRY_MS);
	if (!p->no_slot)
	{
		p->no_slot = true;
		jobq_component_error(c, psprintf("no free background worker slot (max_worker_processes = %d)",
										 max_worker_processes));
		jobq_component_set_state(c, JOBQ_BACKOFF);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("jobq could not start %s %d for database \"%s\": no free background worker slot",
						process_kind_name(c->kind), c->number, db->name),
				 errdetail("Trying again every %d ms.", NO_SLOT_RETRY_MS),
				 errhint("Raise max_worker_processes (now %d): jobq needs 1 + (jobq.workers + %d) per database, besides other background workers.",
						 max_worker_processes, JOBQ_CANDIDATES)));
	}
	return NO_SLOT_RETRY_MS;
}

static long
min_timeout(long a, long b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return Min(a, b);
}

static void
log_state_change(int d, JobqDatabaseState state, bool held)
{
	JobqDatabase *db = &JobqShared->databases[d];

	if (logged_state[d] == state)
		return;
	if (state == JOBQ_DB_ACTIVE)
		ereport(LOG,
				(errmsg("jobq starting %d workers and %d leader candidates in database \"%s\"",
						Min(jobq_workers, max_worker_processes), JOBQ_CANDIDATES, db->name)));
	else if (state == JOBQ_DB_ABSENT && logged_state[d] == JOBQ_DB_ACTIVE)
		ereport(LOG,
				(errmsg("jobq stopping its processes in database \"%s\": the extension is not installed",
						db->name)));
	logged_state[d] = state;
	(void) held;
}

/* Says when jobq.enabled turns a database's processes off or on. */
static void
log_off_change(int d, bool off)
{
	if (logged_off[d] == off)
		return;
	if (off)
		ereport(LOG,
				(errmsg("jobq stopping its processes in database \"%s\": jobq.enabled is off",
						JobqShared->databases[d].name)));
	else
		ereport(LOG,
				(errmsg("jobq running in database \"%s\" again: jobq.enabled is on",
						JobqShared->databases[d].name)));
	logged_off[d] = off;
}

/*
 * What one database should run, decided at the top of each loop; the
 * processes are then started rank by rank across the databases.
 */
static long
plan_database(int d)
{
	JobqDatabase *db = &JobqShared->databases[d];
	DatabasePlan *plan = &plans[d];
	JobqDatabaseState state;
	pid_t		hold_pid;
	bool		off;
	long		timeout = -1;

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	state = db->state;
	hold_pid = db->hold_pid;
	off = db->off || !jobq_enabled;
	LWLockRelease(JobqShared->lock);
	memset(plan, 0, sizeof(*plan));
	plan->in_use = state != JOBQ_DB_FREE;
	if (!plan->in_use)
		return -1;
	log_off_change(d, off);

	/* a backend that died while holding the database gave up its hold */
	if (hold_pid != 0 && BackendPidGetProc(hold_pid) == NULL)
	{
		LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
		if (db->hold_pid == hold_pid)
			db->hold_pid = 0;
		LWLockRelease(JobqShared->lock);
		hold_pid = 0;
	}

	if (hold_pid == 0 && !database_gone[d] && !off)
	{
		if (state == JOBQ_DB_ACTIVE)
		{
			plan->active = true;
			plan->nworkers = Min(jobq_workers, max_worker_processes);
			plan->ncandidates = JOBQ_CANDIDATES;
		}
		else if (state == JOBQ_DB_PROBING)
			plan->ncandidates = 1;
		log_state_change(d, state, false);
	}
	else if (hold_pid != 0)
		timeout = 1000;			/* watch the holder */
	return timeout;
}

/*
 * Ranks share the slots out fairly: the same in every database, the first
 * candidate (the leader to be) first, then the workers in order, then the
 * standby candidates.  Processes start rank by rank across the databases,
 * and while a wanted process finds no free slot, no database runs a process
 * of a higher rank (its workers leave between jobs): every database gets a
 * leader and a worker before any gets a second worker.
 */
static int
rank_count(void)
{
	return max_worker_processes + JOBQ_CANDIDATES;
}

static JobqComponent *
component_of_rank(int d, int rank)
{
	if (rank == 0)
		return jobq_component(d, JOBQ_CANDIDATE, 0);
	if (rank <= max_worker_processes)
		return jobq_component(d, JOBQ_WORKER, rank - 1);
	return jobq_component(d, JOBQ_CANDIDATE, rank - max_worker_processes);
}

static bool
plan_wants(const DatabasePlan *plan, int rank)
{
	if (rank == 0)
		return plan->ncandidates > 0;
	if (rank <= max_worker_processes)
		return rank - 1 < plan->nworkers;
	return rank - max_worker_processes < plan->ncandidates;
}

/* The lowest rank of a process waiting for a free slot, or rank_count(). */
static int
starved_rank(void)
{
	for (int r = 0; r < rank_count(); r++)
		for (int d = 0; d < JobqShared->max_databases; d++)
			if (plans[d].in_use && launched[jobq_slot_index(component_of_rank(d, r))].no_slot)
				return r;
	return rank_count();
}

/* Warns (once per figure) when the databases want more slots than exist. */
static void
warn_if_short(void)
{
	int			databases = 0;
	int			needed;

	for (int d = 0; d < JobqShared->max_databases; d++)
		if (plans[d].active)
			databases++;
	needed = jobq_slots_needed(databases);
	if (needed <= max_worker_processes)
	{
		warned_needed = 0;
		return;
	}
	if (needed == warned_needed)
		return;
	warned_needed = needed;
	warn_short(needed, databases);
}

/* Brings every database's processes to where they should be. */
static long
manage_databases(TimestampTz now)
{
	long		timeout = -1;
	int			starved;

	for (int d = 0; d < JobqShared->max_databases; d++)
		timeout = min_timeout(timeout, plan_database(d));
	warn_if_short();
	starved = starved_rank();

	for (int r = 0; r < rank_count(); r++)
		for (int d = 0; d < JobqShared->max_databases; d++)
		{
			JobqComponent *c;
			bool		wanted;

			if (!plans[d].in_use)
				continue;
			c = component_of_rank(d, r);
			wanted = r <= starved && plan_wants(&plans[d], r);
			timeout = min_timeout(timeout, manage_process(d, c, wanted, now));
			plans[d].any_running |= launched[jobq_slot_index(c)].handle != NULL;
		}

	/* a dropped database's slot is freed once its processes are gone */
	for (int d = 0; d < JobqShared->max_databases; d++)
	{
		JobqDatabase *db = &JobqShared->databases[d];

		if (!plans[d].in_use || !database_gone[d] || plans[d].any_running)
			continue;
		LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
		db->state = JOBQ_DB_FREE;
		db->dboid = InvalidOid;
		LWLockRelease(JobqShared->lock);
		database_gone[d] = false;
	}
	return timeout;
}

/* Processes of an earlier launcher: we have no handle, so stop them. */
static void
terminate_orphans(void)
{
	int			nslots = JobqShared->max_databases * JobqShared->slots_per_db;

	for (int i = 0; i < nslots; i++)
	{
		JobqComponent *c = &JobqShared->components[i];
		pid_t		pid;

		if (c->kind == JOBQ_SERVICE)
			continue;
		SpinLockAcquire(&c->mutex);
		pid = c->pid;
		SpinLockRelease(&c->mutex);
		if (pid != 0)
		{
			ereport(LOG,
					(errmsg("jobq launcher terminating process %d started by an earlier launcher",
							(int) pid)));
			kill(pid, SIGTERM);
		}
	}
}

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->launcher_latch = NULL;
	LWLockRelease(JobqShared->lock);
}

void
jobq_launcher_main(Datum main_arg)
{
	JobqComponent *me = &JobqShared->launcher;
	int			nslots = JobqShared->max_databases * JobqShared->slots_per_db;
	TimestampTz next_rescan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	jobq_component_attach(me);
	before_shmem_exit(launcher_detach, (Datum) 0);
	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->launcher_latch = MyLatch;
	LWLockRelease(JobqShared->lock);

	/* no database: the launcher reads only shared catalogs */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("jobq launcher");

	launched = MemoryContextAllocZero(TopMemoryContext, sizeof(LaunchedProcess) * nslots);
	database_gone = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(bool) * JobqShared->max_databases);
	logged_state = MemoryContextAllocZero(TopMemoryContext,
										  sizeof(JobqDatabaseState) * JobqShared->max_databases);
	logged_off = MemoryContextAllocZero(TopMemoryContext, sizeof(bool) * JobqShared->max_databases);
	plans = MemoryContextAllocZero(TopMemoryContext, sizeof(DatabasePlan) * JobqShared->max_databases);
	for (int d = 0; d < JobqShared->max_databases; d++)
		logged_state[d] = JobqShared->databases[d].state;

	ereport(LOG, (errmsg("jobq launcher started")));
	terminate_orphans();
	jobq_component_set_state(me, JOBQ_RUNNING);

	for (;;)
	{
		TimestampTz now;
		bool		rescan;
		long		timeout = -1;

		jobq_process_handle_interrupts();

		now = GetCurrentTimestamp();
		LWLockAcquire(JobqShared->lock, LW_SHARED);
		rescan = JobqShared->rescan_requested;
		LWLockRelease(JobqShared->lock);
		if (rescan || now >= next_rescan)
		{
			scan_databases();
			next_rescan = TimestampTzPlusMilliseconds(now, RESCAN_INTERVAL_MS);
		}

		timeout = manage_databases(now);
		timeout = min_timeout(timeout, ms_until(now, next_rescan));

		jobq_component_heartbeat(me);
		jobq_process_wait(timeout);
	}
}
