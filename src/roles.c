/*-------------------------------------------------------------------------
 *
 * roles.c
 *	  Roles that own jobq objects: DROP ROLE, REASSIGN OWNED and DROP OWNED.
 *
 * jobq's kinds, queues, schedules, grants and jobs are rows, not catalog
 * objects, so PostgreSQL's shared dependencies do not protect them.  The
 * utility hook (ddl.c) does what they would do, in the current database:
 * DROP ROLE is refused while the role owns anything in jobq but final jobs
 * (history, which goes with the role); REASSIGN OWNED BY moves it all to
 * the new role; DROP OWNED BY removes the role's kinds, queues, schedules
 * and grants, and cancels its live jobs (and those of its kinds and
 * queues).  As for
 * catalog objects, REASSIGN and DROP OWNED act in the current database
 * only: run them in each database that uses jobq before DROP ROLE.
 *
 * The work is done by internal SQL functions (jobq._owned_by,
 * _reassign_owned, _drop_owned) run as the extension's owner, which sees
 * every row whatever the row level security of the caller; PostgreSQL has
 * already checked the caller's right to the command.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/genam.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"

/*
 * The owner of the jobq extension, or InvalidOid if it is not installed or
 * its schema predates this (0.1.0, before ALTER EXTENSION jobq UPDATE).
 */
static Oid
extension_owner(void)
{
	Oid			owner = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			argtypes[1] = {OIDOID};

	if (!OidIsValid(get_extension_oid("jobq", true)) ||
		!OidIsValid(LookupFuncName(list_make2(makeString("jobq"), makeString("_owned_by")),
								   1, argtypes, true)))
		return InvalidOid;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("jobq"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

/*
 * Runs one of the internal functions, taking one or two role OIDs, as the
 * extension's owner; returns its text result (NULL for void or NULL).
 */
static char *
call_internal(Oid extowner, const char *sql, Oid role1, Oid role2)
{
	Oid			argtypes[2] = {OIDOID, OIDOID};
	Datum		values[2] = {ObjectIdGetDatum(role1), ObjectIdGetDatum(role2)};
	Oid			save_userid;
	int			save_sec_context;
	char	   *result = NULL;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(extowner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		SPIPlanPtr	plan;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		plan = jobq_prepare_transient(sql, OidIsValid(role2) ? 2 : 1, argtypes);
		if (jobq_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not run \"%s\"", sql);
		if (SPI_processed == 1)
		{
			char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			if (value != NULL)
				result = MemoryContextStrdup(TopTransactionContext, value);
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	return result;
}

/* DROP ROLE: refuse while a role to drop owns anything in jobq here. */
static void
check_drop_role(DropRoleStmt *stmt, Oid extowner)
{
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			role;
		char	   *owned;

		if (spec->roletype != ROLESPEC_CSTRING)
			continue;			/* PostgreSQL refuses to drop these itself */
		role = get_role_oid(spec->rolename, true);
		if (!OidIsValid(role))
			continue;			/* PostgreSQL reports it (or IF EXISTS) */
		owned = call_internal(extowner, "SELECT jobq._owned_by($1)", role, InvalidOid);
		if (owned != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because some objects depend on it",
							spec->rolename),
					 errdetail("It owns %s in jobq of database \"%s\".",
							   owned, get_database_name(MyDatabaseId)),
					 errhint("Use REASSIGN OWNED BY or DROP OWNED BY in this database first.")));
		/* its final jobs go with it (undone if the drop fails) */
		(void) call_internal(extowner, "SELECT jobq._drop_owned($1, true)", role, InvalidOid);
	}
}

static List *
role_oids(List *specs)
{
	List	   *oids = NIL;
	ListCell   *lc;

	foreach(lc, specs)
		oids = lappend_oid(oids, get_rolespec_oid(lfirst(lc), false));
	return oids;
}

void
jobq_roles_before_utility(Node *parsetree)
{
	Oid			extowner;

	if (!IsA(parsetree, DropRoleStmt) || !IsTransactionState())
		return;
	extowner = extension_owner();
	if (OidIsValid(extowner))
		check_drop_role((DropRoleStmt *) parsetree, extowner);
}

/* After PostgreSQL did its part (and checked the caller may). */
void
jobq_roles_after_utility(Node *parsetree)
{
	Oid			extowner;
	ListCell   *lc;

	if (!IsA(parsetree, ReassignOwnedStmt) && !IsA(parsetree, DropOwnedStmt))
		return;
	extowner = extension_owner();
	if (!OidIsValid(extowner))
		return;

	if (IsA(parsetree, ReassignOwnedStmt))
	{
		ReassignOwnedStmt *stmt = (ReassignOwnedStmt *) parsetree;
		Oid			newrole = get_rolespec_oid(stmt->newrole, false);

		foreach(lc, role_oids(stmt->roles))
			(void) call_internal(extowner, "SELECT jobq._reassign_owned($1, $2)",
								 lfirst_oid(lc), newrole);
	}
	else
	{
		foreach(lc, role_oids(((DropOwnedStmt *) parsetree)->roles))
			(void) call_internal(extowner, "SELECT jobq._drop_owned($1, false)",
								 lfirst_oid(lc), InvalidOid);
	}
}
