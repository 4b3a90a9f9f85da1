# Retries: a failing handler is retried with backoff (each retry scheduled
# after the failure, and not run before it is due), then discarded after
# max_attempts, with every error recorded in jobs.errors, one per attempt.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('retries', workers => 2);
jobq_install($node);

# The handler fails through a nested function, so the error has a context.
# Its DETAIL carries what the handler saw when it started: the job's
# scheduled_at and attempted_at, and the clock.
$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE FUNCTION app.explode(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'boom: %', what
		USING ERRCODE = '22012',
			  DETAIL = jsonb_build_object(
				'scheduled_at', (jobq.current_job()).scheduled_at,
				'attempted_at', (jobq.current_job()).attempted_at,
				'started', clock_timestamp())::text,
			  HINT = 'it always fails';
END $$;
CREATE FUNCTION app.always_fails(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM app.explode(args->>'what');
END $$;
SELECT jobq.register('fails_fast', 'app.always_fails(jsonb)',
					 max_attempts => 4, backoff_max => '300 ms');
SELECT jobq.register('fails_default', 'app.always_fails(jsonb)', max_attempts => 2);
});

# --- short backoff (backoff_max), four attempts -------------------------
my $id = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('fails_fast', '{"what": "fast"}')});
is(wait_job($node, $id), 'discarded', 'a job that always fails is discarded');
is( $node->safe_psql(
		'postgres',
		qq{SELECT attempt, max_attempts, jsonb_array_length(errors)
		     FROM jobq.jobs WHERE id = $id}),
	'4|4|4',
	'it was attempted max_attempts (4) times, with one error per attempt') or
  diag($node->safe_psql('postgres', "SELECT errors FROM jobq.jobs WHERE id = $id"));
is($node->safe_psql('postgres', "SELECT finalized_at IS NOT NULL FROM jobq.jobs WHERE id = $id"),
	't', 'the discarded job has finalized_at');

my $errors = qq{
	SELECT e.ord, e.v FROM jobq.jobs j,
	       jsonb_array_elements(j.errors) WITH ORDINALITY AS e(v, ord)
	 WHERE j.id = $id};
is( $node->safe_psql(
		'postgres',
		qq{SELECT string_agg((v->>'attempt'), ',' ORDER BY ord) FROM ($errors) e}),
	'1,2,3,4',
	'errors are numbered by attempt, 1..4, in order');
is( $node->safe_psql(
		'postgres',
		qq{SELECT count(*) FROM ($errors) e
		    WHERE v->>'message' = 'boom: fast'
		      AND v->>'sqlstate' = '22012'
		      AND v->>'hint' = 'it always fails'
		      AND (v->>'detail')::jsonb ? 'started'
		      AND v->>'context' LIKE '%app.explode(text)%'
		      AND v->>'context' LIKE '%app.always_fails(jsonb)%'
		      AND (v->>'at')::timestamptz IS NOT NULL}),
	'4',
	'each error has message, sqlstate, detail, hint, context and time') or
  diag($node->safe_psql('postgres', "SELECT jsonb_pretty(errors) FROM jobq.jobs WHERE id = $id"));

# Attempt k > 1 saw the scheduled_at that the failure of attempt k - 1 set:
# it must lie after that failure, by at most backoff_max (300 ms), and the
# attempt must not have started before it.
my $timing = qq{
	SELECT cur.ord AS attempt,
	       (cur.v->>'detail')::jsonb->>'scheduled_at' AS scheduled_at,
	       (cur.v->>'detail')::jsonb->>'attempted_at' AS attempted_at,
	       (cur.v->>'detail')::jsonb->>'started' AS started,
	       prev.v->>'at' AS prev_failed_at
	  FROM ($errors) cur JOIN ($errors) prev ON prev.ord = cur.ord - 1};
my $bad = $node->safe_psql(
	'postgres', qq{
	SELECT string_agg(format('attempt %s: failed %s, retry scheduled %s, attempted %s, started %s',
	                         attempt, prev_failed_at, scheduled_at, attempted_at, started), E'\n')
	  FROM ($timing) t
	 WHERE NOT (scheduled_at::timestamptz > prev_failed_at::timestamptz
	        AND scheduled_at::timestamptz - prev_failed_at::timestamptz <= interval '350 ms'
	        AND attempted_at::timestamptz >= scheduled_at::timestamptz
	        AND started::timestamptz >= scheduled_at::timestamptz)});
is($bad, '',
	'each retry was scheduled after the previous failure, within backoff_max, and did not run early');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM ($timing) t}),
	'3', 'three retries were checked');

ok($node->log_contains(qr/jobq job $id of kind "fails_fast" discarded after 4 attempts: boom: fast/),
	'the discard is logged');

# --- default backoff: attempt^4 seconds plus up to 10% jitter ------------
my $id2 = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('fails_default', '{"what": "slow"}')});
is(wait_job($node, $id2), 'discarded', 'a job with max_attempts 2 is discarded');
my $gap = $node->safe_psql(
	'postgres', qq{
	SELECT extract(epoch FROM ((errors->1->>'detail')::jsonb->>'scheduled_at')::timestamptz
	                          - (errors->0->>'at')::timestamptz)
	  FROM jobq.jobs WHERE id = $id2});
note("default backoff after attempt 1: $gap s");
ok($gap >= 0.99 && $gap <= 1.11,
	"without backoff_max the first retry waits 1 s (1^4) plus at most 10% jitter (got $gap s)");
is( $node->safe_psql(
		'postgres',
		qq{SELECT string_agg(e->>'attempt', ',') FROM jobq.jobs, jsonb_array_elements(errors) e
		    WHERE id = $id2}),
	'1,2',
	'both attempts are recorded');

$node->stop;
done_testing();
