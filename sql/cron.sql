--
-- cron: jobq._cron_next(cron, after), the first fire time of a 5-field
-- cron expression strictly after a moment (UTC, or the local time of its
-- CRON_TZ= zone), and the validation done
-- by jobq.schedule()/jobq.unschedule().
--
-- The fire times below were checked against an independent brute-force
-- evaluation of each expression, minute by minute, with Vixie cron rules.
-- 2026-01-01 is a Thursday.  When both day of month and day of week are
-- restricted, a day matching either fires.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS jobq;
RESET client_min_messages;
SET timezone = 'UTC';
SET statement_timeout = '120 s';
\set SHOW_CONTEXT never

-- the error of an expression, as SQLSTATE: detail
CREATE FUNCTION pg_temp.cron_error(cron text, after timestamptz DEFAULT '2026-01-01 00:00+00')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	state text;
	detail text;
	message text;
BEGIN
	PERFORM jobq._cron_next(cron, after);
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
							detail = PG_EXCEPTION_DETAIL;
	RETURN state || ': ' || CASE WHEN message = format('invalid cron expression "%s"', cron)
								 THEN detail ELSE message END;
END $$;

--
-- Fire times
--
SELECT cron, after::timestamptz AS after, jobq._cron_next(cron, after::timestamptz) AS next
  FROM (VALUES
	('* * * * *', '2026-01-01 00:00:00'),
	('* * * * *', '2026-01-01 00:00:30'),
	('* * * * *', '2025-12-31 23:59:59.999999'),
	('* * * * *', '2026-12-31 23:59:00'),
	('*/5 * * * *', '2026-01-01 00:00:00'),
	('*/5 * * * *', '2026-01-01 00:04:59'),
	('*/7 * * * *', '2026-01-01 00:56:00'),
	('5/15 * * * *', '2026-01-01 00:00:00'),
	('5/15 * * * *', '2026-01-01 00:50:00'),
	('15,45 * * * *', '2026-01-01 00:15:00'),
	('0-59/30 * * * *', '2026-01-01 00:10:00'),
	('10-20/5 * * * *', '2026-01-01 00:16:00'),
	('10-20/5 * * * *', '2026-01-01 00:20:00'),
	('0 */6 * * *', '2026-01-01 00:00:00'),
	('30 2 * * *', '2026-01-01 00:00:00'),
	('30 2 * * *', '2026-01-01 02:30:00'),
	('0 9-17/2 * * 1-5', '2026-01-01 17:00:00'),
	('0 9-17/2 * * 1-5', '2026-01-02 16:00:00'),
	('59 23 31 12 *', '2026-01-01 00:00:00'),
	('0 0 1 * *', '2026-01-01 00:00:00'),
	('0 0 31 * *', '2026-01-01 00:00:00'),
	('0 0 31 * *', '2026-01-31 00:00:00'),
	('0 0 * * 0', '2026-01-01 00:00:00'),
	('0 0 * * 7', '2026-01-01 00:00:00'),
	('0 0 * * 0-7', '2026-01-01 00:00:00'),
	('0 0 * * 5-7', '2026-01-02 00:00:00'),
	('0 0 * * sun', '2026-01-01 00:00:00'),
	('0 0 * * MON', '2026-01-01 00:00:00'),
	('0 0 * * Fri', '2026-01-01 00:00:00'),
	('0 0 * * mon-wed', '2026-01-01 00:00:00'),
	('0 0 * * 1,3,5', '2026-01-02 00:00:00'),
	('0 12 1 jan *', '2026-01-01 12:00:00'),
	('0 0 1 JAN-MAR *', '2026-03-01 00:00:00'),
	('0 0 1 jul,dec *', '2026-01-01 00:00:00'),
	('0 0 1 */3 *', '2026-01-01 00:00:00'),
	('0 0 29 2 *', '2026-01-01 00:00:00'),
	('0 0 29 2 *', '2028-02-29 00:00:00'),
	('0 0 29 2 *', '2096-03-01 00:00:00'),
	('0 0 29 feb mon', '2026-01-01 00:00:00'),
	('0 0 13 * 5', '2026-01-01 00:00:00'),
	('0 0 13 * 5', '2026-02-12 00:00:00'),
	('0 0 1 * 1', '2026-01-01 00:00:00'),
	-- a field that starts with * is unrestricted for that rule (Vixie cron):
	-- these are odd days that are Mondays, and first days that are Sun/Tue/Thu/Sat
	('0 0 */2 * 1', '2026-01-01 00:00:00'),
	('0 0 1 * */2', '2026-01-01 00:00:00'),
	('0 0 * * *', '2026-01-01 00:00:00'),
	('@hourly', '2026-01-01 00:00:00'),
	('@daily', '2026-01-01 00:00:00'),
	('@midnight', '2026-01-01 00:00:00'),
	('@weekly', '2026-01-01 00:00:00'),
	('@monthly', '2026-01-01 00:00:00'),
	('@yearly', '2026-01-01 00:00:00'),
	('@annually', '2026-01-01 00:00:00'),
	('@DAILY', '2026-01-01 00:00:00'),
	('  @hourly', '2026-01-01 00:00:00'),
	(E'  0\t 0   * * *  ', '2026-01-01 00:00:00'),
	('0 0 1 1 *', '1999-12-31 23:59:00'),
	('0 0 1 1 *', '2000-01-01 00:00:00')
  ) AS v(cron, after);

