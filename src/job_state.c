/*-------------------------------------------------------------------------
 *
 * job_state.c
 *	  Every way a running job ends an attempt: the one home of the
 *	  transitions out of 'running'.
 *
 * The states and where each transition lives:
 *
 *	(enqueue)		-> scheduled | available		jobq._new_job (SQL)
 *	scheduled, retryable -> available			scheduler.c (when due)
 *	available		-> running					the claim (worker.c), attempt + 1;
 *												jobq.claim (external.c) for
 *												external jobs, with a lease
 *
 * An external worker's jobq.complete/fail/give_up/snooze (external.c) end
 * its attempts through the same functions as the workers', its lease token
 * in place of the claim.
 *	running			-> completed				jobq_jobs_complete_leased (an
 *												external worker's batch), or
 *												jobq_jobs_complete (a batch's
 *												jobs, at its end), or
 *												jobq_job_complete
 *	running			-> retryable | available | discarded
 *												jobq_job_fail (an error)
 *	running			-> discarded				jobq_job_give_up (jobq.give_up)
 *	running			-> cancelled				jobq_job_cancelled_by_handler,
 *												jobq._cancel (SQL, any session)
 *	running			-> scheduled | available	jobq_job_snooze, attempt - 1
 *	running			-> retryable | discarded | available
 *												jobq_jobs_release (a batch's
 *												transaction failed)
 *	running			-> retryable | discarded	jobq_jobs_rescue (no live claim,
 *												or a lease expired)
 *	any but available, running -> available		jobq._retry (SQL); also a
 *												running job with no live claim
 *	scheduled, available, retryable -> cancelled	jobq._cancel (SQL)
 *
 * Every statement here changes a job only if it is still 'running' under
 * the claim that took it (attempted_by): a job cancelled meanwhile, or
 * already given back, is left as it is, and the caller learns so from the
 * row count.  Plans are prepared on first use in the process that uses
 * them and kept for its life.
 *
 * Error entries appended to jobs.errors keep at most ERROR_FIELD_MAX bytes
 * of each text (whole characters), so that no error, however large, makes
 * its own recording fail.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define ERROR_FIELD_MAX 8192	/* bytes kept of each text of an error entry */

/* The retry delay of a failed attempt: backoff, capped by the kind's. */
#define RETRY_AT \
"       scheduled_at = CASE WHEN j.attempt >= j.max_attempts THEN j.scheduled_at" \
"                           ELSE now_.at + jobq._backoff(j.attempt," \
"                                (SELECT h.backoff_max FROM jobq.handlers h" \
"                                  WHERE h.kind = j.kind)) END,"

#define THE_JOB JOBQ_THE_RUNNING_JOB

static const JobqStatement COMPLETE = {"complete",
"UPDATE jobq.jobs j"
"   SET state = 'completed', finalized_at = clock_timestamp(), result = $3"
THE_JOB,
3, {INT8OID, INT8OID, JSONBOID}};

/*
 * The jobs of a batch whose handlers returned, completed in one statement
 * before the batch commits: $1 the addresses of their rows as claimed
 * (the claim's version), $2 their ids, $3 results, $4 when each handler
 * returned; returns the positions (1-based) of those it completed.  A job
 * whose row has moved since (its owner reassigned) is left to COMPLETE.
 * Only the address can reach a row, so no statistics can change the plan:
 * the id is compared as an expression (not a join key the primary key
 * could serve), and the state 'running' comes as $6 (a constant would let
 * the planner scan jobs_running, whose predicate it implies).
 */
static const JobqStatement COMPLETE_MANY = {"complete batch",
"UPDATE jobq.jobs j"
"   SET state = 'completed', finalized_at = d.at, result = d.result"
"  FROM unnest($1::tid[], $2::int8[], $3::jsonb[], $4::timestamptz[])"
"         WITH ORDINALITY AS d(tid, id, result, at, n)"
" WHERE j.ctid = d.tid AND j.id + 0 = d.id"
"   AND j.state = $6::jobq.job_state AND j.attempted_by = $5"
" RETURNING d.n",
6, {TIDARRAYOID, INT8ARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID, INT8OID, TEXTOID}};

/*
 * $3: the retry delay in ms, computed by the worker (it knows the kind's
 * cap without a look-up); 0 makes the job available at once.  One clock
 * reading: the error's "at" is the finalized_at of a discard.
 */
