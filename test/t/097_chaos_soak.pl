# Chaos soak, bounded for CI (about 60-120 s on 2 cores).
#
# 4 workers, jobq.timeout_grace = 1s.  A producer enqueues jobs of several
# kinds for the whole run (about 130 jobs/s; each batch of jobs and its
# record in t.enqueued commit together):
#   quick    returns at once
#   sleepy   pg_sleep 1-20 ms
#   flaky    raises at its first 1 or 2 attempts, then succeeds (~10%)
#   giveup   jobq.give_up() (0.5%)
#   snoozer  jobq.snooze('100 ms') while its snoozes = 0, then succeeds
#   limited  in queue "limited" (concurrency 2), pg_sleep 2-8 ms
#   hog      (a few, kind timeout 200 ms) catches query_canceled forever at
#            its first attempt, then succeeds
# Every handler first inserts (job_id, attempt, the settings it sees) into
# app.effects in its transaction; every kind allows 50 attempts, so every job
# must end completed unless it gave up or the chaos loop cancelled it.
#
# Meanwhile a chaos loop mixes, between short random pauses:
#   frequent: pg_cancel_backend() of a worker (a busy one mostly) and of the
#     leader, pg_terminate_backend() of the leader (when the other candidate
#     runs), jobq.cancel() of a random running job, of a waiting one when
#     none runs (recorded in t.cancels in the same statement, so the record
#     commits with the cancel);
#   rare, one at a time in random order: kill -9 of a worker (crash restart)
#     twice, a server restart in immediate mode (twice: once on its own, once
#     to apply default_transaction_read_only), jobq.debug_fail_batch on for a
#     moment (twice), and ALTER DATABASE SET lock_timeout '20ms',
#     default_transaction_isolation 'serializable' and
#     default_transaction_read_only on, each held for a few seconds while
#     jobq's processes reconnect under it (terminated, or the restart), then
#     RESET.  The test's own sessions override these settings (PGOPTIONS).
# Each iteration samples jobq.components and the jobs: running jobs without
# a live holder (their age), running jobs of the concurrency-2 queue, and
# whether a worker / leader cancelled at the previous iteration is still the
# same process (pg_cancel_backend is absorbed).
#
# Afterwards (settings RESET, server up), once no job is scheduled,
# available, running or retryable:
#   - no job lost: every job of t.enqueued exists and is final, and there is
#     no other; discarded only when it gave up; cancelled exactly when
#     jobq.cancel() returned true for it; every other job completed;
#   - no duplicated effect: a completed job has exactly one effects row, from
#     its last attempt; discarded and cancelled ones have none;
#   - no job running without a holder; attempt <= max_attempts; one error
#     entry per failed attempt (no attempt recorded twice);
#   - kind specifics: a completed flaky job ran past its failing attempts, a
#     completed snoozer snoozed, a completed hog needed a second attempt;
#     handlers ran in READ COMMITTED, never with jobq's own lock_timeout;
#   - the server never crashed other than by our kill -9 (no signal 6/7/8/11,
#     no PANIC), jobq is ready at the end.
# JOBQ_SOAK_SEED repeats a run's choices.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use List::Util qw(shuffle);
use Time::HiRes qw(time usleep);

my $seed = $ENV{JOBQ_SOAK_SEED} // int(time) % 100000;
srand($seed);
note("random seed $seed (set JOBQ_SOAK_SEED to repeat)");

my $CHAOS_MIN = 58;       # s of chaos at least (until the rare events are done)
my $CHAOS_MAX = 200;      # s: a build that stalls the loop fails, it does not hang
my $MAX_JOBS = 10_000;    # the producer stops there at the latest
my $ORPHAN_MAX_AGE = 30;  # s a running job may stay without a live holder
my $QUIESCE = 120;        # s for the last jobs to end once the chaos stopped

my $node = jobq_node('chaos', workers => 4, conf => qq{
jobq.timeout_grace = '1s'
restart_after_crash = on
log_min_messages = log
});
jobq_install($node);

