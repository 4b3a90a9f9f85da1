# A worker lost in the middle of a long handler: terminated
# (pg_terminate_backend), then killed with SIGKILL (which crash-restarts the
# server).  Each time the job is rescued (an error entry with "lost": true)
# and then completes; no job is lost; and no job ever runs in two workers at
# once.  Rescue delays are measured and printed.
#
# Runs are recorded through a side channel that survives rollback: the
# handler writes a LOG line when it starts and when it ends; the postmaster
# logs when each worker process died.  A run ends at its end line, or, if
# its attempt was lost, when its process died.  The runs of one job must
# not overlap.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use Time::Local qw(timegm);
use JSON::PP;

my $node = jobq_node('workerloss',
	conf => "log_timezone = 'UTC'\nrestart_after_crash = on\n");
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
-- one row per committed run; a second committed run of a job would fail
CREATE TABLE app.done (job_id bigint PRIMARY KEY, attempt int, pid int,
					   started numeric, ended numeric);
CREATE FUNCTION app.tracked(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
	t0 numeric := extract(epoch FROM clock_timestamp());
BEGIN
	RAISE LOG 'jobqtest run start job=% attempt=% pid=% at=%', job.id, job.attempt, pg_backend_pid(), t0;
	IF job.attempt <= coalesce((args->>'sleep_attempts')::int, 0) THEN
		PERFORM pg_sleep((args->>'sleep')::float8);
	END IF;
	INSERT INTO app.done VALUES (job.id, job.attempt, pg_backend_pid(), t0,
								 extract(epoch FROM clock_timestamp()));
	RAISE LOG 'jobqtest run end job=% attempt=% pid=% at=%', job.id, job.attempt,
		pg_backend_pid(), extract(epoch FROM clock_timestamp());
END $$;
SELECT jobq.register('tracked', 'app.tracked(jsonb)');

CREATE SCHEMA t;
-- Terminates the worker running job j and measures, in the server, how
-- long until the job is given back (retryable), available, and running again.
CREATE FUNCTION t.terminate_and_measure(j bigint, timeout interval,
	OUT worker int, OUT retryable_ms float8, OUT available_ms float8, OUT rerun_ms float8)
LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	s jobq.job_state;
	a int;
BEGIN
	SELECT pid INTO worker FROM jobq.components
	 WHERE database = current_database() AND job_id = j;
	IF worker IS NULL THEN
		RAISE EXCEPTION 'job % is not running in a worker', j;
	END IF;
	t0 := clock_timestamp();
	PERFORM pg_terminate_backend(worker);
	LOOP
		SELECT state, attempt INTO s, a FROM jobq.jobs WHERE id = j;
		IF retryable_ms IS NULL AND s <> 'running' THEN
			retryable_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
		END IF;
		IF available_ms IS NULL AND (s = 'available' OR a > 1) THEN
			available_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
		END IF;
		IF a > 1 THEN
			rerun_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
			RETURN;
		END IF;
		IF clock_timestamp() > t0 + timeout THEN
			RAISE EXCEPTION 'job % not rescued and claimed again within %', j, timeout;
		END IF;
		PERFORM pg_sleep(0.002);
	END LOOP;
END $$;
});

# The server log from $offset as {at (epoch), pid, text}.
sub log_lines
{
	my ($offset) = @_;
	my @out;
	for my $line (split /\n/, slurp_file($node->logfile, $offset // 0))
	{
		next unless $line =~ /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3}) UTC \[(\d+)\] [^:]*?(?:LOG|WARNING|ERROR|FATAL):\s+(.*)$/;
		push @out, { at => timegm($6, $5, $4, $3, $2 - 1, $1) + $7 / 1000, pid => $8, text => $9 };
	}
	return @out;
}

