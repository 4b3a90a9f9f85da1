# Attacks that try to stall jobq from inside a job or from a user session,
# each a group of its own:
#   1. a handler that catches its timeout (query_canceled) forever: its
#      worker is terminated after jobq.timeout_grace, the job is rescued,
#      counted and finally discarded, while other workers keep working;
#   2. jobq.cancel() of a running job whose handler catches the cancel: the
#      job ends and stays cancelled, its effects rolled back, its worker
#      slot runs jobs again;
#   3. locks held open by user sessions (set_queue_concurrency, retry,
#      cancel, an enqueue with a schedule's unique key, each in a
#      transaction left open) stall at most what they lock: jobs of other
#      queues and roles keep completing, the leader keeps scheduling;
#   4. workers claiming several concurrency-limited queues never deadlock;
#   5. a session queued for the leader's advisory lock, or a handler that
#      takes it, cannot leave the database leaderless;
#   6. a 300 MB error message neither breaks the batch it failed in nor
#      ends up whole in the job's errors (truncated to 8192 bytes).
# Every wait has a deadline, so a stall makes its group fail, not hang.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# Deadlines (s): generous, so that a loaded machine passes, yet bounded, so
# that a build the attacks do stall still finishes the test.
my $STALL = 25;          # work that must go on beside an open transaction
my $TIMEOUT_RUNS = 45;   # two attempts of a job that catches its timeout
my $SHORT = 30;          # anything else

my $OWN_DB = q{(SELECT oid FROM pg_database WHERE datname = current_database())};

