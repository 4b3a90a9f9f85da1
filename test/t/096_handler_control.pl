# Handler control (issue 9): inside a handler, jobq.give_up(reason),
# jobq.snooze(delay | run_at) and jobq.cancel() of the job itself end the
# handler at once with SQLSTATE 57014 (which EXCEPTION WHEN OTHERS does not
# catch), roll its effects back and then:
#   1. give_up: the job is discarded whatever attempts remain, with an error
#      entry {"message": reason, "given_up": true}; also when the handler
#      wraps the call in WHEN OTHERS, or catches query_canceled and returns
#      normally (the request wins);
#   2. self-cancel: the job is cancelled, no error entry, no further attempt;
#   3. snooze: the job waits (scheduled at now() + delay, or available when
#      run_at is past), its attempt is not counted, snoozes + 1, no error
#      entry, and it runs again;
#   4. jobq.max_snoozes: one snooze too many counts as a failed attempt;
#   5. misuse: outside a handler 55000; inside, a negative, NULL or infinite
#      snooze is 22023 and give_up(NULL) 22004, ordinary errors that fail
#      the attempt (or can be caught) and change nothing;
#   6. the other jobs of the batch are unaffected.
# Kinds are owned and enqueued by a non-superuser (alice), a few by the
# superuser.  The handler writes a LOG line per run ("jobq-test: ...") as a
# record that survives the rollback of its effects.  Every wait has a
# deadline.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $SHORT = 30;    # deadline (s) of any single wait
my $t_start = time;

my $node = jobq_node('handler_control', workers => 2);
jobq_install($node);
my $su = $node->safe_psql('postgres', 'SELECT current_user');

# app.control(args): records the run (LOG line and a row in app.effects,
# which must be rolled back unless the job completes), then does args->>'do':
#   ok              nothing
#   give_up         jobq.give_up('bad input')
#   give_up_others  the same inside BEGIN ... EXCEPTION WHEN OTHERS
#   give_up_caught  the same inside BEGIN ... EXCEPTION WHEN query_canceled
#   snooze          while snoozes < args->>'times': waits for advisory lock
#                   args->>'gate' if given, then jobq.snooze(args->>'delay'),
#                   or jobq.snooze(now() - 1 hour) without a delay
#   snooze_caught   on its first run jobq.snooze(interval '0'), catching
#                   query_canceled
#   cancel          jobq.cancel(its own id)
#   cancel_caught   the same, catching query_canceled
#   call            on a run with snoozes = 0: SELECT args->>'call'
#   call_caught     the same, catching OTHERS; returns the SQLSTATE
# and LOGs "went on" when it gets past that.
$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.effects (job_id bigint, tag text, attempt int, snoozes int,
                          at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON app.effects TO PUBLIC;
CREATE FUNCTION app.control(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
	act text := args->>'do';
	st text;
BEGIN
	RAISE LOG 'jobq-test: job % run attempt % snoozes %', job.id, job.attempt, job.snoozes;
	INSERT INTO app.effects (job_id, tag, attempt, snoozes) VALUES (job.id, act, job.attempt, job.snoozes);
	IF act = 'give_up' THEN
		PERFORM jobq.give_up('bad input');
	ELSIF act = 'give_up_others' THEN
		BEGIN
			PERFORM jobq.give_up('bad input');
		EXCEPTION WHEN OTHERS THEN
			RAISE LOG 'jobq-test: job % caught % in OTHERS', job.id, SQLSTATE;
		END;
	ELSIF act = 'give_up_caught' THEN
		BEGIN
			PERFORM jobq.give_up('bad input');
		EXCEPTION WHEN query_canceled THEN
			RAISE LOG 'jobq-test: job % caught %', job.id, SQLSTATE;
		END;
	ELSIF act = 'snooze' AND job.snoozes < (args->>'times')::int THEN
		IF args ? 'gate' THEN
			PERFORM set_config('lock_timeout', '0', true);
			PERFORM pg_advisory_xact_lock((args->>'gate')::bigint);
		END IF;
		IF args ? 'delay' THEN
			PERFORM jobq.snooze((args->>'delay')::interval);
		ELSE
			PERFORM jobq.snooze(now() - interval '1 hour');
		END IF;
	ELSIF act = 'snooze_caught' AND job.snoozes = 0 THEN
		BEGIN
			PERFORM jobq.snooze(interval '0');
		EXCEPTION WHEN query_canceled THEN
			RAISE LOG 'jobq-test: job % caught %', job.id, SQLSTATE;
		END;
	ELSIF act = 'cancel' THEN
		PERFORM jobq.cancel(job.id);
	ELSIF act = 'cancel_caught' THEN
		BEGIN
			PERFORM jobq.cancel(job.id);
		EXCEPTION WHEN query_canceled THEN
			RAISE LOG 'jobq-test: job % caught %', job.id, SQLSTATE;
		END;
	ELSIF act = 'call' AND job.snoozes = 0 THEN
		EXECUTE 'SELECT ' || (args->>'call');
	ELSIF act = 'call_caught' AND job.snoozes = 0 THEN
		BEGIN
			EXECUTE 'SELECT ' || (args->>'call');
			st := 'no error';
		EXCEPTION WHEN OTHERS THEN
			st := SQLSTATE;
		END;
	END IF;
	RAISE LOG 'jobq-test: job % went on', job.id;
	RETURN jsonb_build_object('do', act, 'sqlstate', st);
END $$;
SELECT jobq.register('su_ctl', 'app.control(jsonb)', max_attempts => 5, timeout => '60 s',
                     backoff_max => '200 ms');
});
$node->safe_psql('postgres', q{
SELECT jobq.register('ctl', 'app.control(jsonb)', max_attempts => 5, timeout => '60 s',
                     backoff_max => '200 ms');
SELECT jobq.create_queue('ctlq');
}, extra_params => [ '-U', 'alice' ]);

