/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The worker: claims jobs and runs their handlers, in batches.
 *
 * One cycle:
 *	1. Claim.  Publish a new claim id, then, in its own transaction, take up
 *	   to N available jobs with FOR UPDATE SKIP LOCKED from the queues that
 *	   have any, mark them running with attempt + 1 and the claim id, and
 *	   COMMIT before any handler runs.  Committing the attempt first is what
 *	   makes a job that kills its worker finite.  N adapts to the jobs: as
 *	   many as fit in jobq.batch_time at the recent mean duration, at most
 *	   jobq.batch_size, at least 1.  A queue with a concurrency limit is
 *	   claimed under a lock on its jobq.queues row (SKIP LOCKED: a queue
 *	   another claimer or a user's open transaction holds is skipped this
 *	   time), after counting its running jobs, so the limit holds across
 *	   workers.
 *	2. Run.  The claimed jobs run in as few transactions as jobq.batch_size
 *	   and jobq.batch_time allow, one subtransaction per job.  A job's
 *	   handler runs as the job's owner (a security-restricted operation, so
 *	   it can neither change role nor leave temporary objects behind for the
 *	   next job) under the kind's timeout; on success the job is marked
 *	   completed inside its subtransaction, so its effects and its completion
 *	   commit together.  On error the subtransaction is rolled back and the
 *	   failure recorded in a subtransaction of its own; if even that fails,
 *	   the job is left to the rescuer.  jobq's bookkeeping waits at most
 *	   JOBQ_LOCK_TIMEOUT_MS for a row lock (a user's jobq.cancel() in an open
 *	   transaction), never longer.  A handler that does not stop at its
 *	   timeout, or after jobq.cancel() of its job, is stopped by terminating
 *	   the worker jobq.timeout_grace later (the job watchdog); the rescuer
 *	   then takes the job.  Session advisory locks a handler leaves behind
 *	   are released after each job.  Procedure handlers and
 *	   jobs whose previous worker died in the middle of a batch run in a
 *	   transaction of their own, last, so that a job that kills its worker
 *	   costs its neighbours at most the one attempt.
 *	3. Idle.  Withdraw the claim id (its jobs are all committed by now), and
 *	   with nothing to claim, sleep on the latch; a transaction that makes
 *	   jobs available sets it at commit (commit.c).  The state is set to
 *	   idle before claiming, so a commit after our claim's snapshot finds us
 *	   idle and wakes us: no wake-up is lost between look and sleep.
 *
 * Memory: worker_cxt lives as long as the process (caches, prepared plans
 * are in CacheMemoryContext); batch_cxt holds the claimed jobs and is reset
 * every cycle; job_cxt holds one job's data and is reset after each job.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#define KIND_KEY_LEN 129		/* jobq.handlers.kind is at most 128 bytes */
#define WATCHDOG_START_MS 1000	/* a job's watchdog first looks after this, */
#define WATCHDOG_TICK_MS 250	/* then this often */

/* A registered kind as the worker needs it; the handler is resolved lazily. */
typedef struct KindEntry
{
	char		kind[KIND_KEY_LEN]; /* hash key */
	Oid			handler;		/* InvalidOid: its signature resolves to nothing */
	char	   *signature;		/* jobq.handlers.handler, in kinds_cxt */
	int64		timeout_ms;
	int64		backoff_max_ms; /* -1: no cap */
	bool		is_procedure;
	bool		resolved;
	Oid			rettype;
	FmgrInfo	flinfo;			/* functions */
	FmgrInfo	to_jsonb;		/* result conversion, unless jsonb or void */
	SPIPlanPtr	call_plan;		/* procedures: CALL handler($1) */
	Oid			checked_owner;	/* last owner found allowed to execute it */
} KindEntry;

#define QUEUE_KEY_LEN 64		/* jobq.queues.name is at most 63 bytes */
#define FEW_QUEUES 8			/* up to this many, claim from each in turn */

typedef struct QueueEntry
{
	char		name[QUEUE_KEY_LEN];	/* hash key */
	bool		paused;
	bool		limited;
	/* what our claims learnt, while available_generation is known_generation */
	uint64		known_generation;
	TimestampTz head_scan_at;	/* when we last claimed from the head */
	bool		has_cursor;		/* the run-order key of the last job we claimed */
	int16		cursor_priority;
	TimestampTz cursor_scheduled_at;
	int64		cursor_id;
	bool		exhausted;		/* nothing to claim after it (or at all) */
} QueueEntry;

#define HEAD_SCAN_MS 10000		/* claim from each queue's head at least this often */

typedef struct ClaimedJob
{
	int64		id;
	char	   *kind;
	char	   *queue;			/* in batch_cxt */
	Datum		args;
	Oid			owner;
	int32		attempt;
	int32		max_attempts;
	bool		alone;			/* procedure, or its previous worker died */
	ItemPointerData tid;		/* its row as the claim left it */
	/* set when its handler returned: completed at the end of the batch */
	bool		completing;
	Datum		result;			/* in batch_cxt */
	bool		result_isnull;
	TimestampTz started_at;		/* when its handler was called */
	TimestampTz ended_at;
} ClaimedJob;

/* What one transaction did, applied to counters and wake-ups at commit. */
typedef struct BatchOutcome
{
	int			done;
	int			failed;
	int			made_available;
	bool		made_waiting;	/* retryable or scheduled: the leader's */
	bool		finished;
} BatchOutcome;

int64		jobq_current_job_id = 0;

static JobqComponent *me;
static uint64 my_incarnation;	/* high 32 bits of our claim ids */
static uint32 claim_count;
static uint64 my_claim;			/* the claim held now, 0 if none */
static bool left_behind;		/* a claimed job's outcome could not be recorded */

/*
 * The jobs of the current claim, in the order they run: the outcomes of
 * [0, batch_committed) are committed; the handlers of [0, batch_started)
 * have started.  What a failed transaction leaves is given back from these.
 */
static ClaimedJob *batch_jobs;
static int	batch_count;
static int	batch_committed;
static int	batch_started;
static MemoryContext worker_cxt;
static MemoryContext batch_cxt;
static MemoryContext job_cxt;
static MemoryContext kinds_cxt;
static HTAB *kinds = NULL;
static Datum alone_kinds;		/* text[] of the procedure kinds, for the claim */
static HTAB *queues = NULL;
static QueueEntry **unpaused;	/* the unpaused queues, in kinds_cxt */
static int	nunpaused;
static uint64 cached_generation = 0;
static uint32 queue_rotor = 0;
static uint64 available_generation; /* as read before this claim's snapshot */
static TimestampTz claim_started_at;
static double mean_job_ms;		/* moving mean of handler durations */

