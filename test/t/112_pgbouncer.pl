# External workers through PgBouncer in transaction pooling mode: every
# statement is its own transaction on whichever server connection the pool
# lends, so nothing may hang on the session.  A claim with a wait is woken
# by an enqueue committed directly on the server; complete and fail work by
# lease token alone.
#
# Skipped only when pgbouncer is missing outside CI; under CI (CI set) a
# missing pgbouncer fails (test/install_deps.sh installs it).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $PGBOUNCER = '/usr/sbin/pgbouncer';
if (!-x $PGBOUNCER)
{
	plan skip_all => "$PGBOUNCER is missing" unless ($ENV{CI} // '') ne '';
	fail("$PGBOUNCER is missing (test/install_deps.sh installs it)");
	done_testing();
	exit;
}

my $T = $JobqTest::TIMEOUT;
my $node = jobq_node('pgbouncer', workers => 2, start => 0);
# PgBouncer reaches the server over TCP
$node->append_conf('postgresql.conf', "listen_addresses = '127.0.0.1'");
$node->append_conf('pg_hba.conf', 'host all all 127.0.0.1/32 trust');
$node->start;
jobq_install($node);
my $user = $node->safe_psql('postgres', 'SELECT current_user');

my $dir = PostgreSQL::Test::Utils::tempdir();
my $port = PostgreSQL::Test::Cluster::get_free_port();
PostgreSQL::Test::Utils::append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
PostgreSQL::Test::Utils::append_to_file("$dir/pgbouncer.ini", qq{
[databases]
postgres = host=127.0.0.1 port=@{[ $node->port ]} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $user
pool_mode = transaction
default_pool_size = 4
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
my ($bouncer_out, $bouncer_err) = ('', '');
my $bouncer = IPC::Run::start([ $PGBOUNCER, "$dir/pgbouncer.ini" ],
	'<', '/dev/null', '>', \$bouncer_out, '2>', \$bouncer_err);
END { $bouncer->kill_kill if $bouncer && $bouncer->pumpable; }

# psql through PgBouncer, in autocommit
my @psql = ($node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1',
	'-h', '127.0.0.1', '-p', $port, '-U', $user);
sub bounced
{
	my ($sql, $db) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ @psql, '-d', $db // 'postgres', '-c', $sql ], '<', '/dev/null', '>', \$out, '2>', \$err);
	chomp $out;
	return wantarray ? ($out, $err) : $out;
}

ok(wait_until(sub { (bounced('SELECT 1'))[0] eq '1' }), 'PgBouncer answers');
like(bounced('SHOW CONFIG', 'pgbouncer'), qr/^pool_mode\|transaction\|/m, 'it pools by transaction');

$node->safe_psql('postgres', q{
CREATE TABLE done (job_id bigint PRIMARY KEY);
SELECT jobq.register_external('remote', max_attempts => 3);
});

# A claim waiting through PgBouncer; the enqueue commits on the server.
my ($claimed, $claim_err) = ('', '');
my $claim = IPC::Run::start(
	[ @psql, '-d', 'postgres', '-c', qq{
		SELECT id, lease_token, attempt, extract(epoch FROM clock_timestamp()), inet_client_addr()
		  FROM jobq.claim(wait => '$T s', worker => 'bounced')} ],
	'<', '/dev/null', '>', \$claimed, '2>', \$claim_err);
ok( $node->poll_query_until('postgres', q{
	SELECT EXISTS (SELECT FROM pg_stat_activity
				   WHERE query LIKE '%jobq.claim(wait%' AND state = 'active' AND wait_event_type = 'Extension')}),
	'the claim through PgBouncer sleeps on the server');
my ($job, $committed) = split /\n/, $node->safe_psql('postgres', q{
	BEGIN; SELECT jobq.enqueue('remote', '{"n": 1}'); COMMIT;
	SELECT extract(epoch FROM clock_timestamp())});
$claim->finish;
chomp $claimed;
my ($id, $token, $attempt, $returned, $client) = split /\|/, $claimed;
is("$id/$attempt$claim_err", "$job/1", 'the waiting claim returned the job');
is($client, '127.0.0.1', 'from a server connection of PgBouncer');
note(sprintf('the claim through PgBouncer returned %.1f ms after the COMMIT', ($returned - $committed) * 1000));
cmp_ok($returned - $committed, '<', 2, 'within 2 s of the COMMIT');

# complete in its own transaction, on whatever server connection comes
my ($out, $err) = bounced(qq{INSERT INTO done VALUES ($job); SELECT jobq.complete($job, $token, '{"ok": true}')});
is($err, '', 'jobq.complete through PgBouncer');
is( $node->safe_psql('postgres', qq{
	SELECT concat_ws(' ', state, result->>'ok', worker, EXISTS (SELECT FROM done WHERE job_id = $job)) FROM jobq.jobs WHERE id = $job}),
	'completed true bounced t', 'the job completed, with the application row (one transaction: psql -c sends both statements at once)');

# fail, then the retry claimed and failed again, all through PgBouncer
$job = $node->safe_psql('postgres', q{SELECT jobq.enqueue('remote', '{"n": 2}')});
($id, $token, $attempt) = split /\|/, bounced(q{SELECT id, lease_token, attempt FROM jobq.claim()});
is("$id/$attempt", "$job/1", 'a claim without a wait through PgBouncer');
is(scalar bounced("SELECT jobq.fail($job, $token, 'timeout talking to the mail server'::text, retry_in => '0')"),
	'available', 'jobq.fail through PgBouncer: available again at once');
($id, $token, $attempt) = split /\|/, bounced(qq{SELECT id, lease_token, attempt FROM jobq.claim(wait => '$T s')});
is("$id/$attempt", "$job/2", 'claimed again: attempt 2');
is(scalar bounced("SELECT jobq.fail($job, $token, 'mail server still down'::text)"), 'retryable',
	'jobq.fail with the backoff: retryable');
is( $node->safe_psql('postgres', qq{
	SELECT state || ' ' || (SELECT string_agg(e->>'attempt' || ':' || (e->>'message'), ',') FROM jsonb_array_elements(errors) e)
	  FROM jobq.jobs WHERE id = $job}),
	'retryable 1:timeout talking to the mail server,2:mail server still down', 'both failures recorded');

# a stale token through PgBouncer is refused like any other
($out, $err) = bounced("SELECT jobq.complete($job, $token)");
like($err, qr/ERROR:  job $job is not held by lease token $token/, 'a stale token is refused through PgBouncer');

$bouncer->signal('INT');
$bouncer->finish;
note("pgbouncer log:\n" . slurp_file("$dir/pgbouncer.log"));
$node->stop;
done_testing();
