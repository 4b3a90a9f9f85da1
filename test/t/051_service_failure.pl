# A leader service that cannot start is visible in jobq.components: state
# backoff with the error in last_error while the leader retries, then
# failed; jobq.wait_ready() is false all that time.  Once the fault is
# cleared, a leader runs every service again and wait_ready() is true.
#
# The fault is jobq.debug_fail_service = 'cleaner'.  A leader resigns right
# after its cleaner failed for good, and the other candidate would at once
# replace the "failed" row with its own start attempts; to look at "failed"
# the test stops the other candidate (SIGSTOP) until the fault is cleared,
# and the resigned leader stays out for a long jobq.leader_cooldown.  (A
# session queued for the leader's advisory lock would not do: each election
# uses a new key.)
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('svcfail', conf => "jobq.leader_cooldown = '1h'\n");
jobq_install($node);

my $SERVICES = q{component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')};

sub services
{
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(component || '=' || state, ' ' ORDER BY component)
		  FROM jobq.components WHERE database = current_database() AND $SERVICES});
}

sub ready
{
	my ($timeout) = @_;
	return $node->safe_psql('postgres', "SELECT jobq.wait_ready('$timeout')");
}

is(services(), 'cleaner=running periodic=running rescuer=running scheduler=running',
	'all four services run');
is(ready('1 s'), 't', 'wait_ready is true before the fault');
my $leader = component_pid($node, 'leader');
like($leader, qr/^\d+$/, "leader pid $leader");

# Inject the fault; the postmaster has it before the new election.
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{
ALTER SYSTEM SET jobq.debug_fail_service = 'cleaner';
SELECT pg_reload_conf();
});
$node->wait_for_log(qr/parameter "jobq.debug_fail_service" changed to "cleaner"/, $offset);

# The running leader is not affected (the fault is in starting services)
# until a new leader starts them: terminate the leader.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($leader)");

ok( $node->poll_query_until(
		'postgres', q{
	SELECT state = 'backoff'
	   AND last_error LIKE '%cleaner could not start: failure injected by jobq.debug_fail_service%'
	   AND last_error_at IS NOT NULL
	  FROM jobq.components WHERE database = current_database() AND component = 'cleaner'}),
	'the cleaner is shown in backoff, with the injected error as last_error');
my $new_leader = component_pid($node, 'leader');
like($new_leader, qr/^\d+$/, "a new leader ($new_leader) is retrying");
isnt($new_leader, $leader, 'it is not the terminated one');
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(*) = 3 FROM jobq.components
	 WHERE database = current_database() AND state = 'running' AND pid = $new_leader
	   AND component IN ('scheduler', 'rescuer', 'periodic')}),
	'while the cleaner backs off, the other services run under the new leader: ' . services());
is(ready('1 s'), 'f', 'wait_ready is false while the cleaner backs off');
is( $node->safe_psql('postgres', q{
	SELECT last_error FROM jobq.components WHERE database = current_database() AND component = 'cleaner'}),
	'jobq cleaner could not start: failure injected by jobq.debug_fail_service',
	'last_error is the message of the start failure');

# Freeze the other candidate, so that nobody takes over when the leader
# resigns.
my $leader_now = component_pid($node, 'leader');
my $other = $node->safe_psql('postgres', qq{
	SELECT pid FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'candidate%'
	   AND pid IS NOT NULL AND pid <> $leader_now});
like($other, qr/^\d+$/, "the other candidate runs ($other)");
ok(kill('STOP', $other), 'the other candidate is stopped');

ok( $node->poll_query_until(
		'postgres', q{
	SELECT state = 'failed'
	  FROM jobq.components WHERE database = current_database() AND component = 'cleaner'}),
	'after its last attempt the cleaner is shown failed');
ok( $node->poll_query_until(
		'postgres', q{
	SELECT NOT EXISTS (SELECT FROM pg_locks
					    WHERE locktype = 'advisory' AND classid = 1785684593 AND granted)}),
	'the failing leader released the leader lock');
$node->wait_for_log(qr/jobq leader of database "postgres" resigned: its services could not start/, $offset);

my $row = $node->safe_psql('postgres', q{
	SELECT state, pid IS NULL, last_error, restarts
	  FROM jobq.components WHERE database = current_database() AND component = 'cleaner'});
my ($state, $nopid, $error, $restarts) = split /\|/, $row;
is($state, 'failed', 'cleaner: state failed');
is($nopid, 't', 'cleaner: no pid (nothing runs it)');
like($error, qr/failure injected by jobq.debug_fail_service/, 'cleaner: last_error keeps the cause');
cmp_ok($restarts, '>=', 1, "cleaner: its retries are counted as restarts ($restarts)");
is(services(), 'cleaner=failed periodic=stopped rescuer=stopped scheduler=stopped',
	'the other services are stopped, not running');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components WHERE database = current_database() AND component = 'leader'}),
	'0', 'no component is shown as leader');
is(ready('1 s'), 'f', 'wait_ready is false while the cleaner has failed');

# The log tells the same story, one line per event.
my $log = slurp_file($node->logfile, $offset);
for my $n (1 .. 4)
{
	my $delay = 1000 * 2**($n - 1);
	like($log, qr/could not start its cleaner \(attempt $n of 5\); retrying in $delay ms/,
		"log: attempt $n failed, retrying in $delay ms");
}
like($log, qr/could not start its cleaner after 5 attempts/, 'log: gave up after 5 attempts');

# Clear the fault and let the candidates have the lock again.
my $offset2 = -s $node->logfile;
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET jobq.debug_fail_service;
SELECT pg_reload_conf();
});
$node->wait_for_log(qr/parameter "jobq.debug_fail_service" removed from configuration file, reset to default/,
	$offset2);
ok(kill('CONT', $other), 'the other candidate goes on');

is(ready("$JobqTest::TIMEOUT s"), 't', 'wait_ready is true once the fault is cleared');
my $final_leader = component_pid($node, 'leader');
like($final_leader, qr/^\d+$/, "a leader runs ($final_leader)");
is( $node->safe_psql('postgres', qq{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND $SERVICES AND state = 'running' AND pid = $final_leader}),
	'4', 'all four services run under the leader');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND pid IS NULL AND component NOT LIKE 'candidate%'}),
	'0', 'every component has a process again');

# The queue works: a scheduled job (the scheduler) completes.
jobq_handlers($node);
my $id = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 1}', run_at => now() + interval '200 ms')});
is(wait_job($node, $id), 'completed', 'a scheduled job runs under the new leader');

$node->stop;
done_testing();