static ConstraintsSetStmt *all_constraints_immediate;

static SPIPlanPtr claim_plan;
static SPIPlanPtr claim_after_plan;
static SPIPlanPtr queues_with_jobs_plan;
static SPIPlanPtr lock_queue_plan;
static SPIPlanPtr count_running_plan;
static SPIPlanPtr load_kinds_plan;
static SPIPlanPtr load_queues_plan;

/*
 * The claim: up to $3 available jobs of queue $2 (not those of external
 * workers, see external.c), in run order (after the
 * key where_after names, if any), marked running under claim $1.  A job
 * that must run alone -- its previous worker died, or its kind is one of
 * $4 (procedures) -- is claimed at most $5 (0 or 1) at a time: if it kills
 * its worker again, it must not take the attempts of other such jobs
 * claimed with it.  Locked rows not claimed are released at commit;
 * "locked" says how many rows were locked.  attempted_at is one clock
 * reading taken after the snapshot (an InitPlan), not now(): the claim
 * transaction may have begun before the job's enqueue did.  The locked
 * rows are updated by address (the version the lock took).
 */
#define CLAIM_SQL(where_after, own_jobs) \
"WITH locked AS MATERIALIZED (" \
"    SELECT j.ctid AS tid, j.priority, j.scheduled_at, j.id," \
"           coalesce((j.errors -> -1 ->> 'lost')::boolean, false)" \
"             OR j.kind = ANY ($4) AS alone" \
"      FROM jobq.jobs j" \
"     WHERE j.state = 'available' AND j.queue = $2" own_jobs where_after \
"       AND NOT EXISTS (SELECT FROM jobq.queues q WHERE q.name = $2 AND q.paused)" \
"     ORDER BY j.priority, j.scheduled_at, j.id" \
"     LIMIT $3" \
"     FOR UPDATE OF j SKIP LOCKED)," \
" picked AS (" \
"    SELECT l.tid, l.alone FROM locked l WHERE NOT l.alone" \
"    UNION ALL" \
"    (SELECT l.tid, l.alone FROM locked l WHERE l.alone" \
"      ORDER BY l.priority, l.scheduled_at, l.id LIMIT $5))," \
" claimed AS (" \
"    UPDATE jobq.jobs j" \
"       SET state = 'running', attempt = j.attempt + 1," \
"           attempted_at = (SELECT clock_timestamp()), attempted_by = $1" \
"      FROM picked" \
"     WHERE j.ctid = picked.tid" \
"    RETURNING j.id, j.kind, j.args, j.owner, j.attempt, j.max_attempts," \
"              j.priority, j.scheduled_at, picked.alone, j.ctid AS tid)" \
"SELECT c.id, c.kind, c.args, c.owner::oid, c.attempt, c.max_attempts, c.alone," \
"       c.priority, c.scheduled_at, (SELECT count(*) FROM locked) AS locked, c.tid" \
"  FROM claimed c ORDER BY c.priority, c.scheduled_at, c.id"

#define OWN_JOBS " AND NOT j.external"
#define AFTER_CURSOR " AND (j.priority, j.scheduled_at, j.id) > ($6, $7, $8)"

static const JobqStatement CLAIM = {"claim",
	CLAIM_SQL("", OWN_JOBS),
	5, {INT8OID, TEXTOID, INT8OID, TEXTARRAYOID, INT4OID}};

/* $6, $7, $8: the queue's cursor (see claim_jobs) */
static const JobqStatement CLAIM_AFTER = {"claim after cursor",
	CLAIM_SQL(AFTER_CURSOR, OWN_JOBS),
	8, {INT8OID, TEXTOID, INT8OID, TEXTARRAYOID, INT4OID, INT2OID, TIMESTAMPTZOID, INT8OID}};

/* The same on a 0.1.0 schema, which has no external jobs (jobq_schema_is_current) */
static const JobqStatement CLAIM_0_1 = {"claim (0.1.0)",
	CLAIM_SQL("", ""),
	5, {INT8OID, TEXTOID, INT8OID, TEXTARRAYOID, INT4OID}};
static const JobqStatement CLAIM_AFTER_0_1 = {"claim after cursor (0.1.0)",
	CLAIM_SQL(AFTER_CURSOR, ""),
	8, {INT8OID, TEXTOID, INT8OID, TEXTARRAYOID, INT4OID, INT2OID, TIMESTAMPTZOID, INT8OID}};

/*
 * The queues that have available jobs, one index probe per such queue (a
 * skip scan of jobs_available): with many queues, what a claim cycle costs
 * does not grow with their number.
 */
static const JobqStatement QUEUES_WITH_JOBS = {"queues with jobs",
"WITH RECURSIVE q(name) AS ("
"    (SELECT queue FROM jobq.jobs WHERE state = 'available' ORDER BY queue LIMIT 1)"
"    UNION ALL"
"    SELECT (SELECT j.queue FROM jobq.jobs j"
"             WHERE j.state = 'available' AND j.queue > q.name"
"             ORDER BY j.queue LIMIT 1)"
"      FROM q WHERE q.name IS NOT NULL)"
"SELECT name FROM q WHERE name IS NOT NULL",
0, {0}};

/*
 * Serialises claimers of a limited queue; no row: paused, gone, or locked
 * by another claimer or a user's open transaction (skipped this time).
 */
const JobqStatement jobq_lock_queue_statement = {"lock limited queue",
"SELECT concurrency FROM jobq.queues WHERE name = $1 AND NOT paused"
"   FOR UPDATE SKIP LOCKED",
1, {TEXTOID}};

const JobqStatement jobq_count_running_statement = {"count running of queue",
"SELECT count(*) FROM jobq.jobs WHERE state = 'running' AND queue = $1",
1, {TEXTOID}};

const JobqStatement *const jobq_worker_statements[] = {
	&CLAIM, &CLAIM_AFTER, &QUEUES_WITH_JOBS, &jobq_lock_queue_statement,
	&jobq_count_running_statement, NULL
};

/*
 * handler is text, or regprocedure in a schema not yet updated from 0.1.0;
 * external kinds (no handler) are not ours
 */
static const char *LOAD_KINDS_SQL =
"SELECT h.kind, p.oid,"
"       (extract(epoch FROM h.timeout) * 1000)::int8,"
"       (extract(epoch FROM h.backoff_max) * 1000)::int8,"
"       coalesce(p.prokind = 'p', false), h.handler"
"  FROM jobq.handlers h LEFT JOIN pg_proc p ON p.oid = to_regprocedure(h.handler::text)"
" WHERE h.handler IS NOT NULL";

static const char *LOAD_QUEUES_SQL =
"SELECT name, paused, concurrency IS NOT NULL FROM jobq.queues";

