# A kind's timeout stops a runaway handler (sleeping or spinning); the job
# fails with a timeout error recorded, and the worker survives: the same
# process runs the next jobs, with no timeout left over for other kinds.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('timeout', workers => 1);
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.pids (job_id bigint, pid int);
CREATE FUNCTION app.sleeper(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(60);
END $$;
CREATE FUNCTION app.spinner(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	i bigint := 0;
BEGIN
	LOOP
		i := i + 1;
	END LOOP;
END $$;
CREATE FUNCTION app.pid(args jsonb) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(coalesce((args->>'sleep')::float8, 0));
	INSERT INTO app.pids VALUES ((jobq.current_job()).id, pg_backend_pid());
	RETURN pg_backend_pid();
END $$;
SELECT jobq.register('sleeper', 'app.sleeper(jsonb)', timeout => '1 second', max_attempts => 1);
SELECT jobq.register('spinner', 'app.spinner(jsonb)', timeout => '1 second', max_attempts => 1);
SELECT jobq.register('pid', 'app.pid(jsonb)');
});

my $pid = component_pid($node, 'worker 0');
like($pid, qr/^\d+$/, 'the worker runs');

my $pid_job = sub {
	my ($args) = @_;
	my $id = $node->safe_psql('postgres', "SELECT jobq.enqueue('pid', '$args')");
	is(wait_job($node, $id), 'completed', "pid job $id ($args) completed");
	return $node->safe_psql('postgres', "SELECT pid FROM app.pids WHERE job_id = $id");
};

is($pid_job->('{}'), $pid, 'worker 0 runs the jobs');

for my $kind ('sleeper', 'spinner')
{
	my $id = $node->safe_psql('postgres', "SELECT jobq.enqueue('$kind')");
	my $start = time;
	is($node->safe_psql('postgres', "SELECT jobq.wait($id, '40 s')"),
		'discarded', "the runaway $kind job is stopped and discarded");
	my $took = time - $start;
	ok($took < 40, sprintf('... well before its handler would end (%.1f s)', $took));
	is( $node->safe_psql(
			'postgres',
			"SELECT errors->0->>'sqlstate', jsonb_array_length(errors) FROM jobq.jobs WHERE id = $id"),
		'57014|1',
		"... with the timeout recorded as query_canceled");
	like(
		$node->safe_psql('postgres', "SELECT errors->0->>'message' FROM jobq.jobs WHERE id = $id"),
		qr/timeout/,
		'... and a message that says it was a timeout');
	is(component_pid($node, 'worker 0'), $pid, "the worker survived the $kind timeout");
	is($pid_job->('{}'), $pid, '... and the same process runs the next job');
}

# The 1 s timeout belongs to those kinds only: a job of another kind may run
# longer on the same worker.
is($pid_job->('{"sleep": 1.5}'), $pid,
	'a 1.5 s job of a kind with the default timeout completes on the same worker');

# A timeout in the middle of a batch does not touch its neighbours.
my $ids = $node->safe_psql('postgres', q{
	SELECT string_agg(id::text, ',') FROM (
		SELECT jobq.enqueue('pid') AS id
		UNION ALL SELECT jobq.enqueue('sleeper')
		UNION ALL SELECT jobq.enqueue('pid')) s});
my @ids = split /,/, $ids;
is(join(',', map { wait_job($node, $_) } @ids), 'completed,discarded,completed',
	'jobs enqueued with a runaway one complete; the runaway one is discarded');
is($node->safe_psql('postgres', "SELECT count(*) FROM app.pids WHERE job_id IN ($ids)"),
	'2', 'the neighbours made their effects');

is( $node->safe_psql(
		'postgres',
		q{SELECT pid, restarts, jobs_failed FROM jobq.components
		   WHERE database = current_database() AND component = 'worker 0'}),
	"$pid|0|3",
	'worker 0 never restarted and counted the 3 timeouts as failures');

$node->stop;
done_testing();
