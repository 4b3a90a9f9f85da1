/*-------------------------------------------------------------------------
 *
 * job_control.c
 *	  What a handler may ask of its own job: jobq.give_up(reason),
 *	  jobq.snooze(delay | run_at), and jobq.cancel() of itself.
 *
 * Each ends the handler at once: it records the request here and raises
 * query_canceled (57014), which PL/pgSQL's WHEN OTHERS does not catch.
 * The worker rolls the job's subtransaction back and carries the request
 * out (job_state.c) whatever the handler did after it; a handler that
 * catches the error and returns normally changes nothing.  Only the worker
 * process running the job's handler can ask: anywhere else these raise
 * object_not_in_prerequisite_state.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

JobqRequest jobq_request;

static void
require_handler(const char *function)
{
	if (jobq_current_job_id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s can only be called by a job's handler", function),
				 errhint("To stop a job from outside, use jobq.cancel(id).")));
}

static void pg_attribute_noreturn()
stop_handler(JobqRequestKind kind, const char *what)
{
	jobq_request.kind = kind;
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("job " INT64_FORMAT " %s", jobq_current_job_id, what),
			 errdetail("The job's effects are rolled back.")));
}

PG_FUNCTION_INFO_V1(jobq_give_up);
PG_FUNCTION_INFO_V1(jobq_snooze_for);
PG_FUNCTION_INFO_V1(jobq_snooze_until);

/* jobq.give_up(reason text): discard the job now, reason recorded. */
Datum
jobq_give_up(PG_FUNCTION_ARGS)
{
	char	   *reason;
	int			len;

	require_handler("jobq.give_up()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the reason for giving up must not be null")));
	reason = text_to_cstring(PG_GETARG_TEXT_PP(0));
	len = strlen(reason);
	if (len >= JOBQ_REASON_LEN)
		len = pg_mbcliplen(reason, len, JOBQ_REASON_LEN - 1);
	memcpy(jobq_request.reason, reason, len);
	jobq_request.reason[len] = '\0';
	stop_handler(JOBQ_REQUEST_GIVE_UP, "given up by its handler");
}

static Datum
snooze(TimestampTz run_at)
{
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job cannot be snoozed until an infinite time")));
	jobq_request.run_at = run_at;
	stop_handler(JOBQ_REQUEST_SNOOZE, "snoozed by its handler");
}

/* jobq.snooze(delay interval): run again after delay, attempt not counted. */
Datum
jobq_snooze_for(PG_FUNCTION_ARGS)
{
	Interval   *delay;
	Interval	zero = {0};

	require_handler("jobq.snooze()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the delay of jobq.snooze() must not be null")));
	delay = PG_GETARG_INTERVAL_P(0);
	if (DatumGetBool(DirectFunctionCall2(interval_lt, IntervalPGetDatum(delay),
										 IntervalPGetDatum(&zero))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the delay of jobq.snooze() must not be negative")));
	return snooze(DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														  TimestampTzGetDatum(GetCurrentTimestamp()),
														  IntervalPGetDatum(delay))));
}

/* jobq.snooze(run_at timestamptz): run again at run_at, attempt not counted. */
Datum
jobq_snooze_until(PG_FUNCTION_ARGS)
{
	require_handler("jobq.snooze()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the time of jobq.snooze() must not be null")));
	return snooze(PG_GETARG_TIMESTAMPTZ(0));
}

/*
 * jobq.cancel() of the job whose handler calls it: the cancel would roll
 * back with the handler's subtransaction, so it becomes a request.
 */
void
jobq_cancel_own_job(int64 job_id)
{
	if (job_id != 0 && job_id == jobq_current_job_id)
		stop_handler(JOBQ_REQUEST_CANCEL, "cancelled by its handler");
}

PG_FUNCTION_INFO_V1(jobq_claim_is_live_sql);

/*
 * jobq._claim_is_live(claim): whether a live worker of this database holds
 * the claim (jobs.attempted_by).  A running job whose claim is not live has
 * been left behind: jobq.retry() may take it, as the rescuer would.
 */
Datum
jobq_claim_is_live_sql(PG_FUNCTION_ARGS)
{
	int			d = jobq_db_index(MyDatabaseId);

	jobq_require_preload();
	PG_RETURN_BOOL(d >= 0 && jobq_claim_is_live(d, (uint64) PG_GETARG_INT64(0)));
}