sub q_su { return $node->safe_psql('postgres', $_[0]) }
sub q_alice { return $node->safe_psql('postgres', $_[0], extra_params => [ '-U', 'alice' ]) }

# A SQL string literal.
sub lit { my ($s) = @_; $s =~ s/'/''/g; return "'$s'" }

# Enqueues a job as $role; $args is a SQL expression, $opts more arguments.
sub enqueue
{
	my ($role, $kind, $args, $opts) = @_;
	my $more = defined $opts ? ", $opts" : '';
	return $node->safe_psql('postgres', "SELECT jobq.enqueue('$kind', $args$more)",
		extra_params => [ '-U', $role ]);
}

# jobq.wait() with this test's deadline; returns the state.
sub wait_final
{
	my ($id) = @_;
	my $t0 = time;
	my $state = q_su("SELECT jobq.wait($id, '$SHORT s')");
	note(sprintf('job %s ended %s after %.2f s of waiting', $id, $state, time - $t0));
	return $state;
}

sub job { my ($id, $expr) = @_; return q_su("SELECT $expr FROM jobq.jobs WHERE id = $id") }

sub effects { return q_su("SELECT count(*) FROM app.effects WHERE job_id = $_[0]") }

sub sql_until
{
	my ($sql, $timeout) = @_;
	return wait_until(sub { q_su($sql) eq 't' }, $timeout // $SHORT);
}

# How many lines of the server log match.
sub log_count
{
	my ($re) = @_;
	my $log = slurp_file($node->logfile);
	my $n = () = $log =~ /$re/g;
	return $n;
}

sub runs { return log_count(qr/jobq-test: job $_[0] run attempt/) }
sub went_on { return log_count(qr/jobq-test: job $_[0] went on/) }
sub caught { return log_count(qr/jobq-test: job $_[0] caught 57014$/m) }

# The SQLSTATE of the error $sql raises as $role ('ok' when it succeeds).
sub sqlstate_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $role ], on_error_stop => 1);
	return 'ok' if $ret == 0;
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return $state // "psql exit $ret: $err";
}

my $INVARIANT = q{
	SELECT count(*) FROM jobq.jobs j WHERE state = 'running'
	   AND attempted_by NOT IN (SELECT claim FROM jobq.components WHERE claim IS NOT NULL AND claim <> 0)};

