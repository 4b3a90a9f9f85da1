# Hostile database and role settings: jobq's processes choose their own
# settings, and handlers get their owner's.
#
#  A. Handlers run under the settings a new session of the job's owner would
#     get, read fresh for every batch (no restart): alice's role and
#     role-in-database settings (app.tenant, lock_timeout) show in her
#     handler (not jobq's own lock_timeout of 500ms); a change is
#     seen by the next job; default_transaction_read_only = on for alice
#     makes her handler's INSERT fail with 25006 (while bob's jobs run
#     after hers write), and after RESET a jobq.retry() of the job
#     completes; no worker restarts meanwhile.
#
#  B. One round per hostile setting (lock_timeout, statement_timeout, idle
#     timeouts, default_transaction_isolation serializable / repeatable
#     read, default_transaction_read_only, default_transaction_deferrable,
#     session_replication_role = replica, search_path): the setting is made
#     with ALTER DATABASE postgres SET and ALTER ROLE <bootstrap superuser>
#     SET (the role jobq's processes connect as; where the values can
#     differ, the role gets another hostile value than the database, so
#     that a handler shows whose settings it got), the node is restarted so
#     that every jobq process connects with it, and then
#       - a job whose worker was running it when the node went down is
#         rescued and completes (its effect made once);
#       - a burst of 400 jobs of bob (plain, a few running 0.2 s, failing
#         once, in a queue of concurrency 2, scheduled 1 s ahead) and a
#         fire of bob's periodic schedule all end completed, each effect
#         made exactly once, the only failures the planned ones;
#       - no job is running without a holder;
#       - jobq's own statements still wait up to 500 ms for a row lock: a
#         session holding a running job's row for 0.2 s after the worker
#         started waiting for it does not make the job fail;
#       - handlers of bob and alice see what a new session of their owner
#         gets (the database's lock_timeout, search_path and read-only
#         default, not the values of jobq's role nor jobq's own), READ
#         COMMITTED whatever the default isolation;
#       - jobq's processes logged no error.
#
# The test's own sessions override every hostile setting with PGOPTIONS
# (they connect as the same superuser as jobq), and act as bob or alice by
# SET ROLE, so that the roles' settings never apply to them.  Bob, who
# enqueues the bursts, has default_transaction_read_only = off as a role
# setting, which beats the database's (as a DBA would do for an
# application role): his handlers must be able to write in every round.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $WAIT = 60;    # seconds any wait may take here
my $WORKERS = 3;

my $node = jobq_node('hostile_settings', workers => $WORKERS, conf => q{
jobq.timeout_grace = '1s'
jobq.rescue_interval = '1s'
});

# The test's sessions: none of the hostile settings.
$ENV{PGOPTIONS} = join ' ',
  '-c lock_timeout=0',
  '-c statement_timeout=0',
  '-c idle_in_transaction_session_timeout=0',
  '-c idle_session_timeout=0',
  '-c default_transaction_isolation=read\ committed',
  '-c default_transaction_read_only=off',
  '-c default_transaction_deferrable=off',
  '-c session_replication_role=origin',
  '-c search_path=public';

sub sql
{
	my ($query) = @_;
	return $node->safe_psql('postgres', $query);
}

# A new session of the bootstrap superuser as jobq's processes get it:
# without the test's overrides.
# (idle_session_timeout = 10ms could end it before psql sends the query:
# a few tries)
sub fresh_sql
{
	my ($query) = @_;
	delete local $ENV{PGOPTIONS};
	my ($ret, $out, $err);
	for (1 .. 5)
	{
		($ret, $out, $err) = $node->psql('postgres', $query);
		return $out if $ret == 0;
		note("a new session failed: $err");
	}
	return undef;
}

# A new session of $role (not a superuser: it cannot override
# session_replication_role); only the timeouts that could end the session
# are overridden.
sub fresh_as
{
	my ($role, $query) = @_;
	local $ENV{PGOPTIONS} = '-c statement_timeout=0 -c idle_session_timeout=0';
	return $node->safe_psql('postgres', $query, extra_params => [ '-U', $role ]);
}

