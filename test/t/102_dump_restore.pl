# Backup and restore of a database that uses jobq, as README's "Backup,
# restore and staging copies" says to do it: dumps by a superuser and by
# the database's owner (plain and custom format), restored by a superuser
# into a new database of the same cluster and into a new cluster whose
# roles have other OIDs, with jobq.enabled = off on the target first.
# While off, no jobq process runs there and the restored jobs stay as they
# were (nothing is rescued, run or scheduled); turned on, everything runs,
# as the roles it ran as, and new jobs get new ids.
use strict;
use warnings FATAL => 'all';
use lib 'test';
use JobqTest;
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;

my $src = jobq_node('source', workers => 2);
$src->safe_psql('postgres', q{
CREATE ROLE app_owner LOGIN;
CREATE ROLE helper LOGIN;
CREATE DATABASE prod OWNER app_owner;
});
jobq_install($src, 'prod');
$src->safe_psql('prod', q{
SET ROLE app_owner;
CREATE SCHEMA app;
CREATE TABLE app.effects (job_id bigint, n int, who text);
CREATE FUNCTION app.work(args jsonb) RETURNS jsonb LANGUAGE sql AS $$
	INSERT INTO app.effects SELECT (jobq.current_job()).id, (args->>'n')::int, current_user;
	SELECT jsonb_build_object('n', args->'n')
$$;
SELECT jobq.register('work', 'app.work(jsonb)', backoff_max => '100 ms');
SELECT jobq.create_queue('held');
SELECT jobq.pause('held');
SELECT jobq.grant('kind', 'work', 'helper');
});
my $done = $src->safe_psql('prod', q{SET ROLE app_owner; SELECT jobq.enqueue('work', '{"n": 1}')});
is(wait_job($src, $done, 'prod'), 'completed', 'a job completed in the source database');

# From here on the source runs nothing, so the dump holds due work: jobs
# available now, a schedule due now, a job running on a worker that is gone.
$src->safe_psql('postgres', 'ALTER DATABASE prod SET jobq.enabled = off');
ok( $src->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'prod' AND backend_type LIKE 'jobq%'}),
	'jobq.enabled = off stops the processes of the source database');
$src->safe_psql('prod', q{
SET ROLE app_owner;
SELECT jobq.enqueue('work', jsonb_build_object('n', n)) FROM generate_series(2, 4) n;
SELECT jobq.enqueue('work', '{"n": 5}', queue => 'held');
SELECT jobq.enqueue('work', '{"n": 6}', run_at => now() + interval '1 hour');
SELECT jobq.schedule('tick', '* * * * *', 'work', '{"n": 7}');
RESET ROLE;
UPDATE jobq.schedules SET next_fire_at = now() - interval '1 minute';
INSERT INTO jobq.jobs (attempted_by, scheduled_at, attempted_at, owner, state, attempt,
					   max_attempts, priority, kind, queue, args)
VALUES (42, now(), now(), 'app_owner', 'running', 1, 5, 0, 'work', 'default', '{"n": 8}');
});

my $jobs_query = q{SELECT string_agg(id || ' ' || state || ' ' || attempt || ' ' || args::text, E'\n' ORDER BY id)
					 FROM jobq.jobs};
my $jobs = $src->safe_psql('prod', $jobs_query);
my $max_id = $src->safe_psql('prod', 'SELECT max(id) FROM jobq.jobs');
is(scalar(split /\n/, $jobs), 7, 'seven jobs to dump');

my $dir = PostgreSQL::Test::Utils::tempdir();
my %dumps;
for my $who ([ 'superuser', '' ], [ 'owner', ' user=app_owner' ])
{
	my ($name, $user) = @$who;
	for my $format ([ 'plain', 'p', 'sql' ], [ 'custom', 'c', 'dump' ])
	{
		my ($fname, $flag, $ext) = @$format;
		my $file = "$dir/$name.$ext";
		my @cmd = ('pg_dump', "-F$flag", '-d', $src->connstr('prod') . $user, '-f', $file);
		push @cmd, '--enable-row-security' if $name eq 'owner';
		$src->command_ok(\@cmd, "pg_dump by the $name, $fname format");
		$dumps{"$name $fname"} = $file;
	}
}

# Another cluster, whose roles have other OIDs than the source's.
my $dst = jobq_node('target', workers => 2);
$dst->safe_psql('postgres', q{
CREATE ROLE filler;
CREATE ROLE app_owner LOGIN;
CREATE ROLE helper LOGIN;
});
my $role_oids = q{SELECT string_agg(rolname || ' ' || oid, ',' ORDER BY rolname)
					FROM pg_roles WHERE rolname IN ('app_owner', 'helper')};