# Our own sessions (safe_psql, the producer, the chaos loop) must not be
# affected by the hostile database settings: client options outrank
# ALTER DATABASE SET.  jobq's processes do not read PGOPTIONS.
$ENV{PGOPTIONS} = '-c default_transaction_read_only=off -c lock_timeout=0 '
  . '-c default_transaction_isolation=read\ committed';

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint NOT NULL, attempt int NOT NULL,
	isolation text, default_isolation text, lock_timeout text,
	at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION app.chaos(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.effects (job_id, attempt, isolation, default_isolation, lock_timeout)
	VALUES (job.id, job.attempt, current_setting('transaction_isolation'),
			current_setting('default_transaction_isolation'), current_setting('lock_timeout'));
	IF job.kind IN ('sleepy', 'limited') THEN
		PERFORM pg_sleep((args->>'sleep')::float8);
	ELSIF job.kind = 'flaky' THEN
		IF job.attempt <= (args->>'fail_until')::int THEN
			RAISE EXCEPTION 'flaky failure at attempt %', job.attempt;
		END IF;
	ELSIF job.kind = 'giveup' THEN
		PERFORM jobq.give_up('chaos gives up');
	ELSIF job.kind = 'snoozer' THEN
		IF job.snoozes = 0 THEN
			PERFORM jobq.snooze(interval '100 ms');
		END IF;
	ELSIF job.kind = 'hog' THEN
		IF job.attempt = 1 THEN
			LOOP
				BEGIN
					PERFORM pg_sleep(3600);
				EXCEPTION WHEN query_canceled THEN
					NULL;
				END;
			END LOOP;
		END IF;
	END IF;
END $$;
SELECT jobq.create_queue('limited', 2);
SELECT jobq.register(k, 'app.chaos(jsonb)', max_attempts => 50, backoff_max => '250 ms')
  FROM unnest(ARRAY['quick', 'sleepy', 'flaky', 'giveup', 'snoozer']) k;
SELECT jobq.register('limited', 'app.chaos(jsonb)', queue => 'limited', max_attempts => 50,
					 backoff_max => '250 ms');
SELECT jobq.register('hog', 'app.chaos(jsonb)', timeout => '200 ms', max_attempts => 50,
					 backoff_max => '250 ms');

CREATE SCHEMA t;
CREATE TABLE t.enqueued (k int PRIMARY KEY, job_id bigint NOT NULL UNIQUE, kind text NOT NULL);
CREATE TABLE t.cancels (job_id bigint NOT NULL, state_before text, ok boolean,
						at timestamptz DEFAULT clock_timestamp());
CREATE TABLE t.stop (stop boolean);
-- The kind and args of the k-th job (a function of k and the seed).
CREATE FUNCTION t.job_for(k int, seed int, OUT kind text, OUT args jsonb) LANGUAGE plpgsql AS $$
DECLARE
	h int := hashint8(k::int8 * 1000003 + seed) & 2147483647;
	m int := h % 1000;
	m2 int := (h / 1000) % 1000;
BEGIN
	args := jsonb_build_object('k', k);
	IF k % 1000 = 500 THEN
		kind := 'hog';
	ELSIF m < 400 THEN
		kind := 'quick';
	ELSIF m < 650 THEN
		kind := 'sleepy';
		args := args || jsonb_build_object('sleep', 0.001 + (m2 % 20) / 1000.0);
	ELSIF m < 750 THEN
		kind := 'flaky';
		args := args || jsonb_build_object('fail_until', 1 + m2 % 2);
	ELSIF m < 755 THEN
		kind := 'giveup';
	ELSIF m < 800 THEN
		kind := 'snoozer';
	ELSE
		kind := 'limited';
		args := args || jsonb_build_object('sleep', 0.002 + (m2 % 7) / 1000.0);
	END IF;
END $$;
-- Enqueues batches until t.stop has a row or total jobs exist; resumes
-- after the last committed batch when called again (after a crash).
CREATE PROCEDURE t.produce(total int, batch int, pause float8, seed int) LANGUAGE plpgsql AS $$
DECLARE
	k0 int;
BEGIN
	LOOP
		SELECT coalesce(max(k), 0) INTO k0 FROM t.enqueued;
		EXIT WHEN k0 >= total OR EXISTS (SELECT FROM t.stop);
		INSERT INTO t.enqueued (k, job_id, kind)
		SELECT g, jobq.enqueue(x.kind, x.args), x.kind
		  FROM generate_series(k0 + 1, least(k0 + batch, total)) g, t.job_for(g, seed) x;
		COMMIT;
		PERFORM pg_sleep(pause);	-- pacing the load over the whole run
	END LOOP;
END $$;
});

###########################################################################
# Helpers
###########################################################################

my @unexpected;    # queries of the chaos loop that failed

# Runs SQL in a fresh session; on failure (the server went away) waits
# until it accepts connections and tries again, at most 3 times.
sub sql
{
	my ($q) = @_;
	for my $try (1 .. 3)
	{
		my ($ret, $out, $err);
		my $ok = eval {
			($ret, $out, $err) = $node->psql('postgres', $q, timeout => $JobqTest::TIMEOUT);
			1;
		};
		return $out if $ok && defined $ret && $ret == 0;
		push @unexpected, "try $try of <$q>: " . ($ok ? ($err // '') : $@);
		wait_accepting($node);
	}
	return undef;
}

my %count;         # disruptions done, by name
my @events;        # [time, text] for the record

sub event
{
	my ($what) = @_;
	push @events, sprintf('%6.1f s %s', time - $main::t0, $what);
	note($events[-1]);
}

# The producer: a psql session running t.produce(); started again when it
# ends before t.stop exists (its session was lost to a crash or restart).
my $producer;
my $producer_runs = 0;
my ($p_out, $p_err) = ('', '');
my @producer_errors;

sub start_producer
{
	($p_out, $p_err) = ('', '');
	$producer = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1',
		  '-d', $node->connstr('postgres'),
		  '-c', "CALL t.produce($MAX_JOBS, 30, 0.2, $seed)" ],
		'<', \undef, '>', \$p_out, '2>', \$p_err);
	$producer_runs++;
}

