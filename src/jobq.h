/*-------------------------------------------------------------------------
 *
 * jobq.h
 *	  Vocabulary, shared-memory layout and cross-file interfaces of jobq.
 *
 * Words used throughout the code:
 *
 *	job			a row of jobq.jobs: one unit of background work
 *	kind		the name a job is enqueued under; it selects the handler
 *	handler		the SQL function (or procedure) registered for a kind; it is
 *				called with the job's args (jsonb) as the job's owner role
 *	owner		the role that enqueued the job; the handler runs as this role
 *	queue		a named stream of jobs (jobq.queues); can be paused and can
 *				limit how many of its jobs run at once
 *	attempt		one run of a job's handler; counted (and committed) before
 *				the handler starts, so a job that kills its worker is finite
 *	batch		the jobs one worker claims in one transaction and runs in one
 *				transaction, one subtransaction per job
 *	worker		a background process that claims and runs jobs
 *	candidate	a background process that competes for the leader lock
 *	leader		the candidate holding the database's leader advisory lock;
 *				it runs the services and never runs user code
 *	service		a leader duty: scheduler, rescuer, cleaner, periodic
 *	launcher	the one static background worker; it starts and restarts
 *				every database's workers and candidates
 *	component	anything with a row in jobq.components: the launcher, each
 *				worker and candidate, and each leader service
 *	incarnation	a random id a worker takes when it starts (high 32 bits;
 *				the low 32 bits are zero)
 *	claim		the id of one claim of a worker: its incarnation plus a
 *				counter in the low 32 bits.  It is what jobs.attempted_by
 *				holds and what the worker publishes from before it claims
 *				until the outcomes of the jobs it claimed are committed; a
 *				running job whose claim is not published by a live worker has
 *				been left behind and is rescued
 *
 * Locking protocol for JobqShared (see shmem.c):
 *	- JobqShared->lock (LWLock) guards the database table and which component
 *	  slots are in use; the launcher takes it exclusively to change them,
 *	  readers take it shared.
 *	- Each JobqComponent has a spinlock guarding its volatile fields (pid,
 *	  state, claim, job, job_owner, job_started_at, counters, last error,
 *	  restart_at_once).  Only the owning process writes them, except the
 *	  launcher, which writes restarts/stop_requested and clears the slot of
 *	  a process that is gone.  Copy out under the
 *	  spinlock, then do any slow work.
 *	- JobqComponent.cancel_job is an atomic, not under the spinlock: any
 *	  backend that commits jobq.cancel() of the job the worker runs writes
 *	  it (jobq_cancel_running_job); the worker reads it in a timer handler,
 *	  where no spinlock may be taken, and resets it to 0 when its claim
 *	  ends.  A stale value names a job the worker no longer runs: harmless.
 *	- JobqDatabase.leader, leader_latch, leader_key and leader_key_used are
 *	  written by the candidates under JobqShared->lock held exclusively
 *	  (and reset by the launcher, under it too, when it assigns the slot).
 *	- JobqDatabase.off is written under JobqShared->lock held exclusively
 *	  by the probing candidate (from the catalog) and by a backend that
 *	  commits ALTER DATABASE ... SET/RESET jobq.enabled; the launcher and
 *	  jobq.claim() (external.c) read it under the lock.
 *	- JobqDatabase.available_generation is an atomic: every backend that
 *	  commits a transaction that made jobs available increments it; the
 *	  database's workers and waiting jobq.claim() calls read it.
 *	- JobqDatabase.claim_waiters is an atomic: a backend in jobq.claim()
 *	  adds 1 while it waits and subtracts it after; a committing backend
 *	  that incremented available_generation reads it and, if not 0,
 *	  broadcasts available_cv.
 *	- JobqDatabase.rescue_requests is an atomic: the launcher adds 1 when a
 *	  worker exits, a worker when it leaves a job behind, and a committing
 *	  jobq.claim() whose lease ends before rescue_due_at; the leader reads
 *	  it when woken and then runs its rescuer.
 *	- JobqDatabase.rescue_due_at is an atomic only the leader writes (when
 *	  its rescuer runs next, a TimestampTz); claimers read it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef JOBQ_H
#define JOBQ_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "nodes/nodes.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/wait_event.h"

#define JOBQ_CANDIDATES			2	/* leader candidates per database */
#define JOBQ_ERROR_LEN			256 /* last error kept per component */
#define JOBQ_MAX_BACKOFF_MS		60000	/* cap of every restart backoff */
#define JOBQ_LOCK_TIMEOUT_MS	500 /* longest wait of jobq's own statements
									 * for a lock a user session may hold */

/*
 * Advisory lock of the leader: ('jobq' as int32, a random key drawn for
 * each election, see leader.c).
 */
#define JOBQ_LEADER_LOCK_KEY1	0x6a6f6271