/*
 * External jobs completed by their lease tokens ($2[i] holds job $1[i]),
 * results $3 (NULL: none); returns the positions (1-based) completed.
 * Reached by the primary key only, "id = ANY ($1)", each row's token and
 * result found by its position in $1 (the caller refused duplicates): no
 * join, so no join method for statistics to change; the state comes as $4
 * (a constant would let the planner scan jobs_running).  Its caller,
 * jobq._complete_many, runs with jobq's planner settings (SET clauses), as
 * jobq's processes do.
 */
static const JobqStatement COMPLETE_LEASED = {"complete leased jobs",
"UPDATE jobq.jobs j"
"   SET state = 'completed', finalized_at = now_.at,"
"       result = ($3::jsonb[])[pg_catalog.array_position($1::int8[], j.id)]"
"  FROM (SELECT clock_timestamp() AS at) AS now_"
" WHERE j.id = ANY ($1)"
"   AND j.attempted_by = ($2::int8[])[pg_catalog.array_position($1::int8[], j.id)]"
"   AND j.state = $4::jobq.job_state AND j.external"
" RETURNING pg_catalog.array_position($1::int8[], j.id)::int8",
4, {INT8ARRAYOID, INT8ARRAYOID, JSONBARRAYOID, TEXTOID}};

static const JobqStatement FAIL = {"fail",
"UPDATE jobq.jobs j"
"   SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded'"
"                    WHEN $3 = 0 THEN 'available'"
"                    ELSE 'retryable' END::jobq.job_state,"
"       scheduled_at = CASE WHEN j.attempt >= j.max_attempts THEN j.scheduled_at"
"                           ELSE now_.at + $3 * interval '1 millisecond' END,"
"       finalized_at = CASE WHEN j.attempt >= j.max_attempts THEN now_.at END,"
"       errors = j.errors || jsonb_build_array(jsonb_build_object("
"           'attempt', j.attempt, 'at', now_.at, 'message', $4::text,"
"           'sqlstate', $5::text, 'detail', $6::text, 'hint', $7::text,"
"           'context', $8::text))"
"  FROM (SELECT clock_timestamp() AS at) AS now_"
THE_JOB
" RETURNING j.state::text",
8, {INT8OID, INT8OID, FLOAT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}};

static const JobqStatement GIVE_UP = {"give up",
"UPDATE jobq.jobs j"
"   SET state = 'discarded', finalized_at = now_.at,"
"       errors = j.errors || jsonb_build_array(jsonb_build_object("
"           'attempt', j.attempt, 'at', now_.at, 'message', $3::text,"
"           'given_up', true))"
"  FROM (SELECT clock_timestamp() AS at) AS now_"
THE_JOB,
3, {INT8OID, INT8OID, TEXTOID}};

static const JobqStatement CANCELLED = {"cancelled by handler",
"UPDATE jobq.jobs j"
"   SET state = 'cancelled', finalized_at = clock_timestamp()"
THE_JOB,
2, {INT8OID, INT8OID}};

/* $4: jobq.max_snoozes; no row when it is reached (or the job moved on) */
static const JobqStatement SNOOZE = {"snooze",
"UPDATE jobq.jobs j"
"   SET state = CASE WHEN $3 <= clock_timestamp() THEN 'available'"
"                    ELSE 'scheduled' END::jobq.job_state,"
"       scheduled_at = $3, attempt = j.attempt - 1, snoozes = j.snoozes + 1"
THE_JOB
"   AND j.snoozes < $4"
" RETURNING j.state::text",
4, {INT8OID, INT8OID, TIMESTAMPTZOID, INT4OID}};

/*
 * For the outcomes decided by another process than the job's worker: the
 * job's row by address as in THE_JOB, locked, or no row if a user session
 * holds it (no wait: the caller comes back to it).
 */
#define THE_JOB_SKIP_LOCKED(claim_test) \
"  FROM (SELECT l.ctid AS tid FROM jobq.jobs l" \
"         WHERE l.ctid = (SELECT ctid FROM jobq.jobs WHERE id = $1)" \
"           AND l.id = $1 AND l.state = 'running' AND " claim_test \
"           FOR UPDATE SKIP LOCKED) AS r," \
"       (SELECT clock_timestamp() AS at) AS now_" \
" WHERE j.ctid = r.tid"

