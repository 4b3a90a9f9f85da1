# A job's database effects are rolled back when an attempt fails and are
# committed exactly when the job completes, never earlier.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('atomicity', workers => 2);
jobq_install($node);
jobq_handlers($node);

# A handler that makes its effect first and then takes a while.
$node->safe_psql('postgres', q{
CREATE FUNCTION app.effect_then_wait(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, (args->>'n')::bigint, job.attempt);
	PERFORM pg_sleep((args->>'wait')::float8);
	RETURN '{"ok": true}';
END $$;
SELECT jobq.register('effect_then_wait', 'app.effect_then_wait(jsonb)');
});

# --- fails at attempts 1 and 2 after making its effect, succeeds at 3 ----
my $ids = $node->safe_psql('postgres',
	q{SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g, 'fail', 2))::text, ' ')
	    FROM generate_series(1, 20) g});
my @ids = split / /, $ids;
is(scalar(@ids), 20, '20 jobs enqueued that fail twice');
# one that never succeeds
my $hopeless = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 1000, "fail": 99}', max_attempts => 3)});

for my $id (@ids)
{
	my $state = wait_job($node, $id);
	is($state, 'completed', "job $id completed") if $state ne 'completed';
}
is(wait_job($node, $hopeless), 'discarded', 'the job that always fails is discarded');

is( $node->safe_psql(
		'postgres',
		q{SELECT count(*), count(DISTINCT job_id), min(attempt), max(attempt)
		    FROM app.effects WHERE n <= 20}),
	'20|20|3|3',
	'exactly one effect per job, made by attempt 3: the effects of attempts 1 and 2 were rolled back');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.jobs
		   WHERE kind = 'effect' AND (args->>'n')::int <= 20
		     AND state = 'completed' AND attempt = 3 AND jsonb_array_length(errors) = 2}),
	'20',
	'all 20 completed at attempt 3 with the two failures recorded');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.effects WHERE n = 1000}),
	'0', 'the discarded job left no effect from any of its 3 attempts');
is( $node->safe_psql(
		'postgres',
		qq{SELECT attempt, jsonb_array_length(errors) FROM jobq.jobs WHERE id = $hopeless}),
	'3|3',
	'the discarded job recorded its 3 failures');

# --- the effect becomes visible exactly when the job completes ------------
my $slow = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect_then_wait', '{"n": 2000, "wait": 2}')});
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'running' FROM jobq.jobs WHERE id = $slow"),
	'the slow job is running');
# One statement, one snapshot: the job's state and its effect are seen together.
my $look = qq{SELECT state, (SELECT count(*) FROM app.effects WHERE job_id = $slow)
                FROM jobq.jobs WHERE id = $slow};
my (%seen, @wrong);
ok( wait_until(
		sub {
			my $row = $node->safe_psql('postgres', $look);
			$seen{$row}++;
			push @wrong, $row
			  unless $row eq 'running|0' || $row eq 'completed|1';
			return $row =~ /^completed/;
		}),
	'the slow job completed');
is_deeply(\@wrong, [], 'its effect was never visible without its completion, nor the reverse');
ok($seen{'running|0'}, 'while it ran, its effect (already made) was not visible')
  or diag(explain \%seen);
is($node->safe_psql('postgres', "SELECT result FROM jobq.jobs WHERE id = $slow"),
	'{"ok": true}', 'the completed job stored its result');

$node->stop;
done_testing();