# ids of the jobs that ended by give_up or cancel: checked again at the end
my %final_once;

# --- 5a. misuse outside a handler ------------------------------------------
for my $role ('alice', $su)
{
	for my $call ("jobq.give_up('x')", "jobq.snooze('1 s'::interval)", 'jobq.snooze(now())')
	{
		is(sqlstate_as($role, "SELECT $call"), '55000', "outside a handler, $role: $call fails with 55000");
	}
	my ($ret, $out, $err) = $node->psql('postgres', q{
		DO $$
		BEGIN
			PERFORM jobq.snooze(interval '1 s');
			RAISE NOTICE 'jobq-test: no error';
		EXCEPTION WHEN OTHERS THEN
			RAISE NOTICE 'jobq-test: caught %', SQLSTATE;
		END $$}, extra_params => [ '-U', $role ]);
	like($err, qr/jobq-test: caught 55000/,
		"outside a handler, $role: snooze in a DO block is an ordinary error, caught by WHEN OTHERS");
}

# --- 1. give_up -------------------------------------------------------------
{
	my @cases = (
		[ 'give_up', 'alice', 'ctl', q{'{"do": "give_up"}'} ],
		[ 'give_up in WHEN OTHERS', 'alice', 'ctl', q{'{"do": "give_up_others"}'} ],
		[ 'give_up caught as query_canceled', 'alice', 'ctl', q{'{"do": "give_up_caught"}'} ],
		[ 'give_up (superuser kind)', $su, 'su_ctl', q{'{"do": "give_up"}'} ],
	);
	my %id;
	$id{ $_->[0] } = enqueue($_->[1], $_->[2], $_->[3]) for @cases;
	for my $c (@cases)
	{
		my $what = $c->[0];
		my $id = $id{$what};
		$final_once{$id} = 'discarded';
		is(wait_final($id), 'discarded', "$what: job $id is discarded");
		is(job($id, q{attempt || ' of ' || max_attempts}), '1 of 5', "$what: after 1 attempt of 5");
		is(job($id, 'jsonb_array_length(errors)'), '1', "$what: with one error entry");
		is(job($id, q{errors->0->>'message'}), 'bad input', "$what: whose message is the reason");
		is(job($id, q{errors->0->>'given_up'}), 'true', "$what: marked given_up");
		is(job($id, q{(errors->0->>'attempt') || ' ' || (errors->0 ? 'at')::text}), '1 true',
			"$what: with its attempt and time");
		is(effects($id), '0', "$what: its effect was rolled back");
		is(runs($id), 1, "$what: the handler ran once");
		note("$what: errors " . job($id, 'errors'));
	}
	my $plain = $id{'give_up'};
	is(went_on($plain), 0, 'give_up: the handler ended at give_up');
	my $others = $id{'give_up in WHEN OTHERS'};
	is(log_count(qr/jobq-test: job $others caught/), 0, 'give_up in WHEN OTHERS: OTHERS did not catch it');
	is(went_on($others), 0, 'give_up in WHEN OTHERS: the handler ended at give_up');
	my $c = $id{'give_up caught as query_canceled'};
	is(caught($c), 1, 'give_up caught as query_canceled: the handler caught 57014');
	is(went_on($c), 1, 'give_up caught as query_canceled: ... and returned normally (yet the job was discarded)');
	is(went_on($id{'give_up (superuser kind)'}), 0, 'give_up (superuser kind): the handler ended at give_up');
}