# The component name and pid of the worker running a job ('' before).
sub running_in_worker
{
	my ($node, $job, $timeout) = @_;
	my $row = '';
	wait_until(
		sub {
			$row = $node->safe_psql('postgres', qq{
				SELECT component || '|' || pid FROM jobq.components
				 WHERE database = current_database() AND job_id = $job AND pid IS NOT NULL});
			return $row ne '';
		},
		$timeout // $SHORT);
	return split /\|/, $row;
}

sub sql_until
{
	my ($node, $sql, $timeout) = @_;
	return wait_until(sub { $node->safe_psql('postgres', $sql) eq 't' }, $timeout // $SHORT);
}

sub job_state
{
	my ($node, $job) = @_;
	return $node->safe_psql('postgres', "SELECT state FROM jobq.jobs WHERE id = $job");
}

# Waits until no job is available or running (a stalled group's leftovers
# must not spill into the next group).
sub settle
{
	my ($node, $what) = @_;
	ok(sql_until($node, q{SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE state IN ('available', 'running'))}),
		"$what: every job is done once the attack is over");
}

# A session as $role kept open in the background (errors do not end it).
sub session
{
	my ($node, $role) = @_;
	return $node->background_psql('postgres', timeout => 600, on_error_stop => 0,
		extra_params => [ '-U', $role ]);
}

sub as_role
{
	my ($node, $role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

# Ends a background session, whether or not its psql is still alive.
sub end_session
{
	my ($s) = @_;
	eval { $s->quit; 1 } or note("session ended: $@");
}

# The advisory locks a process holds, as pg_advisory_lock() argument lists
# that take the same lock tags, as far as SQL can name them: objsubid 1 is
# the bigint form, 2 the (int4, int4) form.
sub advisory_keys_of
{
	my ($node, $pid) = @_;
	my $int4 = sub { "CASE WHEN $_[0]::int8 >= 2147483648 THEN $_[0]::int8 - 4294967296 ELSE $_[0]::int8 END" };
	return map { [ split /,/ ] } split /\n/, $node->safe_psql('postgres', qq{
		SELECT CASE WHEN objsubid = 1 THEN ((classid::int8 << 32) | objid::int8)::text
		            ELSE (@{[ $int4->('classid') ]}) || ',' || (@{[ $int4->('objid') ]}) END
		  FROM pg_locks
		 WHERE locktype = 'advisory' AND pid = $pid AND granted AND database = $OWN_DB
		 ORDER BY classid, objid, objsubid});
}

# The leader's pid once a leader other than $old runs all four services.
sub new_leader_condition
{
	my ($old) = @_;
	return qq{
	SELECT (SELECT count(*) FROM jobq.components l, jobq.components s
	         WHERE l.database = current_database() AND l.component = 'leader'
	           AND l.pid IS NOT NULL AND l.pid <> $old
	           AND s.database = l.database AND s.pid = l.pid AND s.state = 'running'
	           AND s.component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')) = 4};
}

#############################################################################
# Node one: 4 workers (groups 4, 1, 6)
#############################################################################
my $node = jobq_node('stalls4', workers => 4, conf => "jobq.timeout_grace = '1s'\n");
jobq_install($node);
jobq_handlers($node);

# --- 4. no deadlocks between claimers of limited queues --------------------
{
	$node->safe_psql('postgres', q{
		SELECT jobq.create_queue('dl1', 2);
		SELECT jobq.create_queue('dl2', 2);
		SELECT jobq.create_queue('dl3', 2);
	});
	my $offset = -s $node->logfile;
	my $t0 = time;
	my $all_done = 1;
	for my $round (1 .. 5)
	{
		my $range = $node->safe_psql('postgres', qq{
			SELECT min(id) || ',' || max(id) FROM (
				SELECT jobq.enqueue('effect', jsonb_build_object('n', g), queue => 'dl' || (g % 3 + 1)) AS id
				  FROM generate_series(1, 300) g) s});
		my ($lo, $hi) = split /,/, $range;
		my $done = sql_until($node, qq{
			SELECT count(*) = 300 FROM jobq.jobs WHERE id BETWEEN $lo AND $hi AND state = 'completed'}, 60);
		ok($done, "deadlocks: round $round: the 300 jobs over 3 queues of concurrency 2 completed");
		$all_done &&= $done;
	}
	note(sprintf('deadlocks: 5 rounds of 300 jobs took %.1f s', time - $t0));
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id WHERE j.queue LIKE 'dl_'}),
		'1500', 'deadlocks: each of the 1500 jobs ran once');
	my $log = slurp_file($node->logfile, $offset);
	my $deadlocks = () = $log =~ /deadlock detected/g;
	is($deadlocks, 0, 'deadlocks: the server log has no "deadlock detected"');
}

# --- 1. a handler that catches its timeout ---------------------------------
{
	$node->safe_psql('postgres', q{
CREATE FUNCTION app.catcher(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	LOOP
		BEGIN
			PERFORM pg_sleep(3600);
		EXCEPTION WHEN query_canceled THEN
			NULL;
		END;
	END LOOP;
END $$;
SELECT jobq.register('catcher', 'app.catcher(jsonb)', timeout => '1 s', max_attempts => 2,
					 backoff_max => '200 ms');
});
	my $job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('catcher')});
	my $t0 = time;
	my ($slot, $pid) = running_in_worker($node, $job);
	ok(defined $pid, "catch timeout: job $job runs in $slot (pid $pid)");
	$pid //= 0;
	$slot //= '';

	# Other jobs complete meanwhile.
	my $others = $node->safe_psql('postgres', q{
		SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g))::text, ',')
		  FROM generate_series(1, 20) g});
	ok(sql_until($node, "SELECT count(*) = 20 FROM jobq.jobs WHERE id IN ($others) AND state = 'completed'"),
		'catch timeout: 20 other jobs complete on the other workers while it runs');

	my $ended = sql_until($node, qq{
		SELECT (SELECT state IN ('completed', 'cancelled', 'discarded') FROM jobq.jobs WHERE id = $job)
		   AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)
		   AND EXISTS (SELECT FROM jobq.components
		                WHERE database = current_database() AND component = '$slot'
		                  AND pid IS NOT NULL AND pid <> $pid)}, $TIMEOUT_RUNS);
	ok($ended, sprintf('catch timeout: the job ended and its first worker was replaced (%.1f s)', time - $t0));
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"),
		'0', "catch timeout: the worker process that ran it ($pid) was terminated");
	my $new_pid = component_pid($node, $slot);
	ok($new_pid ne '' && $new_pid ne $pid, "catch timeout: $slot runs in a new process ($new_pid)");
	my ($state, $attempt, $nerrors, $timeouts) = split /\|/, $node->safe_psql('postgres', qq{
		SELECT state, attempt, jsonb_array_length(errors),
		       (SELECT count(*) FROM jsonb_array_elements(errors) e
		         WHERE coalesce((e ->> 'lost')::boolean, false) OR e ->> 'message' ~* 'timeout')
		  FROM jobq.jobs WHERE id = $job});
	is($state, 'discarded', 'catch timeout: the job was discarded');
	is($attempt, '2', 'catch timeout: after its 2 attempts, each counted');
	is($nerrors, '2', 'catch timeout: with one error entry per attempt');
	is($timeouts, '2', 'catch timeout: each entry says lost or timeout');
	note('catch timeout: errors ' . $node->safe_psql('postgres', "SELECT errors FROM jobq.jobs WHERE id = $job"));

	my $later = $node->safe_psql('postgres', q{
		SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g))::text, ',')
		  FROM generate_series(1, 20) g});
	ok(sql_until($node, "SELECT count(*) = 20 FROM jobq.jobs WHERE id IN ($later) AND state = 'completed'"),
		'catch timeout: jobs enqueued afterwards complete');

	# A build that let the handler run on: stop it, for the next group.
	$node->safe_psql('postgres', qq{
		SELECT jobq.cancel($job) WHERE (SELECT state FROM jobq.jobs WHERE id = $job) = 'running';
		SELECT pg_terminate_backend(pid) FROM jobq.components
		 WHERE database = current_database() AND job_id = $job AND pid IS NOT NULL;});
	settle($node, 'catch timeout');
}

