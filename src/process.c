/*-------------------------------------------------------------------------
 *
 * process.c
 *	  What every per-database jobq process (worker, candidate) does: start
 *	  up in its shared-memory slot, connect, make sure the extension is
 *	  there, react to signals, and open and close transactions.
 *
 * The launcher passes the slot number as bgw_main_arg and the database OID
 * in bgw_extra.  A process finding the extension absent marks its database
 * so, and leaves with exit code 0; the launcher then stops the rest.
 *
 * A query cancel (pg_cancel_backend, SIGINT) is for a job's handler:
 * anywhere else it is absorbed and logged, so that it can neither end the
 * process nor hit jobq's own bookkeeping.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "commands/dbcommands.h"

static int	my_db_index = -1;
static volatile sig_atomic_t cancel_allowed = false;
static volatile sig_atomic_t cancels_absorbed = 0;
static int	cancels_reported = 0;

/*
 * SIGINT: a cancel reaches the process only while a handler runs (the
 * kind's timeout, armed only then, raises its error through SIGINT too),
 * or when it is jobq's own lock_timeout firing, which also comes as one.
 */
static void
cancel_handler(SIGNAL_ARGS)
{
	if (cancel_allowed || get_timeout_indicator(LOCK_TIMEOUT, false))
		StatementCancelHandler(postgres_signal_arg);
	else
		cancels_absorbed++;
}

/* Lets a query cancel through (while a handler runs) or absorbs it. */
void
jobq_process_allow_cancel(bool allow)
{
	cancel_allowed = allow;
}

/* The name of the process's database, without a catalog look-up. */
const char *
jobq_process_database(void)
{
	return my_db_index >= 0 ? JobqShared->databases[my_db_index].name : "?";
}

JobqComponent *
jobq_process_start(Datum main_arg, const char *app_name)
{
	JobqComponent *me = jobq_component_by_slot(DatumGetInt32(main_arg));
	Oid			dboid;
	bool		present;
	bool		off;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	pqsignal(SIGINT, cancel_handler);
	BackgroundWorkerUnblockSignals();

	/* before connecting: see jobq_component_attach */
	jobq_component_attach(me);
	my_db_index = me->db_index;

	jobq_settings_capture();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(app_name);

	StartTransactionCommand();
	jobq_settings_pin();
	present = jobq_extension_present();
	off = jobq_database_off(MyDatabaseId);
	CommitTransactionCommand();

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->databases[me->db_index].state = present ? JOBQ_DB_ACTIVE : JOBQ_DB_ABSENT;
	JobqShared->databases[me->db_index].off = off;
	LWLockRelease(JobqShared->lock);
	jobq_wake_launcher();

	if (!present || off)
		proc_exit(0);
	return me;
}

bool
jobq_extension_present(void)
{
	return OidIsValid(get_extension_oid("jobq", true));
}

/*
 * Whether the installed schema is 0.2.0 (external workers' columns, final
 * counts), not 0.1.0: after a package upgrade the library runs against the old schema
 * until ALTER EXTENSION jobq UPDATE, which restarts jobq's processes (see
 * ddl.c), so a process asks once.  In a transaction.
 */
bool
jobq_schema_is_current(void)
{
	static int	has = -1;

	if (has < 0)
	{
		Oid			jobs = get_relname_relid("jobs", get_namespace_oid("jobq", false));

		has = OidIsValid(jobs) && get_attnum(jobs, "external") != InvalidAttrNumber;
	}
	return has == 1;
}

/*
 * Leaves (exit code 0, no restart) if DROP EXTENSION removed jobq.  Called
 * at the top of each cycle, outside any transaction.
 */
void
jobq_process_exit_if_extension_gone(JobqComponent *me)
{
	bool		present;

	StartTransactionCommand();
	present = jobq_extension_present();
	CommitTransactionCommand();
	if (present)
		return;

	ereport(LOG,
			(errmsg("jobq %s leaving database \"%s\": the extension was dropped",
					me->kind == JOBQ_WORKER ? "worker" : "candidate",
					jobq_process_database())));
	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->databases[me->db_index].state = JOBQ_DB_ABSENT;
	LWLockRelease(JobqShared->lock);
	jobq_wake_launcher();
	proc_exit(0);
}