# --- 2. self-cancel ---------------------------------------------------------
{
	my @cases = (
		[ 'self-cancel', 'alice', 'ctl', q{'{"do": "cancel"}'} ],
		[ 'self-cancel caught as query_canceled', 'alice', 'ctl', q{'{"do": "cancel_caught"}'} ],
		[ 'self-cancel (superuser kind)', $su, 'su_ctl', q{'{"do": "cancel"}'} ],
	);
	my %id;
	$id{ $_->[0] } = enqueue($_->[1], $_->[2], $_->[3]) for @cases;
	for my $c (@cases)
	{
		my $what = $c->[0];
		my $id = $id{$what};
		$final_once{$id} = 'cancelled';
		is(wait_final($id), 'cancelled', "$what: job $id is cancelled");
		is(job($id, q{attempt || ' of ' || max_attempts}), '1 of 5', "$what: after 1 attempt of 5");
		is(job($id, 'errors'), '[]', "$what: with no error entry");
		is(effects($id), '0', "$what: its effect was rolled back");
		is(runs($id), 1, "$what: the handler ran once");
	}
	is(went_on($id{'self-cancel'}), 0, 'self-cancel: the handler ended at the cancel (like give_up)');
	my $c = $id{'self-cancel caught as query_canceled'};
	is(caught($c), 1, 'self-cancel caught as query_canceled: the handler caught 57014');
	is(went_on($c), 1, 'self-cancel caught as query_canceled: ... and returned normally (yet the job was cancelled)');
}

# --- 3. snooze --------------------------------------------------------------
{
	my $what = 'snooze 2 s';
	my ($t0, $id) = split /\|/, q_alice(q{
		SELECT clock_timestamp(), jobq.enqueue('ctl', '{"do": "snooze", "delay": "2 seconds", "times": 1}')});
	my $snap = '';
	wait_until(
		sub {
			$snap = q_su(qq{
				SELECT state, attempt, snoozes, errors, scheduled_at,
				       scheduled_at >= '$t0'::timestamptz + interval '2 s',
				       scheduled_at <= clock_timestamp() + interval '2 s',
				       round(extract(epoch FROM scheduled_at - clock_timestamp())::numeric, 2),
				       (SELECT count(*) FROM app.effects WHERE job_id = $id)
				  FROM jobq.jobs WHERE id = $id});
			return $snap !~ /^(available|running)\|/;
		},
		$SHORT);
	note("$what: job $id after its first run: $snap");
	my ($state, $attempt, $snoozes, $errors, $sched, $lo, $hi, $left, $eff) = split /\|/, $snap;
	is($state, 'scheduled', "$what: job $id is scheduled after its first run");
	ok(defined $lo && $lo eq 't' && $hi eq 't',
		"$what: at now() + 2 s (between enqueue + 2 s and the moment seen + 2 s; "
		  . ($left // '?') . ' s left)');
	is($attempt, '0', "$what: the attempt was not counted (0)");
	is($snoozes, '1', "$what: snoozes = 1");
	is($errors, '[]', "$what: no error entry");
	is($eff, '0', "$what: the first run's effect was rolled back");
	is(wait_final($id), 'completed', "$what: then it ran again and completed");
	is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 1 []',
		"$what: with attempt 1, snoozes 1, no error entry");
	$sched //= 'infinity';
	is(q_su(qq{SELECT count(*) || ' ' || bool_and(snoozes = 1 AND at >= '$sched'::timestamptz)
	             FROM app.effects WHERE job_id = $id}),
		'1 true', "$what: one effect, from its second run, made once it was due");
	is(runs($id), 2, "$what: the handler ran twice");

	$what = 'snooze 1 s (superuser kind)';
	$id = enqueue($su, 'su_ctl', q{'{"do": "snooze", "delay": "1 second", "times": 1}'});
	is(wait_final($id), 'completed', "$what: job $id completed");
	is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 1 []',
		"$what: with attempt 1, snoozes 1, no error entry");
	is(q_su(qq{SELECT count(*) || ' ' || bool_and(e.snoozes = 1 AND e.at >= j.created_at + interval '1 s')
	             FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id WHERE j.id = $id}),
		'1 true', "$what: one effect, from the run at least 1 s after the enqueue");

	$what = 'snooze caught as query_canceled';
	$id = enqueue('alice', 'ctl', q{'{"do": "snooze_caught"}'});
	is(wait_final($id), 'completed', "$what: job $id completed");
	is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 1 []',
		"$what: it was snoozed all the same (attempt 1, snoozes 1, no error entry)");
	is(caught($id), 1, "$what: the first run caught 57014");
	is(runs($id), 2, "$what: the handler ran twice");
	is(q_su("SELECT string_agg(snoozes::text, ',') FROM app.effects WHERE job_id = $id"), '1',
		"$what: only the second run's effect is kept");
}

