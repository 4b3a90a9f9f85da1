# Leader failover: terminating the leader's process hands leadership to the
# other candidate within ~2 s (measured, printed), and every leader service
# keeps working under the new leader; terminating every candidate at once
# brings leadership back once the launcher has restarted them.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = jobq_node('failover',
	conf => "jobq.cleanup_interval = '200ms'\nlog_timezone = 'UTC'\n");
jobq_install($node);
jobq_handlers($node);

# The leader lock, as pg_locks shows it: advisory ('jobq' = 0x6a6f6271, the
# key of the election).
my $LOCK = q{locktype = 'advisory' AND classid = 1785684593
	AND objsubid = 2 AND granted
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())};

# Measures one failover inside the server, so the figure is not blurred by
# psql start-up: terminates the leader, then polls (5 ms) until a different
# process holds the leader lock (election) and until that process is shown
# as leader with all four services running under its pid (ready).
$node->safe_psql('postgres', qq{
CREATE SCHEMA t;
CREATE FUNCTION t.leader_ready(p int) RETURNS boolean LANGUAGE sql AS \$\$
	SELECT EXISTS (SELECT FROM pg_locks WHERE $LOCK AND pid = p)
	   AND EXISTS (SELECT FROM jobq.components
				   WHERE database = current_database() AND component = 'leader' AND pid = p)
	   AND (SELECT count(*) FROM jobq.components
			 WHERE database = current_database()
			   AND component IN ('scheduler', 'rescuer', 'cleaner', 'periodic')
			   AND state = 'running' AND pid = p) = 4
\$\$;
CREATE FUNCTION t.failover(victims int[], timeout interval,
	OUT new_pid int, OUT elected_ms float8, OUT ready_ms float8)
LANGUAGE plpgsql AS \$\$
DECLARE
	t0 timestamptz;
	holder int;
BEGIN
	t0 := clock_timestamp();
	PERFORM pg_terminate_backend(v) FROM unnest(victims) v;
	LOOP
		SELECT pid INTO holder FROM pg_locks WHERE $LOCK;
		IF holder IS NOT NULL AND holder <> ALL (victims) THEN
			IF elected_ms IS NULL THEN
				elected_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
			END IF;
			IF t.leader_ready(holder) THEN
				new_pid := holder;
				ready_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
				RETURN;
			END IF;
		END IF;
		IF clock_timestamp() > t0 + timeout THEN
			RAISE EXCEPTION 'no new leader % after terminating %', timeout, victims;
		END IF;
		PERFORM pg_sleep(0.005);
	END LOOP;
END \$\$;
});

# --- single-leader failovers, measured ----------------------------------
my @ready_ms;
my @elected_ms;
my $rounds = 5;
for my $round (1 .. $rounds)
{
	wait_both_candidates($node);
	my $old = component_pid($node, 'leader');
	like($old, qr/^\d+$/, "round $round: a leader runs (pid $old)");
	is($node->safe_psql('postgres', "SELECT t.leader_ready($old)"),
		't', "round $round: it holds the leader lock and its services run");

	my ($new, $elected, $ready) = split /\|/,
	  $node->safe_psql('postgres',
		"SELECT * FROM t.failover(ARRAY[$old], '$JobqTest::TIMEOUT s')");
	isnt($new, $old, "round $round: a different process leads now ($new)");
	note(sprintf('failover round %d: leader %d terminated; pid %d took the lock after %.1f ms, '
		  . 'services running after %.1f ms', $round, $old, $new, $elected, $ready));
	push @elected_ms, $elected;
	push @ready_ms, $ready;

	# The old leader is gone, and nothing else holds the lock.
	is( $node->safe_psql(
			'postgres', "SELECT string_agg(pid::text, ',') FROM pg_locks WHERE $LOCK"),
		$new,
		"round $round: only the new leader holds the lock");
}
my @sorted = sort { $a <=> $b } @ready_ms;
diag(sprintf('FIGURE leader failover (terminate leader -> new leader with services running), '
	  . '%d rounds: min %.1f ms, median %.1f ms, max %.1f ms; lock taken after max %.1f ms',
	$rounds, $sorted[0], $sorted[ int($rounds / 2) ], $sorted[-1],
	(sort { $a <=> $b } @elected_ms)[-1]));
