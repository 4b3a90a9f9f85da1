# External workers (jobq.claim and friends) against a real server:
#  - four external worker processes and jobq's own workers share one queue
#    and never hand out a job twice, nor one of the other side's kind;
#  - a waiting claim wakes at the enqueuer's COMMIT, and returns nothing at
#    its timeout, not before;
#  - a lease whose worker vanished expires and the job is rescued; the
#    zombie's late completion is refused and changes nothing;
#  - jobq.complete commits or rolls back with the application's transaction;
#  - heartbeats keep a job longer than its lease; snooze, give_up and fail
#    record what they say; roles need jobq.grant('work'); a paused queue
#    hands out nothing until resumed.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('external', workers => 4);
jobq_install($node);
my $T = $JobqTest::TIMEOUT;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# Runs SQL (as role $user if given); returns "SQLSTATE: message" of its
# error, or '' when it succeeded.
sub sql_error
{
	my ($sql, $user) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err,
		extra_params => [ defined $user ? ('-U', $user) : () ]);
	return $err =~ /ERROR:\s+([0-9A-Z]{5}): (.*)/ ? "$1: $2" : '';
}

# Whether a backend sleeps in a waiting claim (jobq's Extension wait event).
sub claim_sleeps
{
	my ($pid) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT state = 'active' AND wait_event_type = 'Extension'
		  FROM pg_stat_activity WHERE pid = $pid});
}

# A claim of one job: (id, lease_token, attempt), or () when none.
sub claim_one
{
	my ($queue, %opt) = @_;
	my $wait = $opt{wait} // '0';
	my $row = q1(qq{SELECT id, lease_token, attempt FROM jobq.claim('$queue', 1, wait => '$wait')});
	return $row eq '' ? () : split /\|/, $row;
}

$node->safe_psql('postgres', q{
CREATE SCHEMA app;
-- what in-server runs did: one row per job, a second run would violate the key
CREATE TABLE app.ran (job_id bigint PRIMARY KEY, kind text NOT NULL, external boolean NOT NULL,
					  attempt int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION app.ran(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO app.ran (job_id, kind, external, attempt) VALUES (job.id, job.kind, job.external, job.attempt);
	RETURN NULL;
END $$;
-- what external claims returned: no key, so that a job handed out twice shows
CREATE TABLE app.claims (job_id bigint NOT NULL, kind text NOT NULL, attempt int NOT NULL,
						 token bigint NOT NULL, session text NOT NULL, batch int NOT NULL,
						 at timestamptz NOT NULL DEFAULT clock_timestamp());
-- the application's own table, written in the transaction that completes a job
CREATE TABLE app.orders (job_id bigint PRIMARY KEY);
});

###########################################################################
# External and in-server workers on one queue: each job handed out once.
###########################################################################
my $per_kind = 3000;
my $sessions = 4;
$node->safe_psql('postgres', qq{
SELECT jobq.create_queue('mixed');
SELECT jobq.register('srv', 'app.ran(jsonb)', queue => 'mixed');
SELECT jobq.register_external('ext', queue => 'mixed');
SELECT jobq.pause('mixed');
-- the kinds interleaved in batches of 100 ids, so that both sides walk the same stretch
SELECT count(jobq.enqueue_many(CASE WHEN b % 2 = 0 THEN 'srv' ELSE 'ext' END,
		(SELECT array_agg(jsonb_build_object('n', b * 100 + n)) FROM generate_series(1, 100) n)))
  FROM generate_series(0, 2 * $per_kind / 100 - 1) b;
});
is(q1(q{SELECT count(*) FILTER (WHERE external) || '/' || count(*) FILTER (WHERE NOT external)
		  FROM jobq.jobs WHERE queue = 'mixed' AND state = 'available'}),
	"$per_kind/$per_kind", 'enqueued the jobs of both kinds, the external ones marked so');

# Each external worker is a psql process: claim a batch in autocommit
# (recording it with the claim), complete each job in its own statement,
# stop at the first claim that finds nothing.  The first claim waits for the
# paused queue; the later ones do not wait (every job is there already).
my $dir = PostgreSQL::Test::Utils::tempdir();
my @workers;
for my $w (1 .. $sessions)
{
	my $script = '';
	for my $b (1 .. $per_kind / 25 + 10)
	{
		my $wait = $b == 1 ? "$T s" : '0';
		$script .= qq{
WITH c AS (SELECT * FROM jobq.claim('mixed', 25, wait => '$wait', worker => 'w$w')),
	 i AS (INSERT INTO app.claims (job_id, kind, attempt, token, session, batch)
		   SELECT id, kind, attempt, lease_token, 'w$w', $b FROM c RETURNING job_id, token)
SELECT format('SELECT jobq.complete(%s, %s)', job_id, token) FROM i \\gexec
SELECT NOT EXISTS (SELECT FROM app.claims WHERE session = 'w$w' AND batch = $b) AS done \\gset
\\if :done
\\q
\\endif
};
	}
	PostgreSQL::Test::Utils::append_to_file("$dir/worker$w.sql", $script);
	my %w = (out => '', err => '');
	$w{h} = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1',
		  '-d', $node->connstr('postgres'), '-f', "$dir/worker$w.sql" ],
		'<', '/dev/null', '>', \$w{out}, '2>', \$w{err});
	push @workers, \%w;
}
ok( $node->poll_query_until('postgres', qq{
	SELECT count(*) = $sessions FROM pg_stat_activity
	 WHERE query LIKE '%jobq.claim(''mixed''%' AND state = 'active' AND wait_event_type = 'Extension'}),
	'the external workers wait on the paused queue');
