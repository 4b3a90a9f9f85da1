# A poison job: its handler terminates its own backend.  The attempt is
# committed before the handler starts, so the job is finite: it ends
# discarded after exactly max_attempts attempts, with one "lost" error entry
# per attempt.  Its neighbours in the batch lose at most one attempt, the
# workers come back, and jobs keep running.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('poison', conf => "log_timezone = 'UTC'\n");
jobq_install($node);
jobq_handlers($node);

$node->safe_psql('postgres', q{
CREATE FUNCTION app.suicide(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.effects (job_id, n, attempt)
		SELECT id, -1, attempt FROM jobq.current_job();
	PERFORM pg_terminate_backend(pg_backend_pid());
	PERFORM pg_sleep(60);	-- the termination is noticed here
	RAISE EXCEPTION 'still alive';
END $$;
SELECT jobq.register('suicide', 'app.suicide(jsonb)', backoff_max => '200 ms');
});
# The same retry backoff as the neighbours' kind 'effect' (200 ms): after a
# rescue the poison job and its neighbours are due at the same moment and
# are claimed in id order, so a neighbour can be claimed together with (and
# after) the poison job.  The design says it must not lose a second attempt.

for my $max (1, 3, 5)
{
	# the poison job amid quick jobs, so that it shares a batch with some
	my $ids = $node->safe_psql('postgres', qq{
	SELECT jobq.enqueue('effect', jsonb_build_object('n', g)) FROM generate_series(1, 10) g;
	SELECT jobq.enqueue('suicide', '{}', max_attempts => $max);
	SELECT jobq.enqueue('effect', jsonb_build_object('n', g)) FROM generate_series(11, 20) g;
	});
	my @ids = split /\n/, $ids;
	my $poison = $ids[10];
	my $t0 = time;
	is(wait_job($node, $poison), 'discarded', "max_attempts $max: the poison job ends discarded");
	my $took = time - $t0;
	is( $node->safe_psql('postgres', qq{
		SELECT attempt, max_attempts, jsonb_array_length(errors), finalized_at IS NOT NULL
		  FROM jobq.jobs WHERE id = $poison}),
		"$max|$max|$max|t",
		"max_attempts $max: exactly $max attempts, $max error entries, finalized");
	is( $node->safe_psql('postgres', qq{
		SELECT string_agg(format('%s:%s', e ->> 'attempt', e ->> 'lost'), ',' ORDER BY n)
		  FROM jobq.jobs, jsonb_array_elements(errors) WITH ORDINALITY AS x(e, n)
		 WHERE id = $poison}),
		join(',', map { "$_:true" } 1 .. $max),
		"max_attempts $max: error entries for attempts 1..$max, each \"lost\": true");
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id = $poison"),
		'0', "max_attempts $max: none of its runs committed anything");
	note(sprintf('max_attempts %d: discarded after %.1f s', $max, $took));

	# the neighbours all completed, having lost at most one attempt
	my $others = join(',', @ids[ 0 .. 9, 11 .. 20 ]);
	ok( $node->poll_query_until('postgres',
			"SELECT bool_and(state = 'completed') FROM jobq.jobs WHERE id IN ($others)"),
		"max_attempts $max: the 20 other jobs completed");
	is( $node->safe_psql('postgres',
			"SELECT max(attempt) <= 2, count(*) FROM app.effects WHERE job_id IN ($others)"),
		't|20', "max_attempts $max: each ran once to completion, after at most one lost attempt");
	note("max_attempts $max: neighbours that lost an attempt with the poison job: "
		  . $node->safe_psql('postgres', "SELECT count(*) FROM jobq.jobs WHERE id IN ($others) AND attempt > 1")
		  . '; attempts of the neighbours (attempt:jobs): '
		  . $node->safe_psql('postgres', "SELECT string_agg(a || ':' || n, ' ' ORDER BY a) FROM (SELECT attempt a, count(*) n FROM jobq.jobs WHERE id IN ($others) GROUP BY 1) x"));
}

my $log = slurp_file($node->logfile);
my $gave_back = () = $log =~ /jobq rescuer of database "postgres" gave back \d+ jobs of lost workers \([1-9]\d* discarded: no attempts left\)/g;
is($gave_back, 3, 'the rescuer logged the three discards');

# The workers are all back and work.
ok(wait_ready($node), 'all workers are running again');
my $job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 100}')});
is(wait_job($node, $job), 'completed', 'a job enqueued afterwards completes');

$node->stop;
done_testing();