/* Interrupts and a pending reload, between cycles. */
void
jobq_process_handle_interrupts(void)
{
	int			absorbed = cancels_absorbed;

	CHECK_FOR_INTERRUPTS();
	if (absorbed != cancels_reported)
	{
		ereport(LOG,
				(errmsg("jobq process of database \"%s\" ignored %d query cancel requests: it was not running a job",
						jobq_process_database(), absorbed - cancels_reported)));
		cancels_reported = absorbed;
	}
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * The transaction bracket of every jobq process.  SPI wants an outer
 * snapshot; it still takes a fresh one for each statement we run (READ
 * COMMITTED, pinned by settings.c), which the claim of a limited queue
 * relies on.
 */
void
jobq_xact_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
jobq_xact_end(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Recovers from an ERROR that escaped a cycle: report it, undo the
 * transaction, and keep the message for jobq.components.  Returns the
 * error, in cxt, for the caller to free.  The caller then backs off before
 * trying again.
 */
ErrorData *
jobq_process_recover(JobqComponent *me, MemoryContext cxt)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	jobq_process_allow_cancel(false);
	disable_all_timeouts(false);
	QueryCancelPending = false;
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	jobq_component_error(me, edata->message);
	RESUME_INTERRUPTS();
	return edata;
}

/*
 * Sleeps the whole delay, whatever sets the latch meanwhile (a backoff must
 * not be cut short by wake-ups meant for the normal loop).
 */
void
jobq_process_sleep(long delay_ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);

	for (;;)
	{
		long		secs;
		int			usecs;

		jobq_process_handle_interrupts();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		if (secs == 0 && usecs == 0)
			break;
		jobq_process_wait(secs * 1000 + usecs / 1000 + 1);
	}
}

/* Sleeps on the latch for at most timeout_ms, then clears it. */
void
jobq_process_wait(long timeout_ms)
{
	(void) WaitLatch(MyLatch,
					 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Max(timeout_ms, 0),
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/*
 * jobq's statements are parsed with only pg_catalog on the search path:
 * our SQL schema-qualifies jobq objects, and no setting of search_path (the
 * database's, a role's) can redirect its operators, functions or types.
 * Parsing happens at prepare time and again whenever the plan cache
 * revalidates a plan, which in PostgreSQL 15 re-parses under the search
 * path current at execution: so both prepare and execute go through here.
 */
static OverrideSearchPath *
catalog_only_path(void)
{
	OverrideSearchPath *path = GetOverrideSearchPath(CurrentMemoryContext);

	path->schemas = NIL;
	path->addCatalog = true;
	path->addTemp = false;
	return path;
}

/* A plan of jobq's SQL; it lives until SPI_finish. */
SPIPlanPtr
jobq_prepare_transient(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = NULL;

	PushOverrideSearchPath(catalog_only_path());
	PG_TRY();
	{
		plan = SPI_prepare(sql, nargs, argtypes);
	}
	PG_FINALLY();
	{
		PopOverrideSearchPath();
	}
	PG_END_TRY();
	if (plan == NULL)
		elog(ERROR, "could not prepare jobq query: %s", SPI_result_code_string(SPI_result));
	return plan;
}

/* SPI_execute_plan of a plan of jobq's SQL (never of user code). */
int
jobq_execute_plan(SPIPlanPtr plan, Datum *values, const char *nulls,
				  bool read_only, long count)
{
	int			result = 0;

	PushOverrideSearchPath(catalog_only_path());
	PG_TRY();
	{
		result = SPI_execute_plan(plan, values, nulls, read_only, count);
	}
	PG_FINALLY();
	{
		PopOverrideSearchPath();
	}
	PG_END_TRY();
	return result;
}

/* The same, kept for the life of the process (free with jobq_free_plan). */
SPIPlanPtr
jobq_prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = jobq_prepare_transient(sql, nargs, argtypes);

	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep jobq query plan");
	return plan;
}

SPIPlanPtr
jobq_prepare_statement(const JobqStatement *statement)
{
	return jobq_prepare(statement->sql, statement->nargs, (Oid *) statement->types);
}

void
jobq_free_plan(SPIPlanPtr *plan)
{
	if (*plan != NULL)
		SPI_freeplan(*plan);
	*plan = NULL;
}