static void
prepare_plans(void)
{
	if (claim_plan != NULL)
		return;
	claim_plan = jobq_prepare_statement(jobq_schema_is_current() ? &CLAIM : &CLAIM_0_1);
	claim_after_plan = jobq_prepare_statement(jobq_schema_is_current() ?
											  &CLAIM_AFTER : &CLAIM_AFTER_0_1);
	queues_with_jobs_plan = jobq_prepare_statement(&QUEUES_WITH_JOBS);
	lock_queue_plan = jobq_prepare_statement(&jobq_lock_queue_statement);
	count_running_plan = jobq_prepare_statement(&jobq_count_running_statement);
	load_kinds_plan = jobq_prepare(LOAD_KINDS_SQL, 0, NULL);
	load_queues_plan = jobq_prepare(LOAD_QUEUES_SQL, 0, NULL);
}

/*
 * A changed function, role or membership may change what a cached handler
 * resolves to or who may run it: reload everything before the next claim.
 */
static void
invalidate_caches(Datum arg, int cacheid, uint32 hashvalue)
{
	cached_generation = 0;
}

/* The kinds whose handler is a procedure, as a text[] in kinds_cxt. */
static Datum
procedure_kinds(void)
{
	HASH_SEQ_STATUS seq;
	KindEntry  *k;
	ArrayBuildState *build = initArrayResult(TEXTOID, kinds_cxt, false);

	hash_seq_init(&seq, kinds);
	while ((k = hash_seq_search(&seq)) != NULL)
		if (k->is_procedure)
			accumArrayResult(build, CStringGetTextDatum(k->kind), false, TEXTOID, kinds_cxt);
	return makeArrayResult(build, kinds_cxt);
}

static void
load_kinds(void)
{
	HASHCTL		ctl;

	MemoryContextReset(kinds_cxt);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = KIND_KEY_LEN;
	ctl.entrysize = sizeof(KindEntry);
	ctl.hcxt = kinds_cxt;
	kinds = hash_create("jobq kinds", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	if (jobq_execute_plan(load_kinds_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not load jobq handlers");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *kind = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		KindEntry  *k;
		Datum		backoff;

		if (strlen(kind) >= KIND_KEY_LEN)
			continue;			/* cannot happen: a CHECK bounds the length */
		k = hash_search(kinds, kind, HASH_ENTER, NULL);
		k->handler = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		if (isnull)
			k->handler = InvalidOid;
		k->signature = MemoryContextStrdup(kinds_cxt, SPI_getvalue(tup, desc, 6));
		k->timeout_ms = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		backoff = SPI_getbinval(tup, desc, 4, &isnull);
		k->backoff_max_ms = isnull ? -1 : DatumGetInt64(backoff);
		k->is_procedure = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		k->resolved = false;
		k->call_plan = NULL;
		k->checked_owner = InvalidOid;
	}
	alone_kinds = procedure_kinds();
}

/* Called after load_kinds(), which resets kinds_cxt. */
static void
load_queues(void)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = QUEUE_KEY_LEN;
	ctl.entrysize = sizeof(QueueEntry);
	ctl.hcxt = kinds_cxt;
	queues = hash_create("jobq queues", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	if (jobq_execute_plan(load_queues_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not load jobq queues");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		QueueEntry *q;

		if (strlen(name) >= QUEUE_KEY_LEN)
			continue;			/* cannot happen: a CHECK bounds the length */
		q = hash_search(queues, name, HASH_ENTER, NULL);
		q->paused = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		q->limited = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		q->known_generation = 0;
		q->head_scan_at = 0;
		q->has_cursor = q->exhausted = false;
	}

	unpaused = MemoryContextAlloc(kinds_cxt, sizeof(QueueEntry *) * Max(SPI_processed, 1));
	nunpaused = 0;
	{
		HASH_SEQ_STATUS seq;
		QueueEntry *q;

		hash_seq_init(&seq, queues);
		while ((q = hash_seq_search(&seq)) != NULL)
			if (!q->paused)
				unpaused[nunpaused++] = q;
	}
}

/*
 * The queues to claim from: with a few queues, every unpaused one (a claim
 * of an empty queue is as cheap as looking); with more, only the unpaused
 * ones that have available jobs, in batch_cxt.
 */
static QueueEntry **
queues_with_jobs(int *count)
{
	QueueEntry **ready;
	int			n = 0;

	if (nunpaused <= FEW_QUEUES)
	{
		*count = nunpaused;
		return unpaused;
	}
	if (jobq_execute_plan(queues_with_jobs_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not find the queues with available jobs");
	ready = MemoryContextAlloc(batch_cxt, sizeof(QueueEntry *) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		QueueEntry *q = strlen(name) < QUEUE_KEY_LEN ?
			hash_search(queues, name, HASH_FIND, NULL) : NULL;

		if (q != NULL && !q->paused)
			ready[n++] = q;
	}
	*count = n;
	return ready;
}

/* Reloads kinds and queues when jobq.handlers or jobq.queues changed. */
static void
refresh_caches(uint64 generation)
{
	if (generation == cached_generation)
		return;
	if (kinds != NULL)
	{
		HASH_SEQ_STATUS seq;
		KindEntry  *k;

		hash_seq_init(&seq, kinds);
		while ((k = hash_seq_search(&seq)) != NULL)
			if (k->call_plan != NULL)
				SPI_freeplan(k->call_plan);
	}
	/* all live in kinds_cxt, which load_kinds resets: never left dangling */
	kinds = NULL;
	queues = NULL;
	unpaused = NULL;
	nunpaused = 0;
	load_kinds();
	load_queues();
	/* only once loaded: a failed load is tried again next cycle */
	cached_generation = generation;
}

/* Resolves a kind's handler: function or procedure, result conversion. */
static void
resolve_handler(KindEntry *k)
{
	HeapTuple	tp;
	Form_pg_proc proc;
	char	   *nspname;
	char	   *proname;

	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(k->handler));
	if (!HeapTupleIsValid(tp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the handler of job kind \"%s\" no longer exists", k->kind),
				 errdetail("No function %s exists.", k->signature),
				 errhint("Create the function again, or register the kind with another handler.")));
	proc = (Form_pg_proc) GETSTRUCT(tp);
	k->is_procedure = proc->prokind == PROKIND_PROCEDURE;
	k->rettype = proc->prorettype;
	nspname = get_namespace_name(proc->pronamespace);
	proname = pstrdup(NameStr(proc->proname));
	ReleaseSysCache(tp);

	if (k->is_procedure)
	{
		Oid			argtypes[1] = {JSONBOID};
		char	   *sql = psprintf("CALL %s($1)",
								   quote_qualified_identifier(nspname, proname));

		k->call_plan = jobq_prepare(sql, 1, argtypes);
	}
	else
	{
		fmgr_info_cxt(k->handler, &k->flinfo, kinds_cxt);
		if (k->rettype != JSONBOID && k->rettype != VOIDOID)
		{
			MemoryContext old = MemoryContextSwitchTo(kinds_cxt);
			Node	   *call = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
													 list_make1(makeNullConst(k->rettype, -1, InvalidOid)),
													 InvalidOid, InvalidOid,
													 COERCE_EXPLICIT_CALL);

			fmgr_info_cxt(F_TO_JSONB, &k->to_jsonb, kinds_cxt);
			fmgr_info_set_expr(call, &k->to_jsonb);
			MemoryContextSwitchTo(old);
		}
	}
	k->resolved = true;
}

static KindEntry *
kind_entry(const char *kind)
{
	if (kinds == NULL || strlen(kind) >= KIND_KEY_LEN)
		return NULL;
	return hash_search(kinds, kind, HASH_FIND, NULL);
}

/*
 * The owner must still exist and may call the handler as if by name: usage
 * of its schema, and execute.  Cached per kind until a role, membership or
 * function changes.
 */
static void
check_owner(KindEntry *k, Oid owner)
{
	AclResult	aclresult;
	Oid			schema;

	if (k->checked_owner == owner)
		return;
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(owner)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the role that enqueued this job no longer exists")));
	schema = get_func_namespace(k->handler);
	aclresult = pg_namespace_aclcheck(schema, owner, ACL_USAGE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_SCHEMA, get_namespace_name(schema));
	aclresult = pg_proc_aclcheck(k->handler, owner, ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(k->handler));
	k->checked_owner = owner;
}

/*
 * Claims up to capacity jobs from one queue into jobs[]; returns how many,
 * of which at most one must run alone, and none unless may_claim_alone.
 * For a limited queue, the queue row lock and the count of its running jobs
 * come first, each statement with a fresh snapshot.
 */
static int
claim_from_queue(QueueEntry *q, int capacity, bool may_claim_alone, ClaimedJob *jobs)
{
	Datum		values[8];
	int64		limit = capacity;
	int			n = 0;
	int64		locked = 0;
	bool		after;
	MemoryContext old;
	char	   *queue;

	if (q->known_generation != available_generation ||
		TimestampDifferenceExceeds(q->head_scan_at, claim_started_at, HEAD_SCAN_MS))
	{
		q->known_generation = available_generation;
		q->has_cursor = q->exhausted = false;
	}
	if (q->exhausted)
		return 0;
	after = q->has_cursor;

	values[0] = Int64GetDatum((int64) my_claim);
	values[1] = CStringGetTextDatum(q->name);

	if (q->limited)
	{
		bool		isnull;
		Datum		concurrency;

		if (jobq_execute_plan(lock_queue_plan, &values[1], NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not lock jobq queue \"%s\"", q->name);
		if (SPI_processed == 0)
			return 0;
		concurrency = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
		{
			int64		running;

			if (jobq_execute_plan(count_running_plan, &values[1], NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not count running jobs of queue \"%s\"", q->name);
			running = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull));
			limit = Min(limit, DatumGetInt32(concurrency) - running);
			if (limit <= 0)
				return 0;
		}
	}

	values[2] = Int64GetDatum(limit);
	values[3] = alone_kinds;
	values[4] = Int32GetDatum(may_claim_alone ? 1 : 0);
	values[5] = Int16GetDatum(q->cursor_priority);
	values[6] = TimestampTzGetDatum(q->cursor_scheduled_at);
	values[7] = Int64GetDatum(q->cursor_id);
	if (jobq_execute_plan(after ? claim_after_plan : claim_plan, values, NULL,
						  false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not claim jobs of queue \"%s\"", q->name);

	old = MemoryContextSwitchTo(batch_cxt);
	queue = pstrdup(q->name);	/* q may go with a reload of the caches */
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ClaimedJob *job = &jobs[n++];
		bool		isnull;

		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		job->kind = SPI_getvalue(tup, desc, 2);
		job->queue = queue;
		job->args = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false, -1);
		job->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		job->alone = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 11, &isnull)), &job->tid);
		job->completing = false;
		if (i == SPI_processed - 1)
		{
			q->cursor_priority = DatumGetInt16(SPI_getbinval(tup, desc, 8, &isnull));
			q->cursor_scheduled_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
			q->cursor_id = job->id;
			locked = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
		}
	}
	MemoryContextSwitchTo(old);

	if (!after)
		q->head_scan_at = claim_started_at;
	if (locked == n)
	{
		/* claimed every row it locked: the next claim starts after them */
		q->has_cursor |= n > 0;
		q->exhausted = n < limit;
	}
	else
		q->has_cursor = false;	/* left some: look from the head again */
	return n;
}