# The requirement is ~2 s; assert a generous bound so a loaded machine does
# not make this flaky, the figures above are what matters.
cmp_ok($sorted[-1], '<', 5000, 'every failover took less than 5 s');
note($sorted[-1] <= 2000
	? 'all failovers met the 2 s requirement'
	: 'SOME FAILOVER EXCEEDED THE 2 s REQUIREMENT');

# --- the new leader's services all work ---------------------------------
wait_both_candidates($node);
my $leader = component_pid($node, 'leader');

# scheduler: a job scheduled in the future runs when due
my $sched = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 1}', run_at => now() + interval '1 s')});
is($node->safe_psql('postgres', "SELECT state FROM jobq.jobs WHERE id = $sched"),
	'scheduled', 'a future job waits as scheduled');
is(wait_job($node, $sched), 'completed', 'scheduler: the scheduled job ran under the new leader');

# rescuer: a job whose worker is terminated is given back and completes
my $long = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 2, "sleep": 60}')});
my $worker;
ok( JobqTest::wait_until(
		sub {
			$worker = $node->safe_psql('postgres',
				"SELECT pid FROM jobq.components WHERE database = current_database() AND job_id = $long");
			return $worker ne '';
		}),
	'the long job runs in a worker');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
ok( $node->poll_query_until(
		'postgres',
		"SELECT errors -> 0 ->> 'lost' = 'true' AND errors -> 0 ->> 'attempt' = '1' FROM jobq.jobs WHERE id = $long"),
	'rescuer: the job of the terminated worker was given back');
$node->safe_psql('postgres',
	"SELECT jobq.cancel($long)");    # its next attempt would sleep again

# periodic: a due schedule fires
$node->safe_psql('postgres', q{
SELECT jobq.schedule('fo', '* * * * *', 'effect', '{"n": 3}');
BEGIN;
UPDATE jobq.schedules SET next_fire_at = now() WHERE name = 'fo';
SELECT jobq._wake_leader_at_commit();
COMMIT;
});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 AND bool_and(s.next_fire_at > now())
		    FROM jobq.jobs j, jobq.schedules s
		   WHERE s.name = 'fo' AND j.unique_key LIKE 'jobq.schedule:fo:%'}),
	'periodic: the due schedule enqueued its job and moved on');
$node->safe_psql('postgres', q{SELECT jobq.unschedule('fo')});

# cleaner: a completed job aged past the retention is deleted
$node->safe_psql('postgres', q{
ALTER SYSTEM SET jobq.completed_retention = '1h';
SELECT pg_reload_conf();
UPDATE jobq.jobs SET finalized_at = now() - interval '2 h' WHERE id = } . $sched);
ok($node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE id = $sched)"),
	'cleaner: the old completed job was deleted');
is(component_pid($node, 'leader'), $leader, 'the same leader did all of that');

# --- every candidate terminated at once ---------------------------------
wait_both_candidates($node);
my $cands = $node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',') FROM jobq.components
	   WHERE database = current_database() AND component ~ '^(leader|candidate)'});
like($cands, qr/^\d+,\d+$/, "two candidate processes ($cands)");
my $t0 = time;
my ($new, $elected, $ready) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT * FROM t.failover(ARRAY[$cands], '$JobqTest::TIMEOUT s')");
ok($new ne '' && $cands !~ /\b$new\b/, "a restarted candidate leads ($new)");
diag(sprintf('FIGURE all candidates terminated -> leader with services running after %.1f ms '
	  . '(includes the launcher restart backoff)', $ready));
my $log = slurp_file($node->logfile);
like($log, qr/jobq candidate \d of database "postgres" exited unexpectedly; restarting it in \d+ ms/,
	'the launcher logged the candidate restarts');
ok(wait_ready($node), 'jobq is ready again');

my $after = $node->safe_psql('postgres',
	q{SELECT jobq.enqueue('effect', '{"n": 4}', run_at => now() + interval '500 ms')});
is(wait_job($node, $after), 'completed', 'a scheduled job runs under the restarted leadership');
is($node->safe_psql('postgres', "SELECT count(*) FROM app.effects WHERE n = 4"),
	'1', 'and its effect is there once');

$node->stop;
done_testing();
