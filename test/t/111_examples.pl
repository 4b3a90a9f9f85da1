# The example external workers of examples/ run as written: Node
# (node-postgres), Python (psycopg 3) and bash + psql (its HTTP call with
# curl, then with python3), each against a real server and the HTTP stub
# examples/stub_server.py, the database set up by examples/setup.sql.
#
# For each: of the jobs it claims, the ones the stub answers 200 are
# completed with exactly one example_sent row; one answered 503 and one
# whose connection the stub drops are retried and completed at attempt 2
# with the failure in their errors (one row too); one answered 400 is
# discarded with the worker's give_up reason.  The stub saw each job's id
# as its idempotency key, a second time only after a failure.  SIGTERM ends
# a worker waiting in jobq.claim (its wait much longer than the test
# allows) with status 0 at once, and one working a job after that job,
# which completes, claiming nothing more.
#
# Skipped only when a runtime is missing outside CI; under CI (CI=true) a
# missing one fails (test/install_deps.sh installs them).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use Cwd ();
use HTTP::Tiny;
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $PYTHON = '/usr/bin/python3';    # Debian's, with python3-psycopg
my $NODE_MODULES = Cwd::abs_path('examples/node') . '/node_modules';

# The stub is on 127.0.0.1: no proxy for this test's HTTP::Tiny, nor for
# the workers' curl and urllib.
delete @ENV{qw(http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY)};

my @examples = (
	{
		name => 'node',
		worker => 'node',
		cmd => [ 'node', 'examples/node/worker.js' ],
		available => system("node -e \"require('$NODE_MODULES/pg')\" 2>/dev/null") == 0,
	},
	{
		name => 'python',
		worker => 'python',
		cmd => [ $PYTHON, 'examples/python/worker.py' ],
		available => system("$PYTHON -c 'import psycopg' 2>/dev/null") == 0,
	},
	{
		name => 'psql+curl',
		worker => 'psql',
		cmd => [ 'bash', 'examples/psql/worker.sh' ],
		env => { JOBQ_EXAMPLE_HTTP_CLIENT => 'curl' },
		available => system('command -v curl >/dev/null') == 0,
	},
	{
		name => 'psql+python3',
		worker => 'psql',
		cmd => [ 'bash', 'examples/psql/worker.sh' ],
		env => { JOBQ_EXAMPLE_HTTP_CLIENT => 'python3' },
		available => system('command -v python3 >/dev/null') == 0,
	});

my $node = jobq_node('examples', workers => 1);
jobq_install($node);
$node->safe_psql('postgres', slurp_file('examples/setup.sql'));
# a kind whose lease a held HTTP call outlasts (the workers claim every
# external kind they may work)
$node->safe_psql('postgres',
	"SELECT jobq.register_external('send_email_short', lease => '2 s', backoff_max => '100 ms')");
my $user = $node->safe_psql('postgres', 'SELECT current_user');

# The stub, on a free port it writes to a file.
my $dir = PostgreSQL::Test::Utils::tempdir();
my $stub = IPC::Run::start(
	[ $PYTHON, 'examples/stub_server.py', '--port', '0', '--port-file', "$dir/stub.port", '--slow', '600' ],
	'<', \undef, '>', "$dir/stub.log", '2>&1');