sub sql_until
{
	my ($query, $timeout) = @_;
	return wait_until(sub { sql($query) eq 't' }, $timeout // $WAIT);
}

# jobq.wait() with our deadline.
sub wait_for
{
	my ($id) = @_;
	return sql("SELECT jobq.wait($id, '$WAIT s')");
}

jobq_install($node);
jobq_handlers($node);

# jobq's processes connect as the bootstrap superuser (oid 10).
my $su = sql('SELECT rolname FROM pg_authid WHERE oid = 10');
is(sql('SELECT current_user'), $su, "the test connects as the bootstrap superuser $su");
is( sql(q{
	SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity
	 WHERE backend_type IN ('jobq worker', 'jobq candidate')}),
	$su, "jobq's workers and candidates connect as $su");

sql(q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
ALTER ROLE bob SET default_transaction_read_only = off;
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;

-- what a handler sees of its session
CREATE FUNCTION app.probe(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object(
		'lock_timeout', current_setting('lock_timeout'),
		'search_path', current_setting('search_path'),
		'tenant', coalesce(nullif(current_setting('app.tenant', true), ''), '<none>'),
		'read_only', current_setting('transaction_read_only'),
		'isolation', current_setting('transaction_isolation'),
		'user', current_user)
$$;

-- runs until its worker dies the first time it is called (the test reads
-- the counter to know which call that is), then makes its effect
CREATE SEQUENCE app.sticky_calls;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE app.sticky_calls TO PUBLIC;
CREATE FUNCTION app.sticky(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	IF pg_catalog.nextval('app.sticky_calls') = (args->>'sleep_at')::bigint THEN
		PERFORM pg_catalog.pg_sleep(600);
	END IF;
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, -1, job.attempt);
END $$;

-- waits (polling: a lock wait would be subject to lock_timeout) until the
-- test releases advisory lock args->>'key', then makes its effect
CREATE FUNCTION app.gate(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	WHILE NOT pg_catalog.pg_try_advisory_xact_lock_shared((args->>'key')::bigint) LOOP
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, -3, job.attempt);
END $$;

-- the jobs of each round, by sort
CREATE TABLE app.burst (round int, sort text, id bigint);
GRANT SELECT, INSERT ON app.burst TO PUBLIC;

SET ROLE alice;
SELECT jobq.register('a_probe', 'app.probe(jsonb)', max_attempts => 1);
SELECT jobq.register('a_write', 'app.effect(jsonb)', max_attempts => 1);
RESET ROLE;

SET ROLE bob;
SELECT jobq.create_queue('limited', 2);
SELECT jobq.register('b_probe', 'app.probe(jsonb)', max_attempts => 1);
SELECT jobq.register('b_ok', 'app.effect(jsonb)', backoff_max => '200 ms');
SELECT jobq.register('b_flaky', 'app.effect(jsonb)', max_attempts => 3, backoff_max => '200 ms');
SELECT jobq.register('b_limited', 'app.effect(jsonb)', queue => 'limited', backoff_max => '200 ms');
SELECT jobq.register('b_sticky', 'app.sticky(jsonb)', max_attempts => 5, backoff_max => '200 ms');
SELECT jobq.register('b_gate', 'app.gate(jsonb)', timeout => '30 s', max_attempts => 3, backoff_max => '200 ms');
SELECT jobq.schedule('b_cron', '0 0 1 1 *', 'b_ok', '{"n": -2}');
RESET ROLE;
});

# Enqueues a job of kind $kind as $role; returns its id.
sub enqueue_as
{
	my ($role, $kind, $args) = @_;
	$args //= '{}';
	return sql("SET ROLE $role; SELECT jobq.enqueue('$kind', '$args')");
}

# What a handler of $role saw: lock_timeout|search_path|tenant|read_only|isolation|user.
sub probe_result
{
	my ($id) = @_;
	return sql(qq{
		SELECT concat_ws('|', result->>'lock_timeout', result->>'search_path',
		                 result->>'tenant', result->>'read_only',
		                 result->>'isolation', result->>'user')
		  FROM jobq.jobs WHERE id = $id});
}

sub probe_as
{
	my ($role, $what) = @_;
	my $id = enqueue_as($role, $role eq 'alice' ? 'a_probe' : 'b_probe');
	is(wait_for($id), 'completed', "$what: the probe job $id of $role completed");
	my $r = probe_result($id);
	note("$what: the handler of $role saw $r");
	return $r;
}

sub worker_pids
{
	return sql(q{
		SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
		 WHERE backend_type = 'jobq worker'});
}

# Errors that jobq's processes logged since $offset (handler failures are
# recorded in the jobs, not logged).
sub jobq_errors_in_log
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return grep { /\] jobq \w+ (?:ERROR|FATAL|PANIC|WARNING):/ } split /\n/, $log;
}

