# Exactly once under concurrency: 10,000 jobs enqueued by several sessions at
# once (single enqueues, enqueue_many, many statements per transaction) while
# the workers are claiming, all complete, each once, at the first attempt.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('exactly_once', workers => 4);
jobq_install($node);
jobq_handlers($node);
$node->safe_psql('postgres', 'CREATE SEQUENCE app.nseq');

# Three ways of enqueueing, 10 jobs per transaction each; pgbench picks one
# per transaction.  4 clients x 250 transactions x 10 jobs = 10,000 jobs.
my $one_statement = q{
SELECT jobq.enqueue('effect', jsonb_build_object('n', nextval('app.nseq')))
  FROM generate_series(1, 10);
};
my $many = q{
SELECT jobq.enqueue_many('effect',
	array(SELECT jsonb_build_object('n', nextval('app.nseq')) FROM generate_series(1, 10)));
};
my $statements = "BEGIN;\n"
  . ("SELECT jobq.enqueue('effect', jsonb_build_object('n', nextval('app.nseq')));\n" x 10)
  . "COMMIT;\n";

my $start = time;
$node->pgbench(
	'--no-vacuum --client=4 --jobs=2 --transactions=250',
	0,
	[qr{processed: 1000/1000}],
	[qr{^$}],
	'4 sessions enqueue 10,000 jobs concurrently',
	{
		'010_one_statement@1' => $one_statement,
		'010_many@1' => $many,
		'010_statements@1' => $statements,
	});
my $enqueued = time;

is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM jobq.jobs'),
	'10000|10000', '10,000 distinct jobs were enqueued');

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 10000 FROM jobq.jobs WHERE state = 'completed'}),
	'all 10,000 jobs completed');
my $done = time;
note(sprintf('enqueue took %.1f s; all completed %.1f s after the start (%.0f jobs/s overall)',
		$enqueued - $start, $done - $start, 10000 / ($done - $start)));

is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.jobs WHERE state <> 'completed'}),
	'0',
	'no job is left in another state');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*), count(DISTINCT job_id), count(DISTINCT n), min(n), max(n)
		    FROM app.effects}),
	'10000|10000|10000|1|10000',
	'each handler effect appears exactly once (count = count distinct = 10000)');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.jobs j
		   WHERE j.attempt <> 1 OR j.errors <> '[]'
		      OR j.finalized_at IS NULL OR j.attempted_at IS NULL
		      OR j.result IS DISTINCT FROM jsonb_build_object('n', (j.args->>'n')::bigint)}),
	'0',
	'every job completed at attempt 1, with no error and its result stored');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.jobs j JOIN app.effects e ON e.job_id = j.id
		   WHERE e.n = (j.args->>'n')::bigint AND e.attempt = 1}),
	'10000',
	'every effect belongs to its own job and was made by its first attempt');
is( $node->safe_psql(
		'postgres',
		q{SELECT sum(jobs_done), sum(jobs_failed) FROM jobq.components
		   WHERE database = current_database() AND component LIKE 'worker%'}),
	'10000|0',
	'the workers counted 10,000 jobs done and none failed');
is( $node->safe_psql(
		'postgres',
		q{SELECT completed, available, running, retryable, discarded
		    FROM jobq.queue_stats WHERE queue = 'default'}),
	'10000|0|0|0|0',
	'queue_stats agrees');

$node->stop;
done_testing();
