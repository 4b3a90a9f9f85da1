# Query cancels of jobq's own processes, and errors outside a job's
# subtransaction, each a group of its own (one node, 3 workers,
# jobq.rescue_interval = 1h: the rescuer's safety net cannot explain any
# prompt outcome here):
#   6. jobq.components.job_started_at: set while a worker runs a job
#      (between the claim and the handler's first instant), NULL when idle;
#      and jobq.retry() of a job running under a live worker returns false;
#   1. pg_cancel_backend() of idle workers, of the leader and of the other
#      candidate, 20 times each, is absorbed: same pids, restarts unchanged,
#      no backoff at any moment, jobs and scheduled jobs keep running;
#   2. a cancel storm while 3,000 quick jobs run: every job completes, its
#      effect committed exactly once, no job left running without a holder,
#      no worker process replaced;
#   4. a handler blocked past its timeout in a call that cannot be
#      interrupted (COPY FROM PROGRAM reading a FIFO) returns late: its
#      attempt fails as a timeout, its effect rolled back, the jobs enqueued
#      with it complete, its worker keeps running;
#   5. jobq.retry() of a job running without a live holder makes it
#      available at once, attempt kept, and it completes;
#   3. with jobq.debug_fail_batch every batch transaction fails after its
#      jobs ran: its jobs are released at once (no rescuer), each started
#      attempt counted with a "batch" error entry, never-started jobs not
#      charged, effects rolled back; once it is off, jobs complete.
# Every wait has a deadline; a group that dies counts as a failure and the
# next group still runs.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use Fcntl qw(O_WRONLY O_NONBLOCK);
use POSIX qw(mkfifo);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $SHORT = 30;            # deadline (s) of anything that should take a second
my $STORM_JOBS = 3000;
my $STORM_CHUNK = 50;

my $node = jobq_node('cancels', workers => 3, conf => "jobq.rescue_interval = '1h'\n");
jobq_install($node);
jobq_handlers($node);

