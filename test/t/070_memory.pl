# The worker loop does not leak: a worker's memory, as reported by
# pg_log_backend_memory_contexts(), is the same after 20,000 more jobs
# (completions, failures with retries, and discards) as after a warm-up.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('memory', workers => 1);
jobq_install($node);
jobq_handlers($node);

# Runs n jobs: most succeed, every 10th fails once and is retried, every
# 50th always fails and is discarded after 2 attempts.
sub run_jobs
{
	my ($n) = @_;
	$node->safe_psql('postgres', qq{
SELECT jobq.enqueue_many('effect',
	array_agg(CASE WHEN g % 50 = 0 THEN jsonb_build_object('n', g, 'fail', 99)
				   WHEN g % 10 = 0 THEN jsonb_build_object('n', g, 'fail', 1)
				   ELSE jsonb_build_object('n', g) END ORDER BY g),
	max_attempts => 2)
  FROM generate_series(1, $n) g});
	ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM jobq.jobs WHERE state NOT IN ('completed', 'discarded')}),
		"$n jobs finished");
}

# The worker's total memory, from its memory-context dump in the log.
sub worker_memory
{
	my $pid = component_pid($node, 'worker 0');
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	$node->wait_for_log(qr/\[$pid\] .*Grand total: \d+ bytes/, $offset);
	my $log = slurp_file($node->logfile, $offset);
	my ($total) = $log =~ /\[$pid\] .*Grand total: (\d+) bytes/;
	return ($pid, $total);
}

run_jobs(3000);
my ($pid1, $before) = worker_memory();
run_jobs(20000);
my ($pid2, $after) = worker_memory();

is($pid2, $pid1, 'the same worker ran all jobs');
note("worker memory: $before bytes after warm-up, $after bytes after 20000 more jobs");
cmp_ok($after - $before, '<', 64 * 1024,
	'worker memory grew by less than 64 kB over 20000 jobs');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM jobq.jobs WHERE state = 'discarded' AND jsonb_array_length(errors) = 2}),
	'460', 'always-failing jobs were discarded after 2 recorded attempts');

$node->stop;
done_testing();
