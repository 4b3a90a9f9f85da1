# A leader whose services cannot start retries with backoff (1, 2, 4, 8 s),
# then resigns; once the fault is cleared another candidate takes over with
# every service running.  Throughout, a sampler compares the holder of the
# leader lock (pg_locks) with jobq.components: nobody holds the lock with
# its services down, except visibly inside the bounded start-retry cycle.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use Time::Local qw(timegm);

my $node = jobq_node('startfail',
	conf => "log_timezone = 'UTC'\njobq.leader_cooldown = '10s'\n");
jobq_install($node);
jobq_handlers($node);

my $LOCK = q{locktype = 'advisory' AND classid = 1785684593
	AND objsubid = 2 AND granted
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())};

# The sampler: every ~20 ms, components (before), lock holders, components
# (after), each committed as one row.  Reading the components both before
# and after the lock means a transition caught between two reads (a
# takeover, an exit) is not mistaken for a held lock with services down: a
# sample is judged bad only if both readings are bad for the lock holder.
$node->safe_psql('postgres', qq{
CREATE SCHEMA t;
CREATE TABLE t.samples (at timestamptz, before jsonb, holders int[], after jsonb);
CREATE TABLE t.stop (stop boolean);
CREATE FUNCTION t.components() RETURNS jsonb LANGUAGE sql AS \$\$
	SELECT jsonb_object_agg(component, jsonb_build_object('pid', pid, 'state', state))
	  FROM jobq.components WHERE database = current_database()
\$\$;
CREATE PROCEDURE t.sample() LANGUAGE plpgsql AS \$\$
DECLARE
	b jsonb;
	h int[];
	a jsonb;
BEGIN
	WHILE NOT EXISTS (SELECT FROM t.stop) LOOP
		b := t.components();
		h := (SELECT array_agg(pid) FROM pg_locks WHERE $LOCK);
		a := t.components();
		INSERT INTO t.samples VALUES (clock_timestamp(), b, h, a);
		COMMIT;
		PERFORM pg_sleep(0.02);
	END LOOP;
END \$\$;
});

# Why a reading of the components is wrong for lock holder $pid, or ''.
# Allowed: $pid is shown as leader and either all four services run under
# it, or it is visibly (re)starting them (a service starting or in backoff).
sub judge
{
	my ($c, $pid) = @_;
	my @services = qw(scheduler rescuer cleaner periodic);
	my $leader = $c->{leader};
	return "holder $pid is not shown as leader"
	  unless $leader && defined $leader->{pid} && $leader->{pid} == $pid;
	my @states = map { $c->{$_}{state} } @services;
	return ''
	  if !grep { $c->{$_}{state} ne 'running' || ($c->{$_}{pid} // 0) != $pid } @services;
	return '' if grep { $_ eq 'starting' || $_ eq 'backoff' } @states;
	return 'holder ' . $pid . ' has services ' . join(',', map { "$_=$c->{$_}{state}" } @services);
}

# A reading without a lock holder must not show any service running.
sub judge_no_holder
{
	my ($c) = @_;
	my @running = grep { $c->{$_}{state} eq 'running' } qw(scheduler rescuer cleaner periodic);
	return @running ? "no lock holder but services running: @running" : '';
}

my $sampler = $node->background_psql('postgres', timeout => 600);
$sampler->query_until(qr/sampling/, "\\echo sampling\nCALL t.sample();\n");

my $leader = $node->safe_psql('postgres',
	q{SELECT pid FROM jobq.components WHERE database = current_database() AND component = 'leader'});
like($leader, qr/^\d+$/, "a leader runs (pid $leader)");

# Inject the fault, and make sure the postmaster has the new setting before
# the election (new processes inherit it; existing ones get SIGHUP next).
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{
ALTER SYSTEM SET jobq.debug_fail_service = 'rescuer';
SELECT pg_reload_conf();
});
$node->wait_for_log(qr/parameter "jobq.debug_fail_service" changed to "rescuer"/, $offset);

my $t_fault = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($leader)");

# The other candidate takes the lock, fails to start its rescuer four times
# with growing backoff, gives up and resigns.
$node->wait_for_log(qr/jobq leader of database "postgres" resigned: its services could not start/, $offset);
my $t_resigned = time;
note(sprintf('resignation seen %.1f s after the fault was injected', $t_resigned - $t_fault));

# Clear the fault at once; another candidate must take over.
my $offset2 = -s $node->logfile;
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET jobq.debug_fail_service;
SELECT pg_reload_conf();
});

