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
 * DROP EXTENSION jobq (or DROP SCHEMA jobq) holds the database's processes
 * the same way: it would otherwise wait for the running jobs to end, with
 * every enqueue queued behind it.  CREATE EXTENSION jobq and a drop of
 * jobq make the launcher look at the database again, at commit; ALTER
 * DATABASE ... SET / RESET jobq.enabled tells it the database's new
 * setting, read back from the catalog.  (Should
 * DROP OWNED remove the extension, the processes notice at their next
 * cycle.)  DROP ROLE, REASSIGN OWNED and DROP OWNED also concern the
 * roles owning jobq objects: see roles.c.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/xact.h"
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

static bool
names_jobq(List *objects)
{
	ListCell   *lc;

	foreach(lc, objects)
	{
		Node	   *name = lfirst(lc);

		if (IsA(name, String) && strcmp(strVal(name), "jobq") == 0)
			return true;
	}
	return false;
}

/* Whether a statement drops the jobq extension (or its schema). */
static bool
drops_jobq(Node *parsetree)
{
	DropStmt   *drop = (DropStmt *) parsetree;

	return IsA(parsetree, DropStmt) &&
		(drop->removeType == OBJECT_EXTENSION || drop->removeType == OBJECT_SCHEMA) &&
		names_jobq(drop->objects);
}

/*
 * The database whose jobq processes must be out of the way of a statement:
 * those that refuse to run while other sessions use a database, and a drop
 * of jobq itself, which would otherwise wait for the running jobs.
 */
static Oid
database_to_hold(Node *parsetree)
{
	const char *name = NULL;

	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			name = ((DropdbStmt *) parsetree)->dbname;
			break;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				name = ((RenameStmt *) parsetree)->subname;
			break;
		case T_AlterDatabaseStmt:
			if (has_option(((AlterDatabaseStmt *) parsetree)->options, "tablespace"))
				name = ((AlterDatabaseStmt *) parsetree)->dbname;
			break;
		case T_CreatedbStmt:
			name = option_string(((CreatedbStmt *) parsetree)->options, "template");
			break;
		case T_DropStmt:
			if (drops_jobq(parsetree))
				return MyDatabaseId;
			break;
		case T_AlterExtensionStmt:
			/* the processes start again on the new schema (process.c) */
			if (strcmp(((AlterExtensionStmt *) parsetree)->extname, "jobq") == 0)
				return MyDatabaseId;
			break;
		default:
			break;
	}
	return name ? get_database_oid(name, true) : InvalidOid;
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
hold_database(Oid dboid)
{
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
			{
				jobq_at_commit_probe_database();
				jobq_warn_if_slots_short();
			}
			break;
		case T_DropStmt:
			if (drops_jobq(parsetree))
				jobq_at_commit_recheck_database();
			break;
		case T_CreatedbStmt:
			jobq_at_commit_rescan_databases();
			break;
		case T_AlterDatabaseSetStmt:
			{
				AlterDatabaseSetStmt *stmt = (AlterDatabaseSetStmt *) parsetree;
				Oid			dboid = get_database_oid(stmt->dbname, false);

				/* RESET ALL has no name */
				if (stmt->setstmt->name == NULL ||
					pg_strcasecmp(stmt->setstmt->name, "jobq.enabled") == 0)
				{
					CommandCounterIncrement();
					jobq_at_commit_set_database_off(dboid, jobq_database_off(dboid));
				}
			}
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
	Oid			hold = database_to_hold(parsetree);
	int			held = -1;

	jobq_roles_before_utility(parsetree);
	if (OidIsValid(hold) && JobqShared != NULL)
		held = hold_database(hold);

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
	jobq_roles_after_utility(parsetree);
}

void
jobq_ddl_hook_install(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = jobq_ProcessUtility;
}