# Whether the producer still runs; when it ended, its error (if any) is kept.
sub producer_running
{
	return 0 unless $producer;
	eval { $producer->pump_nb; 1 };
	return 1 if $producer->pumpable;
	my $ok = eval { $producer->finish; 1 } && $producer->result == 0;
	push @producer_errors, $p_err || 'exit ' . ($producer->result // '?') unless $ok;
	$producer = undef;
	return 0;
}

# The components of our database, as hashes.
sub parse_components
{
	my ($s) = @_;
	my @c;
	for my $r (split /;/, $s // '')
	{
		my ($name, $pid, $state, $kind, $alive) = split /,/, $r;
		push @c, { name => $name, pid => $pid, state => $state, kind => $kind, alive => $alive };
	}
	return @c;
}

my $SAMPLE = q{
SELECT (SELECT coalesce(string_agg(concat_ws(',', c.component, c.pid, c.state, coalesce(j.kind, '-'),
						(c.pid IN (SELECT pid FROM pg_stat_activity))::int), ';'), '')
		  FROM jobq.components c LEFT JOIN jobq.jobs j ON j.id = c.job_id
		 WHERE c.database = current_database() AND c.pid IS NOT NULL
		   AND c.component !~ '^(scheduler|rescuer|cleaner|periodic)$')
	|| '|' || (SELECT coalesce(string_agg(id || ':' || attempted_by, ','), '') FROM jobq.jobs
				WHERE state = 'running'
				  AND attempted_by NOT IN (SELECT claim FROM jobq.components
											WHERE claim IS NOT NULL AND claim <> 0))
	|| '|' || (SELECT count(*) FROM jobq.jobs WHERE queue = 'limited' AND state = 'running')
	|| '|' || (SELECT count(*) FROM jobq.jobs WHERE state = 'running')
};

# Crash restart after SIGKILL of a worker.
sub kill9_worker
{
	my (@c) = @_;
	my @workers = grep { $_->{name} =~ /^worker/ && $_->{alive} } @c;
	my @busy = grep { $_->{state} eq 'busy' } @workers;
	my @pool = @busy ? @busy : @workers;
	return 0 unless @pool;
	my $v = $pool[ int(rand(@pool)) ];
	my $off = -s $node->logfile;
	my $t = time;
	return 0 unless kill('KILL', $v->{pid});
	my $crashed = wait_until(sub { slurp_file($node->logfile, $off) =~ /all server processes terminated; reinitializing/ },
		30);
	my $up = wait_accepting($node);
	my $ready = wait_ready($node);
	ok($crashed && $up && $ready, "kill -9 of $v->{name} (pid $v->{pid}, $v->{state}, job kind $v->{kind}): "
		  . 'the server crash-restarted and jobq is ready again');
	event(sprintf('kill -9 %s pid %d (%s): jobq ready again after %.1f s', $v->{name}, $v->{pid}, $v->{state},
		time - $t));
	$count{'kill -9 worker'}++ if $crashed;
	return 1;
}

sub restart_immediate
{
	my ($why) = @_;
	my $t = time;
	$node->stop('immediate');
	$node->start;
	my $ready = wait_ready($node);
	ok($ready, "server restart (immediate)$why: jobq is ready again");
	event(sprintf('restart (immediate)%s: jobq ready after %.1f s', $why, time - $t));
	$count{'restart immediate'}++;
}

my @HOSTILE = (
	[ 'lock_timeout', q{'20ms'}, 'terminate' ],
	[ 'default_transaction_isolation', q{'serializable'}, 'terminate' ],
	[ 'default_transaction_read_only', 'on', 'restart' ]);

sub hostile_set
{
	my ($i, @c) = @_;
	my ($name, $value, $apply) = @{ $HOSTILE[$i] };
	sql("ALTER DATABASE postgres SET $name = $value");
	$count{"ALTER DATABASE SET $name"}++;
	if ($apply eq 'restart')
	{
		event("ALTER DATABASE SET $name = $value; restarting the server to apply it");
		restart_immediate(" under $name = $value");
		return;
	}
	# Two random workers and the candidate that does not lead reconnect
	# under the setting (the next leader change makes it the leader).
	my @victims = (shuffle(grep { $_->{name} =~ /^worker/ } @c))[ 0 .. 1 ];
	push @victims, grep { $_->{name} =~ /^candidate/ } @c;
	@victims = grep { defined } @victims;
	my $pids = join(',', map { $_->{pid} } @victims) || '0';
	my $n = sql("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest('{$pids}'::int[]) pid") // '?';
	event("ALTER DATABASE SET $name = $value; terminated $n of "
		  . join(', ', map { $_->{name} } @victims) . ' to apply it');
}

sub hostile_reset
{
	my ($i) = @_;
	my ($name) = @{ $HOSTILE[$i] };
	sql("ALTER DATABASE postgres RESET $name");
	event("ALTER DATABASE RESET $name");
}

sub fail_batches
{
	my $t = time;
	sql(q{ALTER SYSTEM SET jobq.debug_fail_batch = on; SELECT pg_reload_conf();});
	usleep(300_000 + int(rand(500_000)));    # "for a moment"
	sql(q{ALTER SYSTEM RESET jobq.debug_fail_batch; SELECT pg_reload_conf();});
	$count{'debug_fail_batch on'}++;
	event(sprintf('jobq.debug_fail_batch on for %.2f s', time - $t));
}

###########################################################################
# The soak
###########################################################################
my $log_start = -s $node->logfile;
our $t0 = time;
start_producer();

# The rare events, one at a time, in random order, 2.5-4.5 s apart; a
# hostile setting is reset by the next rare event.
my @rare = shuffle('kill9', 'kill9', 'restart', 'fail_batch', 'fail_batch', map { "hostile:$_" } 0 .. $#HOSTILE);
my $next_rare = time + 2 + rand(2);

my (%orphan_seen, $orphan_max_age, $orphan_sightings, $limited_max, $running_max, $samples);
my ($pending_check, @cancel_checks);
$orphan_max_age = 0;
$orphan_sightings = 0;
$limited_max = 0;
$running_max = 0;
$samples = 0;
my $chaos_ok = 1;

while (1)
{
	if (time > $t0 + $CHAOS_MAX)
	{
		$chaos_ok = 0;
		last;
	}
	last if !@rare && time > $t0 + $CHAOS_MIN;
	start_producer() unless producer_running();

	# --- sample ------------------------------------------------------------
	my $s = sql($SAMPLE);
	unless (defined $s)
	{
		$chaos_ok = 0;    # the server is gone for good: the checks below say what is left
		last;
	}
	my $now = time;
	$samples++;
	my ($cs, $orphans, $limited, $running) = split /\|/, $s, -1;
	my @c = parse_components($cs);
	$limited_max = $limited if $limited > $limited_max;
	$running_max = $running if $running > $running_max;
	my %seen_now;
	for my $o (split /,/, $orphans)
	{
		$orphan_sightings++;
		$orphan_seen{$o} //= $now;
		$seen_now{$o} = 1;
		my $age = $now - $orphan_seen{$o};
		$orphan_max_age = $age if $age > $orphan_max_age;
	}
	delete $orphan_seen{$_} for grep { !$seen_now{$_} } keys %orphan_seen;

	# --- the process cancelled at the previous iteration is the same -------
	if ($pending_check)
	{
		my $p = $pending_check;
		$pending_check = undef;
		my $alive;
		if ($p->{what} eq 'worker')
		{
			($alive) = grep { $_->{name} eq $p->{name} && $_->{pid} == $p->{pid} && $_->{alive} } @c;
		}
		else
		{
			($alive) = grep { $_->{name} =~ /^(leader|candidate)/ && $_->{pid} == $p->{pid} && $_->{alive} } @c;
		}
		# A hog started by the worker after the cancel is terminated no
		# earlier than 1.2 s after it started: check only before that.
		if ($p->{what} eq 'leader' || $now - $p->{at} < 1.15)
		{
			push @cancel_checks, { %$p, alive => $alive ? 1 : 0, after => $now - $p->{at} };
		}
	}

	# --- one disruption ----------------------------------------------------
	my @workers = grep { $_->{name} =~ /^worker/ && $_->{alive} } @c;
	my ($leader) = grep { $_->{name} eq 'leader' && $_->{alive} } @c;
	my @others = grep { $_->{name} =~ /^candidate/ && $_->{alive} } @c;

	if (@rare && time >= $next_rare)
	{
		my $r = shift @rare;
		my $gap = 2.5 + rand(2);
		if ($r eq 'kill9') { kill9_worker(@c) or unshift @rare, $r; }
		elsif ($r eq 'restart') { restart_immediate(''); }
		elsif ($r eq 'fail_batch') { fail_batches(); }
		elsif ($r =~ /^hostile:(\d+)$/) { hostile_set($1, @c); unshift @rare, "reset:$1"; $gap = 3 + rand(2); }
		elsif ($r =~ /^reset:(\d+)$/) { hostile_reset($1); }
		$next_rare = time + $gap;
	}
	else
	{
		my $r = rand(100);
		if ($r < 30 && @workers)
		{
			# pg_cancel_backend() of a worker, a busy one mostly
			my @busy = grep { $_->{state} eq 'busy' } @workers;
			my @pool = (@busy && rand() < 0.7) ? @busy : @workers;
			my $v = $pool[ int(rand(@pool)) ];
			my $at = time;
			if ((sql("SELECT pg_cancel_backend($v->{pid})") // '') eq 't')
			{
				$count{'pg_cancel_backend worker'}++;
				$count{'pg_cancel_backend busy worker'}++ if $v->{state} eq 'busy';
				# a hog catches the cancel and is stopped by terminating its worker
				$pending_check = { what => 'worker', name => $v->{name}, pid => $v->{pid}, at => $at }
				  unless $v->{kind} eq 'hog';
			}
		}
		elsif ($r < 60)
		{
			# jobq.cancel() of a running job (of a waiting one when none
			# runs), recorded in the same statement
			my $row = sql(q{
				INSERT INTO t.cancels (job_id, state_before, ok)
				SELECT id, state, jobq.cancel(id)
				  FROM (SELECT id, state FROM jobq.jobs
						 WHERE state IN ('running', 'available', 'retryable', 'scheduled')
						 ORDER BY state <> 'running', random() LIMIT 1) s
				RETURNING state_before || ' ' || ok});
			if (($row // '') =~ /^(\w+) true$/)
			{
				$count{'jobq.cancel'}++;
				$count{'jobq.cancel running'}++ if $1 eq 'running';
			}
		}
		elsif ($r < 75 && $leader)
		{
			my $at = time;
			if ((sql("SELECT pg_cancel_backend($leader->{pid})") // '') eq 't')
			{
				$count{'pg_cancel_backend leader'}++;
				$pending_check = { what => 'leader', name => 'leader', pid => $leader->{pid}, at => $at };
			}
		}
		elsif ($r < 85 && $leader && @others)
		{
			if ((sql("SELECT pg_terminate_backend($leader->{pid})") // '') eq 't')
			{
				$count{'pg_terminate_backend leader'}++;
				event("terminated the leader (pid $leader->{pid})");
			}
		}
		# else: a pause without disruption
	}
	usleep(150_000 + int(rand(450_000)));    # pacing between disruptions
}
ok($chaos_ok, sprintf('the chaos loop ran its course (%.1f s)', time - $t0));

# --- stop the chaos: every setting back, the producer done -----------------
my $t_chaos = time - $t0;
for my $h (@HOSTILE)
{
	sql("ALTER DATABASE postgres RESET $h->[0]");
}
sql(q{ALTER SYSTEM RESET jobq.debug_fail_batch; SELECT pg_reload_conf();});
sql('INSERT INTO t.stop VALUES (true)');
ok(wait_until(sub { !producer_running() }, 60), 'the producer stopped');
my $njobs = $node->safe_psql('postgres', 'SELECT count(*) FROM t.enqueued');
note("chaos stopped after $t_chaos s; $njobs jobs enqueued by $producer_runs producer sessions");
note('producer session errors: ' . join(' / ', map { (split /\n/)[0] } @producer_errors)) if @producer_errors;
my @bad_producer = grep {
	!/server closed the connection|terminating connection|connection to server|could not connect|the database system is (?:starting up|shutting down|in recovery|not yet accepting)|no connection to the server/
} @producer_errors;
is(scalar(@bad_producer), 0, 'the producer failed only when the server went away')
  or diag(join("\n", @bad_producer));
cmp_ok($njobs, '>=', 3000, "the producer enqueued enough jobs ($njobs)");
is($node->safe_psql('postgres', 'SELECT max(k) = count(*) FROM t.enqueued'), 't',
	'the producer enqueued jobs 1..N without a gap');

# --- quiescence ------------------------------------------------------------
my $t_q = time;
my $quiet = wait_until(sub { $node->safe_psql('postgres', q{
	SELECT NOT EXISTS (SELECT FROM jobq.jobs
						WHERE state IN ('scheduled', 'available', 'running', 'retryable'))}) eq 't' }, $QUIESCE);
ok($quiet, sprintf('every job reached a final state %.1f s after the chaos stopped', time - $t_q))
  or diag($node->safe_psql('postgres', q{
	SELECT state, kind, count(*), max(attempt), min(id) FROM jobq.jobs
	 WHERE state NOT IN ('completed', 'discarded', 'cancelled') GROUP BY 1, 2}));
my $t_all = time - $t0;
ok(wait_ready($node), 'jobq is ready at the end');

###########################################################################
# Invariants
###########################################################################
my $q = sub { $node->safe_psql('postgres', $_[0]) };

is($q->(q{SELECT count(*) FROM jobq.jobs WHERE state = 'running'
	AND attempted_by NOT IN (SELECT claim FROM jobq.components WHERE claim IS NOT NULL AND claim <> 0)}),
	'0', 'no job is running without a holder');

# No job lost, none invented.
is($q->(q{SELECT count(*) FROM t.enqueued e LEFT JOIN jobq.jobs j ON j.id = e.job_id
	 WHERE j.id IS NULL OR j.kind <> e.kind OR (j.args->>'k')::int <> e.k}),
	'0', 'every enqueued job exists, with its kind and args');
is($q->(q{SELECT count(*) FROM jobq.jobs j WHERE NOT EXISTS (SELECT FROM t.enqueued e WHERE e.job_id = j.id)}),
	'0', 'there is no job that was not enqueued');
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE state NOT IN ('completed', 'discarded', 'cancelled')}),
	'0', 'every job is final');
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE state = 'discarded'
	AND NOT (kind = 'giveup' AND coalesce((errors -> -1 ->> 'given_up')::boolean, false))}),
	'0', 'a job is discarded only when it gave up (its last error entry says given_up)')
  or diag($q->(q{SELECT id, kind, attempt, errors FROM jobq.jobs WHERE state = 'discarded'
	AND NOT (kind = 'giveup' AND coalesce((errors -> -1 ->> 'given_up')::boolean, false)) LIMIT 5}));
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'giveup' AND state NOT IN ('discarded', 'cancelled')}),
	'0', 'every job that gives up ended discarded (or cancelled)');
is($q->(q{SELECT count(*) FROM jobq.jobs j WHERE state = 'cancelled'
	AND NOT EXISTS (SELECT FROM t.cancels c WHERE c.job_id = j.id AND c.ok)}),
	'0', 'a job is cancelled only when jobq.cancel() returned true for it');
is($q->(q{SELECT count(*) FROM (SELECT DISTINCT job_id FROM t.cancels WHERE ok) c
	JOIN jobq.jobs j ON j.id = c.job_id WHERE j.state <> 'cancelled'}),
	'0', 'every job for which jobq.cancel() returned true is cancelled')
  or diag($q->(q{SELECT j.id, j.kind, j.state, j.attempt, j.errors FROM (SELECT DISTINCT job_id FROM t.cancels WHERE ok) c
	JOIN jobq.jobs j ON j.id = c.job_id WHERE j.state <> 'cancelled' LIMIT 5}));
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE state <> 'completed' AND kind <> 'giveup'
	AND id NOT IN (SELECT job_id FROM t.cancels WHERE ok)}),
	'0', 'every other job completed');

