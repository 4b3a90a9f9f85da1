# A batch's jobs are completed in one statement at the end of its
# transaction (worker.c complete_batch).  What can happen to a job between
# its handler's return and that statement, each in a batch of its own
# (one worker, so that the jobs of a test share one batch):
#   1. every job completes with its own result and the time its handler
#      returned (finalized_at strictly increasing in run order);
#   2. the owner of a job of the batch is reassigned meanwhile (REASSIGN
#      OWNED moves its row): it still completes, under the new owner;
#   3. a job of the batch is cancelled meanwhile (by a later job of the
#      same batch, through dblink): it stays cancelled with its effect
#      rolled back; the batch fails and its other jobs run again, the
#      failed run not counted as an attempt; each effect commits once.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('batch_completion', workers => 1);
jobq_install($node);
jobq_handlers($node);
my $connstr = 'port=' . $node->port . ' host=' . $node->host . ' dbname=postgres';
$node->safe_psql('postgres', qq{
CREATE EXTENSION dblink;
CREATE ROLE batch_r1;
CREATE ROLE batch_r2;
SELECT jobq.grant('kind', 'effect', 'batch_r1');
SELECT jobq.grant('queue', 'default', 'batch_r1');
-- runs SQL in a session of its own, committed before the job goes on
CREATE FUNCTION app.meanwhile(args jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM dblink_exec('$connstr', args->>'sql');
	INSERT INTO app.effects (job_id, n, attempt)
	VALUES ((jobq.current_job()).id, (args->>'n')::bigint, (jobq.current_job()).attempt);
END \$\$;
SELECT jobq.register('meanwhile', 'app.meanwhile(jsonb)');
});
ok(wait_ready($node), 'jobq is ready');

# Enqueues jobs into the paused queue in one transaction, in run order
# (priorities 0, 1, ...), resumes it and waits for every one of them;
# returns their ids.  A few quick jobs first: the worker then claims many
# per batch (its batch size follows the recent job duration).
sub run_together
{
	my (@jobs) = @_;
	my $warm = $node->safe_psql('postgres', q{
		SELECT max(id) FROM unnest(jobq.enqueue_many('effect',
			array_fill('{"n": 0}'::jsonb, ARRAY[50]))) id});
	wait_job($node, $warm);
	$node->safe_psql('postgres', "SELECT jobq.pause('default')");
	my @ids;
	for my $i (0 .. $#jobs)
	{
		my ($kind, $args, $role) = @{ $jobs[$i] };
		$args =~ s/'/''/g;
		my $sql = "SELECT jobq.enqueue('$kind', '$args', priority => $i)";
		push @ids, $role
		  ? $node->safe_psql('postgres', "SET ROLE $role; $sql")
		  : $node->safe_psql('postgres', $sql);
	}
	$node->safe_psql('postgres', "SELECT jobq.resume('default')");
	wait_job($node, $_) for @ids;
	return @ids;
}

sub job
{
	my ($id, $cols) = @_;
	return $node->safe_psql('postgres', "SELECT $cols FROM jobq.jobs WHERE id = $id");
}

# 1. results and finalized_at per job
my @ids = run_together(map { [ 'effect', qq({"n": $_}) ] } 101 .. 105);
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(result->>'n', ',' ORDER BY id) FROM jobq.jobs WHERE id IN (@{[ join ',', @ids ]})}),
	'101,102,103,104,105', '1: each job completed with its own result');
is( $node->safe_psql('postgres', qq{
		SELECT bool_and(f > lag_f) FROM (
			SELECT finalized_at AS f, lag(finalized_at) OVER (ORDER BY id) AS lag_f
			  FROM jobq.jobs WHERE id IN (@{[ join ',', @ids ]})) s WHERE lag_f IS NOT NULL}),
	't', '1: finalized_at is when each handler returned');

# 2. an owner reassigned between a job's return and its batch's end
my ($moved, $mover) = run_together(
	[ 'effect', '{"n": 201}', 'batch_r1' ],
	[ 'meanwhile', '{"n": 202, "sql": "REASSIGN OWNED BY batch_r1 TO batch_r2"}' ]);
is(job($moved, 'state || \' \' || owner'), 'completed batch_r2', '2: the reassigned job completed under its new owner');
is(job($mover, 'state || \' \' || attempt'), 'completed 1', '2: the job that reassigned it completed at its first attempt');
is($node->safe_psql('postgres', 'SELECT count(*) FROM app.effects WHERE n IN (201, 202)'), '2',
	'2: each effect committed once');

# 3. a job cancelled between its return and its batch's end
my ($cancelled, $canceller) = run_together(
	[ 'effect', '{"n": 301}' ],
	[ 'meanwhile', q({"n": 302, "sql": "DO $c$ BEGIN PERFORM jobq.cancel(id) FROM jobq.jobs WHERE kind = 'effect' AND args->>'n' = '301'; END $c$"}) ]);
is(job($cancelled, 'state'), 'cancelled', '3: the job cancelled after its handler returned stays cancelled');
is($node->safe_psql('postgres', 'SELECT count(*) FROM app.effects WHERE n = 301'), '0',
	'3: its effect was rolled back');
is(job($canceller, 'state || \' \' || attempt || \' \' || jsonb_array_length(errors)'), 'completed 1 0',
	'3: the other job of the batch ran again, the failed run not counted');
is($node->safe_psql('postgres', 'SELECT count(*) FROM app.effects WHERE n = 302'), '1',
	'3: its effect committed once');
ok($node->log_contains(qr/job $cancelled of kind "effect" was cancelled after its handler returned/),
	'3: the worker logged why the batch failed');

$node->stop;
done_testing();
