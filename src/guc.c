/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The jobq.* settings.  Every one is listed, with its default and
 *	  context, in README.md's settings table.
 *
 * Sizing is PGC_POSTMASTER (shared memory depends on it); timings and the
 * worker count are PGC_SIGHUP so that a reload changes running processes;
 * jobq.enabled is PGC_SUSET, to be set per database.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_db_role_setting.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"

bool		jobq_enabled = true;
int			jobq_workers = 4;
int			jobq_max_databases = 16;
int			jobq_poll_interval_ms = 1000;
int			jobq_batch_size = 100;
int			jobq_batch_time_ms = 50;
int			jobq_rescue_interval_ms = 10000;
int			jobq_cleanup_interval_ms = 60000;
int			jobq_completed_retention_s = 86400;
int			jobq_discarded_retention_s = 7 * 86400;
int			jobq_leader_cooldown_ms = 10000;
int			jobq_timeout_grace_ms = 5000;
int			jobq_max_snoozes = 1000;
bool		jobq_log_jobs = false;
char	   *jobq_fail_service = NULL;
bool		jobq_debug_fail_batch = false;

void
jobq_guc_define(void)
{
	/*
	 * Server-wide, the launcher reads it; per database (ALTER DATABASE ...
	 * SET, hence SUSET), the database's probing candidate and the backend
	 * that changes it read it from the catalog: jobq_database_off().
	 */
	DefineCustomBoolVariable("jobq.enabled",
							 "Whether jobq runs its processes: server-wide, or in one database with ALTER DATABASE ... SET.",
							 "Off, no job runs and nothing is rescued, scheduled or cleaned; jobs can still be enqueued.",
							 &jobq_enabled,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.workers",
							"Number of job worker processes per database.",
							"Changes take effect on reload; workers above the new number leave between jobs.",
							&jobq_workers,
							4,
							0,
							1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.max_databases",
							"Maximum number of databases in which jobq runs at once.",
							NULL,
							&jobq_max_databases,
							16,
							1,
							1024,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.poll_interval",
							"Longest time an idle worker sleeps before looking for jobs without being woken.",
							"Workers are woken when a transaction that enqueued jobs commits; this bounds the sleep in case a wake-up is lost.",
							&jobq_poll_interval_ms,
							1000,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.batch_size",
							"Most jobs a worker claims and runs in one transaction.",
							"Each job still runs in its own subtransaction; 1 gives one transaction per job.",
							&jobq_batch_size,
							100,
							1,
							10000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.batch_time",
							"Longest time a worker keeps running jobs in one transaction before committing.",
							NULL,
							&jobq_batch_time_ms,
							50,
							1,
							60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.rescue_interval",
							"How often the rescuer looks for running jobs of dead workers without being told a worker exited.",
							"The launcher wakes the rescuer the moment a worker exits; this is a safety net.",
							&jobq_rescue_interval_ms,
							10000,
							100,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.cleanup_interval",
							"How often the cleaner deletes final jobs older than their retention.",
							NULL,
							&jobq_cleanup_interval_ms,
							60000,
							100,
							24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.completed_retention",
							"How long completed jobs are kept.",
							NULL,
							&jobq_completed_retention_s,
							86400,
							0,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.discarded_retention",
							"How long discarded and cancelled jobs are kept.",
							NULL,
							&jobq_discarded_retention_s,
							7 * 86400,
							0,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.leader_cooldown",
							"How long a leader that resigned because its services could not start stays out of the election.",
							NULL,
							&jobq_leader_cooldown_ms,
							10000,
							0,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.timeout_grace",
							"How long a job may run on after its timeout or its cancel before its worker is terminated.",
							"A handler can catch the query cancel of its timeout or of jobq.cancel(); terminating the worker cannot be caught. The job is then given back by the rescuer, or stays cancelled.",
							&jobq_timeout_grace_ms,
							5000,
							0,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("jobq.max_snoozes",
							"How often one job may be snoozed by its handler.",
							"A snooze beyond it counts as a failed attempt.",
							&jobq_max_snoozes,
							1000,
							0,
							INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("jobq.log_jobs",
							 "Logs one line per job run (for debugging).",
							 NULL,
							 &jobq_log_jobs,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("jobq.debug_fail_service",
							   "Makes the start of the named leader service fail (for testing).",
							   "One of scheduler, rescuer, cleaner, periodic; empty for none.",
							   &jobq_fail_service,
							   "",
							   PGC_SIGHUP,
							   GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("jobq.debug_fail_batch",
							 "Makes every transaction of a worker that ran jobs fail before it commits (for testing).",
							 NULL,
							 &jobq_debug_fail_batch,
							 false,
							 PGC_SIGHUP,
							 GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("jobq");
}

/*
 * Whether a database's own settings (ALTER DATABASE ... SET, not ALTER ROLE
 * ... IN DATABASE) turn jobq.enabled off.  jobq's processes take the
 * database's settings back when they connect (settings.c), and the
 * launcher cannot read this catalog without a database: whoever is
 * connected reads it here, in a transaction.
 */
bool
jobq_database_off(Oid dboid)
{
	bool		off = false;
	Relation	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
	HeapTuple	tup;

	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_db_role_setting setting = (Form_pg_db_role_setting) GETSTRUCT(tup);
		Datum		config;
		Datum	   *items;
		bool	   *nulls;
		bool		isnull;
		int			n;

		if (setting->setdatabase != dboid || OidIsValid(setting->setrole))
			continue;
		config = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
							  RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		deconstruct_array(DatumGetArrayTypeP(config), TEXTOID, -1, false, TYPALIGN_INT,
						  &items, &nulls, &n);
		for (int i = 0; i < n; i++)
		{
			char	   *name;
			char	   *value;
			bool		enabled;

			if (nulls[i])
				continue;
			ParseLongOption(TextDatumGetCString(items[i]), &name, &value);
			/* the value was checked when it was set */
			if (pg_strcasecmp(name, "jobq.enabled") == 0 && value != NULL &&
				parse_bool(value, &enabled))
				off = !enabled;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return off;
}
