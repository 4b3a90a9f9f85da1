# A streaming standby runs no jobq work: no jobq process, jobs enqueued on
# the primary stay as they are.  After the primary dies (immediate stop) and
# the standby is promoted, it runs the queued jobs and rescues the job that
# was running on the old primary: that job completes after one "lost" entry.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# One worker on the primary: once it runs the long job, the others queue up.
my $primary = jobq_node('primary', workers => 1, init => { allows_streaming => 1 },
	conf => "log_timezone = 'UTC'\n");
jobq_install($primary);
jobq_handlers($primary);
$primary->safe_psql('postgres', q{
CREATE FUNCTION app.slow_first(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	IF job.attempt = 1 THEN
		PERFORM pg_sleep(600);
	END IF;
	INSERT INTO app.effects (job_id, n, attempt) VALUES (job.id, -1, job.attempt);
END $$;
SELECT jobq.register('slow_first', 'app.slow_first(jsonb)');
});

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

# The long job occupies the primary's only worker; then more jobs queue.
my $long = $primary->safe_psql('postgres', q{SELECT jobq.enqueue('slow_first', '{}')});
ok( $primary->poll_query_until('postgres',
		"SELECT state = 'running' FROM jobq.jobs WHERE id = $long"),
	'the long job runs on the primary');
my $last = $primary->safe_psql('postgres',
	q{SELECT max(jobq.enqueue('effect', jsonb_build_object('n', g))) FROM generate_series(1, 50) g});
$primary->wait_for_catchup($standby);

# --- the standby runs nothing -------------------------------------------
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is( $standby->safe_psql('postgres', q{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type LIKE 'jobq%' OR application_name LIKE 'jobq%'}),
	'0', 'no jobq process runs on the standby');
is( $standby->safe_psql('postgres', q{
	SELECT count(*) FROM jobq.components WHERE pid IS NOT NULL}),
	'0', 'jobq.components on the standby shows no running component');
is($standby->safe_psql('postgres', q{SELECT jobq.wait_ready('1 s')}),
	'f', 'jobq.wait_ready() says the standby is not ready');
is( $standby->safe_psql('postgres', q{
	SELECT state, count(*) FROM jobq.jobs GROUP BY state ORDER BY state}),
	"available|50\nrunning|1",
	'the standby sees the queued jobs available and the long job running');
# the primary is still working through nothing (its only worker is busy):
# the standby's view is the primary's, nothing was taken by the standby
is( $primary->safe_psql('postgres', q{
	SELECT state, count(*) FROM jobq.jobs GROUP BY state ORDER BY state}),
	"available|50\nrunning|1",
	'the primary has the same jobs in the same states');
my $log = slurp_file($standby->logfile);
unlike($log, qr/jobq launcher started/, 'no jobq launcher started on the standby');

# --- the primary dies; the standby is promoted ---------------------------
$primary->stop('immediate');
my $t_promote = time;
$standby->promote;
ok(wait_ready($standby), 'jobq is ready on the promoted standby');
my $t_ready = time;
is(wait_job($standby, $long), 'completed', 'the job that was running on the old primary completed');
is(wait_job($standby, $last), 'completed', 'the queued jobs run');
ok( $standby->poll_query_until('postgres',
		q{SELECT count(*) = 51 FROM jobq.jobs WHERE state = 'completed'}),
	'all 51 jobs completed on the new primary');
is( $standby->safe_psql('postgres', qq{
	SELECT attempt, jsonb_array_length(errors), errors -> 0 ->> 'lost', errors -> 0 ->> 'attempt'
	  FROM jobq.jobs WHERE id = $long}),
	'2|1|true|1',
	'the long job was rescued (one "lost" entry for attempt 1) and completed at attempt 2');
is( $standby->safe_psql('postgres',
		q{SELECT count(*), count(DISTINCT job_id) FROM app.effects}),
	'51|51', 'each job has exactly one effect');
is( $standby->safe_psql('postgres',
		q{SELECT count(*) FROM jobq.jobs WHERE id <> } . $long . q{ AND errors <> '[]'}),
	'0', 'the queued jobs ran at their first attempt');
my $rescued_at = $standby->safe_psql('postgres',
	"SELECT extract(epoch FROM (errors -> 0 ->> 'at')::timestamptz) FROM jobq.jobs WHERE id = $long");
diag(sprintf('FIGURE promotion: jobq ready %.1f s after promote started; '
	  . 'the old primary\'s running job rescued %.1f s after promote started',
	$t_ready - $t_promote, $rescued_at - $t_promote));
like(slurp_file($standby->logfile), qr/jobq launcher started/, 'the launcher started after promotion');

$standby->stop;
done_testing();
