/*-------------------------------------------------------------------------
 *
 * leader.c
 *	  Leader candidates, the election, and the lifecycle of the leader's
 *	  services.
 *
 * Each database has JOBQ_CANDIDATES candidate processes.  They compete for
 * a session-level advisory lock (JOBQ_LEADER_LOCK_KEY1, key); the holder
 * that also finds the key unused in shared memory is the leader.  The lock
 * belongs to the process, so whatever ends the leader's process ends its
 * leadership, and a waiting candidate takes over at its next try: the
 * launcher wakes the candidates whenever a process of their database
 * exits, and each tries at least every second besides.
 *
 * The key is drawn at random for each election, once the previous leader
 * is gone.  A session queued behind the leader's lock (the key is visible
 * in pg_locks) gets a lock nobody needs any more when the leader exits: the
 * next election uses another key, so squatting cannot leave the database
 * leaderless.
 *
 * Leader lifecycle (every transition is logged):
 *
 *	candidate --lock--> starting --all services started--> leading
 *	   ^                  |  \--a start failed: that service backs off
 *	   |                  |     1,2,4,8 s while the started ones run--> starting
 *	   |                  \--still failing after the 4th backoff--> resign
 *	   +---- cool-down (jobq.leader_cooldown) <---- resign <---- leading
 *	                                   (a service failing 5 cycles in a row)
 *
 * A leader never holds the lock with its services stopped: each is running
 * or, for at most 15 s, retrying its start (shown "backoff"); then the
 * leader gets them all running or resigns.  Every started service is
 * stopped on every path out of leadership.  Leaders never run user code;
 * each cycle they check that they still hold the lock before acting.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define LEADER_TRY_INTERVAL_MS	1000	/* candidates try the lock this often */
#define START_ATTEMPTS			5	/* first try, then after 1, 2, 4, 8 s */
#define SERVICE_MAX_FAILURES	5	/* consecutive failed cycles before resigning */

typedef struct ServiceRun
{
	const JobqServiceDef *def;
	JobqComponent *slot;
	bool		started;
	int			start_attempts; /* failed starts in a row */
	int			failures;		/* failed cycles in a row */
	TimestampTz next_run;		/* next cycle, or next start attempt */
} ServiceRun;

static const JobqServiceDef *const service_defs[JOBQ_NUM_SERVICES] = {
	&jobq_scheduler_service,
	&jobq_rescuer_service,
	&jobq_cleaner_service,
	&jobq_periodic_service,
};

static JobqComponent *me;
static ServiceRun services[JOBQ_NUM_SERVICES];
static MemoryContext leader_cxt;
static bool leading = false;
static uint32 seen_rescue_requests = 0;

static uint32 my_key;			/* key2 of the leader lock we hold or try */

static void
leader_lock_tag(LOCKTAG *tag)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, JOBQ_LEADER_LOCK_KEY1, my_key, 2);
}

/* The key of this election: a fresh one if a leader has held the last. */
static uint32
election_key(JobqDatabase *db)
{
	uint32		key;

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	if (db->leader < 0 && (db->leader_key_used || db->leader_key == 0))
	{
		uint32		fresh = 0;

		while (fresh == 0 || fresh == db->leader_key)
			if (!pg_strong_random(&fresh, sizeof(fresh)))
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not generate a random jobq leader key")));
		db->leader_key = fresh;
		db->leader_key_used = false;
	}
	key = db->leader_key;
	LWLockRelease(JobqShared->lock);
	return key;
}

/*
 * Tries to become the leader: take this election's lock, then, with the
 * election still open, claim leadership.  A lock taken too late (another
 * candidate won, or the key was used meanwhile) is given back.
 */
static bool
try_leader_lock(void)
{
	JobqDatabase *db = &JobqShared->databases[me->db_index];
	LOCKTAG		tag;
	LockAcquireResult result;
	bool		won;

	my_key = election_key(db);
	leader_lock_tag(&tag);
	StartTransactionCommand();
	result = LockAcquire(&tag, ExclusiveLock, true, true);
	CommitTransactionCommand();
	if (result == LOCKACQUIRE_NOT_AVAIL)
		return false;

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	won = db->leader < 0 && db->leader_key == my_key && !db->leader_key_used;
	if (won)
	{
		/* in the same critical section: no other candidate opens an election */
		db->leader_key_used = true;
		db->leader = me->number;
		db->leader_latch = MyLatch;
	}
	LWLockRelease(JobqShared->lock);
	if (!won)
		LockRelease(&tag, ExclusiveLock, true);
	return won;
}

static bool
holds_leader_lock(void)
{
	LOCKTAG		tag;

	leader_lock_tag(&tag);
	return LockHeldByMe(&tag, ExclusiveLock);
}

