# The upgrade path from $from to the default version: ALTER EXTENSION jobq
# UPDATE keeps every queue, kind, schedule and job (in every state, owned by
# the superuser and by an unprivileged role) exactly as it was, everything
# keeps running afterwards (waiting jobs run, the job of a dead worker is
# rescued, schedules fire), and the upgraded catalog is the one a fresh
# CREATE EXTENSION makes: same functions, tables, indexes, policies, views,
# privileges, extension members and dump configuration, and the same rows
# in the tables the install script fills.
#
# For a later release, change $from (and the data set-up, if the old API
# differs); the rest reads what it compares from the catalog at run time.
use strict;
use warnings FATAL => 'all';
use lib 'test';
use JobqTest;
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Utils;
use Test::More;

# The version upgraded from.
my $from = '0.1.0';

# Columns of $from renamed or dropped on purpose by a later version:
# 'table.column' => the expression that renders the same value afterwards
# (over the new columns), or undef for a column that is gone.
my %moved = ();

my $node = jobq_node('upgrade', workers => 2);
my $su = $node->safe_psql('postgres', 'SELECT current_user');
my $to = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'jobq'});
isnt($to, $from, "the default version ($to) is not the one upgraded from");

# --- a database at $from, used through its API -------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE old; CREATE ROLE alice LOGIN');
$node->safe_psql('old', "CREATE EXTENSION jobq VERSION '$from'");
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'jobq'}),
	$from, "jobq $from is installed in database old");
ok(wait_ready($node, 'old'), "jobq runs in database old at $from");

