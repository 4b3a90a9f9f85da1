# jobq follows the extension from database to database with no manual step:
# CREATE EXTENSION in a second database starts its processes, DROP EXTENSION
# stops them, CREATE DATABASE ... TEMPLATE and DROP DATABASE of a database
# where jobq runs (even with a job running) just work.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('databases', workers => 2);
jobq_install($node);
jobq_handlers($node);

# Processes of a database, as pg_stat_activity shows them (from postgres).
sub processes
{
	my ($db, $type) = @_;
	$type //= 'jobq %';
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND backend_type LIKE '$type'");
}

sub component_rows
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM jobq.components WHERE database = '$db'");
}

# A job in a database runs to completion.
sub job_completes
{
	my ($db, $n) = @_;
	my $id = $node->safe_psql($db, "SELECT jobq.enqueue('effect', '{\"n\": $n}')");
	return wait_job($node, $id, $db) eq 'completed'
	  && $node->safe_psql($db, "SELECT count(*) FROM app.effects WHERE job_id = $id AND n = $n") eq '1';
}

$node->safe_psql('postgres', 'CREATE DATABASE db2');
is(component_rows('db2'), '0', 'no jobq components in a database without the extension');

# --- CREATE EXTENSION starts processes -------------------------------------
$node->safe_psql('db2', 'CREATE EXTENSION jobq');
ok(wait_ready($node, 'db2'), 'after CREATE EXTENSION, wait_ready is true in db2');
is( $node->safe_psql(
		'db2',
		q{SELECT count(*) FILTER (WHERE component LIKE 'worker%' AND pid IS NOT NULL),
		         count(*) FILTER (WHERE component = 'leader' AND pid IS NOT NULL),
		         count(*) FILTER (WHERE component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')
		                            AND state = 'running')
		    FROM jobq.components WHERE database = 'db2'}),
	'2|1|4',
	'jobq.components shows 2 workers, a leader and its 4 services in db2');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = 'db2' AND backend_type = 'jobq worker'}),
	'pg_stat_activity shows 2 jobq workers in db2');
jobq_handlers($node, 'db2');
ok(job_completes('db2', 1), 'a job in db2 completes');
ok(job_completes('postgres', 1), 'a job in postgres completes too');

# --- DROP EXTENSION stops them ------------------------------------------------
$node->safe_psql('db2', 'DROP EXTENSION jobq');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'db2' AND backend_type LIKE 'jobq %'}),
	'after DROP EXTENSION, the jobq processes of db2 leave');
is(component_rows('db2'), '0', 'jobq.components no longer lists db2');
is(processes('postgres', 'jobq worker'), '2', 'the workers of postgres still run');
ok(job_completes('postgres', 2), 'and jobs in postgres still complete');

# --- and CREATE EXTENSION again brings them back -------------------------------
$node->safe_psql('db2', 'CREATE EXTENSION jobq');
ok(wait_ready($node, 'db2'), 'after a second CREATE EXTENSION, db2 is ready again');
$node->safe_psql('db2', q{SELECT jobq.register('effect', 'app.effect(jsonb)', backoff_max => '200 ms')});
ok(job_completes('db2', 2), 'a job in db2 completes again');

# --- CREATE DATABASE ... TEMPLATE a database where jobq runs -------------------
my $start = time;
$node->safe_psql('postgres', 'CREATE DATABASE db3 TEMPLATE db2');
note(sprintf('CREATE DATABASE db3 TEMPLATE db2 took %.1f s', time - $start));
pass('CREATE DATABASE ... TEMPLATE db2 succeeds while jobq runs in db2');
ok(wait_ready($node, 'db2'), 'db2 is ready again after being used as a template');
ok(wait_ready($node, 'db3'), 'the copy, db3, which has the extension, runs jobq');
ok(job_completes('db3', 3), 'a job in db3 completes');

# --- DROP DATABASE with jobq running, and a job in the middle of its handler ----
my $running = $node->safe_psql('db2', q{SELECT jobq.enqueue('effect', '{"n": 9, "sleep": 60}')});
ok($node->poll_query_until('db2', "SELECT state = 'running' FROM jobq.jobs WHERE id = $running"),
	'a 60 s job runs in db2');
my $db2_oid = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'db2'});
$start = time;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE db2');
my $took = time - $start;
is($ret, 0, 'DROP DATABASE db2 succeeds with jobq running there, without any manual step')
  or diag($err);
note(sprintf('DROP DATABASE db2 took %.1f s', $took));
ok($took < 30, 'it did not wait for the running job to end');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datid = $db2_oid OR datname = 'db2'"),
	'0',
	'no process of db2 remains');
is(component_rows('db2'), '0', 'jobq.components no longer lists db2');

$node->safe_psql('postgres', 'DROP DATABASE db3');
pass('DROP DATABASE db3 succeeds too');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'db3'}),
	'no process of db3 remains');

# postgres is unaffected
ok(wait_ready($node, 'postgres'), 'postgres is still ready');
ok(job_completes('postgres', 3), 'and runs jobs');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(DISTINCT coalesce(datname, '-'), ',') FROM pg_stat_activity WHERE backend_type LIKE 'jobq %'}),
	'-,postgres',
	'the only jobq processes left are the launcher and those of postgres');

$node->stop;
done_testing();