/* After a failed transaction: what its claims learnt did not commit. */
static void
forget_cursors(void)
{
	HASH_SEQ_STATUS seq;
	QueueEntry *q;

	if (queues == NULL)
		return;
	hash_seq_init(&seq, queues);
	while ((q = hash_seq_search(&seq)) != NULL)
		q->head_scan_at = 0;	/* the next claim starts from the head */
}

/*
 * jobq._claim(): the claim statement run once in the caller's transaction,
 * for the isolation tests (EXECUTE is revoked from PUBLIC).
 */
PG_FUNCTION_INFO_V1(jobq_claim_sql);
Datum
jobq_claim_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[5];

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < 5; i++)
		values[i] = PG_GETARG_DATUM(i);
	SPI_connect();
	if (jobq_execute_plan(jobq_prepare_transient(CLAIM.sql, CLAIM.nargs, (Oid *) CLAIM.types),
						  values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not claim jobs of queue \"%s\"", text_to_cstring(PG_GETARG_TEXT_PP(1)));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		row[7];
		bool		nulls[7];

		for (int c = 0; c < 7; c++)
			row[c] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c + 1, &nulls[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}

/* How many jobs fit in one batch at the recent mean job duration. */
static int
claim_capacity(void)
{
	double		fit = jobq_batch_time_ms / Max(mean_job_ms, 0.001);

	if (fit < 1.0)
		return 1;
	return (int) Min(fit, (double) jobq_batch_size);
}

/*
 * Claims a batch across the queues, starting at a rotating queue; commits
 * the claim.  Jobs that must run alone (at most one per queue claimed) are
 * moved to the end.  Leaves the process if the extension is gone.
 *
 * A claim from the head of a queue walks the index entries of the jobs
 * claimed before it, which stay until no snapshot can see them: with a
 * snapshot held elsewhere (a long report, a replica's feedback), every
 * claim would walk every job claimed since.  So each worker remembers,
 * per queue, the run-order key of the last job it claimed, and its next
 * claim starts after it.  Jobs before the cursor can only be ones that
 * became available later (an enqueue of an earlier key, a retry, a
 * release), and every transaction that makes jobs available bumps the
 * database's available_generation at its commit: a cursor is used only
 * while the generation is the one read before its head claim's snapshot.
 * Likewise a queue a claim found exhausted is not looked at again (an idle
 * worker's polls walk nothing).  A claim that left a locked row unclaimed
 * drops the cursor; and every HEAD_SCAN_MS a claim starts from the head
 * anyway (a row a user session held locked was skipped).
 */
static int
claim_jobs(ClaimedJob **jobs_out)
{
	int			capacity = claim_capacity();
	ClaimedJob *jobs = MemoryContextAllocZero(batch_cxt, sizeof(ClaimedJob) * capacity);
	ClaimedJob *ordered;
	QueueEntry **ready;
	int			nready;
	int			n = 0;
	int			first = 0;
	int			start;
	bool		claimed_alone = false;

	/*
	 * Read before the snapshot: a change is visible before its commit bumps
	 * the generation, so one committing later is caught next time.
	 */
	uint64		generation = pg_atomic_read_u64(&JobqShared->config_generation);

	available_generation =
		pg_atomic_read_u64(&JobqShared->databases[me->db_index].available_generation);
	claim_started_at = GetCurrentTimestamp();

	jobq_xact_begin("jobq worker: claiming jobs");

	/*
	 * A claim need not wait for its WAL flush: lost in a crash, its jobs are
	 * available again; kept, the flush of the batch that runs them (whose
	 * commit record follows) makes it durable.  One fsync fewer between an
	 * enqueue's commit and its handler's start.
	 */
	(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	if (!jobq_extension_present())
	{
		jobq_xact_end();
		jobq_process_exit_if_extension_gone(me);
	}
	prepare_plans();
	refresh_caches(generation);

	ready = queues_with_jobs(&nready);
	start = nready > 0 ? (int) (queue_rotor++ % (uint32) nready) : 0;
	for (int i = 0; i < nready && n < capacity; i++)
	{
		QueueEntry *q = ready[(start + i) % nready];
		int			got = claim_from_queue(q, capacity - n, !claimed_alone, jobs + n);

		for (int j = n; j < n + got; j++)
			claimed_alone |= jobs[j].alone;
		n += got;
	}

	jobq_xact_end();

	ordered = MemoryContextAlloc(batch_cxt, sizeof(ClaimedJob) * Max(n, 1));
	for (int i = 0; i < n; i++)
		if (!jobs[i].alone)
			ordered[first++] = jobs[i];
	for (int i = 0; i < n; i++)
		if (jobs[i].alone)
			ordered[first++] = jobs[i];
	batch_jobs = ordered;
	batch_count = n;
	batch_committed = batch_started = 0;
	*jobs_out = ordered;
	return n;
}

/* Calls the handler as the job's owner; returns the result as jsonb. */
static Datum
call_handler(KindEntry *k, ClaimedJob *job, bool *result_isnull)
{
	Datum		result = (Datum) 0;
	bool		isnull = true;

	if (k->is_procedure)
	{
		char		nulls[1] = {' '};

		/*
		 * Not jobq_execute_plan: the procedure's body must see the search
		 * path its owner's session would.  The CALL names it qualified.
		 */
		if (SPI_execute_plan(k->call_plan, &job->args, nulls, false, 0) < 0)
			elog(ERROR, "could not call the handler of job kind \"%s\"", k->kind);
	}
	else
	{
		LOCAL_FCINFO(fcinfo, 1);

		InitFunctionCallInfoData(*fcinfo, &k->flinfo, 1, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = job->args;
		fcinfo->args[0].isnull = false;
		PushActiveSnapshot(GetTransactionSnapshot());
		result = FunctionCallInvoke(fcinfo);
		isnull = fcinfo->isnull;
		PopActiveSnapshot();

		if (k->rettype == VOIDOID)
			isnull = true;
		else if (!isnull && k->rettype != JSONBOID)
			result = FunctionCall1(&k->to_jsonb, result);
	}
	*result_isnull = isnull;
	return result;
}

static double
seconds_since(TimestampTz t)
{
	return (double) (GetCurrentTimestamp() - t) / USECS_PER_SEC;
}

/*
 * Records how an attempt ended that did not complete: what the handler
 * asked for (jobq.give_up, jobq.snooze, jobq.cancel of itself) or its
 * error.  In a subtransaction: if even that fails (the row locked past the
 * lock timeout), the job stays running under our claim, and the rescuer
 * takes it once we withdraw the claim.  Cancels are absorbed meanwhile
 * (process.c), so none can hit this.
 */
static void
record_outcome(ClaimedJob *job, KindEntry *k, ErrorData *edata, BatchOutcome *outcome)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile JobqRequestKind request = jobq_request.kind;
	volatile JobqEnd end = JOBQ_END_GONE;
	volatile bool cancelled = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		switch (request)
		{
			case JOBQ_REQUEST_GIVE_UP:
				if (jobq_job_give_up(job->id, my_claim, jobq_request.reason))
					end = JOBQ_END_DISCARDED;
				break;
			case JOBQ_REQUEST_CANCEL:
				cancelled = jobq_job_cancelled_by_handler(job->id, my_claim);
				break;
			case JOBQ_REQUEST_SNOOZE:
				end = jobq_job_snooze(job->id, my_claim, jobq_request.run_at);
				if (end != JOBQ_END_GONE)
					break;
				/* moved on, or snoozed too often: then it is a failure */
				edata->sqlerrcode = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
				edata->message = psprintf("job snoozed more than jobq.max_snoozes (%d) times",
										  jobq_max_snoozes);
				edata->detail = edata->hint = edata->context = NULL;
				request = JOBQ_REQUEST_NONE;
				/* FALLTHROUGH */
			case JOBQ_REQUEST_NONE:
				end = jobq_job_fail(job->id, my_claim,
									jobq_retry_backoff_ms(job->attempt, k ? k->backoff_max_ms : -1),
									edata);
				break;
		}
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *failed;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		failed = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		RESUME_INTERRUPTS();
		left_behind = true;
		end = JOBQ_END_GONE;
		cancelled = false;
		ereport(WARNING,
				(errcode(failed->sqlerrcode),
				 errmsg("jobq could not record the end of attempt %d of job " INT64_FORMAT " of kind \"%s\": %s",
						job->attempt, job->id, job->kind, failed->message),
				 errdetail("The rescuer gives the job back once this worker's batch ends.")));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;

	if (cancelled)
	{
		outcome->finished = true;
		ereport(LOG,
				(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" was cancelled by its handler; its effects were rolled back",
						job->id, job->kind)));
		return;
	}
	if (end == JOBQ_END_GONE)
		return;					/* cancelled meanwhile, or left behind */

	if (end == JOBQ_END_AVAILABLE)
		outcome->made_available++;
	else if (end == JOBQ_END_RETRYABLE || end == JOBQ_END_SCHEDULED)
		outcome->made_waiting = true;
	if (request == JOBQ_REQUEST_SNOOZE)
	{
		if (jobq_log_jobs)
			ereport(LOG,
					(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" snoozed by its handler until %s",
							job->id, job->kind, timestamptz_to_str(jobq_request.run_at))));
		return;
	}

	outcome->failed++;
	jobq_metrics_count(job->queue, job->kind, true, seconds_since(job->started_at));
	if (end == JOBQ_END_DISCARDED)
	{
		outcome->finished = true;
		if (request == JOBQ_REQUEST_GIVE_UP)
			ereport(LOG,
					(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" given up by its handler: %s",
							job->id, job->kind, jobq_request.reason)));
		else
			ereport(LOG,
					(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" discarded after %d attempts: %s",
							job->id, job->kind, job->attempt, edata->message)));
	}
	else if (jobq_log_jobs)
		ereport(LOG,
				(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" failed (attempt %d of %d): %s",
						job->id, job->kind, job->attempt, job->max_attempts, edata->message)));
}

