/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The settings jobq's processes run under, and the settings a handler
 *	  runs under.
 *
 * A background worker connecting to a database gets the database's and
 * its role's settings (ALTER DATABASE/ROLE ... SET), as any session does.
 * Those are for user sessions, not for jobq: a lock_timeout of 50 ms, a
 * serializable or read-only default, session_replication_role = replica
 * would change what jobq's own statements do.  So every jobq process, once
 * connected,
 *	1. takes back the settings its connection applied from
 *	   pg_db_role_setting (restoring what it had before connecting, i.e.
 *	   postgresql.conf and the server's command line), and
 *	2. pins the settings jobq's statements need (own_settings below).
 * Both at session level, once: the session keeps them whatever is altered
 * later.  (search_path is pinned differently, per statement: process.c.)
 *
 * A handler runs under what a new session of the job's owner would get:
 * postgresql.conf, then the rows of pg_db_role_setting for all roles and
 * databases, this database, the owner, the owner in this database, in that
 * order of precedence.  jobq_settings_load() reads them at the start of
 * every batch transaction, so a change reaches the next batch without a
 * restart; jobq_settings_apply_owner() sets them, with jobq's own settings
 * taken back, in the GUC nest level the worker opens around the handler.
 * Exceptions, documented in README.md: a handler runs in READ COMMITTED
 * (it is a subtransaction of the worker's transaction), statement_timeout
 * and the idle timeouts do not apply (the kind's timeout does; no client
 * is idle), and role and session_authorization are not applied (a handler
 * runs as its owner).
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_db_role_setting.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/memutils.h"
#include "utils/rel.h"

/* What jobq's own statements run under, in every jobq process. */
static const struct
{
	const char *name;
	const char *value;
}			own_settings[] =
{
	/* waits for a row a user's open transaction holds end soon */
	{"lock_timeout", CppAsString2(JOBQ_LOCK_TIMEOUT_MS)},
	{"statement_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"idle_session_timeout", "0"},
	/* a claim or an outcome must not fail with a serialization error */
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_read_only", "off"},
	{"default_transaction_deferrable", "off"},
	/* replica would skip the foreign keys and triggers of jobq's tables */
	{"session_replication_role", "origin"},

	/*
	 * No statistics may send a statement into a scan of the whole table:
	 * analyzed while empty, jobq.jobs makes one look cheaper than any index,
	 * and the plan stays while the table fills.  Generic plans: those are
	 * what jobq._hot_path_plans() shows and expected/plans.out pins.
	 */
	{"enable_seqscan", "off"},
	{"plan_cache_mode", "force_generic_plan"},
	/* short statements: compiling them never pays (a disabled scan's cost would ask for it) */
	{"jit", "off"},
};

/* A setting as the process had it before connecting. */
typedef struct StartupValue
{
	char	   *name;
	char	   *value;
} StartupValue;

static StartupValue *startup_values;
static int	nstartup_values;

/* own_settings[i] as before connecting, NULL where jobq's value is the same */
static const char *own_startup[lengthof(own_settings)];

/* The value before connecting of a setting, or NULL (a placeholder). */
static const char *
startup_value(const char *name)
{
	for (int i = 0; i < nstartup_values; i++)
		if (pg_strcasecmp(startup_values[i].name, name) == 0)
			return startup_values[i].value;
	return NULL;
}

/*
 * Before connecting: remember every setting a database or role may set.
 * Read without privilege checks: there is no user yet.
 */
void
jobq_settings_capture(void)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();

	startup_values = MemoryContextAlloc(TopMemoryContext, sizeof(StartupValue) * n);
	for (int i = 0; i < n; i++)
	{
		const char *value;

		if (vars[i]->context != PGC_USERSET && vars[i]->context != PGC_SUSET)
			continue;
		value = GetConfigOption(vars[i]->name, true, false);
		startup_values[nstartup_values].name = MemoryContextStrdup(TopMemoryContext, vars[i]->name);
		startup_values[nstartup_values].value = MemoryContextStrdup(TopMemoryContext, value ? value : "");
		nstartup_values++;
	}
	for (int i = 0; i < lengthof(own_settings); i++)
	{
		const char *before = startup_value(own_settings[i].name);

		own_startup[i] = before && strcmp(before, own_settings[i].value) != 0 ? before : NULL;
	}
}

/*
 * The settings of pg_db_role_setting that apply in this database to role
 * (InvalidOid: to no particular role), lowest precedence first.
 */
typedef struct RoleSettings
{
	Oid			database;
	Oid			role;
	ArrayType  *settings;
} RoleSettings;

static List *loaded_settings = NIL;
static MemoryContext settings_cxt = NULL;

/* Reads the rows of pg_db_role_setting for this database and for all. */
void
jobq_settings_load(void)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	MemoryContext old;

	if (settings_cxt == NULL)
		settings_cxt = AllocSetContextCreate(TopMemoryContext, "jobq role settings",
											 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(settings_cxt);
	loaded_settings = NIL;

	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	old = MemoryContextSwitchTo(settings_cxt);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_db_role_setting row = (Form_pg_db_role_setting) GETSTRUCT(tup);
		bool		isnull;
		Datum		array;
		RoleSettings *rs;

		if (OidIsValid(row->setdatabase) && row->setdatabase != MyDatabaseId)
			continue;
		array = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
							 RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		rs = palloc(sizeof(RoleSettings));
		rs->database = row->setdatabase;
		rs->role = row->setrole;
		rs->settings = DatumGetArrayTypePCopy(array);
		loaded_settings = lappend(loaded_settings, rs);
	}
	MemoryContextSwitchTo(old);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

/* Calls fn for each name=value of the loaded rows for (database, role). */
static void
for_each_setting(Oid database, Oid role,
				 void (*fn) (const char *name, const char *value, GucAction action),
				 GucAction action)
{
	ListCell   *lc;

	foreach(lc, loaded_settings)
	{
		RoleSettings *rs = lfirst(lc);
		Datum	   *items;
		bool	   *nulls;
		int			n;

		if (rs->database != database || rs->role != role)
			continue;
		deconstruct_array(rs->settings, TEXTOID, -1, false, TYPALIGN_INT,
						  &items, &nulls, &n);
		for (int i = 0; i < n; i++)
		{
			char	   *name;
			char	   *value;

			if (nulls[i])
				continue;
			ParseLongOption(TextDatumGetCString(items[i]), &name, &value);
			if (value != NULL)
				fn(name, value, action);
		}
	}
}

/* Takes back one setting the connection applied. */
static void
take_back(const char *name, const char *value, GucAction action)
{
	const char *before = startup_value(name);

	if (before != NULL)
		(void) set_config_option(name, before, PGC_SUSET, PGC_S_SESSION,
								 action, true, WARNING, false);
}

/* Sets one setting of a role for its handler. */
static void
apply_for_handler(const char *name, const char *value, GucAction action)
{
	/* a handler runs as its owner, whatever the owner's sessions assume */
	if (pg_strcasecmp(name, "role") == 0 ||
		pg_strcasecmp(name, "session_authorization") == 0)
		return;
	(void) set_config_option(name, value, PGC_SUSET, PGC_S_SESSION,
							 action, true, WARNING, false);
}

/*
 * After connecting, in a transaction: take back what the connection applied
 * (in the order it applied them) and pin jobq's own settings.
 */
void
jobq_settings_pin(void)
{
	Oid			role = GetSessionUserId();

	jobq_settings_load();
	for_each_setting(MyDatabaseId, role, take_back, GUC_ACTION_SET);
	for_each_setting(InvalidOid, role, take_back, GUC_ACTION_SET);
	for_each_setting(MyDatabaseId, InvalidOid, take_back, GUC_ACTION_SET);
	for_each_setting(InvalidOid, InvalidOid, take_back, GUC_ACTION_SET);
	jobq_settings_set_own(GUC_ACTION_SET);
}

/* Sets jobq's own settings (own_settings) at session level. */
void
jobq_settings_set_own(GucAction action)
{
	for (int i = 0; i < lengthof(own_settings); i++)
		(void) set_config_option(own_settings[i].name, own_settings[i].value,
								 PGC_SUSET, PGC_S_SESSION, action, true, 0, false);
}

/*
 * Sets, in the current GUC nest level, what a new session of owner would
 * get (see the header comment); returns whether that session would be
 * read-only.  Settings the current user could not set are skipped with a
 * WARNING, as at a session's start.
 */
bool
jobq_settings_apply_owner(Oid owner)
{
	for (int i = 0; i < lengthof(own_settings); i++)
		if (own_startup[i] != NULL)
			(void) set_config_option(own_settings[i].name, own_startup[i], PGC_SUSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (loaded_settings != NIL)
	{
		for_each_setting(InvalidOid, InvalidOid, apply_for_handler, GUC_ACTION_SAVE);
		for_each_setting(MyDatabaseId, InvalidOid, apply_for_handler, GUC_ACTION_SAVE);
		for_each_setting(InvalidOid, owner, apply_for_handler, GUC_ACTION_SAVE);
		for_each_setting(MyDatabaseId, owner, apply_for_handler, GUC_ACTION_SAVE);
	}
	return DefaultXactReadOnly;
}