/*
 * A job of a failed batch; $3: whether its handler had started.  Locked by
 * a user session, it stays running under the withdrawn claim, and the
 * rescuer takes it.
 */
static const JobqStatement RELEASE = {"release job of failed batch",
"UPDATE jobq.jobs j"
"   SET state = CASE WHEN NOT $3 THEN 'available'"
"                    WHEN j.attempt >= j.max_attempts THEN 'discarded'"
"                    ELSE 'retryable' END::jobq.job_state,"
"       attempt = CASE WHEN $3 THEN j.attempt ELSE j.attempt - 1 END,"
"       scheduled_at = CASE WHEN NOT $3 OR j.attempt >= j.max_attempts"
"                           THEN j.scheduled_at"
"                           ELSE now_.at + jobq._backoff(j.attempt,"
"                                (SELECT h.backoff_max FROM jobq.handlers h"
"                                  WHERE h.kind = j.kind)) END,"
"       finalized_at = CASE WHEN $3 AND j.attempt >= j.max_attempts"
"                           THEN now_.at END,"
"       errors = CASE WHEN NOT $3 THEN j.errors"
"                     ELSE j.errors || jsonb_build_array(jsonb_build_object("
"                         'attempt', j.attempt, 'at', now_.at,"
"                         'message', $4::text, 'sqlstate', $5::text,"
"                         'batch', true)) END"
THE_JOB_SKIP_LOCKED("l.attempted_by = $2")
" RETURNING j.state::text",
5, {INT8OID, INT8OID, BOOLOID, TEXTOID, TEXTOID}};

/*
 * See rescuer.c: $2 is the claim the job was seen running under, or NULL.
 * An external job's lease is checked again here: a heartbeat may have
 * extended it since the rescuer looked.
 */
#define RESCUE_SQL(message, claim_test) \
"UPDATE jobq.jobs j" \
"   SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded'" \
"                    ELSE 'retryable' END::jobq.job_state," \
"       scheduled_at = CASE WHEN j.attempt >= j.max_attempts THEN j.scheduled_at" \
"                           ELSE now_.at + jobq._backoff(j.attempt," \
"                                (SELECT h.backoff_max FROM jobq.handlers h" \
"                                  WHERE h.kind = j.kind)) END," \
"       finalized_at = CASE WHEN j.attempt >= j.max_attempts THEN now_.at END," \
"       errors = j.errors || jsonb_build_array(jsonb_build_object(" \
"           'attempt', j.attempt, 'at', now_.at, 'message', " message ", 'lost', true))" \
THE_JOB_SKIP_LOCKED("l.attempted_by IS NOT DISTINCT FROM $2" claim_test) \
" RETURNING j.state::text"

#define WORKER_LOST \
"'worker lost: the worker running this job exited or gave it up before the job ended'"

static const JobqStatement RESCUE = {"rescue job",
RESCUE_SQL("CASE WHEN j.external"
		   " THEN 'lease expired: the external worker holding this job neither finished it nor extended its lease in time'"
		   " ELSE " WORKER_LOST " END",
		   " AND (NOT l.external OR l.lease_until < clock_timestamp())"),
2, {INT8OID, INT8OID}};

/* The same on a 0.1.0 schema (jobq_schema_is_current): no leases */
static const JobqStatement RESCUE_0_1 = {"rescue job (0.1.0)",
RESCUE_SQL(WORKER_LOST, ""),
2, {INT8OID, INT8OID}};

static SPIPlanPtr complete_plan;
static SPIPlanPtr complete_many_plan;
static SPIPlanPtr complete_leased_plan;
static SPIPlanPtr fail_plan;
static SPIPlanPtr give_up_plan;
static SPIPlanPtr cancelled_plan;
static SPIPlanPtr snooze_plan;
static SPIPlanPtr release_plan;
static SPIPlanPtr rescue_plan;

const JobqStatement *const jobq_job_state_statements[] = {
	&COMPLETE, &COMPLETE_MANY, &COMPLETE_LEASED, &FAIL, &GIVE_UP, &CANCELLED, &SNOOZE, &RELEASE, &RESCUE, NULL
};

static SPIPlanPtr
plan(SPIPlanPtr *cached, const JobqStatement *statement)
{
	if (*cached == NULL)
		*cached = jobq_prepare_statement(statement);
	return *cached;
}