/*
 * The job watchdog: a timer that ticks while a handler runs (from its first
 * second on).  It runs in a
 * signal handler, so it only reads atomics and sends signals to ourselves:
 * SIGINT (a query cancel, which the handler may catch) once a committed
 * jobq.cancel() names the job, and SIGTERM (a FATAL exit, which it cannot)
 * once the job runs jobq.timeout_grace past its timeout or past that
 * cancel.  Exiting is what makes both final: the rescuer takes the job.
 */
static TimeoutId watchdog_timeout;
static volatile int64 watched_job = 0;
static volatile TimestampTz watch_deadline;
static volatile bool watch_saw_cancel;
static volatile bool watch_terminated;

static void
job_watchdog(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int			save_errno = errno;

	if (watched_job == 0 || watch_terminated)
		return;
	if (!watch_saw_cancel &&
		pg_atomic_read_u64(&me->cancel_job) == (uint64) watched_job)
	{
		watch_saw_cancel = true;
		watch_deadline = Min(watch_deadline,
							 TimestampTzPlusMilliseconds(now, jobq_timeout_grace_ms));
		kill(MyProcPid, SIGINT);
	}
	if (now >= watch_deadline)
	{
		watch_terminated = true;
		kill(MyProcPid, SIGTERM);
	}
	errno = save_errno;
}

