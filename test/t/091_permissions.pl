# The security model of issue 8: kinds and queues have owners, like tables.
# Using another role's kind or queue needs a grant (jobq.grant), and a grant
# only lets a role run another role's handler when whoever granted it has
# that role's privileges (no escalation: a superuser never runs a
# non-superuser's handler unless a superuser granted that kind).  Jobs are
# visible to their owner, to the owners of their queue and kind, and to
# pg_read_all_stats; DROP ROLE knows about jobq's objects.
#
# Each attack is tried as the role that would mount it (SET ROLE in the same
# psql session); a refused call must fail with the SQLSTATE of the contract
# and write nothing.  Failures are caught (psql, not safe_psql) so that one
# check that fails does not hide the others.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('permissions', workers => 3);
jobq_install($node);

my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

# Runs $sql as $role (SET ROLE in the same session), stopping at the first
# error.  Returns (SQLSTATE of the error, or '' when all of it succeeded,
# stdout, stderr).
sub run_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSET ROLE \"$role\";\n$sql", on_error_stop => 1);
	return ('', $out, $err) if $ret == 0;
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($state // "psql exit $ret", $out, $err);
}

# What $sql returns as $role, or "ERROR <sqlstate>" when it fails.
sub query_as
{
	my ($role, $sql) = @_;
	my ($state, $out, $err) = run_as($role, $sql);
	return $state eq '' ? $out : "ERROR $state";
}

sub query { return query_as($superuser, $_[0]) }

# $sql as $role must succeed; returns its output.
sub allowed
{
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($role, $sql, $name) = @_;
	my ($state, $out, $err) = run_as($role, $sql);
	is($state, '', $name) or diag($err);
	return $state eq '' ? $out : undef;
}

# $sql as $role must fail with SQLSTATE $want (and a message matching
# $message, when given).
sub refused
{
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($role, $sql, $want, $name, $message) = @_;
	my ($state, $out, $err) = run_as($role, $sql);
	is($state, $want, $name) or diag($err || "it succeeded, returning '$out'");
	like($err, $message, "$name: the message says why") if defined $message;
}

sub owner_name { return "pg_get_userbyid($_[0]::oid)" }

# Waits until no job of $kind is live (on a correct build there may be none).
sub wait_kind_final
{
	my ($kind) = @_;
	return wait_until(
		sub {
			query(qq{SELECT count(*) FROM jobq.jobs WHERE kind = '$kind'
				  AND state IN ('scheduled', 'available', 'running', 'retryable')}) eq '0';
		});
}