my $t0 = time;
q1(q{SELECT jobq.resume('mixed')});
for my $w (@workers)
{
	my $status = $w->{h}->finish ? 0 : $? >> 8;
	is("exit $status$w->{err}", 'exit 0', 'an external worker ran out of jobs, without an error');
}
ok( $node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM jobq.jobs WHERE queue = 'mixed' AND state IN ('available', 'running', 'retryable', 'scheduled')}),
	'every job of the queue is final');
note(sprintf('%d external + %d in-server jobs done in %.1f s', $per_kind, $per_kind, time - $t0));

is(q1(q{SELECT count(*) || ' ' || count(DISTINCT job_id) || ' ' || count(*) FILTER (WHERE kind = 'ext' AND attempt = 1) FROM app.claims}),
	"$per_kind $per_kind $per_kind", 'external claims: each external job handed out once, at attempt 1, no other kind');
is(q1(q{SELECT count(*) || ' ' || count(*) FILTER (WHERE kind = 'srv' AND NOT external AND attempt = 1) FROM app.ran}),
	"$per_kind $per_kind", 'in-server runs: each in-server job ran once, at attempt 1, no external job');
is( q1(q{
	SELECT count(*) FROM jobq.jobs j JOIN app.claims c ON c.job_id = j.id
	 WHERE j.kind = 'ext' AND j.state = 'completed' AND j.attempt = 1 AND j.errors = '[]'
	   AND j.attempted_by = c.token AND j.worker = c.session AND j.leased_by = current_user::regrole}),
	$per_kind, 'every external job completed under the token and worker name of its one claim');
is( q1(q{
	SELECT count(*) FROM jobq.jobs j JOIN app.ran r ON r.job_id = j.id
	 WHERE j.kind = 'srv' AND j.state = 'completed' AND j.attempt = 1 AND j.errors = '[]'}),
	$per_kind, 'every in-server job completed with the one run recorded');
is(q1(q{SELECT count(*) FROM app.ran r JOIN app.claims c USING (job_id)}), '0',
	'no job was both claimed externally and run in-server');
my $per_session = q1(q{SELECT string_agg(session || ':' || n, ' ' ORDER BY session) FROM (SELECT session, count(*) n FROM app.claims GROUP BY 1) s});
note("external jobs per worker: $per_session");
cmp_ok(scalar(() = $per_session =~ /:/g), '>=', 2, 'at least two external workers claimed jobs concurrently');
note(q1(q{SELECT format('external claims from %s to %s; in-server runs from %s to %s',
	(SELECT min(at)::time FROM app.claims), (SELECT max(at)::time FROM app.claims),
	(SELECT min(at)::time FROM app.ran), (SELECT max(at)::time FROM app.ran))}));

