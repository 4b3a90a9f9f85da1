/*-------------------------------------------------------------------------
 *
 * cron.c
 *	  Standard 5-field cron expressions: parsing and the next fire time.
 *
 *	  minute hour day-of-month month day-of-week
 *
 * Each field is a comma-separated list of '*', 'n', 'a-b', with an
 * optional '/step' after '*' or a range ('a/step' means a to the maximum).
 * Months may be named jan..dec and weekdays sun..sat; weekday 7 is Sunday.
 * @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly
 * stand for their usual expressions.  As in Vixie cron, when both
 * day-of-month and day-of-week are restricted, a day matching either one
 * fires.
 *
 * Times are UTC, unless the expression starts with CRON_TZ=<zone> (an IANA
 * name, as in cronie and Kubernetes), when its fields are local times of
 * that zone.  Across daylight saving changes, as in cronie: a schedule
 * whose hour field is '*' follows real time (it fires at both passes of a
 * repeated hour, and at no time that was skipped); any other schedule fires
 * once per local time: at the first pass of a repeated time, and right
 * after the change for a skipped one.
 *
 *-------------------------------------------------------------------------
 */
#include "jobq.h"

#include <ctype.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "pgtime.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#define CRON_SEARCH_YEARS	8	/* long enough to reach any Feb 29 */
#define ZONE_SHIFT_MARGIN	(INT64CONST(4) * USECS_PER_HOUR)	/* > any DST shift */
#define ALL_HOURS			((UINT64CONST(1) << HOURS_PER_DAY) - 1)

typedef struct CronSchedule
{
	uint64		minutes;		/* bit n: minute n (0-59) */
	uint32		hours;			/* 0-23 */
	uint32		days;			/* 1-31 */
	uint32		months;			/* 1-12 */
	uint32		weekdays;		/* 0-6, Sunday 0 */
	bool		days_restricted;
	bool		weekdays_restricted;
	pg_tz	   *zone;			/* CRON_TZ=, or NULL for UTC */
} CronSchedule;

typedef struct CronField
{
	const char *name;
	int			min;
	int			max;
	const char *const *names;	/* names for min, min+1, ... or NULL */
} CronField;

static const char *const month_names[] = {
	"jan", "feb", "mar", "apr", "may", "jun",
	"jul", "aug", "sep", "oct", "nov", "dec", NULL
};
static const char *const weekday_names[] = {
	"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL
};

static const CronField fields[5] = {
	{"minute", 0, 59, NULL},
	{"hour", 0, 23, NULL},
	{"day of month", 1, 31, NULL},
	{"month", 1, 12, month_names},
	{"day of week", 0, 7, weekday_names},
};

static void pg_attribute_noreturn()
cron_error(const char *expr, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid cron expression \"%s\"", expr),
			 errdetail("%s", detail),
			 errhint("Use five fields: minute hour day-of-month month day-of-week, as in \"*/5 * * * *\".")));
}

/*
 * Reads the digits at *p; advances *p.  A number too large for any field
 * is returned as PG_INT32_MAX, its text in *text for the error message.
 */
static int
read_number(const char **p, char **text)
{
	const char *start = *p;
	long		v = 0;

	while (isdigit((unsigned char) **p))
	{
		v = Min(v * 10 + (**p - '0'), (long) PG_INT32_MAX);
		(*p)++;
	}
	*text = pnstrdup(start, *p - start);
	return (int) v;
}

/* Reads a number or a name at *p; advances *p. */
static int
read_value(const char *expr, const CronField *f, const char **p)
{
	const char *s = *p;

	if (isdigit((unsigned char) *s))
	{
		char	   *text;
		int			v = read_number(&s, &text);

		if (v < f->min || v > f->max)
			cron_error(expr, psprintf("%s is out of range for the %s field (%d-%d).",
									  text, f->name, f->min, f->max));
		*p = s;
		return v;
	}
	if (f->names != NULL && isalpha((unsigned char) *s))
	{
		for (int i = 0; f->names[i] != NULL; i++)
		{
			if (pg_strncasecmp(s, f->names[i], 3) == 0 &&
				!isalpha((unsigned char) s[3]))
			{
				*p = s + 3;
				return f->min + i;
			}
		}
	}
	cron_error(expr, psprintf("The %s field has an unexpected \"%s\".", f->name, s));
}

/*
 * Parses one field into a bit set.  As in Vixie cron, a field that starts
 * with a star (a step over all days, too) leaves the day unrestricted for
 * the day-of-month or day-of-week rule.
 */