ok(wait_until(sub { -s "$dir/stub.port" }), 'the stub server listens');
my $stub_base = 'http://127.0.0.1:' . (slurp_file("$dir/stub.port") =~ s/\s+//gr);

sub stub_get
{
	my ($path) = @_;
	my $res = HTTP::Tiny->new(timeout => 10)->get("$stub_base$path");
	die "GET $path: $res->{status} $res->{content}" unless $res->{success};
	return JSON::PP::decode_json($res->{content});
}

# What the stub answered to the requests with this idempotency key, in
# order (pending: still being answered).
sub stub_statuses
{
	my ($key) = @_;
	return join ',', map { $_->{status} // 'pending' }
	  grep { ($_->{key} // '') eq $key } @{ stub_get('/log') };
}

# Enqueues a send_email job (or of another kind); returns its id.
sub enqueue
{
	my ($to, $mode, $kind) = @_;
	$kind //= 'send_email';
	$to = defined $to ? "'$to'" : 'NULL';
	return $node->safe_psql('postgres',
		"SELECT jobq.enqueue('$kind', jsonb_build_object('to', $to, 'mode', '$mode'))");
}

# Starts an example worker against the node and the stub; its stdout and
# stderr go to $$out (pump_nb the harness to read them).
sub start_worker
{
	my ($ex, $out) = @_;
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGDATABASE} = 'postgres';
	local $ENV{PGUSER} = $user;
	local $ENV{PGAPPNAME} = "example-$ex->{name}";
	local $ENV{JOBQ_EXAMPLE_STUB_URL} = "$stub_base/send";
	local $ENV{JOBQ_EXAMPLE_RETRY_IN} = '100 ms';
	# far longer than a SIGTERM may take to end a waiting worker
	local $ENV{JOBQ_EXAMPLE_WAIT} = '10 min';
	local @ENV{ keys %{ $ex->{env} // {} } } = values %{ $ex->{env} // {} };
	return IPC::Run::start($ex->{cmd}, '<', \undef, '>&', $out,
		IPC::Run::timeout($JobqTest::TIMEOUT));
}

# Whether the worker (its application_name) is waiting in jobq.claim.
sub claim_waiting
{
	my ($ex) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE application_name = 'example-$ex->{name}' AND state = 'active'
		   AND query LIKE '%jobq.claim(%'}) eq 't';
}

# Waits for the worker to end; returns its exit status ($?, undef when it
# did not end before the harness's timeout) and the seconds since $t0.
sub ended
{
	my ($h, $t0) = @_;
	my $ended = eval { $h->finish; 1 };
	return ($ended ? $h->full_result(0) : undef, time - $t0);
}

# One job's state, attempt, errors and example_sent rows.
sub job_report
{
	my ($id) = @_;
	my @f = split /\t/, $node->safe_psql('postgres', qq{
		SELECT j.state, j.attempt, jsonb_array_length(j.errors),
			   coalesce(j.errors->0->>'attempt', '-'),
			   coalesce(j.errors->-1->>'given_up', '-'),
			   coalesce(j.result->>'http_status', '-'),
			   (SELECT count(*) FROM example_sent s WHERE s.job_id = j.id),
			   coalesce((SELECT string_agg(s.worker || ' ' || s.recipient || ' ' || s.attempt, ',')
						   FROM example_sent s WHERE s.job_id = j.id), '-'),
			   coalesce(j.errors->-1->>'message', '-')
		  FROM jobq.jobs j WHERE j.id = $id}, extra_params => [ '-F', "\t" ]), 9;
	my %r;
	@r{qw(state attempt errors first_error_attempt given_up http_status rows row message)} = @f;
	return \%r;
}

# What each job of the first round ends as.
my %want = (
	ok1 => { mode => 'ok', state => 'completed', attempt => 1, errors => 0, stub => '200' },
	ok2 => { mode => 'ok', state => 'completed', attempt => 1, errors => 0, stub => '200' },
	flaky => {
		mode => 'flaky', state => 'completed', attempt => 2, errors => 1, stub => '503,200',
		message => qr/^HTTP 503: .*try again later/
	},
	drop => {
		mode => 'drop', state => 'completed', attempt => 2, errors => 1, stub => 'dropped,200',
		message => qr/^POST failed: \S/
	},
	bad => {
		mode => 'bad', state => 'discarded', attempt => 1, errors => 1, stub => '400',
		message => qr/^HTTP 400: .*invalid recipient/
	},
	noto => {
		mode => 'ok', to => undef, state => 'discarded', attempt => 1, errors => 1, stub => '',
		message => qr/^args\.to must be a string$/
	});

my $t_start = time;
for my $ex (@examples)
{
	my $name = $ex->{name};
	if (!$ex->{available})
	{
		if (($ENV{CI} // '') eq 'true')
		{
			fail("$name: the example's runtime is missing (test/install_deps.sh installs it)");
		}
		else
		{
			note("skipping the $name example: its runtime is missing");
		}
		next;
	}
	my $t0 = time;
	my $failed_before = grep { !$_ } Test::More->builder->summary;
	my $out = '';

	# Round 1: the jobs are there when the worker starts.
	my %id = map {
		$_ => enqueue(exists $want{$_}{to} ? $want{$_}{to} : "$name-$_\@example.com", $want{$_}{mode})
	} sort keys %want;
	my $list = join ',', values %id;
	my $h = start_worker($ex, \$out);
	ok( wait_until(
			sub {
				$h->pump_nb if $h->pumpable;
				return 1 unless $h->pumpable;    # it died: the checks below say so
				return $node->safe_psql('postgres', qq{
					SELECT count(*) = 0 FROM jobq.jobs
					 WHERE id IN ($list) AND state NOT IN ('completed', 'discarded', 'cancelled')}) eq 't';
			}),
		"$name: the worker finished its jobs");
	ok($h->pumpable, "$name: the worker still runs");

	for my $tag (sort keys %want)
	{
		my ($w, $r) = ($want{$tag}, job_report($id{$tag}));
		my $what = "$name, $tag job";
		is($r->{state}, $w->{state}, "$what: $w->{state}");
		is($r->{attempt}, $w->{attempt}, "$what: at attempt $w->{attempt}");
		is($r->{errors}, $w->{errors}, "$what: $w->{errors} errors entries");
		if ($w->{state} eq 'completed')
		{
			is($r->{rows}, 1, "$what: exactly one example_sent row");
			is($r->{row}, "$ex->{worker} $name-$tag\@example.com $w->{attempt}",
				"$what: the row is the worker's, for the recipient, at the last attempt");
			is($r->{http_status}, 200, "$what: the result has the HTTP status");
		}
		else
		{
			is($r->{rows}, 0, "$what: no example_sent row");
			is($r->{given_up}, 'true', "$what: given up");
		}
		if ($w->{errors})
		{
			is($r->{first_error_attempt}, 1, "$what: the error is attempt 1's");
			like($r->{message}, $w->{message}, "$what: the worker's error message");
		}
		# at-least-once: a key sent twice only after a failure
		is(stub_statuses($id{$tag}), $w->{stub}, "$what: the stub's answers to its idempotency key");
	}
	is($node->safe_psql('postgres', 'SELECT count(*) FROM jobq.leases'), '0', "$name: no job held");

	# SIGTERM while waiting for a job: the claim is cancelled, status 0 at once.
	ok(wait_until(sub { $h->pump_nb if $h->pumpable; claim_waiting($ex) }),
		"$name: the worker waits in jobq.claim");
	my $t_term = time;
	$h->signal('TERM');
	my ($status, $secs) = ended($h, $t_term);
	my $r;
	is($status, 0, "$name: SIGTERM in a claim's wait: status 0");
	cmp_ok($secs, '<', 10, "$name: ... in a few seconds (the wait is 10 min)");

	# A lease lost during the HTTP call (the stub answers a slow request
	# when told to, here once jobq has taken the job back): the worker's
	# completion rolls back with its example_sent row; the next attempt
	# posts again (the stub answers the key as before) and completes.
	my $out2 = '';
	$h = start_worker($ex, \$out2);
	ok(wait_until(sub { $h->pump_nb if $h->pumpable; claim_waiting($ex) }),
		"$name: the second worker waits in jobq.claim");
	my $lost = enqueue("$name-lost\@example.com", 'slow', 'send_email_short');
	ok(wait_until(sub { $h->pump_nb if $h->pumpable; stub_statuses($lost) eq 'pending' }),
		"$name: the worker posts the job whose lease will end");
	ok( wait_until(
			sub {
				$node->safe_psql('postgres', "SELECT state <> 'running' FROM jobq.jobs WHERE id = $lost")
				  eq 't';
			}),
		"$name: ... its lease ended, jobq took it back");
	stub_get("/release?key=$lost");
	ok( wait_until(
			sub {
				$h->pump_nb if $h->pumpable;
				$node->safe_psql('postgres', "SELECT state FROM jobq.jobs WHERE id = $lost") eq 'completed';
			}),
		"$name: ... completed at the next attempt");
	$r = job_report($lost);
	is("$r->{attempt} $r->{rows}", '2 1', "$name: ... at attempt 2, exactly one example_sent row");
	is($r->{row}, "$ex->{worker} $name-lost\@example.com 2", "$name: ... attempt 2's");
	is($node->safe_psql('postgres', "SELECT errors->0->>'lost' FROM jobq.jobs WHERE id = $lost"),
		'true', "$name: ... attempt 1 recorded as lost");
	is(stub_statuses($lost), '200,200', "$name: ... posted twice with its idempotency key");
	ok( wait_until(
			sub {
				$h->pump_nb if $h->pumpable;
				$out2 =~ /job $lost \(attempt 1\/\d+\): sent, but the lease was lost: rolled back/;
			}),
		"$name: ... the worker says it rolled back attempt 1's completion");

	# SIGTERM while working a job: the worker finishes it, then ends
	# without claiming again.
	my $slow = enqueue("$name-slow\@example.com", 'slow');
	ok(wait_until(sub { $h->pump_nb if $h->pumpable; stub_statuses($slow) eq 'pending' }),
		"$name: the worker claimed the slow job when it was enqueued and posts it");
	$t_term = time;
	$h->signal('TERM');
	my $late = enqueue("$name-late\@example.com", 'ok');
	stub_get("/release?key=$slow");
	($status, $secs) = ended($h, $t_term);
	is($status, 0, "$name: SIGTERM during a job: status 0");
	cmp_ok($secs, '<', 10, "$name: ... in a few seconds");
	$r = job_report($slow);
	is("$r->{state} $r->{attempt} $r->{rows}", 'completed 1 1',
		"$name: the job in hand was completed with its example_sent row");
	is(stub_statuses($slow), '200', "$name: ... posted once");
	is($node->safe_psql('postgres', "SELECT state FROM jobq.jobs WHERE id = $late"),
		'available', "$name: a job enqueued after the SIGTERM was not claimed");
	$node->safe_psql('postgres', "SELECT jobq.cancel($late)");

	note(sprintf('%s: %.1f s', $name, time - $t0));
	if ((grep { !$_ } Test::More->builder->summary) > $failed_before)
	{
		diag("$name worker's output:\n$out\n--- the second worker's:\n$out2");
	}
}
note(sprintf('all examples: %.1f s', time - $t_start));

$stub->signal('TERM');
$stub->finish;
$node->stop;
done_testing();
