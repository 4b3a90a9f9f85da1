# Batches: many jobs run in one transaction, one subtransaction each.  A
# failing job is rolled back and recorded in that transaction while its
# neighbours complete with their effects; a job that kills its own process
# costs its neighbours one attempt but no effect is lost or doubled: the
# rescuer gives the jobs back, the neighbours complete exactly once and the
# killer is discarded after max_attempts.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

# One worker, so that which jobs share a batch is up to jobq alone; a long
# batch_time so that only batch_size (100) bounds a batch of quick jobs.
# Commit timestamps tell which transaction a failure record (written in a
# subtransaction, so with an xmin of its own) committed with.
my $node = jobq_node('batch', workers => 1, conf => q{
jobq.batch_size = 100
jobq.batch_time = '10s'
track_commit_timestamp = on
});
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint, n int, attempt int, xact xid8, xact_start timestamptz);
CREATE FUNCTION app.batch_effect(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.effects VALUES (job.id, (args->>'n')::int, job.attempt,
									pg_current_xact_id(), now());
	IF args->>'do' = 'raise' THEN
		RAISE EXCEPTION 'job % fails on purpose', job.id USING ERRCODE = 'P0001';
	ELSIF args->>'do' = 'divide' THEN
		PERFORM 1 / 0;
	ELSIF args->>'do' = 'kill' THEN
		PERFORM pg_terminate_backend(pg_backend_pid());
		PERFORM pg_sleep(10);	-- the SIGTERM ends us before this ends
	END IF;
END $$;
SELECT jobq.register('batch', 'app.batch_effect(jsonb)', backoff_max => '200 ms');
});

# Enqueues jobs in one transaction, one per element of @do ('' = plain);
# returns their ids in order.
my $next_n = 1;
sub enqueue_jobs
{
	my ($max_attempts, @do) = @_;
	my @args = map { sprintf(q{jsonb_build_object('n', %d, 'do', '%s')}, $next_n++, $_) } @do;
	my $ids = $node->safe_psql('postgres',
		"SELECT array_to_string(jobq.enqueue_many('batch', ARRAY["
		  . join(', ', @args) . "], max_attempts => $max_attempts), ' ')");
	return split / /, $ids;
}

# Waits for jobs (in one session); returns their final states, in order.
sub wait_all
{
	my (@ids) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(jobq.wait(id, '$JobqTest::TIMEOUT s')::text, ',' ORDER BY ord)
		   FROM unnest(ARRAY[" . join(',', @ids) . "]::bigint[]) WITH ORDINALITY AS t(id, ord)");
}

# Warm up: the worker sizes its claims by the jobs' mean duration, which
# starts at batch_time; quick jobs bring it down so that it claims whole
# batches.
my @warm = enqueue_jobs(25, ('') x 60);
is(wait_all(@warm), join(',', ('completed') x 60), 'warm-up jobs completed');

# --- a failing job in the middle of a batch ----------------------------------
my @do = (('') x 10, 'raise', ('') x 5, 'divide', ('') x 10);
my @ids = enqueue_jobs(1, @do);
my @failing = ($ids[10], $ids[16]);
my @neighbours = grep { $_ != $ids[10] && $_ != $ids[16] } @ids;
my $neighbour_list = join(',', @neighbours);
my $failing_list = join(',', @failing);
is(wait_all(@ids),
	join(',', map { $_ ? 'discarded' : 'completed' } @do),
	'in one enqueued batch, the two failing jobs are discarded and the 25 others complete');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*), count(DISTINCT job_id), min(attempt), max(attempt) FROM app.effects WHERE job_id IN ($neighbour_list)"),
	'25|25|1|1',
	'each neighbour made its effect once, at its first attempt');
