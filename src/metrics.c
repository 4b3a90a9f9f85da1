/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  Counters of the attempts that ended on a worker, per queue and kind,
 *	  with a histogram of their durations: jobq.job_counts, summed up by
 *	  the view jobq.job_metrics (and exported as Prometheus counters).
 *
 * A worker adds up what its batch did (jobq_metrics_count) and writes it
 * in the batch's own transaction, just before the commit
 * (jobq_metrics_flush): the counts are exactly what committed, and a batch
 * that fails counts nothing.  Each worker writes only rows keyed by its own
 * number, so workers never wait on each other's counter rows.  A schema
 * older than the table (0.1.0, before ALTER EXTENSION jobq UPDATE) is
 * simply not counted.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

/* Upper bounds of the duration buckets, in seconds (jobq._duration_bounds). */
static const double duration_bounds[] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300
};

#define NBOUNDS lengthof(duration_bounds)

/* One (queue, kind) of the current batch; buckets[NBOUNDS] is "longer". */
typedef struct BatchCount
{
	char	   *queue;
	char	   *kind;
	int64		completed;
	int64		failed;
	int64		buckets[NBOUNDS + 1];
	double		seconds;
} BatchCount;

static MemoryContext counts_cxt = NULL;
static List *batch_counts = NIL;	/* of BatchCount, in counts_cxt */
static SPIPlanPtr add_plan = NULL;

static const JobqStatement ADD_COUNTS = {"add a batch's counts",
"INSERT INTO jobq.job_counts AS c (queue, kind, worker, completed, failed,"
"                                  duration_buckets, duration_sum)"
" VALUES ($1, $2, $3, $4, $5, $6, $7)"
" ON CONFLICT (queue, kind, worker) DO UPDATE"
"   SET completed = c.completed + excluded.completed,"
"       failed = c.failed + excluded.failed,"
"       duration_buckets = ARRAY(SELECT a + b"
"                                  FROM unnest(c.duration_buckets, excluded.duration_buckets)"
"                                       WITH ORDINALITY AS u (a, b, i)"
"                                 ORDER BY i),"
"       duration_sum = c.duration_sum + excluded.duration_sum",
	7, {TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID, INT8ARRAYOID, FLOAT8OID}};

const JobqStatement *const jobq_metrics_statements[] = {&ADD_COUNTS, NULL};

/* Counts one attempt of the current batch that ended after seconds. */
void
jobq_metrics_count(const char *queue, const char *kind, bool failed, double seconds)
{
	BatchCount *count = NULL;
	ListCell   *lc;
	MemoryContext old;
	int			bucket = 0;

	if (counts_cxt == NULL)
		counts_cxt = AllocSetContextCreate(TopMemoryContext, "jobq metrics",
										   ALLOCSET_SMALL_SIZES);
	foreach(lc, batch_counts)
	{
		BatchCount *c = lfirst(lc);

		if (strcmp(c->queue, queue) == 0 && strcmp(c->kind, kind) == 0)
		{
			count = c;
			break;
		}
	}
	old = MemoryContextSwitchTo(counts_cxt);
	if (count == NULL)
	{
		count = palloc0(sizeof(BatchCount));
		count->queue = pstrdup(queue);
		count->kind = pstrdup(kind);
		batch_counts = lappend(batch_counts, count);
	}
	MemoryContextSwitchTo(old);

	if (failed)
		count->failed++;
	else
		count->completed++;
	while (bucket < NBOUNDS && seconds > duration_bounds[bucket])
		bucket++;
	count->buckets[bucket]++;
	count->seconds += seconds;
}

/* Drops the current batch's counts (its transaction did not commit). */
void
jobq_metrics_forget(void)
{
	batch_counts = NIL;
	if (counts_cxt != NULL)
		MemoryContextReset(counts_cxt);
}

/* Adds the current batch's counts to worker's rows; call before commit. */
void
jobq_metrics_flush(int worker)
{
	Oid			namespace;
	ListCell   *lc;

	if (batch_counts == NIL)
		return;
	namespace = get_namespace_oid("jobq", true);
	if (!OidIsValid(namespace) || !OidIsValid(get_relname_relid("job_counts", namespace)))
	{
		jobq_metrics_forget();
		return;
	}
	if (add_plan == NULL)
		add_plan = jobq_prepare_statement(&ADD_COUNTS);

	foreach(lc, batch_counts)
	{
		BatchCount *c = lfirst(lc);
		Datum		buckets[NBOUNDS + 1];
		Datum		values[7];

		for (int i = 0; i <= NBOUNDS; i++)
			buckets[i] = Int64GetDatum(c->buckets[i]);
		values[0] = CStringGetTextDatum(c->queue);
		values[1] = CStringGetTextDatum(c->kind);
		values[2] = Int32GetDatum(worker);
		values[3] = Int64GetDatum(c->completed);
		values[4] = Int64GetDatum(c->failed);
		values[5] = PointerGetDatum(construct_array(buckets, NBOUNDS + 1, INT8OID, sizeof(int64),
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[6] = Float8GetDatum(c->seconds);
		if (jobq_execute_plan(add_plan, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not add to jobq.job_counts");
	}
	jobq_metrics_forget();
}

PG_FUNCTION_INFO_V1(jobq_duration_bounds);

/* jobq._duration_bounds(): the buckets' upper bounds, in seconds */
Datum
jobq_duration_bounds(PG_FUNCTION_ARGS)
{
	Datum		bounds[NBOUNDS];

	for (int i = 0; i < NBOUNDS; i++)
		bounds[i] = Float8GetDatum(duration_bounds[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(bounds, NBOUNDS, FLOAT8OID, sizeof(float8),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}
