# jobq.wait_ready(timeout) is false while components are down and true once
# they are all up:
#  - jobq.workers raised beyond what max_worker_processes can hold: false
#    (with the missing workers visible in jobq.components and the launcher's
#    warning in the log), true again once jobq.workers fits;
#  - right after terminating both candidates (no leader): false, then true
#    once the launcher has restarted them and a new leader runs.
# (An injected service failure is covered by 051_service_failure.pl.)
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# 8 slots: the logical replication launcher, jobq's launcher, 4 workers and
# 2 candidates fit exactly.
my $node = jobq_node('ready', workers => 4, conf => "max_worker_processes = 8\n");
jobq_install($node);

sub ready
{
	my ($timeout) = @_;
	return $node->safe_psql('postgres', "SELECT jobq.wait_ready('$timeout')");
}

sub workers_running
{
	return $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'jobq worker' AND datname = current_database()});
}

is(ready('1 s'), 't', 'ready with 4 workers in 8 slots');

# 10 workers are wanted (capped at max_worker_processes = 8): 8 + 2 + 1 > 8.
my $offset = set_workers($node, 10);
$node->wait_for_log(
	qr/jobq could not start worker \d for database "postgres": no free background worker slot/, $offset);
ok(1, 'the launcher warns that it has no free background worker slot');
like(slurp_file($node->logfile, $offset), qr/HINT:\s+Raise max_worker_processes \(now 8\)/,
	'the warning says to raise max_worker_processes');
my $t0 = time;
is(ready('1 s'), 'f', 'wait_ready is false while workers cannot start');
cmp_ok(time - $t0, '>=', 0.9, 'it waited for its timeout before saying so');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components WHERE database = current_database() AND component LIKE 'worker %'}),
	'8', 'jobq.components lists the 8 wanted workers');
my $down = $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %' AND pid IS NULL AND state = 'backoff'
	   AND last_error LIKE 'no free background worker slot%' AND last_error_at IS NOT NULL});
cmp_ok($down, '>=', 1,
	"$down of them are shown in backoff, without a process, with last_error 'no free background worker slot'");
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %' AND pid IS NULL}),
	$down, 'every worker without a process is shown so');

# Back to 4: the extra workers leave and everything is ready again.
set_workers($node, 4);
is(ready("$JobqTest::TIMEOUT s"), 't', 'wait_ready is true once jobq.workers fits again');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'jobq worker' AND datname = current_database()}),
	'4 workers run');

# Both candidates terminated: no leader until the launcher restarts them
# (after its 1 s backoff).  Measured inside the server, so that the window
# is not lost in client start-up.
$node->safe_psql('postgres', q{
CREATE FUNCTION public.ready_without_leader() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
	PERFORM pg_terminate_backend(pid) FROM jobq.components
	 WHERE database = current_database() AND component ~ '^(leader|candidate)';
	WHILE EXISTS (SELECT FROM jobq.components
				   WHERE database = current_database() AND component = 'leader') LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'the leader is still shown after its termination';
		END IF;
		PERFORM pg_sleep(0.005);
	END LOOP;
	RETURN jobq.wait_ready('200 ms');
END $$;
});
my $restarts_before = $node->safe_psql('postgres', q{
	SELECT sum(restarts) FROM jobq.components WHERE database = current_database() AND component ~ '^(leader|candidate)'});
is($node->safe_psql('postgres', 'SELECT public.ready_without_leader()'), 'f',
	'wait_ready is false right after both candidates were terminated');
is(ready("$JobqTest::TIMEOUT s"), 't', 'wait_ready is true once a new leader runs');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE component = 'leader') || ' ' || sum(restarts)
	  FROM jobq.components WHERE database = current_database() AND component ~ '^(leader|candidate)'}),
	'1 ' . ($restarts_before + 2), 'a leader again, and both candidates counted a restart');

$node->stop;
done_testing();
