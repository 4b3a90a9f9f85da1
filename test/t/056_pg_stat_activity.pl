# jobq's processes in pg_stat_activity: backend_type 'jobq launcher',
# 'jobq worker', 'jobq candidate'; application_name names the role ('jobq
# leader' for the leader); an idle process waits on wait_event_type
# 'Extension'; a worker running a job shows 'jobq job <id> (<kind>)' as its
# query, consistent with jobq.components.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('activity', workers => 4);
jobq_install($node);
jobq_handlers($node);

is( $node->safe_psql('postgres', q{
	SELECT string_agg(backend_type || '/' || application_name || '/' || coalesce(datname, '-') || ' x' || n, ', '
					  ORDER BY backend_type, application_name)
	  FROM (SELECT backend_type, application_name, datname::text, count(*) AS n
			  FROM pg_stat_activity WHERE backend_type LIKE 'jobq%'
			 GROUP BY 1, 2, 3) s}),
	'jobq candidate/jobq candidate/postgres x1, jobq candidate/jobq leader/postgres x1, '
	  . 'jobq launcher/jobq launcher/- x1, jobq worker/jobq worker/postgres x4',
	'backend types and application names of all jobq processes');

my $leader = component_pid($node, 'leader');
is( $node->safe_psql('postgres', "SELECT application_name FROM pg_stat_activity WHERE pid = $leader"),
	'jobq leader', 'the process shown as leader in jobq.components is the "jobq leader" one');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components c JOIN pg_stat_activity a ON a.pid = c.pid
	 WHERE c.component NOT IN ('scheduler', 'rescuer', 'cleaner', 'periodic')
	   AND a.backend_type = CASE WHEN c.component = 'launcher' THEN 'jobq launcher'
								  WHEN c.component LIKE 'worker %' THEN 'jobq worker'
								  ELSE 'jobq candidate' END}),
	'7', 'every process row of jobq.components matches its pg_stat_activity backend');

# Idle, they wait on their latch: wait event type Extension.
ok( $node->poll_query_until(
		'postgres', q{
	SELECT count(*) = 7 FROM pg_stat_activity
	 WHERE backend_type LIKE 'jobq%' AND wait_event_type = 'Extension' AND wait_event = 'Extension'}),
	'all 7 idle jobq processes wait on wait_event_type Extension');

# A worker running a long job.
my $id = $node->safe_psql('postgres', q{SELECT jobq.enqueue('effect', '{"n": 1, "sleep": 3}')});
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT count(*) = 1 FROM pg_stat_activity
	 WHERE backend_type = 'jobq worker' AND query = 'jobq job $id (effect)' AND state = 'active'}),
	"a worker shows query 'jobq job $id (effect)', state active");
my ($pid, $wait) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT pid, wait_event_type || '/' || wait_event FROM pg_stat_activity
	 WHERE backend_type = 'jobq worker' AND query = 'jobq job $id (effect)'});
is($wait, 'Timeout/PgSleep', "it waits on what the handler does (pg_sleep)");
is( $node->safe_psql('postgres', qq{
	SELECT component LIKE 'worker %' AND state = 'busy' AND job_id = $id
	  FROM jobq.components WHERE pid = $pid}),
	't', 'jobq.components shows the same process busy with the same job');
is(wait_job($node, $id), 'completed', 'the job completed');
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT query <> 'jobq job $id (effect)' AND wait_event_type = 'Extension'
	  FROM pg_stat_activity WHERE pid = $pid}),
	'afterwards the worker no longer shows the job and waits idle again');

$node->stop;
done_testing();
