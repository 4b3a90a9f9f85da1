# A paused queue starts nothing until resumed: its jobs stay available
# while a job of another queue, enqueued after them, completes, and while
# every worker goes through several poll cycles (their heartbeats move on);
# jobq.queue_stats shows the queue paused with its waiting jobs and lag.
# Once resumed, they all run.  A job already running when its queue is
# paused finishes.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('paused');
jobq_install($node);
jobq_handlers($node);

$node->safe_psql('postgres', q{
SELECT jobq.create_queue('held');
SELECT jobq.pause('held');
});
is($node->safe_psql('postgres', q{SELECT paused FROM jobq.queue_stats WHERE queue = 'held'}),
	't', 'queue_stats shows the queue paused');

my $enqueued_at = $node->safe_psql('postgres', 'SELECT now()');
my @held = split /\n/, $node->safe_psql('postgres', q{
	SELECT jobq.enqueue('effect', jsonb_build_object('n', g), queue => 'held')
	  FROM generate_series(1, 5) g});
is(scalar(@held), 5, 'enqueued 5 jobs into the paused queue');

# Another queue's job, enqueued after them, runs to completion.
my $other = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 100}')});
is(wait_job($node, $other), 'completed', 'a later job of the default queue completed');

sub held_states
{
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(DISTINCT state || '/' || attempt, ',')
		  FROM jobq.jobs WHERE id IN (@{[ join ',', @held ]})});
}
is(held_states(), 'available/0', 'the paused jobs are still available, never attempted');

# Every worker has looked for work more than twice since (idle workers wake
# every jobq.poll_interval = 1 s and update their heartbeat).
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT bool_and(heartbeat_at > '$enqueued_at'::timestamptz + interval '2.5 s') AND count(*) = 4
	  FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %' AND state = 'idle'}),
	'all four workers went through several poll cycles, idle');
is(held_states(), 'available/0', 'the paused jobs are still available');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.effects WHERE n BETWEEN 1 AND 5}),
	'0', 'none of their handlers ran');
is( $node->safe_psql('postgres', q{
	SELECT paused, available, running, completed, lag > interval '2.5 s'
	  FROM jobq.queue_stats WHERE queue = 'held'}),
	't|5|0|0|t', 'queue_stats: paused, 5 available, a lag of the time they waited');

# Resume: all of them run.
$node->safe_psql('postgres', q{SELECT jobq.resume('held')});
is(wait_job($node, $_), 'completed', "job $_ completed after resume") for @held;
is( $node->safe_psql('postgres', q{
	SELECT paused, available, completed, lag FROM jobq.queue_stats WHERE queue = 'held'}),
	'f|0|5|00:00:00', 'queue_stats: resumed, all 5 completed, no lag');

# Pausing does not stop a job that is already running.
my $long = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 200, "sleep": 1}', queue => 'held')});
ok( $node->poll_query_until('postgres', "SELECT state = 'running' FROM jobq.jobs WHERE id = $long"),
	'a 1 s job of the queue is running');
$node->safe_psql('postgres', q{SELECT jobq.pause('held')});
is(wait_job($node, $long), 'completed', 'it completes although its queue was paused meanwhile');
my $after = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 300}', queue => 'held')});
my $marker = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 301}')});
is(wait_job($node, $marker), 'completed', 'a later default-queue job completed');
is($node->safe_psql('postgres', "SELECT state FROM jobq.jobs WHERE id = $after"),
	'available', 'while a new job of the paused queue waits');

$node->stop;
done_testing();