# Checks that no two runs of a job overlap; returns a list of problems.
sub check_runs
{
	my ($offset, $errors_of) = @_;
	my (%start, %end, %death, @resets);
	for my $l (log_lines($offset))
	{
		if ($l->{text} =~ /^jobqtest run (start|end) job=(\d+) attempt=(\d+) pid=(\d+) at=([\d.]+)$/)
		{
			if ($1 eq 'start') { $start{$2}{$3} = { pid => $4, at => $5 } }
			else { $end{$2}{$3} = $5 }
		}
		elsif ($l->{text} =~ /\(PID (\d+)\) (?:exited with exit code|was terminated by signal)/)
		{
			push @{ $death{$1} }, $l->{at};
		}
		elsif ($l->{text} =~ /all server processes terminated; reinitializing/)
		{
			push @resets, $l->{at};
		}
	}
	my @problems;
	my $nruns = 0;
	for my $job (sort { $a <=> $b } keys %start)
	{
		my %lost = map { $_->{attempt} => 1 } grep { $_->{lost} } @{ $errors_of->{$job} // [] };
		my @runs;
		for my $attempt (sort { $a <=> $b } keys %{ $start{$job} })
		{
			my $r = $start{$job}{$attempt};
			my $until;
			if ($lost{$attempt})
			{
				# the process died: its first exit (or a server reset) after the start
				($until) = sort { $a <=> $b } grep { $_ >= $r->{at} - 0.001 }
				  (@{ $death{ $r->{pid} } // [] }, @resets);
				push @problems, "job $job attempt $attempt was lost, but its process $r->{pid} never died"
				  unless defined $until;
			}
			else
			{
				$until = $end{$job}{$attempt};
				push @problems, "job $job attempt $attempt neither ended nor was lost"
				  unless defined $until;
			}
			push @runs, [ $attempt, $r->{at}, $until // 9e9, $r->{pid} ];
			$nruns++;
		}
		for my $i (1 .. $#runs)
		{
			for my $j (0 .. $i - 1)
			{
				push @problems,
				  sprintf('job %d: attempt %d (pid %d) started at %.6f, before attempt %d (pid %d) ended at %.6f',
					$job, $runs[$i][0], $runs[$i][3], $runs[$i][1], $runs[$j][0], $runs[$j][3], $runs[$j][2])
				  if $runs[$i][1] < $runs[$j][2];
			}
		}
	}
	return ($nruns, @problems);
}

sub enqueue_round
{
	my ($tag) = @_;
	return $node->safe_psql('postgres', qq{
	SELECT jobq.enqueue('tracked', '{"tag": "$tag", "sleep": 60, "sleep_attempts": 1}');
	SELECT jobq.enqueue('tracked', jsonb_build_object('tag', '$tag', 'sleep', 1, 'sleep_attempts', 99))
	  FROM generate_series(1, 6);
	SELECT jobq.enqueue('tracked', jsonb_build_object('tag', '$tag', 'i', g)) FROM generate_series(1, 30) g;
	}) =~ /^(\d+)/ ? $1 : die 'no job id';
}

sub wait_running_in_worker
{
	my ($job) = @_;
	my $pid;
	ok( JobqTest::wait_until(
			sub {
				$pid = $node->safe_psql('postgres',
					"SELECT pid FROM jobq.components WHERE database = current_database() AND job_id = $job");
				return $pid ne '';
			}),
		"job $job runs in a worker");
	return $pid;
}

my $offset = -s $node->logfile;

# --- a worker terminated in the middle of a long handler ----------------
my $ja = enqueue_round('terminate');
wait_running_in_worker($ja);
my ($worker, $retryable_ms, $available_ms, $rerun_ms) = split /\|/,
  $node->safe_psql('postgres', "SELECT * FROM t.terminate_and_measure($ja, '$JobqTest::TIMEOUT s')");
diag(sprintf('FIGURE rescue after pg_terminate_backend of worker %d: job retryable after %.1f ms, '
	  . 'available after %.1f ms (retry backoff ~1 s), running again after %.1f ms',
	$worker, $retryable_ms, $available_ms, $rerun_ms));
cmp_ok($retryable_ms, '<', 5000, 'the job of the terminated worker was given back within 5 s');
is(wait_job($node, $ja), 'completed', 'the rescued job completed');
is( $node->safe_psql('postgres', qq{
	SELECT attempt, jsonb_array_length(errors), errors -> 0 ->> 'lost', errors -> 0 ->> 'attempt'
	  FROM jobq.jobs WHERE id = $ja}),
	'2|1|true|1',
	'it took a second attempt, after one "lost" error entry for attempt 1');

# --- a worker killed with SIGKILL: the server crash-restarts ------------
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM jobq.jobs WHERE state NOT IN ('completed', 'discarded', 'cancelled')}),
	'the first round finished');
my $jb = enqueue_round('kill9');
my $victim = wait_running_in_worker($jb);
my $kill_offset = -s $node->logfile;
my $t_kill = time;
is(kill('KILL', $victim), 1, "SIGKILL sent to worker $victim");
# the postmaster has noticed the crash: connections before would still succeed
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $kill_offset);
ok(wait_accepting($node), 'the server accepts connections again');
my $t_up = time;
ok(wait_ready($node), 'jobq is ready after the crash restart');
my $t_ready = time;
is(wait_job($node, $jb), 'completed', 'the job of the killed worker completed');
my ($rescued_at, $rerun_at) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT extract(epoch FROM (j.errors -> 0 ->> 'at')::timestamptz), d.started
	  FROM jobq.jobs j JOIN app.done d ON d.job_id = j.id WHERE j.id = $jb});
