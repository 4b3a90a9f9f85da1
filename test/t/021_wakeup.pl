# Wake-up on commit: idle workers sleeping with a 30 s poll interval pick up
# new work within moments, whether it is enqueued directly, from a trigger,
# scheduled for a little later, a retry after a failure, or jobq.retry().
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('wakeup', workers => 2, conf => "jobq.poll_interval = '30s'\n");
jobq_install($node);
jobq_handlers($node);
is($node->safe_psql('postgres', 'SHOW jobq.poll_interval'), '30s', 'workers poll every 30 s only');

# Generous: a worker that only polled would take about 30 s.
my $BOUND = 10;

# Until every worker sleeps on its latch (idle, in an Extension wait).
sub wait_asleep
{
	return $node->poll_query_until(
		'postgres', q{
		SELECT count(*) = 2 FROM jobq.components c JOIN pg_stat_activity a ON a.pid = c.pid
		 WHERE c.database = current_database() AND c.component LIKE 'worker%'
		   AND c.state = 'idle' AND a.wait_event_type = 'Extension'});
}

# Runs $sql (which makes job $id runnable, now or soon) and waits for the job.
sub time_to_complete
{
	my ($what, $sql, $want) = @_;
	$want //= 'completed';
	ok(wait_asleep(), "the workers are asleep before: $what");
	my $start = time;
	my $id = $node->safe_psql('postgres', $sql);
	my $state = $node->safe_psql('postgres', "SELECT jobq.wait($id, '40 s')");
	my $took = time - $start;
	is($state, $want, "$what: the job is $want");
	ok($took < $BOUND, sprintf('%s: in %.2f s, well before the 30 s poll', $what, $took));
	return $id;
}

for my $i (1 .. 3)
{
	time_to_complete("enqueue no. $i", "SELECT jobq.enqueue('effect', '{\"n\": $i}')");
}

time_to_complete('enqueue_many',
	q{SELECT (jobq.enqueue_many('effect', ARRAY['{"n": 10}', '{"n": 11}']::jsonb[]))[2]});

$node->safe_psql('postgres', q{
CREATE TABLE app.items (id int);
CREATE TRIGGER items_jobq AFTER INSERT ON app.items
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('effect');
});
time_to_complete('trigger',
	q{INSERT INTO app.items VALUES (1); SELECT max(id) FROM jobq.jobs});

# A job scheduled 2 s ahead runs once due, not at the next poll.
my $id = time_to_complete('run_at in 2 s',
	q{SELECT jobq.enqueue('effect', '{"n": 20}', run_at => now() + interval '2 s')});
is($node->safe_psql('postgres', "SELECT attempted_at >= scheduled_at FROM jobq.jobs WHERE id = $id"),
	't', 'the scheduled job did not run before it was due');

# A failure (backoff_max 200 ms) is retried without waiting for a poll.
$id = time_to_complete('retry after a failure',
	q{SELECT jobq.enqueue('effect', '{"n": 30, "fail": 1}')});
is($node->safe_psql('postgres', "SELECT attempt FROM jobq.jobs WHERE id = $id"),
	'2', 'it completed at its second attempt');

# jobq.retry() of a discarded job.
$id = time_to_complete('a job that fails once, with one attempt',
	q{SELECT jobq.enqueue('effect', '{"n": 40, "fail": 1}', max_attempts => 1)}, 'discarded');
time_to_complete('jobq.retry()', "SELECT CASE WHEN jobq.retry($id) THEN $id END");
is($node->safe_psql('postgres', "SELECT attempt FROM jobq.jobs WHERE id = $id"),
	'2', 'the retried job completed at its second attempt');

$node->stop;
done_testing();