$node->safe_psql('postgres', q{
CREATE ROLE squatter;
CREATE ROLE victim;
-- has the privileges of both squatter and victim, not the superuser's
CREATE ROLE admin IN ROLE squatter, victim;
CREATE ROLE a;
CREATE ROLE b;
CREATE ROLE c;
CREATE ROLE ko;
CREATE ROLE watcher IN ROLE pg_read_all_stats;

CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.seen (job_id bigint, who text, is_super boolean);
GRANT SELECT, INSERT ON app.seen TO PUBLIC;
CREATE TABLE app.release (job_id bigint);
GRANT SELECT ON app.release TO PUBLIC;
CREATE FUNCTION app.whoami(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user,
		(SELECT rolsuper FROM pg_roles WHERE rolname = current_user));
	RETURN current_user;
END $$;
-- runs until the test inserts the job's id into app.release
CREATE FUNCTION app.hold(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	me bigint := (jobq.current_job()).id;
	deadline timestamptz := clock_timestamp() + interval '150 s';
BEGIN
	WHILE NOT EXISTS (SELECT FROM app.release r WHERE r.job_id = me) LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'job % was never released', me;
		END IF;
		PERFORM pg_sleep(0.02);
	END LOOP;
END $$;

CREATE SCHEMA squat AUTHORIZATION squatter;
-- the squatter lets everyone call its handler (a job's owner needs USAGE on
-- the handler's schema)
GRANT USAGE ON SCHEMA squat TO PUBLIC;
CREATE SCHEMA vict AUTHORIZATION victim;

SET ROLE squatter;
-- the squatter's handler: grabs superuser if it ever runs as one
CREATE FUNCTION squat.order_changed(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		ALTER ROLE squatter SUPERUSER;
	END IF;
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user,
		(SELECT rolsuper FROM pg_roles WHERE rolname = current_user));
	RETURN current_user;
END $$;

SET ROLE victim;
CREATE FUNCTION vict.handle(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user, false);
	RETURN current_user;
END $$;
CREATE TABLE vict.orders (id int);
CREATE TRIGGER orders_jobs AFTER INSERT ON vict.orders
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('order_changed');
RESET ROLE;
});

sub squatter_is_super
{
	return query(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'squatter'});
}

# After an attack that worked (a build without the fix), undoes it so the
# checks that follow still mean something.
sub unsquat
{
	$node->safe_psql('postgres', 'ALTER ROLE squatter NOSUPERUSER');
}

my $order_jobs = q{SELECT count(*) FROM jobq.jobs WHERE kind = 'order_changed'};
my $orders = q{SELECT count(*) FROM vict.orders};

# =============================================================================
# 1. Kind squatting
# =============================================================================
note('1. kind squatting');

allowed('squatter',
	q{SELECT jobq.register('order_changed', 'squat.order_changed(jsonb)', max_attempts => 1)},
	'squatter registers kind order_changed first');
refused('victim', q{SELECT jobq.register('order_changed', 'vict.handle(jsonb)')},
	'42501', "1: the kind's real owner cannot take the squatted kind over");
allowed('victim', q{SELECT jobq.register('victim_kind', 'vict.handle(jsonb)', max_attempts => 1)},
	'victim registers a kind of its own');

# --- (a) the victim enqueues the squatted kind --------------------------------
refused('victim', q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', '1a: victim cannot enqueue a kind squatter registered',
	qr/permission denied for job kind "order_changed"/);
refused('victim', q{SELECT jobq.enqueue_many('order_changed', ARRAY['{}'::jsonb, '{}'])},
	'42501', '1a: ... nor with enqueue_many');
refused('victim', q{INSERT INTO vict.orders VALUES (1)},
	'42501', "1a: an insert into victim's table whose trigger enqueues it fails",
	qr/permission denied for job kind "order_changed"/);
is(query($order_jobs), '0', '1a: no job of the squatted kind was written');
is(query($orders), '0', '1a: the insert whose trigger was refused left no row');

# --- (b) the superuser enqueues the squatted kind ------------------------------
refused($superuser, q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', '1b: the superuser cannot enqueue a kind squatter registered',
	qr/permission denied for job kind "order_changed"/);
refused($superuser, q{SELECT jobq.enqueue_many('order_changed', ARRAY['{}'::jsonb])},
	'42501', '1b: ... nor with enqueue_many');
refused($superuser, q{INSERT INTO vict.orders VALUES (2)},
	'42501', "1b: the superuser's insert into a table whose trigger enqueues it fails");
is(query($order_jobs), '0', '1b: no job of the squatted kind was written');
is(query($orders), '0', '1b: no row was inserted');
ok(wait_kind_final('order_changed'), '1b: no job of the squatted kind is left to run');
is(squatter_is_super(), 'f', '1b: squatter never became superuser');
is(query(q{SELECT count(*) FROM app.seen WHERE is_super}), '0',
	"1b: squatter's handler never ran as a superuser");
unsquat();

# --- (c) grants -----------------------------------------------------------------
allowed('squatter', q{SELECT jobq.grant('kind', 'order_changed', 'victim');
	SELECT jobq.grant('kind', 'order_changed', 'victim')},
	'1c: squatter grants its kind to victim (twice: grant is idempotent)');
is( query(q{SELECT count(*), string_agg(pg_get_userbyid(grantee) || ' by ' || pg_get_userbyid(granted_by), ',')
		  FROM jobq.grants WHERE object_type = 'kind' AND object_name = 'order_changed'}),
	'1|victim by squatter', '1c: jobq.grants has the one grant, to victim by squatter');
is(query_as('c', q{SELECT count(*) > 0 FROM jobq.grants}), 't', '1c: jobq.grants is readable by PUBLIC');
# Rule (b) of the contract: squatter does not have victim's privileges, so
# a grant made by squatter does not let squatter's code run as victim (or the
# squatter could simply grant its kind to the victim it targets).
refused('victim', q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', "1c: squatter's own grant does not let victim run squatter's handler (granted by a role without victim's privileges)");
refused($superuser, q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', "1c: squatter's grant does not let the superuser run it either");
refused($superuser, q{INSERT INTO vict.orders VALUES (3)},
	'42501', '1c: ... nor through the trigger');
is(query($order_jobs), '0', '1c: still no job of the squatted kind');

# squatter may grant its kind to anyone, the superuser included, but the grant
# is worth nothing to a role whose privileges squatter does not have.
allowed('squatter', qq{SELECT jobq.grant('kind', 'order_changed', '$superuser')},
	'1c: squatter grants its kind to the superuser');
refused($superuser, q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', "1c: squatter's grant to the superuser does not let the superuser run squatter's handler");
refused($superuser, q{INSERT INTO vict.orders VALUES (3)},
	'42501', "1c: ... nor through the trigger, with squatter's grant to the superuser");
is(query($order_jobs), '0', "1c: still no job of the squatted kind after squatter's grant to the superuser");
is(query_as('squatter', qq{SELECT jobq.revoke('kind', 'order_changed', '$superuser')}), 't',
	'1d: squatter revokes its grant to the superuser');

# --- (d) revoke -----------------------------------------------------------------
is(query_as('squatter', q{SELECT jobq.revoke('kind', 'order_changed', 'victim')}), 't',
	'1d: revoke returns true when there was a grant');
is(query_as('squatter', q{SELECT jobq.revoke('kind', 'order_changed', 'victim')}), 'f',
	'1d: ... and false the second time');
is( query(q{SELECT count(*) FROM jobq.grants WHERE object_type = 'kind' AND object_name = 'order_changed'}),
	'0', '1d: the grant is gone from jobq.grants');

# A grant made by a role with both squatter's and victim's privileges.
allowed('admin', q{SELECT jobq.grant('kind', 'order_changed', 'victim')},
	"1c: admin (member of squatter and victim) grants the kind to victim");
my $victim_job = allowed('victim', q{SELECT jobq.enqueue('order_changed', '{}')},
	"1c: now victim may enqueue squatter's kind");
if (defined $victim_job)
{
	is(wait_job($node, $victim_job), 'completed', "1c: victim's job of squatter's kind completed");
	is(query("SELECT who, is_super FROM app.seen WHERE job_id = $victim_job"), 'victim|f',
		'1c: ... and ran as victim');
}
allowed('victim', q{INSERT INTO vict.orders VALUES (4)},
	"1c: victim's insert with the enqueueing trigger works too");
is( query(q{SELECT count(*) FROM jobq.jobs WHERE kind = 'order_changed'
		   AND args->'new'->>'id' = '4' AND pg_get_userbyid(owner::oid) = 'victim'}),
	'1', "1c: ... enqueueing a job owned by victim");
refused($superuser, q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', '1c: the superuser still may not (no superuser granted the kind)');
refused($superuser, q{INSERT INTO vict.orders VALUES (5)},
	'42501', '1c: ... nor through the trigger');

allowed($superuser, qq{SELECT jobq.grant('kind', 'order_changed', '$superuser')},
	'1c: the superuser grants the kind to itself');
is( allowed($superuser,
		q{BEGIN; SELECT jobq.enqueue('order_changed', '{}') > 0; INSERT INTO vict.orders VALUES (6); ROLLBACK;},
		'1c: after granting it, the superuser may enqueue it (directly and by trigger; rolled back)'),
	't', '1c: ... enqueue returned an id');

ok(wait_kind_final('order_changed'), '1: no job of the squatted kind is left to run');
is(squatter_is_super(), 'f', '1c: squatter never became superuser');
unsquat();

is(query_as($superuser, qq{SELECT jobq.revoke('kind', 'order_changed', '$superuser')}), 't',
	"1d: the superuser revokes its grant");
refused($superuser, q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', '1d: revoking takes the permission away from the superuser again');
is(query_as('admin', q{SELECT jobq.revoke('kind', 'order_changed', 'victim')}), 't',
	"1d: admin revokes victim's grant (true)");
is(query_as('admin', q{SELECT jobq.revoke('kind', 'order_changed', 'victim')}), 'f',
	'1d: ... false the second time');
refused('victim', q{SELECT jobq.enqueue('order_changed', '{}')},
	'42501', '1d: revoking takes the permission away from victim again');
refused('victim', q{INSERT INTO vict.orders VALUES (7)},
	'42501', '1d: ... also through the trigger');

# --- (e) taking over, bad grants -----------------------------------------------
refused('squatter', q{SELECT jobq.register('victim_kind', 'squat.order_changed(jsonb)')},
	'42501', "1e: squatter cannot re-register victim's kind");
refused('squatter', q{SELECT jobq.unregister('victim_kind')},
	'42501', "1e: squatter cannot unregister victim's kind");
is( query(q{SELECT to_regprocedure(handler) = 'vict.handle(jsonb)'::regprocedure, pg_get_userbyid(owner::oid)
		  FROM jobq.handlers WHERE kind = 'victim_kind'}),
	't|victim', "1e: victim's kind is unchanged");
refused('victim', q{SELECT jobq.grant('kind', 'order_changed', 'victim')},
	'42501', "1e: victim cannot grant squatter's kind");
refused('squatter', q{SELECT jobq.grant('kind', 'victim_kind', 'squatter')},
	'42501', "1e: squatter cannot grant victim's kind");
refused('squatter', q{SELECT jobq.grant('kind', 'order_changed', 'no_such_role')},
	'42704', '1e: grant to an unknown role fails with 42704');
refused('squatter', q{SELECT jobq.grant('kind', 'no_such_kind', 'victim')},
	'42704', '1e: grant of an unknown kind fails with 42704');
refused('squatter', q{SELECT jobq.grant('queue', 'no_such_queue', 'victim')},
	'42704', '1e: grant of an unknown queue fails with 42704');
refused('squatter', q{SELECT jobq.grant('table', 'order_changed', 'victim')},
	'22023', '1e: grant with a bad object_type fails with 22023');
allowed('victim', q{SELECT jobq.grant('kind', 'victim_kind', 'Public')},
	"1e: a grant to 'Public' (any case) is accepted");
is( query(q{SELECT string_agg(grantee::oid::text, ',') FROM jobq.grants
		  WHERE object_type = 'kind' AND object_name = 'victim_kind'}),
	'0', '1e: ... and recorded with grantee 0 (PUBLIC)');
is(query_as('victim', q{SELECT jobq.revoke('kind', 'victim_kind', 'PUBLIC')}), 't',
	'1e: ... and revoked');
is(query($order_jobs . q{ AND pg_get_userbyid(owner::oid) <> 'victim'}), '0',
	'1: only victim ever got a job of the squatted kind written');

# =============================================================================
# 2. Queue squatting / cross-role queues
# =============================================================================
note('2. queues');

allowed('a', q{SELECT jobq.create_queue('qa')}, 'a creates queue qa');
allowed('b', q{SELECT jobq.register('kb', 'app.whoami(jsonb)', max_attempts => 1)},
	'b registers kind kb');
refused('b', q{SELECT jobq.enqueue('kb', '{}', queue => 'qa')},
	'42501', "2: b cannot enqueue its own kind into a's queue",
	qr/permission denied for queue "qa"/);
refused('b', q{SELECT jobq.enqueue_many('kb', ARRAY['{}'::jsonb], queue => 'qa')},
	'42501', '2: ... nor with enqueue_many');
refused('b', q{SELECT jobq.register('kb_qa', 'app.whoami(jsonb)', queue => 'qa')},
	'42501', "2: b cannot register a kind whose queue is a's queue",
	qr/permission denied for queue "qa"/);
is(query(q{SELECT count(*) FROM jobq.jobs WHERE queue = 'qa'}), '0', '2: no job was written into qa');
is(query(q{SELECT count(*) FROM jobq.handlers WHERE kind = 'kb_qa'}), '0', '2: no kind was registered');
refused('b', q{SELECT jobq.grant('queue', 'qa', 'b')},
	'42501', "2: b cannot grant itself a's queue");
refused('c', q{SELECT jobq.grant('queue', 'qa', 'b')},
	'42501', "2: nor can c");

allowed('a', q{SELECT jobq.grant('queue', 'qa', 'b')}, "2: a grants queue qa to b");
my $b_in_qa = allowed('b', q{SELECT jobq.enqueue('kb', '{}', queue => 'qa')},
	'2: after the grant b may enqueue into qa');
if (defined $b_in_qa)
{
	is(wait_job($node, $b_in_qa), 'completed', "2: b's job in qa completed");
	is(query("SELECT who FROM app.seen WHERE job_id = $b_in_qa"), 'b', '2: ... as b');
}
allowed('b', q{SELECT jobq.register('kb_qa', 'app.whoami(jsonb)', queue => 'qa', max_attempts => 1)},
	'2: ... and register a kind with queue qa');

is( query(q{SELECT count(*) FROM jobq.grants
		  WHERE object_type = 'queue' AND object_name = 'default' AND grantee = 0}),
	'1', '2: the default queue is granted to PUBLIC');
allowed('c', q{SELECT jobq.register('kc', 'app.whoami(jsonb)', max_attempts => 1)},
	'2: c registers a kind in the default queue');
my $c_job = allowed('c', q{SELECT jobq.enqueue('kc', '{}')}, '2: c may enqueue into the default queue');
is(wait_job($node, $c_job), 'completed', "2: c's job in the default queue completed")
  if defined $c_job;

# =============================================================================
# 3. Schedules naming a kind
# =============================================================================
note('3. schedules');

refused('c', q{SELECT jobq.schedule('c_denied', '@yearly', 'kb')},
	'42501', "3: c cannot schedule b's kind",
	qr/permission denied for job kind "kb"/);
refused('c', q{SELECT jobq.schedule('c_denied', '@yearly', 'kc', queue => 'qa')},
	'42501', "3: c cannot schedule its own kind into a's queue",
	qr/permission denied for queue "qa"/);
is(query(q{SELECT count(*) FROM jobq.schedules WHERE name = 'c_denied'}), '0',
	'3: no schedule was created');

# The superuser has the privileges of b (to grant) and of c (rule (b)).
allowed($superuser, q{SELECT jobq.grant('kind', 'kb', 'c')}, "3: the superuser grants b's kind to c");
allowed('c', q{SELECT jobq.schedule('c_tick', '@yearly', 'kb')},
	"3: with the grant c may schedule b's kind");
is(query_as($superuser, q{SELECT jobq.revoke('kind', 'kb', 'c')}), 't', '3: the grant is revoked');
$node->safe_psql('postgres', q{
BEGIN;
UPDATE jobq.schedules SET next_fire_at = now() WHERE name = 'c_tick';
SELECT jobq._wake_leader_at_commit();
COMMIT;});
my $fired = q{SELECT (SELECT last_error IS NOT NULL OR last_job_id IS NOT NULL
					  FROM jobq.schedules WHERE name = 'c_tick')
				  OR EXISTS (SELECT FROM jobq.jobs WHERE unique_key LIKE 'jobq.schedule:c_tick:%')};
ok(wait_until(sub { query($fired) eq 't' }), '3: the schedule came due and was dealt with');
like(query(q{SELECT last_error FROM jobq.schedules WHERE name = 'c_tick'}), qr/permission denied/,
	'3: the fire failed: last_error says permission denied');
is( query(q{SELECT count(*) FROM jobq.jobs
		  WHERE unique_key LIKE 'jobq.schedule:c_tick:%'
			 OR (kind = 'kb' AND pg_get_userbyid(owner::oid) = 'c')}),
	'0', '3: the fire enqueued no job');
allowed('c', q{SELECT jobq.unschedule('c_tick')}, '3: c removes its schedule');

# =============================================================================
# 4. Visibility and cancel
# =============================================================================
note('4. visibility and cancel');

allowed('ko', q{SELECT jobq.register('kko', 'app.whoami(jsonb)', max_attempts => 1)},
	'ko registers kind kko');
allowed($superuser, q{SELECT jobq.grant('kind', 'kko', 'b')}, "the superuser grants ko's kind to b");
my $later = q{run_at => now() + interval '1 day'};
# in a's queue, of b's kind
my $jq = allowed('b', "SELECT jobq.enqueue('kb', '{}', queue => 'qa', $later)",
	"4: b enqueues a job into a's queue");
# in the default queue, of ko's kind
my $jk = allowed('b', "SELECT jobq.enqueue('kko', '{}', $later)", "4: b enqueues a job of ko's kind");
# b's own kind, default queue
my $jr = allowed('b', "SELECT jobq.enqueue('kb', '{}', $later)", '4: b enqueues a job of its own');
$_ //= -1 for $jq, $jk, $jr;
my $ids = "$jq, $jk, $jr";

sub seen_by
{
	my ($role) = @_;
	return query_as($role,
		"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), 'none') FROM jobq.jobs WHERE id IN ($ids)");
}
is(seen_by('b'), "$jq,$jk,$jr", '4: b sees its three jobs');
is(seen_by('a'), "$jq", "4: a (queue owner) sees b's job in qa, and only it");
is(seen_by('ko'), "$jk", "4: ko (kind owner) sees b's job of kind kko, and only it");
is(seen_by('c'), 'none', '4: c sees none of them');
is(seen_by('watcher'), "$jq,$jk,$jr", '4: a member of pg_read_all_stats sees them all');
is( query_as('watcher', 'SELECT count(*) FROM jobq.jobs'),
	query('SELECT count(*) FROM jobq.jobs'),
	'4: ... and every job there is');

for my $id ($jq, $jk)
{
	refused('c', "SELECT jobq.cancel($id)", '42704', "4: c cannot cancel job $id",
		qr/job $id does not exist/);
	refused('c', "SELECT jobq.retry($id)", '42704', "4: c cannot retry job $id",
		qr/job $id does not exist/);
}
refused('a', "SELECT jobq.retry($jq)", '42704', "4: the queue owner cannot retry b's job (owner only)");
refused('ko', "SELECT jobq.retry($jk)", '42704', "4: the kind owner cannot retry b's job (owner only)");
refused('a', "SELECT jobq.cancel($jk)", '42704', "4: a cannot cancel a job outside its queue and kinds");
refused('ko', "SELECT jobq.cancel($jq)", '42704', "4: ko cannot cancel a job outside its queue and kinds");
is(query("SELECT string_agg(state::text, ',' ORDER BY id) FROM jobq.jobs WHERE id IN ($ids)"),
	'scheduled,scheduled,scheduled', '4: the refused calls changed nothing');

is(query_as('a', "SELECT jobq.cancel($jq)"), 't', "4: the queue owner cancels b's job in its queue");
is(query_as('ko', "SELECT jobq.cancel($jk)"), 't', "4: the kind owner cancels b's job of its kind");
is(query("SELECT string_agg(state::text, ',' ORDER BY id) FROM jobq.jobs WHERE id IN ($jq, $jk)"),
	'cancelled,cancelled', '4: both are cancelled');
is(query_as('b', "SELECT jobq.retry($jr)"), 't', '4: the owner may retry its job');
is(wait_job($node, $jr), 'completed', "4: ... which then ran") if $jr > 0;

# =============================================================================
# 5. Information leaks: queue_stats and components
# =============================================================================
note('5. info leaks');

my $total = 'coalesce(sum(scheduled + available + running + retryable + completed + cancelled + discarded), 0)';
is( query_as('c', "SELECT $total FROM jobq.queue_stats"),
	query(q{SELECT count(*) FROM jobq.jobs WHERE pg_get_userbyid(owner::oid) = 'c'}),
	"5: queue_stats as c counts only c's own jobs");
is(query_as('c', "SELECT $total FROM jobq.queue_stats WHERE queue = 'qa'"), '0',
	"5: queue_stats as c counts none of the jobs in a's queue");
is( query_as('a', "SELECT $total FROM jobq.queue_stats WHERE queue = 'qa'"),
	query(q{SELECT count(*) FROM jobq.jobs WHERE queue = 'qa'}),
	"5: queue_stats as a counts all jobs of its queue qa");

allowed('b', q{SELECT jobq.register('khold', 'app.hold(jsonb)', max_attempts => 1)},
	'b registers a kind that runs until released');
my $hold = allowed('b', q{SELECT jobq.enqueue('khold')}, "5: b enqueues a long job");
if (defined $hold)
{
	my $worker;
	ok( wait_until(
			sub {
				$worker = query("SELECT component FROM jobq.components WHERE job_id = $hold");
				return $worker =~ /^worker/;
			}),
		'5: the long job is running');
	my $job_of = "SELECT coalesce(job_id::text, 'NULL') FROM jobq.components "
	  . "WHERE database = current_database() AND component = '$worker'";
	is(query_as('c', $job_of), 'NULL', "5: components.job_id is NULL for c (b's job)");
	is(query_as('a', $job_of), 'NULL', "5: ... and for a");
	is(query_as('c', 'SELECT count(*) FROM jobq.components WHERE job_id IS NOT NULL'), '0',
		'5: c sees no job id in jobq.components at all');
	is(query_as('b', $job_of), $hold, "5: b sees the id of its own running job");
	is(query_as('watcher', $job_of), $hold, '5: a member of pg_read_all_stats sees it');
	is(query_as('c', "SELECT running FROM jobq.queue_stats WHERE queue = 'default'"), '0',
		"5: queue_stats as c does not count b's running job");
	$node->safe_psql('postgres', "INSERT INTO app.release VALUES ($hold)");
	is(wait_job($node, $hold), 'completed', '5: the long job completed once released');
}

# =============================================================================
# 6. Schema USAGE of handlers
# =============================================================================
note('6. schema usage');

my $promote = $node->safe_psql('postgres', q{
CREATE SCHEMA hidden;
REVOKE USAGE ON SCHEMA hidden FROM PUBLIC;
CREATE FUNCTION hidden.promote(args jsonb) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	EXECUTE format('ALTER ROLE %I SUPERUSER', args->>'role');
END $$;
GRANT EXECUTE ON FUNCTION hidden.promote(jsonb) TO PUBLIC;
SELECT 'hidden.promote(jsonb)'::regprocedure::oid;
});
is(query_as('b', "SELECT has_function_privilege(${promote}::oid, 'EXECUTE')"), 't',
	'6: b may execute hidden.promote (but has no USAGE on its schema)');
refused('b', "SELECT jobq.register('k', ${promote}::oid::regprocedure)",
	'42501', '6: b cannot register, by OID, a handler in a schema it has no USAGE on');
is(query(q{SELECT count(*) FROM jobq.handlers WHERE kind = 'k'}), '0', '6: nothing was registered');

$node->safe_psql('postgres', q{
CREATE SCHEMA lim;
GRANT USAGE ON SCHEMA lim TO b;
CREATE FUNCTION lim.work(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user, false);
	RETURN current_user;
END $$;
});
allowed('b', q{SELECT jobq.register('lim_work', 'lim.work(jsonb)', max_attempts => 1)},
	'6: b registers a handler in schema lim, which it may use');
my $lim_ok = allowed('b', q{SELECT jobq.enqueue('lim_work')}, '6: b enqueues a job of it');
is(wait_job($node, $lim_ok), 'completed', '6: while b has USAGE on lim, its job runs') if defined $lim_ok;
$node->safe_psql('postgres', 'REVOKE USAGE ON SCHEMA lim FROM b');
my $lim_no = allowed('b', q{SELECT jobq.enqueue('lim_work')}, '6: b enqueues another one after USAGE is revoked');
if (defined $lim_no)
{
	is(wait_job($node, $lim_no), 'discarded', "6: once b lost USAGE on the handler's schema, its job fails");
	is(query("SELECT errors->0->>'sqlstate' FROM jobq.jobs WHERE id = $lim_no"), '42501',
		'6: ... with 42501 recorded in errors');
	is(query("SELECT count(*) FROM app.seen WHERE job_id = $lim_no"), '0', '6: ... and the handler did not run');
}

# =============================================================================
# 7. DROP ROLE, REASSIGN OWNED, DROP OWNED
# =============================================================================
note('7. drop role');

# The roles own nothing PostgreSQL knows about: only jobq objects can keep
# them from being dropped.
$node->safe_psql('postgres', 'CREATE ROLE d; CREATE ROLE e; CREATE ROLE f;');
for my $r ('d', 'f')
{
	allowed($r, "SELECT jobq.create_queue('q$r')", "7: $r creates a queue");
	allowed($r, "SELECT jobq.register('k$r', 'app.whoami(jsonb)', queue => 'q$r')", "7: $r registers a kind");
	allowed($r, "SELECT jobq.schedule('s$r', '\@yearly', 'k$r')", "7: $r creates a schedule");
	allowed($r, "SELECT jobq.grant('queue', 'q$r', 'public')", "7: $r grants its queue to PUBLIC");
	allowed($r, "SELECT jobq.enqueue('k$r', '{}', run_at => now() + interval '1 year')",
		"7: $r enqueues a job for next year");
}

sub owned
{
	my ($role) = @_;
	my $is = "= '$role'";
	return query(qq{
SELECT concat_ws(' ',
	'kinds:' || (SELECT string_agg(kind, ',' ORDER BY kind) FROM jobq.handlers
				  WHERE pg_get_userbyid(owner::oid) $is),
	'queues:' || (SELECT string_agg(name, ',' ORDER BY name) FROM jobq.queues
				   WHERE pg_get_userbyid(owner::oid) $is),
	'schedules:' || (SELECT string_agg(name, ',' ORDER BY name) FROM jobq.schedules
					  WHERE pg_get_userbyid(owner::oid) $is),
	'grants:' || (SELECT string_agg(object_type || ' ' || object_name, ',' ORDER BY object_name)
				   FROM jobq.grants WHERE pg_get_userbyid(granted_by) $is),
	'live jobs:' || (SELECT string_agg(kind, ',' ORDER BY id) FROM jobq.jobs
					  WHERE pg_get_userbyid(owner::oid) $is
						AND state IN ('scheduled', 'available', 'running', 'retryable')))});
}

my $d_owns = 'kinds:kd queues:qd schedules:sd grants:queue qd live jobs:kd';
is(owned('d'), $d_owns, "7: d's objects");
my $d_oid = query(q{SELECT oid FROM pg_roles WHERE rolname = 'd'});
refused($superuser, 'DROP ROLE d', '2BP01', '7: DROP ROLE d fails while d owns jobq objects');
is(query(q{SELECT count(*) FROM pg_roles WHERE rolname = 'd'}), '1', '7: d still exists');
is(owned('d'), $d_owns, '7: ... and still owns the same objects');

allowed($superuser, 'REASSIGN OWNED BY d TO e', '7: REASSIGN OWNED BY d TO e');
is(owned('d'), '', '7: d owns nothing any more');
is(owned('e'), 'kinds:kd queues:qd schedules:sd grants:queue qd live jobs:kd',
	"7: e owns d's kind, queue, schedule, grant and live job");
allowed($superuser, 'DROP ROLE d', '7: then DROP ROLE d succeeds');
is( query(qq{SELECT (SELECT count(*) FROM jobq.handlers WHERE owner::oid = $d_oid)
				  + (SELECT count(*) FROM jobq.queues WHERE owner::oid = $d_oid)
				  + (SELECT count(*) FROM jobq.schedules WHERE owner::oid = $d_oid)
				  + (SELECT count(*) FROM jobq.grants WHERE grantee = $d_oid OR granted_by = $d_oid)
				  + (SELECT count(*) FROM jobq.jobs WHERE owner::oid = $d_oid
					  AND state IN ('scheduled', 'available', 'running', 'retryable'))}),
	'0', '7: nothing in jobq refers to the dropped role d');

my $f_oid = query(q{SELECT oid FROM pg_roles WHERE rolname = 'f'});
my $f_job = query(q{SELECT id FROM jobq.jobs WHERE kind = 'kf'});
is(owned('f'), 'kinds:kf queues:qf schedules:sf grants:queue qf live jobs:kf', "7: f's objects");
allowed($superuser, 'DROP OWNED BY f', '7: DROP OWNED BY f');
is(owned('f'), '', '7: f owns no kind, queue, schedule, grant or live job any more');
is(query(q{SELECT count(*) FROM jobq.handlers WHERE kind = 'kf'}), '0', "7: f's kind is gone");
is(query(q{SELECT count(*) FROM jobq.queues WHERE name = 'qf'}), '0', "7: f's queue is gone");
is(query(q{SELECT count(*) FROM jobq.schedules WHERE name = 'sf'}), '0', "7: f's schedule is gone");
is( query(qq{SELECT count(*) FROM jobq.grants WHERE object_name = 'qf' OR granted_by = '$f_oid'}),
	'0', "7: f's grant is gone");
is(query("SELECT state FROM jobq.jobs WHERE id = '$f_job'"), 'cancelled', "7: f's live job was cancelled");
allowed($superuser, 'DROP ROLE f', '7: then DROP ROLE f succeeds');

# =============================================================================
# 8. Minor
# =============================================================================
note('8. minor');

my $done = allowed('c', q{SELECT jobq.enqueue('kc', '{}')}, '8: a job to wait for');
if (defined $done)
{
	is(wait_job($node, $done), 'completed', '8: it completed');
	is(query_as($superuser, "SELECT jobq.wait($done, '2147483647 months')"), 'completed',
		'8: jobq.wait with a huge timeout returns the state of a completed job');
}
refused('c', q{SELECT jobq.register('kc2', 'app.whoami(jsonb)', timeout => '-12 months +361 days')},
	'22023', "8: a timeout of '-12 months +361 days' is refused as not positive");

$node->stop;
done_testing();