static void
watchdog_start(ClaimedJob *job, KindEntry *k, TimestampTz started)
{
	watch_saw_cancel = false;
	watch_terminated = false;
	watch_deadline = TimestampTzPlusMilliseconds(started,
												 Min(k->timeout_ms + jobq_timeout_grace_ms,
													 (int64) 100 * 365 * 24 * 3600 * 1000));
	watched_job = job->id;
	/*
	 * Not at once: a disarmed timer still wakes the process once at its
	 * time (SIGALRM sets the latch), and an idle worker woken for nothing
	 * runs an empty claim; short jobs should not leave that behind.
	 */
	enable_timeout_every(watchdog_timeout,
						 TimestampTzPlusMilliseconds(started, WATCHDOG_START_MS),
						 WATCHDOG_TICK_MS);
}

static void
watchdog_stop(void)
{
	disable_timeout(watchdog_timeout, false);
	watched_job = 0;
}

/* Says why the worker exits when the watchdog terminated it. */
static void
watchdog_exit(int code, Datum arg)
{
	if (!watch_terminated)
		return;
	ereport(LOG,
			(errmsg("jobq worker %d of database \"%s\" terminated itself: its job did not stop %d ms after %s",
					me->number, jobq_process_database(), jobq_timeout_grace_ms,
					watch_saw_cancel ? "being cancelled" : "its timeout"),
			 errdetail("The rescuer gives the job back (unless it was cancelled); the worker restarts.")));
	jobq_component_restart_at_once(me);
	jobq_component_error(me, watch_saw_cancel ?
						 "terminated: a cancelled job did not stop within jobq.timeout_grace" :
						 "terminated: a job did not stop within jobq.timeout_grace after its timeout");
}

/* Ends what watches a handler: timeouts, the watchdog, cancels. */
static void
stop_watching(void)
{
	disable_timeout(STATEMENT_TIMEOUT, true);	/* keep: it names the error */
	watchdog_stop();
	jobq_process_allow_cancel(false);
}

/* A copy of a jsonb (or any varlena) datum in cxt. */
static Datum
datum_into(MemoryContext cxt, Datum value)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Datum		copy = datumCopy(value, false, -1);

	MemoryContextSwitchTo(old);
	return copy;
}

/*
 * Runs one job in a subtransaction of the current transaction and records
 * its outcome there, or, when its handler returned, marks it for
 * complete_batch.  Never lets a handler's ERROR escape.
 */
