# The cleaner deletes final jobs older than their retention
# (jobq.completed_retention for completed, jobq.discarded_retention for
# discarded and cancelled ones), in batches, and leaves young final jobs and
# every live job alone, however old.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('cleaner', conf => "log_timezone = 'UTC'\njobq.cleanup_interval = '200ms'\n");
jobq_install($node);
jobq_handlers($node);

$node->safe_psql('postgres', q{
ALTER SYSTEM SET jobq.completed_retention = '60s';
ALTER SYSTEM SET jobq.discarded_retention = '120s';
SELECT pg_reload_conf();
CREATE TABLE public.probe (label text PRIMARY KEY, job_id bigint);
});

# Jobs in every state, labelled.
sub enqueue
{
	my ($label, $sql) = @_;
	my $id = $node->safe_psql('postgres', "SELECT $sql");
	$node->safe_psql('postgres', "INSERT INTO probe VALUES ('$label', $id)");
	return $id;
}

my %final;
$final{$_} = enqueue($_, q{jobq.enqueue('effect', '{"n": 1}')})
  for qw(completed_old completed_young completed_90s);
$final{$_} = enqueue($_, q{jobq.enqueue('effect', '{"n": 2, "fail": 9}', max_attempts => 1)})
  for qw(discarded_old discarded_90s discarded_young);
$final{$_} = enqueue($_, q{jobq.enqueue('effect', '{"n": 3}', run_at => now() + interval '1 h')})
  for qw(cancelled_old cancelled_90s);
is(wait_job($node, $final{$_}), 'completed', "$_ completed") for grep { /^completed/ } sort keys %final;
is(wait_job($node, $final{$_}), 'discarded', "$_ discarded") for grep { /^discarded/ } sort keys %final;
$node->safe_psql('postgres', "SELECT jobq.cancel($final{$_})") for grep { /^cancelled/ } keys %final;

# Live jobs: waiting in the future, retryable, available in a paused queue,
# running (a long handler).
$node->safe_psql('postgres', q{SELECT jobq.create_queue('held'); SELECT jobq.pause('held')});
enqueue('scheduled_live', q{jobq.enqueue('effect', '{"n": 4}', run_at => now() + interval '1 h')});
enqueue('available_live', q{jobq.enqueue('effect', '{"n": 5}', queue => 'held')});
my $running = enqueue('running_live', q{jobq.enqueue('effect', '{"n": 6, "sleep": 600}')});
ok( $node->poll_query_until('postgres', "SELECT state = 'running' FROM jobq.jobs WHERE id = $running"),
	'the long job is running');
$node->safe_psql('postgres', q{
CREATE FUNCTION app.always_fails(args jsonb) RETURNS void LANGUAGE plpgsql
	AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
SELECT jobq.register('always_fails', 'app.always_fails(jsonb)');   -- retry after ~1 s, then 16 s
});
my $retry = enqueue('retryable_live', q{jobq.enqueue('always_fails', '{}')});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'retryable' AND attempt = 1 FROM jobq.jobs WHERE id = $retry"),
	'a job waits as retryable');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'retryable' AND attempt = 2 FROM jobq.jobs WHERE id = $retry"),
	'and again after its second attempt (16 s backoff now)');

# Age them, as superuser: the old ones well past their retention, the
# "90s" ones past the completed retention but within the discarded one.
# The live ones get ancient timestamps too: they must stay anyway.
$node->safe_psql('postgres', q{
UPDATE jobq.jobs j SET finalized_at = now() - interval '1 day', created_at = now() - interval '2 days'
  FROM probe p WHERE p.job_id = j.id AND p.label LIKE '%_old';
UPDATE jobq.jobs j SET finalized_at = now() - interval '90 s'
  FROM probe p WHERE p.job_id = j.id AND p.label LIKE '%_90s';
UPDATE jobq.jobs j SET created_at = now() - interval '30 days', attempted_at = now() - interval '30 days',
	   scheduled_at = CASE WHEN state = 'available' THEN now() - interval '30 days' ELSE scheduled_at END
  FROM probe p WHERE p.job_id = j.id AND p.label LIKE '%_live';
});

sub present
{
	return $node->safe_psql('postgres', q{
	SELECT string_agg(p.label, ',' ORDER BY p.label) FROM probe p JOIN jobq.jobs j ON j.id = p.job_id});
}

my $keep = 'available_live,cancelled_90s,completed_young,discarded_90s,discarded_young,'
  . 'retryable_live,running_live,scheduled_live';
ok( JobqTest::wait_until(sub { present() eq $keep }),
	'the old final jobs and the completed job past 60 s are deleted')
  or diag('present: ' . present());

# Has the cleaner passed over the survivors, or just not come round yet?
# Canaries aged after the check above must disappear in a later pass of
# both deletions; the survivors must still be there after that.
my @canaries = (enqueue('canary_completed', q{jobq.enqueue('effect', '{"n": 7}')}),
	enqueue('canary_cancelled', q{jobq.enqueue('effect', '{"n": 8}', run_at => now() + interval '1 h')}));
is(wait_job($node, $canaries[0]), 'completed', 'canary completed');
$node->safe_psql('postgres', "SELECT jobq.cancel($canaries[1])");
$node->safe_psql('postgres', 'UPDATE jobq.jobs SET finalized_at = now() - interval \'1 day\' WHERE id IN (' . join(',', @canaries) . ')');
ok( $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM jobq.jobs WHERE id IN (' . join(',', @canaries) . ')'),
	'the cleaner came round again (the canaries are gone)');
is(present(), $keep, 'young final jobs and all live jobs are still there');

# A backlog larger than one batch (1000) is worked off.
my $n = 2500;
my $last = $node->safe_psql('postgres',
	"SELECT max(i) FROM unnest(jobq.enqueue_many('effect', array_fill('{\"n\": 9}'::jsonb, ARRAY[$n]))) i");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = $n FROM jobq.jobs WHERE kind = 'effect' AND args = '{\"n\": 9}' AND state = 'completed'"),
	"$n more jobs completed");
$node->safe_psql('postgres',
	"UPDATE jobq.jobs SET finalized_at = now() - interval '1 day' WHERE args = '{\"n\": 9}'");
ok( $node->poll_query_until('postgres', "SELECT count(*) = 0 FROM jobq.jobs WHERE args = '{\"n\": 9}'"),
	"a backlog of $n old jobs is deleted");

# A retention of 1 s: the young completed job goes once it is a second old,
# and the young discarded one stays (its retention is still 120 s).
$node->safe_psql('postgres', q{
ALTER SYSTEM SET jobq.completed_retention = '1s';
SELECT pg_reload_conf();
});
ok( $node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM probe p JOIN jobq.jobs j ON j.id = p.job_id WHERE p.label = 'completed_young')"),
	'with a 1 s retention the young completed job is deleted too');
my @canary2 = (enqueue('canary2', q{jobq.enqueue('effect', '{"n": 10}')}));
is(wait_job($node, $canary2[0]), 'completed', 'second canary completed');
ok( $node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE id = $canary2[0])"),
	'and a job completed now goes within about a second');
is(present(), 'available_live,cancelled_90s,discarded_90s,discarded_young,retryable_live,running_live,scheduled_live',
	'live jobs and discarded or cancelled jobs within their retention are still there');

$node->stop;
done_testing();