# Effects: exactly once for completed jobs, never for the others.
is($q->(q{SELECT count(*) FROM jobq.jobs j
	 WHERE state = 'completed' AND (SELECT count(*) FROM app.effects e WHERE e.job_id = j.id) <> 1}),
	'0', 'every completed job has exactly one effect')
  or diag($q->(q{SELECT j.id, j.kind, j.attempt, j.snoozes, array_agg(e.attempt) FROM jobq.jobs j
	JOIN app.effects e ON e.job_id = j.id WHERE j.state = 'completed' GROUP BY 1 HAVING count(*) > 1 LIMIT 5}));
is($q->(q{SELECT count(*) FROM jobq.jobs j JOIN app.effects e ON e.job_id = j.id
	 WHERE j.state = 'completed' AND e.attempt <> j.attempt}),
	'0', "a completed job's effect is from its last attempt");
is($q->(q{SELECT count(*) FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id WHERE j.state <> 'completed'}),
	'0', 'discarded and cancelled jobs have no effect (rolled back)')
  or diag($q->(q{SELECT j.id, j.kind, j.state, j.attempt, e.attempt, j.errors FROM app.effects e
	JOIN jobq.jobs j ON j.id = e.job_id WHERE j.state <> 'completed' LIMIT 5}));
is($q->(q{SELECT count(*) FROM app.effects e WHERE NOT EXISTS (SELECT FROM jobq.jobs j WHERE j.id = e.job_id)}),
	'0', 'no effect of an unknown job');

