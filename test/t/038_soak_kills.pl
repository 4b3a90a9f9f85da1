# Soak: 20,000 jobs enqueued by concurrent sessions while workers and the
# leader are terminated at random intervals.  Every job ends completed and
# its effect exists exactly once (a UNIQUE job id in the effects table makes
# a second committed run fail loudly), and no job ever ran in two workers at
# once (runs logged through the server log, which survives rollback).
# Throughput, kills, rescues and rescue delays under load are printed.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time usleep);
use Time::Local qw(timegm);

my $JOBS = 20_000;
my $SESSIONS = 4;
my $seed = $ENV{JOBQ_SOAK_SEED} // int(time) % 100000;
srand($seed);
note("random seed $seed (set JOBQ_SOAK_SEED to repeat)");

my $node = jobq_node('soak', workers => 4, conf => "log_timezone = 'UTC'\n");
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint NOT NULL UNIQUE, attempt int, pid int,
						  at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION app.soak(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	RAISE LOG 'jobqtest run start job=% attempt=% pid=% at=%', job.id, job.attempt,
		pg_backend_pid(), extract(epoch FROM clock_timestamp());
	PERFORM pg_sleep(0.002);	-- some work, so that kills find jobs in flight
	INSERT INTO app.effects (job_id, attempt, pid) VALUES (job.id, job.attempt, pg_backend_pid());
	RAISE LOG 'jobqtest run end job=% attempt=% pid=% at=%', job.id, job.attempt,
		pg_backend_pid(), extract(epoch FROM clock_timestamp());
END $$;
SELECT jobq.register('soak', 'app.soak(jsonb)', backoff_max => '200 ms');

CREATE SCHEMA t;
CREATE TABLE t.load_done (session int);
-- Enqueues njobs in transactions of batch jobs, paced; even sessions one
-- enqueue() per job, odd ones enqueue_many().
CREATE PROCEDURE t.load(session int, njobs int, batch int, pause float8) LANGUAGE plpgsql AS $$
DECLARE
	i int := 0;
BEGIN
	WHILE i < njobs LOOP
		IF session % 2 = 0 THEN
			PERFORM jobq.enqueue('soak', jsonb_build_object('s', session, 'i', i + g))
			   FROM generate_series(0, batch - 1) g;
		ELSE
			PERFORM jobq.enqueue_many('soak', ARRAY(
				SELECT jsonb_build_object('s', session, 'i', i + g) FROM generate_series(0, batch - 1) g));
		END IF;
		i := i + batch;
		COMMIT;
		PERFORM pg_sleep(pause);	-- pacing the load, so that kills hit it throughout
	END LOOP;
	INSERT INTO t.load_done VALUES (session);
END $$;
});

my $offset = -s $node->logfile;
my $ctl = $node->background_psql('postgres');

my @loaders;
my $t_start = time;
for my $s (1 .. $SESSIONS)
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-c', sprintf('CALL t.load(%d, %d, 25, 0.05)', $s, $JOBS / $SESSIONS) ],
		'>', \$out, '2>', \$err);
	push @loaders, [ $h, \$out, \$err ];
}

# Kill at random while the load runs and a little after: a busy worker when
# at least three of the four run, the leader when the other candidate runs.
my (@kills, %killed);
my $deadline = time + $JobqTest::TIMEOUT;
my $load_done_at;
while (time < $deadline)
{
	my $done = $ctl->query_safe('SELECT count(*) FROM t.load_done');
	$load_done_at //= time if $done == $SESSIONS;
	last if $load_done_at && time > $load_done_at + 3;

	usleep(300_000 + int(rand(900_000)));    # the interval between faults
	my @c = map { [ split /\|/ ] } split /\n/, $ctl->query_safe(q{
		SELECT component, coalesce(pid, 0), state FROM jobq.components
		 WHERE database = current_database() AND component !~ '^(scheduler|rescuer|cleaner|periodic)$'});
	my @workers = grep { $_->[0] =~ /^worker/ && $_->[1] } @c;
	my @busy = grep { $_->[2] eq 'busy' } @workers;
	my ($leader) = grep { $_->[0] eq 'leader' } @c;
	my @other = grep { $_->[0] =~ /^candidate/ && $_->[1] } @c;
	my $victim;
	if (rand() < 0.25)
	{
		$victim = [ 'leader', $leader->[1] ] if $leader && @other;
	}
	elsif (@workers >= 3)
	{
		my @pool = @busy ? @busy : @workers;
		$victim = [ 'worker', $pool[ int(rand(@pool)) ][1] ];
	}
	next unless $victim;
	my ($at, $ok) = split /\|/,
	  $ctl->query_safe("SELECT extract(epoch FROM clock_timestamp()), pg_terminate_backend($victim->[1])");
	push @kills, { what => $victim->[0], pid => $victim->[1], at => $at } if $ok eq 't';
	$killed{ $victim->[0] }++ if $ok eq 't';
}
ok($load_done_at, 'all load sessions finished enqueueing');
for my $l (@loaders)
{
	my ($h, $out, $err) = @$l;
	ok($h->finish && $$err eq '', 'a load session succeeded') or diag($$err);
}
my $t_load = ($load_done_at // time) - $t_start;
note(sprintf('%d kills: %d workers, %d leaders', scalar(@kills), $killed{worker} // 0, $killed{leader} // 0));
cmp_ok($killed{worker} // 0, '>=', 5, 'workers were killed during the load');
cmp_ok($killed{leader} // 0, '>=', 1, 'the leader was killed during the load');

# Now let it finish.
ok( $node->poll_query_until('postgres',
		qq{SELECT count(*) = $JOBS FROM jobq.jobs WHERE state = 'completed'}),
	"all $JOBS jobs completed")
  or diag($node->safe_psql('postgres', 'SELECT state, count(*) FROM jobq.jobs GROUP BY state'));
my $t_all = time - $t_start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM jobq.jobs'), $JOBS, "there are exactly $JOBS jobs");
is( $node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT job_id), count(*) FILTER (WHERE e.attempt = j.attempt)
	  FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id}),
	"$JOBS|$JOBS|$JOBS", 'each job has exactly one effect, from its last attempt');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
	 WHERE NOT coalesce((e ->> 'lost')::boolean, false)}),
	'0', 'no attempt failed other than by losing its worker (no duplicate effect was ever tried)');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM jobq.jobs WHERE jsonb_array_length(errors) <> attempt - 1}),
	'0', 'each job has one "lost" entry per attempt before its last');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT args->>'s', args->>'i' FROM jobq.jobs GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'every enqueued job is there once');