###########################################################################
# Waiting claims: woken at the enqueuer's COMMIT; nothing at the timeout.
###########################################################################
q1(q{SELECT jobq.create_queue('lat'); SELECT jobq.register_external('latk', queue => 'lat')});
my $waiter = $node->background_psql('postgres');
my $waiter_pid = $waiter->query_safe('SELECT pg_backend_pid()');
$waiter->query_until(qr/waiting/, qq{
\\echo waiting
SELECT id, extract(epoch FROM clock_timestamp()) FROM jobq.claim('lat', 1, wait => '$T s');
});
ok(claim_sleeps($waiter_pid), 'a claim with a wait sleeps on the empty queue');
my ($job, $committed) = split /\n/, q1(q{
	BEGIN; SELECT jobq.enqueue('latk', '{}'); COMMIT;
	SELECT extract(epoch FROM clock_timestamp())});
my ($got, $returned) = split /\||\n/, $waiter->query_safe('SELECT 1');
is($got, $job, 'the waiting claim returned the job enqueued');
my $latency = $returned - $committed;
note(sprintf('the waiting claim returned %.1f ms after the enqueuer\'s COMMIT', $latency * 1000));
cmp_ok($latency, '<', 2, 'within 2 s of the COMMIT');

my ($rows, $waited) = split /\|/, $waiter->query_safe(q{
	WITH c AS MATERIALIZED (SELECT count(*) n FROM jobq.claim('lat', 1, wait => '1.5 s'))
	SELECT n, extract(epoch FROM clock_timestamp() - statement_timestamp()) FROM c});
is($rows, '0', 'a claim on the empty queue returns no rows at its timeout');
cmp_ok($waited, '>=', 1.5, 'not before its timeout');
cmp_ok($waited, '<', 4.5, 'nor long after it');
note(sprintf('a claim waiting 1.5 s returned after %.3f s', $waited));
q1("SELECT jobq.complete($job, (SELECT attempted_by FROM jobq.jobs WHERE id = $job))");

###########################################################################
# Lease expiry: the worker vanishes, the job is rescued; the zombie's late
# completion is refused.
###########################################################################
q1(q{SELECT jobq.create_queue('lease'); SELECT jobq.register_external('short', queue => 'lease', lease => '2 seconds')});
$job = q1(q{SELECT jobq.enqueue('short', '{}')});
my $zombie = $node->background_psql('postgres');
my ($zid, $ztoken, $zattempt) = split /\|/, $zombie->query_safe(q{SELECT id, lease_token, attempt FROM jobq.claim('lease')});
is("$zid/$zattempt", "$job/1", 'a worker claimed the job');
kill 'KILL', $zombie->{run}->{KIDS}[0]{PID};
ok( $node->poll_query_until('postgres', qq{
	SELECT state IN ('retryable', 'available') AND errors->-1->>'lost' = 'true' AND attempt = 1
	  FROM jobq.jobs WHERE id = $job}),
	'the job of the killed worker is rescued once its lease expired: lost, attempt 1');
is(q1(qq{SELECT (errors->-1->>'at')::timestamptz >= lease_until FROM jobq.jobs WHERE id = $job}),
	't', 'not before its lease ended');
note(q1(qq{SELECT format('rescued %s ms after the lease ended: %s', round(extract(epoch FROM (errors->-1->>'at')::timestamptz - lease_until) * 1000),
	errors->-1->>'message') FROM jobq.jobs WHERE id = $job}));
my $row_sql = "SELECT attempt, attempted_by, errors, result, finalized_at, state IN ('retryable', 'available') FROM jobq.jobs WHERE id = $job";
my $before = q1($row_sql);
like(sql_error("SELECT jobq.complete($job, $ztoken)"), qr/^55000: job $job is not held by lease token $ztoken/,
	"the zombie's late complete is refused (55000)");