static void
release_leader_lock(void)
{
	LOCKTAG		tag;

	leader_lock_tag(&tag);
	LockRelease(&tag, ExclusiveLock, true);
}

static void
set_leader(bool on)
{
	JobqDatabase *db = &JobqShared->databases[me->db_index];

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	if (on)
	{
		db->leader = me->number;
		db->leader_latch = MyLatch;
	}
	else if (db->leader == me->number)
	{
		db->leader = -1;
		db->leader_latch = NULL;
	}
	LWLockRelease(JobqShared->lock);
	ConditionVariableBroadcast(&JobqShared->components_cv);
	leading = on;
	pgstat_report_appname(on ? "jobq leader" : "jobq candidate");
}

/* A service slot shows the leader's pid while the service runs. */
static void
service_slot_set(JobqComponent *slot, JobqState state, bool first_start)
{
	SpinLockAcquire(&slot->mutex);
	slot->pid = state == JOBQ_STOPPED || state == JOBQ_FAILED ? 0 : MyProcPid;
	if (state == JOBQ_STARTING)
	{
		if (!first_start)
			slot->restarts++;
		slot->started_at = GetCurrentTimestamp();
	}
	SpinLockRelease(&slot->mutex);
	jobq_component_set_state(slot, state);
}

/* Runs fn in a transaction; on ERROR records it in slot and returns false. */
static bool
in_transaction(JobqComponent *slot, const char *activity, void (*fn) (ServiceRun *),
			   ServiceRun *s)
{
	bool		ok = true;

	PG_TRY();
	{
		jobq_xact_begin(activity);
		fn(s);
		jobq_xact_end();
	}
	PG_CATCH();
	{
		FreeErrorData(jobq_process_recover(slot, leader_cxt));
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

static void
start_one(ServiceRun *s)
{
	const char *name = jobq_service_name(s->def->kind);

	if (jobq_fail_service != NULL && strcmp(jobq_fail_service, name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("jobq %s could not start: failure injected by jobq.debug_fail_service", name)));
	s->def->start();
}

/* Stops every started service; a service that failed stays shown failed. */
static void
stop_services(void)
{
	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
	{
		ServiceRun *s = &services[i];
		JobqState	state;

		if (s->started)
			s->def->stop();
		s->started = false;
		s->start_attempts = 0;
		s->next_run = 0;
		SpinLockAcquire(&s->slot->mutex);
		state = s->slot->state;
		SpinLockRelease(&s->slot->mutex);
		if (state != JOBQ_FAILED)
			service_slot_set(s->slot, JOBQ_STOPPED, false);
	}
}

/*
 * Starts the services due to start: all at first, then each failed one
 * again after 1, 2, 4 and 8 s while the started ones keep running.
 * Returns false once a service failed its last attempt.
 */
static bool
start_due_services(void)
{
	static bool ever_started[JOBQ_NUM_SERVICES];

	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
	{
		ServiceRun *s = &services[i];
		const char *name = jobq_service_name(s->def->kind);
		int			delay;

		if (s->started || GetCurrentTimestamp() < s->next_run)
			continue;
		service_slot_set(s->slot, JOBQ_STARTING, !ever_started[i]);
		ever_started[i] = true;
		if (in_transaction(s->slot, "jobq leader: starting a service", start_one, s))
		{
			if (s->start_attempts > 0)
				ereport(LOG,
						(errmsg("jobq leader of database \"%s\" started its %s at attempt %d",
								jobq_process_database(), name, s->start_attempts + 1)));
			s->started = true;
			s->start_attempts = 0;
			s->failures = 0;
			s->next_run = GetCurrentTimestamp();
			service_slot_set(s->slot, JOBQ_RUNNING, true);
			continue;
		}

		s->start_attempts++;
		if (s->start_attempts == START_ATTEMPTS)
		{
			service_slot_set(s->slot, JOBQ_FAILED, false);
			ereport(LOG,
					(errmsg("jobq leader of database \"%s\" could not start its %s after %d attempts",
							jobq_process_database(), name, s->start_attempts)));
			return false;
		}
		delay = jobq_restart_backoff_ms(s->start_attempts);
		service_slot_set(s->slot, JOBQ_BACKOFF, false);
		ereport(LOG,
				(errmsg("jobq leader of database \"%s\" could not start its %s (attempt %d of %d); retrying in %d ms",
						jobq_process_database(), name, s->start_attempts, START_ATTEMPTS, delay)));
		s->next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	}
	return true;
}

static void
run_one(ServiceRun *s)
{
	long		next_ms = s->def->run(me->db_index);

	s->next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(next_ms, 0));
}

/* Runs the due services; false if one failed too often (leader resigns). */
static bool
run_due_services(void)
{
	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
	{
		ServiceRun *s = &services[i];
		const char *name = jobq_service_name(s->def->kind);
		char		activity[64];

		if (!s->started || GetCurrentTimestamp() < s->next_run)
			continue;

		snprintf(activity, sizeof(activity), "jobq leader: %s", name);
		if (in_transaction(s->slot, activity, run_one, s))
		{
			if (s->failures > 0)
				ereport(LOG,
						(errmsg("jobq %s of database \"%s\" is running again",
								name, jobq_process_database())));
			s->failures = 0;
			jobq_component_set_state(s->slot, JOBQ_RUNNING);
			continue;
		}

		s->failures++;
		if (s->failures >= SERVICE_MAX_FAILURES)
		{
			jobq_component_set_state(s->slot, JOBQ_FAILED);
			ereport(LOG,
					(errmsg("jobq %s of database \"%s\" failed %d times in a row",
							name, jobq_process_database(), s->failures)));
			return false;
		}
		jobq_component_set_state(s->slot, JOBQ_BACKOFF);
		s->next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  jobq_restart_backoff_ms(s->failures));
	}
	return true;
}