my $DEFAULT_PATH = '"$user", public';

# jobq's own statements wait up to 500 ms for a row lock a user session
# holds (README, Security), whatever lock_timeout the database or role
# sets: a session locks the row of a running job, the job's handler ends,
# the worker's UPDATE that completes the job waits for the row, and 0.2 s
# after the test saw it waiting the session commits.  The job must complete
# at its first attempt.
my $gate_key = 9400;
sub row_lock_wait
{
	my ($what) = @_;
	$gate_key++;
	my $s = $node->background_psql('postgres', timeout => 600, on_error_stop => 0);
	$s->query_safe("SELECT pg_advisory_lock($gate_key)");
	my $job = enqueue_as('bob', 'b_gate', qq({"key": $gate_key}));
	my $pid = '';
	wait_until(
		sub {
			$pid = sql(qq{
				SELECT coalesce(max(pid)::text, '') FROM jobq.components
				 WHERE database = current_database() AND job_id = $job AND pid IS NOT NULL});
			return $pid ne '';
		},
		$WAIT);
	ok($pid ne '', "$what: row lock: job $job runs in worker " . ($pid || 'none'));
	$pid ||= 0;
	# (should the worker hold the row, this fails instead of waiting for
	# ever on a handler that waits for us)
	$s->query_safe("SET lock_timeout = '5s'");
	$s->query_safe('BEGIN');
	$s->query_safe("SELECT id FROM jobq.jobs WHERE id = $job FOR UPDATE");
	$s->query_safe("SELECT pg_advisory_unlock($gate_key)");
	my $t0 = time;
	my $waited = 0;
	wait_until(
		sub {
			$waited = sql(qq{
				SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid AND wait_event_type = 'Lock')})
			  eq 't';
			return $waited || sql(qq{
				SELECT state <> 'running' OR jsonb_array_length(errors) > 0 FROM jobq.jobs WHERE id = $job}) eq 't';
		},
		$WAIT);
	ok($waited, sprintf('%s: row lock: the worker waits for the row of the job the session locked (seen after %.2f s)',
		$what, time - $t0));
	$s->query_safe('SELECT pg_sleep(0.2)');
	$s->query_safe('COMMIT');
	$s->quit;
	is(wait_for($job), 'completed', "$what: row lock: the job completed once the session committed");
	is( sql(qq{
		SELECT attempt || '/' || jsonb_array_length(errors) || '/'
		       || (SELECT count(*) FROM app.effects WHERE job_id = $job)
		  FROM jobq.jobs WHERE id = $job}),
		'1/0/1', "$what: row lock: at its first attempt, with no error, its effect made once (attempt/errors/effects)");
	note("$what: row lock: errors " . sql("SELECT errors FROM jobq.jobs WHERE id = $job"));
}

