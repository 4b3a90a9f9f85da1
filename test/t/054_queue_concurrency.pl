# A queue's concurrency limit holds across all workers under load: with 4
# workers, 200 jobs of a queue limited to 1 never overlap, and 200 jobs of a
# queue limited to 2 (enqueued at the same time) never run more than 2 at
# once.  Each handler sleeps 10-20 ms and records its start and end
# (clock_timestamp()) in a table; overlaps are computed from those
# intervals; a sampler also records, every few ms, how many jobs of each
# queue are in state running (claimed).  A control queue without limit
# shows that the same jobs do overlap when nothing stops them.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('concurrency', workers => 4);
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.spans (job_id bigint PRIMARY KEY, queue text, started timestamptz, ended timestamptz);
CREATE FUNCTION app.timed(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
	t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_sleep(0.010 + random() * 0.010);
	INSERT INTO app.spans VALUES (job.id, job.queue, t0, clock_timestamp());
END $$;
SELECT jobq.register('timed', 'app.timed(jsonb)');
SELECT jobq.create_queue('one', 1);
SELECT jobq.create_queue('two', 2);
SELECT jobq.create_queue('free');
CREATE TABLE app.samples (one bigint, two bigint);
CREATE TABLE app.stop (stop boolean);
CREATE PROCEDURE app.sample() LANGUAGE plpgsql AS $$
BEGIN
	WHILE NOT EXISTS (SELECT FROM app.stop) LOOP
		INSERT INTO app.samples
			SELECT count(*) FILTER (WHERE queue = 'one'), count(*) FILTER (WHERE queue = 'two')
			  FROM jobq.jobs WHERE state = 'running';
		COMMIT;
		PERFORM pg_sleep(0.002);
	END LOOP;
END $$;
});
my $sampler = $node->background_psql('postgres', timeout => 300);
$sampler->query_until(qr/sampling/, "\\echo sampling\nCALL app.sample();\n");
is( $node->safe_psql('postgres', q{
	SELECT string_agg(queue || ':' || coalesce(concurrency::text, '-'), ' ' ORDER BY queue) FROM jobq.queue_stats}),
	'default:- free:- one:1 two:2', 'queue_stats shows the limits');

# Most jobs of a queue that ran at the same time: for each job, how many
# jobs of its queue were running when it started (itself included).
sub max_concurrency
{
	my ($queue) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT max(n) FROM (
			SELECT count(*) AS n
			  FROM app.spans a JOIN app.spans b
				ON b.queue = a.queue AND b.started <= a.started AND b.ended > a.started
			 WHERE a.queue = '$queue'
			 GROUP BY a.job_id) s});
}

sub enqueue
{
	my ($queue, $n) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT max(jobq.enqueue('timed', jsonb_build_object('i', g), queue => '$queue'))
		  FROM generate_series(1, $n) g});
}

# Both limited queues loaded at once, in one transaction.
my ($last_one, $last_two) = split /\|/, $node->safe_psql('postgres', q{
	SELECT (SELECT max(jobq.enqueue('timed', jsonb_build_object('i', g), queue => 'one')) FROM generate_series(1, 200) g),
		   (SELECT max(jobq.enqueue('timed', jsonb_build_object('i', g), queue => 'two')) FROM generate_series(1, 200) g)});
ok( $node->poll_query_until(
		'postgres', q{
	SELECT count(*) = 400 FROM jobq.jobs WHERE queue IN ('one', 'two') AND state = 'completed'}),
	'all 400 jobs completed');
is( $node->safe_psql('postgres', q{SELECT queue || ':' || count(*) FROM app.spans GROUP BY queue ORDER BY queue}),
	"one:200\ntwo:200", 'each ran once');

is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM app.spans a JOIN app.spans b
	    ON a.queue = 'one' AND b.queue = 'one' AND a.job_id < b.job_id
	   AND tstzrange(a.started, a.ended) && tstzrange(b.started, b.ended)}),
	'0', 'queue one (concurrency 1): no two jobs overlap');
is(max_concurrency('one'), '1', 'queue one: at most 1 at once');
my $two = max_concurrency('two');
cmp_ok($two, '<=', 2, "queue two (concurrency 2): at most 2 at once (seen $two)");
note("most jobs of queue two whose handlers overlapped: $two");

$node->safe_psql('postgres', 'INSERT INTO app.stop VALUES (true)');
$sampler->quit;
my ($samples, $max_one, $max_two) = split /\|/,
  $node->safe_psql('postgres', 'SELECT count(*), max(one), max(two) FROM app.samples');
cmp_ok($samples, '>', 100, "the sampler took $samples samples of the running jobs");
is($max_one, '1', 'sampled: queue one never had more than 1 job running, and had 1');
is($max_two, '2', 'sampled: queue two never had more than 2 jobs running, and reached 2');
note('workers that ran jobs of queue one: '
	  . $node->safe_psql('postgres', q{SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE queue = 'one'}));
note('workers that ran jobs of queue two: '
	  . $node->safe_psql('postgres', q{SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE queue = 'two'}));

# Control: the same jobs in a queue without limit overlap.
my $last_free = enqueue('free', 100);
is(wait_job($node, $last_free), 'completed', 'control: the unlimited queue drained');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 100 FROM app.spans WHERE queue = 'free'}),
	'control: 100 jobs ran');
my $free = max_concurrency('free');
cmp_ok($free, '>', 2, "control: without a limit, $free jobs ran at once");

# Changing a limit takes effect: concurrency 1 for queue two now.
$node->safe_psql('postgres', q{SELECT jobq.set_queue_concurrency('two', 1); DELETE FROM app.spans WHERE queue = 'two'});
my $last = enqueue('two', 60);
is(wait_job($node, $last), 'completed', 'queue two drained again');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 60 FROM app.spans WHERE queue = 'two'}),
	'60 jobs ran');
is(max_concurrency('two'), '1', 'after set_queue_concurrency(two, 1): at most 1 at once');

$node->stop;
done_testing();
