# A worker that exits is restarted by the launcher, with a growing backoff
# (1 s, 2 s, 4 s: no hot loop), and the job it was running is given back by
# the rescuer and completes; the other workers are not disturbed.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('restart', workers => 2);
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint, attempt int);
-- sleeps long at its first attempt only
CREATE FUNCTION app.slow_first(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	IF job.attempt = 1 THEN
		PERFORM pg_sleep(60);
	END IF;
	INSERT INTO app.effects VALUES (job.id, job.attempt);
END $$;
SELECT jobq.register('slow_first', 'app.slow_first(jsonb)', backoff_max => '200 ms');
CREATE FUNCTION app.noop(args jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT jobq.register('noop', 'app.noop(jsonb)');
});

sub worker_row
{
	my ($worker, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM jobq.components WHERE database = current_database() AND component = 'worker $worker'");
}

# Terminates a worker process; returns the new pid once the launcher has
# started a new one and it is idle, and how long that took.
sub kill_and_wait_restart
{
	my ($worker) = @_;
	my $old = component_pid($node, "worker $worker");
	my $start = time;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($old)"), 't',
		"terminated worker $worker (pid $old)");
	my $new;
	ok( wait_until(
			sub {
				$new = worker_row($worker, q{coalesce(pid::text, '') || '|' || state});
				return $new =~ /^(\d+)\|(idle|busy)$/ && $1 ne $old;
			}),
		"worker $worker runs again in a new process");
	$new =~ s/\|.*//;
	return ($new, time - $start);
}

my $other_pid = component_pid($node, 'worker 1');
is(worker_row(0, 'restarts'), '0', 'worker 0 has not restarted yet');

# --- kill a worker in the middle of a job --------------------------------------
my $job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('slow_first')});
ok( $node->poll_query_until(
		'postgres',
		"SELECT true FROM jobq.components WHERE database = current_database() AND job_id = $job"),
	'the slow job is running on a worker');
my $busy = $node->safe_psql('postgres',
	"SELECT substr(component, 8) FROM jobq.components WHERE database = current_database() AND job_id = $job");
my $idle = 1 - $busy;
$other_pid = component_pid($node, "worker $idle");
my $log_offset = -s $node->logfile;

my ($pid1, $took1) = kill_and_wait_restart($busy);
is(worker_row($busy, 'restarts'), '1', 'its restarts count is 1');
like(worker_row($busy, 'last_error'), qr/./, 'its last error is shown');
is(wait_job($node, $job), 'completed', 'the job it was running is given back and completes');
is( $node->safe_psql(
		'postgres',
		"SELECT attempt, errors->0->>'lost', errors->0->>'attempt' FROM jobq.jobs WHERE id = $job"),
	'2|true|1',
	'at its second attempt, the first recorded as lost with its worker');
is($node->safe_psql('postgres', "SELECT count(*), min(attempt) FROM app.effects WHERE job_id = $job"),
	'1|2', 'its effect was made once');

# --- kill it again, twice: the launcher backs off --------------------------------
my ($pid2, $took2) = kill_and_wait_restart($busy);
my ($pid3, $took3) = kill_and_wait_restart($busy);
note(sprintf('restart delays: %.1f s, %.1f s, %.1f s', $took1, $took2, $took3));
is(worker_row($busy, 'restarts'), '3', 'restarts counts the 3 exits');
my %distinct = map { $_ => 1 } ($pid1, $pid2, $pid3);
is(scalar(keys %distinct), 3, 'each restart is a new process');
my $restart_msg = qq{jobq worker $busy of database "postgres" exited unexpectedly; restarting it in};
ok($node->log_contains(
		qr/\Q$restart_msg\E 1000 ms.*\Q$restart_msg\E 2000 ms.*\Q$restart_msg\E 4000 ms/s,
		$log_offset),
	'the launcher logged restart delays of 1 s, 2 s and 4 s');
# Lower bounds only: a hot-looping launcher would restart at once.
ok($took2 >= 1.9 && $took3 >= 3.9,
	sprintf('the restarts really waited (%.1f s, %.1f s)', $took2, $took3));
my $exits = () = PostgreSQL::Test::Utils::slurp_file($node->logfile, $log_offset)
  =~ /exited unexpectedly; restarting/g;
is($exits, 3, 'the launcher restarted exactly once per exit');

is(component_pid($node, "worker $idle"), $other_pid, 'the other worker was never disturbed');
is(worker_row($idle, 'restarts'), '0', '... and has no restarts');

# Both workers serve jobs again.
ok(wait_ready($node), 'jobq is ready after the restarts');
my $ids = $node->safe_psql('postgres',
	q{SELECT string_agg(jobq.enqueue('noop')::text, ',') FROM generate_series(1, 20)});
is( $node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT jobq.wait(id, '$JobqTest::TIMEOUT s')::text, ',')
		   FROM unnest(ARRAY[$ids]) id"),
	'completed',
	'jobs enqueued after the restarts complete');

$node->stop;
done_testing();
