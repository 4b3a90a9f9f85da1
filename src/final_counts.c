/*-------------------------------------------------------------------------
 *
 * final_counts.c
 *	  How many final jobs (completed, cancelled, discarded) jobq.jobs keeps,
 *	  per queue, kind, owner, lessee and state: jobq.final_counts, so that
 *	  jobq.queue_stats reads the live jobs and these counts instead of every
 *	  retained job.
 *
 * A statement trigger on jobq.jobs (jobq._count_final_jobs, AFTER INSERT,
 * UPDATE and DELETE, with transition tables) appends to jobq.final_counts
 * one row per key whose count the statement changed, holding the change
 * and when it was made.
 * Whatever changes the jobs (a worker's batch, the cleaner, the SQL API, a
 * superuser's UPDATE, a restore's COPY) changes the counts in the same
 * transaction, so they are exact in every snapshot.  Rows are only
 * appended, never updated, so concurrent statements never wait on each
 * other's counts.  The cleaner folds the rows older than a minute into one
 * row per key (cleaner.c); the newer ones tell jobq.queue_stats how many
 * jobs ended in the last minute.  A TRUNCATE of jobq.jobs empties the
 * counts.
 *
 * The rows are written with heap_insert: jobq.final_counts has no index,
 * trigger or constraint beyond NOT NULL, and writing it needs no privilege
 * of whoever changed the jobs.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

/* Columns of jobq.final_counts, as the 0.2.0 script creates it. */
enum
{
	COUNT_QUEUE,
	COUNT_KIND,
	COUNT_OWNER,
	COUNT_LEASED_BY,
	COUNT_STATE,
	COUNT_JOBS,
	COUNT_AT,
	COUNT_NATTS
};

/* The columns of jobq.jobs a count is keyed by. */
typedef struct JobColumns
{
	AttrNumber	queue;
	AttrNumber	kind;
	AttrNumber	owner;
	AttrNumber	leased_by;
	AttrNumber	state;
	Oid			final_states[3];	/* enum values: completed, cancelled,
									 * discarded */
} JobColumns;

/* One key and how the statement changed its count. */
typedef struct CountChange
{
	text	   *queue;
	text	   *kind;
	Oid			owner;
	Oid			leased_by;		/* InvalidOid: null */
	Oid			state;
	int64		jobs;
} CountChange;

typedef struct CountChanges
{
	CountChange *items;
	int			n;
	int			size;
} CountChanges;

static AttrNumber
job_column(TupleDesc desc, const char *name)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0)
		elog(ERROR, "jobq.jobs has no column \"%s\"", name);
	return (AttrNumber) attno;
}

static Oid
enum_value(Oid type, const char *label)
{
	Oid			value = GetSysCacheOid2(ENUMTYPOIDNAME, Anum_pg_enum_oid,
										ObjectIdGetDatum(type),
										CStringGetDatum(label));

	if (!OidIsValid(value))
		elog(ERROR, "job_state has no value \"%s\"", label);
	return value;
}

static void
job_columns(TupleDesc desc, JobColumns *cols)
{
	Oid			state_type;

	cols->queue = job_column(desc, "queue");
	cols->kind = job_column(desc, "kind");
	cols->owner = job_column(desc, "owner");
	cols->leased_by = job_column(desc, "leased_by");
	cols->state = job_column(desc, "state");
	state_type = TupleDescAttr(desc, cols->state - 1)->atttypid;
	cols->final_states[0] = enum_value(state_type, "completed");
	cols->final_states[1] = enum_value(state_type, "cancelled");
	cols->final_states[2] = enum_value(state_type, "discarded");
}

static bool
is_final(const JobColumns *cols, Oid state)
{
	return state == cols->final_states[0] || state == cols->final_states[1] ||
		state == cols->final_states[2];
}

