# A job runs as the role that enqueued it, never as the worker's superuser:
# it cannot read what that role cannot read, current_user is that role, and
# it cannot change role (SET ROLE, RESET ROLE, SET SESSION AUTHORIZATION).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('security', workers => 2);
jobq_install($node);

my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.secret (v text);
INSERT INTO app.secret VALUES ('s3cret');
REVOKE ALL ON app.secret FROM PUBLIC;
CREATE TABLE app.seen (job_id bigint, who text, secret text);
GRANT INSERT, SELECT ON app.seen TO PUBLIC;

CREATE FUNCTION app.read_secret(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen SELECT (jobq.current_job()).id, current_user, v FROM app.secret;
END $$;
CREATE FUNCTION app.whoami(args jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user, NULL);
	RETURN current_user;
END $$;
-- tries to become someone else, then records who it is
CREATE FUNCTION app.escalate(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE args->>'sql';
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user, NULL);
END $$;
CREATE FUNCTION app.private(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.seen VALUES ((jobq.current_job()).id, current_user, 'private');
END $$;
REVOKE EXECUTE ON FUNCTION app.private(jsonb) FROM PUBLIC;

SELECT jobq.register('read_secret', 'app.read_secret(jsonb)', max_attempts => 1);
SELECT jobq.register('whoami', 'app.whoami(jsonb)', max_attempts => 1);
SELECT jobq.register('escalate', 'app.escalate(jsonb)', max_attempts => 1);
SELECT jobq.register('private', 'app.private(jsonb)', max_attempts => 1);
-- the superuser's kinds, for every role (the superuser's grant is also the
-- trust a kind of another role would need)
SELECT jobq.grant('kind', kind, 'public') FROM jobq.handlers;
});

# Enqueues as a role (SET ROLE in the enqueueing session); returns the id.
sub enqueue_as
{
	my ($role, $kind, $args) = @_;
	$args //= '{}';
	return $node->safe_psql('postgres',
		"SET ROLE $role; SELECT jobq.enqueue('$kind', '$args')");
}

sub job_row
{
	my ($id, $cols) = @_;
	return $node->safe_psql('postgres', "SELECT $cols FROM jobq.jobs WHERE id = $id");
}

# --- privileges on tables --------------------------------------------------
my $alice_read = enqueue_as('alice', 'read_secret');
my $super_read = enqueue_as($superuser, 'read_secret');
is(job_row($alice_read, 'owner'), 'alice', "alice's job is owned by alice");
is(wait_job($node, $alice_read), 'discarded',
	"alice's job cannot read a table alice cannot read");
is( job_row($alice_read, q{errors->0->>'sqlstate', errors->0->>'message'}),
	'42501|permission denied for table secret',
	'the failure is insufficient_privilege, recorded in errors');
is(wait_job($node, $super_read), 'completed',
	"the superuser's job of the same kind can read it");
is($node->safe_psql('postgres', "SELECT who, secret FROM app.seen WHERE job_id = $super_read"),
	"$superuser|s3cret", "... and ran as the superuser");
is($node->safe_psql('postgres', "SELECT count(*) FROM app.seen WHERE job_id = $alice_read"),
	'0', "alice's job left nothing behind");

# --- current_user ------------------------------------------------------------
my $who = enqueue_as('alice', 'whoami');
is(wait_job($node, $who), 'completed', "alice's whoami job completed");
is($node->safe_psql('postgres', "SELECT who FROM app.seen WHERE job_id = $who"),
	'alice', 'current_user inside the handler is the enqueuing role');
is(job_row($who, 'result'), '"alice"', '... and so is the result it returned');

# --- no way back to the superuser --------------------------------------------
my %escape = (
	'SET ROLE' => "SET ROLE $superuser",
	'SET LOCAL ROLE' => "SET LOCAL ROLE $superuser",
	'RESET ROLE' => 'RESET ROLE',
	'set_config(role)' => "SELECT set_config('role', '$superuser', false)",
	'SET SESSION AUTHORIZATION' => "SET SESSION AUTHORIZATION $superuser",
);
my %escape_id;
for my $how (sort keys %escape)
{
	my $args = qq{{"sql": "$escape{$how}"}};
	$args =~ s/'/''/g;
	$escape_id{$how} = enqueue_as('alice', 'escalate', $args);
}
for my $how (sort keys %escape)
{
	my $id = $escape_id{$how};
	is(wait_job($node, $id), 'discarded', "a handler cannot $how back to the superuser");
	is(job_row($id, q{errors->0->>'sqlstate'}), '42501',
		"... $how fails with insufficient_privilege")
	  or diag(job_row($id, 'errors'));
	like(job_row($id, q{errors->0->>'message'}),
		qr/cannot set parameter "(role|session_authorization)"/,
		"... with a message saying the role cannot be changed");
	is($node->safe_psql('postgres', "SELECT count(*) FROM app.seen WHERE job_id = $id"),
		'0', "... and nothing ran after the $how");
}
is($node->safe_psql('postgres', "SELECT count(*) FROM app.seen WHERE who <> 'alice' AND job_id IN ("
		  . join(',', values %escape_id) . ')'),
	'0', 'no escalation job ever ran as anyone but alice');

# The workers that ran those jobs still run the next job as its owner.
my @after = map { enqueue_as('alice', 'whoami') } 1 .. 4;
for my $id (@after)
{
	is(wait_job($node, $id), 'completed', "whoami job $id after the escape attempts completed");
}
is( $node->safe_psql('postgres',
		'SELECT string_agg(DISTINCT who, \',\') FROM app.seen WHERE job_id IN (' . join(',', @after) . ')'),
	'alice',
	'later jobs still run as their owner');

# --- the handler itself: the owner must be allowed to execute it -------------
my $alice_private = enqueue_as('alice', 'private');
my $super_private = enqueue_as($superuser, 'private');
is(wait_job($node, $alice_private), 'discarded',
	'alice cannot run a handler she may not execute');
is(job_row($alice_private, q{errors->0->>'sqlstate'}), '42501',
	'... failing with insufficient_privilege');
is(wait_job($node, $super_private), 'completed', "the superuser's job of that kind runs");

# --- revoking EXECUTE takes effect for the next jobs ---------------------------
# (the workers ran alice's whoami jobs above, so they knew she could)
$node->safe_psql('postgres', 'REVOKE EXECUTE ON FUNCTION app.whoami(jsonb) FROM PUBLIC');
my @revoked = map { enqueue_as('alice', 'whoami') } 1 .. 4;
for my $id (@revoked)
{
	is(wait_job($node, $id), 'discarded', "alice's whoami job $id fails once EXECUTE is revoked");
	is(job_row($id, q{errors->0->>'sqlstate'}), '42501', '... with insufficient_privilege');
}
my $super_who = enqueue_as($superuser, 'whoami');
is(wait_job($node, $super_who), 'completed', "the superuser's whoami job still runs");

# --- alice sees only her own jobs ----------------------------------------------
is( $node->safe_psql('postgres',
		q{SET ROLE alice; SELECT count(*) = count(*) FILTER (WHERE owner = 'alice'::regrole)
		    FROM jobq.jobs}),
	't',
	'alice sees only her own jobs');

$node->stop;
done_testing();
