# jobq.components records restarts: after a worker (and a non-leading
# candidate) is terminated with pg_terminate_backend, its row shows a new
# pid, restarts grown by one, and the last error with its time; the error
# outlives the restart, and the other components are untouched.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('restart');
jobq_install($node);
jobq_handlers($node);

# One component's row as a hash (undef columns as '').
sub component
{
	my ($name) = @_;
	my @cols = qw(pid state restarts last_error last_error_at incarnation);
	my $row = $node->safe_psql('postgres', sprintf(
		q{SELECT %s FROM jobq.components WHERE database = current_database() AND component = '%s'},
		join(', ', map { "coalesce(${_}::text, '')" } @cols), $name));
	my %c;
	@c{@cols} = split /\|/, $row, -1;
	return \%c;
}

# Terminates the process of a component and checks what its row then shows.
sub check_restart
{
	my ($name, $up_state) = @_;
	my $before = component($name);
	like($before->{pid}, qr/^\d+$/, "$name runs (pid $before->{pid})");
	is($before->{restarts}, '0', "$name has not restarted yet");
	is($before->{last_error}, '', "$name has no error yet");

	my $t0 = $node->safe_psql('postgres', 'SELECT now()');
	my $offset = -s $node->logfile;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($before->{pid})"),
		't', "terminated $name");

	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT pid IS NOT NULL AND pid <> $before->{pid} AND restarts = 1 AND state = '$up_state'
		  FROM jobq.components WHERE database = current_database() AND component = '$name'}),
		"$name is back under a new pid with restarts = 1");
	my $after = component($name);
	isnt($after->{pid}, $before->{pid}, "$name: new pid $after->{pid}");
	like($after->{last_error},
		qr/terminating (background worker|connection).* due to administrator command|process exited unexpectedly/,
		"$name: last_error says why it went away ($after->{last_error})");
	is( $node->safe_psql('postgres', qq{
		SELECT last_error_at >= '$t0' AND last_error_at <= now()
		  FROM jobq.components WHERE database = current_database() AND component = '$name'}),
		't', "$name: last_error_at is the time of the termination");
	ok( $node->log_contains(
			qr/jobq \w+ \d of database "postgres" exited unexpectedly; restarting it in 1000 ms/, $offset),
		"$name: the launcher logged the unexpected exit and its restart backoff");
	return ($before, $after);
}

# A worker.
my ($w_before, $w_after) = check_restart('worker 0', 'idle');
isnt($w_after->{incarnation}, $w_before->{incarnation}, 'the new worker has a new incarnation');

# The restarted worker works: a job runs and completes.
my $id = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 1}')});
is(wait_job($node, $id), 'completed', 'jobs still complete after the restart');

# A candidate that does not lead.
my $candidate = $node->safe_psql('postgres', q{
	SELECT component FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'candidate %'});
like($candidate, qr/^candidate \d$/, "the other candidate is $candidate");
my $leader = component_pid($node, 'leader');
check_restart($candidate, 'running');
is(component_pid($node, 'leader'), $leader, 'the leader did not change');

# Nobody else restarted or reports an error.
is( $node->safe_psql('postgres', qq{
	SELECT string_agg(component || ':' || restarts || ':' || coalesce(last_error, ''), ', ' ORDER BY component)
	  FROM jobq.components
	 WHERE component NOT IN ('worker 0', '$candidate')
	   AND (restarts <> 0 OR last_error IS NOT NULL OR last_error_at IS NOT NULL)}),
	'', 'the other components show no restart and no error');
ok(wait_ready($node), 'jobq is ready again');

$node->stop;
done_testing();