# --- 3b. snooze(run_at) in the past: available at once ---------------------
{
	my $what = 'snooze to a past run_at';
	my $gate = 9601;
	my $holder = $node->background_psql('postgres', timeout => 600);
	$holder->query_safe("SELECT pg_advisory_lock($gate)");
	my $id = enqueue('alice', 'ctl', qq{'{"do": "snooze", "times": 1, "gate": $gate}'}, q{queue => 'ctlq'});
	ok(sql_until(qq{SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = $gate
	                                  AND NOT granted)}),
		"$what: job $id runs and waits for the test's lock");
	is(q_su(qq{SELECT j.attempted_by = c.claim FROM jobq.jobs j JOIN jobq.components c ON c.job_id = j.id
	            WHERE j.id = $id AND j.state = 'running'}),
		't', "$what: while it runs, its worker's claim holds it");
	is(q_su($INVARIANT), '0', "$what: no job runs without a holder meanwhile");
	# paused, the queue keeps the job where the snooze puts it
	q_alice(q{SELECT jobq.pause('ctlq')});
	$holder->query_safe("SELECT pg_advisory_unlock($gate)");
	my $t0 = time;
	my $snap = '';
	wait_until(
		sub {
			$snap = q_su(qq{SELECT state, attempt, snoozes, errors FROM jobq.jobs WHERE id = $id});
			return $snap !~ /^running\|/;
		},
		$SHORT);
	note(sprintf('%s: %.2f s after the gate opened: %s', $what, time - $t0, $snap));
	is($snap, 'available|0|1|[]', "$what: available at once (attempt 0, snoozes 1, no error entry)");
	is(effects($id), '0', "$what: the first run's effect was rolled back");
	q_alice(q{SELECT jobq.resume('ctlq')});
	is(wait_final($id), 'completed', "$what: once its queue resumed it ran again and completed");
	is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 1 []', "$what: with attempt 1, snoozes 1");
	is(effects($id), '1', "$what: one effect, from the second run");
	$holder->quit;
}

# --- 5b. misuse inside a handler --------------------------------------------
{
	my @calls = (
		[ q{jobq.snooze(interval '-1 s')}, '22023' ],
		[ q{jobq.snooze(NULL::interval)}, '22023' ],
		[ q{jobq.snooze(NULL::timestamptz)}, '22023' ],
		[ q{jobq.snooze('infinity'::timestamptz)}, '22023' ],
		[ q{jobq.snooze('-infinity'::timestamptz)}, '22023' ],
		[ q{jobq.give_up(NULL)}, '22004' ],
	);
	my (%failing, %catching);
	for my $c (@calls)
	{
		my $call = lit($c->[0]);
		$failing{ $c->[0] } = enqueue('alice', 'ctl', "jsonb_build_object('do', 'call', 'call', $call)",
			'max_attempts => 2');
		$catching{ $c->[0] } = enqueue('alice', 'ctl', "jsonb_build_object('do', 'call_caught', 'call', $call)");
	}
	for my $c (@calls)
	{
		my ($call, $want) = @$c;
		my $id = $failing{$call};
		is(wait_final($id), 'discarded', "in a handler, $call: job $id failed its 2 attempts");
		is(job($id, q{attempt || ' ' || snoozes || ' ' || jsonb_array_length(errors)}), '2 0 2',
			"in a handler, $call: attempt 2, snoozes 0, 2 error entries");
		is(job($id, q{(SELECT string_agg(coalesce(e->>'sqlstate', 'none'), ',') FROM jsonb_array_elements(errors) e)}),
			"$want,$want", "in a handler, $call: each with SQLSTATE $want");
		is(job($id, q{(SELECT count(*) FROM jsonb_array_elements(errors) e WHERE e ? 'given_up')}), '0',
			"in a handler, $call: none marked given_up");
		is(effects($id), '0', "in a handler, $call: effects rolled back");
		note("in a handler, $call: " . job($id, q{errors->0->>'message'}));

		$id = $catching{$call};
		is(wait_final($id), 'completed', "in a handler, $call caught by OTHERS: job $id completed");
		is(job($id, q{result->>'sqlstate'}), $want, "in a handler, $call caught by OTHERS: the handler saw $want");
		is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 0 []',
			"in a handler, $call caught by OTHERS: nothing changed (attempt 1, snoozes 0, no error entry)");
		is(effects($id), '1', "in a handler, $call caught by OTHERS: its effect committed");
	}
}