static uint64
parse_field(const char *expr, const CronField *f, const char *text, bool *restricted)
{
	uint64		bits = 0;
	const char *p = text;

	*restricted = text[0] != '*';
	for (;;)
	{
		int			lo;
		int			hi;
		int			step = 1;

		if (*p == '*')
		{
			lo = f->min;
			hi = f->max;
			p++;
		}
		else
		{
			lo = read_value(expr, f, &p);
			hi = lo;
			if (*p == '-')
			{
				p++;
				hi = read_value(expr, f, &p);
				if (hi < lo)
					cron_error(expr, psprintf("The range %d-%d of the %s field is backwards.",
											  lo, hi, f->name));
			}
			else if (*p == '/')
				hi = f->max;
		}
		if (*p == '/')
		{
			char	   *text;

			p++;
			if (!isdigit((unsigned char) *p))
				cron_error(expr, psprintf("The %s field has a step without a number.", f->name));
			step = read_number(&p, &text);
			if (step < 1 || step > f->max)
				cron_error(expr, psprintf("The step %s of the %s field is out of range.", text, f->name));
		}
		for (int v = lo; v <= hi; v += step)
			bits |= UINT64CONST(1) << v;
		if (*p == '\0')
			break;
		if (*p != ',')
			cron_error(expr, psprintf("The %s field has an unexpected \"%s\".", f->name, p));
		p++;
	}
	return bits;
}

static void
parse_cron(const char *expr, CronSchedule *sched)
{
	static const struct
	{
		const char *name;
		const char *expansion;
	}			macros[] = {
		{"@yearly", "0 0 1 1 *"},
		{"@annually", "0 0 1 1 *"},
		{"@monthly", "0 0 1 * *"},
		{"@weekly", "0 0 * * 0"},
		{"@daily", "0 0 * * *"},
		{"@midnight", "0 0 * * *"},
		{"@hourly", "0 * * * *"},
	};
	const char *text = expr;
	char	   *copy;
	char	   *field[5];
	int			n = 0;
	bool		restricted;
	uint64		weekdays;

	while (isspace((unsigned char) *text))
		text++;
	sched->zone = NULL;
	if (pg_strncasecmp(text, "CRON_TZ=", 8) == 0)
	{
		size_t		len = strcspn(text + 8, " \t");
		char	   *name = pnstrdup(text + 8, len);

		sched->zone = pg_tzset(name);
		if (sched->zone == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("time zone \"%s\" is not recognized", name),
					 errdetail("In cron expression \"%s\".", expr)));
		text += 8 + len;
		while (isspace((unsigned char) *text))
			text++;
	}
	if (*text == '@')
	{
		const char *found = NULL;
		size_t		len = strcspn(text, " \t");

		if (text[len + strspn(text + len, " \t")] != '\0')
			cron_error(expr, "An @ shorthand stands alone.");
		for (int i = 0; i < lengthof(macros); i++)
			if (strlen(macros[i].name) == len &&
				pg_strncasecmp(text, macros[i].name, len) == 0)
				found = macros[i].expansion;
		if (found == NULL)
			cron_error(expr, "Unknown @ shorthand; known are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly.");
		text = found;
	}

	copy = pstrdup(text);
	for (char *tok = strtok(copy, " \t"); tok != NULL; tok = strtok(NULL, " \t"))
	{
		if (n == 5)
			cron_error(expr, "It has more than five fields.");
		field[n++] = tok;
	}
	if (n != 5)
		cron_error(expr, psprintf("It has %d fields, not five.", n));

	sched->minutes = parse_field(expr, &fields[0], field[0], &restricted);
	sched->hours = (uint32) parse_field(expr, &fields[1], field[1], &restricted);
	sched->days = (uint32) parse_field(expr, &fields[2], field[2], &sched->days_restricted);
	sched->months = (uint32) parse_field(expr, &fields[3], field[3], &restricted);
	weekdays = parse_field(expr, &fields[4], field[4], &sched->weekdays_restricted);
	if (weekdays & (UINT64CONST(1) << 7))
		weekdays = (weekdays | 1) & ~(UINT64CONST(1) << 7);
	sched->weekdays = (uint32) weekdays;
	pfree(copy);
}

static bool
day_matches(const CronSchedule *sched, int mday, int wday)
{
	bool		by_day = (sched->days >> mday) & 1;
	bool		by_weekday = (sched->weekdays >> wday) & 1;

	if (sched->days_restricted && sched->weekdays_restricted)
		return by_day || by_weekday;
	return by_day && by_weekday;
}