# Attempts and error entries.
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE attempt > max_attempts OR max_attempts <> 50}),
	'0', 'attempt <= max_attempts (50) for every job');
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE
	   (state = 'completed' AND jsonb_array_length(errors) <> attempt - 1)
	OR (state = 'discarded' AND jsonb_array_length(errors) <> attempt)
	OR (state = 'cancelled' AND jsonb_array_length(errors) NOT BETWEEN attempt - 1 AND attempt)}),
	'0', 'one error entry per failed attempt (completed: attempt - 1, gave up: attempt)')
  or diag($q->(q{SELECT id, kind, state, attempt, snoozes, errors FROM jobq.jobs WHERE
	   (state = 'completed' AND jsonb_array_length(errors) <> attempt - 1)
	OR (state = 'discarded' AND jsonb_array_length(errors) <> attempt)
	OR (state = 'cancelled' AND jsonb_array_length(errors) NOT BETWEEN attempt - 1 AND attempt) LIMIT 5}));
is($q->(q{SELECT count(*) FROM (SELECT j.id, e ->> 'attempt' FROM jobq.jobs j, jsonb_array_elements(j.errors) e
	GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no attempt has two error entries')
  or diag($q->(q{SELECT j.id, j.state, j.errors FROM jobq.jobs j WHERE j.id IN (
	SELECT j.id FROM jobq.jobs j, jsonb_array_elements(j.errors) e GROUP BY j.id, e ->> 'attempt'
	HAVING count(*) > 1) LIMIT 3}));

# Kind specifics.
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'flaky' AND state = 'completed'
	AND attempt <= (args->>'fail_until')::int}),
	'0', 'a completed flaky job ran past its failing attempts');
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'snoozer' AND state = 'completed' AND snoozes < 1}),
	'0', 'a completed snoozer snoozed first');