# --- 6. an oversized error message -----------------------------------------
{
	$node->safe_psql('postgres', q{
CREATE FUNCTION app.big(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION '%', repeat('x', 300 * 1024 * 1024);
END $$;
SELECT jobq.register('big', 'app.big(jsonb)', max_attempts => 1);
});
	# Quick jobs first, so that the workers claim several jobs at a time.
	my $warm = $node->safe_psql('postgres', q{
		SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g))::text, ',')
		  FROM generate_series(1, 200) g});
	ok(sql_until($node, "SELECT count(*) = 200 FROM jobq.jobs WHERE id IN ($warm) AND state = 'completed'"),
		'big error: 200 quick jobs completed first');

	my @ids = split /\n/, $node->safe_psql('postgres', q{
		BEGIN;
		SELECT jobq.enqueue('effect', '{"n": 601}');
		SELECT jobq.enqueue('effect', '{"n": 602}');
		SELECT jobq.enqueue('effect', '{"n": 603}');
		SELECT jobq.enqueue('big');
		SELECT jobq.enqueue('effect', '{"n": 604}');
		SELECT jobq.enqueue('effect', '{"n": 605}');
		SELECT jobq.enqueue('effect', '{"n": 606}');
		COMMIT;});
	my $big = $ids[3];
	my $normal = join ',', @ids[ 0 .. 2, 4 .. 6 ];
	my $all = join ',', @ids;
	my $t0 = time;
	my $settled = sql_until($node, qq{
		SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE id IN ($all)
		                    AND state IN ('scheduled', 'available', 'running'))}, $SHORT);
	ok($settled, sprintf('big error: none of the 7 jobs stays running (%.1f s)', time - $t0));
	note('big error: workers that claimed the 7 jobs: '
		  . $node->safe_psql('postgres', "SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE id IN ($all)"));
	is($node->safe_psql('postgres', "SELECT count(*) FROM jobq.jobs WHERE id IN ($normal) AND state = 'completed'"),
		'6', 'big error: the 6 normal jobs of the batch completed');
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE n BETWEEN 601 AND 606"),
		'6', 'big error: and made their effects');
	like(job_state($node, $big), qr/^(retryable|discarded)$/, 'big error: the failing job is retryable or discarded');
	my ($len, $xs) = split /\|/, $node->safe_psql('postgres', qq{
		SELECT octet_length(errors -> 0 ->> 'message'), errors -> 0 ->> 'message' ~ '^x+'
		  FROM jobq.jobs WHERE id = $big});
	ok(defined $len && $len ne '' && $len <= 8192 && $len > 0,
		'big error: its error message is kept truncated to at most 8192 bytes (' . ($len // 'none') . ')');
	is($xs, 't', 'big error: the kept message is the start of the raised one');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM jobq.jobs WHERE state = 'running'}),
		'0', 'big error: no job is left running');
}

