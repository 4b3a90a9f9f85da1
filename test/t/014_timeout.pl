# A kind's timeout stops a runaway handler (sleeping or spinning); the job
# fails with a timeout error recorded, and the worker survives: the same
# process runs the next jobs, with no timeout left over for other kinds, and
# no setting a handler changed (statement_timeout, work_mem, search_path)
# leaks into the next job, in the same batch or not.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# batch_time 10 s: a batch of a few short jobs after slow ones stays one batch.
# Commit timestamps tell which transaction a failure record (written in a
# subtransaction, so with an xmin of its own) committed with.
my $node = jobq_node('timeout', workers => 1,
	conf => "jobq.batch_time = '10s'\ntrack_commit_timestamp = on\n");
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.pids (job_id bigint, pid int);
CREATE TABLE public.xacts_of_jobs (job_id bigint, xact xid8);
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
-- changes session settings, as a careless handler might
CREATE FUNCTION app.setter(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('statement_timeout', '100ms', false);
	PERFORM set_config('work_mem', '7MB', false);
	PERFORM set_config('search_path', 'app', false);
	INSERT INTO public.xacts_of_jobs VALUES ((jobq.current_job()).id, pg_current_xact_id());
	IF args ? 'fail' THEN
		RAISE EXCEPTION 'setter fails after setting';
	END IF;
END $$;
-- reports the settings it finds, after a while
CREATE FUNCTION app.reporter(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(0.3);
	INSERT INTO public.xacts_of_jobs VALUES ((jobq.current_job()).id, pg_current_xact_id());
	RETURN concat_ws(' ', current_setting('statement_timeout'), current_setting('work_mem'),
					 current_setting('search_path'));
END $$;
SELECT jobq.register('setter', 'app.setter(jsonb)', max_attempts => 1);
SELECT jobq.register('reporter', 'app.reporter(jsonb)', max_attempts => 1);
});
my $defaults = $node->safe_psql('postgres',
	q{SELECT concat_ws(' ', current_setting('statement_timeout'), current_setting('work_mem'),
	                   current_setting('search_path'))});

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

# Settings a handler changes do not leak into the next job on the worker,
# whether it ran in the same transaction (one batch) or not, succeeded or not.
# Quick jobs first, so that the worker claims more than one job at a time.
my $warm = $node->safe_psql('postgres',
	q{SELECT string_agg(jobq.enqueue('pid')::text, ',') FROM generate_series(1, 30)});
is($node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT jobq.wait(id, '$JobqTest::TIMEOUT s')::text, ',') FROM unnest(ARRAY[$warm]) id"),
	'completed', 'quick jobs completed');
for my $fail (0, 1)
{
	my $set_args = $fail ? '{"fail": true}' : '{}';
	my $setter = $node->safe_psql('postgres', "SELECT jobq.enqueue('setter', '$set_args')");
	is(wait_job($node, $setter), $fail ? 'discarded' : 'completed', "setter job ($set_args) ended");
	my $rep = $node->safe_psql('postgres', q{SELECT jobq.enqueue('reporter')});
	is(wait_job($node, $rep), 'completed', '... a later job with a 0.3 s sleep still completes');
	is($node->safe_psql('postgres', "SELECT result #>> '{}' FROM jobq.jobs WHERE id = $rep"),
		$defaults, '... and finds the default settings');
	my ($s, $r) = split /\|/, $node->safe_psql('postgres',
		"SELECT jobq.enqueue('setter', '$set_args'), jobq.enqueue('reporter')");
	is(join(',', wait_job($node, $s), wait_job($node, $r)),
		($fail ? 'discarded' : 'completed') . ',completed',
		'the same, enqueued together (one batch)');
	is($node->safe_psql('postgres', "SELECT result #>> '{}' FROM jobq.jobs WHERE id = $r"),
		$defaults, '... the second finds the default settings');
	# one transaction: a completed setter made its row in it; a failed one's
	# failure was recorded by it
	my $same = $fail
	  ? "SELECT pg_xact_commit_timestamp(j.xmin) = pg_xact_commit_timestamp(x.xact::xid)
	       FROM jobq.jobs j, xacts_of_jobs x
	      WHERE j.id = $s AND x.job_id = $r"
	  : "SELECT count(DISTINCT xact) = 1 AND count(*) = 2 FROM xacts_of_jobs WHERE job_id IN ($s, $r)";
	is($node->safe_psql('postgres', $same), 't', '... and they did run in one transaction');
}

is( $node->safe_psql(
		'postgres',
		q{SELECT pid, restarts, jobs_failed FROM jobq.components
		   WHERE database = current_database() AND component = 'worker 0'}),
	"$pid|0|5",
	'worker 0 never restarted and counted the 3 timeouts and 2 failing setters as failures');

$node->stop;
done_testing();