jobq_handlers($node, 'old');    # kind "effect" (superuser), backoff_max 200 ms
# The schedules must not fire (and change) between the snapshot and the
# comparison: in the transaction that creates them they are put a day
# away; they are made due again after the upgrade.
$node->safe_psql('old', q{
BEGIN;
CREATE TABLE public.probe (label text PRIMARY KEY, job_id bigint NOT NULL);
SELECT jobq.register('flaky', 'app.effect(jsonb)', max_attempts => 5);
SELECT jobq.create_queue('held');
SELECT jobq.pause('held');
SELECT jobq.create_queue('wide', concurrency => 3);
SELECT jobq.register('doomed', 'app.effect(jsonb)', queue => 'wide', max_attempts => 1,
					 timeout => '10 s', priority => 3);
SELECT jobq.schedule('su_tick', '* * * * *', 'effect', '{"n": 100}');

CREATE SCHEMA alice_app AUTHORIZATION alice;
SET ROLE alice;
CREATE TABLE alice_app.done (job_id bigint, n bigint, who text, attempt int);
CREATE FUNCTION alice_app.work(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	INSERT INTO alice_app.done VALUES (job.id, (args->>'n')::bigint, current_user, job.attempt);
	IF args ? 'fail' AND (args->>'fail')::int >= job.attempt THEN
		RAISE EXCEPTION 'failing on purpose at attempt %', job.attempt;
	END IF;
	RETURN jsonb_build_object('n', args->'n', 'who', current_user);
END $$;
SELECT jobq.create_queue('alice_q', 2);
SELECT jobq.pause('alice_q');
SELECT jobq.register('alice_work', 'alice_app.work(jsonb)', queue => 'alice_q', max_attempts => 5);
SELECT jobq.schedule('alice_tick', '* * * * *', 'alice_work', '{"n": 200}');
RESET ROLE;
UPDATE jobq.schedules SET next_fire_at = now() + interval '1 day';
COMMIT;
});

# Enqueues as a role; returns the job's id, recorded under a label.
sub enqueue
{
	my ($label, $role, $call) = @_;
	my $id = $node->safe_psql('old', "SET ROLE $role; SELECT $call");
	$node->safe_psql('old', "INSERT INTO public.probe VALUES ('$label', $id)");
	return $id;
}

my %id;
$id{su_scheduled} = enqueue('su_scheduled', $su,
	q{jobq.enqueue('effect', '{"n": 1}', run_at => now() + interval '1 hour', unique_key => 'u1')});
$id{alice_scheduled} = enqueue('alice_scheduled', 'alice',
	q{jobq.enqueue('alice_work', '{"n": 2}', run_at => now() + interval '1 hour')});
$id{su_available} = enqueue('su_available', $su,
	q{jobq.enqueue('effect', '{"n": 3}', queue => 'held', priority => 5)});
$id{alice_available} = enqueue('alice_available', 'alice',
	q{jobq.enqueue('alice_work', '{"n": 4}')});
$id{su_completed} = enqueue('su_completed', $su, q{jobq.enqueue('effect', '{"n": 5}')});
$id{alice_completed} = enqueue('alice_completed', 'alice',
	q{jobq.enqueue('alice_work', '{"n": 6}', queue => 'default')});
$id{su_discarded} = enqueue('su_discarded', $su, q{jobq.enqueue('doomed', '{"n": 7, "fail": 9}')});
$id{su_cancelled} = enqueue('su_cancelled', $su,
	q{jobq.enqueue('effect', '{"n": 8}', run_at => now() + interval '1 hour')});
$id{alice_cancelled} = enqueue('alice_cancelled', 'alice',
	q{jobq.enqueue('alice_work', '{"n": 9}', run_at => now() + interval '1 hour')});
# fail twice: after the second failure the next attempt is 16 s away
$id{su_retryable} = enqueue('su_retryable', $su,
	q{jobq.enqueue('flaky', '{"n": 10, "fail": 2}', max_attempts => 5)});
$id{alice_retryable} = enqueue('alice_retryable', 'alice',
	q{jobq.enqueue('alice_work', '{"n": 11, "fail": 2}', queue => 'default')});

$node->safe_psql('old', "SELECT jobq.cancel($id{su_cancelled})");
$node->safe_psql('old', "SET ROLE alice; SELECT jobq.cancel($id{alice_cancelled})");
is(wait_job($node, $id{$_}, 'old'), 'completed', "$_ completed at $from") for qw(su_completed alice_completed);
is(wait_job($node, $id{su_discarded}, 'old'), 'discarded', "su_discarded discarded at $from");
for my $label (qw(su_retryable alice_retryable))
{
	ok( $node->poll_query_until('old',
			"SELECT state = 'retryable' AND attempt = 2 FROM jobq.jobs WHERE id = $id{$label}"),
		"$label failed twice at $from");
	# keep it waiting until after the upgrade
	is( $node->safe_psql('old', qq{
		UPDATE jobq.jobs SET scheduled_at = now() + interval '1 hour'
		 WHERE id = $id{$label} AND state = 'retryable' RETURNING id}),
		$id{$label}, "$label waits");
}

# --- upgrade ---------------------------------------------------------------
# One transaction: jobs running on workers that are gone (the leader's
# rescuer must not see them before the upgrade), the snapshot, the upgrade,
# and the comparison (nothing else changes these rows meanwhile: what is
# waiting waits an hour, queues are paused, schedules are a day away).
my $s = $node->background_psql('old');
$s->query_safe('SET search_path = pg_catalog; SET client_min_messages = warning; BEGIN');
for my $running ([ 'su_running', $su, 'effect', 12 ], [ 'alice_running', 'alice', 'alice_work', 13 ])
{
	my ($label, $owner, $kind, $n) = @$running;
	# attempted_by 42: a claim no worker holds (claims are >= 2^32)
	$id{$label} = $s->query_safe(qq{
	INSERT INTO jobq.jobs (attempted_by, scheduled_at, attempted_at, owner, state, attempt,
						   max_attempts, priority, kind, queue, args)
	VALUES (42, now() - interval '1 minute', now() - interval '30 s', '$owner', 'running', 1,
			5, 0, '$kind', 'default', '{"n": $n}')
	RETURNING id});
	$s->query_safe("INSERT INTO public.probe VALUES ('$label', $id{$label})");
}

my %before_state = map { /^(\w+)\|(\w+)$/ } split /\n/, $s->query_safe(q{
	SELECT p.label || '|' || j.state FROM public.probe p JOIN jobq.jobs j ON j.id = p.job_id});
is( join(',', map { "$_=$before_state{$_}" } sort keys %before_state),
	join(',', map { /^(\w+?)_(.*)$/ ? "$_=$2" : () } sort keys %id),
	"before the upgrade the jobs are in the states their labels say");
is( $s->query_safe(q{
	SELECT count(DISTINCT j.state) = (SELECT count(*) FROM pg_enum WHERE enumtypid = 'jobq.job_state'::regtype)
	  FROM jobq.jobs j}),
	't', 'there are jobs in every state');

# The columns of jobq's tables at $from, their types, and which are the key.
my %cols;
for my $line (split /\n/, $s->query_safe(q{
	SELECT c.relname || '|' || a.attname || '|' || a.atttypid::regtype::text || '|'
		   || coalesce(a.attnum = ANY (i.indkey), false)
	  FROM pg_class c
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
	 WHERE c.relnamespace = 'jobq'::regnamespace AND c.relkind IN ('r', 'p')
	 ORDER BY c.relname, a.attnum}))
{
	my ($table, $col, $type, $key) = split /\|/, $line;
	push @{ $cols{$table} }, { name => $col, type => $type, key => $key eq 'true' };
}
ok(exists $cols{$_}, "jobq.$_ exists at $from") for qw(jobs queues handlers schedules);

# Current column types of a table, by name.
sub column_types
{
	my ($table) = @_;
	return { map { split /\|/ } split /\n/, $s->query_safe(qq{
		SELECT a.attname || '|' || a.atttypid::regtype::text FROM pg_attribute a
		 WHERE a.attrelid = 'jobq.$table'::regclass AND a.attnum > 0 AND NOT a.attisdropped}) };
}

# An expression rendering a column of $from the same way whatever its type
# is now: a reg* column (regrole, regprocedure) may become an oid or the
# object's name as text; it is rendered as the $from type renders it (the
# role's name, the function's signature).
sub render
{
	my ($table, $col, $now) = @_;
	my ($name, $old) = ($col->{name}, $col->{type});
	my $c = qq{"$name"};
	if (exists $moved{"$table.$name"})
	{
		my $expr = $moved{"$table.$name"};
		return defined $expr ? "($expr)::text" : 'NULL::text';
	}
	my $new = $now->{$name};
	if (!defined $new)
	{
		fail("column $table.$name of $from still exists (or is listed in \%moved)");
		return q{'<gone>'};
	}
	return "${c}::text" if $old !~ /^reg/ || $new eq $old;
	my $oid;
	if ($new =~ /^(reg\w+|oid|bigint|integer)$/) { $oid = "${c}::oid" }
	elsif ($new =~ /^(text|name|character varying)$/) { $oid = "${c}::text::${old}::oid" }
	else
	{
		fail("a rendering of $table.$name ($old at $from, now $new)");
		return q{'<unknown>'};
	}
	return "${oid}::${old}::text";
}

# The rows of jobq's tables of $from as "table key" => { column => value },
# each value rendered as at $from (undef for NULL).
sub snapshot
{
	my %rows;
	for my $table (sort keys %cols)
	{
		my $now = column_types($table);
		my @c = @{ $cols{$table} };
		my $key = join(', ', map { "'$_->{name}', " . render($table, $_, $now) } grep { $_->{key} } @c);
		my $all = join(', ', map { "'$_->{name}', " . render($table, $_, $now) } @c);
		for my $line (split /\n/, $s->query_safe(qq{
			SELECT json_build_object($key)::text || chr(9) || json_build_object($all)::text
			  FROM jobq.$table}))
		{
			my ($k, $v) = split /\t/, $line, 2;
			$rows{"$table $k"} = JSON::PP->new->decode($v);
		}
	}
	return \%rows;
}

# Compares two lists of lines; on a mismatch shows the lines only in one
# of them ("-" expected, "+" got), sorted so that a changed line's two
# versions are next to each other.
sub same_lines
{
	my ($got, $expected, $name) = @_;
	my (%g, %e);
	$g{$_}++ for @$got;
	$e{$_}++ for @$expected;
	my @diff;
	for my $l (keys %e) { push @diff, [ $l, '-' ] for 1 .. $e{$l} - ($g{$l} // 0) }
	for my $l (keys %g) { push @diff, [ $l, '+' ] for 1 .. $g{$l} - ($e{$l} // 0) }
	my $ok = ok(!@diff, $name);
	diag(join("\n", "lines differing (- expected, + got):",
		map { "$_->[1] $_->[0]" } sort { $a->[0] cmp $b->[0] || $a->[1] cmp $b->[1] } @diff))
	  if @diff;
	return $ok;
}

my $before = snapshot();
cmp_ok(scalar(keys %$before), '>=', scalar(keys %id) + 6, 'the snapshot has the jobs, queues, kinds and schedules');
$s->query_safe('ALTER EXTENSION jobq UPDATE');
my $after = snapshot();
my @changed;
for my $row (sort keys %$before)
{
	my ($table) = split / /, $row;
	if (!exists $after->{$row})
	{
		push @changed, "$row: gone";
		next;
	}
	for my $col (map { $_->{name} } @{ $cols{$table} })
	{
		my ($was, $is) = map { JSON::PP->new->allow_nonref->encode($_->{$col}) } $before->{$row}, $after->{$row};
		push @changed, "$row: $col was $was, is $is" if $was ne $is;
	}
}
is(scalar(@changed), 0, "every row of $from is still there with the same values after the upgrade")
  or diag(join("\n", @changed));
$s->query_safe('COMMIT');
$s->quit;

is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'jobq'}),
	$to, "jobq is at $to after ALTER EXTENSION jobq UPDATE");

# --- everything keeps running ------------------------------------------------
ok(wait_ready($node, 'old'), "jobq runs in database old at $to");
$node->safe_psql('old', q{SELECT jobq.resume('held')});
$node->safe_psql('old', q{SET ROLE alice; SELECT jobq.resume('alice_q')});
my $fire = $node->safe_psql('old',
	q{SELECT extract(epoch FROM date_trunc('minute', now()) - interval '1 hour')::int8});
$node->safe_psql('old', qq{
BEGIN;
UPDATE jobq.jobs SET scheduled_at = now()
 WHERE id IN ($id{su_scheduled}, $id{alice_scheduled}, $id{su_retryable}, $id{alice_retryable});
UPDATE jobq.schedules SET next_fire_at = to_timestamp($fire);
SELECT jobq._wake_leader_at_commit();
COMMIT;
});

my @live = grep { $before_state{$_} =~ /^(scheduled|available|running|retryable)$/ } sort keys %id;
is(scalar(@live), 8, 'eight jobs were live at the upgrade');
for my $label (@live)
{
	is(wait_job($node, $id{$label}, 'old'), 'completed', "$label ($before_state{$label} at the upgrade) completed");
}
for my $label (qw(su_running alice_running))
{
	is( $node->safe_psql('old',
			"SELECT attempt, errors->0->>'lost', errors->0->>'attempt' FROM jobq.jobs WHERE id = $id{$label}"),
		'2|true|1', "$label was rescued from its dead worker (attempt 1 lost) and ran again");
}
is( $node->safe_psql('old', q{
	SELECT string_agg(p.label, ',' ORDER BY p.label) FROM public.probe p JOIN jobq.jobs j ON j.id = p.job_id
	 WHERE p.label LIKE 'alice%' AND j.state = 'completed' AND j.result->>'who' IS DISTINCT FROM 'alice'}),
	'', "alice's jobs ran as alice");
is( $node->safe_psql('old', q{
	SELECT count(*) || '|' || count(DISTINCT j.id) FROM public.probe p JOIN jobq.jobs j ON j.id = p.job_id
	  JOIN app.effects e ON e.job_id = j.id AND e.n = (j.args->>'n')::bigint
	 WHERE p.label LIKE 'su%' AND j.state = 'completed'}),
	'5|5', "the superuser's completed jobs left their effects (one committed run each)");

for my $schedule ([ 'su_tick', $su ], [ 'alice_tick', 'alice' ])
{
	my ($name, $owner) = @$schedule;
	my $key = "jobq.schedule:$name:$fire";
	ok( $node->poll_query_until('old', "SELECT EXISTS (SELECT FROM jobq.jobs WHERE unique_key = '$key')"),
		"schedule $name fires after the upgrade");
	my $job = $node->safe_psql('old', "SELECT id FROM jobq.jobs WHERE unique_key = '$key'");
	is(wait_job($node, $job, 'old'), 'completed', "... and its job completes");
	is($node->safe_psql('old', "SELECT pg_get_userbyid(owner::oid) FROM jobq.jobs WHERE id = $job"),
		$owner, "... as the schedule's owner");
	is($node->safe_psql('old', "SELECT next_fire_at > now() FROM jobq.schedules WHERE name = '$name'"),
		't', "... and the schedule moves on");
}
my $new_job = $node->safe_psql('old', q{SET ROLE alice; SELECT jobq.enqueue('alice_work', '{"n": 14}')});
is(wait_job($node, $new_job, 'old'), 'completed', "a job enqueued at $to by alice completes");
my $counted = final_jobs_counted($node, 'old');
like($counted, qr/^counted [1-9]\d*, kept/, 'final jobs are kept');
my ($n, $kept) = $counted =~ /counted (\d+), kept (\d+)/;
is($n, $kept, "queue_stats counts the final jobs kept before and after the update ($counted)");

# From here on nothing changes in database old: no schedules, no live jobs.
is( $node->safe_psql('old', q{
	SELECT jobq.unschedule('su_tick'); SET ROLE alice; SELECT jobq.unschedule('alice_tick')}),
	"t\nt", 'the schedules of both roles are removed');
ok( $node->poll_query_until('old',
		q{SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE state IN ('scheduled', 'available', 'running', 'retryable'))}),
	'no job is live any more');

# --- the upgraded catalog is a fresh install's -------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION jobq');
is($node->safe_psql('fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'jobq'}),
	$to, "a fresh install is at $to");
ok(wait_ready($node, 'fresh'), 'jobq runs in database fresh');

# pg_dump of schema jobq and of the extension, without comments and blank
# lines (and the random \restrict key of newer pg_dump releases).  The
# extension's objects are not dumped, only CREATE EXTENSION and what differs
# from what its scripts made (privileges changed afterwards, say).
sub dump_jobq
{
	my ($db, @opts) = @_;
	my ($out, $err) = ('', '');
	my @cmd = ($node->installed_command('pg_dump'), @opts, '-n', 'jobq', '-e', 'jobq',
		'-d', $node->connstr($db));
	ok(IPC::Run::run(\@cmd, '<', '/dev/null', '>', \$out, '2>', \$err), "pg_dump @opts of database $db")
	  or diag($err);
	return [ grep { !/^--/ && !/^\s*$/ && !/^\\(un)?restrict\b/ } split /\n/, $out ];
}
same_lines(dump_jobq('old', '--schema-only'), dump_jobq('fresh', '--schema-only'),
	'pg_dump --schema-only: upgraded equals fresh');

# The data dump of the upgraded database has the rows of each dump-configured
# table that its condition selects.
my $data = join("\n", @{ dump_jobq('old', '--data-only') }) . "\n";
for my $line (split /\n/, $node->safe_psql('old', q{
	SELECT x.cfg::regclass::text || chr(9) || x.cond
	  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
	  JOIN pg_class c ON c.oid = x.cfg
	 WHERE e.extname = 'jobq' AND c.relkind IN ('r', 'p')}))
{
	my ($table, $cond) = split /\t/, $line, 2;
	my $rows = $node->safe_psql('old', "SELECT count(*) FROM $table $cond");
	my ($copy) = $data =~ /^COPY \Q$table\E \(.*?\) FROM stdin;\n(.*?)^\\\.$/ms;
	my @copied = split /\n/, $copy // '';
	is(defined $copy ? scalar(@copied) : 'no COPY', $rows,
		"the data dump has the $rows rows of $table its condition selects");
}

# Catalog descriptions of jobq, one line per object, independent of oids.
my $ext_members = q{
	SELECT d.classid, d.objid FROM pg_depend d
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'jobq')};
my @catalog = (
	extension => q{
	SELECT format('%s %s relocatable=%s schema=%s owner=%s', e.extname, e.extversion, e.extrelocatable,
				  e.extnamespace::regnamespace, pg_get_userbyid(e.extowner))
	  FROM pg_extension e WHERE e.extname = 'jobq'},
	schema => q{
	SELECT format('%s owner=%s acl=%s comment=%s', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl,
				  obj_description(n.oid, 'pg_namespace'))
	  FROM pg_namespace n WHERE n.nspname = 'jobq'},
	members => qq{
	SELECT pg_describe_object(m.classid, m.objid, 0) FROM ($ext_members) m},
	functions => q{
	SELECT format('%s(%s) returns %s | args=%s kind=%s lang=%s strict=%s secdef=%s leakproof=%s '
				  'volatile=%s parallel=%s cost=%s rows=%s config=%s owner=%s acl=%s body=%s',
				  p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
				  pg_get_function_arguments(p.oid), p.prokind, l.lanname, p.proisstrict, p.prosecdef,
				  p.proleakproof, p.provolatile, p.proparallel, p.procost, p.prorows, p.proconfig,
				  pg_get_userbyid(p.proowner), p.proacl,
				  CASE WHEN l.lanname = 'c' THEN p.probin || ':' || p.prosrc
					   ELSE md5(btrim(regexp_replace(p.prosrc, '\s+', ' ', 'g'))) END)
	  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
	 WHERE p.pronamespace = 'jobq'::regnamespace},
	types => q{
	SELECT format('%s type=%s base=%s notnull=%s default=%s labels=%s owner=%s acl=%s',
				  t.typname, t.typtype, format_type(nullif(t.typbasetype, 0), t.typtypmod), t.typnotnull,
				  t.typdefault,
				  (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
					WHERE e.enumtypid = t.oid),
				  pg_get_userbyid(t.typowner), t.typacl)
	  FROM pg_type t WHERE t.typnamespace = 'jobq'::regnamespace},
	relations => q{
	SELECT format('%s kind=%s persistence=%s rls=%s force_rls=%s options=%s owner=%s acl=%s',
				  c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
				  c.reloptions, pg_get_userbyid(c.relowner), c.relacl)
	  FROM pg_class c WHERE c.relnamespace = 'jobq'::regnamespace},
	columns => q{
	SELECT format('%s.%s #%s %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s',
				  c.relname, a.attname,
				  row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
				  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
				  a.attidentity, a.attgenerated,
				  (SELECT co.collname FROM pg_collation co WHERE co.oid = a.attcollation), a.attacl)
	  FROM pg_class c
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	 WHERE c.relnamespace = 'jobq'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'c', 'f')},
	constraints => q{
	SELECT format('%s %s %s: %s deferrable=%s deferred=%s validated=%s',
				  coalesce(c.relname, t.typname), con.conname, con.contype, pg_get_constraintdef(con.oid),
				  con.condeferrable, con.condeferred, con.convalidated)
	  FROM pg_constraint con
	  LEFT JOIN pg_class c ON c.oid = con.conrelid
	  LEFT JOIN pg_type t ON t.oid = con.contypid
	 WHERE con.connamespace = 'jobq'::regnamespace},
	indexes => q{
	SELECT format('%s valid=%s clustered=%s', pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisclustered)
	  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	 WHERE c.relnamespace = 'jobq'::regnamespace},
	sequences => q{
	SELECT format('%s %s start=%s increment=%s min=%s max=%s cache=%s cycle=%s', c.relname,
				  format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
				  s.seqcache, s.seqcycle)
	  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
	 WHERE c.relnamespace = 'jobq'::regnamespace},
	triggers => q{
	SELECT format('%s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
	  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	 WHERE c.relnamespace = 'jobq'::regnamespace AND NOT t.tgisinternal},
	policies => q{
	SELECT format('%s %s %s %s roles=%s using=%s check=%s', p.tablename, p.policyname, p.permissive,
				  p.cmd, p.roles, p.qual, p.with_check)
	  FROM pg_policies p WHERE p.schemaname = 'jobq'},
	views => q{
	SELECT format('%s: %s', c.relname, regexp_replace(pg_get_viewdef(c.oid, true), '\s+', ' ', 'g'))
	  FROM pg_class c WHERE c.relnamespace = 'jobq'::regnamespace AND c.relkind IN ('v', 'm')},
	comments => qq{
	SELECT format('%s: %s', pg_describe_object(ds.classoid, ds.objoid, ds.objsubid), ds.description)
	  FROM pg_description ds JOIN ($ext_members) m ON m.classid = ds.classoid AND m.objid = ds.objoid},
	init_privileges => qq{
	SELECT format('%s %s %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid), ip.privtype, ip.initprivs)
	  FROM pg_init_privs ip JOIN ($ext_members) m ON m.classid = ip.classoid AND m.objid = ip.objoid},
	dump_config => q{
	SELECT format('%s %s', x.cfg::regclass, x.cond)
	  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
	 WHERE e.extname = 'jobq'},
);

sub catalog_lines
{
	my ($db, $sql) = @_;
	return [ split /\n/, $node->safe_psql($db, "SET search_path = pg_catalog; $sql ORDER BY 1") ];
}

for (my $i = 0; $i < @catalog; $i += 2)
{
	my ($what, $sql) = @catalog[ $i, $i + 1 ];
	my $fresh = catalog_lines('fresh', $sql);
	ok(@$fresh > 0, "a fresh install has $what") unless $what =~ /^(triggers|constraints)$/;
	same_lines(catalog_lines('old', $sql), $fresh, "$what: upgraded equals fresh");
}

# The rows the install script itself writes: all rows of jobq's tables that
# are not dump-configured, and the rows a configured table's dump condition
# leaves out (the ones the script creates, like queue "default").
# Timestamps differ and are left out.
my @tables = split /\n/, $node->safe_psql('fresh', q{
	SELECT c.relname || chr(9) || coalesce(x.cond, '') || chr(9) || (x.cfg IS NOT NULL)
	  || chr(9) || coalesce((SELECT string_agg(quote_literal(a.attname), ',') FROM pg_attribute a
				 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
				   AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype)), '')
	  FROM pg_class c
	  LEFT JOIN (SELECT x.cfg, x.cond FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
				  WHERE e.extname = 'jobq') x ON x.cfg = c.oid
	 WHERE c.relnamespace = 'jobq'::regnamespace AND c.relkind IN ('r', 'p')
	 ORDER BY c.relname});
my $script_rows = 0;
for my $line (@tables)
{
	my ($table, $cond, $configured, $stamps) = split /\t/, $line, 4;
	next if $configured eq 'true' && $cond eq '';    # user data only
	next if $table eq 'final_counts';    # counts of the jobs, checked above
	my $where = $configured eq 'true' ? "WHERE t.ctid NOT IN (SELECT ctid FROM jobq.$table $cond)" : '';
	my $sql = "SELECT (to_jsonb(t) - ARRAY[$stamps]::text[])::text FROM jobq.$table t $where";
	my $fresh = catalog_lines('fresh', $sql);
	$script_rows += @$fresh;
	same_lines(catalog_lines('old', $sql), $fresh, "rows the install script writes in jobq.$table: upgraded equals fresh");
}
cmp_ok($script_rows, '>', 0, 'the install script writes some rows (queue default)');

# --- ALTER EXTENSION again, and DROP EXTENSION ---------------------------------
my ($rc, $out, $err) = $node->psql('old', 'ALTER EXTENSION jobq UPDATE');
is($rc, 0, 'ALTER EXTENSION jobq UPDATE again succeeds');
like($err, qr/version "\Q$to\E" of extension "jobq" is already installed/, '... saying jobq is at that version');
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'jobq'}),
	$to, '... and leaves it there');

$node->safe_psql('old', 'DROP EXTENSION jobq');
is( $node->safe_psql('old', q{
	SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'jobq')
		 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'jobq')
		 + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'jobq')}),
	'0', 'DROP EXTENSION of the upgraded jobq removes its objects');
ok( $node->poll_query_until('fresh',
		q{SELECT count(*) = 0 FROM jobq.components WHERE database = 'old' AND pid IS NOT NULL}),
	'... and its processes stop');
$node->safe_psql('old', 'CREATE EXTENSION jobq');
ok(wait_ready($node, 'old'), 'and jobq can be installed there again');

$node->stop;
done_testing();