-- steps, ranges, lists and names give the same times as their expansion
SELECT count(*) AS mismatches
  FROM generate_series(timestamptz '2026-01-01', '2026-03-01', '7 hours 13 minutes') AS t,
	   (VALUES ('*/15 */4 * * *', '0,15,30,45 0,4,8,12,16,20 * * *'),
			   ('0 0 * * mon-fri', '0 0 * * 1,2,3,4,5'),
			   ('0 0 * * 1-7', '0 0 * * *'),
			   ('0 0 1 jan-dec/2 *', '0 0 1 1,3,5,7,9,11 *'),
			   ('@weekly', '0 0 * * sun'),
			   ('@monthly', '0 0 1 * *'),
			   ('5/20 * * * *', '5,25,45 * * * *'),
			   ('0 0 * * 1-fri', '0 0 * * 1-5')) AS p(a, b)
 WHERE jobq._cron_next(a, t) <> jobq._cron_next(b, t);
-- fire times are strictly increasing and each is a fire time
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('*/10 9-10 * * mon,fri', '2026-01-01')
	UNION ALL
	SELECT n + 1, jobq._cron_next('*/10 9-10 * * mon,fri', t) FROM fires WHERE n < 15)
SELECT n, t FROM fires;

-- the expression is UTC, whatever the session's time zone
SET timezone = 'America/New_York';
SELECT jobq._cron_next('0 0 * * *', '2026-01-01 00:00+00') AS next_in_new_york;
SELECT jobq._cron_next('0 12 * * *', '2026-07-01 10:00-04') AS next_in_new_york;
SET timezone = 'UTC';

--
-- Local times of a zone (CRON_TZ=), across daylight saving changes
-- (checked against the zones' transitions by hand; each row shows both).
-- Europe/Berlin in 2026: 02:00 CET becomes 03:00 CEST on March 29 (01:00
-- UTC); 03:00 CEST becomes 02:00 CET on October 25 (01:00 UTC).
--
-- a fixed local time: every day at 02:30 Berlin time
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('CRON_TZ=Europe/Berlin 30 2 * * *', '2026-03-27 12:00+00')
	UNION ALL
	SELECT n + 1, jobq._cron_next('CRON_TZ=Europe/Berlin 30 2 * * *', t) FROM fires WHERE n < 4)
SELECT n, t AS utc, t AT TIME ZONE 'Europe/Berlin' AS berlin FROM fires;
-- ... skipped on March 29: it fires right after the change (03:00 CEST)
-- ... repeated on October 25: it fires once, at the first pass (CEST)
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('CRON_TZ=Europe/Berlin 30 2 * * *', '2026-10-24 12:00+00')
	UNION ALL
	SELECT n + 1, jobq._cron_next('CRON_TZ=Europe/Berlin 30 2 * * *', t) FROM fires WHERE n < 3)
