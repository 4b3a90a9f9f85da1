# When max_worker_processes leaves too few background worker slots, the
# launcher says so clearly in the log (naming max_worker_processes), keeps
# retrying with a growing backoff (no hot loop), and wait_ready() does not
# pretend jobq is ready.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

# 4 slots: the jobq launcher and the logical replication launcher take 2,
# jobq wants 4 workers and 2 candidates more.
my $node = jobq_node('slots', workers => 4, conf => "max_worker_processes = 4\n");
is($node->safe_psql('postgres', 'SHOW max_worker_processes'), '4', 'max_worker_processes is 4');
$node->safe_psql('postgres', 'CREATE EXTENSION jobq');

my $msg = qr/jobq could not start (worker|candidate) \d+ for database "postgres": no free background worker slot/;
ok($node->wait_for_log($msg), 'the launcher logs that it could not start a process: no free slot');
my $log = slurp_file($node->logfile);
like($log, qr/HINT:  Raise max_worker_processes \(now 4\)/,
	'the hint names max_worker_processes and its current value');
like($log, qr/DETAIL:  Retrying in 1000 ms\./, 'the first retry comes after 1 s');

# Retries back off: the same slot's next failure waits twice as long.
ok($node->wait_for_log(qr/DETAIL:  Retrying in 2000 ms\./), 'the next retry waits 2 s');
ok($node->wait_for_log(qr/DETAIL:  Retrying in 4000 ms\./), 'and the one after it 4 s');
$log = slurp_file($node->logfile);
my $count = () = $log =~ /$msg/g;
cmp_ok($count, '<=', 20,
	"a few messages ($count) in several seconds: the launcher does not hot-loop");

is($node->safe_psql('postgres', q{SELECT jobq.wait_ready('1 s')}), 'f',
	'wait_ready() is false: not every process could start');
cmp_ok(
	$node->safe_psql('postgres',
		q{SELECT count(*) FROM jobq.components
		   WHERE database = current_database() AND component LIKE 'worker%' AND pid IS NULL}),
	'>=', 1,
	'jobq.components shows workers without a process');

note($node->safe_psql('postgres',
	q{SELECT component, pid, state, restarts, last_error FROM jobq.components ORDER BY 1}));

# The processes that did start run jobs.
$node->safe_psql('postgres', q{
CREATE FUNCTION public.noop(args jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT jobq.register('noop', 'public.noop(jsonb)');
});
my $id = $node->safe_psql('postgres', q{SELECT jobq.enqueue('noop')});
is(wait_job($node, $id), 'completed', 'a job still completes on the worker that could start');

# With enough slots (after a restart) everything starts.
$node->append_conf('postgresql.conf', "max_worker_processes = 16\n");
$node->restart;
ok(wait_ready($node), 'with max_worker_processes = 16, jobq is ready');

$node->stop;
done_testing();