is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id IN ($failing_list)"),
	'0', 'the effects of the failing jobs were rolled back');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(format('%s %s', errors->0->>'sqlstate', errors->0->>'attempt'), ',' ORDER BY id)
		   FROM jobq.jobs WHERE id IN ($failing_list)"),
	'P0001 1,22012 1',
	'their failures were recorded (raise_exception, division_by_zero)');
my $batch_xacts = $node->safe_psql('postgres',
	"SELECT count(DISTINCT xact), count(DISTINCT xact_start) FROM app.effects WHERE job_id IN ($neighbour_list)");
is($batch_xacts, '1|1', 'the 25 neighbours ran in one transaction');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM jobq.jobs j
		  WHERE j.id IN ($failing_list)
		    AND pg_xact_commit_timestamp(j.xmin) =
		        (SELECT DISTINCT pg_xact_commit_timestamp(xact::xid)
		           FROM app.effects WHERE job_id IN ($neighbour_list))"),
	'2',
	'the failures were recorded by that same transaction');
is( $node->safe_psql(
		'postgres',
		"SELECT count(DISTINCT attempted_at) FROM jobq.jobs WHERE id IN (" . join(',', @ids) . ')'),
	'1',
	'all 27 jobs were claimed together');

# --- a job that kills its own worker in the middle of a batch -------------------
my $pid = component_pid($node, 'worker 0');
my $log_offset = -s $node->logfile;
@do = (('') x 5, 'kill', ('') x 5);
@ids = enqueue_jobs(2, @do);
my $killer = $ids[5];
@neighbours = grep { $_ != $killer } @ids;
$neighbour_list = join(',', @neighbours);

is(wait_job($node, $killer), 'discarded', 'the job that kills its worker is discarded in the end');
is(wait_all(@neighbours), join(',', ('completed') x 10), 'all 10 of its neighbours complete');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*), count(DISTINCT job_id), count(DISTINCT n) FROM app.effects WHERE job_id IN ($neighbour_list)"),
	'10|10|10',
	"every neighbour's effect appears exactly once");
is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id = $killer"),
	'0', 'the killer left no effect');
is( $node->safe_psql(
		'postgres',
		"SELECT attempt, jsonb_array_length(errors), bool_and((e->>'lost')::boolean)
		   FROM jobq.jobs, jsonb_array_elements(errors) e WHERE id = $killer
		  GROUP BY attempt, errors"),
	'2|2|t',
	'the killer used its 2 attempts, each recorded as a lost worker');
# The first attempt charged every neighbour one attempt (they were claimed
# with the killer); the killer's retry runs alone and charges nobody.
is( $node->safe_psql(
		'postgres',
		"SELECT min(attempt), max(attempt) FROM jobq.jobs WHERE id IN ($neighbour_list)"),
	'2|2',
	'each neighbour was charged exactly one attempt by the killer')
  or diag($node->safe_psql('postgres',
	"SELECT id, attempt, errors FROM jobq.jobs WHERE id IN ($neighbour_list) ORDER BY id"));
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM jobq.jobs
		  WHERE id IN ($neighbour_list)
		    AND errors->0->>'lost' = 'true' AND errors->0->>'attempt' = '1'"),
	'10',
	'... recorded in their errors as a lost worker');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*), min(attempt) FROM app.effects WHERE job_id IN ($neighbour_list)"),
	'10|2',
	'the neighbours that ran before the killer in its batch had their effects rolled back with it');

my $new_pid = component_pid($node, 'worker 0');
like($new_pid, qr/^\d+$/, 'worker 0 runs again');
isnt($new_pid, $pid, '... in a new process');
cmp_ok($node->safe_psql('postgres',
		q{SELECT restarts FROM jobq.components WHERE database = current_database() AND component = 'worker 0'}),
	'>=', 2, 'the worker was restarted after each kill');
ok($node->log_contains(qr/jobq rescuer of database "postgres" gave back \d+ jobs of lost workers/, $log_offset),
	'the rescuer logged that it gave jobs back');

$node->stop;
done_testing();
