/*-------------------------------------------------------------------------
 *
 * backoff.c
 *	  The two waiting rules of jobq: how long a failed job waits before its
 *	  next attempt, and how long the launcher and the leader wait before
 *	  restarting something that failed.
 *
 * Retry backoff: attempt^4 seconds plus up to 10% jitter, capped by the
 * kind's backoff_max when it has one (so tests and impatient users need
 * not wait minutes).  Attempt 1 waits ~1 s, 5 ~10 min, 10 ~2.8 h, 25 ~4.5 d.
 *
 * Restart backoff: 1 s, 2 s, 4 s, ... capped at JOBQ_MAX_BACKOFF_MS.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include <math.h>

#include "common/pg_prng.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/timestamp.h"

#define MAX_RETRY_BACKOFF_MS ((int64) 30 * 24 * 3600 * 1000)

/* cap_ms < 0 means no cap other than the overall maximum. */
int64
jobq_retry_backoff_ms(int attempt, int64 cap_ms)
{
	double		base_ms = pow((double) Max(attempt, 1), 4.0) * 1000.0;
	double		ms;

	if (cap_ms >= 0 && base_ms > (double) cap_ms)
		base_ms = (double) cap_ms;
	ms = base_ms + base_ms * 0.1 * pg_prng_double(&pg_global_prng_state);
	if (cap_ms >= 0 && ms > (double) cap_ms)
		ms = (double) cap_ms;
	return (int64) Min(ms, (double) MAX_RETRY_BACKOFF_MS);
}

int
jobq_restart_backoff_ms(int failures)
{
	int64		ms = 1000;

	for (int i = 1; i < failures && ms < JOBQ_MAX_BACKOFF_MS; i++)
		ms *= 2;
	return (int) Min(ms, JOBQ_MAX_BACKOFF_MS);
}

/*
 * An interval as milliseconds, as extract(epoch) measures it (a month is
 * 1/12 of 365.25 days), so that C and SQL agree on its sign; saturates
 * instead of overflowing.
 */
int64
jobq_interval_ms(const Interval *span)
{
	double		ms = span->time / 1000.0 +
		(double) span->day * SECS_PER_DAY * 1000.0 +
		(double) span->month * (DAYS_PER_YEAR / MONTHS_PER_YEAR) * SECS_PER_DAY * 1000.0;

	if (ms >= (double) PG_INT64_MAX)
		return PG_INT64_MAX;
	if (ms <= (double) PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) ms;
}

/* jobq._backoff(attempt, backoff_max): the retry delay as an interval */
PG_FUNCTION_INFO_V1(jobq_backoff_sql);

Datum
jobq_backoff_sql(PG_FUNCTION_ARGS)
{
	int			attempt = PG_GETARG_INT32(0);
	int64		cap_ms = -1;
	Interval   *result = palloc0(sizeof(Interval));

	if (!PG_ARGISNULL(1))
		cap_ms = jobq_interval_ms(PG_GETARG_INTERVAL_P(1));
	result->time = jobq_retry_backoff_ms(attempt, cap_ms) * 1000;
	PG_RETURN_INTERVAL_P(result);
}