# --- 4. jobq.max_snoozes ----------------------------------------------------
{
	is(q_su(q{SELECT current_setting('jobq.max_snoozes')}), '1000', 'max_snoozes: the default is 1000');
	q_su(q{ALTER SYSTEM SET jobq.max_snoozes = 2; SELECT pg_reload_conf();});
	ok($node->poll_query_until('postgres', q{SELECT current_setting('jobq.max_snoozes') = '2'}),
		'max_snoozes: set to 2');
	my $what = 'max_snoozes 2';
	my $id = enqueue('alice', 'ctl', q{'{"do": "snooze", "delay": "0", "times": 1000000}'}, 'max_attempts => 1');
	is(wait_final($id), 'discarded', "$what: job $id that always snoozes is discarded (max_attempts 1)");
	is(runs($id), 3, "$what: its handler ran 3 times (2 snoozes, then one too many)");
	is(job($id, q{attempt || ' ' || jsonb_array_length(errors)}), '1 1',
		"$what: the third snooze counted as its one failed attempt");
	like(job($id, q{errors->0->>'message'}), qr/^job snoozed more than jobq\.max_snoozes/,
		"$what: the error says it snoozed more than jobq.max_snoozes");
	note("$what: error " . job($id, q{errors->0}) . '; snoozes ' . job($id, 'snoozes'));
	is(effects($id), '0', "$what: no effect kept");

	q_su(q{ALTER SYSTEM RESET jobq.max_snoozes; SELECT pg_reload_conf();});
	ok($node->poll_query_until('postgres', q{SELECT current_setting('jobq.max_snoozes') = '1000'}),
		'max_snoozes: reset to 1000');
	$what = 'max_snoozes reset';
	$id = enqueue('alice', 'ctl', q{'{"do": "snooze", "delay": "0", "times": 3}'}, 'max_attempts => 1');
	is(wait_final($id), 'completed', "$what: job $id that snoozes 3 times completes");
	is(job($id, q{attempt || ' ' || snoozes || ' ' || errors}), '1 3 []', "$what: attempt 1, snoozes 3");
	is(runs($id), 4, "$what: its handler ran 4 times");
}