SELECT n, t AS utc, t AT TIME ZONE 'Europe/Berlin' AS berlin FROM fires;
-- every half hour (hour field '*'): real time, both passes of the repeated
-- hour, none of the skipped one
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('CRON_TZ=Europe/Berlin */30 * * * *', '2026-03-28 23:50+00')
	UNION ALL
	SELECT n + 1, jobq._cron_next('CRON_TZ=Europe/Berlin */30 * * * *', t) FROM fires WHERE n < 5)
SELECT n, t AS utc, t AT TIME ZONE 'Europe/Berlin' AS berlin FROM fires;
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('CRON_TZ=Europe/Berlin */30 * * * *', '2026-10-24 23:50+00')
	UNION ALL
	SELECT n + 1, jobq._cron_next('CRON_TZ=Europe/Berlin */30 * * * *', t) FROM fires WHERE n < 6)
SELECT n, t AS utc, t AT TIME ZONE 'Europe/Berlin' AS berlin FROM fires;
-- 09:00 New York time on weekdays, before and after March 8, 2026 (EST -> EDT)
WITH RECURSIVE fires(n, t) AS (
	SELECT 1, jobq._cron_next('CRON_TZ=America/New_York 0 9 * * mon-fri', '2026-03-05 00:00+00')
	UNION ALL
	SELECT n + 1, jobq._cron_next('CRON_TZ=America/New_York 0 9 * * mon-fri', t) FROM fires WHERE n < 4)
SELECT n, t AS utc, t AT TIME ZONE 'America/New_York' AS new_york FROM fires;
-- a shorthand, a zone far from UTC, and case and blanks as elsewhere
SELECT jobq._cron_next('cron_tz=Pacific/Kiritimati   @daily', '2026-01-01 00:00+00') AS kiritimati_midnight;
SELECT jobq._cron_next('CRON_TZ=UTC 0 0 * * *', '2026-01-01 00:00+00') =
	   jobq._cron_next('0 0 * * *', '2026-01-01 00:00+00') AS utc_is_utc;
-- an unknown zone
SELECT jobq._cron_next('CRON_TZ=Mars/Olympus 0 0 * * *', '2026-01-01');

-- trailing blanks after a shorthand are blanks, as after five fields
SELECT jobq._cron_next('@hourly  ', '2026-01-01 00:00+00') AS next;

-- NULL in, NULL out; an infinite moment has no next fire time
SELECT jobq._cron_next(NULL, '2026-01-01') IS NULL AS null_cron,
	   jobq._cron_next('* * * * *', NULL) IS NULL AS null_after;
SELECT jobq._cron_next('* * * * *', 'infinity');
SELECT jobq._cron_next('* * * * *', '-infinity');

--
-- Expressions that never fire, and malformed ones
--
SELECT jobq._cron_next('0 0 30 2 *', '2026-01-01');
SELECT jobq._cron_next('61 * * * *', '2026-01-01');
SELECT cron, pg_temp.cron_error(cron) AS error
  FROM (VALUES
	('0 0 30 2 *'),
	('0 0 31 4 *'),
	('0 0 31 2,4,6,9,11 *'),
	('0 0 30,31 feb *'),
	(''),
	('   '),
	('* * * *'),
	('* * * * * *'),
	('0 0 1 1 * 2027'),
	('60 * * * *'),
	('* 24 * * *'),
	('* * 0 * *'),
	('* * 32 * *'),
	('* * * 0 *'),
	('* * * 13 *'),
	('* * * * 8'),
	('-1 * * * *'),
	('99999999999 * * * *'),
	('5-1 * * * *'),
	('* * * dec-jan *'),
	('* * * * sat-sun'),
	('1-2-3 * * * *'),
	('*/0 * * * *'),
	('*/60 * * * *'),
	('* */24 * * *'),
	('*/99999999999 * * * *'),
	('*/ * * * *'),
	('*/x * * * *'),
	('1/ * * * *'),
	('1,,2 * * * *'),
	('1, * * * *'),
	(',1 * * * *'),
	('a * * * *'),
	('** * * * *'),
	('*5 * * * *'),
	('5* * * * *'),
	('? * * * *'),
	('0 0 L * *'),
	('0 0 * * 5L'),
	('0 0 * * 1#2'),
	('0 0 * jan- *'),
	('0 0 * janu *'),
	('0 0 * * mo'),
	('0 0 * * monday'),
	('0 0 * mon *'),
	('0 0 jan * *'),
	('@reboot'),
	('@every 5m'),
	('@daily *'),
	('@'),
	('0 0 * * *;'),
	('0 0 * * * # comment')
  ) AS v(cron);