is($q->(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'hog' AND state = 'completed' AND attempt < 2}),
	'0', 'a completed hog needed a second attempt');
is($q->(q{SELECT count(*) FROM app.effects WHERE isolation <> 'read committed'}),
	'0', 'handlers ran in READ COMMITTED, whatever default_transaction_isolation');
is($q->(q{SELECT count(*) FROM app.effects WHERE lock_timeout NOT IN ('0', '20ms')}),
	'0', "handlers saw the database's lock_timeout (0 or 20ms), never jobq's own")
  or diag($q->(q{SELECT lock_timeout, count(*) FROM app.effects GROUP BY 1}));

# The disruptions reached the jobs.
my %fig = map { split /=/ } split /\n/, $q->(q{
	SELECT 'jobs=' || count(*) FROM jobq.jobs
	UNION ALL SELECT state || '=' || count(*) FROM jobq.jobs GROUP BY state
	UNION ALL SELECT 'kind_' || kind || '=' || count(*) FROM jobq.jobs GROUP BY kind
	UNION ALL SELECT 'max_attempt=' || max(attempt) FROM jobq.jobs
	UNION ALL SELECT 'retried=' || count(*) FROM jobq.jobs WHERE attempt > 1
	UNION ALL SELECT 'snoozed=' || count(*) FROM jobq.jobs WHERE snoozes > 0
	UNION ALL SELECT 'entries=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
	UNION ALL SELECT 'lost=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE coalesce((e ->> 'lost')::boolean, false)
	UNION ALL SELECT 'batch=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE coalesce((e ->> 'batch')::boolean, false)
	UNION ALL SELECT 'given_up=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE coalesce((e ->> 'given_up')::boolean, false)
	UNION ALL SELECT 'read_only=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE e ->> 'sqlstate' = '25006'
	UNION ALL SELECT 'canceled_57014=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE e ->> 'sqlstate' = '57014' AND NOT coalesce((e ->> 'given_up')::boolean, false)
	UNION ALL SELECT 'timeout=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE e ->> 'message' ~* 'timeout'
	UNION ALL SELECT 'flaky=' || count(*) FROM jobq.jobs, jsonb_array_elements(errors) e
		WHERE e ->> 'message' ~ '^flaky failure'
	UNION ALL SELECT 'effects_lock_timeout_20ms=' || count(*) FROM app.effects WHERE lock_timeout = '20ms'
	UNION ALL SELECT 'effects_default_serializable=' || count(*) FROM app.effects
		WHERE default_isolation = 'serializable'
	UNION ALL SELECT 'cancel_calls=' || count(*) FROM t.cancels
});
$fig{$_} //= 0 for qw(completed discarded cancelled lost batch given_up read_only timeout flaky snoozed);
cmp_ok($fig{lost}, '>', 0, "attempts were lost to killed or terminated workers ($fig{lost})");
cmp_ok($fig{batch}, '>', 0, "attempts failed with their batch under jobq.debug_fail_batch ($fig{batch})");
cmp_ok($fig{read_only}, '>', 0, "attempts failed read-only (25006) under default_transaction_read_only ($fig{read_only})");
cmp_ok($fig{effects_lock_timeout_20ms}, '>', 0,
	"handlers saw the database's lock_timeout = 20ms ($fig{effects_lock_timeout_20ms} effects)");
