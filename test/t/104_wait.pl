# Waiting for jobs: wait_any() returns as soon as the first job is final
# (woken at the commit that finishes it), with its result; wait_result()
# reads the result the worker stored; a waiting backend whose client is
# gone ends instead of waiting out its timeout.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('wait', workers => 2);
jobq_install($node);
jobq_handlers($node);
$node->safe_psql('postgres', q{SELECT jobq.create_queue('held'); SELECT jobq.pause('held')});

# wait_any: two held jobs; releasing the queue runs both, the wait returns
# at the first completion's commit with the jobs final by then.
my ($a, $b) = split /\n/, $node->safe_psql('postgres', q{
	SELECT jobq.enqueue('effect', jsonb_build_object('n', n), queue => 'held')
	  FROM generate_series(1, 2) n ORDER BY 1});
my $waiter = $node->background_psql('postgres');
$waiter->query_until(qr/waiting/, qq{
\\echo waiting
SELECT string_agg(format('%s %s %s', id, state, result->>'n'), ',' ORDER BY id)
  FROM jobq.wait_any(ARRAY[$a, $b], '$JobqTest::TIMEOUT s');
});
ok( $node->poll_query_until('postgres',
		q{SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query LIKE '%jobq.wait_any(ARRAY%' AND wait_event_type = 'Extension')}),
	'wait_any sleeps');
my $t0 = time;
$node->safe_psql('postgres', q{SELECT jobq.resume('held')});
my $got = $waiter->query_safe('SELECT 1');    # the wait's row comes first
like($got, qr/^(\Q$a\E completed 1|\Q$b\E completed 2|\Q$a\E completed 1,\Q$b\E completed 2)\n1$/,
	'wait_any returns the finished jobs with their results');
note(sprintf('wait_any returned %.1f ms after the resume', (time - $t0) * 1000));
$waiter->quit;

is( $node->safe_psql('postgres', qq{SELECT state || ' ' || (result->>'n') FROM jobq.wait_result($b, '$JobqTest::TIMEOUT s')}),
	'completed 2', 'wait_result reads the result stored after the wait began');

# A waiting backend whose client is killed ends within about a second.
my $held = $node->safe_psql('postgres', q{
	SELECT jobq.pause('held'); SELECT jobq.enqueue('effect', '{"n": 3}', queue => 'held')});
$held = (split /\n/, $held)[-1];
my $client = $node->background_psql('postgres');
my $backend = $client->query_safe('SELECT pg_backend_pid()');
$client->query_until(qr/waiting/, qq{
\\echo waiting
SELECT jobq.wait($held, NULL);
});
ok( $node->poll_query_until('postgres',
		"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = $backend"),
	'a wait without timeout sleeps');
kill 'KILL', $client->{run}->{KIDS}[0]{PID};
$t0 = time;
ok($node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $backend)"),
	'its backend ends once the client is gone');
note(sprintf('the waiting backend ended %.1f s after its client was killed', time - $t0));
ok($node->log_contains(qr/connection to client lost/), 'and says why in the log');

$node->stop;
done_testing();