static bool
same_text(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

static int
compare_text(text *a, text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

static int
compare_changes(const void *x, const void *y)
{
	const CountChange *a = x;
	const CountChange *b = y;
	int			c;

	if ((c = compare_text(a->queue, b->queue)) != 0)
		return c;
	if ((c = compare_text(a->kind, b->kind)) != 0)
		return c;
	if (a->owner != b->owner)
		return a->owner < b->owner ? -1 : 1;
	if (a->leased_by != b->leased_by)
		return a->leased_by < b->leased_by ? -1 : 1;
	if (a->state != b->state)
		return a->state < b->state ? -1 : 1;
	return 0;
}

static bool
same_key(const CountChange *a, const CountChange *b)
{
	return a->owner == b->owner && a->leased_by == b->leased_by &&
		a->state == b->state && same_text(a->queue, b->queue) &&
		same_text(a->kind, b->kind);
}

/*
 * Adds jobs (+1 or -1) for each final job of a transition table.  Rows
 * come in runs of one key (a batch's jobs), so a row of the key of the
 * change before it adds to that change.
 */
static void
count_table(Tuplestorestate *table, TupleDesc desc, const JobColumns *cols,
			int64 jobs, CountChanges *changes)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			reader = tuplestore_alloc_read_pointer(table, EXEC_FLAG_REWIND);

	tuplestore_select_read_pointer(table, reader);
	tuplestore_rescan(table);
	while (tuplestore_gettupleslot(table, true, false, slot))
	{
		bool		isnull;
		Oid			state = DatumGetObjectId(slot_getattr(slot, cols->state, &isnull));
		Datum		leased_by;
		CountChange c;

		if (isnull || !is_final(cols, state))
			continue;
		c.state = state;
		c.queue = (text *) DatumGetPointer(slot_getattr(slot, cols->queue, &isnull));
		c.kind = (text *) DatumGetPointer(slot_getattr(slot, cols->kind, &isnull));
		c.owner = DatumGetObjectId(slot_getattr(slot, cols->owner, &isnull));
		leased_by = slot_getattr(slot, cols->leased_by, &isnull);
		c.leased_by = isnull ? InvalidOid : DatumGetObjectId(leased_by);
		c.jobs = jobs;

		if (changes->n > 0 && same_key(&changes->items[changes->n - 1], &c))
		{
			changes->items[changes->n - 1].jobs += jobs;
			continue;
		}
		/* the slot's memory goes with its next row */
		c.queue = pg_detoast_datum_copy(c.queue);
		c.kind = pg_detoast_datum_copy(c.kind);
		if (changes->n == changes->size)
		{
			changes->size = Max(8, changes->size * 2);
			changes->items = changes->items == NULL
				? palloc(changes->size * sizeof(CountChange))
				: repalloc(changes->items, changes->size * sizeof(CountChange));
		}
		changes->items[changes->n++] = c;
	}
	tuplestore_select_read_pointer(table, 0);
	ExecDropSingleTupleTableSlot(slot);
}

/* Appends a row to jobq.final_counts for each key whose count changed. */
static void
append_changes(CountChanges *changes)
{
	Oid			relid = get_relname_relid("final_counts", get_namespace_oid("jobq", false));
	Relation	counts;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "table jobq.final_counts does not exist");
	counts = table_open(relid, RowExclusiveLock);
	/* heap_insert maintains no index */
	if (RelationGetDescr(counts)->natts != COUNT_NATTS || counts->rd_rel->relhasindex)
		elog(ERROR, "jobq.final_counts is not as jobq created it");

	qsort(changes->items, changes->n, sizeof(CountChange), compare_changes);
	for (i = 0; i < changes->n; i++)
	{
		CountChange *c = &changes->items[i];
		Datum		values[COUNT_NATTS];
		bool		nulls[COUNT_NATTS] = {0};

		/* the sum over a key's changes, written once */
		while (i + 1 < changes->n && compare_changes(c, &changes->items[i + 1]) == 0)
			c->jobs += changes->items[++i].jobs;
		if (c->jobs == 0)
			continue;
		values[COUNT_QUEUE] = PointerGetDatum(c->queue);
		values[COUNT_KIND] = PointerGetDatum(c->kind);
		values[COUNT_OWNER] = ObjectIdGetDatum(c->owner);
		values[COUNT_LEASED_BY] = ObjectIdGetDatum(c->leased_by);
		nulls[COUNT_LEASED_BY] = !OidIsValid(c->leased_by);
		values[COUNT_STATE] = ObjectIdGetDatum(c->state);
		values[COUNT_JOBS] = Int64GetDatum(c->jobs);
		values[COUNT_AT] = TimestampTzGetDatum(now);
		simple_heap_insert(counts, heap_form_tuple(RelationGetDescr(counts), values, nulls));
	}
	table_close(counts, NoLock);
}

/*
 * TRUNCATE jobq.jobs: so are the counts (a DELETE would miss the rows of
 * transactions that committed after this one's snapshot was taken).
 */
static void
empty_counts(void)
{
	SPI_connect();
	if (jobq_execute_plan(jobq_prepare_transient("TRUNCATE jobq.final_counts", 0, NULL),
						  NULL, NULL, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not empty jobq.final_counts");
	SPI_finish();
}

PG_FUNCTION_INFO_V1(jobq_count_final_jobs);

/* The trigger: AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE, per statement. */
Datum
jobq_count_final_jobs(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	MemoryContext cxt;
	MemoryContext old;
	TupleDesc	desc;
	JobColumns	cols;
	CountChanges changes = {0};

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigger->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigger->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("jobq._count_final_jobs() must be an AFTER ... FOR EACH STATEMENT trigger")));

	if (TRIGGER_FIRED_BY_TRUNCATE(trigger->tg_event))
	{
		empty_counts();
		return PointerGetDatum(NULL);
	}

	cxt = AllocSetContextCreate(CurrentMemoryContext, "jobq final counts",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	desc = RelationGetDescr(trigger->tg_relation);
	job_columns(desc, &cols);
	if (trigger->tg_oldtable != NULL)
		count_table(trigger->tg_oldtable, desc, &cols, -1, &changes);
	if (trigger->tg_newtable != NULL)
		count_table(trigger->tg_newtable, desc, &cols, 1, &changes);
	if (changes.n > 0)
		append_changes(&changes);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return PointerGetDatum(NULL);
}
