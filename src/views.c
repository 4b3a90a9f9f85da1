/*-------------------------------------------------------------------------
 *
 * views.c
 *	  jobq._components(), behind the jobq.components view: one row per
 *	  process and leader service, read from shared memory.
 *
 * Rows: the launcher; then per database where jobq runs, its workers (up to
 * jobq.workers, and any above it still leaving), its candidates (the one
 * holding the lock is shown as "leader") and the four services.  Each
 * slot's fields are copied under its spinlock, so a row is consistent in
 * itself; rows are not a snapshot of one instant.  As in pg_stat_activity,
 * the job a worker runs is shown only to roles with the privileges of the
 * job's owner and to members of pg_read_all_stats.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "fmgr.h"
#include "funcapi.h"
#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define COMPONENT_COLUMNS 15

static void
add_row(Tuplestorestate *store, TupleDesc desc, Name dbname,
		const char *name, JobqComponent *c)
{
	Datum		values[COMPONENT_COLUMNS];
	bool		nulls[COMPONENT_COLUMNS];
	JobqComponent copy;

	SpinLockAcquire(&c->mutex);
	memcpy(&copy, c, sizeof(JobqComponent));
	SpinLockRelease(&c->mutex);

	memset(nulls, 0, sizeof(nulls));
	if (dbname)
		values[0] = NameGetDatum(dbname);
	else
		nulls[0] = true;
	values[1] = CStringGetTextDatum(name);
	values[2] = Int32GetDatum((int32) copy.pid);
	nulls[2] = copy.pid == 0;
	values[3] = CStringGetTextDatum(jobq_state_name(copy.state));
	values[4] = Int64GetDatum(copy.job_id);
	nulls[4] = copy.job_id == 0 ||
		!(has_privs_of_role(GetUserId(), copy.job_owner) ||
		  has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS));
	values[5] = Int64GetDatum((int64) copy.incarnation);
	nulls[5] = copy.kind != JOBQ_WORKER || copy.incarnation == 0;
	values[6] = TimestampTzGetDatum(copy.started_at);
	nulls[6] = copy.started_at == 0;
	values[7] = TimestampTzGetDatum(copy.heartbeat_at);
	nulls[7] = copy.heartbeat_at == 0 || copy.pid == 0;
	values[8] = Int32GetDatum(copy.restarts);
	values[9] = CStringGetTextDatum(copy.last_error);
	nulls[9] = copy.last_error[0] == '\0';
	values[10] = TimestampTzGetDatum(copy.last_error_at);
	nulls[10] = copy.last_error_at == 0;
	values[11] = Int64GetDatum(copy.jobs_done);
	values[12] = Int64GetDatum(copy.jobs_failed);
	nulls[11] = nulls[12] = copy.kind != JOBQ_WORKER;
	values[13] = Int64GetDatum((int64) copy.claim);
	nulls[13] = copy.kind != JOBQ_WORKER || copy.claim == 0;
	values[14] = TimestampTzGetDatum(copy.job_started_at);
	nulls[14] = copy.job_id == 0;
	/* the 0.1.0 schema declares the columns before claim only */
	Assert(desc->natts <= COMPONENT_COLUMNS);
	tuplestore_putvalues(store, desc, values, nulls);
}

PG_FUNCTION_INFO_V1(jobq_components);

Datum
jobq_components(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			nworkers = Min(jobq_workers, max_worker_processes);

	jobq_require_preload();
	InitMaterializedSRF(fcinfo, 0);

	add_row(rsinfo->setResult, rsinfo->setDesc, NULL, "launcher", &JobqShared->launcher);

	for (int d = 0; d < JobqShared->max_databases; d++)
	{
		JobqDatabase *db = &JobqShared->databases[d];
		NameData	dbname;
		int			leader;
		bool		active;

		LWLockAcquire(JobqShared->lock, LW_SHARED);
		active = db->state == JOBQ_DB_ACTIVE;
		namestrcpy(&dbname, db->name);
		leader = db->leader;
		LWLockRelease(JobqShared->lock);
		if (!active)
			continue;

		for (int i = 0; i < max_worker_processes; i++)
		{
			JobqComponent *c = jobq_component(d, JOBQ_WORKER, i);
			char		name[32];

			if (i >= nworkers && c->pid == 0)
				continue;
			snprintf(name, sizeof(name), "worker %d", i);
			add_row(rsinfo->setResult, rsinfo->setDesc, &dbname, name, c);
		}
		for (int i = 0; i < JOBQ_CANDIDATES; i++)
		{
			char		name[32];

			if (i == leader)
				strlcpy(name, "leader", sizeof(name));
			else
				snprintf(name, sizeof(name), "candidate %d", i);
			add_row(rsinfo->setResult, rsinfo->setDesc, &dbname, name,
					jobq_component(d, JOBQ_CANDIDATE, i));
		}
		for (int i = 0; i < JOBQ_NUM_SERVICES; i++)
			add_row(rsinfo->setResult, rsinfo->setDesc, &dbname,
					jobq_service_name((JobqServiceKind) i),
					jobq_component(d, JOBQ_SERVICE, i));
	}
	return (Datum) 0;
}