$node->stop;

#############################################################################
# Node two: 1 worker (groups 2, 5)
#############################################################################
$node = jobq_node('stalls1', workers => 1, conf => "jobq.timeout_grace = '1s'\n");
jobq_install($node);
jobq_handlers($node);
$node->safe_psql('postgres', 'CREATE ROLE alice LOGIN');

# --- 2. cancel of a running job whose handler catches the cancel ----------
{
	$node->safe_psql('postgres', q{
CREATE FUNCTION app.stubborn(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, 200, job.attempt);
	LOOP
		BEGIN
			PERFORM pg_sleep(3600);
		EXCEPTION WHEN query_canceled THEN
			NULL;
		END;
	END LOOP;
END $$;
SELECT jobq.register('stubborn', 'app.stubborn(jsonb)', max_attempts => 3, backoff_max => '200 ms');
});
	my $job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('stubborn')});
	my ($slot, $pid) = running_in_worker($node, $job);
	ok(defined $pid, "catch cancel: job $job runs in $slot (pid $pid)");
	$pid //= 0;
	$slot //= 'worker 0';
	my $t0 = time;
	is($node->safe_psql('postgres', "SELECT jobq.cancel($job)"), 't', 'catch cancel: jobq.cancel returns true');
	# the only worker must get back to work for this one to complete
	my $after = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 201}')});
	my $ok = sql_until($node, qq{
		SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)
		   AND (SELECT state = 'completed' FROM jobq.jobs WHERE id = $after)}, $SHORT);
	ok($ok, sprintf('catch cancel: the worker was terminated and its slot ran the next job (%.1f s)', time - $t0));
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"),
		'0', "catch cancel: the process that ran the handler ($pid) is gone");
	is(job_state($node, $job), 'cancelled', 'catch cancel: the job is still cancelled');
	is($node->safe_psql('postgres', "SELECT attempt FROM jobq.jobs WHERE id = $job"),
		'1', 'catch cancel: it did not run again');
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id = $job"),
		'0', 'catch cancel: its effects were rolled back');
	is(job_state($node, $after), 'completed', "catch cancel: $slot ran the next job");
	my $new_pid = component_pid($node, $slot);
	ok($new_pid ne '' && $new_pid ne $pid, "catch cancel: $slot runs in a new process ($new_pid)");

	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid) WHERE $pid <> 0");
	settle($node, 'catch cancel');
}