my @lines;
for my $line (split /\n/, slurp_file($node->logfile, $offset))
{
	next unless $line =~ /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3}) UTC \[(\d+)\] [^:]*?(?:LOG|WARNING|ERROR|FATAL):\s+(.*)$/;
	push @lines, { at => timegm($6, $5, $4, $3, $2 - 1, $1) + $7 / 1000, pid => $8, text => $9 };
}
my ($resign) = grep { $_->{text} =~ /resigned: its services could not start; standing aside for 10000 ms/ } @lines;
ok($resign, 'the failing leader resigned, standing aside for jobq.leader_cooldown');
my $failing = $resign->{pid};
isnt($failing, $leader, "the resigning leader ($failing) is the candidate that took over");

my @mine = grep { $_->{pid} == $failing } @lines;
my @attempts = grep { $_->{text} =~ /could not start its rescuer \(attempt \d of 5\)/ } @mine;
is(scalar(@attempts), 4, 'four failed attempts were logged with a retry');
for my $i (0 .. 3)
{
	my $n = $i + 1;
	my $delay = 1000 * 2**$i;
	like($attempts[$i]{text} // '',
		qr/^jobq leader of database "postgres" could not start its rescuer \(attempt $n of 5\); retrying in $delay ms$/,
		"attempt $n: retrying in $delay ms");
}
for my $i (1 .. 3)
{
	my $gap = ($attempts[$i]{at} - $attempts[ $i - 1 ]{at}) * 1000;
	my $delay = 1000 * 2**($i - 1);
	note(sprintf('attempt %d followed attempt %d after %.0f ms (backoff %d ms)', $i + 1, $i, $gap, $delay));
	cmp_ok($gap, '>=', $delay - 1, "attempt @{[$i + 1]} came no sooner than its backoff");
}
my ($gave_up) = grep { $_->{text} =~ /could not start its rescuer after 5 attempts/ } @mine;
ok($gave_up, 'the fifth attempt failed and the leader gave up');
cmp_ok(($gave_up->{at} - $attempts[3]{at}) * 1000, '>=', 8000 - 1, 'after the 8000 ms backoff')
  if $gave_up;
cmp_ok($resign->{at}, '>=', $gave_up->{at}, 'then resigned') if $gave_up;
my ($failed_start) = grep { $_->{text} =~ /could not start: failure injected by jobq.debug_fail_service/ } @mine;
ok($failed_start, 'the injected start failure is in the log');

# Another candidate takes over, with all services running.
my $new;
ok( JobqTest::wait_until(
		sub {
			$new = $node->safe_psql('postgres', qq{
			SELECT c.pid FROM jobq.components c
			 WHERE c.database = current_database() AND c.component = 'leader'
			   AND EXISTS (SELECT FROM pg_locks WHERE $LOCK AND pid = c.pid)
			   AND (SELECT count(*) FROM jobq.components s
					 WHERE s.database = current_database()
					   AND s.component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')
					   AND s.state = 'running' AND s.pid = c.pid) = 4});
			return $new ne '';
		}),
	'a leader holds the lock with all four services running');
isnt($new, $failing, "the new leader ($new) is another candidate than the one that resigned");
my $t_recovered = time;
ok(wait_ready($node), 'jobq is ready');
diag(sprintf('FIGURE start-failure scenario: fault injected -> resigned after %.1f s; '
	  . 'fault cleared -> healthy leader after %.1f s',
	$t_resigned - $t_fault, $t_recovered - $t_resigned));

# Jobs work again, including a scheduled one (scheduler) and a rescue.
my $job = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 1}', run_at => now() + interval '300 ms')});
is(wait_job($node, $job), 'completed', 'a scheduled job runs under the new leader');

# Stop sampling: the sampler saw the whole story.
$node->safe_psql('postgres', 'INSERT INTO t.stop VALUES (true)');
$sampler->quit;

my @samples = map {
	my ($at, $b, $h, $a) = split /\|/, $_, 4;
	{ at => $at, before => $b, holders => $h, after => $a }
} split /\n/, $node->safe_psql('postgres', q{
	SELECT extract(epoch FROM at), before, coalesce(array_to_string(holders, ','), ''), after
	  FROM t.samples ORDER BY at});
