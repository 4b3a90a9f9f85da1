# jobq.workers changed with ALTER SYSTEM + pg_reload_conf() resizes the
# pool: it grows (new worker backends in pg_stat_activity, new rows in
# jobq.components) and shrinks only at job boundaries: workers busy with a
# 2 s job when the pool shrinks finish it (completed at attempt 1, no
# error, never rescued), and leave only after its completion committed.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::Local qw(timegm);

# jobq.batch_size = 1: a worker claims one job at a time, so 4 jobs go to 4
# workers.
my $node = jobq_node('resize', workers => 2, conf => "log_timezone = 'UTC'\njobq.batch_size = 1\n");
jobq_install($node);
jobq_handlers($node);

# "backends components": worker backends of the database in
# pg_stat_activity, and worker rows of jobq.components with a process.
sub pool
{
	return $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM pg_stat_activity
				 WHERE backend_type = 'jobq worker' AND datname = current_database())
			   || ' ' ||
			   (SELECT count(*) FROM jobq.components
				 WHERE database = current_database() AND component LIKE 'worker %' AND pid IS NOT NULL)});
}

sub wait_pool
{
	my ($n) = @_;
	my $want = "$n $n";
	my $got;
	JobqTest::wait_until(sub { ($got = pool()) eq $want });
	return $got;
}

is(pool(), '2 2', 'starts with 2 workers');

# Grow.
my $offset = set_workers($node, 4);
is(wait_pool(4), '4 4', 'grew to 4 workers (pg_stat_activity and jobq.components)');
ok(wait_ready($node), 'ready with 4 workers');
$node->wait_for_log(qr/jobq worker 3 started in database "postgres"/, $offset);
is( $node->safe_psql('postgres', q{
	SELECT string_agg(component, ',' ORDER BY component) FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %'}),
	'worker 0,worker 1,worker 2,worker 3', 'rows worker 0..3');

# Shrink while every worker is busy with a 2 s job.
my $ids = $node->safe_psql('postgres', q{
	SELECT string_agg(jobq.enqueue('effect', jsonb_build_object('n', g, 'sleep', 2))::text, ',')
	  FROM generate_series(1, 4) g});
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(DISTINCT attempted_by) = 4 FROM jobq.jobs WHERE id IN ($ids) AND state = 'running'}),
	'4 jobs of 2 s run, one per worker');
# worker number => job id, through the claim the worker holds
my %job_of = map { split /\|/ } split /\n/, $node->safe_psql('postgres', qq{
	SELECT substr(c.component, 8), j.id FROM jobq.components c JOIN jobq.jobs j ON j.attempted_by = c.claim
	 WHERE c.database = current_database() AND j.id IN ($ids)});
is(join(',', sort keys %job_of), '0,1,2,3', 'each worker holds one of them');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %' AND state = 'busy' AND job_id IS NOT NULL}),
	'4', 'jobq.components shows the 4 workers busy with their job');

$offset = set_workers($node, 1);
is( $node->safe_psql('postgres', qq{
	SELECT count(*) FROM jobq.jobs WHERE id IN ($ids) AND state = 'running'}),
	'4', 'the reload arrived while the jobs were still running');

is(wait_pool(1), '1 1', 'shrank to 1 worker');
is( $node->safe_psql('postgres', qq{
	SELECT string_agg(state || '/' || attempt || '/' || jsonb_array_length(errors), ',')
	  FROM jobq.jobs WHERE id IN ($ids)}),
	'completed/1/0,completed/1/0,completed/1/0,completed/1/0',
	'the 4 jobs completed at their first attempt, without errors (none was interrupted or rescued)');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM app.effects WHERE job_id IN ($ids)}),
	'4', 'their effects committed once each');

# Each leaving worker left after its job's completion.
my %left;
for my $line (split /\n/, slurp_file($node->logfile, $offset))
{
	next unless $line =~ /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3}) UTC .*jobq worker (\d+) leaving database "postgres": jobq.workers was lowered/;
	$left{$8} = timegm($6, $5, $4, $3, $2 - 1, $1) + $7 / 1000;
}
is(join(',', sort keys %left), '1,2,3', 'workers 1, 2 and 3 logged that they leave');
for my $w (sort keys %left)
{
	my $finalized = $node->safe_psql('postgres',
		"SELECT extract(epoch FROM finalized_at) FROM jobq.jobs WHERE id = $job_of{$w}");
	cmp_ok($left{$w}, '>=', $finalized - 0.001,
		sprintf('worker %d left %.0f ms after its job %d completed', $w, 1000 * ($left{$w} - $finalized), $job_of{$w}));
}
is( $node->safe_psql('postgres', q{
	SELECT string_agg(component, ',') FROM jobq.components
	 WHERE database = current_database() AND component LIKE 'worker %'}),
	'worker 0', 'jobq.components lists worker 0 only');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components
	 WHERE database = current_database() AND (restarts > 0 OR last_error IS NOT NULL)}),
	'0', 'leaving is not counted as a restart or an error');
ok(wait_ready($node), 'ready with 1 worker');
my $id = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 9}')});
is(wait_job($node, $id), 'completed', 'the remaining worker runs jobs');

# And grow again.
set_workers($node, 3);
is(wait_pool(3), '3 3', 'grew back to 3 workers');
ok(wait_ready($node), 'ready with 3 workers');

$node->stop;
done_testing();