# --- 5. squatting the leader's advisory lock -------------------------------
{
	ok(wait_ready($node), 'squat: jobq is ready');
	my $leader = component_pid($node, 'leader');
	like($leader, qr/^\d+$/, "squat: a leader runs ($leader)");
	my @keys = advisory_keys_of($node, $leader);
	ok(@keys > 0, 'squat: the leader holds advisory locks: ' . join(' ', map { '(' . join(',', @$_) . ')' } @keys));
	my $calls = join ', ', map { 'pg_advisory_lock(' . join(', ', @$_) . ')' } @keys;

	# A session queues for those locks, so that it gets them when the leader
	# goes.
	my $squatter = session($node, 'alice');
	my $sq_pid = $squatter->query_safe('SELECT pg_backend_pid()');
	$squatter->query_until(qr/queued/, "\\echo queued\nSELECT $calls;\n");
	ok(sql_until($node, qq{SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $sq_pid AND locktype = 'advisory')}),
		'squat: a session of alice waits for (or holds) the leader keys');
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($leader)");
	my $t0 = time;
	my $sched = $node->safe_psql('postgres',
		q{SELECT jobq.enqueue('effect', '{"n": 501}', run_at => now() + interval '1 s')});
	my $ok = sql_until($node, new_leader_condition($leader)
		  . " AND (SELECT state = 'completed' FROM jobq.jobs WHERE id = $sched)", $SHORT);
	ok($ok, sprintf('squat: a new leader with its services took over and ran a scheduled job (%.1f s)', time - $t0));
	note('squat: the squatter now holds '
		  . $node->safe_psql('postgres', qq{
			SELECT count(*) FROM pg_locks WHERE pid = $sq_pid AND locktype = 'advisory' AND granted})
		  . ' advisory locks');
	my $new = component_pid($node, 'leader');
	ok($new ne '' && $new ne $leader, "squat: a new leader runs ($new)");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM jobq.components
		 WHERE database = current_database() AND state = 'running' AND pid = '@{[ $new || 0 ]}'::int
		   AND component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')}),
		'4', 'squat: the new leader runs the four services');
	is(job_state($node, $sched), 'completed', 'squat: the job scheduled 1 s ahead was promoted and completed');
	end_session($squatter);

	# A handler takes the leader's keys (session level: they outlive the job).
	ok(wait_ready($node), 'squat by a handler: jobq is ready');
	$leader = component_pid($node, 'leader');
	like($leader, qr/^\d+$/, "squat by a handler: a leader runs ($leader)");
	@keys = advisory_keys_of($node, $leader);
	my $keys_json = '[' . join(',', map { '[' . join(',', @$_) . ']' } @keys) . ']';
	$node->safe_psql('postgres', q{
CREATE FUNCTION app.grab(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	k jsonb;
BEGIN
	FOR k IN SELECT * FROM jsonb_array_elements(args -> 'keys') LOOP
		IF jsonb_array_length(k) = 1 THEN
			PERFORM pg_advisory_lock((k ->> 0)::bigint);
		ELSE
			PERFORM pg_advisory_lock((k ->> 0)::int, (k ->> 1)::int);
		END IF;
	END LOOP;
END $$;
});
	as_role($node, 'alice', q{SELECT jobq.register('grab', 'app.grab(jsonb)', timeout => '60 s', max_attempts => 1)});
	my $grab = as_role($node, 'alice', qq{SELECT jobq.enqueue('grab', '{"keys": $keys_json}')});
	my ($gslot, $gpid);
	ok( wait_until(
			sub {
				($gslot, $gpid) = split /\|/, $node->safe_psql('postgres', qq{
					SELECT component || '|' || pid FROM jobq.components
					 WHERE database = current_database() AND job_id = $grab AND pid IS NOT NULL});
				return 1 if job_state($node, $grab) =~ /^(completed|discarded|cancelled)$/;
				return defined $gpid && $node->safe_psql('postgres', qq{
					SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $gpid AND locktype = 'advisory')}) eq 't';
			},
			$SHORT),
		"squat by a handler: job $grab waits for (or took) the leader keys");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($leader)");
	$t0 = time;
	$sched = $node->safe_psql('postgres',
		q{SELECT jobq.enqueue('effect', '{"n": 502}', run_at => now() + interval '1 s')});
	$ok = sql_until($node, new_leader_condition($leader)
		  . " AND (SELECT state = 'completed' FROM jobq.jobs WHERE id = $sched)", $SHORT);
	ok($ok, sprintf('squat by a handler: a new leader took over and ran a scheduled job (%.1f s)', time - $t0));
	is(job_state($node, $grab), 'completed', 'squat by a handler: the job that took the keys completed');
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_locks l JOIN jobq.components c ON c.pid = l.pid
		 WHERE l.locktype = 'advisory' AND c.database = current_database() AND c.component LIKE 'worker%'}),
		'0', 'squat by a handler: no worker holds an advisory lock after the job');
	is(job_state($node, $sched), 'completed', 'squat by a handler: the job scheduled 1 s ahead completed');
}