my ($src_oids, $dst_oids) = map { $_->safe_psql('postgres', $role_oids) } $src, $dst;
ok( $src_oids =~ /^app_owner (\d+),helper (\d+)$/ && $dst_oids !~ /app_owner $1\b/ && $dst_oids !~ /helper $2\b/,
	"the other cluster's roles have other OIDs ($src_oids / $dst_oids)");

my $n = 0;
sub restore_and_check
{
	my ($node, $dump, $where) = @_;
	my $file = $dumps{$dump};
	my $db = 'copy' . ++$n;
	my $what = "$dump dump into $where";

	$node->safe_psql('postgres', "CREATE DATABASE $db OWNER app_owner");
	$node->safe_psql('postgres', "ALTER DATABASE $db SET jobq.enabled = off");
	my @restore = $file =~ /\.sql$/
	  ? ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-f', $file)
	  : ('pg_restore', '--exit-on-error', '-d', $node->connstr($db), $file);
	my ($out, $err) = ('', '');
	ok(IPC::Run::run(\@restore, '>', \$out, '2>', \$err), "restore of the $what")
	  or diag($err);

	# off: nothing runs, nothing changes
	ok($node->wait_for_log(qr/jobq stopping its processes in database "$db": jobq.enabled is off/),
		"$what: the launcher keeps jobq off");
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND backend_type LIKE 'jobq%'"),
		'0', "$what: no jobq process runs there");
	is($node->safe_psql($db, $jobs_query), $jobs, "$what: every job is there, as it was");
	my ($counted, $kept) = final_jobs_counted($node, $db) =~ /counted (\d+), kept (\d+)/;
	ok($kept > 0 && $counted == $kept,
		"$what: queue_stats counts the final jobs restored ($counted of $kept)");
	is( $node->safe_psql($db, q{
		SELECT string_agg(format('%s %s %s', kind, to_regprocedure(handler), owner), ',') FROM jobq.handlers}),
		'work app.work(jsonb) app_owner', "$what: the kind, its handler and owner");
	is( $node->safe_psql($db, q{
		SELECT string_agg(format('%s %s %s %s', object_type, object_name, grantee, granted_by), ',')
		  FROM jobq.grants WHERE grantee <> 0}),
		'kind work helper app_owner', "$what: the grant names the same roles");
	is( $node->safe_psql($db, q{SELECT paused FROM jobq.queues WHERE name = 'held'}),
		't', "$what: the paused queue is paused");
	is($node->safe_psql($db, q{SELECT count(*) FROM app.effects}), '1', "$what: the effects");

	# on: the restored work runs, as its owner
	$node->safe_psql('postgres', "ALTER DATABASE $db RESET jobq.enabled");
	ok(wait_ready($node, $db), "$what: jobq runs once jobq.enabled is on");
	my $new = $node->safe_psql($db, q{SET ROLE app_owner; SELECT jobq.enqueue('work', '{"n": 9}')});
	cmp_ok($new, '>', $max_id, "$what: a new job gets a new id");
	$node->safe_psql($db, q{SELECT jobq.resume('held')});
	ok( $node->poll_query_until($db, q{
			SELECT count(*) FILTER (WHERE state = 'completed') = 7
			   AND count(*) FILTER (WHERE state = 'scheduled') = 1
			  FROM jobq.jobs WHERE unique_key IS NULL}),
		"$what: the available, running (rescued) and new jobs complete");
	ok( $node->poll_query_until($db, q{
			SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key LIKE 'jobq.schedule:tick:%' AND state = 'completed')}),
		"$what: the schedule fires");
	is( $node->safe_psql($db, q{SELECT string_agg(DISTINCT who, ',') FROM app.effects}),
		'app_owner', "$what: every job ran as its owner");
}

restore_and_check($src, $_, 'the same cluster') for ('superuser custom', 'owner plain');
restore_and_check($dst, $_, 'another cluster') for sort keys %dumps;

# Server-wide: off in postgresql.conf stops every database's processes.
$dst->safe_psql('postgres', 'ALTER SYSTEM SET jobq.enabled = off');
$dst->reload;
ok( $dst->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname IS NOT NULL AND backend_type LIKE 'jobq%'}),
	'jobq.enabled = off server-wide stops the processes of every database');
$dst->safe_psql('postgres', 'ALTER SYSTEM RESET jobq.enabled');
$dst->reload;
ok(wait_ready($dst, "copy$n"), 'on again, they run again');

$src->stop;
$dst->stop;
done_testing();