cmp_ok($fig{effects_default_serializable}, '>', 0,
	"handlers saw default_transaction_isolation = serializable, and still ran READ COMMITTED ($fig{effects_default_serializable} effects)");
cmp_ok($fig{given_up}, '>', 0, "jobs gave up ($fig{given_up})");
cmp_ok($fig{snoozed}, '>', 0, "jobs snoozed ($fig{snoozed})");
cmp_ok($fig{cancelled}, '>', 0, "jobs were cancelled by jobq.cancel() ($fig{cancelled})");
cmp_ok($fig{canceled_57014}, '>', 0,
	"pg_cancel_backend() of busy workers failed attempts with 57014 ($fig{canceled_57014})");

# What the loop saw.
cmp_ok($orphan_max_age, '<', $ORPHAN_MAX_AGE,
	sprintf('during the soak no job stayed running without a live holder for %d s (longest seen: %.1f s, '
		  . '%d sightings in %d samples)', $ORPHAN_MAX_AGE, $orphan_max_age, $orphan_sightings, $samples));
cmp_ok($limited_max, '<=', 2, "the queue of concurrency 2 never had more than 2 jobs running (max seen $limited_max)");
my @wchecks = grep { $_->{what} eq 'worker' } @cancel_checks;
my @lchecks = grep { $_->{what} eq 'leader' } @cancel_checks;
ok(@wchecks >= 3, scalar(@wchecks) . ' workers were checked after pg_cancel_backend');
ok(@lchecks >= 1, scalar(@lchecks) . ' leaders were checked after pg_cancel_backend');
is(scalar(grep { !$_->{alive} } @wchecks), 0, 'pg_cancel_backend of a worker was absorbed: same process after it')
  or diag(join("\n", map { sprintf('%s pid %d gone %.2f s after the cancel', $_->{name}, $_->{pid}, $_->{after}) }
		grep { !$_->{alive} } @wchecks));