typedef enum JobqComponentKind
{
	JOBQ_LAUNCHER,
	JOBQ_WORKER,
	JOBQ_CANDIDATE,
	JOBQ_SERVICE
} JobqComponentKind;

typedef enum JobqServiceKind
{
	JOBQ_SCHEDULER,
	JOBQ_RESCUER,
	JOBQ_CLEANER,
	JOBQ_PERIODIC,
	JOBQ_NUM_SERVICES
} JobqServiceKind;

/* Component states; names as shown by jobq.components. */
typedef enum JobqState
{
	JOBQ_STOPPED,
	JOBQ_STARTING,
	JOBQ_RUNNING,
	JOBQ_IDLE,
	JOBQ_BUSY,
	JOBQ_BACKOFF,
	JOBQ_FAILED
} JobqState;

typedef struct JobqComponent
{
	slock_t		mutex;
	bool		in_use;			/* launcher-owned, under JobqShared->lock */
	JobqComponentKind kind;
	int			number;			/* worker/candidate number, or service kind */
	int			db_index;		/* -1 for the launcher */

	pid_t		pid;			/* 0 when no process runs it */
	Latch	   *latch;
	uint64		incarnation;	/* workers: see the vocabulary above */
	uint64		claim;			/* workers: the claim held, 0 if none */
	JobqState	state;
	int64		job_id;			/* workers: job being run, 0 if none */
	Oid			job_owner;		/* workers: its owner (who may see job_id) */
	TimestampTz job_started_at; /* workers: when it started */
	pg_atomic_uint64 cancel_job;	/* workers: job a committed cancel stops */
	TimestampTz started_at;
	TimestampTz heartbeat_at;
	TimestampTz last_error_at;
	int32		restarts;
	int64		jobs_done;
	int64		jobs_failed;
	bool		stop_requested; /* launcher asks a worker to leave */
	bool		restart_at_once;	/* it exits on purpose: no backoff */
	char		last_error[JOBQ_ERROR_LEN];
} JobqComponent;

typedef enum JobqDatabaseState
{
	JOBQ_DB_FREE,				/* slot unused */
	JOBQ_DB_PROBING,			/* extension presence not known yet */
	JOBQ_DB_ACTIVE,				/* extension installed: run everything */
	JOBQ_DB_ABSENT				/* no extension: run nothing */
} JobqDatabaseState;

typedef struct JobqDatabase
{
	Oid			dboid;
	JobqDatabaseState state;
	char		name[NAMEDATALEN];
	pid_t		hold_pid;		/* backend keeping processes off (DROP DATABASE) */
	bool		off;			/* ALTER DATABASE ... SET jobq.enabled = off */
	int			leader;			/* candidate number holding leadership, or -1 */
	Latch	   *leader_latch;
	uint32		leader_key;		/* key2 of the leader lock of this election */
	bool		leader_key_used;	/* a leader held it: draw a new one */
	pg_atomic_uint32 rescue_requests;	/* rescue work: see above */
	pg_atomic_uint64 rescue_due_at; /* when the rescuer runs next */
	pg_atomic_uint64 available_generation;	/* bumped at the commit of a
											 * transaction that made jobs
											 * available: claims look from
											 * the head again (worker.c) */
	pg_atomic_uint32 claim_waiters; /* jobq.claim() calls waiting */
	ConditionVariable available_cv; /* where they wait */
} JobqDatabase;

typedef struct JobqSharedState
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	bool		rescan_requested;	/* under lock: look at pg_database again */
	int			max_databases;
	int			slots_per_db;	/* workers + candidates + services */
	pg_atomic_uint64 config_generation; /* handlers/queues changed: flush caches */
	ConditionVariable job_finished_cv;	/* jobq.wait() sleeps here */
	ConditionVariable components_cv;	/* jobq.wait_ready() sleeps here */
	JobqComponent launcher;
	JobqDatabase *databases;	/* [max_databases] */
	JobqComponent *components;	/* [max_databases * slots_per_db] */
} JobqSharedState;

extern JobqSharedState *JobqShared;

/* A leader service: start prepares, stop undoes it, run does one cycle. */
typedef struct JobqServiceDef
{
	JobqServiceKind kind;
	void		(*start) (void);	/* in a transaction; may raise an ERROR */
	void		(*stop) (void);		/* never fails */
	long		(*run) (int db_index);	/* in a transaction; ms until due again */
} JobqServiceDef;

extern const JobqServiceDef jobq_scheduler_service;
extern const JobqServiceDef jobq_rescuer_service;
extern const JobqServiceDef jobq_cleaner_service;
extern const JobqServiceDef jobq_periodic_service;

/* jobq.c */
extern bool jobq_preloaded;
extern void jobq_require_preload(void);

