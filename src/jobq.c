/*-------------------------------------------------------------------------
 *
 * jobq.c
 *	  Module initialisation: settings, shared memory, the DDL hook and the
 *	  launcher are set up here when the library is preloaded.
 *
 * jobq only works from shared_preload_libraries: its processes are
 * background workers and its coordination lives in shared memory.  When the
 * library is loaded any other way (CREATE EXTENSION in a server without
 * it), every entry point raises a clear error instead.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

bool		jobq_preloaded = false;

void		_PG_init(void);

void
_PG_init(void)
{
	/*
	 * Loaded any other way (CREATE EXTENSION, a restore creating its C
	 * functions) jobq only says it needs preloading: defining its
	 * postmaster-level settings after startup would be FATAL for the session.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	jobq_guc_define();

	jobq_preloaded = true;
	jobq_shmem_hooks_install();
	jobq_ddl_hook_install();

	/* pg_upgrade starts the server to copy catalogs: run no jobs then */
	if (!IsBinaryUpgrade)
		jobq_launcher_register();
}

void
jobq_require_preload(void)
{
	if (!jobq_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("jobq must be loaded via shared_preload_libraries"),
				 errhint("Add jobq to shared_preload_libraries in postgresql.conf and restart the server.")));
}

PG_FUNCTION_INFO_V1(jobq_require_preload_sql);

Datum
jobq_require_preload_sql(PG_FUNCTION_ARGS)
{
	jobq_require_preload();
	PG_RETURN_VOID();
}
