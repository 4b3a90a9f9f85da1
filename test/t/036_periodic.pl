# Periodic jobs: a schedule fires exactly one job per fire time, even when
# the leader is terminated right around the fire time, and after downtime it
# catches up with one job, not one per missed fire time.  Time is driven by
# setting jobq.schedules.next_fire_at as superuser (and waking the leader,
# as jobq.schedule() does).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = jobq_node('periodic', conf => "log_timezone = 'UTC'\n");
jobq_install($node);
jobq_handlers($node);

my $first = $node->safe_psql('postgres',
	q{SELECT extract(epoch FROM jobq.schedule('tick', '* * * * *', 'effect', '{"n": 1}'))});
my $now = $node->safe_psql('postgres', 'SELECT extract(epoch FROM now())');
ok($first > $now && $first <= $now + 60 && $first % 60 == 0,
	'jobq.schedule returns the next whole minute as the first fire time');

my $session = $node->background_psql('postgres');

sub key_of { return "jobq.schedule:tick:$_[0]" }

# Sets the next fire time to $fire (epoch) and wakes the leader.
sub set_fire
{
	my ($fire) = @_;
	$session->query_safe(qq{
	BEGIN;
	UPDATE jobq.schedules SET next_fire_at = to_timestamp($fire) WHERE name = 'tick';
	SELECT jobq._wake_leader_at_commit();
	COMMIT;});
}

# Waits until the fire time $fire has been dealt with: its job exists and
# the schedule has moved past it.
sub wait_fired
{
	my ($fire, $what) = @_;
	my $key = key_of($fire);
	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key = '$key')
		   AND (SELECT next_fire_at > to_timestamp($fire) FROM jobq.schedules WHERE name = 'tick')}),
		"$what: the fire time was handled");
	is($node->safe_psql('postgres', "SELECT count(*) FROM jobq.jobs WHERE unique_key = '$key'"),
		'1', "$what: exactly one job for fire time $fire");
}

# The leader is terminated at the fire time plus each of these offsets (ms).
my @rounds;
for my $delta (-100, -10, 0, 10, 100)
{
	wait_both_candidates($node);
	my $leader = component_pid($node, 'leader');
	# the next whole second at least 300 ms away, never a whole minute (the
	# schedule's own fire times)
	my $fire = int(time + 0.3) + 1;
	$fire++ if $fire % 60 == 0;
	set_fire($fire);
	my $kill_at = $fire + $delta / 1000;
	my $wait = $kill_at - time;
	usleep(int($wait * 1e6)) if $wait > 0;    # timing the fault, not waiting for work
	my $sent = time;
	$session->query_safe("SELECT pg_terminate_backend($leader)");
	note(sprintf('round %+d ms: leader %d terminated %.1f ms after the fire time',
		$delta, $leader, ($sent - $fire) * 1000));
	wait_fired($fire, sprintf('leader killed at fire time %+d ms', $delta));
	my $created = $node->safe_psql('postgres',
		"SELECT extract(epoch FROM created_at) FROM jobq.jobs WHERE unique_key = '" . key_of($fire) . "'");
	note(sprintf('round %+d ms: its job was enqueued %.1f ms %s the termination (by the %s leader)',
		$delta, abs($created - $sent) * 1000, $created < $sent ? 'before' : 'after',
		$created < $sent ? 'old' : 'new'));
	push @rounds, $fire;
}

# Made due and the leader killed straight away, in one go.  The fire time
# is the current second, which must be one never fired before (a rewound
# schedule fires its time again) and not near a whole minute (the
# schedule's own fire times): wait for such a second with half of it left.
wait_both_candidates($node);
ok( wait_until(
		sub {
			my $t = time;
			return int($t) > $rounds[-1] && int($t) % 60 != 0 && int($t) % 60 != 59 && $t - int($t) < 0.5;
		}),
	'a fresh second to fire at');
{
	my $leader = component_pid($node, 'leader');
	my $fire = $session->query_safe(qq{
	BEGIN;
	UPDATE jobq.schedules SET next_fire_at = date_trunc('second', now()) WHERE name = 'tick'
		RETURNING extract(epoch FROM next_fire_at)::int8;
	SELECT jobq._wake_leader_at_commit();
	COMMIT;
	SELECT pg_terminate_backend($leader);});
	($fire) = $fire =~ /^(\d+)/;
	wait_fired($fire, 'made due and the leader killed at once');
	push @rounds, $fire;
}

# Every fire time: one job, which ran once.
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT unique_key FROM jobq.jobs WHERE unique_key IS NOT NULL
						  GROUP BY unique_key HAVING count(*) > 1) dup}),
	'0', 'no fire time has more than one job');
ok( $node->poll_query_until('postgres',
		q{SELECT bool_and(state = 'completed') FROM jobq.jobs WHERE kind = 'effect'}),
	'every fired job completed');
is( $node->safe_psql('postgres', q{
	SELECT count(*) = count(DISTINCT e.job_id) AND count(*) = (SELECT count(*) FROM jobq.jobs)
	  FROM app.effects e}),
	't', 'each ran exactly once');
is( $node->safe_psql('postgres', q{SELECT next_fire_at > now() FROM jobq.schedules WHERE name = 'tick'}),
	't', 'next_fire_at is in the future');

# --- downtime: one catch-up job, no back-fill -----------------------------
my $jobs_before = $node->safe_psql('postgres', 'SELECT max(id) FROM jobq.jobs');
my ($missed, $updated_at) = split /\|/, $session->query_safe(q{
	BEGIN;
	UPDATE jobq.schedules SET next_fire_at = date_trunc('minute', now()) - interval '1 hour' + interval '17 s'
	 WHERE name = 'tick'
	RETURNING extract(epoch FROM next_fire_at)::int8, extract(epoch FROM now());
	SELECT jobq._wake_leader_at_commit();
	COMMIT;});
($updated_at) = $updated_at =~ /^([\d.]+)/;
wait_fired($missed, 'an hour of downtime');
is( $node->safe_psql('postgres', qq{
	SELECT count(*) FROM jobq.jobs
	 WHERE id > $jobs_before AND split_part(unique_key, ':', 3)::int8 < $updated_at}),
	'1', 'one catch-up job for the missed fire times, not one per minute');
is( $node->safe_psql('postgres', qq{
	SELECT next_fire_at > now() AND next_fire_at <= now() + interval '60 s'
	       AND extract(second FROM next_fire_at) = 0,
	       last_fire_at = to_timestamp($missed)
	  FROM jobq.schedules WHERE name = 'tick'}),
	't|t', 'next_fire_at is the next whole minute; last_fire_at the missed time');

$session->quit;
$node->stop;
done_testing();
