/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  jobq's shared memory: the database table, one component slot per
 *	  process or leader service, and the wake-ups that go through them.
 *
 * Layout: JobqSharedState, then databases[max_databases], then
 * components[max_databases * slots_per_db].  The slots of database d start
 * at d * slots_per_db: first max_worker_processes worker slots (no database
 * can have more workers than that), then the candidates, then the services.
 * A slot keeps its counters (restarts, last error) while its process comes
 * and goes, which is what jobq.components shows across restarts.
 *
 * Locking: see jobq.h.  Writers of a component's volatile fields hold its
 * spinlock only to copy values in or out; nothing slow happens under it.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

JobqSharedState *JobqShared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static int
slots_per_db(void)
{
	return max_worker_processes + JOBQ_CANDIDATES + JOBQ_NUM_SERVICES;
}

static Size
jobq_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(JobqSharedState));

	size = add_size(size, MAXALIGN(mul_size(jobq_max_databases, sizeof(JobqDatabase))));
	size = add_size(size, mul_size(mul_size(jobq_max_databases, slots_per_db()),
								   sizeof(JobqComponent)));
	return size;
}

static void
jobq_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(jobq_shmem_size());
	RequestNamedLWLockTranche("jobq", 1);
}

static void
component_init(JobqComponent *c, JobqComponentKind kind, int number, int db_index)
{
	memset(c, 0, sizeof(JobqComponent));
	SpinLockInit(&c->mutex);
	c->kind = kind;
	c->number = number;
	c->db_index = db_index;
	c->state = JOBQ_STOPPED;
	pg_atomic_init_u64(&c->cancel_job, 0);
}

