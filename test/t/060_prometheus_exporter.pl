# monitoring/postgres_exporter.yaml works with the real Prometheus exporter
# (Debian package prometheus-postgres-exporter): the exporter runs the
# queries against a test cluster without errors and /metrics shows jobq's
# queues (live depth per state, lag, paused), jobs per queue and kind
# (completed and failed counters, a duration histogram) and components (up,
# state, restarts, last error, jobs per worker) with the values the cluster
# has, and follows changes; every metric the Grafana dashboard
# (monitoring/grafana-dashboard.json) queries is one the exporter emits.
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
use JSON::PP ();

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
	[ jobq_queue_paused => 'gauge' ], [ jobq_jobs_completed_total => 'counter' ],
	[ jobq_jobs_failed_total => 'counter' ], [ jobq_job_duration_seconds => 'histogram' ],
	[ jobq_component_up => 'gauge' ], [ jobq_component_state_current => 'gauge' ],
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
is(value_of($m, 'jobq_queue_depth', %q, queue => 'default', state => 'available'), '0',
	'depth of default, state available: 0');
is(join(',', sort map { $_->{labels}{state} } grep { $_->{name} eq 'jobq_queue_depth' && $_->{labels}{queue} eq 'default' } @$m),
	'available,retryable,running,scheduled', 'depth: the live states only');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'held'), '1', 'held is paused');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'default'), '0', 'default is not');
is(value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'held'), '0',
	'lag of the paused queue: 0 (it does not grow while paused)');
cmp_ok($node->safe_psql('postgres', q{SELECT extract(epoch FROM lag) FROM jobq.queue_stats WHERE queue = 'held'}),
	'>', 0, '... though jobq.queue_stats shows its oldest job waiting');
is(value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'default'), '0', 'lag of default: 0');

# Jobs, per queue and kind.
my %k = (%q, queue => 'default', kind => 'effect');
is(value_of($m, 'jobq_jobs_completed_total', %k), '5', 'completed attempts of kind effect: 5');
is(value_of($m, 'jobq_jobs_failed_total', %k), '1', 'failed attempts of kind effect: 1');
is(value_of($m, 'jobq_job_duration_seconds_count', %k), '6', 'the duration histogram counts the 6 attempts');
is(value_of($m, 'jobq_job_duration_seconds_bucket', %k, le => '+Inf'), '6', '... its +Inf bucket too');
my @buckets = map { $_->{value} }
  sort { ($a->{labels}{le} eq '+Inf' ? 1e99 : $a->{labels}{le}) <=> ($b->{labels}{le} eq '+Inf' ? 1e99 : $b->{labels}{le}) }
  grep { $_->{name} eq 'jobq_job_duration_seconds_bucket' && $_->{labels}{kind} eq 'effect' } @$m;
is(join(',', grep { $buckets[$_] < $buckets[ $_ - 1 ] } 1 .. $#buckets), '', 'the buckets are cumulative');
cmp_ok(value_of($m, 'jobq_job_duration_seconds_sum', %k), '>', 0, 'and the durations add up to more than 0 s');

# Components.
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM jobq.components');
is(scalar(values_of($m, 'jobq_component_up')), $rows, "one jobq_component_up per component ($rows)");
is(scalar(grep { exists $_->{labels}{state} } grep { $_->{name} eq 'jobq_component_up' } @$m), 0,
	'jobq_component_up has no state label');
is(scalar(grep { $_ eq '1' } values_of($m, 'jobq_component_state_current')), $rows,
	'jobq_component_state_current: one state is current per component');
is(value_of($m, 'jobq_component_up', component => 'launcher', database => ''), '1', 'launcher up');
is(value_of($m, 'jobq_component_state_current', component => 'launcher', state => 'running'), '1',
	'... running');
is(value_of($m, 'jobq_component_up', component => 'leader', database => 'postgres'), '1', 'leader up');
for my $service (qw(scheduler rescuer cleaner periodic))
{
	is(value_of($m, 'jobq_component_state_current', component => $service, state => 'running'), '1',
		"$service running");
}
for my $n (0 .. 3)
{
	my ($state) = map { $_->{labels}{state} }
	  grep { $_->{name} eq 'jobq_component_state_current' && $_->{labels}{component} eq "worker $n" && $_->{value} eq '1' }
	  @$m;
	is(value_of($m, 'jobq_component_up', component => "worker $n") . " $state", '1 ' . ($state =~ /^(idle|busy)$/ ? $state : 'idle or busy'),
		"worker $n up (state $state)");
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

# Changes show at the next scrape: the paused queue resumed and drained; of
# two more workers wanted, one takes the standby candidate's slot (workers
# rank before standby candidates), the other cannot start and is down.
$node->safe_psql('postgres', q{SELECT jobq.resume('held')});
ok( $node->poll_query_until('postgres', q{SELECT count(*) = 8 FROM jobq.jobs WHERE state = 'completed'}),
	'the held jobs completed after resume');
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER SYSTEM SET jobq.workers = 6; SELECT pg_reload_conf();');
$node->wait_for_log(qr/jobq could not start worker 5 for database "postgres": no free background worker slot/,
	$offset);
ok( $node->poll_query_until('postgres', q{
	SELECT state IN ('idle', 'busy') FROM jobq.components
	 WHERE database = current_database() AND component = 'worker 4'}),
	'worker 4 runs, in the slot of the standby candidate');
$m = scrape();
is(value_of($m, 'jobq_queue_depth', %q, queue => 'held', state => 'available'), '0', 'held: none available now');
is(value_of($m, 'jobq_jobs_completed_total', %q, queue => 'held', kind => 'effect'), '3', 'held: 3 completed');
is(value_of($m, 'jobq_queue_paused', %q, queue => 'held'), '0', 'held: no longer paused');
is(value_of($m, 'jobq_queue_lag_seconds', %q, queue => 'held'), '0', 'held: no lag');
is( value_of($m, 'jobq_component_up', component => 'worker 5') . ' '
	  . value_of($m, 'jobq_component_state_current', component => 'worker 5', state => 'backoff'),
	'0 1', 'worker 5, which cannot start, is down (up 0, state backoff)');
cmp_ok(value_of($m, 'jobq_component_last_error_timestamp_seconds', component => 'worker 5'), '>', 0,
	'worker 5 has a last error');

# The Grafana dashboard queries only metrics the exporter emits.
my $dashboard = JSON::PP->new->decode(slurp_file('monitoring/grafana-dashboard.json'));
my %emitted = map { $_->{name} => 1 } @$m;
my %queried;
for my $panel (@{ $dashboard->{panels} })
{
	$queried{$_}++ for map { $_->{expr} =~ /\b(jobq_[a-z_]+)/g } @{ $panel->{targets} // [] };
}
cmp_ok(scalar(keys %queried), '>=', 10, 'the dashboard queries ' . scalar(keys %queried) . ' jobq metrics');
is(join(',', grep { !$emitted{$_} } sort keys %queried), '', 'every one of them is emitted by the exporter');
is(value_of($m, 'pg_exporter_last_scrape_error'), '0', 'still no scrape error');

$exporter->signal('TERM');
$exporter->finish;
unlike(slurp_file($exporter_log), qr/Error running query|level=error/,
	'the exporter logged no query error');
note("exporter log:\n" . slurp_file($exporter_log));
undef $exporter;

$node->stop;
done_testing();