/* guc.c: settings, documented in README.md */
extern bool jobq_enabled;
extern bool jobq_database_off(Oid dboid);
extern int	jobq_workers;
extern int	jobq_max_databases;
extern int	jobq_poll_interval_ms;
extern int	jobq_batch_size;
extern int	jobq_batch_time_ms;
extern int	jobq_rescue_interval_ms;
extern int	jobq_cleanup_interval_ms;
extern int	jobq_completed_retention_s;
extern int	jobq_discarded_retention_s;
extern int	jobq_leader_cooldown_ms;
extern int	jobq_timeout_grace_ms;
extern int	jobq_max_snoozes;
extern bool jobq_log_jobs;
extern char *jobq_fail_service;
extern bool jobq_debug_fail_batch;
extern void jobq_guc_define(void);

/* shmem.c */
extern void jobq_shmem_hooks_install(void);
extern JobqComponent *jobq_component(int db_index, JobqComponentKind kind, int number);
extern int	jobq_slot_index(JobqComponent *c);
extern JobqComponent *jobq_component_by_slot(int slot);
extern int	jobq_db_index(Oid dboid);
extern void jobq_component_attach(JobqComponent *c);
extern void jobq_component_set_state(JobqComponent *c, JobqState state);
extern void jobq_component_set_job(JobqComponent *c, int64 job_id, Oid owner);
extern void jobq_component_restart_at_once(JobqComponent *c);
extern bool jobq_claim_is_live(int db_index, uint64 claim);
extern void jobq_component_set_claim(JobqComponent *c, uint64 claim);
extern void jobq_cancel_running_job(int db_index, int64 job_id);
extern void jobq_component_heartbeat(JobqComponent *c);
extern void jobq_component_error(JobqComponent *c, const char *message);
extern void jobq_component_count(JobqComponent *c, int64 done, int64 failed);
extern const char *jobq_state_name(JobqState state);
extern const char *jobq_service_name(JobqServiceKind service);
extern void jobq_wake_workers(int db_index, int howmany);
extern void jobq_wake_database(int db_index);
extern void jobq_wake_leader(int db_index);
extern void jobq_wake_launcher(void);
extern int	jobq_live_claims(int db_index, uint64 *out);

/* commit.c: what a transaction asks to happen once it commits */
extern void jobq_at_commit_wake_workers(int howmany);
extern void jobq_at_commit_wake_leader(void);
extern void jobq_at_commit_rescue_soon(void);
extern void jobq_at_commit_jobs_finished(void);
extern void jobq_at_commit_config_changed(void);
extern void jobq_at_commit_cancel_running(int64 job_id);
extern void jobq_at_commit_probe_database(void);
extern void jobq_at_commit_set_database_off(Oid dboid, bool off);
extern void jobq_at_commit_recheck_database(void);
extern void jobq_at_commit_rescan_databases(void);
extern void jobq_at_xact_end_release_database(int db_index);

/* ddl.c: ProcessUtility hook keeping processes out of the way of DDL */
extern void jobq_ddl_hook_install(void);
extern void jobq_release_database(int db_index);

/* roles.c: roles owning jobq objects (called by the utility hook) */
extern void jobq_roles_before_utility(Node *parsetree);
extern void jobq_roles_after_utility(Node *parsetree);

/* launcher.c */
extern void jobq_launcher_register(void);
extern int	jobq_slots_needed(int databases);
extern void jobq_warn_if_slots_short(void);
PGDLLEXPORT void jobq_launcher_main(Datum main_arg) pg_attribute_noreturn();

/* process.c: what every jobq process does */
extern JobqComponent *jobq_process_start(Datum main_arg, const char *app_name);
extern bool jobq_extension_present(void);
extern bool jobq_schema_is_current(void);
extern const char *jobq_process_database(void);
extern void jobq_process_exit_if_extension_gone(JobqComponent *me);
extern void jobq_process_handle_interrupts(void);
extern ErrorData *jobq_process_recover(JobqComponent *me, MemoryContext cxt);
extern void jobq_process_wait(long timeout_ms);
extern void jobq_process_sleep(long delay_ms);
extern void jobq_process_allow_cancel(bool allow);
extern void jobq_xact_begin(const char *activity);
extern void jobq_xact_end(void);
extern struct _SPI_plan *jobq_prepare(const char *sql, int nargs, Oid *argtypes);
extern struct _SPI_plan *jobq_prepare_transient(const char *sql, int nargs, Oid *argtypes);
extern int	jobq_execute_plan(struct _SPI_plan *plan, Datum *values, const char *nulls,
							  bool read_only, long count);
extern void jobq_free_plan(struct _SPI_plan **plan);

/*
 * A statement of jobq's hot path, kept by the module that runs it.  plans.c
 * lists them all for jobq._hot_path_plans(), which shows the generic plan
 * of each: expected/plans.out pins them under realistic statistics.
 */