is(q1($row_sql), $before, 'and changes nothing');
my ($rid, $rtoken, $rattempt) = claim_one('lease', wait => "$T s");
is("$rid/$rattempt", "$job/2", 'the job is claimed again: attempt 2');
isnt($rtoken, $ztoken, 'under a new lease token');
q1("SELECT jobq.complete($job, $rtoken, '{\"ok\": true}')");
is(q1("SELECT concat_ws(' ', state, result->>'ok', jsonb_array_length(errors)) FROM jobq.jobs WHERE id = $job"),
	'completed true 1', 'and completed by it, the lost attempt in its errors');

###########################################################################
# jobq.complete in the application's transaction.
###########################################################################
q1(q{
SELECT jobq.create_queue('tx');
SELECT jobq.register_external('txk', queue => 'tx', lease => '3 seconds');
SELECT jobq.register_external('txc', queue => 'tx');
});
my $app = $node->background_psql('postgres');
$job = q1(q{SELECT jobq.enqueue('txk', '{}')});
my (undef, $token) = split /\|/, $app->query_safe(q{SELECT id, lease_token FROM jobq.claim('tx', kinds => '{txk}')});
$app->query_safe(qq{
BEGIN;
INSERT INTO app.orders VALUES ($job);
SELECT jobq.complete($job, $token);
ROLLBACK;
});
is(q1(qq{SELECT state || ' ' || (attempted_by = $token) || ' ' || EXISTS (SELECT FROM app.orders WHERE job_id = $job) FROM jobq.jobs WHERE id = $job}),
	'running true false', 'a complete rolled back with the application: job still held, no application row');
ok( $node->poll_query_until('postgres', qq{
	SELECT state IN ('retryable', 'available') AND errors->-1->>'lost' = 'true' FROM jobq.jobs WHERE id = $job}),
	'and it is rescued when its lease expires');

$job = q1(q{SELECT jobq.enqueue('txc', '{}')});
(undef, $token) = split /\|/, $app->query_safe(q{SELECT id, lease_token FROM jobq.claim('tx', kinds => '{txc}')});
my $both = qq{SELECT state || ' ' || EXISTS (SELECT FROM app.orders WHERE job_id = $job) FROM jobq.jobs WHERE id = $job};
$app->query_safe(qq{
BEGIN;
INSERT INTO app.orders VALUES ($job);
SELECT jobq.complete($job, $token);
});
is(q1($both), 'running false', 'before the application commits, neither its row nor the completion shows');
$app->query_safe('COMMIT');
is(q1($both), 'completed true', 'after it, both (one snapshot)');

###########################################################################
# Heartbeats keep a job longer than its lease.
###########################################################################
q1(q{SELECT jobq.create_queue('hb'); SELECT jobq.register_external('long', queue => 'hb', lease => '2 seconds')});
$job = q1(q{SELECT jobq.enqueue('long', '{}')});
(undef, $token) = split /\|/, $app->query_safe(q{SELECT id, lease_token FROM jobq.claim('hb', worker => 'hb-worker')});
my @hb_errors;
my $steps = 0;
$t0 = time;
while (time - $t0 < 5)
{
	# the 0.5 s of work between two heartbeats
	my ($out, $failed) = $app->query(qq{SELECT pg_sleep(0.5); SELECT jobq.heartbeat($job, $token, progress => jsonb_build_object('step', ${\ ++$steps}))});
	push @hb_errors, $app->{stderr} if $failed;
	$app->{stderr} = '';
}
is(join('', @hb_errors), '', "$steps heartbeats over 5 s, all accepted");
is( q1(qq{SELECT state || ' ' || (attempted_by = $token) || ' ' || attempt || ' ' || errors || ' ' || (clock_timestamp() - attempted_at > interval '4 s')
		FROM jobq.jobs WHERE id = $job}),
	'running true 1 [] true', 'after more than twice its lease, the job still runs under its claim');
