# pg_upgrade of a cluster using jobq: the check passes (no reg* type that
# pg_upgrade refuses is stored in jobq's tables), and on the new cluster
# every job, kind, queue, grant and schedule is there as it was, the kinds
# find their handlers (function OIDs are not preserved), and everything runs:
# waiting jobs complete, the job of a worker that was running at the stop is
# rescued, schedules fire, a kind of an unprivileged role runs as that role.
use strict;
use warnings FATAL => 'all';
use lib 'test';
use JobqTest;
use Cwd ();
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $old = jobq_node('old', workers => 2);
jobq_install($old);
jobq_handlers($old);
$old->safe_psql('postgres', q{
CREATE ROLE alice LOGIN;
CREATE SCHEMA alice_app AUTHORIZATION alice;
CREATE TABLE public.probe (label text PRIMARY KEY, job_id bigint NOT NULL);
SELECT jobq.register('doomed', 'app.effect(jsonb)', max_attempts => 1);
SELECT jobq.register('flaky', 'app.effect(jsonb)');
SELECT jobq.create_queue('held');
SELECT jobq.pause('held');
SELECT jobq.schedule('tick', '* * * * *', 'effect', '{"n": 100}');
SET ROLE alice;
CREATE TABLE alice_app.done (job_id bigint, who text);
CREATE FUNCTION alice_app.work(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	INSERT INTO alice_app.done SELECT (jobq.current_job()).id, current_user;
	SELECT jsonb_build_object('who', current_user)
$$;
SELECT jobq.register('alice_work', 'alice_app.work(jsonb)');
SELECT jobq.grant('kind', 'alice_work', 'postgres');
RESET ROLE;
});

sub enqueue
{
	my ($label, $role, $call) = @_;
	my $id = $old->safe_psql('postgres', "SET ROLE $role; SELECT $call");
	$old->safe_psql('postgres', "INSERT INTO public.probe VALUES ('$label', $id)");
	return $id;
}

my $su = $old->safe_psql('postgres', 'SELECT current_user');
my %id;
$id{scheduled} = enqueue('scheduled', $su,
	q{jobq.enqueue('effect', '{"n": 1}', run_at => now() + interval '1 hour', unique_key => 'u1')});
$id{available} = enqueue('available', $su, q{jobq.enqueue('effect', '{"n": 2}', queue => 'held')});
$id{completed} = enqueue('completed', $su, q{jobq.enqueue('effect', '{"n": 3}')});
$id{discarded} = enqueue('discarded', $su, q{jobq.enqueue('doomed', '{"n": 4, "fail": 1}')});
$id{cancelled} = enqueue('cancelled', $su,
	q{jobq.enqueue('effect', '{"n": 5}', run_at => now() + interval '1 hour')});
# default backoff: after the second failure the next attempt is 16 s away
$id{retryable} = enqueue('retryable', $su, q{jobq.enqueue('flaky', '{"n": 6, "fail": 2}')});
$id{alice_scheduled} = enqueue('alice_scheduled', 'alice',
	q{jobq.enqueue('alice_work', '{}', run_at => now() + interval '1 hour')});
$old->safe_psql('postgres', "SELECT jobq.cancel($id{cancelled})");
is(wait_job($old, $id{completed}), 'completed', 'a job completed before the upgrade');
is(wait_job($old, $id{discarded}), 'discarded', 'a job was discarded before the upgrade');
ok( $old->poll_query_until('postgres',
		"SELECT state = 'retryable' AND attempt = 2 FROM jobq.jobs WHERE id = $id{retryable}"),
	'a job failed twice before the upgrade');
$old->safe_psql('postgres', qq{
UPDATE jobq.jobs SET scheduled_at = now() + interval '1 hour' WHERE id = $id{retryable} AND state = 'retryable';
UPDATE jobq.schedules SET next_fire_at = now() + interval '1 day';
});

# A job running when the server stops: its worker will never come back.
# (A claim no worker holds: workers' claims are >= 2^32.)
$id{running} = $old->safe_psql('postgres', qq{
INSERT INTO jobq.jobs (attempted_by, scheduled_at, attempted_at, owner, state, attempt,
					   max_attempts, priority, kind, queue, args)
VALUES (42, now(), now(), '$su', 'running', 1, 5, 0, 'effect', 'default', '{"n": 7}')
RETURNING id});
$old->safe_psql('postgres', "INSERT INTO public.probe VALUES ('running', $id{running})");

# What must survive, by name (OIDs of functions change).  The running
# job's state is left out: the rescuer may take it back at any time.
my $contents = q{
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	SELECT format('job %s %s %s %s %s %s', p.label, j.kind, j.queue,
				  pg_get_userbyid(j.owner::oid), j.args,
				  CASE WHEN p.label = 'running' THEN '' ELSE j.state || ' ' || j.attempt END) AS line
	  FROM public.probe p JOIN jobq.jobs j ON j.id = p.job_id
	UNION ALL
	SELECT format('kind %s %s %s %s', kind, to_regprocedure(handler)::regprocedure,
				  pg_get_userbyid(owner::oid), max_attempts) FROM jobq.handlers
	UNION ALL
	SELECT format('queue %s %s %s', name, paused, pg_get_userbyid(owner::oid)) FROM jobq.queues
	UNION ALL
	SELECT format('schedule %s %s %s %s', name, cron, kind, args) FROM jobq.schedules
	UNION ALL
	SELECT format('grant %s', g) FROM jobq.grants g) s};
