# Timing: jobs scheduled in the future run when due and never before, and a
# failed job's next attempt starts no sooner than its backoff after the
# failure.  Lateness figures are printed.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;

my $node = jobq_node('timing', conf => "log_timezone = 'UTC'\n");
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
-- one row per committed run: when the handler started, and the
-- scheduled_at the job had when it was claimed
CREATE TABLE app.runs (job_id bigint PRIMARY KEY, attempt int,
					   started timestamptz, scheduled_at timestamptz);
-- Fails until attempt args->>'fail'; the error message carries the
-- attempt's start time and the scheduled_at it ran for, so the failed
-- attempts (rolled back) are timed too.
CREATE FUNCTION app.timed(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
	t0 timestamptz := clock_timestamp();
BEGIN
	IF job.attempt <= coalesce((args->>'fail')::int, 0) THEN
		RAISE EXCEPTION 'attempt % started=% scheduled=%', job.attempt,
			extract(epoch FROM t0), extract(epoch FROM job.scheduled_at);
	END IF;
	INSERT INTO app.runs VALUES (job.id, job.attempt, t0, job.scheduled_at);
END $$;
SELECT jobq.register('timed', 'app.timed(jsonb)');                                -- attempt^4 s
SELECT jobq.register('timed_capped', 'app.timed(jsonb)', backoff_max => '3 s');  -- at most 3 s
});

# Failing jobs first, so that their retries (checked below) go on meanwhile:
# timed: attempt 1 fails, retry after 1 s (+ up to 10%)
# timed_capped: attempts 1-3 fail, retries after 1 s, min(16 s, 3 s), min(81 s, 3 s)
my $plain = $node->safe_psql('postgres', q{SELECT jobq.enqueue('timed', '{"fail": 1}')});
my $capped = $node->safe_psql('postgres', q{SELECT jobq.enqueue('timed_capped', '{"fail": 3}')});

# --- scheduled jobs ----------------------------------------------------
my @sched = split /\n/, $node->safe_psql('postgres', q{
	SELECT jobq.enqueue('timed', '{}', run_at => now() + d * interval '1 s')
	  FROM unnest(ARRAY[3, 1, 2, 3]) d});
is( $node->safe_psql('postgres',
		'SELECT string_agg(state::text, \',\' ORDER BY id) FROM jobq.jobs WHERE id IN (' . join(',', @sched) . ')'),
	'scheduled,scheduled,scheduled,scheduled',
	'future jobs wait in state scheduled');
# a job due now, enqueued after them, runs first
my $now_job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('timed', '{}')});
is(wait_job($node, $now_job), 'completed', 'a job due now runs at once');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM app.runs WHERE job_id IN (" . join(',', @sched) . ')'),
	'0', 'while the future jobs have not run');

is(wait_job($node, $_), 'completed', "scheduled job $_ completed") for @sched;
my @late = split /\n/, $node->safe_psql('postgres', q{
	SELECT j.id, r.started >= j.scheduled_at, r.scheduled_at = j.scheduled_at,
		   extract(epoch FROM r.started - j.scheduled_at) * 1000
	  FROM jobq.jobs j JOIN app.runs r ON r.job_id = j.id
	 WHERE j.id IN (} . join(',', @sched) . ') ORDER BY j.id');
is(scalar(@late), 4, 'each scheduled job ran once');
for my $row (@late)
{
	my ($id, $not_before, $same, $ms) = split /\|/, $row;
	is($not_before, 't', "job $id did not start before its run_at");
	is($same, 't', "job $id ran for the run_at it was enqueued with");
	cmp_ok($ms, '<', 3000, "job $id started within 3 s of its run_at");
	note(sprintf('scheduled job %d started %.1f ms after its run_at', $id, $ms));
}
my @lateness = sort { $a <=> $b } map { (split /\|/)[3] } @late;
diag(sprintf('FIGURE scheduled jobs: started %.1f to %.1f ms after run_at', $lateness[0], $lateness[-1]));

# --- retry backoff -----------------------------------------------------
is(wait_job($node, $plain), 'completed', 'the job failing once completed on its second attempt');
is(wait_job($node, $capped), 'completed', 'the job failing three times completed on its fourth attempt');

my $json = JSON::PP->new;
for my $case ([ $plain, 2, [1] ], [ $capped, 4, [ 1, 3, 3 ] ])
{
	my ($id, $attempts, $backoffs) = @$case;
	my ($attempt, $errors, $started, $scheduled) = split /\|/, $node->safe_psql('postgres', qq{
		SELECT j.attempt, j.errors, extract(epoch FROM r.started), extract(epoch FROM r.scheduled_at)
		  FROM jobq.jobs j JOIN app.runs r ON r.job_id = j.id WHERE j.id = $id});
	is($attempt, $attempts, "job $id completed at attempt $attempts");
	my @errors = @{ $json->decode($errors) };
	is(scalar(@errors), $attempts - 1, "job $id has one error per failed attempt");
	# start and scheduled_at of every attempt; failure time of every failed one
	my (@start, @sched_at, @failed_at);
	for my $e (@errors)
	{
		my ($n, $s, $sch) = $e->{message} =~ /^attempt (\d+) started=([\d.]+) scheduled=([\d.]+)$/
		  or die "unexpected error message: $e->{message}";
		is($e->{attempt}, $n, "job $id: error entry for attempt $n");
		is($e->{sqlstate}, 'P0001', "job $id attempt $n: its sqlstate is recorded");
		push @start, $s;
		push @sched_at, $sch;
		push @failed_at, $node->safe_psql('postgres', "SELECT extract(epoch FROM '$e->{at}'::timestamptz)");
	}
	push @start, $started;
	push @sched_at, $scheduled;
	for my $k (1 .. $attempts - 1)
	{
		my $backoff = $backoffs->[ $k - 1 ];
		my $wait = $start[$k] - $failed_at[ $k - 1 ];
		my $planned = $sched_at[$k] - $failed_at[ $k - 1 ];
		note(sprintf('job %d: attempt %d failed; retried after %.3f s (planned %.3f s, backoff %d s)',
			$id, $k, $wait, $planned, $backoff));
		cmp_ok($start[$k], '>=', $sched_at[$k], "job $id: attempt @{[$k + 1]} started no sooner than its scheduled_at");
		# 1 ms of slack: the failure's "at" is taken a moment after the
		# clock reading that scheduled_at is computed from
		cmp_ok($wait, '>=', $backoff - 0.001,
			"job $id: attempt @{[$k + 1]} started at least $backoff s after attempt $k failed");
		cmp_ok($planned, '<=', $backoff * 1.1 + 0.001, "job $id: the planned backoff has at most 10% jitter");
		cmp_ok($wait, '<', $backoff * 1.1 + 3, "job $id: attempt @{[$k + 1]} did not wait much longer than planned");
	}
}

$node->stop;
done_testing();
