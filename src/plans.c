/*-------------------------------------------------------------------------
 *
 * plans.c
 *	  jobq._hot_path_plans(): the generic plan of every statement on jobq's
 *	  hot path, as the statistics of the moment make it.
 *
 * jobq's processes prepare their statements once and keep them; PostgreSQL
 * re-plans them whenever jobq.jobs is analyzed, and then uses a generic
 * plan.  expected/plans.out pins these plans under realistic statistics
 * (empty queue, a million available, a million completed retained, ten
 * thousand running), so that no change of statistics can send a hot
 * statement down another access path unnoticed.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

static const JobqStatement *const *const all_statements[] = {
	jobq_worker_statements,
	jobq_job_state_statements,
	jobq_scheduler_statements,
	jobq_rescuer_statements,
	jobq_cleaner_statements,
	jobq_metrics_statements,
	jobq_external_statements,
};

/* EXPLAIN (COSTS OFF) of the statement's generic plan, one text. */
static char *
generic_plan(const JobqStatement *statement)
{
	StringInfoData sql;
	StringInfoData plan;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "PREPARE jobq_hot_path_statement");
	for (int i = 0; i < statement->nargs; i++)
		appendStringInfo(&sql, "%s%s", i == 0 ? "(" : ", ",
						 format_type_be(statement->types[i]));
	appendStringInfo(&sql, "%s AS %s", statement->nargs > 0 ? ")" : "", statement->sql);
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not prepare \"%s\"", statement->name);

	resetStringInfo(&sql);
	appendStringInfoString(&sql, "EXPLAIN (COSTS OFF) EXECUTE jobq_hot_path_statement");
	for (int i = 0; i < statement->nargs; i++)
		appendStringInfoString(&sql, i == 0 ? "(NULL" : ", NULL");
	if (statement->nargs > 0)
		appendStringInfoChar(&sql, ')');
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not explain \"%s\"", statement->name);
	initStringInfo(&plan);
	for (uint64 i = 0; i < SPI_processed; i++)
		appendStringInfo(&plan, "%s%s", i == 0 ? "" : "\n",
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));

	if (SPI_execute("DEALLOCATE jobq_hot_path_statement", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not deallocate \"%s\"", statement->name);
	return plan.data;
}

/*
 * Declared with search_path = pg_catalog, and run under jobq's own
 * settings: the statements are planned as in jobq's processes.
 */
PG_FUNCTION_INFO_V1(jobq_hot_path_plans);
Datum
jobq_hot_path_plans(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	int			nest;

	InitMaterializedSRF(fcinfo, 0);
	nest = NewGUCNestLevel();
	jobq_settings_set_own(GUC_ACTION_SAVE);
	SPI_connect();
	for (int m = 0; m < lengthof(all_statements); m++)
		for (const JobqStatement *const *s = all_statements[m]; *s != NULL; s++)
		{
			Datum		values[2];
			bool		nulls[2] = {false, false};
			char	   *plan = generic_plan(*s);

			values[0] = CStringGetTextDatum((*s)->name);
			values[1] = CStringGetTextDatum(plan);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	SPI_finish();
	AtEOXact_GUC(true, nest);
	return (Datum) 0;
}
