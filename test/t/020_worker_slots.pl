# When max_worker_processes leaves too few background worker slots, the
# launcher says so clearly in the log (naming max_worker_processes), once
# per process, looks for a free slot every second, and wait_ready() does not
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
like($log, qr/DETAIL:  Trying again every 1000 ms\./, 'it looks for a free slot every second');

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

# Some seconds later (wait_ready waited one), each process that found no
# slot has said so once: no message per retry.
$log = slurp_file($node->logfile);
my $count = () = $log =~ /$msg/g;
cmp_ok($count, '<=', 6, "one message per process that could not start ($count): no hot loop in the log");

# With enough slots (after a restart) everything starts.
$node->append_conf('postgresql.conf', "max_worker_processes = 16\n");
$node->restart;
ok(wait_ready($node), 'with max_worker_processes = 16, jobq is ready');

$node->stop;
done_testing();