static long
ms_until_next_service(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		result = jobq_poll_interval_ms;

	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
	{
		long		secs;
		int			usecs;

		if (services[i].next_run <= now)
			return 0;
		TimestampDifference(now, services[i].next_run, &secs, &usecs);
		result = Min(result, secs * 1000 + usecs / 1000 + 1);
	}
	return result;
}

/* Woken: new scheduled jobs, schedules, or a worker exit to look at. */
static void
note_wake_up(void)
{
	uint32		requests = pg_atomic_read_u32(&JobqShared->databases[me->db_index].rescue_requests);
	TimestampTz now = GetCurrentTimestamp();

	if (services[JOBQ_SCHEDULER].started && services[JOBQ_SCHEDULER].failures == 0)
		services[JOBQ_SCHEDULER].next_run = now;
	if (services[JOBQ_PERIODIC].started && services[JOBQ_PERIODIC].failures == 0)
		services[JOBQ_PERIODIC].next_run = now;
	if (requests != seen_rescue_requests && services[JOBQ_RESCUER].started &&
		services[JOBQ_RESCUER].failures == 0)
	{
		seen_rescue_requests = requests;
		services[JOBQ_RESCUER].next_run = now;
	}
}

static void
resign(const char *why)
{
	stop_services();
	release_leader_lock();
	set_leader(false);
	jobq_wake_database(me->db_index);	/* another candidate may take over */
	ereport(LOG,
			(errmsg("jobq leader of database \"%s\" resigned: %s; standing aside for %d ms",
					jobq_process_database(), why, jobq_leader_cooldown_ms)));
}

/* Leads until resigning; returns the time until it may compete again. */
static long
lead(void)
{
	ereport(LOG,
			(errmsg("jobq candidate %d is now the leader of database \"%s\"",
					me->number, jobq_process_database())));
	set_leader(true);
	seen_rescue_requests = pg_atomic_read_u32(&JobqShared->databases[me->db_index].rescue_requests);

	for (;;)
	{
		jobq_process_handle_interrupts();
		jobq_process_exit_if_extension_gone(me);
		if (!holds_leader_lock())
		{
			stop_services();
			set_leader(false);
			ereport(LOG,
					(errmsg("jobq leader of database \"%s\" lost its lock", jobq_process_database())));
			return 0;
		}
		if (!start_due_services())
		{
			resign("its services could not start");
			return jobq_leader_cooldown_ms;
		}
		if (!run_due_services())
		{
			resign("a service kept failing");
			return jobq_leader_cooldown_ms;
		}
		jobq_component_heartbeat(me);
		jobq_process_wait(ms_until_next_service());
		note_wake_up();
	}
}

static void
candidate_exit(int code, Datum arg)
{
	if (!leading)
		return;
	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
		service_slot_set(services[i].slot, JOBQ_STOPPED, false);
	set_leader(false);
}

void
jobq_candidate_main(Datum main_arg)
{
	TimestampTz may_compete_at = 0;

	me = jobq_process_start(main_arg, "jobq candidate");
	leader_cxt = AllocSetContextCreate(TopMemoryContext, "jobq leader", ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
	{
		services[i].def = service_defs[i];
		services[i].slot = jobq_component(me->db_index, JOBQ_SERVICE, i);
	}
	before_shmem_exit(candidate_exit, (Datum) 0);
	jobq_component_set_state(me, JOBQ_RUNNING);

	for (;;)
	{
		jobq_process_handle_interrupts();
		jobq_process_exit_if_extension_gone(me);

		if (GetCurrentTimestamp() >= may_compete_at && try_leader_lock())
		{
			long		cooldown = lead();

			may_compete_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), cooldown);
			MemoryContextReset(leader_cxt);
			continue;
		}
		jobq_component_heartbeat(me);
		jobq_process_wait(LEADER_TRY_INTERVAL_MS);
	}
}