static void
run_job(ClaimedJob *job, BatchOutcome *outcome)
{
	ResourceOwner oldowner = CurrentResourceOwner;
	KindEntry  *k = kind_entry(job->kind);
	Oid			save_userid;
	int			save_sec_context;
	TimestampTz started = GetCurrentTimestamp();
	volatile bool watching = false;
	static char activity[128 + KIND_KEY_LEN];

	job->started_at = started;

	if (k == NULL || cached_generation == 0)
	{
		/*
		 * Registered, or its handler changed (an invalidation reset the
		 * generation), after our cache was loaded, by a transaction that
		 * committed between our loading it and our claim's snapshot.
		 */
		cached_generation = 0;
		refresh_caches(pg_atomic_read_u64(&JobqShared->config_generation));
		k = kind_entry(job->kind);
	}
	MemoryContextSwitchTo(job_cxt);
	snprintf(activity, sizeof(activity), "jobq job " INT64_FORMAT " (%s)", job->id, job->kind);
	pgstat_report_activity(STATE_RUNNING, activity);
	jobq_component_set_job(me, job->id, job->owner);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	jobq_request.kind = JOBQ_REQUEST_NONE;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(job_cxt);

	PG_TRY();
	{
		Datum		result;
		bool		result_isnull;
		int			gucs;
		bool		read_only;

		if (k == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job kind \"%s\" is not registered", job->kind),
					 errhint("Register a handler for it with jobq.register().")));
		if (!k->resolved)
			resolve_handler(k);
		check_owner(k, job->owner);

		/*
		 * Deferred triggers would fire at our COMMIT, as the worker's role:
		 * make constraints immediate, so that they fire as the owner inside
		 * the job (the restricted operation below refuses deferred ones).
		 */
		AfterTriggerSetState(all_constraints_immediate);
		gucs = NewGUCNestLevel();
		read_only = jobq_settings_apply_owner(job->owner);
		SetUserIdAndSecContext(job->owner, save_sec_context |
							   SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		jobq_current_job_id = job->id;
		XactReadOnly = read_only;	/* restored when the subtransaction ends */
		enable_timeout_after(STATEMENT_TIMEOUT, (int) Min(k->timeout_ms, INT_MAX));
		watchdog_start(job, k, started);
		jobq_process_allow_cancel(true);
		watching = true;

		result = call_handler(k, job, &result_isnull);

		stop_watching();
		watching = false;
		/* a cancel or timeout the handler did not notice hit it all the same */
		CHECK_FOR_INTERRUPTS();
		(void) get_timeout_indicator(STATEMENT_TIMEOUT, true);
		if (jobq_request.kind != JOBQ_REQUEST_NONE)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("job " INT64_FORMAT " asked to stop, and its handler returned", job->id)));
		XactReadOnly = false;
		jobq_current_job_id = 0;
		/* leave the session as the job found it, whatever it SET */
		AtEOXact_GUC(false, gucs);
		SetUserIdAndSecContext(save_userid, save_sec_context);

		if (pg_atomic_read_u64(&me->cancel_job) != (uint64) job->id)
		{
			/* completed with the others at the end of the batch */
			ReleaseCurrentSubTransaction();
			job->completing = true;
			job->result_isnull = result_isnull;
			job->result = result_isnull ? (Datum) 0 :
				datum_into(batch_cxt, result);
			job->ended_at = GetCurrentTimestamp();
		}
		else
		{
			/* cancelled while it ran: its effects go with it */
			RollbackAndReleaseCurrentSubTransaction();
			ereport(LOG,
					(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" was cancelled while running; its effects were rolled back",
							job->id, job->kind)));
		}
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (watching)
			stop_watching();
		jobq_current_job_id = 0;
		MemoryContextSwitchTo(job_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec_context);
		/* what came after the handler returned hit nobody */
		QueryCancelPending = false;
		(void) get_timeout_indicator(STATEMENT_TIMEOUT, true);

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && k != NULL &&
			jobq_request.kind == JOBQ_REQUEST_NONE &&
			TimestampDifferenceExceeds(started, GetCurrentTimestamp(), (int) Min(k->timeout_ms, INT_MAX)))
			edata->message = psprintf("job exceeded its timeout of " INT64_FORMAT " ms (%s)",
									  k->timeout_ms, edata->message);
		record_outcome(job, k, edata, outcome);
	}
	PG_END_TRY();

	/* a session advisory lock must not outlive its job (leader election) */
	LockReleaseSession(USER_LOCKMETHOD);
	jobq_component_set_job(me, 0, InvalidOid);
	{
		long		secs;
		int			usecs;
		double		ms;

		TimestampDifference(started, GetCurrentTimestamp(), &secs, &usecs);
		ms = secs * 1000.0 + usecs / 1000.0;
		mean_job_ms = 0.8 * mean_job_ms + 0.2 * ms;
	}
	MemoryContextReset(job_cxt);
}

static void
apply_outcome(BatchOutcome *outcome)
{
	if (outcome->made_available > 0)
		jobq_at_commit_wake_workers(outcome->made_available);
	if (outcome->made_waiting)
		jobq_at_commit_wake_leader();
	if (outcome->finished)
		jobq_at_commit_jobs_finished();
}

/*
 * Completes the jobs of this batch transaction (jobs[0..n)) whose handlers
 * returned, in one statement; a job whose row moved since the claim, one
 * by one.  A job that is no longer running was cancelled after its handler
 * returned, by a cancel the worker had not heard of: its effects must not
 * commit, and they can no longer be separated from the others', so the
 * batch fails and every job of it is given back as never started.
 */
static void
complete_batch(ClaimedJob *jobs, int n, BatchOutcome *outcome)
{
	ItemPointerData *tids = palloc(sizeof(ItemPointerData) * n);
	int64	   *ids = palloc(sizeof(int64) * n);
	Datum	   *results = palloc(sizeof(Datum) * n);
	bool	   *nulls = palloc(sizeof(bool) * n);
	TimestampTz *ended_at = palloc(sizeof(TimestampTz) * n);
	bool	   *completed = palloc(sizeof(bool) * n);
	ClaimedJob **completing = palloc(sizeof(ClaimedJob *) * n);
	int			m = 0;

	for (int i = 0; i < n; i++)
	{
		if (!jobs[i].completing)
			continue;
		completing[m] = &jobs[i];
		tids[m] = jobs[i].tid;
		ids[m] = jobs[i].id;
		results[m] = jobs[i].result;
		nulls[m] = jobs[i].result_isnull;
		ended_at[m] = jobs[i].ended_at;
		m++;
	}
	if (m == 0)
		return;
	jobq_jobs_complete(tids, ids, results, nulls, ended_at, m, my_claim, completed);
	for (int i = 0; i < m; i++)
	{
		ClaimedJob *job = completing[i];

		if (!completed[i] &&
			!jobq_job_complete(job->id, my_claim, job->result, job->result_isnull))
		{
			batch_started = batch_committed;
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("jobq job " INT64_FORMAT " of kind \"%s\" was cancelled after its handler returned",
							job->id, job->kind),
					 errdetail("The effects of its batch are rolled back; its other jobs run again.")));
		}
		if (jobq_log_jobs)
			ereport(LOG,
					(errmsg("jobq job " INT64_FORMAT " of kind \"%s\" completed", job->id, job->kind)));
		jobq_metrics_count(job->queue, job->kind, false,
						   (double) (job->ended_at - job->started_at) / USECS_PER_SEC);
	}
	outcome->done += m;
	outcome->finished = true;
}

/*
 * Runs the claimed jobs (batch_jobs), committing per batch_size/batch_time
 * or alone job.
 */