is( q1(qq{SELECT leased_by = current_user::regrole, worker, heartbeat_at > claimed_at,
		lease_until = heartbeat_at + interval '2 s', progress->>'step', expired
		FROM jobq.leases WHERE id = $job}),
	"t|hb-worker|t|t|$steps|f", 'jobq.leases shows who holds it, the last heartbeat and its progress');
$app->query_safe("SELECT jobq.complete($job, $token)");
is(q1("SELECT state FROM jobq.jobs WHERE id = $job"), 'completed', 'then it completes');

###########################################################################
# snooze, give_up, fail.
###########################################################################
q1(q{
SELECT jobq.create_queue('ctl');
SELECT jobq.register_external('nap', queue => 'ctl');
SELECT jobq.register_external('flaky', queue => 'ctl', max_attempts => 3, backoff_max => '200 ms');
});
$job = q1(q{SELECT jobq.enqueue('nap', '{}')});
($rid, $token, $rattempt) = claim_one('ctl');
is("$rid/$rattempt", "$job/1", 'claimed at attempt 1');
# what it returned and what it did, read right after (2 s before it is due)
sub snoozed
{
	my ($until) = @_;
	return q1(qq{
SELECT clock_timestamp() AS before \\gset
SELECT jobq.snooze($job, $token, $until) AS returned \\gset
SELECT concat_ws(' ', :'returned', state, attempt, snoozes,
		scheduled_at BETWEEN :'before'::timestamptz + interval '2 s' AND clock_timestamp() + interval '2 s')
  FROM jobq.jobs WHERE id = $job});
}
is(snoozed(q{interval '2 seconds'}), 'scheduled scheduled 0 1 t',
	'snooze for a delay: scheduled that much ahead, the attempt not counted, snoozes 1');
ok($node->poll_query_until('postgres', "SELECT state = 'available' FROM jobq.jobs WHERE id = $job"),
	'it becomes available');
($rid, $token, $rattempt) = claim_one('ctl');
is("$rid/$rattempt", "$job/1", 'and is claimed again at attempt 1');
is(snoozed(q{clock_timestamp() + interval '2 seconds'}), 'scheduled scheduled 0 2 t',
	'snooze to a time: the same, snoozes 2');
($rid, $token, $rattempt) = claim_one('ctl', wait => "$T s");
is("$rid/$rattempt", "$job/1", 'a waiting claim takes it when it is due, at attempt 1');
q1("SELECT jobq.give_up($job, $token, 'no such customer')");
is( q1(qq{SELECT concat_ws(' ', state, finalized_at IS NOT NULL, jsonb_array_length(errors),
		errors->-1->>'given_up', errors->-1->>'attempt', errors->-1->>'message')
		FROM jobq.jobs WHERE id = $job}),
	'discarded t 1 true 1 no such customer', 'give_up discards at once, its reason in the errors');

# (the retries' backoff is 200 ms: the state is read from what fail returns)
$job = q1(q{SELECT jobq.enqueue('flaky', '{}')});
($rid, $token, $rattempt) = claim_one('ctl');
is(q1("SELECT jobq.fail($job, $token, 'connection reset'::text)"), 'retryable', 'fail with text: retryable');
is(q1("SELECT concat_ws(' ', errors->-1->>'attempt', errors->-1->>'message', errors->-1->>'sqlstate') FROM jobq.jobs WHERE id = $job"),
	'1 connection reset', 'its entry recorded');
($rid, $token, $rattempt) = claim_one('ctl', wait => "$T s");
is("$rid/$rattempt", "$job/2", 'claimed again after the backoff (a waiting claim wakes for it)');
is( q1(qq{SELECT jobq.fail($job, $token, '{"message": "upstream said 503", "detail": "d", "hint": "h", "sqlstate": "58030"}'::jsonb)}),
	'retryable', 'fail with a jsonb object: retryable');
is( q1(qq{SELECT concat_ws(' ', errors->-1->>'attempt', errors->-1->>'message', errors->-1->>'detail',
		errors->-1->>'hint', errors->-1->>'sqlstate') FROM jobq.jobs WHERE id = $job}),
	'2 upstream said 503 d h 58030', 'its fields recorded');
