# A poison job (one that kills its worker) charges its batch neighbours one
# attempt at most: after the first death, DESIGN.md says the jobs of that
# batch "run alone, so one poison job cannot keep charging its neighbours'
# attempts".  With two workers, the survivor of the first death is picked up
# by the other, warm, worker, which claims many jobs at a time: the
# neighbours must still not be charged by the killer's second attempt.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('poison_batch', workers => 2, conf => q{
jobq.batch_size = 100
jobq.batch_time = '10s'
});
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint, n int, attempt int);
CREATE FUNCTION app.batch_effect(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.effects VALUES (job.id, (args->>'n')::int, job.attempt);
	IF args->>'do' = 'kill' THEN
		PERFORM pg_terminate_backend(pg_backend_pid());
		PERFORM pg_sleep(10);	-- the SIGTERM ends us before this ends
	END IF;
END $$;
SELECT jobq.register('batch', 'app.batch_effect(jsonb)', backoff_max => '200 ms');
});

my $next_n = 1;
sub enqueue_jobs
{
	my ($max_attempts, @do) = @_;
	my @args = map { sprintf(q{jsonb_build_object('n', %d, 'do', '%s')}, $next_n++, $_) } @do;
	return split / /, $node->safe_psql('postgres',
		"SELECT array_to_string(jobq.enqueue_many('batch', ARRAY["
		  . join(', ', @args) . "], max_attempts => $max_attempts), ' ')");
}

# Waits for jobs (in one session); returns their final states, in order.
sub wait_all
{
	my (@ids) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(jobq.wait(id, '$JobqTest::TIMEOUT s')::text, ',' ORDER BY ord)
		   FROM unnest(ARRAY[" . join(',', @ids) . "]::bigint[]) WITH ORDINALITY AS t(id, ord)");
}

# Warm both workers up, so that each claims whole batches: rounds of 300
# jobs until each has run some (on a loaded machine one worker can take a
# whole round while the other is still waking up).
my ($warm_done, $warm_workers) = (1, 0);
for my $round (1 .. 10)
{
	my @warm = enqueue_jobs(25, ('') x 300);
	$warm_done &&= wait_all(@warm) eq join(',', ('completed') x 300);
	$warm_workers = $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.components
		   WHERE database = current_database() AND component LIKE 'worker%' AND jobs_done >= 30});
	last if $warm_workers eq '2' || !$warm_done;
}
ok($warm_done, 'warm-up jobs completed');
is($warm_workers, '2', 'both workers ran warm-up jobs');

# Five neighbours, the killer, five neighbours; two attempts each.
my @ids = enqueue_jobs(2, ('') x 5, 'kill', ('') x 5);
my $killer = $ids[5];
my @neighbours = grep { $_ != $killer } @ids;
my $neighbour_list = join(',', @neighbours);

is(wait_job($node, $killer), 'discarded', 'the killer is discarded after its 2 attempts');
is(wait_all(@neighbours), join(',', ('completed') x 10),
	'all 10 neighbours complete, though they have only 2 attempts')
  or diag($node->safe_psql('postgres',
	"SELECT id, state, attempt, errors FROM jobq.jobs WHERE id IN ($neighbour_list) ORDER BY id"));
is( $node->safe_psql(
		'postgres',
		"SELECT count(*), count(DISTINCT job_id) FROM app.effects WHERE job_id IN ($neighbour_list)"),
	'10|10',
	"every neighbour's effect appears exactly once");
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM jobq.jobs j
		  WHERE id IN ($neighbour_list)
		    AND (SELECT count(*) FROM jsonb_array_elements(j.errors) e WHERE (e->>'lost')::boolean) > 1"),
	'0',
	'no neighbour lost more than one attempt to the killer');

$node->stop;
done_testing();