static void
run_jobs(ClaimedJob *jobs, int n)
{
	int			i = 0;

	while (i < n)
	{
		TimestampTz start = GetCurrentTimestamp();
		BatchOutcome outcome;
		int			first = i;
		int			count = 0;

		memset(&outcome, 0, sizeof(outcome));
		jobq_xact_begin("jobq worker: running jobs");
		jobq_metrics_forget();	/* what a failed batch counted */
		/* what the owners' sessions would get, as of now: see settings.c */
		jobq_settings_load();
		while (i < n)
		{
			ClaimedJob *job = &jobs[i];

			if (job->alone && count > 0)
				break;			/* commit the others before it runs */
			batch_started = i + 1;
			run_job(job, &outcome);
			i++;
			count++;
			if (job->alone || count >= jobq_batch_size ||
				TimestampDifferenceExceeds(start, GetCurrentTimestamp(), jobq_batch_time_ms))
				break;
			CommandCounterIncrement();	/* the next job sees this one's effects */
		}
		complete_batch(jobs + first, count, &outcome);
		jobq_metrics_flush(me->number);
		if (jobq_debug_fail_batch)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("batch transaction failed on purpose (jobq.debug_fail_batch is on)")));
		apply_outcome(&outcome);
		jobq_xact_end();
		batch_committed = i;
		jobq_component_count(me, outcome.done, outcome.failed);
	}
}

/*
 * After a transaction of the claim failed: gives back, in a fresh
 * transaction, its jobs whose outcomes were not committed: those whose
 * handler started lose the attempt (an error entry says why), the others
 * are available again as if never claimed.  Jobs it cannot give back
 * (locked by a user session, or this fails too) are the rescuer's.
 */
static void
release_batch(ErrorData *edata)
{
	int			n = batch_count - batch_committed;
	int64	   *ids;
	bool	   *started;
	int			ends[JOBQ_NUM_ENDS] = {0};
	int			released = 0;

	if (batch_jobs == NULL || n <= 0)
		return;
	ids = MemoryContextAlloc(batch_cxt, sizeof(int64) * n);
	started = MemoryContextAlloc(batch_cxt, sizeof(bool) * n);
	for (int i = 0; i < n; i++)
	{
		ids[i] = batch_jobs[batch_committed + i].id;
		started[i] = batch_committed + i < batch_started;
	}

	PG_TRY();
	{
		jobq_xact_begin("jobq worker: giving back the jobs of a failed batch");
		jobq_jobs_release(ids, started, n, my_claim, edata, ends);
		if (ends[JOBQ_END_AVAILABLE] > 0)
			jobq_at_commit_wake_workers(ends[JOBQ_END_AVAILABLE]);
		if (ends[JOBQ_END_RETRYABLE] > 0)
			jobq_at_commit_wake_leader();
		if (ends[JOBQ_END_DISCARDED] > 0)
			jobq_at_commit_jobs_finished();
		jobq_xact_end();
		for (int e = 0; e < JOBQ_NUM_ENDS; e++)
			released += ends[e];
		jobq_component_count(me, 0, ends[JOBQ_END_RETRYABLE] + ends[JOBQ_END_DISCARDED]);
		ereport(LOG,
				(errmsg("jobq worker %d gave back %d jobs of a batch whose transaction failed: %d to retry, %d discarded, %d not started",
						me->number, released, ends[JOBQ_END_RETRYABLE],
						ends[JOBQ_END_DISCARDED], ends[JOBQ_END_AVAILABLE])));
	}
	PG_CATCH();
	{
		FreeErrorData(jobq_process_recover(me, worker_cxt));
	}
	PG_END_TRY();
	if (released < n)
		left_behind = true;
}

static void
worker_exit_if_asked(void)
{
	bool		stop;

	SpinLockAcquire(&me->mutex);
	stop = me->stop_requested;
	SpinLockRelease(&me->mutex);
	if (!stop)
		return;
	ereport(LOG,
			(errmsg("jobq worker %d leaving database \"%s\": jobq.workers was lowered or jobq.enabled turned off",
					me->number, jobq_process_database())));
	proc_exit(0);
}

void
jobq_worker_main(Datum main_arg)
{
	int			failures = 0;

	me = jobq_process_start(main_arg, "jobq worker");
	SpinLockAcquire(&me->mutex);
	my_incarnation = me->incarnation;
	SpinLockRelease(&me->mutex);
	watchdog_timeout = RegisterTimeout(USER_TIMEOUT, job_watchdog);
	before_shmem_exit(watchdog_exit, (Datum) 0);

	worker_cxt = AllocSetContextCreate(TopMemoryContext, "jobq worker", ALLOCSET_DEFAULT_SIZES);
	kinds_cxt = AllocSetContextCreate(worker_cxt, "jobq kinds", ALLOCSET_DEFAULT_SIZES);
	batch_cxt = AllocSetContextCreate(worker_cxt, "jobq batch", ALLOCSET_DEFAULT_SIZES);
	job_cxt = AllocSetContextCreate(worker_cxt, "jobq job", ALLOCSET_DEFAULT_SIZES);
	mean_job_ms = jobq_batch_time_ms;
	all_constraints_immediate = MemoryContextAllocZero(worker_cxt, sizeof(ConstraintsSetStmt));
	all_constraints_immediate->type = T_ConstraintsSetStmt;
	all_constraints_immediate->deferred = false;

	CacheRegisterSyscacheCallback(PROCOID, invalidate_caches, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, invalidate_caches, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, invalidate_caches, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, invalidate_caches, (Datum) 0);

	ereport(LOG,
			(errmsg("jobq worker %d started in database \"%s\"",
					me->number, jobq_process_database())));

	for (;;)
	{
		bool		worked = false;

		jobq_process_handle_interrupts();
		worker_exit_if_asked();

		/* idle before looking: a commit after our look finds us idle */
		jobq_component_set_state(me, JOBQ_IDLE);

		/* published before the claim's snapshot: see the rescuer */
		my_claim = my_incarnation | ++claim_count;
		jobq_component_set_claim(me, my_claim);

		PG_TRY();
		{
			ClaimedJob *jobs;
			int			n = claim_jobs(&jobs);

			if (n > 0)
			{
				jobq_component_set_state(me, JOBQ_BUSY);
				run_jobs(jobs, n);
				worked = true;
			}
			failures = 0;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			watchdog_stop();
			edata = jobq_process_recover(me, worker_cxt);
			forget_cursors();
			release_batch(edata);
			FreeErrorData(edata);
			failures++;
		}
		PG_END_TRY();
		batch_jobs = NULL;
		MemoryContextReset(batch_cxt);

		/* every outcome of the claim is committed or given up: withdraw it */
		jobq_component_set_claim(me, 0);
		pg_atomic_write_u64(&me->cancel_job, 0);
		if (left_behind)
		{
			JobqDatabase *db = &JobqShared->databases[me->db_index];

			left_behind = false;
			pg_atomic_fetch_add_u32(&db->rescue_requests, 1);
			jobq_wake_leader(me->db_index);
		}

		if (failures > 0)
		{
			jobq_component_set_state(me, JOBQ_BACKOFF);
			jobq_process_sleep(jobq_restart_backoff_ms(failures));
		}
		else if (!worked)
			jobq_process_wait(jobq_poll_interval_ms);
	}
}
