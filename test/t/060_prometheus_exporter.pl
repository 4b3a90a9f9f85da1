# monitoring/postgres_exporter.yaml works with the real Prometheus exporter
# (Debian package prometheus-postgres-exporter): the exporter runs the
# queries against a test cluster without errors and /metrics shows jobq's
# queues (depth per state, lag, throughput, paused) and components (up with
# state, restarts, last error, jobs per worker) with the values the cluster
# has, and follows changes.
#
# Skipped only when the exporter is missing outside CI; under CI (CI=true)
# a missing exporter fails (test/install_deps.sh installs it).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Spec;
use HTTP::Tiny;
use IPC::Run;

my $EXPORTER = '/usr/bin/prometheus-postgres-exporter';
my $QUERIES = File::Spec->rel2abs('monitoring/postgres_exporter.yaml');

if (!-x $EXPORTER)
{
	if (($ENV{CI} // '') eq 'true')
	{
		fail("$EXPORTER is missing (install prometheus-postgres-exporter: test/install_deps.sh)");
		done_testing();
		exit 1;
	}
	plan skip_all => "$EXPORTER is not installed (Debian package prometheus-postgres-exporter)";
}
ok(-r $QUERIES, "queries file $QUERIES exists");

# 8 slots: the logical replication launcher, jobq's launcher, 4 workers and
# 2 candidates; a fifth worker cannot start (to see a component down).
my $node = jobq_node('exporter', workers => 4, conf => "max_worker_processes = 8\n");
jobq_install($node);
jobq_handlers($node);

# Some history: 5 completed jobs, 1 discarded, 3 waiting in a paused queue,
# a worker restarted.
$node->safe_psql('postgres', q{SELECT jobq.create_queue('held'); SELECT jobq.pause('held');});
my $last = $node->safe_psql('postgres',
	q{SELECT max(jobq.enqueue('effect', jsonb_build_object('n', g))) FROM generate_series(1, 5) g});
is(wait_job($node, $last), 'completed', '5 jobs completed');
my $bad = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 0, "fail": 9}', max_attempts => 1)});
is(wait_job($node, $bad), 'discarded', '1 job discarded');
$node->safe_psql('postgres', q{
	SELECT jobq.enqueue('effect', jsonb_build_object('n', g), queue => 'held') FROM generate_series(10, 12) g});
my $victim = component_pid($node, 'worker 1');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)");
ok( $node->poll_query_until(
		'postgres', qq{
	SELECT restarts = 1 AND pid <> $victim AND state = 'idle'
	  FROM jobq.components WHERE database = current_database() AND component = 'worker 1'}),
	'worker 1 was terminated and restarted');
ok(wait_ready($node), 'ready');

# The exporter, on the node's unix socket.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $user = getpwuid($<);
my $exporter_log = "$PostgreSQL::Test::Utils::log_path/060_exporter.log";
my $exporter;
{
	local $ENV{DATA_SOURCE_NAME} = sprintf('host=%s port=%d user=%s dbname=postgres sslmode=disable',
		$node->host, $node->port, $user);
	$exporter = IPC::Run::start(
		[ $EXPORTER, "--extend.query-path=$QUERIES", "--web.listen-address=127.0.0.1:$port" ],
		'<', \undef, '>', $exporter_log, '2>&1');
}
END { $exporter->kill_kill if $exporter && $exporter->pumpable; }
note("exporter on 127.0.0.1:$port, log in $exporter_log");

my $http = HTTP::Tiny->new(timeout => 10);
my $body;

# Scrapes /metrics; returns the parsed samples.
sub scrape
{
	my $res;
	JobqTest::wait_until(sub {
		$res = $http->get("http://127.0.0.1:$port/metrics");
		$res->{success} && $res->{content} =~ /^pg_up 1$/m;
	}, 60);
	die "no metrics from the exporter: $res->{status} $res->{reason}\n" . slurp_file($exporter_log)
	  unless $res->{success};
	$body = $res->{content};
	my @samples;
	for my $line (split /\n/, $body)
	{
		next if $line =~ /^#/ || $line !~ /\S/;
		$line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/ or next;
		my ($name, $labels, $value) = ($1, $2 // '', $3);
		my %l;
		$l{$1} = $2 while $labels =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
		push @samples, { name => $name, labels => \%l, value => $value };
	}
	return \@samples;
}

# Values of the samples named $name whose labels include %want.
sub values_of
{
	my ($samples, $name, %want) = @_;
	my @v;
	for my $s (@$samples)
	{
		next unless $s->{name} eq $name;
		next if grep { ($s->{labels}{$_} // "\0") ne $want{$_} } keys %want;
		push @v, $s->{value};
	}
	return @v;
}

sub value_of
{
	my @v = values_of(@_);
	return @v == 1 ? $v[0] : 'found ' . scalar(@v) . ' samples';
}

my $m = scrape();
is(value_of($m, 'pg_up'), '1', 'the exporter is connected (pg_up 1)');
is(value_of($m, 'pg_exporter_last_scrape_error'), '0', 'the scrape ran every query without error');

for my $metric (
	[ jobq_queue_depth => 'gauge' ], [ jobq_queue_lag_seconds => 'gauge' ],
	[ jobq_queue_completed_last_minute => 'gauge' ], [ jobq_queue_failed_last_minute => 'gauge' ],
	[ jobq_queue_paused => 'gauge' ], [ jobq_component_up => 'gauge' ],
	[ jobq_component_restarts_total => 'counter' ],
	[ jobq_component_last_error_timestamp_seconds => 'gauge' ],
	[ jobq_worker_jobs_done_total => 'counter' ], [ jobq_worker_jobs_failed_total => 'counter' ])
{
	like($body, qr/^# TYPE $metric->[0] $metric->[1]$/m, "$metric->[0] is exported as a $metric->[1]");
}

# Queues.
my %q = (database => 'postgres');
is(value_of($m, 'jobq_queue_depth', %q, queue => 'held', state => 'available'), '3',
	'depth of the paused queue, state available: 3');
is(value_of($m, 'jobq_queue_depth', %q, queue => 'default', state => 'completed'), '5',
	'depth of default, state completed: 5');
is(value_of($m, 'jobq_queue_depth', %q, queue => 'default', state => 'discarded'), '1',
	'depth of default, state discarded: 1');
is(value_of($m, 'jobq_queue_depth', %q, queue => 'default', state => 'available'), '0',
	'depth of default, state available: 0');
is(scalar(values_of($m, 'jobq_queue_depth', %q)), 14, 'depth: 7 states for each of the 2 queues');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'held'), '1', 'held is paused');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'default'), '0', 'default is not');
my $lag = value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'held');
my $db_lag = $node->safe_psql('postgres',
	q{SELECT extract(epoch FROM lag) FROM jobq.queue_stats WHERE queue = 'held'});