# --- 6. the other jobs of a batch -------------------------------------------
{
	my $what = 'batch';
	my $ids = q_alice(q{
		SELECT array_to_string(jobq.enqueue_many('ctl', array_agg(
			CASE g % 8 WHEN 3 THEN jsonb_build_object('do', 'give_up', 'n', g)
			           WHEN 5 THEN jsonb_build_object('do', 'snooze', 'delay', '0.5 s', 'times', 1, 'n', g)
			           WHEN 7 THEN jsonb_build_object('do', 'cancel', 'n', g)
			           ELSE jsonb_build_object('do', 'ok', 'n', g) END ORDER BY g)), ',')
		  FROM generate_series(1, 32) g});
	my $t0 = time;
	ok(sql_until(qq{SELECT count(*) = 32 FROM jobq.jobs WHERE id IN ($ids)
	                   AND state IN ('completed', 'cancelled', 'discarded')}),
		sprintf('%s: the 32 jobs ended (%.1f s)', $what, time - $t0));
	note("$what: " . q_su(qq{SELECT count(DISTINCT attempted_by) FROM jobq.jobs WHERE id IN ($ids)})
		  . ' claims ran the 32 jobs');
	is(q_su(qq{
		SELECT string_agg(d || ':' || state || ':' || n, ' ' ORDER BY d) FROM (
			SELECT args->>'do' d, state, count(*) n FROM jobq.jobs WHERE id IN ($ids) GROUP BY 1, 2) s}),
		'cancel:cancelled:4 give_up:discarded:4 ok:completed:20 snooze:completed:4',
		"$what: 20 completed, 4 given up, 4 cancelled, 4 snoozed then completed");
	my $shared = q_su(qq{
		SELECT count(*) FROM jobq.jobs o WHERE o.id IN ($ids) AND o.args->>'do' = 'ok'
		   AND EXISTS (SELECT FROM jobq.jobs c WHERE c.id IN ($ids) AND c.args->>'do' IN ('give_up', 'cancel')
		                 AND c.attempted_by = o.attempted_by)});
	ok($shared > 0, "$what: $shared of the 20 ran in the same claim as a give_up or cancel job");
	is(q_su(qq{SELECT count(*) FROM jobq.jobs WHERE id IN ($ids) AND args->>'do' = 'ok'
	             AND attempt = 1 AND snoozes = 0 AND errors = '[]'}),
		'20', "$what: the 20 each completed at their first attempt, without error");
	is(q_su(qq{SELECT count(*) || ' ' || count(DISTINCT e.job_id) FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id
	            WHERE j.id IN ($ids) AND j.args->>'do' = 'ok'}),
		'20 20', "$what: each of the 20 made its effect exactly once");
	is(q_su(qq{SELECT count(*) FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id
	            WHERE j.id IN ($ids) AND j.args->>'do' IN ('give_up', 'cancel')}),
		'0', "$what: the given up and cancelled jobs left no effect");
	is(q_su(qq{SELECT count(*) FROM jobq.jobs WHERE id IN ($ids) AND args->>'do' = 'snooze'
	             AND attempt = 1 AND snoozes = 1 AND errors = '[]'}),
		'4', "$what: the snoozed ones completed at attempt 1 after 1 snooze");
	is(q_su(qq{SELECT count(*) || ' ' || count(DISTINCT e.job_id) FROM app.effects e JOIN jobq.jobs j ON j.id = e.job_id
	            WHERE j.id IN ($ids) AND j.args->>'do' = 'snooze' AND e.snoozes = 1}),
		'4 4', "$what: ... each with the effect of its second run only");
	is(q_su(qq{SELECT count(*) FROM jobq.jobs WHERE id IN ($ids) AND args->>'do' = 'give_up'
	             AND attempt = 1 AND errors->0->>'message' = 'bad input' AND (errors->0->>'given_up')::boolean}),
		'4', "$what: the given up ones have their given_up entry");
	for my $id (split /,/, q_su(qq{SELECT string_agg(id::text, ',') FROM jobq.jobs WHERE id IN ($ids)
	                                   AND args->>'do' IN ('give_up', 'cancel')}) // '')
	{
		$final_once{$id} = job($id, 'state');
	}
}

# --- the end: nothing ran again, invariant ---------------------------------
{
	ok(sql_until(q{SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE state IN ('scheduled', 'available', 'running', 'retryable'))}),
		'end: every job is final');
	my @again = grep { runs($_) != 1 || job($_, 'state') ne $final_once{$_} } sort { $a <=> $b } keys %final_once;
	is("@again", '', scalar(keys %final_once) . ' given up or cancelled jobs ran once and kept their state');
	is(q_su($INVARIANT), '0', 'end: no job is running without a holder');
	is(q_su(q{SELECT count(*) FROM jobq.components WHERE database = current_database()
	            AND component LIKE 'worker%' AND pid IS NOT NULL}),
		'2', 'end: both workers run');
	is(q_su(q{SELECT sum(restarts) FROM jobq.components WHERE database = current_database()
	            AND component LIKE 'worker%'}),
		'0', 'end: no worker restarted (handler control ends a handler, not its worker)');
}

note(sprintf('096_handler_control took %.1f s', time - $t_start));
$node->stop;
done_testing();