/* Text of an error entry: at most ERROR_FIELD_MAX bytes, whole characters. */
static Datum
error_field(const char *text)
{
	int			len = strlen(text);

	if (len > ERROR_FIELD_MAX)
		len = pg_mbcliplen(text, len, ERROR_FIELD_MAX);
	return PointerGetDatum(cstring_to_text_with_len(text, len));
}

/* Executes a transition; returns the rows it changed. */
static uint64
transition(SPIPlanPtr p, Datum *values, const char *nulls, int expected, const char *what)
{
	if (jobq_execute_plan(p, values, nulls, false, 0) != expected)
		elog(ERROR, "could not %s", what);
	return SPI_processed;
}

/* The state of the n-th row a RETURNING transition changed. */
static JobqEnd
returned_end(uint64 n)
{
	char	   *state = SPI_getvalue(SPI_tuptable->vals[n], SPI_tuptable->tupdesc, 1);

	if (strcmp(state, "discarded") == 0)
		return JOBQ_END_DISCARDED;
	if (strcmp(state, "available") == 0)
		return JOBQ_END_AVAILABLE;
	if (strcmp(state, "scheduled") == 0)
		return JOBQ_END_SCHEDULED;
	return JOBQ_END_RETRYABLE;
}

/* completed[pos - 1] for each position (1-based) a batch statement returned */
static void
mark_returned(uint64 changed, bool *completed)
{
	for (uint64 r = 0; r < changed; r++)
	{
		bool		isnull;
		int64		pos = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		completed[pos - 1] = true;
	}
}

bool
jobq_job_complete(int64 id, uint64 claim, Datum result, bool result_isnull)
{
	Datum		values[3] = {Int64GetDatum(id), Int64GetDatum((int64) claim), result};
	char		nulls[3] = {' ', ' ', result_isnull ? 'n' : ' '};

	return transition(plan(&complete_plan, &COMPLETE),
					  values, nulls, SPI_OK_UPDATE, "complete a job") == 1;
}

/*
 * Completes the n jobs of a batch whose handlers returned (see
 * COMPLETE_MANY); sets completed[i] for each it completed.
 */