/* First fire time strictly after 'after'; false if none within the search. */
static bool
next_fire(const CronSchedule *sched, TimestampTz after, TimestampTz *result)
{
	int64		minute_usecs = USECS_PER_MINUTE;
	/* the minute after the one 'after' falls in */
	TimestampTz t = after - ((after % minute_usecs) + minute_usecs) % minute_usecs + minute_usecs;
	int			day = (int) (t / USECS_PER_DAY) - (t % USECS_PER_DAY < 0 ? 1 : 0);
	int			minute_of_day = (int) ((t - (int64) day * USECS_PER_DAY) / minute_usecs);
	int			last_day = day + CRON_SEARCH_YEARS * 366;

	for (; day <= last_day; day++, minute_of_day = 0)
	{
		int			jd = day + POSTGRES_EPOCH_JDATE;
		int			year,
					month,
					mday;

		j2date(jd, &year, &month, &mday);
		if (!((sched->months >> month) & 1) || !day_matches(sched, mday, j2day(jd)))
			continue;
		for (int m = minute_of_day; m < MINS_PER_HOUR * HOURS_PER_DAY; m++)
		{
			if (((sched->hours >> (m / MINS_PER_HOUR)) & 1) &&
				((sched->minutes >> (m % MINS_PER_HOUR)) & 1))
			{
				*result = (int64) day * USECS_PER_DAY + (int64) m * minute_usecs;
				return true;
			}
		}
	}
	return false;
}

/* The local wall-clock time of instant t in zone, as a zone-less timestamp. */
static TimestampTz
wall_time(TimestampTz t, pg_tz *zone)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			west;			/* seconds west of UTC */

	if (timestamp2tm(t, &west, &tm, &fsec, NULL, zone) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return t - (int64) west * USECS_PER_SEC;
}

/*
 * The instants (0, 1 or 2, ascending) whose local time in zone is wall.
 * The zone's offsets a day before and a day after give the candidates
 * (ascending too): when wall was skipped, the first is before the change
 * and the second after it.
 */
static int
instants_of(TimestampTz wall, pg_tz *zone, TimestampTz instants[2],
			TimestampTz candidates[2])
{
	int			n = 0;

	candidates[0] = wall - (wall_time(wall - USECS_PER_DAY, zone) - (wall - USECS_PER_DAY));
	candidates[1] = wall - (wall_time(wall + USECS_PER_DAY, zone) - (wall + USECS_PER_DAY));
	if (candidates[0] > candidates[1])
	{
		TimestampTz swap = candidates[0];

		candidates[0] = candidates[1];
		candidates[1] = swap;
	}
	for (int i = 0; i < 2; i++)
		if (wall_time(candidates[i], zone) == wall && (n == 0 || instants[0] != candidates[i]))
			instants[n++] = candidates[i];
	return n;
}

/*
 * The first instant (to the minute) whose local time is after wall, given
 * one before it (lo) and one after it (hi).
 */
static TimestampTz
first_instant_after(TimestampTz wall, pg_tz *zone, TimestampTz lo, TimestampTz hi)
{
	while (hi - lo > USECS_PER_MINUTE)
	{
		TimestampTz mid = lo + (hi - lo) / 2;

		mid -= mid % USECS_PER_MINUTE;
		if (mid <= lo)
			mid = lo + USECS_PER_MINUTE;
		if (wall_time(mid, zone) > wall)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

/*
 * First fire time strictly after 'after' of a schedule in local time: looks
 * at the matching local times from a margin before after's local time (a
 * repeated hour may put an earlier local time later), until none can fire
 * before the best found.
 */
static bool
next_fire_in_zone(const CronSchedule *sched, TimestampTz after, TimestampTz *result)
{
	bool		real_time = (sched->hours & ALL_HOURS) == ALL_HOURS;
	TimestampTz from = wall_time(after, sched->zone) - ZONE_SHIFT_MARGIN;
	TimestampTz wall;
	bool		found = false;

	while (next_fire(sched, from, &wall))
	{
		TimestampTz instants[2];
		TimestampTz candidates[2];
		int			n;

		if (found && wall > wall_time(*result, sched->zone) + ZONE_SHIFT_MARGIN)
			break;
		n = instants_of(wall, sched->zone, instants, candidates);
		if (n == 0 && !real_time)
		{
			/* skipped by a change: right after it */
			instants[0] = first_instant_after(wall, sched->zone, candidates[0], candidates[1]);
			n = 1;
		}
		else if (n == 2 && !real_time)
			n = 1;				/* repeated: the first pass only */
		for (int i = 0; i < n; i++)
			if (instants[i] > after && (!found || instants[i] < *result))
			{
				*result = instants[i];
				found = true;
			}
		from = wall;
	}
	return found;
}

/* jobq._cron_next(cron, after) */
PG_FUNCTION_INFO_V1(jobq_cron_next_sql);

Datum
jobq_cron_next_sql(PG_FUNCTION_ARGS)
{
	char	   *expr = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(1);
	CronSchedule sched;
	TimestampTz result;

	if (TIMESTAMP_NOT_FINITE(after))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot compute a fire time after an infinite time")));
	parse_cron(expr, &sched);
	if (!(sched.zone ? next_fire_in_zone(&sched, after, &result)
		  : next_fire(&sched, after, &result)))
		cron_error(expr, "It never fires.");
	PG_RETURN_TIMESTAMPTZ(result);
}