is(scalar(grep { !$_->{alive} } @lchecks), 0, 'pg_cancel_backend of the leader was absorbed: same process after it')
  or diag(join("\n", map { sprintf('leader pid %d gone %.2f s after the cancel', $_->{pid}, $_->{after}) }
		grep { !$_->{alive} } @lchecks));
for my $d ('kill -9 worker', 'restart immediate', 'debug_fail_batch on', 'pg_cancel_backend worker',
	'pg_cancel_backend leader', 'pg_terminate_backend leader', 'jobq.cancel running',
	map { "ALTER DATABASE SET $_->[0]" } @HOSTILE)
{
	cmp_ok($count{$d} // 0, '>=', 1, "disruption done: $d (" . ($count{$d} // 0) . ')');
}
is(scalar(@unexpected), 0, 'every query of the chaos loop succeeded')
  or diag(join("\n", @unexpected[ 0 .. ($#unexpected < 9 ? $#unexpected : 9) ]));

# The server log.
my $log = slurp_file($node->logfile, $log_start);
my $resets = () = $log =~ /all server processes terminated; reinitializing/g;
is($resets, $count{'kill -9 worker'} // 0, 'the server crash-restarted only after our kill -9');
my @bad = $log =~ /^(.*(?:terminated by signal (?:6|7|8|11)\b|PANIC:).*)$/mg;
is(scalar(@bad), 0, 'no process died of a signal 6/7/8/11, no PANIC') or diag(join("\n", @bad[ 0 .. 4 ]));
my $leaders = () = $log =~ /is now the leader/g;

###########################################################################
# Figures
###########################################################################
note('events:');
note("  $_") for @events;
note('disruptions: ' . join(', ', map { "$_ $count{$_}" } sort keys %count));
note(sprintf('jobs: %d (%s); completed %d, discarded %d, cancelled %d (%d jobq.cancel calls); '
	  . '%d retried, max attempt %d, %d snoozed',
	$fig{jobs}, join(' ', map { s/^kind_//r . " $fig{$_}" } sort grep { /^kind_/ } keys %fig),
	$fig{completed}, $fig{discarded}, $fig{cancelled}, $fig{cancel_calls}, $fig{retried}, $fig{max_attempt},
	$fig{snoozed}));
note(sprintf('error entries: %d: lost %d, batch %d, given up %d, read-only %d, cancelled (57014) %d, '
	  . 'timeout %d, flaky %d', $fig{entries}, $fig{lost}, $fig{batch}, $fig{given_up}, $fig{read_only},
	$fig{canceled_57014}, $fig{timeout}, $fig{flaky}));
note(sprintf('samples %d: max running %d, max running in limited %d, orphan sightings %d, longest orphan %.1f s',
	$samples, $running_max, $limited_max, $orphan_sightings, $orphan_max_age));
note(sprintf('cancel checks: %d workers, %d leaders; leadership changed %d times; producer sessions %d',
	scalar(@wchecks), scalar(@lchecks), $leaders, $producer_runs));
diag(sprintf('FIGURE chaos soak: %d jobs in %.1f s (%.0f completed jobs/s overall), chaos %.1f s, '
	  . 'quiet %.1f s after; %s', $fig{jobs}, $t_all, $fig{completed} / ($t_all || 1), $t_chaos, $t_all - $t_chaos,
	join(', ', map { "$_ $count{$_}" } sort keys %count)));

$node->stop;
done_testing();