$node->stop;

#############################################################################
# Node three: 2 workers (group 3)
#############################################################################
$node = jobq_node('stalls2', workers => 2, conf => "jobq.timeout_grace = '1s'\n");
jobq_install($node);
jobq_handlers($node);
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	SELECT jobq.create_queue('q2', 2);
	SELECT jobq.create_queue('q3');
});
as_role($node, 'alice', q{
	SELECT jobq.register('alice_effect', 'app.effect(jsonb)', backoff_max => '200 ms');
	SELECT jobq.create_queue('q1', 1);
});

# Jobs of the superuser in q2 (concurrency 2), q3 (no limit) and default,
# and one scheduled 1 s ahead, must all complete within $STALL s.
sub others_complete
{
	my ($what) = @_;
	my $ids = $node->safe_psql('postgres', q{
		SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g), queue => q)::text, ',')
		  FROM generate_series(1, 3) g, unnest(ARRAY['q2', 'q3', 'default']) q});
	my $sched = $node->safe_psql('postgres',
		q{SELECT jobq.enqueue('effect', '{}', run_at => now() + interval '1 s')});
	my $t0 = time;
	my $ok = sql_until($node, qq{
		SELECT count(*) = 10 FROM jobq.jobs WHERE id IN ($ids, $sched) AND state = 'completed'}, $STALL);
	ok($ok, sprintf('%s: jobs of other queues and roles complete meanwhile (%.1f s)', $what, time - $t0));
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(queue || ':' || n, ' ' ORDER BY queue) FROM (
			SELECT queue, count(*) FILTER (WHERE state = 'completed') n
			  FROM jobq.jobs WHERE id IN ($ids) GROUP BY queue) s}),
		'default:3 q2:3 q3:3', "$what: ... in the limited queue q2, the unlimited q3 and default");
	is(job_state($node, $sched), 'completed', "$what: ... and a job scheduled 1 s ahead was promoted and ran");
}

# Enqueues a sleeping job of alice and waits until a worker runs it.
sub alice_running_job
{
	my ($what, $n) = @_;
	my $job = as_role($node, 'alice', qq{SELECT jobq.enqueue('alice_effect', '{"n": $n, "sleep": 5}')});
	my ($slot, $pid) = running_in_worker($node, $job);
	ok(defined $pid, "$what: alice's job $job runs in " . ($slot // 'no worker'));
	return ($job, $slot // '');
}

# --- 3a. an open set_queue_concurrency ------------------------------------
{
	my $s = session($node, 'alice');
	$s->query_safe('BEGIN');
	$s->query_safe(q{SELECT jobq.set_queue_concurrency('q1', 1)});
	others_complete('open set_queue_concurrency(q1)');
	$s->query_safe('ROLLBACK');
	end_session($s);
	settle($node, 'open set_queue_concurrency(q1)');
}

# --- 3b. an open retry of a running job (both workers' jobs) ---------------
{
	my $what = 'open retry';
	my ($j1, $w1) = alice_running_job($what, 301);
	my ($j2, $w2) = alice_running_job($what, 302);
	isnt($w1, $w2, "$what: the two jobs run in the two workers");
	my @s;
	for my $j ($j1, $j2)
	{
		my $s = session($node, 'alice');
		$s->query_safe('BEGIN');
		is(scalar($s->query("SELECT jobq.retry($j)")), 'f', "$what: retry($j) of the running job returns false");
		is(job_state($node, $j), 'running', "$what: ... and left its transaction open while the job runs");
		push @s, $s;
	}
	others_complete($what);
	ok(sql_until($node, "SELECT count(*) = 2 FROM jobq.jobs WHERE id IN ($j1, $j2) AND state = 'completed'",
			$STALL),
		"$what: the two jobs completed while the retries were open");
	for my $s (@s)
	{
		$s->query('COMMIT');
		end_session($s);
	}
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id IN ($j1, $j2)"),
		'2', "$what: each made its effect once");
	settle($node, $what);
}

# --- 3c. an open cancel of a running job (both workers' jobs) --------------
{
	my $what = 'open cancel';
	my ($j1, $w1) = alice_running_job($what, 311);
	my ($j2, $w2) = alice_running_job($what, 312);
	isnt($w1, $w2, "$what: the two jobs run in the two workers");
	my %s;
	for my $j ($j1, $j2)
	{
		my $s = session($node, 'alice');
		$s->query_safe('BEGIN');
		is(scalar($s->query("SELECT jobq.cancel($j)")), 't', "$what: cancel($j) of the running job returns true");
		is(job_state($node, $j), 'running', "$what: ... and left its transaction open while the job runs");
		$s{$j} = $s;
	}
	others_complete($what);
	# The job left under a rolled back cancel may have to wait for the
	# rescuer, then run again: a longer deadline.
	$s{$j1}->query('COMMIT');
	$s{$j2}->query('ROLLBACK');
	end_session($_) for values %s;
	my $t0 = time;
	ok(sql_until($node, qq{
		SELECT (SELECT state = 'cancelled' FROM jobq.jobs WHERE id = $j1)
		   AND (SELECT state = 'completed' FROM jobq.jobs WHERE id = $j2)}, 60),
		sprintf('%s: once committed and rolled back, the jobs ended (%.1f s)', $what, time - $t0));
	is(job_state($node, $j1), 'cancelled', "$what: the job whose cancel committed is cancelled");
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id = $j1"),
		'0', "$what: ... with its effects rolled back");
	is(job_state($node, $j2), 'completed', "$what: the job whose cancel rolled back did not stay running: completed");
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE job_id = $j2"),
		'1', "$what: ... with its effect made once");
	settle($node, $what);
}

