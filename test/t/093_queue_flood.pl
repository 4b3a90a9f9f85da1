# Queue flood: an idle worker's cost does not grow with the number of
# queues.  With 1000 empty queues, each idle cycle of a worker used to run
# one claim per queue (1000 index scans of jobq.jobs per cycle, 7-9 % CPU
# per idle worker); now it looks once for the queues that have jobs.
#
# Counted, not timed: index scans of jobq.jobs per transaction of the
# database over a few seconds of idling (each idle cycle of a worker is one
# transaction; the leader's and this test's transactions only lower the
# ratio).  Jobs still run in every queue.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('flood', workers => 2, conf => "jobq.poll_interval = '100ms'\n");
jobq_install($node);
jobq_handlers($node);

$node->safe_psql('postgres',
	q{SELECT jobq.create_queue(format('flood_%s', g)) FROM generate_series(1, 1000) g});

# index scans of jobq.jobs and transactions of the database, as flushed
sub counters
{
	return split /\|/, $node->safe_psql('postgres', q{
		SELECT pg_stat_force_next_flush();
		SELECT s.idx_scan, d.xact_commit + d.xact_rollback
		  FROM pg_stat_all_tables s, pg_stat_database d
		 WHERE s.relid = 'jobq.jobs'::regclass AND d.datname = current_database()});
}

# let the workers see the queues (a cache reload), then count while idle
my $id = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 1}', queue => 'flood_500')});
is(wait_job($node, $id), 'completed', 'a job in queue 500 of 1000 runs');

# idle until the database has run 60 more transactions (the workers poll
# every 100 ms)
my ($scans0, $xacts0) = counters();
my ($scans, $xacts);
ok( wait_until(
		sub {
			my ($s1, $x1) = counters();
			($scans, $xacts) = ($s1 - $scans0, $x1 - $xacts0);
			return $xacts >= 60;
		}),
	'the idle workers cycled');
note("FIGURE idle with 1000 queues: $scans index scans of jobq.jobs in $xacts transactions");
cmp_ok($scans / $xacts, '<', 10,
	'fewer than 10 index scans of jobq.jobs per transaction (was one per queue per cycle)');

# jobs in many queues all run
my $ids = $node->safe_psql('postgres', q{
	SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g),
								   queue => format('flood_%s', g * 97 % 1000 + 1))::text, ',')
	  FROM generate_series(1, 50) g});
is( $node->safe_psql('postgres', "SELECT count(*) FROM (SELECT jobq.wait(id, '$JobqTest::TIMEOUT s') AS s
	  FROM unnest('{$ids}'::bigint[]) id) w WHERE s = 'completed'"),
	'50', '50 jobs spread over 50 queues all complete');

$node->stop;
done_testing();
