# Background worker slots shared fairly among databases: with too few slots
# for three databases, CREATE EXTENSION warns, the launcher warns, and every
# database gets a leader and a worker before any gets a second worker (so
# every database runs its jobs); slots freed by one database go to the
# others' waiting processes within about a second.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# 10 slots: the jobq launcher and the logical replication launcher take 2;
# three databases want 2 leader candidates and 4 workers each.
my $node = jobq_node('fairness', workers => 4, conf => "max_worker_processes = 10\n");
my @dbs = qw(db1 db2 db3);
my %create_err;
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my ($ret, $out, $err) = $node->psql($db, 'CREATE EXTENSION jobq');
	is($ret, 0, "CREATE EXTENSION jobq in $db succeeds");
	$create_err{$db} = $err;
}
unlike($create_err{db1}, qr/WARNING/, 'one database fits: no warning');
like($create_err{db3},
	qr/WARNING:  jobq needs 19 background worker slots for 3 databases, but max_worker_processes is 10/,
	'the third CREATE EXTENSION warns that slots are short');
like($create_err{db3}, qr/HINT:  Raise max_worker_processes/, '... with a hint');
ok($node->wait_for_log(qr/WARNING:  jobq needs 19 background worker slots for 3 databases/),
	'the launcher warns too');

# Processes per database, as pg_stat_activity shows them.
my $per_db = q{
SELECT string_agg(format('%s:%s:%s', d.datname,
		(SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname AND a.backend_type = 'jobq worker'),
		(SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname AND a.backend_type = 'jobq candidate')),
	' ' ORDER BY d.datname)
  FROM pg_database d WHERE d.datname IN ('db1', 'db2', 'db3')};

# Fair: each has a worker and a candidate, and no database runs two more
# processes than another.
sub fair
{
	my %n = map { my ($db, $w, $c) = split /:/; ($db => [ $w, $c ]) }
	  split / /, $node->safe_psql('postgres', $per_db);
	my @total = map { $_->[0] + $_->[1] } values %n;
	my ($min, $max) = (sort { $a <=> $b } @total)[ 0, -1 ];
	return (grep { $_->[0] >= 1 && $_->[1] >= 1 } values %n) == 3 && $max - $min <= 1;
}

my $deadline = time + $JobqTest::TIMEOUT;
my $is_fair = 0;
until ($is_fair = fair() or time > $deadline)
{
	select(undef, undef, undef, 0.1);
}
ok($is_fair, 'every database has a worker and a candidate, none two processes more than another');
note('workers and candidates per database: ' . $node->safe_psql('postgres', $per_db));

# Every database runs its jobs, and has a leader with its services.
for my $db (@dbs)
{
	jobq_handlers($node, $db);
	my $id = $node->safe_psql($db, q{SELECT jobq.enqueue('effect', '{"n": 1}')});
	is(wait_job($node, $id, $db), 'completed', "a job in $db completes");
	ok( $node->poll_query_until($db,
			q{SELECT count(*) = 1 FROM jobq.components
			   WHERE database = current_database() AND component = 'rescuer' AND pid IS NOT NULL}),
		"$db has a leader running its services");
}

# Slots freed by one database go to the others.
my $before = $node->safe_psql('postgres', $per_db);
my $t0 = time;
$node->safe_psql('db1', 'DROP EXTENSION jobq');
ok( $node->poll_query_until('postgres', q{
		SELECT count(*) = 2 FROM pg_database d
		 WHERE d.datname IN ('db2', 'db3')
		   AND (SELECT count(*) FROM pg_stat_activity a
				 WHERE a.datname = d.datname AND a.backend_type = 'jobq worker') >= 3}),
	'after db1 leaves, db2 and db3 get the freed slots');
note(sprintf('freed slots taken after %.2f s (before: %s; after: %s)',
	time - $t0, $before, $node->safe_psql('postgres', $per_db)));

$node->stop;
done_testing();