$node->safe_psql('postgres', q{
CREATE TABLE app.storm_effects (job_id bigint NOT NULL);
CREATE TABLE app.batch_effects (job_id bigint NOT NULL, attempt int);
CREATE TABLE app.storm_results (name text PRIMARY KEY, rounds int, sent int, delivered int,
	bad int, first_bad text, secs float8);

-- cancel storm: some quick jobs sleep 1-5 ms (pg_sleep is interruptible)
CREATE FUNCTION app.storm(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF args ? 'sleep' THEN
		PERFORM pg_sleep((args->>'sleep')::float8);
	END IF;
	INSERT INTO app.storm_effects VALUES ((jobq.current_job()).id);
END $$;
SELECT jobq.register('storm', 'app.storm(jsonb)', max_attempts => 25, backoff_max => '50 ms');

-- returns the instant the handler started
CREATE FUNCTION app.timed(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	t timestamptz := clock_timestamp();
BEGIN
	PERFORM pg_sleep((args->>'sleep')::float8);
	RETURN jsonb_build_object('started', t);
END $$;
SELECT jobq.register('timed', 'app.timed(jsonb)');

-- COPY FROM PROGRAM of a reader of a FIFO (see group 4)
CREATE TABLE app.copy_sink (line text);

-- one sequence per job counts the handler's starts (nextval is not rolled back)
DO $$
BEGIN
	FOR i IN 1..50 LOOP
		EXECUTE format('CREATE SEQUENCE app.calls_%s', i);
	END LOOP;
END $$;
CREATE FUNCTION app.batchy(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	PERFORM nextval(format('app.calls_%s', args->>'n')::regclass);
	INSERT INTO app.batch_effects VALUES (job.id, job.attempt);
	IF args ? 'sleep' THEN
		PERFORM pg_sleep((args->>'sleep')::float8);
	END IF;
END $$;
SELECT jobq.register('batchy', 'app.batchy(jsonb)', backoff_max => '100 ms');

-- what must not change when jobq's processes are cancelled: which process
-- runs each component, and how often it was restarted
CREATE FUNCTION app.fingerprint() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(component || ':' || coalesce(pid::text, '-') || ':' || restarts, ' ' ORDER BY component)
	  FROM jobq.components WHERE database = current_database()
$$;
CREATE FUNCTION app.unhealthy() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(component || ' ' || state, ', ' ORDER BY component)
	  FROM jobq.components WHERE database = current_database()
	   AND (pid IS NULL OR state NOT IN ('idle', 'busy', 'running'))
$$;

-- Sends pg_cancel_backend() to the components whose name matches pattern
-- (all of them each round, or one at random), pausing pace_min..pace_max s
-- between rounds, until rounds rounds (0: no limit), max_secs or stop_when
-- (a query returning true).  After each round it looks at the components:
-- a changed pid or restart count, or a state other than idle, busy or
-- running, counts as bad.  The outcome goes to app.storm_results.
CREATE FUNCTION app.cancel_storm(name text, pattern text, one_at_a_time boolean, rounds int,
		pace_min float8, pace_max float8, stop_when text, max_secs float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	fp0 text := app.fingerprint();
	t0 timestamptz := clock_timestamp();
	n int := 0;
	sent int := 0;
	delivered int := 0;
	bad int := 0;
	first_bad text;
	fp text;
	u text;
	done boolean;
	p int;
BEGIN
	LOOP
		EXIT WHEN rounds > 0 AND n >= rounds;
		EXIT WHEN clock_timestamp() - t0 > max_secs * interval '1 s';
		IF stop_when IS NOT NULL THEN
			EXECUTE stop_when INTO done;
			EXIT WHEN done;
		END IF;
		n := n + 1;
		FOR p IN SELECT c.pid FROM jobq.components c
				  WHERE c.database = current_database() AND c.component ~ pattern AND c.pid IS NOT NULL
				  ORDER BY CASE WHEN one_at_a_time THEN random() ELSE 0 END
				  LIMIT CASE WHEN one_at_a_time THEN 1 END
		LOOP
			sent := sent + 1;
			IF pg_cancel_backend(p) THEN
				delivered := delivered + 1;
			END IF;
		END LOOP;
		PERFORM pg_sleep(pace_min + random() * (pace_max - pace_min));
		fp := app.fingerprint();
		u := app.unhealthy();
		IF fp IS DISTINCT FROM fp0 OR u IS NOT NULL THEN
			bad := bad + 1;
			first_bad := coalesce(first_bad, format('round %s:%s%s', n,
				CASE WHEN fp IS DISTINCT FROM fp0 THEN ' components now ' || fp || ', were ' || fp0 ELSE '' END,
				coalesce(' not running: ' || u, '')));
		END IF;
	END LOOP;
	INSERT INTO app.storm_results
		VALUES (name, n, sent, delivered, bad, first_bad, extract(epoch FROM clock_timestamp() - t0));
END $$;
});

# Group 4's handler blocks in a call no signal ends: COPY FROM PROGRAM
# reads from a cat of a FIFO (cat ignores SIGINT, which the timeout sends to
# the worker's process group), and read() of a pipe is restarted after a
# signal.  The test makes it return by writing a line into the FIFO and
# closing it; cat swallows the line, so COPY reads no row and runs nothing
# that looks at interrupts afterwards: the pending timeout cancel is found
# in jobq's own bookkeeping, after the handler returned.  (pg_read_file()
# cannot read a FIFO: it seeks.)
my $fifo = $node->basedir . '/late_timeout.fifo';
mkfifo($fifo, 0600) or die "mkfifo $fifo: $!";
$node->safe_psql('postgres', qq{
CREATE FUNCTION app.fifo(args jsonb) RETURNS void LANGUAGE sql AS \$\$
	INSERT INTO app.effects (job_id, n, attempt)
		VALUES ((jobq.current_job()).id, (args->>'n')::bigint, (jobq.current_job()).attempt);
	COPY app.copy_sink FROM PROGRAM 'trap "" INT; exec cat $fifo >/dev/null';
\$\$;
SELECT jobq.register('fifo', 'app.fifo(jsonb)', timeout => '1 s', max_attempts => 1);
});

#############################################################################
# helpers
#############################################################################

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub sql_until
{
	my ($q, $timeout) = @_;
	return wait_until(sub { sql($q) eq 't' }, $timeout // $SHORT);
}

sub job_state { return sql("SELECT state FROM jobq.jobs WHERE id = $_[0]"); }

# jobq.wait() with this test's deadline: the job's final (or current) state.
sub wait_for { return sql("SELECT jobq.wait($_[0], '$SHORT s')"); }

# Running jobs whose claim no live worker holds (the invariant: 0 at rest).
sub holderless
{
	return sql(q{
		SELECT count(*) FROM jobq.jobs j WHERE state = 'running'
		   AND attempted_by NOT IN (SELECT claim FROM jobq.components WHERE claim IS NOT NULL AND claim <> 0)});
}

# The component name and pid of the worker running a job (empty before).
sub running_in_worker
{
	my ($job) = @_;
	my $row = '';
	wait_until(
		sub {
			$row = sql(qq{
				SELECT component || '|' || pid FROM jobq.components
				 WHERE database = current_database() AND job_id = $job AND pid IS NOT NULL});
			return $row ne '';
		},
		$SHORT);
	return split /\|/, $row;
}

# No job available or running (scheduled far-future ones may wait).
sub settle
{
	my ($what) = @_;
	ok(sql_until(q{SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE state IN ('available', 'running'))}),
		"$what: no job is available or running");
}

sub log_since { return slurp_file($node->logfile, $_[0]); }

# Lines of the server log since $offset that say a jobq process went away
# or the leadership changed hands.
sub disruptions
{
	my ($offset) = @_;
	my @lines = grep { /exited unexpectedly|terminated itself|resigned|lost its lock|is now the leader/ }
	  split /\n/, log_since($offset);
	return scalar(@lines) . (@lines ? ': ' . join(' | ', @lines[ 0 .. ($#lines < 2 ? $#lines : 2) ]) : '');
}

sub storm_result
{
	my ($name) = @_;
	my ($rounds, $sent, $delivered, $bad, $first_bad, $secs) = split /\|/, sql(qq{
		SELECT rounds, sent, delivered, bad, coalesce(first_bad, ''), round(secs::numeric, 2)
		  FROM app.storm_results WHERE name = '$name'});
	return ($rounds // 0, $sent // 0, $delivered // 0, $bad // -1, $first_bad // '', $secs // 0);
}

# Runs a group; a group that dies fails, and the next one runs.
sub group
{
	my ($name, $body) = @_;
	my $t0 = time;
	my $ok = eval { $body->(); 1 };
	fail("$name: the group died: $@") unless $ok;
	note(sprintf('%s: %.1f s', $name, time - $t0));
}

#############################################################################
# 6. job_started_at, and retry() of a job running under a live worker
#############################################################################
group('running job', sub {
	my $job = sql(q{SELECT jobq.enqueue('timed', '{"sleep": 3}')});
	my ($slot, $pid) = running_in_worker($job);
	ok(defined $pid, "running job: job $job runs in " . ($slot // 'no worker'));
	$slot //= 'none';
	my ($started, $after_claim, $before_now) = split /\|/, sql(qq{
		SELECT c.job_started_at, c.job_started_at >= j.attempted_at, c.job_started_at <= clock_timestamp()
		  FROM jobq.components c JOIN jobq.jobs j ON j.id = c.job_id
		 WHERE c.database = current_database() AND c.component = '$slot' AND j.id = $job});
	ok(defined $started && $started ne '', 'running job: job_started_at is set while the job runs ('
		  . ($started // 'none') . ')');
	is($after_claim, 't', 'running job: job_started_at is not before the claim (attempted_at)');
	is($before_now, 't', 'running job: job_started_at is not in the future');
	is(sql(q{
		SELECT count(*) FILTER (WHERE job_id IS NULL AND job_started_at IS NOT NULL) || '/'
		    || count(*) FILTER (WHERE job_id IS NULL)
		  FROM jobq.components WHERE database = current_database() AND component LIKE 'worker%'}),
		'0/2', 'running job: the two idle workers show no job_started_at');

	is(sql("SELECT jobq.retry($job)"), 'f', 'running job: retry() of a job its live worker runs returns false');
	is(sql("SELECT state || ' ' || attempt FROM jobq.jobs WHERE id = $job"), 'running 1',
		'running job: ... and leaves it running, attempt 1');

	is(wait_for($job), 'completed', 'running job: it completes');
	is(sql(qq{
		SELECT '$started'::timestamptz <= (result->>'started')::timestamptz FROM jobq.jobs WHERE id = $job}),
		't', 'running job: job_started_at is not after the handler\'s first instant');
	note('running job: handler started '
		  . sql(qq{SELECT (result->>'started')::timestamptz - '$started'::timestamptz FROM jobq.jobs WHERE id = $job})
		  . ' after job_started_at');
	is(sql(qq{SELECT attempt || ' ' || errors::text FROM jobq.jobs WHERE id = $job}), '1 []',
		'running job: ran once, no error');
	ok(sql_until(q{SELECT NOT EXISTS (SELECT FROM jobq.components
		WHERE database = current_database() AND component LIKE 'worker%' AND job_id IS NOT NULL)}),
		'running job: every worker is idle again');
	is(sql(q{SELECT count(*) FROM jobq.components
		WHERE database = current_database() AND component LIKE 'worker%' AND job_started_at IS NOT NULL}),
		'0', 'running job: job_started_at is NULL for every idle worker');
});

#############################################################################
# 1. cancels of idle workers, of the leader and of the other candidate
#############################################################################
group('idle cancels', sub {
	settle('idle cancels');
	ok(wait_ready($node), 'idle cancels: jobq is ready');
	my $fp0 = sql('SELECT app.fingerprint()');
	note("idle cancels: components before: $fp0");
	is(sql(q{SELECT count(*) FROM jobq.components c JOIN pg_stat_activity a ON a.pid = c.pid
		WHERE c.database = current_database() AND c.component ~ '^(worker|leader|candidate)'}),
		'5', 'idle cancels: 3 workers, the leader and the other candidate run');

	for my $t ([ 'workers', '^worker ', 3 ], [ 'leader', '^leader$', 1 ], [ 'candidate', '^candidate ', 1 ])
	{
		my ($what, $pattern, $count) = @$t;
		my $offset = -s $node->logfile;
		my $before = sql('SELECT app.fingerprint()');
		sql(qq{SELECT app.cancel_storm('idle $what', '$pattern', false, 20, 0.02, 0.03, NULL, 30)});
		my ($rounds, $sent, $delivered, $bad, $first_bad) = storm_result("idle $what");
		is("$rounds $sent $delivered", "20 @{[ 20 * $count ]} @{[ 20 * $count ]}",
			"idle cancels, $what: 20 rounds of pg_cancel_backend(), each delivered");
		is($bad, 0, "idle cancels, $what: after each round every component kept its pid and restart count,"
			  . " none in backoff $first_bad");

		my ($job, $t0, $state, $secs);
		if ($what eq 'workers')
		{
			$t0 = time;
			$job = sql(q{SELECT jobq.enqueue('effect', '{"n": 101}')});
			$state = sql("SELECT jobq.wait($job, '$SHORT s')");
			$secs = time - $t0;
			is($state, 'completed', 'idle cancels, workers: a job enqueued afterwards completes');
			note(sprintf('idle cancels, workers: the job completed %.2f s after its enqueue', $secs));
		}
		else
		{
			$t0 = time;
			$job = sql(q{SELECT jobq.enqueue('effect', '{"n": 102}', run_at => now() + interval '1 s')});
			$state = sql("SELECT jobq.wait($job, '$SHORT s')");
			$secs = time - $t0;
			is($state, 'completed', sprintf('idle cancels, %s: a job scheduled 1 s ahead was promoted and completed (%.1f s)',
					$what, $secs));
		}
		is(sql('SELECT app.fingerprint()'), $before,
			"idle cancels, $what: every component runs in the same process, restarts unchanged");
		is(sql('SELECT app.unhealthy()'), '', "idle cancels, $what: every component is idle, busy or running");
		is(disruptions($offset), '0', "idle cancels, $what: the log shows no process exit and no leader change");
	}
	is(sql(q{SELECT count(*) FROM jobq.components
		WHERE database = current_database() AND component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')
		  AND state = 'running' AND pid = (SELECT pid FROM jobq.components
		                                    WHERE database = current_database() AND component = 'leader')}),
		'4', 'idle cancels: the leader runs its four services');
	is(sql('SELECT app.fingerprint()'), $fp0, 'idle cancels: components as before the cancels');
});

#############################################################################
# 2. cancel storm while 3,000 quick jobs run
#############################################################################
group('cancel storm', sub {
	settle('cancel storm');
	my $offset = -s $node->logfile;
	my $fp0 = sql('SELECT app.fingerprint()');
	my $storm = $node->background_psql('postgres', timeout => 600, on_error_stop => 0);
	my $t0 = time;
	# one random worker every 5-20 ms, until every storm job is final
	$storm->query_until(qr/storm started/, qq{\\echo storm started
SELECT app.cancel_storm('storm', '^worker ', true, 0, 0.005, 0.02,
	'SELECT count(*) = $STORM_JOBS FROM jobq.jobs WHERE kind = ''storm''
	    AND state IN (''completed'', ''discarded'', ''cancelled'')', 75);
});
	# enqueued in chunks, so that workers go through idle, claim, run and
	# commit many times during the storm
	for (my $first = 1; $first <= $STORM_JOBS; $first += $STORM_CHUNK)
	{
		my $last = $first + $STORM_CHUNK - 1;
		sql(qq{SELECT jobq.enqueue_many('storm', array_agg(
			CASE WHEN random() < 0.3 THEN jsonb_build_object('n', g, 'sleep', 0.001 + random() * 0.004)
			     ELSE jsonb_build_object('n', g) END ORDER BY g))
			  FROM generate_series($first, $last) g});
	}
	note(sprintf('cancel storm: %d jobs enqueued in %.1f s', $STORM_JOBS, time - $t0));
	my $ended = sql_until(q{SELECT EXISTS (SELECT FROM app.storm_results WHERE name = 'storm')}, 90);
	ok($ended, sprintf('cancel storm: the storm ended (%.1f s)', time - $t0));
	eval { $storm->quit; 1 } or note("cancel storm: storm session ended: $@");
	my ($rounds, $sent, $delivered, $bad, $first_bad, $secs) = storm_result('storm');
	note("cancel storm: $rounds rounds in $secs s, $delivered of $sent cancels delivered");
	ok($delivered >= 50, "cancel storm: at least 50 cancels were delivered ($delivered)");
	is($bad, 0, "cancel storm: no worker was replaced, restarted or in backoff at any round $first_bad");

	is(sql(q{SELECT string_agg(state || ' ' || n, ', ' ORDER BY state) FROM (
			SELECT state, count(*) n FROM jobq.jobs WHERE kind = 'storm' GROUP BY state) s}),
		"completed $STORM_JOBS", "cancel storm: all $STORM_JOBS jobs completed");
	is(sql(q{SELECT count(*) || ' ' || count(DISTINCT job_id) FROM app.storm_effects}),
		"$STORM_JOBS $STORM_JOBS", 'cancel storm: one committed effect per job, no duplicate');
	is(sql(q{SELECT count(*) FROM jobq.jobs j WHERE kind = 'storm'
		AND (SELECT count(*) FROM app.storm_effects e WHERE e.job_id = j.id) <> 1}),
		'0', 'cancel storm: every job has exactly its own effect');
	note('cancel storm: error entries: '
		  . sql(q{SELECT coalesce(string_agg(what || ' ' || n, ', '), 'none') FROM (
			SELECT CASE WHEN e ? 'lost' THEN 'lost' WHEN e ? 'batch' THEN 'batch'
			            ELSE coalesce(e->>'sqlstate', '?') END AS what, count(*) n
			  FROM jobq.jobs j, jsonb_array_elements(j.errors) e
			 WHERE kind = 'storm' GROUP BY 1) s})
		  . '; most attempts of a job: '
		  . sql(q{SELECT max(attempt) FROM jobq.jobs WHERE kind = 'storm'}));
	is(holderless(), '0', 'cancel storm: no job is running without a holder');
	is(sql(q{SELECT count(*) FROM jobq.jobs WHERE state = 'running'}), '0', 'cancel storm: no job is left running');
	is(sql('SELECT app.fingerprint()'), $fp0, 'cancel storm: every component runs in the same process, restarts unchanged');
	is(disruptions($offset), '0', 'cancel storm: the log shows no process exit and no leader change');
});

#############################################################################
# 4. a late timeout: the handler returns past its timeout
#############################################################################
my $writer;
group('late timeout', sub {
	settle('late timeout');
	my $offset = -s $node->logfile;
	# five quick jobs before it and five after, in the same transaction
	my ($before, $late, $after) = split /\n/, sql(qq{
		BEGIN;
		SELECT array_to_string(jobq.enqueue_many('effect', array_agg(jsonb_build_object('n', g) ORDER BY g)), ',')
		  FROM generate_series(401, 405) g;
		SELECT jobq.enqueue('fifo', '{"n": 400}');
		SELECT array_to_string(jobq.enqueue_many('effect', array_agg(jsonb_build_object('n', g) ORDER BY g)), ',')
		  FROM generate_series(406, 410) g;
		COMMIT;});
	my $others = "$before,$after";
	my ($slot, $pid) = running_in_worker($late);
	ok(defined $pid, "late timeout: job $late runs in " . ($slot // 'no worker'));
	$slot //= 'none';
	$pid //= 0;
	my $restarts = sql("SELECT restarts FROM jobq.components WHERE database = current_database() AND component = '$slot'");

	ok(sql_until("SELECT clock_timestamp() - attempted_at >= interval '2.5 s' FROM jobq.jobs WHERE id = $late"),
		'late timeout: the job has run 2.5 s');
	is(job_state($late), 'running', 'late timeout: ... 1.5 s past its 1 s timeout, it still runs (blocked)');
	# a non-blocking open for writing succeeds only while a reader waits
	ok(wait_until(sub { sysopen($writer, $fifo, O_WRONLY | O_NONBLOCK) }, $SHORT),
		'late timeout: the handler\'s cat waits on the FIFO; the test opens it for writing');
	my $t0 = time;
	{
		local $SIG{PIPE} = 'IGNORE';
		my $wrote = syswrite($writer, "late\n");
		ok(defined $wrote && $wrote == 5, 'late timeout: the test wrote a line into the FIFO'
			  . (defined $wrote ? '' : " ($!)"));
		close($writer);
		undef $writer;
	}

	my $state = wait_for($late);
	is($state, 'discarded', sprintf('late timeout: its only attempt failed (%.1f s after the write)',
			time - $t0));
	my ($n, $message, $sqlstate, $flags) = split /\|/, sql(qq{
		SELECT jsonb_array_length(errors), errors->0->>'message', errors->0->>'sqlstate',
		       concat_ws(',', CASE WHEN errors->0 ? 'lost' THEN 'lost' END, CASE WHEN errors->0 ? 'batch' THEN 'batch' END)
		  FROM jobq.jobs WHERE id = $late});
	is($n, 1, 'late timeout: one error entry');
	like($message // '', qr/^job exceeded its timeout of 1000 ms/,
		'late timeout: it says the job exceeded its timeout: ' . ($message // 'none'));
	# the cancel the timeout sent is found after the handler returned: it is
	# still the timeout's, not a cancel someone requested
	unlike($message // '', qr/user request/, 'late timeout: ... and does not call it a cancel by user request');
	is($sqlstate, '57014', 'late timeout: sqlstate 57014');
	is($flags, '', 'late timeout: the entry is neither "lost" nor "batch"');
	is(sql("SELECT count(*) FROM app.effects WHERE job_id = $late"), '0', 'late timeout: its effect was rolled back');
	ok(sql_until("SELECT count(*) = 10 FROM jobq.jobs WHERE id IN ($others) AND state = 'completed'"),
		'late timeout: the ten jobs enqueued with it completed');
	is(sql(qq{SELECT count(*) FROM jobq.jobs WHERE id IN ($others) AND attempt = 1 AND errors = '[]'}),
		'10', 'late timeout: ... each at its first attempt, without an error');
	is(sql("SELECT count(*) || ' ' || count(DISTINCT job_id) FROM app.effects WHERE job_id IN ($others)"),
		'10 10', 'late timeout: ... each with its effect once');
	is(sql("SELECT pid || ' ' || restarts FROM jobq.components WHERE database = current_database() AND component = '$slot'"),
		"$pid $restarts", "late timeout: $slot runs in the same process ($pid), restarts unchanged");
	is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"), '1', 'late timeout: the process is alive');
	is(disruptions($offset), '0', 'late timeout: the log shows no process exit and no leader change');
	is(sql(q{SELECT count(*) FROM jobq.jobs WHERE state = 'running'}), '0', 'late timeout: no job is left running');
	is(holderless(), '0', 'late timeout: no job is running without a holder');
});
# never leave a handler blocked on the FIFO (it would hold up the shutdown)
if ($writer || sysopen($writer, $fifo, O_WRONLY | O_NONBLOCK))
{
	close($writer);
	note('late timeout: released a reader left on the FIFO');
}

#############################################################################
# 5. retry() of a job running without a live holder
#############################################################################
group('holderless retry', sub {
	settle('holderless retry');
	# (a) made running without a holder and retried in one transaction: the
	# rescuer cannot get in between
	my $job = sql(q{SELECT jobq.enqueue('effect', '{"n": 501}', run_at => now() + interval '1 day')});
	is(sql(qq{
		BEGIN;
		UPDATE jobq.jobs SET state = 'running', attempt = 1, attempted_by = 12345,
		       attempted_at = clock_timestamp() WHERE id = $job;
		SELECT jobq.retry($job);
		COMMIT;}), 't', 'holderless retry: retry() of a job running under claim 12345 (no worker) returns true');
	is(wait_for($job), 'completed', 'holderless retry: the job then completes');
	is(sql("SELECT attempt || ' ' || errors::text FROM jobq.jobs WHERE id = $job"), '2 []',
		'holderless retry: the first attempt stayed counted (attempt 2), no error entry ("lost" or other)');
	is(sql("SELECT count(*) FROM app.effects WHERE job_id = $job"), '1', 'holderless retry: its effect once');

	# (b) committed first, retried by another transaction
	$job = sql(q{SELECT jobq.enqueue('effect', '{"n": 502}', run_at => now() + interval '1 day')});
	sql(qq{UPDATE jobq.jobs SET state = 'running', attempt = 1, attempted_by = 12345,
	       attempted_at = clock_timestamp() WHERE id = $job});
	is(holderless(), '1', 'holderless retry: the invariant query sees one job running without a holder');
	is(job_state($job), 'running', 'holderless retry: the rescuer did not take it (rescue_interval 1h)');
	my $t0 = time;
	is(sql("SELECT jobq.retry($job)"), 't', 'holderless retry: retry() of the committed holderless job returns true');
	is(wait_for($job), 'completed', sprintf('holderless retry: it completes (%.2f s)', time - $t0));
	ok(time - $t0 < 5, 'holderless retry: ... at once (within 5 s), not at the rescuer\'s next round');
	is(sql("SELECT attempt || ' ' || errors::text FROM jobq.jobs WHERE id = $job"), '2 []',
		'holderless retry: attempt 2, no error entry');
	is(holderless(), '0', 'holderless retry: no job is running without a holder');
});

#############################################################################
# 3. batch transactions that fail after their jobs ran
#############################################################################
my $hook_on = 0;
sub set_fail_batch
{
	my ($value) = @_;
	my $offset = -s $node->logfile;
	my ($ret, $out, $err) = $node->psql('postgres',
		"ALTER SYSTEM SET jobq.debug_fail_batch = $value; SELECT pg_reload_conf();");
	is($ret, 0, "batch errors: ALTER SYSTEM SET jobq.debug_fail_batch = $value" . ($err ? " ($err)" : ''));
	return 0 if $ret != 0;
	ok(wait_until(sub { log_since($offset) =~ /parameter "jobq.debug_fail_batch" changed to "$value"/ }, $SHORT),
		"batch errors: the server reloaded jobq.debug_fail_batch = $value");
	return 1;
}

group('batch errors', sub {
	settle('batch errors');
	my $offset = -s $node->logfile;
	my $fp0 = sql('SELECT app.fingerprint()');
	$hook_on = set_fail_batch('on');
	# 40 jobs, every fifth sleeps 30 ms: a claim of several jobs is cut into
	# transactions by jobq.batch_time (50 ms), so a failed transaction leaves
	# jobs of its claim never started
	my $t0 = time;
	my $ids = sql(q{SELECT array_to_string(jobq.enqueue_many('batchy', array_agg(
		CASE WHEN g % 5 = 3 THEN jsonb_build_object('n', g, 'sleep', 0.03) ELSE jsonb_build_object('n', g) END
		ORDER BY g), max_attempts => 2), ',') FROM generate_series(1, 40) g});
	ok(sql_until("SELECT count(*) = 40 FROM jobq.jobs WHERE id IN ($ids) AND state = 'discarded'", 20),
		sprintf('batch errors: the 40 jobs (max_attempts 2) ended discarded (%.1f s)', time - $t0));
	is(sql("SELECT string_agg(state || ' ' || n, ', ' ORDER BY state) FROM (
			SELECT state, count(*) n FROM jobq.jobs WHERE id IN ($ids) GROUP BY state) s"),
		'discarded 40', 'batch errors: all 40 are discarded');
	my $check = qq{
		SELECT j.id, j.state, j.attempt, jsonb_array_length(j.errors) AS entries,
		       (SELECT count(*) FROM jsonb_array_elements(j.errors) e
		         WHERE e->>'batch' = 'true' AND NOT e ? 'lost'
		           AND e->>'message' LIKE 'the transaction of its batch failed: %'
		           AND coalesce(e->>'sqlstate', '') <> '') AS batch_entries,
		       (SELECT string_agg(e->>'attempt', ',' ORDER BY (e->>'attempt')::int)
		          FROM jsonb_array_elements(j.errors) e) AS attempts,
		       coalesce(s.last_value, 0) AS calls
		  FROM jobq.jobs j
		  JOIN pg_sequences s ON s.schemaname = 'app' AND s.sequencename = 'calls_' || (j.args->>'n')
		 WHERE j.id IN ($ids)};
	my $wrong = sql(qq{
		SELECT count(*) || coalesce(': ' || string_agg(format('job %s %s attempt %s, %s entries (%s batch, attempts %s), %s runs',
				id, state, attempt, entries, batch_entries, attempts, calls), '; ' ORDER BY id)
			FILTER (WHERE rn <= 3), '')
		  FROM (SELECT c.*, row_number() OVER (ORDER BY id) rn FROM ($check) c
		         WHERE NOT (state = 'discarded' AND attempt = 2 AND entries = 2 AND batch_entries = 2
		                    AND attempts = '1,2' AND calls = 2)) w});
	is($wrong, '0', 'batch errors: each job ran twice, attempt 2, two "batch" entries (attempts 1 and 2) '
		  . '"the transaction of its batch failed: ..." with a sqlstate, no "lost" entry');
	note('batch errors: ' . sql(qq{
		SELECT format('%s handler runs, %s error entries, first message: %s', sum(calls), sum(entries),
		       (SELECT errors->0->>'message' FROM jobq.jobs WHERE id IN ($ids) ORDER BY id LIMIT 1))
		  FROM ($check) c}));
	is(sql('SELECT count(*) FROM app.batch_effects'), '0', 'batch errors: every effect was rolled back');
	is(sql("SELECT count(*) FROM jobq.jobs WHERE id IN ($ids) AND finalized_at IS NULL"), '0',
		'batch errors: every job has finalized_at');
	is(holderless(), '0', 'batch errors: no job is running without a holder');
	note('batch errors: components now ' . sql('SELECT app.fingerprint()') . " (were $fp0)");
	my $log = log_since($offset);
	my ($released, $not_started) = (0, 0);
	while ($log =~ /gave back (\d+) jobs of a batch whose transaction failed: .*?(\d+) not started/g)
	{
		$released += $1;
		$not_started += $2;
	}
	note("batch errors: the workers' log: $released jobs given back, $not_started of them never started; "
		  . scalar(grep { /rescuer .* gave back/ } split /\n/, $log) . ' rescuer lines');

	$hook_on = 0 if $hook_on && set_fail_batch('off');
	my $new = sql(q{SELECT array_to_string(jobq.enqueue_many('batchy', array_agg(jsonb_build_object('n', g) ORDER BY g)), ',')
		FROM generate_series(41, 50) g});
	ok(sql_until("SELECT count(*) = 10 FROM jobq.jobs WHERE id IN ($new) AND state = 'completed'"),
		'batch errors: once off, new jobs complete');
	is(sql("SELECT count(*) || ' ' || count(DISTINCT job_id) FROM app.batch_effects WHERE job_id IN ($new)"),
		'10 10', 'batch errors: ... each with its effect once');
	is(sql("SELECT count(*) FROM jobq.jobs WHERE id IN ($new) AND attempt = 1 AND errors = '[]'"), '10',
		'batch errors: ... at the first attempt, without an error');
});
$node->psql('postgres', 'ALTER SYSTEM RESET jobq.debug_fail_batch; SELECT pg_reload_conf();') if $hook_on;

is(holderless(), '0', 'at the end: no job is running without a holder');
$node->stop;
done_testing();