#define JOBQ_STATEMENT_MAX_ARGS 8
typedef struct JobqStatement
{
	const char *name;
	const char *sql;
	int			nargs;
	Oid			types[JOBQ_STATEMENT_MAX_ARGS];
} JobqStatement;

extern struct _SPI_plan *jobq_prepare_statement(const JobqStatement *statement);
extern const JobqStatement *const jobq_worker_statements[];
extern const JobqStatement *const jobq_job_state_statements[];
extern const JobqStatement *const jobq_scheduler_statements[];
extern const JobqStatement *const jobq_cleaner_statements[];
extern const JobqStatement *const jobq_rescuer_statements[];
extern const JobqStatement *const jobq_metrics_statements[];
extern const JobqStatement *const jobq_external_statements[];
extern const JobqStatement jobq_lock_queue_statement;
extern const JobqStatement jobq_count_running_statement;

/*
 * A running job by its id ($1), held under claim or lease token $2, found
 * by its row's address: the primary key is the only index that can serve
 * "id = $1" alone, and a TID scan is cheaper than any index scan, so no
 * statistics can turn such a plan into a scan of jobs_running (whose
 * predicate the state test implies).  See expected/plans.out.
 */
#define JOBQ_THE_RUNNING_JOB \
" WHERE j.ctid = (SELECT ctid FROM jobq.jobs WHERE id = $1)" \
"   AND j.id = $1 AND j.state = 'running' AND j.attempted_by = $2"

/* metrics.c: counters of finished attempts per queue and kind */
extern void jobq_metrics_count(const char *queue, const char *kind, bool failed, double seconds);
extern void jobq_metrics_flush(int worker);
extern void jobq_metrics_forget(void);

/* settings.c: the settings of jobq's processes and of handlers */
extern void jobq_settings_capture(void);
extern void jobq_settings_pin(void);
extern void jobq_settings_set_own(GucAction action);
extern void jobq_settings_load(void);
extern bool jobq_settings_apply_owner(Oid owner);

/* job_state.c: every transition out of 'running' */
typedef enum JobqEnd
{
	JOBQ_END_GONE,				/* not running under the claim any more */
	JOBQ_END_AVAILABLE,
	JOBQ_END_SCHEDULED,
	JOBQ_END_RETRYABLE,
	JOBQ_END_DISCARDED,
	JOBQ_NUM_ENDS
} JobqEnd;
extern bool jobq_job_complete(int64 id, uint64 claim, Datum result, bool result_isnull);
extern void jobq_jobs_complete(const ItemPointerData *tids, const int64 *ids,
							   const Datum *results, const bool *result_nulls,
							   const TimestampTz *ended_at, int n, uint64 claim,
							   bool *completed);
extern void jobq_jobs_complete_leased(Datum ids, Datum tokens, Datum results, int n,
									  bool *completed);
extern JobqEnd jobq_job_fail(int64 id, uint64 claim, int64 delay_ms, ErrorData *edata);
extern bool jobq_job_give_up(int64 id, uint64 claim, const char *reason);
extern bool jobq_job_cancelled_by_handler(int64 id, uint64 claim);
extern JobqEnd jobq_job_snooze(int64 id, uint64 claim, TimestampTz run_at);
extern void jobq_jobs_release(int64 *ids, bool *started, int n, uint64 claim,
							  ErrorData *edata, int *ends);
extern void jobq_jobs_rescue(int64 *ids, uint64 *claims, int n, int *ends);
extern void jobq_job_state_forget_rescue_plan(void);

/* job_control.c: what a handler asks of its own job */
#define JOBQ_REASON_LEN 8193	/* bytes of a give-up reason kept, with NUL */
typedef enum JobqRequestKind
{
	JOBQ_REQUEST_NONE,
	JOBQ_REQUEST_GIVE_UP,
	JOBQ_REQUEST_SNOOZE,
	JOBQ_REQUEST_CANCEL
} JobqRequestKind;
typedef struct JobqRequest
{
	JobqRequestKind kind;
	TimestampTz run_at;			/* snooze */
	char		reason[JOBQ_REASON_LEN];	/* give up */
} JobqRequest;
extern JobqRequest jobq_request;
extern void jobq_cancel_own_job(int64 job_id);

/* api.c */
extern void jobq_leave_if_client_gone(void);

/* worker.c */
PGDLLEXPORT void jobq_worker_main(Datum main_arg) pg_attribute_noreturn();
extern int64 jobq_current_job_id;

/* leader.c */
PGDLLEXPORT void jobq_candidate_main(Datum main_arg) pg_attribute_noreturn();

/* backoff.c */
extern int64 jobq_retry_backoff_ms(int attempt, int64 cap_ms);
extern int	jobq_restart_backoff_ms(int failures);
extern int64 jobq_interval_ms(const Interval *span);

#endif							/* JOBQ_H */