($rid, $token, $rattempt) = claim_one('ctl', wait => "$T s");
is("$rid/$rattempt", "$job/3", 'claimed at its last attempt');
is(q1("SELECT jobq.fail($job, $token, 'still broken'::text)"), 'discarded', 'fail on the last attempt: discarded');
is( q1(qq{SELECT concat_ws(' ', state, finalized_at IS NOT NULL,
		(SELECT string_agg(e->>'attempt', ',') FROM jsonb_array_elements(errors) e)) FROM jobq.jobs WHERE id = $job}),
	'discarded t 1,2,3', 'with one entry per attempt');

###########################################################################
# Permissions: working an external kind needs its owner's grant.
###########################################################################
q1(q{
CREATE ROLE alice LOGIN;
SELECT jobq.create_queue('perm');
SELECT jobq.register_external('permk', queue => 'perm');
SELECT jobq.enqueue('permk', '{}') FROM generate_series(1, 2);
});
my ($p1, $t1) = claim_one('perm');
like(sql_error(q{SELECT * FROM jobq.claim('perm')}, 'alice'), qr/^42501: /,
	'a role without privileges cannot claim (42501)');
like(sql_error(q{SELECT * FROM jobq.claim('perm', kinds => '{permk}')}, 'alice'), qr/^42501: /,
	'not even naming the kind');
like(sql_error("SELECT jobq.complete($p1, $t1)", 'alice'), qr/^42704: job $p1 does not exist/,
	"nor complete another's job, even with its token (42704)");
is(q1("SELECT state || ' ' || (attempted_by = $t1) FROM jobq.jobs WHERE id = $p1"), 'running true',
	'which stays held by its claim');
is(q1(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'permk' AND state = 'available' AND attempt = 0}), '1',
	'the refused claims took nothing');
q1(q{SELECT jobq.grant('work', 'permk', 'alice')});
my ($p2, $t2, $a2) = split /\|/, $node->safe_psql('postgres',
	q{SELECT id, lease_token, attempt FROM jobq.claim('perm')}, extra_params => [ '-U', 'alice' ]);
ok($p2 && $p2 != $p1 && $a2 == 1, 'after jobq.grant(work), the role claims');
$node->safe_psql('postgres', "SELECT jobq.complete($p2, $t2)", extra_params => [ '-U', 'alice' ]);
is(q1("SELECT state || ' ' || leased_by FROM jobq.jobs WHERE id = $p2"), 'completed alice',
	'and completes the job it claimed');
q1("SELECT jobq.complete($p1, $t1)");

###########################################################################
# A paused queue hands out nothing; a waiting claim returns at the resume.
###########################################################################
q1(q{SELECT jobq.create_queue('pq'); SELECT jobq.register_external('pk', queue => 'pq'); SELECT jobq.pause('pq')});
$job = q1(q{SELECT jobq.enqueue('pk', '{}')});
is(join('/', claim_one('pq')), '', 'a claim on a paused queue gets nothing');
$waiter->query_until(qr/waiting/, qq{
\\echo waiting
SELECT id FROM jobq.claim('pq', 1, wait => '$T s');
});
ok(claim_sleeps($waiter_pid), 'a waiting claim sleeps on the paused queue');
# a commit that makes a job available wakes it: it must go back to sleep
my $job2 = q1(q{SELECT jobq.enqueue('pk', '{}')});
ok(claim_sleeps($waiter_pid), 'it still sleeps after an enqueue into the queue woke it');
is(q1("SELECT string_agg(state || '/' || attempt, ',') FROM jobq.jobs WHERE id IN ($job, $job2)"),
	'available/0,available/0', 'its jobs stay available');
$t0 = time;
q1(q{SELECT jobq.resume('pq')});
is($waiter->query_safe('SELECT 1'), "$job\n1", 'once resumed, the waiting claim returns the first job');
note(sprintf('the waiting claim returned %.1f ms after the resume', (time - $t0) * 1000));
cmp_ok(time - $t0, '<', 2, 'within 2 s');
$waiter->quit;
$app->quit;

$node->stop;
done_testing();