#############################################################################
# A. Handlers get their owner's settings, read fresh for every job
#############################################################################
{
	my $pids = worker_pids();
	my $offset = -s $node->logfile;

	is(probe_as('alice', 'no settings'), "0|$DEFAULT_PATH|<none>|off|read committed|alice",
		"no settings: alice's handler sees lock_timeout 0 (not jobq's 500ms), the default search_path, "
		  . 'no app.tenant, read-write, READ COMMITTED, as alice');

	sql(q{
		ALTER ROLE alice IN DATABASE postgres SET app.tenant = 't1';
		ALTER ROLE alice SET lock_timeout = '7s';
	});
	is(probe_as('alice', 'alice settings'), "7s|$DEFAULT_PATH|t1|off|read committed|alice",
		"alice's settings: her handler sees app.tenant t1 (role in database) and lock_timeout 7s (role)");

	sql(q{ALTER ROLE alice IN DATABASE postgres SET app.tenant = 't2'});
	# alice's job and bob's in one transaction, in a paused queue then
	# resumed: claimed together, alice's first (often in one batch, see
	# the note), so that alice's settings would show in bob's handler if
	# they leaked from one job to the next
	my ($a2, $b2) = grep { length } split /\n/, sql(q{
		SELECT jobq.pause('default');
		BEGIN;
		SET LOCAL ROLE alice;
		SELECT jobq.enqueue('a_probe');
		SET LOCAL ROLE bob;
		SELECT jobq.enqueue('b_probe');
		COMMIT;
		SELECT jobq.resume('default');});
	is(wait_for($a2) . '/' . wait_for($b2), 'completed/completed', 'changed tenant: the probes of alice and bob completed');
	note('changed tenant: claims (batches) that ran the two jobs: ' . sql("SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE id IN ($a2, $b2)"));
	is(probe_result($a2), "7s|$DEFAULT_PATH|t2|off|read committed|alice",
		"after ALTER ROLE alice IN DATABASE postgres SET app.tenant = 't2', the next job sees t2");
	is(probe_result($b2), "0|$DEFAULT_PATH|<none>|off|read committed|bob",
		"bob's handler, run next, sees none of alice's settings");

	sql(q{ALTER ROLE alice SET default_transaction_read_only = on});
	# alice's write first, then bob's writes, the same way: read-only must
	# end with her job
	my ($w, @bw) = grep { length } split /\n/, sql(q{
		SELECT jobq.pause('default');
		BEGIN;
		SET LOCAL ROLE alice;
		SELECT jobq.enqueue('a_write', '{"n": 9001}');
		SET LOCAL ROLE bob;
		SELECT jobq.enqueue('b_ok', jsonb_build_object('n', 9001 + g)) FROM generate_series(1, 20) g;
		COMMIT;
		SELECT jobq.resume('default');});
	my $bw = join ',', @bw;
	is(wait_for($w), 'discarded', "read-only alice: her job $w that inserts failed (1 attempt): discarded");
	my ($sqlstate, $msg) = split /\|/, sql(qq{
		SELECT concat_ws('|', errors->0->>'sqlstate', errors->0->>'message') FROM jobq.jobs WHERE id = $w});
	is($sqlstate, '25006', "read-only alice: its error entry has sqlstate 25006 (" . ($msg // '') . ')');
	is(sql("SELECT count(*) FROM app.effects WHERE job_id = $w"), '0', 'read-only alice: no effect');
	ok(sql_until("SELECT count(*) = 20 FROM jobq.jobs WHERE id IN ($bw) AND state NOT IN ('available', 'running', 'scheduled', 'retryable')"),
		"read-only alice: bob's 20 jobs enqueued after hers ended");
	is( sql(qq{
		SELECT count(*) FILTER (WHERE state = 'completed' AND attempt = 1) || '/'
		       || (SELECT count(*) FROM app.effects WHERE job_id IN ($bw))
		  FROM jobq.jobs WHERE id IN ($bw)}),
		'20/20', "read-only alice: bob's jobs wrote, at their first attempt (completed/effects)");
	note('read-only alice: claims (batches) that ran the 21 jobs: ' . sql("SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE id IN ($w, $bw)"));
	like(probe_as('alice', 'read-only alice'), qr/^7s\|[^|]*\|t2\|on\|read committed\|alice$/,
		"read-only alice: her handler's transaction_read_only is on");

	sql(q{ALTER ROLE alice RESET default_transaction_read_only});
	is(sql("SET ROLE alice; SELECT jobq.retry($w)"), 't', "after RESET, alice retries job $w");
	is(wait_for($w), 'completed', 'after RESET: the retried job completed');
	is(sql("SELECT count(*) FROM app.effects WHERE job_id = $w"), '1', 'after RESET: its effect was made once');

	is(worker_pids(), $pids, 'no worker restarted meanwhile (settings read fresh, no restart)');
	my @errors = jobq_errors_in_log($offset);
	is(scalar(@errors), 0, "jobq's processes logged no error") or diag(join "\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]);

	# alice keeps app.tenant = t2 and has no lock_timeout of her own below
	sql(q{ALTER ROLE alice RESET lock_timeout});
}

#############################################################################
# B. jobq's processes under hostile database and role settings
#############################################################################
my @rounds = (
	# name, database's value as SQL and as SHOW shows it, role's value likewise
	[ 'lock_timeout', q{'50ms'}, '50ms', q{'40ms'}, '40ms' ],
	[ 'statement_timeout', q{'10ms'}, '10ms', q{'10ms'}, '10ms' ],
	[ 'idle_in_transaction_session_timeout', q{'10ms'}, '10ms', q{'10ms'}, '10ms' ],
	[ 'idle_session_timeout', q{'10ms'}, '10ms', q{'10ms'}, '10ms' ],
	[ 'default_transaction_isolation', q{'serializable'}, 'serializable', q{'serializable'}, 'serializable' ],
	[ 'default_transaction_isolation', q{'repeatable read'}, 'repeatable read',
		q{'repeatable read'}, 'repeatable read' ],
	[ 'default_transaction_read_only', 'on', 'on', 'on', 'on' ],
	[ 'default_transaction_deferrable', 'on', 'on', 'on', 'on' ],
	[ 'session_replication_role', 'replica', 'replica', 'replica', 'replica' ],
	[ 'search_path', 'evil, public', 'evil, public', 'public, evil', 'public, evil' ]);

# The fields of a probe that a new session of the owner determines.
sub session_fields
{
	my ($probe) = @_;
	my @f = split /\|/, $probe, -1;
	return join '|', @f[ 0 .. 3 ];
}

my $round = 0;
my $last_fire = 0;
my $t_all = time;
for my $r (@rounds)
{
	my ($name, $db_sql, $db_shown, $role_sql, $role_shown) = @$r;
	$round++;
	my $what = $db_shown eq $role_shown ? "$name = $db_shown" : "$name = $db_shown / $role_shown";
	my $t0 = time;

	sql(qq{
		ALTER DATABASE postgres SET $name = $db_sql;
		ALTER ROLE "$su" SET $name = $role_sql;
	});
	is(fresh_sql("SHOW $name"), $role_shown,
		"$what: set for database postgres and for role $su; a new session of $su gets $role_shown");

	# A job running when the node goes down.
	my $sleep_at = sql(q{SELECT nextval('app.sticky_calls')}) + 1;
	my $sticky = enqueue_as('bob', 'b_sticky', qq({"sleep_at": $sleep_at}));
	ok(sql_until(qq{
		SELECT (SELECT last_value >= $sleep_at FROM app.sticky_calls)
		   AND (SELECT state = 'running' FROM jobq.jobs WHERE id = $sticky)}),
		"$what: job $sticky runs when the node is restarted");

	my $restart_at = sql('SELECT now()');
	$node->restart;
	ok(wait_ready($node), "$what: jobq is ready after the restart");
	my $t_ready = time;
	my $offset = -s $node->logfile;
	is( sql(qq{
		SELECT count(*) FILTER (WHERE backend_start > '$restart_at')
		       || '/' || count(*) || '/' || count(*) FILTER (WHERE usename = '$su')
		  FROM pg_stat_activity WHERE backend_type IN ('jobq worker', 'jobq candidate')}),
		($WORKERS + 2) . '/' . ($WORKERS + 2) . '/' . ($WORKERS + 2),
		"$what: all $WORKERS workers and 2 candidates connected as $su after the setting was made");

	# The burst, as bob, in one transaction, after a probe of alice and
	# before one of bob.
	my ($a_probe, $b_probe) = split /\n/, sql(qq{
		BEGIN;
		SET LOCAL ROLE alice;
		SELECT jobq.enqueue('a_probe');
		SET LOCAL ROLE bob;
		INSERT INTO app.burst SELECT $round, 'ok', id FROM unnest(jobq.enqueue_many('b_ok',
			ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 196) g))) id;
		INSERT INTO app.burst SELECT $round, 'sleepy', id FROM unnest(jobq.enqueue_many('b_ok',
			ARRAY(SELECT jsonb_build_object('n', g, 'sleep', 0.2) FROM generate_series(1, 4) g))) id;
		INSERT INTO app.burst SELECT $round, 'flaky', id FROM unnest(jobq.enqueue_many('b_flaky',
			ARRAY(SELECT jsonb_build_object('n', g, 'fail', 1) FROM generate_series(1, 80) g))) id;
		INSERT INTO app.burst SELECT $round, 'limited', id FROM unnest(jobq.enqueue_many('b_limited',
			ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 80) g))) id;
		INSERT INTO app.burst SELECT $round, 'scheduled', id FROM unnest(jobq.enqueue_many('b_ok',
			ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 40) g),
			run_at => now() + interval '1 s')) id;
		SELECT jobq.enqueue('b_probe');
		COMMIT;
	});
	# a fire of bob's schedule is due (src/periodic.c: the job of a fire
	# has the key jobq.schedule:<name>:<epoch>)
	my $fire = sql(q{SELECT extract(epoch FROM date_trunc('second', now()))::int8 - 1});
	$fire = $last_fire + 1 if $fire <= $last_fire;
	$last_fire = $fire;
	my $cron_key = "jobq.schedule:b_cron:$fire";
	sql(qq{
		BEGIN;
		UPDATE jobq.schedules SET next_fire_at = to_timestamp($fire) WHERE name = 'b_cron';
		SELECT jobq._wake_leader_at_commit();
		COMMIT;});
	my $t_burst = time;
	my $done = sql_until(qq{
		SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key = '$cron_key')
		   AND NOT EXISTS (
			SELECT FROM jobq.jobs
			 WHERE (id IN (SELECT id FROM app.burst WHERE round = $round)
			        OR id IN ($sticky, $b_probe, $a_probe) OR unique_key = '$cron_key')
			   AND state NOT IN ('completed', 'cancelled', 'discarded'))});
	ok($done, sprintf('%s: the 400 jobs of the burst, the rescued job, the fire and the probes ended (%.1f s)',
		$what, time - $t_burst));

	# the job rescued after the restart
	my ($s_state, $s_attempt, $s_errors, $s_effects) = split /\|/, sql(qq{
		SELECT concat_ws('|', state, attempt, jsonb_array_length(errors),
		                 (SELECT count(*) FROM app.effects WHERE job_id = $sticky))
		  FROM jobq.jobs WHERE id = $sticky});
	is("$s_state/$s_effects", 'completed/1',
		"$what: the job that ran across the restart was rescued and completed, its effect made once");
	is("$s_attempt/$s_errors", '2/1', "$what: ... at attempt 2, the interrupted one recorded as an error");
	note("$what: the rescued job's errors: " . sql("SELECT errors FROM jobq.jobs WHERE id = $sticky"));

	# the schedule's fire
	is( sql(qq{
		SELECT string_agg(j.state || ':' || (SELECT count(*) FROM app.effects e WHERE e.job_id = j.id), ',')
		  FROM jobq.jobs j WHERE unique_key = '$cron_key'}),
		'completed:1', "$what: bob's schedule fired one job, which completed and made its effect once");

	# the burst
	is( sql(qq{
		SELECT string_agg(sort || ':' || state || ':' || n, ' ' ORDER BY sort, state) FROM (
			SELECT b.sort, j.state, count(*) n FROM app.burst b JOIN jobq.jobs j USING (id)
			 WHERE b.round = $round GROUP BY 1, 2) s}),
		'flaky:completed:80 limited:completed:80 ok:completed:196 scheduled:completed:40 sleepy:completed:4',
		"$what: every job of the burst completed");
	is( sql(qq{
		SELECT count(*) || '/' || count(DISTINCT e.job_id) || '/'
		       || (SELECT count(*) FROM (SELECT e2.job_id FROM app.effects e2
		                 JOIN app.burst b2 ON b2.id = e2.job_id WHERE b2.round = $round
		                 GROUP BY 1 HAVING count(*) > 1) d)
		  FROM app.effects e JOIN app.burst b ON b.id = e.job_id WHERE b.round = $round}),
		'400/400/0', "$what: each of the 400 jobs made its effect exactly once (effects/jobs/duplicated)");
	is( sql(qq{
		SELECT string_agg(sort || ':' || attempt || ':' || n, ' ' ORDER BY sort, attempt) FROM (
			SELECT b.sort, j.attempt, count(*) n FROM app.burst b JOIN jobq.jobs j USING (id)
			 WHERE b.round = $round GROUP BY 1, 2) s}),
		'flaky:2:80 limited:1:80 ok:1:196 scheduled:1:40 sleepy:1:4',
		"$what: the failing-once jobs took 2 attempts, the others (0.2 s ones included) 1");
	is( sql(qq{
		SELECT coalesce(string_agg(m || ' x' || n, '; ' ORDER BY m), '') FROM (
			SELECT e->>'message' m, count(*) n FROM app.burst b JOIN jobq.jobs j USING (id),
			       jsonb_array_elements(j.errors) e
			 WHERE b.round = $round GROUP BY 1) s}),
		'failing on purpose at attempt 1 x80', "$what: the only errors are the planned ones");

	is( sql(q{
		SELECT count(*) FROM jobq.jobs j WHERE state = 'running'
		   AND attempted_by NOT IN (SELECT claim FROM jobq.components WHERE claim IS NOT NULL AND claim <> 0)}),
		'0', "$what: no job is running without a holder");

	row_lock_wait($what);

	# what the handlers saw: what a new session of their owner gets (the
	# database's values, bob's read-write), in READ COMMITTED
	my %expect = (lock_timeout => '0', search_path => $DEFAULT_PATH, read_only => 'off');
	$expect{lock_timeout} = $db_shown if $name eq 'lock_timeout';
	$expect{search_path} = $db_shown if $name eq 'search_path';
	my $bob = probe_result($b_probe);
	my $alice = probe_result($a_probe);
	note("$what: bob's handler saw $bob; alice's $alice");
	is($bob, "$expect{lock_timeout}|$expect{search_path}|<none>|off|read committed|bob",
		"$what: bob's handler saw the database's settings, his read-write default, READ COMMITTED");
	$expect{read_only} = 'on' if $name eq 'default_transaction_read_only';
	is($alice, "$expect{lock_timeout}|$expect{search_path}|t2|$expect{read_only}|read committed|alice",
		"$what: alice's handler saw the database's settings and her app.tenant, READ COMMITTED");
	is(session_fields($alice), session_fields(fresh_as('alice', q{SELECT concat_ws('|',
			p->>'lock_timeout', p->>'search_path', p->>'tenant', p->>'read_only')
		  FROM app.probe('{}') p})),
		"$what: ... as a new session of alice does");

	my @errors = jobq_errors_in_log($offset);
	is(scalar(@errors), 0, "$what: jobq's processes logged no error")
	  or diag(join "\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]);
	is( sql(q{
		SELECT coalesce(string_agg(component || ': ' || last_error, '; '), '') FROM jobq.components
		 WHERE database = current_database() AND last_error IS NOT NULL AND last_error <> ''}),
		'', "$what: no jobq component recorded an error since the restart");

	sql(qq{
		ALTER DATABASE postgres RESET $name;
		ALTER ROLE "$su" RESET $name;
	});
	note(sprintf('%s: round took %.1f s (restart and ready %.1f s, jobs %.1f s)',
		$what, time - $t0, $t_ready - $t0, time - $t_burst));
}
note(sprintf('part B: %d rounds took %.1f s', scalar(@rounds), time - $t_all));

$node->stop;
done_testing();
