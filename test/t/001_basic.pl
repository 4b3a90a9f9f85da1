# Smoke test: jobs enqueued from SQL run once each and complete.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('basic');
jobq_install($node);
jobq_handlers($node);

my $ids = $node->safe_psql('postgres',
	q{SELECT array_agg(jobq.enqueue('effect', jsonb_build_object('n', g))) FROM generate_series(1, 100) g});
my ($last) = $ids =~ /(\d+)\}$/;
is(wait_job($node, $last), 'completed', 'last job completed');
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 100 FROM jobq.jobs WHERE state = 'completed'}), 'all jobs completed');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT n) FROM app.effects'),
	'100|100', 'each handler effect appears once');

$node->stop;
done_testing();