my ($rescued, $lost_entries) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE errors <> '[]'), sum(jsonb_array_length(errors)) FROM jobq.jobs});
cmp_ok($rescued, '>', 0, "jobs were rescued ($rescued jobs, $lost_entries lost attempts)");

# Rescue delays: each "lost" entry against the last worker kill before it.
my @worker_kills = sort { $a <=> $b } map { $_->{at} } grep { $_->{what} eq 'worker' } @kills;
my @delays;
for my $at (split /\n/, $node->safe_psql('postgres', q{
	SELECT DISTINCT extract(epoch FROM (e ->> 'at')::timestamptz)
	  FROM jobq.jobs, jsonb_array_elements(errors) e}))
{
	my ($kill) = grep { $_ <= $at } reverse @worker_kills;
	push @delays, ($at - $kill) * 1000 if defined $kill;
}
@delays = sort { $a <=> $b } @delays;
diag(sprintf('FIGURE soak: %d jobs from %d sessions, enqueued in %.1f s, all completed after %.1f s '
	  . '(%.0f jobs/s overall); %d worker kills, %d leader kills; %d jobs rescued (%d lost attempts)',
	$JOBS, $SESSIONS, $t_load, $t_all, $JOBS / $t_all, $killed{worker} // 0, $killed{leader} // 0,
	$rescued, $lost_entries));
diag(sprintf('FIGURE soak rescue delay (worker kill -> jobs retryable), %d rescues: '
	  . 'median %.0f ms, max %.0f ms', scalar(@delays), $delays[ int(@delays / 2) ] // -1, $delays[-1] // -1))
  if @delays;

# No two runs of a job overlapped.
my (%start, %end, %death);
for my $line (split /\n/, slurp_file($node->logfile, $offset))
{
	if ($line =~ /jobqtest run (start|end) job=(\d+) attempt=(\d+) pid=(\d+) at=([\d.]+)$/)
	{
		if ($1 eq 'start') { $start{$2}{$3} = [ $4, $5 ] }
		else { $end{$2}{$3} = $5 }
	}
	elsif ($line =~ /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3}) UTC .*\(PID (\d+)\) (?:exited with exit code|was terminated by signal)/)
	{
		push @{ $death{$8} }, timegm($6, $5, $4, $3, $2 - 1, $1) + $7 / 1000;
	}
}
my %lost;
for my $row (split /\n/, $node->safe_psql('postgres', q{
	SELECT id, e ->> 'attempt' FROM jobq.jobs, jsonb_array_elements(errors) e}))
{
	my ($id, $attempt) = split /\|/, $row;
	$lost{$id}{$attempt} = 1;
}
my (@problems, $nruns);
for my $job (keys %start)
{
	my @runs;
	for my $attempt (sort { $a <=> $b } keys %{ $start{$job} })
	{
		my ($pid, $at) = @{ $start{$job}{$attempt} };
		my $until;
		if ($lost{$job}{$attempt})
		{
			($until) = sort { $a <=> $b } grep { $_ >= $at - 0.001 } @{ $death{$pid} // [] };
			push @problems, "job $job attempt $attempt was lost but process $pid never died" unless defined $until;
		}
		else
		{
			$until = $end{$job}{$attempt};
			push @problems, "job $job attempt $attempt neither ended nor was lost" unless defined $until;
		}
		push @runs, [ $attempt, $at, $until // 9e9 ];
		$nruns++;
	}
	for my $i (1 .. $#runs)
	{
		push @problems, "job $job: attempt $runs[$i][0] started at $runs[$i][1], before attempt $runs[$_][0] ended at $runs[$_][2]"
		  for grep { $runs[$i][1] < $runs[$_][2] } 0 .. $i - 1;
	}
}
cmp_ok($nruns // 0, '>=', $JOBS, "$nruns handler runs found in the log");
is(scalar(keys %start), $JOBS, 'every job ran at least once');
is(scalar(@problems), 0, 'no two runs of a job overlapped in time')
  or diag(join("\n", @problems[ 0 .. ($#problems < 20 ? $#problems : 20) ]));

my $leaders = () = slurp_file($node->logfile, $offset) =~ /jobq candidate \d is now the leader/g;
note("leadership changed hands $leaders times");

$ctl->quit;
$node->stop;
done_testing();