my $before = $old->safe_psql('postgres', $contents);
like($before, qr/job running effect/, 'jobs in every state, kinds, queues and schedules');
$old->stop;

# --- pg_upgrade ----------------------------------------------------------------
my $new = jobq_node('new', workers => 2, start => 0);
my $bindir = $new->config_data('--bindir');
my $workdir = PostgreSQL::Test::Utils::tempdir();
my $cwd = Cwd::getcwd();
chdir $workdir or die "cannot enter $workdir: $!";
my @upgrade = (
	'pg_upgrade', '--no-sync',
	'-d', $old->data_dir, '-D', $new->data_dir,
	'-b', $bindir, '-B', $bindir,
	'-s', $new->host, '-p', $old->port, '-P', $new->port);
for my $pass ([ 'check', '--check' ], [ 'upgrade' ])
{
	my ($name, @extra) = @$pass;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ @upgrade, @extra ], '>', \$out, '2>', \$err);
	ok($ok, "pg_upgrade $name succeeds") or diag("$out\n$err");
}
chdir $cwd;

$new->start;
ok(wait_ready($new), 'jobq runs on the upgraded cluster');
is($new->safe_psql('postgres', $contents), $before,
	'every job, kind, queue, schedule and grant is there as it was');
is( $new->safe_psql('postgres', q{SELECT count(*) FROM jobq.handlers WHERE to_regprocedure(handler) IS NULL}),
	'0', 'every kind finds its handler');

# --- everything runs ------------------------------------------------------------
$new->safe_psql('postgres', qq{
SELECT jobq.resume('held');
BEGIN;
UPDATE jobq.jobs SET scheduled_at = now()
 WHERE id IN ($id{scheduled}, $id{retryable}, $id{alice_scheduled});
UPDATE jobq.schedules SET next_fire_at = now();
SELECT jobq._wake_leader_at_commit();
COMMIT;
});
for my $label (qw(scheduled available retryable running alice_scheduled))
{
	is(wait_job($new, $id{$label}), 'completed', "the $label job completes after the upgrade");
}
is( $new->safe_psql('postgres',
		"SELECT attempt || ' ' || (errors->0->>'lost') FROM jobq.jobs WHERE id = $id{running}"),
	'2 true', 'the job running at the stop was rescued (attempt 1 lost) and ran again');
is($new->safe_psql('postgres', "SELECT who FROM alice_app.done WHERE job_id = $id{alice_scheduled}"),
	'alice', "alice's job ran as alice");
ok( $new->poll_query_until('postgres',
		q{SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key LIKE 'jobq.schedule:tick:%' AND state = 'completed')}),
	'the schedule fires and its job completes');
my $fresh = $new->safe_psql('postgres', q{SET ROLE alice; SELECT jobq.enqueue('alice_work', '{}')});
is(wait_job($new, $fresh), 'completed', 'a job enqueued after the upgrade completes');

$new->stop;
done_testing();