diag(sprintf('FIGURE rescue after SIGKILL of worker %d (crash restart): server up after %.1f s, '
	  . 'jobq ready after %.1f s, job retryable after %.1f s, running again after %.1f s',
	$victim, $t_up - $t_kill, $t_ready - $t_kill, $rescued_at - $t_kill, $rerun_at - $t_kill));
is( $node->safe_psql('postgres', qq{
	SELECT attempt, jsonb_array_length(errors), errors -> 0 ->> 'lost', errors -> 0 ->> 'attempt'
	  FROM jobq.jobs WHERE id = $jb}),
	'2|1|true|1',
	'it took a second attempt, after one "lost" error entry for attempt 1');
like(slurp_file($node->logfile, $offset), qr/was terminated by signal 9: Killed/,
	'the server log shows the SIGKILL');

# --- a live worker's long job is never taken from it ---------------------
# While it runs, another worker is terminated (the rescuer is woken) and
# the leader is terminated (the new leader's rescuer runs at once).
my $live = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('tracked', '{"tag": "live", "sleep": 4, "sleep_attempts": 1}')});
my $live_worker = wait_running_in_worker($live);
my $other = $node->safe_psql('postgres', qq{
	SELECT pid FROM jobq.components WHERE database = current_database()
	   AND component LIKE 'worker%' AND pid IS NOT NULL AND pid <> $live_worker LIMIT 1});
my $leader = $node->safe_psql('postgres',
	q{SELECT pid FROM jobq.components WHERE database = current_database() AND component = 'leader'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($other), pg_terminate_backend($leader)");
ok( $node->poll_query_until('postgres', qq{
	SELECT count(*) = 1 FROM jobq.components
	 WHERE database = current_database() AND component = 'leader' AND pid <> $leader}),
	'a new leader took over while the long job runs');
is(wait_job($node, $live), 'completed', 'the long job of the live worker completed');
is($node->safe_psql('postgres', "SELECT attempt, errors FROM jobq.jobs WHERE id = $live"),
	'1|[]', 'at its first attempt, never rescued');

# --- nothing lost, nothing run twice --------------------------------------
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM jobq.jobs WHERE state NOT IN ('completed', 'discarded', 'cancelled')}),
	'every job is final');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE state = 'completed'), count(*)
	  FROM jobq.jobs}),
	'75|75', 'all 75 jobs completed');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.jobs j JOIN app.done d ON d.job_id = j.id AND d.attempt = j.attempt}),
	'75', 'each job has exactly one committed run, from its last attempt');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.jobs j, jsonb_array_elements(j.errors) e
	 WHERE NOT coalesce((e ->> 'lost')::boolean, false)}),
	'0', 'every error entry is a lost worker (no handler failed)');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.jobs WHERE jsonb_array_length(errors) <> attempt - 1}),
	'0', 'each job has one error entry per attempt before the last');
note('jobs rescued: '
	  . $node->safe_psql('postgres', q{SELECT count(*) FROM jobq.jobs WHERE errors <> '[]'}));

my $errors_of = {};
for my $row (split /\n/, $node->safe_psql('postgres', q{SELECT id, errors FROM jobq.jobs}))
{
	my ($id, $errors) = split /\|/, $row, 2;
	$errors_of->{$id} = decode_json($errors);
}
my ($nruns, @problems) = check_runs($offset, $errors_of);
cmp_ok($nruns, '>=', 77, "$nruns handler runs found in the log");
is(scalar(@problems), 0, 'no two runs of a job overlapped in time')
  or diag(join("\n", @problems));

$node->stop;
done_testing();
