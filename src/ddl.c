/*-------------------------------------------------------------------------
 *
 * ddl.c
 *	  A ProcessUtility hook that keeps jobq's processes out of the way of
 *	  DDL and tells the launcher about the DDL that concerns it.
 *
 * DROP DATABASE, ALTER DATABASE ... RENAME / SET TABLESPACE and CREATE
 * DATABASE ... TEMPLATE refuse to run while other sessions are connected
 * to the database, and jobq's workers are such sessions.  Before those
 * commands run, this hook asks the launcher to stop the database's
 * processes and hold them off, waits (bounded) until they are gone, and
 * releases the hold when the command's transaction ends, however it ends.
 * A backend that dies while holding is noticed by the launcher, which drops
 * the hold.
 *
 * CREATE EXTENSION jobq asks the launcher, at commit, to look at the
 * database again; DROP EXTENSION/SCHEMA/OWNED wakes the database's
 * processes at commit so that they notice the extension is gone and leave.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

#define HOLD_WAIT_MS	10000	/* longest wait for processes to leave */

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static bool
has_option(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *def = lfirst_node(DefElem, lc);

		if (strcmp(def->defname, name) == 0)
			return true;
	}
	return false;
}

static char *
option_string(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *def = lfirst_node(DefElem, lc);

		if (strcmp(def->defname, name) == 0 && def->arg != NULL)
			return defGetString(def);
	}
	return NULL;
}

/* The database a statement needs free of other sessions, if any. */
static const char *
database_needing_exclusivity(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) parsetree)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) parsetree)->subname;
			return NULL;
		case T_AlterDatabaseStmt:
			if (has_option(((AlterDatabaseStmt *) parsetree)->options, "tablespace"))
				return ((AlterDatabaseStmt *) parsetree)->dbname;
			return NULL;
		case T_CreatedbStmt:
			return option_string(((CreatedbStmt *) parsetree)->options, "template");
		default:
			return NULL;
	}
}

static bool
database_has_processes(int db_index)
{
	for (int i = 0; i < JobqShared->slots_per_db; i++)
	{
		JobqComponent *c = &JobqShared->components[db_index * JobqShared->slots_per_db + i];
		bool		running;

		if (c->kind == JOBQ_SERVICE)
			continue;
		SpinLockAcquire(&c->mutex);
		running = c->pid != 0;
		SpinLockRelease(&c->mutex);
		if (running)
			return true;
	}
	return false;
}

/* Stops a database's jobq processes and keeps them off; returns the hold. */
static int
hold_database(const char *dbname)
{
	Oid			dboid = get_database_oid(dbname, true);
	int			db_index;
	TimestampTz deadline;

	if (!OidIsValid(dboid) || (db_index = jobq_db_index(dboid)) < 0)
		return -1;

	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	JobqShared->databases[db_index].hold_pid = MyProcPid;
	LWLockRelease(JobqShared->lock);
	jobq_wake_launcher();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), HOLD_WAIT_MS);
	ConditionVariablePrepareToSleep(&JobqShared->components_cv);
	while (database_has_processes(db_index) &&
		   GetCurrentTimestamp() < deadline)
		(void) ConditionVariableTimedSleep(&JobqShared->components_cv, 100,
										   PG_WAIT_EXTENSION);
	ConditionVariableCancelSleep();
	return db_index;
}

void
jobq_release_database(int db_index)
{
	if (db_index < 0)
		return;
	LWLockAcquire(JobqShared->lock, LW_EXCLUSIVE);
	if (JobqShared->databases[db_index].hold_pid == MyProcPid)
		JobqShared->databases[db_index].hold_pid = 0;
	JobqShared->rescan_requested = true;
	LWLockRelease(JobqShared->lock);
	jobq_wake_launcher();
}

static void
note_effects(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_CreateExtensionStmt:
			if (strcmp(((CreateExtensionStmt *) parsetree)->extname, "jobq") == 0)
				jobq_at_commit_probe_database();
			break;
		case T_DropStmt:
			{
				ObjectType	type = ((DropStmt *) parsetree)->removeType;

				if (type == OBJECT_EXTENSION || type == OBJECT_SCHEMA)
					jobq_at_commit_recheck_database();
				break;
			}
		case T_DropOwnedStmt:
			jobq_at_commit_recheck_database();
			break;
		case T_CreatedbStmt:
			jobq_at_commit_rescan_databases();
			break;
		default:
			break;
	}
}

static void
jobq_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	const char *exclusive_db = database_needing_exclusivity(parsetree);
	int			held = -1;

	if (exclusive_db != NULL && JobqShared != NULL)
		held = hold_database(exclusive_db);

	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		jobq_release_database(held);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/*
	 * Keep the hold until the command's transaction ends: until then a
	 * dropped database is still in pg_database, and processes started for
	 * it would only wait for the drop and fail.
	 */
	if (held >= 0)
		jobq_at_xact_end_release_database(held);
	note_effects(parsetree);
}

void
jobq_ddl_hook_install(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = jobq_ProcessUtility;
}
