# JobqTest: what the jobq TAP tests share.
#
# Clusters come from PostgreSQL::Test::Cluster with jobq preloaded; tests
# never sleep to let workers run: they wait on jobq.wait(), jobq.wait_ready()
# or poll a condition with a deadline (poll_query_until / wait_until).
package JobqTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(jobq_node jobq_install jobq_handlers wait_ready wait_job
  wait_until wait_accepting component_pid wait_both_candidates set_workers
  final_jobs_counted);

# Seconds any single wait may take before a test fails (CI machines are slow).
our $TIMEOUT = 120;

# A started cluster with jobq preloaded.  Options: workers, conf (extra
# postgresql.conf lines), init (hash for init, e.g. allows_streaming),
# start (default 1).
sub jobq_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	my $workers = $opt{workers} // 4;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'jobq'
max_worker_processes = 48
jobq.workers = $workers
jobq.poll_interval = '1s'
log_line_prefix = '%m [%p] %b '
});
	$node->append_conf('postgresql.conf', $opt{conf}) if defined $opt{conf};
	$node->start if $opt{start} // 1;
	return $node;
}

# Creates the extension in a database and waits until jobq runs there.
sub jobq_install
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	$node->safe_psql($db, 'CREATE EXTENSION jobq');
	ok(wait_ready($node, $db), "jobq is ready in database $db");
}

# jobq.wait_ready() with the test timeout.
sub wait_ready
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql($db, "SELECT jobq.wait_ready('$TIMEOUT s')") eq 't';
}

# jobq.wait() for one job; returns its final (or, at the timeout, current) state.
sub wait_job
{
	my ($node, $id, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql($db, "SELECT jobq.wait($id, '$TIMEOUT s')");
}

# The final jobs jobq.queue_stats counts and those jobq.jobs keeps, as
# "counted N, kept M" (a superuser sees them all).
sub final_jobs_counted
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres', q{
		SELECT format('counted %s, kept %s',
					  (SELECT coalesce(sum(completed + cancelled + discarded), 0) FROM jobq.queue_stats),
					  (SELECT count(*) FROM jobq.jobs
						WHERE state IN ('completed', 'cancelled', 'discarded')))});
}

# Polls a Perl condition until true or the deadline; returns whether it held.
sub wait_until
{
	my ($cond, $timeout) = @_;
	my $deadline = time + ($timeout // $TIMEOUT);
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(50_000);
	}
	return 0;
}

# Waits until the server accepts connections again (after a crash restart).
# pg_isready reads no stdin: psql fed a query through a pipe (what
# poll_query_until does) can exit on a refused connection before the query
# is written, and IPC::Run dies of the broken pipe.
sub wait_accepting
{
	my ($node) = @_;
	my @cmd = ($node->installed_command('pg_isready'), '-q',
		'-h', $node->host, '-p', $node->port, '-d', 'postgres');
	return wait_until(sub { IPC::Run::run(\@cmd, '<', '/dev/null') });
}

# The pid of a component (see jobq.components), or '' when none runs it.
sub component_pid
{
	my ($node, $component, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql($db,
		"SELECT coalesce(pid::text, '') FROM jobq.components "
		  . "WHERE database = current_database() AND component = '$component'");
}

# Both leader candidates of database postgres run (one of them leads) and
# jobq is ready there.
sub wait_both_candidates
{
	my ($node) = @_;
	ok( $node->poll_query_until(
			'postgres', q{
		SELECT count(*) = 2 FROM jobq.components
		 WHERE database = current_database()
		   AND component ~ '^(leader|candidate)' AND pid IS NOT NULL AND state = 'running'}),
		'both candidates run');
	ok(wait_ready($node), 'jobq is ready');
}

# Sets jobq.workers by ALTER SYSTEM and reload; returns the log offset from
# before the change, once the server has logged it.
sub set_workers
{
	my ($node, $n) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "ALTER SYSTEM SET jobq.workers = $n; SELECT pg_reload_conf();");
	$node->wait_for_log(qr/parameter "jobq.workers" changed to "$n"/, $offset);
	return $offset;
}

# Test handlers in schema app, for role $role (default: the superuser):
#   app.effect(args)      inserts args->>'n' into app.effects; fails when
#                         args has "fail"; sleeps args->>'sleep' seconds
#   app.effects           one row per handler run that committed
sub jobq_handlers
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	$node->safe_psql($db, q{
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint, n bigint, attempt int, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION app.effect(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	IF args ? 'sleep' THEN
		PERFORM pg_sleep((args->>'sleep')::float8);
	END IF;
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, (args->>'n')::bigint, job.attempt);
	IF args ? 'fail' AND (args->>'fail')::int >= job.attempt THEN
		RAISE EXCEPTION 'failing on purpose at attempt %', job.attempt
			USING ERRCODE = 'P0001', DETAIL = 'args asked for it', HINT = 'do not ask';
	END IF;
	RETURN jsonb_build_object('n', args->'n');
END $$;
GRANT USAGE ON SCHEMA app TO PUBLIC;
GRANT INSERT, SELECT ON app.effects TO PUBLIC;
SELECT jobq.register('effect', 'app.effect(jsonb)', backoff_max => '200 ms');
});
}

1;