static void
jobq_shmem_startup(void)
{
	bool		found;
	char	   *base;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	base = ShmemInitStruct("jobq", jobq_shmem_size(), &found);
	JobqShared = (JobqSharedState *) base;
	if (!found)
	{
		int			per_db = slots_per_db();

		memset(base, 0, jobq_shmem_size());
		JobqShared->lock = &(GetNamedLWLockTranche("jobq"))->lock;
		JobqShared->max_databases = jobq_max_databases;
		JobqShared->slots_per_db = per_db;
		pg_atomic_init_u64(&JobqShared->config_generation, 1);
		ConditionVariableInit(&JobqShared->job_finished_cv);
		ConditionVariableInit(&JobqShared->components_cv);
		component_init(&JobqShared->launcher, JOBQ_LAUNCHER, 0, -1);
		JobqShared->databases = (JobqDatabase *)
			(base + MAXALIGN(sizeof(JobqSharedState)));
		JobqShared->components = (JobqComponent *)
			((char *) JobqShared->databases +
			 MAXALIGN(mul_size(jobq_max_databases, sizeof(JobqDatabase))));

		for (int d = 0; d < jobq_max_databases; d++)
		{
			JobqDatabase *db = &JobqShared->databases[d];
			JobqComponent *slots = &JobqShared->components[d * per_db];

			db->state = JOBQ_DB_FREE;
			db->leader = -1;
			pg_atomic_init_u32(&db->rescue_requests, 0);
			pg_atomic_init_u64(&db->rescue_due_at, 0);
			pg_atomic_init_u32(&db->claim_waiters, 0);
			ConditionVariableInit(&db->available_cv);
			pg_atomic_init_u64(&db->available_generation, 0);
			for (int i = 0; i < max_worker_processes; i++)
				component_init(&slots[i], JOBQ_WORKER, i, d);
			for (int i = 0; i < JOBQ_CANDIDATES; i++)
				component_init(&slots[max_worker_processes + i], JOBQ_CANDIDATE, i, d);
			for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
				component_init(&slots[max_worker_processes + JOBQ_CANDIDATES + i],
							   JOBQ_SERVICE, i, d);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
jobq_shmem_hooks_install(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = jobq_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = jobq_shmem_startup;
}

JobqComponent *
jobq_component(int db_index, JobqComponentKind kind, int number)
{
	int			offset;

	switch (kind)
	{
		case JOBQ_LAUNCHER:
			return &JobqShared->launcher;
		case JOBQ_WORKER:
			offset = number;
			break;
		case JOBQ_CANDIDATE:
			offset = max_worker_processes + number;
			break;
		case JOBQ_SERVICE:
			offset = max_worker_processes + JOBQ_CANDIDATES + number;
			break;
		default:
			elog(ERROR, "unknown jobq component kind %d", (int) kind);
	}
	return &JobqShared->components[db_index * JobqShared->slots_per_db + offset];
}

int
jobq_slot_index(JobqComponent *c)
{
	return (int) (c - JobqShared->components);
}

JobqComponent *
jobq_component_by_slot(int slot)
{
	if (slot < 0 || slot >= JobqShared->max_databases * JobqShared->slots_per_db)
		elog(ERROR, "jobq component slot %d out of range", slot);
	return &JobqShared->components[slot];
}

/* Index of a database in the table, or -1; takes the lock shared. */
int
jobq_db_index(Oid dboid)
{
	int			result = -1;

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	for (int d = 0; d < JobqShared->max_databases; d++)
	{
		if (JobqShared->databases[d].state != JOBQ_DB_FREE &&
			JobqShared->databases[d].dboid == dboid)
		{
			result = d;
			break;
		}
	}
	LWLockRelease(JobqShared->lock);
	return result;
}

static bool
state_is_up(JobqState state)
{
	return state == JOBQ_RUNNING || state == JOBQ_IDLE || state == JOBQ_BUSY;
}

static void
component_detach(int code, Datum arg)
{
	JobqComponent *c = (JobqComponent *) DatumGetPointer(arg);

	SpinLockAcquire(&c->mutex);
	c->pid = 0;
	c->latch = NULL;
	c->incarnation = 0;
	c->claim = 0;
	c->job_id = 0;
	c->job_owner = InvalidOid;
	c->state = JOBQ_STOPPED;
	SpinLockRelease(&c->mutex);
	ConditionVariableBroadcast(&JobqShared->components_cv);
}

/*
 * Claims a slot for the calling process.  Call it before connecting to a
 * database: the detach callback then runs after the connection's own exit
 * callback has aborted any open transaction, so a worker's claim stays live
 * until its job's transaction is gone, and the rescuer can never hand out a
 * job whose first run is still undoing itself.
 */
void
jobq_component_attach(JobqComponent *c)
{
	uint64		incarnation = 0;

	/* positive as a bigint, low 32 bits free for the claim counter */
	while (incarnation == 0)
	{
		if (!pg_strong_random(&incarnation, sizeof(incarnation)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random jobq worker incarnation")));
		incarnation &= UINT64CONST(0x7fffffff00000000);
	}

	before_shmem_exit(component_detach, PointerGetDatum(c));

	SpinLockAcquire(&c->mutex);
	c->pid = MyProcPid;
	c->latch = MyLatch;
	c->incarnation = incarnation;
	c->claim = 0;
	c->state = JOBQ_STARTING;
	c->job_id = 0;
	c->job_owner = InvalidOid;
	c->job_started_at = 0;
	c->started_at = GetCurrentTimestamp();
	c->heartbeat_at = c->started_at;
	c->stop_requested = false;
	c->restart_at_once = false;
	SpinLockRelease(&c->mutex);
}

void
jobq_component_set_state(JobqComponent *c, JobqState state)
{
	JobqState	old;

	SpinLockAcquire(&c->mutex);
	old = c->state;
	c->state = state;
	c->heartbeat_at = GetCurrentTimestamp();
	SpinLockRelease(&c->mutex);

	if (state_is_up(old) != state_is_up(state))
		ConditionVariableBroadcast(&JobqShared->components_cv);
}

void
jobq_component_set_job(JobqComponent *c, int64 job_id, Oid owner)
{
	TimestampTz now = job_id != 0 ? GetCurrentTimestamp() : 0;

	SpinLockAcquire(&c->mutex);
	c->job_id = job_id;
	c->job_owner = owner;
	c->job_started_at = now;
	SpinLockRelease(&c->mutex);
}

/* The process is about to exit on purpose: the launcher restarts it at once. */
void
jobq_component_restart_at_once(JobqComponent *c)
{
	SpinLockAcquire(&c->mutex);
	c->restart_at_once = true;
	SpinLockRelease(&c->mutex);
}

/* Publishes the claim a worker holds (0: none); see the rescuer. */
void
jobq_component_set_claim(JobqComponent *c, uint64 claim)
{
	SpinLockAcquire(&c->mutex);
	c->claim = claim;
	SpinLockRelease(&c->mutex);
}

/*
 * Asks the worker running a job to stop it (jobq.cancel committed).  Safe
 * in a commit callback: no allocation, no error paths.
 */
void
jobq_cancel_running_job(int db_index, int64 job_id)
{
	for (int i = 0; i < max_worker_processes; i++)
	{
		JobqComponent *c = jobq_component(db_index, JOBQ_WORKER, i);
		bool		runs_it;

		SpinLockAcquire(&c->mutex);
		runs_it = c->pid != 0 && c->job_id == job_id;
		SpinLockRelease(&c->mutex);
		if (runs_it)
			pg_atomic_write_u64(&c->cancel_job, (uint64) job_id);
	}
}

void
jobq_component_heartbeat(JobqComponent *c)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&c->mutex);
	c->heartbeat_at = now;
	SpinLockRelease(&c->mutex);
}

void
jobq_component_error(JobqComponent *c, const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&c->mutex);
	strlcpy(c->last_error, message ? message : "", JOBQ_ERROR_LEN);
	c->last_error_at = now;
	SpinLockRelease(&c->mutex);
}

void
jobq_component_count(JobqComponent *c, int64 done, int64 failed)
{
	SpinLockAcquire(&c->mutex);
	c->jobs_done += done;
	c->jobs_failed += failed;
	SpinLockRelease(&c->mutex);
}

const char *
jobq_state_name(JobqState state)
{
	switch (state)
	{
		case JOBQ_STOPPED:
			return "stopped";
		case JOBQ_STARTING:
			return "starting";
		case JOBQ_RUNNING:
			return "running";
		case JOBQ_IDLE:
			return "idle";
		case JOBQ_BUSY:
			return "busy";
		case JOBQ_BACKOFF:
			return "backoff";
		case JOBQ_FAILED:
			return "failed";
	}
	return "unknown";
}

const char *
jobq_service_name(JobqServiceKind service)
{
	switch (service)
	{
		case JOBQ_SCHEDULER:
			return "scheduler";
		case JOBQ_RESCUER:
			return "rescuer";
		case JOBQ_CLEANER:
			return "cleaner";
		case JOBQ_PERIODIC:
			return "periodic";
		case JOBQ_NUM_SERVICES:
			break;
	}
	return "unknown";
}

/*
 * Wakes up to howmany idle workers of a database, starting at a rotating
 * position so that single jobs spread over the pool.  Safe in a commit
 * callback: no allocation, no error paths.
 */
void
jobq_wake_workers(int db_index, int howmany)
{
	static uint32 rotor = 0;
	int			nworkers = max_worker_processes;
	int			start = (int) (rotor++ % (uint32) nworkers);

	for (int i = 0; i < nworkers && howmany > 0; i++)
	{
		JobqComponent *c = jobq_component(db_index, JOBQ_WORKER, (start + i) % nworkers);
		Latch	   *latch = NULL;

		SpinLockAcquire(&c->mutex);
		if (c->pid != 0 && c->state == JOBQ_IDLE)
			latch = c->latch;
		SpinLockRelease(&c->mutex);
		if (latch)
		{
			SetLatch(latch);
			howmany--;
		}
	}
}

/* Wakes every process of a database (they recheck the extension). */
void
jobq_wake_database(int db_index)
{
	for (int i = 0; i < JobqShared->slots_per_db; i++)
	{
		JobqComponent *c = &JobqShared->components[db_index * JobqShared->slots_per_db + i];
		Latch	   *latch;

		SpinLockAcquire(&c->mutex);
		latch = c->pid != 0 ? c->latch : NULL;
		SpinLockRelease(&c->mutex);
		if (latch)
			SetLatch(latch);
	}
}

void
jobq_wake_leader(int db_index)
{
	Latch	   *latch;

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	latch = JobqShared->databases[db_index].leader_latch;
	LWLockRelease(JobqShared->lock);
	if (latch)
		SetLatch(latch);
}

void
jobq_wake_launcher(void)
{
	Latch	   *latch;

	LWLockAcquire(JobqShared->lock, LW_SHARED);
	latch = JobqShared->launcher_latch;
	LWLockRelease(JobqShared->lock);
	if (latch)
		SetLatch(latch);
}

/*
 * Copies the claims the live workers of a database hold into out (room for
 * max_worker_processes entries); returns how many there are.
 */
int
jobq_live_claims(int db_index, uint64 *out)
{
	int			n = 0;

	for (int i = 0; i < max_worker_processes; i++)
	{
		JobqComponent *c = jobq_component(db_index, JOBQ_WORKER, i);

		SpinLockAcquire(&c->mutex);
		if (c->pid != 0 && c->claim != 0)
			out[n++] = c->claim;
		SpinLockRelease(&c->mutex);
	}
	return n;
}

/* Whether a live worker of the database holds the claim. */
bool
jobq_claim_is_live(int db_index, uint64 claim)
{
	bool		live = false;

	for (int i = 0; i < max_worker_processes && !live; i++)
	{
		JobqComponent *c = jobq_component(db_index, JOBQ_WORKER, i);

		SpinLockAcquire(&c->mutex);
		live = c->pid != 0 && c->claim == claim;
		SpinLockRelease(&c->mutex);
	}
	return live;
}
