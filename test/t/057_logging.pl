# Logging: one line per lifecycle event (launcher start, each worker start,
# leadership, a discarded job), and no per-job lines unless jobq.log_jobs =
# on: 100 successful jobs add no line with it off, one line each with it on.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('logging', workers => 4);
jobq_install($node);
jobq_handlers($node);

# How many lines of the log (from $offset) match $re.
sub count_lines
{
	my ($re, $offset) = @_;
	return scalar(grep { /$re/ } split /\n/, slurp_file($node->logfile, $offset // 0));
}

# Start-up, exactly once each.
is(count_lines(qr/LOG:  jobq launcher started$/), 1, 'one "jobq launcher started" line');
is(count_lines(qr/LOG:  jobq starting 4 workers and 2 leader candidates in database "postgres"$/),
	1, 'one line announcing the processes of the database');
for my $n (0 .. 3)
{
	is(count_lines(qr/LOG:  jobq worker $n started in database "postgres"$/), 1,
		"one \"jobq worker $n started in database\" line");
}
is(count_lines(qr/LOG:  jobq candidate \d is now the leader of database "postgres"$/), 1,
	'one "is now the leader of database" line');

# A job that fails twice and is discarded: with log_jobs off, one line, and
# only for the discard.
my $offset = -s $node->logfile;
my $bad = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 0, "fail": 99}', max_attempts => 2)});
is(wait_job($node, $bad), 'discarded', 'a failing job was discarded after 2 attempts');
is( count_lines(
		qr/LOG:  jobq job $bad of kind "effect" discarded after 2 attempts: failing on purpose at attempt 2$/, $offset),
	1, 'one "discarded after 2 attempts" line, with the last error');
is(count_lines(qr/jobq job $bad\b/, $offset), 1, 'and no other line about that job');

# 100 successful jobs, log_jobs off: no per-job line.
is($node->safe_psql('postgres', 'SHOW jobq.log_jobs'), 'off', 'jobq.log_jobs is off by default');
$offset = -s $node->logfile;
my $last = $node->safe_psql('postgres',
	q{SELECT max(jobq.enqueue('effect', jsonb_build_object('n', g))) FROM generate_series(1, 100) g});
is(wait_job($node, $last), 'completed', 'the last of 100 jobs completed');
ok($node->poll_query_until('postgres',
	qq{SELECT count(*) = 100 FROM jobq.jobs WHERE id > $bad AND state = 'completed'}), 'all 100 completed');
is(count_lines(qr/jobq job \d+/, $offset), 0, 'with jobq.log_jobs off they logged nothing');

# log_jobs on: reload, and make sure every worker has taken it (an idle
# worker woken by the SIGHUP starts a new cycle, which first reloads).
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER SYSTEM SET jobq.log_jobs = on; SELECT pg_reload_conf();');
$node->wait_for_log(qr/parameter "jobq.log_jobs" changed to "on"/, $offset);
my $reloaded_at = $node->safe_psql('postgres', 'SELECT now()');
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT bool_and(heartbeat_at > '$reloaded_at' AND state = 'idle') AND count(*) = 4 FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %'}),
	'every worker started a cycle after the reload');

$offset = -s $node->logfile;
my $first = $last + 1;
$last = $node->safe_psql('postgres',
	q{SELECT max(jobq.enqueue('effect', jsonb_build_object('n', g))) FROM generate_series(101, 200) g});
is(wait_job($node, $last), 'completed', 'the last of 100 more jobs completed');
ok($node->poll_query_until('postgres',
	qq{SELECT count(*) = 100 FROM jobq.jobs WHERE id BETWEEN $first AND $last AND state = 'completed'}),
	'all 100 completed');
my %seen;
for (split /\n/, slurp_file($node->logfile, $offset))
{
	$seen{$1}++ if /LOG:  jobq job (\d+) of kind "effect" completed$/;
}
is(scalar(keys %seen), 100, 'with jobq.log_jobs on, 100 jobs logged their completion');
is(scalar(grep { $_ != 1 } values %seen), 0, 'one line each');
is(scalar(grep { $_ < $first || $_ > $last } keys %seen), 0, 'for exactly those jobs');

# And a failed attempt is logged too with it on.
$offset = -s $node->logfile;
$bad = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 0, "fail": 99}', max_attempts => 2)});
is(wait_job($node, $bad), 'discarded', 'another failing job was discarded');
is(count_lines(qr/LOG:  jobq job $bad of kind "effect" failed \(attempt 1 of 2\): failing on purpose at attempt 1$/, $offset),
	1, 'with jobq.log_jobs on, its first failed attempt was logged');
is(count_lines(qr/LOG:  jobq job $bad of kind "effect" discarded after 2 attempts/, $offset),
	1, 'and its discard, once');

# Lifecycle events did not repeat meanwhile.
is(count_lines(qr/jobq launcher started|started in database|is now the leader/),
	6, 'still one start line per process and one leadership line');

$node->stop;
done_testing();