# --- 3d. an open enqueue with a schedule's unique key ----------------------
{
	my $what = 'open enqueue with a schedule key';
	as_role($node, 'alice', q{
		SELECT jobq.schedule('s_block', '0 0 1 1 *', 'alice_effect', '{"n": 321}');
		SELECT jobq.schedule('s_free', '0 0 1 1 *', 'alice_effect', '{"n": 322}');
	});
	# src/periodic.c: the job of a fire has the key jobq.schedule:<name>:<epoch>
	my $fire = $node->safe_psql('postgres',
		q{SELECT extract(epoch FROM date_trunc('second', now()) - interval '2 s')::int8});
	my $s = session($node, 'alice');
	$s->query_safe('BEGIN');
	like($s->query_safe(qq{
		SELECT jobq.enqueue('alice_effect', '{"n": 323}', unique_key => 'jobq.schedule:s_block:$fire')}),
		qr/^\d+$/, "$what: alice enqueued with the key of s_block's next fire, and left the transaction open");
	# both schedules due, s_block first
	$node->safe_psql('postgres', qq{
		BEGIN;
		UPDATE jobq.schedules SET next_fire_at = to_timestamp($fire) WHERE name = 's_block';
		UPDATE jobq.schedules SET next_fire_at = to_timestamp($fire + 1) WHERE name = 's_free';
		SELECT jobq._wake_leader_at_commit();
		COMMIT;});
	my $sched = $node->safe_psql('postgres',
		q{SELECT jobq.enqueue('effect', '{"n": 324}', run_at => now() + interval '1 s')});
	my $t0 = time;
	my $ok = sql_until($node, qq{
		SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key = 'jobq.schedule:s_free:' || ($fire + 1))
		   AND (SELECT state = 'completed' FROM jobq.jobs WHERE id = $sched)}, $STALL);
	ok($ok, sprintf('%s: the leader goes on (%.1f s)', $what, time - $t0));
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM jobq.jobs WHERE unique_key = 'jobq.schedule:s_free:' || ($fire + 1)}),
		'1', "$what: the other due schedule fired");
	is(job_state($node, $sched), 'completed', "$what: a job scheduled 1 s ahead was promoted and ran");
	$s->query('ROLLBACK');
	end_session($s);
	settle($node, $what);
}

$node->stop;
done_testing();