ok($lag > 0 && $lag <= $db_lag, "lag of held: $lag s (> 0, not more than the view says a moment later: $db_lag)");
is(value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'default'), '0', 'lag of default: 0');
is(value_of($m, 'jobq_queue_completed_last_minute', %q, queue => 'default'), '5',
	'completed in the last minute: 5');
is(value_of($m, 'jobq_queue_failed_last_minute', %q, queue => 'default'), '1', 'failed in the last minute: 1');

# Components.
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM jobq.components');
is(scalar(values_of($m, 'jobq_component_up')), $rows, "one jobq_component_up per component ($rows)");
is(value_of($m, 'jobq_component_up', component => 'launcher', database => '', state => 'running'), '1',
	'launcher up, running');
is(value_of($m, 'jobq_component_up', component => 'leader', database => 'postgres', state => 'running'), '1',
	'leader up, running');
for my $service (qw(scheduler rescuer cleaner periodic))
{
	is(value_of($m, 'jobq_component_up', component => $service, state => 'running'), '1', "$service up, running");
}
for my $n (0 .. 3)
{
	my ($state) = grep { $_->{name} eq 'jobq_component_up' && $_->{labels}{component} eq "worker $n" } @$m;
	is(($state->{labels}{state} // '') =~ /^(idle|busy)$/ ? $state->{value} : "state $state->{labels}{state}",
		'1', "worker $n up (state $state->{labels}{state})");
}
is(value_of($m, 'jobq_component_restarts_total', component => 'worker 1'), '1', 'worker 1: 1 restart');
is(join(',', grep { $_ ne '0' } values_of($m, 'jobq_component_restarts_total')), '1',
	'no other component restarted');
my $err_at = value_of($m, 'jobq_component_last_error_timestamp_seconds', component => 'worker 1');
my $db_err_at = $node->safe_psql('postgres', q{
	SELECT extract(epoch FROM last_error_at) FROM jobq.components WHERE component = 'worker 1'});
ok(abs($err_at - $db_err_at) < 0.001, "worker 1: last error at $err_at, as jobq.components says");
is(value_of($m, 'jobq_component_last_error_timestamp_seconds', component => 'worker 0'), '0',
	'worker 0: no error (0)');
my ($done, $failed) = (0, 0);
$done += $_ for values_of($m, 'jobq_worker_jobs_done_total', database => 'postgres');
$failed += $_ for values_of($m, 'jobq_worker_jobs_failed_total', database => 'postgres');
is("$done/$failed", '5/1', 'jobs done/failed summed over the workers: 5/1');

# Changes show at the next scrape: the paused queue resumed and drained; a
# fifth worker wanted that cannot start is down.
$node->safe_psql('postgres', q{SELECT jobq.resume('held')});
ok( $node->poll_query_until('postgres', q{SELECT count(*) = 8 FROM jobq.jobs WHERE state = 'completed'}),
	'the held jobs completed after resume');
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER SYSTEM SET jobq.workers = 5; SELECT pg_reload_conf();');
$node->wait_for_log(qr/jobq could not start worker 4 for database "postgres": no free background worker slot/,
	$offset);
$m = scrape();
is(value_of($m, 'jobq_queue_depth', %q, queue => 'held', state => 'available'), '0', 'held: none available now');
is(value_of($m, 'jobq_queue_depth', %q, queue => 'held', state => 'completed'), '3', 'held: 3 completed');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'held'), '0', 'held: no longer paused');
is(value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'held'), '0', 'held: no lag');
is(value_of($m, 'jobq_component_up', component => 'worker 4', state => 'backoff'), '0',
	'worker 4, which cannot start, is down (up 0, state backoff)');
cmp_ok(value_of($m, 'jobq_component_last_error_timestamp_seconds', component => 'worker 4'), '>', 0,
	'worker 4 has a last error');
is(value_of($m, 'pg_exporter_last_scrape_error'), '0', 'still no scrape error');

$exporter->signal('TERM');
$exporter->finish;
unlike(slurp_file($exporter_log), qr/Error running query|level=error/,
	'the exporter logged no query error');
note("exporter log:\n" . slurp_file($exporter_log));
undef $exporter;

$node->stop;
done_testing();