cmp_ok(scalar(@samples), '>', 100, scalar(@samples) . ' samples taken');

require JSON::PP;
my $json = JSON::PP->new;
my (@bad, %seen, $strict_stopped);
my %retrying_since;    # holder pid -> first sample in the start-retry cycle
my $longest_retry = 0;
# The strict reading: how long did one holder keep the lock while one of its
# services was shown stopped (or failed), in both readings of consecutive
# samples?  A takeover passes through that for about a millisecond while
# the services start one by one, hence a tolerance.
my ($down_pid, $down_since, $longest_down, $longest_down_at) = (0, 0, 0, '');
for my $s (@samples)
{
	my $b = $json->decode($s->{before});
	my $a = $json->decode($s->{after});
	my @holders = grep { $_ ne '' } split /,/, $s->{holders};
	if (@holders > 1)
	{
		push @bad, "$s->{at}: several holders @holders";
		next;
	}
	if (!@holders)
	{
		my ($wb, $wa) = (judge_no_holder($b), judge_no_holder($a));
		push @bad, "$s->{at}: $wb / $wa" if $wb && $wa;
		next;
	}
	my $pid = $holders[0];
	my ($wb, $wa) = (judge($b, $pid), judge($a, $pid));
	push @bad, "$s->{at}: $wb / $wa" if $wb && $wa;
	my %states = map { $_ => $a->{$_}{state} } qw(scheduler rescuer cleaner periodic);
	$seen{backoff_by_failing} = 1 if $pid == $failing && $states{rescuer} eq 'backoff';
	$seen{running_by_new} = 1
	  if $pid == $new && !grep { $_ ne 'running' } values %states;
	$strict_stopped++ if grep { $_ eq 'stopped' } values %states;
	my $down = sub {
		my ($c) = @_;
		return grep { $c->{$_}{state} eq 'stopped' || $c->{$_}{state} eq 'failed' }
		  qw(scheduler rescuer cleaner periodic);
	};
	if ($down->($b) && $down->($a))
	{
		($down_pid, $down_since) = ($pid, $s->{at}) if $down_pid != $pid;
		if ($s->{at} - $down_since > $longest_down)
		{
			$longest_down = $s->{at} - $down_since;
			$longest_down_at = sprintf('pid %d from %.3f: %s', $pid, $down_since,
				join(', ', map { "$_=$a->{$_}{state}" } qw(scheduler rescuer cleaner periodic)));
		}
	}
	else
	{
		$down_pid = 0;
	}
	if (grep { $_ eq 'starting' || $_ eq 'backoff' } values %states)
	{
		$retrying_since{$pid} //= $s->{at};
		$longest_retry = $s->{at} - $retrying_since{$pid}
		  if $s->{at} - $retrying_since{$pid} > $longest_retry;
	}
	# within its cool-down, the resigned leader never holds the lock again
	push @bad, "$s->{at}: resigned leader $pid holds the lock during its cool-down"
	  if $pid == $failing && $s->{at} > $resign->{at} && $s->{at} < $resign->{at} + 10;
}
is(scalar(@bad), 0, 'no sample shows the lock held with services down (outside start retries)')
  or diag(join("\n", @bad[ 0 .. ($#bad < 20 ? $#bad : 20) ]));
ok($seen{backoff_by_failing}, 'the sampler saw the failing leader hold the lock with its rescuer in backoff');
ok($seen{running_by_new}, 'the sampler saw the new leader hold the lock with all services running');
cmp_ok($longest_retry, '<', 20,
	sprintf('no holder stayed in the start-retry cycle longer than 1+2+4+8 s plus slack (longest %.1f s)',
		$longest_retry));
note(sprintf('%d of %d samples show the lock held while some service is "stopped"',
	$strict_stopped // 0, scalar(@samples)));
# The requirement, read strictly: at no moment does a process hold the
# leader lock with services stopped.  While a service backs off between
# start attempts the others keep running and it shows "backoff".
cmp_ok($longest_down, '<', 0.25,
	'no process holds the leader lock with a service stopped (for more than 250 ms)')
  or diag(sprintf('held the lock with services down for %.1f s: %s', $longest_down, $longest_down_at));

$node->stop;
done_testing();
