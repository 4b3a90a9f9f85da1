# A snapshot held by another session (a long report, an idle REPEATABLE
# READ transaction, a replica's hot_standby_feedback) keeps every dead
# version of jobq.jobs.  The claim must not walk them: jobs drain at a rate
# that holds, and each claimed job costs a bounded number of entries read
# from jobs_available, whatever was claimed before while the snapshot was
# held (without the claim cursor of worker.c, round 4 reads hundreds per
# job: every claim walks every job claimed since the snapshot).
#
# 4 workers; a fresh round of $JOBS no-op jobs, then the snapshot is taken
# and 4 rounds run under it, then one after it ends.  The rates are
# reported, and asserted only with a wide margin (a noisy 2-core machine);
# the entries read per job are the exact measure.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $JOBS = 20000;
my $MAX_ENTRIES_PER_JOB = 50;	# measured ~2-20 with the cursor, ~500+ without

my $node = jobq_node('held_snapshot', workers => 4);
jobq_install($node);
$node->safe_psql('postgres', q{
CREATE FUNCTION noop(args jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT jobq.register('noop', 'noop(jsonb)');
});

sub entries_read
{
	return $node->safe_psql('postgres', q{
		SELECT idx_tup_read FROM pg_stat_user_indexes
		 WHERE schemaname = 'jobq' AND indexrelname = 'jobs_available'});
}

# The workers flush their statistics at most once a second, when they end a
# transaction (idle ones do so every poll): wait until the count is stable.
sub settled_entries_read
{
	my $last = entries_read();
	for (1 .. 20)
	{
		sleep 1.5;
		my $now = entries_read();
		return $now if $now == $last;
		$last = $now;
	}
	return $last;
}

# Enqueues $JOBS jobs into the paused queue, resumes it, waits for all of
# them; returns (jobs per second, entries of jobs_available read per job).
sub round
{
	my ($name) = @_;
	$node->safe_psql('postgres', "SELECT jobq.pause('default')");
	my $last = $node->safe_psql('postgres', qq{
		SELECT max(id) FROM unnest(jobq.enqueue_many('noop',
			(SELECT array_agg('{}'::jsonb) FROM generate_series(1, $JOBS)))) id});
	my $before = settled_entries_read();
	my $t0 = time;
	$node->safe_psql('postgres', "SELECT jobq.resume('default')");
	my $done = wait_until(sub {
		$node->safe_psql('postgres', qq{
			SELECT count(*) = 0 FROM jobq.jobs WHERE id <= $last AND state <> 'completed'}) eq 't';
	}, 120);
	my $secs = time - $t0;
	ok($done, "$name: all $JOBS jobs completed");
	my $per_job = (settled_entries_read() - $before) / $JOBS;
	my $rate = $JOBS / $secs;
	note(sprintf("%s: %.0f jobs/s, %.1f entries of jobs_available read per job", $name, $rate, $per_job));
	return ($rate, $per_job);
}

ok(wait_ready($node), 'jobq is ready');
my ($fresh) = round('fresh');

my $holder = $node->background_psql('postgres', timeout => 600);
$holder->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$holder->query_safe('SELECT count(*) FROM pg_class');

my @held;
push @held, [ round("held snapshot, round $_") ] for 1 .. 4;
my $dead = $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.jobs WHERE state = 'completed'});
cmp_ok($dead, '>=', 4 * $JOBS, 'the held snapshot kept the jobs of every round');

for my $r (1 .. 4)
{
	cmp_ok($held[ $r - 1 ][1], '<=', $MAX_ENTRIES_PER_JOB,
		"held snapshot, round $r: a bounded number of index entries read per job");
}
cmp_ok($held[3][0], '>=', 0.25 * $fresh, 'round 4 under the snapshot drains at least a quarter as fast as fresh');
cmp_ok($held[3][0], '>=', 0.25 * $held[0][0], 'round 4 drains at least a quarter as fast as round 1');

$holder->query_safe('COMMIT');
$holder->quit;
my ($after) = round('after the snapshot ended');
cmp_ok($after, '>=', 0.25 * $fresh, 'after the snapshot ends, jobs drain at least a quarter as fast as fresh');

$node->stop;
done_testing();