--
-- jobq.schedule() and jobq.unschedule()
--
CREATE SCHEMA cron_test;
CREATE FUNCTION cron_test.noop(args jsonb) RETURNS void LANGUAGE sql AS '';
SELECT jobq.register('cron_noop', 'cron_test.noop(jsonb)');
SELECT jobq.create_queue('cron_q');
-- returns the first fire time after now; the row shows what was asked
BEGIN;
SELECT jobq.schedule('nightly', '30 3 * * *', 'cron_noop', '{"a": 1}') =
	   jobq._cron_next('30 3 * * *', now()) AS first_fire_ok;
SELECT name, cron, kind, args, queue, priority, max_attempts, owner = current_user::regrole AS mine,
	   next_fire_at = jobq._cron_next(cron, now()) AS next_ok, last_fire_at, last_job_id, last_error
  FROM jobq.schedules;
COMMIT;
-- scheduling under the same name replaces it
BEGIN;
SELECT jobq.schedule('nightly', '@yearly', 'cron_noop', queue => 'cron_q', priority => 3,
					 max_attempts => 2) = jobq._cron_next('@yearly', now()) AS first_fire_ok;
COMMIT;
SELECT name, cron, kind, args, queue, priority, max_attempts FROM jobq.schedules;
-- in a time zone: kept as a CRON_TZ= prefix
BEGIN;
SELECT jobq.schedule('berlin_morning', '0 7 * * *', 'cron_noop', timezone => 'Europe/Berlin') =
	   jobq._cron_next('CRON_TZ=Europe/Berlin 0 7 * * *', now()) AS first_fire_ok;
SELECT cron FROM jobq.schedules WHERE name = 'berlin_morning';
SELECT jobq.unschedule('berlin_morning');
COMMIT;
-- a zone given twice, an unknown one, one that is not a name
SELECT jobq.schedule('nightly', 'CRON_TZ=Europe/Berlin 0 7 * * *', 'cron_noop', timezone => 'Europe/Paris');
SELECT jobq.schedule('nightly', '0 7 * * *', 'cron_noop', timezone => 'Mars/Olympus');
SELECT jobq.schedule('nightly', '0 7 * * *', 'cron_noop', timezone => 'UTC 1 * * * *');
-- a bad expression, kind or option changes nothing
SELECT jobq.schedule('nightly', '0 0 30 2 *', 'cron_noop');
SELECT jobq.schedule('nightly', '*/0 * * * *', 'cron_noop');
SELECT jobq.schedule('nightly', '', 'cron_noop');
SELECT jobq.schedule('nightly', '@yearly', 'nope');
SELECT jobq.schedule('nightly', '@yearly', 'cron_noop', 'null');
SELECT jobq.schedule('nightly', '@yearly', 'cron_noop', queue => 'nope');
SELECT jobq.schedule('nightly', '@yearly', 'cron_noop', priority => 40000);
SELECT jobq.schedule('nightly', '@yearly', 'cron_noop', max_attempts => 1001);
SELECT jobq.schedule('other', '0 0 30 2 *', 'cron_noop');
SELECT name, cron, kind, args, queue, priority, max_attempts FROM jobq.schedules;
-- NULL args are an empty object
SELECT jobq.schedule('other', '0 0 1 1 *', 'cron_noop', NULL) IS NOT NULL AS scheduled;
SELECT name, args FROM jobq.schedules ORDER BY name;
-- a kind used by a schedule stays registered
SELECT jobq.unregister('cron_noop');
SELECT jobq.unschedule('nightly');
SELECT jobq.unschedule('nightly');
SELECT jobq.unschedule('other');
SELECT jobq.unschedule('');
SELECT count(*) FROM jobq.schedules;
SELECT jobq.unregister('cron_noop');
SELECT jobq.drop_queue('cron_q');
SET client_min_messages = warning;
DROP SCHEMA cron_test CASCADE;
RESET client_min_messages;