void
jobq_jobs_complete(const ItemPointerData *tids, const int64 *ids, const Datum *results,
				   const bool *result_nulls, const TimestampTz *ended_at, int n,
				   uint64 claim, bool *completed)
{
	Datum	   *tid_datums = palloc(sizeof(Datum) * n);
	Datum	   *id_datums = palloc(sizeof(Datum) * n);
	Datum	   *at_datums = palloc(sizeof(Datum) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Datum		values[6];
	uint64		changed;

	for (int i = 0; i < n; i++)
	{
		tid_datums[i] = PointerGetDatum(&tids[i]);
		id_datums[i] = Int64GetDatum(ids[i]);
		at_datums[i] = TimestampTzGetDatum(ended_at[i]);
		completed[i] = false;
	}
	values[0] = PointerGetDatum(construct_array(tid_datums, n, TIDOID, sizeof(ItemPointerData),
												false, TYPALIGN_SHORT));
	values[1] = PointerGetDatum(construct_array(id_datums, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_md_array((Datum *) results, (bool *) result_nulls,
												   1, dims, lbs, JSONBOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(at_datums, n, TIMESTAMPTZOID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = Int64GetDatum((int64) claim);
	values[5] = CStringGetTextDatum("running");
	changed = transition(plan(&complete_many_plan, &COMPLETE_MANY), values, NULL,
						 SPI_OK_UPDATE_RETURNING, "complete the jobs of a batch");
	mark_returned(changed, completed);
}

/*
 * Completes n external jobs by their lease tokens (see COMPLETE_LEASED):
 * ids and tokens int8[], results jsonb[] or NULL; sets completed[i] for
 * each it completed.
 */
void
jobq_jobs_complete_leased(Datum ids, Datum tokens, Datum results, int n, bool *completed)
{
	Datum		values[4] = {ids, tokens, results, CStringGetTextDatum("running")};
	char		nulls[4] = {' ', ' ', results == (Datum) 0 ? 'n' : ' ', ' '};
	uint64		changed;

	for (int i = 0; i < n; i++)
		completed[i] = false;
	changed = transition(plan(&complete_leased_plan, &COMPLETE_LEASED), values, nulls,
						 SPI_OK_UPDATE_RETURNING, "complete leased jobs");
	mark_returned(changed, completed);
}

JobqEnd
jobq_job_fail(int64 id, uint64 claim, int64 delay_ms, ErrorData *edata)
{
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' '};
	const char *texts[5];

	texts[0] = edata->message ? edata->message : "";
	texts[1] = edata->sqlerrcode ? unpack_sql_state(edata->sqlerrcode) : NULL;
	texts[2] = edata->detail;
	texts[3] = edata->hint;
	texts[4] = edata->context;
	values[0] = Int64GetDatum(id);
	values[1] = Int64GetDatum((int64) claim);
	values[2] = Float8GetDatum((double) delay_ms);
	for (int i = 0; i < 5; i++)
	{
		nulls[3 + i] = texts[i] ? ' ' : 'n';
		values[3 + i] = texts[i] ? error_field(texts[i]) : (Datum) 0;
	}
	if (transition(plan(&fail_plan, &FAIL), values, nulls,
				   SPI_OK_UPDATE_RETURNING, "record a failed attempt") == 0)
		return JOBQ_END_GONE;
	return returned_end(0);
}

bool
jobq_job_give_up(int64 id, uint64 claim, const char *reason)
{
	Datum		values[3] = {Int64GetDatum(id), Int64GetDatum((int64) claim),
	error_field(reason)};

	return transition(plan(&give_up_plan, &GIVE_UP), values, NULL,
					  SPI_OK_UPDATE, "give a job up") == 1;
}

bool
jobq_job_cancelled_by_handler(int64 id, uint64 claim)
{
	Datum		values[2] = {Int64GetDatum(id), Int64GetDatum((int64) claim)};

	return transition(plan(&cancelled_plan, &CANCELLED), values, NULL,
					  SPI_OK_UPDATE, "cancel a job") == 1;
}

/* JOBQ_END_GONE: moved on, or snoozed jobq.max_snoozes times already. */
JobqEnd
jobq_job_snooze(int64 id, uint64 claim, TimestampTz run_at)
{
	Datum		values[4] = {Int64GetDatum(id), Int64GetDatum((int64) claim),
		TimestampTzGetDatum(run_at), Int32GetDatum(jobq_max_snoozes)};

	if (transition(plan(&snooze_plan, &SNOOZE), values, NULL,
				   SPI_OK_UPDATE_RETURNING, "snooze a job") == 0)
		return JOBQ_END_GONE;
	return returned_end(0);
}

/*
 * Gives back the jobs of a batch whose transaction failed; counts what
 * they became into ends[] (indexed by JobqEnd).  A job not given back is
 * locked by a user session or has moved on.  One job at a time: see
 * THE_JOB_SKIP_LOCKED.
 */
void
jobq_jobs_release(int64 *ids, bool *started, int n, uint64 claim,
				  ErrorData *edata, int *ends)
{
	Datum		values[5];
	char	   *message;

	message = psprintf("the transaction of its batch failed: %s",
					   edata->message ? edata->message : "");
	values[1] = Int64GetDatum((int64) claim);
	values[3] = error_field(message);
	values[4] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	for (int i = 0; i < n; i++)
	{
		values[0] = Int64GetDatum(ids[i]);
		values[2] = BoolGetDatum(started[i]);
		if (transition(plan(&release_plan, &RELEASE), values, NULL,
					   SPI_OK_UPDATE_RETURNING, "give back a job of a failed batch") == 1)
			ends[returned_end(0)]++;
	}
}

/*
 * Gives back lost jobs, each with the claim it was seen running under
 * (claims[i] 0: none); counts what they became into ends[].
 */
void
jobq_jobs_rescue(int64 *ids, uint64 *claims, int n, int *ends)
{
	for (int i = 0; i < n; i++)
	{
		Datum		values[2] = {Int64GetDatum(ids[i]), Int64GetDatum((int64) claims[i])};
		char		nulls[2] = {' ', claims[i] == 0 ? 'n' : ' '};

		if (transition(plan(&rescue_plan, jobq_schema_is_current() ? &RESCUE : &RESCUE_0_1),
					   values, nulls,
					   SPI_OK_UPDATE_RETURNING, "rescue a job of a lost worker") == 1)
			ends[returned_end(0)]++;
	}
}

/* The leader drops its plans when it resigns (see rescuer_stop). */
void
jobq_job_state_forget_rescue_plan(void)
{
	jobq_free_plan(&rescue_plan);
}
