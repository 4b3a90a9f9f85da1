# Hostile objects on the search_path: nothing jobq runs in its own
# (superuser) processes, and no PUBLIC-callable jobq function run by a
# victim, may resolve an operator, function, aggregate, type or relation
# through a search_path that another role controls.
#
# As on a cluster upgraded from PostgreSQL 14 or older, every role may
# create objects in schema public, and the database and all roles search
# public and mallory's schema evil before pg_catalog.  Mallory plants, in
# both schemas, look-alikes of the operators, functions, aggregates, types
# (domains) and catalog relations jobq could use.  Each look-alike gives the
# right answer, so jobq keeps working, but first advances the sequence
# public.hijack_calls (not transactional: calls in rolled-back transactions
# count too), logs its name and tries to make mallory a superuser.  Then a
# superuser and a plain role, alice, go through a whole job life cycle
# using only jobq's API: after each phase the counter must not have moved.
#
# The test's own statements run with search_path = pg_catalog (or call
# only jobq's API and write operators as OPERATOR(pg_catalog.x)), so that
# any call of a hostile object is jobq's doing.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $db = 'victimdb';
my $hostile_path = 'public, evil, pg_catalog';
my $safe_options = '-c search_path=pg_catalog,pg_temp';
my $WAIT = 60;    # seconds any wait may take here

my $node = jobq_node('hostile', workers => 3,
	conf => "log_timezone = 'UTC'\njobq.cleanup_interval = '200ms'\n");
my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

# Bookkeeping, as the superuser (or $opt{user}) with only pg_catalog on the
# search_path.
sub safe
{
	my ($sql, %opt) = @_;
	local $ENV{PGOPTIONS} = $safe_options;
	local $ENV{PGUSER} = $opt{user} // $superuser;
	return $node->safe_psql($opt{db} // $db, $sql);
}

# What a victim does, in a session of its own with the search_path the
# database and role settings give it: only jobq's API, and plain DML
# without operators or functions.
sub victim
{
	my ($user, $sql) = @_;
	local $ENV{PGUSER} = $user;
	delete local $ENV{PGOPTIONS};
	return $node->safe_psql($db, $sql);
}

sub poll
{
	my ($query) = @_;
	return wait_until(sub { safe($query) eq 't' }, $WAIT);
}

sub wait_as
{
	my ($user, $id) = @_;
	return victim($user, "SELECT jobq.wait($id, '$WAIT s')");
}

# --- roles, database, settings ---------------------------------------------
$node->safe_psql('postgres', qq{
CREATE ROLE dbowner LOGIN;
CREATE ROLE mallory LOGIN;
CREATE ROLE alice LOGIN;
CREATE DATABASE $db OWNER dbowner;
ALTER ROLE ALL SET search_path = $hostile_path;
});
safe(q{
GRANT CREATE ON SCHEMA public TO PUBLIC;
CREATE SCHEMA evil AUTHORIZATION mallory;
CREATE SCHEMA alice_app AUTHORIZATION alice;
});
safe("ALTER DATABASE $db SET search_path = $hostile_path", user => 'dbowner');

is( safe(q{
	SELECT string_agg(coalesce(d.datname, '-') || ':' || array_to_string(s.setconfig, ';'), ' ' ORDER BY d.datname)
	  FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
	 WHERE s.setrole = 0}),
	"$db:search_path=$hostile_path -:search_path=$hostile_path",
	'search_path is set for the database and for all roles');
is(victim($superuser, 'SHOW search_path'), $hostile_path,
	'a new session of the bootstrap superuser (the role jobq runs as) gets it');
is(victim('alice', 'SHOW search_path'), $hostile_path, "and so does alice's");
{
	local $ENV{PGUSER} = 'alice';
	is($node->safe_psql('postgres', 'SHOW search_path'), $hostile_path,
		'ALTER ROLE ALL alone gives it too (in database postgres)');
}

# --- mallory plants her objects ----------------------------------------------
# Each one calls public.hijack_hit(name) and then does what the pg_catalog
# original does.  hijack_hit is called by whoever calls the look-alike, with
# their privileges.
safe(<<'EOSQL', user => 'mallory');
CREATE SEQUENCE public.hijack_calls;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.hijack_calls TO PUBLIC;
-- advanced by the test at each phase: a call site is logged once per
-- session and phase (the counter counts every call)
CREATE SEQUENCE public.hijack_phase;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.hijack_phase TO PUBLIC;
GRANT USAGE ON SCHEMA evil TO PUBLIC;

CREATE FUNCTION public.hijack_hit(what text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms' AS $$
DECLARE
	ctx text;
	seen text;
BEGIN
	PERFORM nextval('public.hijack_calls');
	GET DIAGNOSTICS ctx = PG_CONTEXT;
	seen := 'hijack.s' || md5((SELECT last_value FROM public.hijack_phase)::text || what || current_user || ctx);
	IF coalesce(current_setting(seen, true), '') = '' THEN
		PERFORM set_config(seen, 'y', false);
		RAISE LOG 'jobq-hijack: % ;; as % ;; %', what, current_user, replace(ctx, E'\n', ' | ');
	END IF;
	BEGIN
		IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
		   AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory') THEN
			EXECUTE 'ALTER ROLE mallory SUPERUSER';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		NULL;
	END;
	RETURN true;
END $$;

-- operator s.op(l, r), calling pg_catalog's
CREATE FUNCTION evil.hijack_plant_op(s text, op text, l text, r text, res text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	sig text := format('%s.%s(%s,%s)', s, op, l, r);
	fn text := format('%I.%I', s, 'hijack_op_' || substr(md5(sig), 1, 16));
BEGIN
	EXECUTE format('CREATE FUNCTION %s(a %s, b %s) RETURNS %s LANGUAGE plpgsql STRICT '
				   'SET search_path = pg_catalog, pg_temp AS %L',
		fn, l, r, res,
		format('BEGIN PERFORM public.hijack_hit(%L); RETURN a OPERATOR(pg_catalog.%s) b; END', sig, op));
	EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)',
		s, op, l, r, fn);
END $$;

-- function s.name(argtypes), calling orig.name
CREATE FUNCTION evil.hijack_plant_func(s text, orig text, name text, argtypes text[], res text,
									   retset boolean, strict boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	sig text := format('%s.%s(%s)', s, name, array_to_string(argtypes, ','));
	params text := '';
	args text := '';
	call text;
	body text;
BEGIN
	FOR i IN 1 .. coalesce(array_length(argtypes, 1), 0) LOOP
		params := params || CASE WHEN i > 1 THEN ', ' ELSE '' END || format('a%s %s', i, argtypes[i]);
		args := args || CASE WHEN i > 1 THEN ', ' ELSE '' END || format('a%s', i);
	END LOOP;
	call := format('%I.%I(%s)', orig, name, args);
	body := format('BEGIN PERFORM public.hijack_hit(%L); ', sig)
		|| CASE WHEN retset THEN format('RETURN QUERY SELECT %s; END', call)
				WHEN res = 'void' THEN format('PERFORM %s; END', call)
				ELSE format('RETURN %s; END', call) END;
	EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s%s LANGUAGE plpgsql%s '
				   'SET search_path = pg_catalog, pg_temp AS %L',
		s, name, params, CASE WHEN retset THEN 'SETOF ' ELSE '' END, res,
		CASE WHEN strict THEN ' STRICT' ELSE '' END, body);
END $$;

-- aggregate s.name(t) returning res, computed by pg_catalog's
CREATE FUNCTION evil.hijack_plant_agg(s text, name text, t text, res text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	sig text := format('aggregate %s.%s(%s)', s, name, t);
	base text := 'hijack_agg_' || substr(md5(sig), 1, 16);
BEGIN
	EXECUTE format('CREATE FUNCTION %I.%I(st %s[], v %s) RETURNS %s[] LANGUAGE plpgsql '
				   'SET search_path = pg_catalog, pg_temp AS %L',
		s, base || '_s', t, t, t, 'BEGIN RETURN pg_catalog.array_append(st, v); END');
	EXECUTE format('CREATE FUNCTION %I.%I(st %s[]) RETURNS %s LANGUAGE plpgsql '
				   'SET search_path = pg_catalog, pg_temp AS %L',
		s, base || '_f', t, res,
		format('BEGIN PERFORM public.hijack_hit(%L); '
			   'RETURN (SELECT pg_catalog.%I(v) FROM pg_catalog.unnest(st) AS u(v)); END', sig, name));
	EXECUTE format('CREATE AGGREGATE %I.%I(%s) (SFUNC = %I.%I, STYPE = %s[], INITCOND = ''{}'', '
				   'FINALFUNC = %I.%I)',
		s, name, t, s, base || '_s', t, s, base || '_f');
END $$;

-- relation s.name shadowing rel, calling hijack_hit once per scan
CREATE FUNCTION evil.hijack_plant_view(s text, name text, rel text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	EXECUTE format('CREATE VIEW %I.%I AS SELECT * FROM %s WHERE (SELECT public.hijack_hit(%L))',
		s, name, rel, format('view %s.%s', s, name));
	EXECUTE format('GRANT SELECT ON %I.%I TO PUBLIC', s, name);
END $$;

-- shadows of the functions of schema orig that are called names[]
CREATE FUNCTION evil.hijack_plant_funcs(s text, orig text, names text[]) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p record;
	n integer := 0;
BEGIN
	FOR p IN
		SELECT f.proname,
			   ARRAY(SELECT format_type(t, NULL)
					   FROM unnest(f.proargtypes::oid[]) WITH ORDINALITY AS u(t, i) ORDER BY i) AS types,
			   format_type(f.prorettype, NULL) AS res, f.proretset, f.proisstrict
		  FROM pg_proc f
		 WHERE f.pronamespace = orig::regnamespace AND f.prokind = 'f'
		   AND (names IS NULL OR f.proname = ANY (names))
		   AND f.provariadic = 0
		   AND NOT EXISTS (
			   SELECT FROM unnest(f.proargtypes::oid[] || f.prorettype) AS u(t)
				 JOIN pg_type ty ON ty.oid = u.t
				WHERE ty.typtype = 'p'
				  AND ty.typname NOT IN ('anyelement', 'anyarray', 'anynonarray', 'anyenum',
										 'anycompatible', 'anycompatiblearray',
										 'anycompatiblenonarray', 'void'))
		 ORDER BY 1, 2
	LOOP
		PERFORM evil.hijack_plant_func(s, orig, p.proname, p.types, p.res, p.proretset, p.proisstrict);
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;

-- shadows of the binary operators of pg_catalog called ops[] between types[]
CREATE FUNCTION evil.hijack_plant_ops(s text, ops text[], types text[]) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	o record;
	n integer := 0;
BEGIN
	FOR o IN
		SELECT op.oprname, format_type(op.oprleft, NULL) AS l, format_type(op.oprright, NULL) AS r,
			   format_type(op.oprresult, NULL) AS res
		  FROM pg_operator op
		 WHERE op.oprnamespace = 'pg_catalog'::regnamespace AND op.oprkind = 'b'
		   AND op.oprname = ANY (ops)
		   AND format_type(op.oprleft, NULL) = ANY (types)
		   AND format_type(op.oprright, NULL) = ANY (types)
		 ORDER BY 1, 2, 3
	LOOP
		PERFORM evil.hijack_plant_op(s, o.oprname, o.l, o.r, o.res);
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
EOSQL

my $ops = q{ARRAY['=', '<>', '<', '>', '<=', '>=', '+', '-', '*', '/', '%', '||', '->', '->>',
  '#>', '#>>', '?', '?|', '?&', '@>', '<@', '~', '!~', '~*', '!~*', '~~', '!~~', '~~*', '!~~*']};
my $types = q{ARRAY['smallint', 'integer', 'bigint', 'real', 'double precision', 'numeric',
  'text', 'name', '"char"', 'boolean', 'timestamp with time zone', 'interval', 'jsonb', 'json', 'oid',
  'text[]', 'bigint[]', 'integer[]', 'jsonb[]', 'anyarray', 'anyelement', 'anynonarray', 'anyenum',
  'anycompatible', 'anycompatiblearray', 'anycompatiblenonarray']};
my $funcs = q{ARRAY['now', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp',
  'timeofday', 'pg_has_role', 'has_function_privilege', 'has_table_privilege',
  'has_schema_privilege', 'has_database_privilege', 'jsonb_typeof', 'jsonb_array_length',
  'jsonb_object_field', 'jsonb_object_field_text', 'jsonb_array_element',
  'jsonb_array_element_text', 'jsonb_set', 'jsonb_insert', 'jsonb_strip_nulls', 'to_jsonb',
  'to_json', 'row_to_json', 'lower', 'upper', 'length', 'octet_length', 'char_length', 'left',
  'right', 'substr', 'split_part', 'replace', 'btrim', 'ltrim', 'rtrim', 'starts_with', 'strpos',
  'format', 'quote_ident', 'quote_literal', 'quote_nullable', 'regexp_replace', 'regexp_match',
  'date_trunc', 'date_part', 'to_timestamp', 'to_char', 'age', 'justify_interval', 'make_interval',
  'pg_advisory_lock', 'pg_advisory_xact_lock', 'pg_advisory_unlock', 'pg_try_advisory_lock',
  'pg_try_advisory_xact_lock', 'pg_advisory_lock_shared', 'pg_advisory_xact_lock_shared',
  'pg_backend_pid', 'current_setting', 'set_config', 'pg_notify', 'txid_current',
  'pg_current_xact_id', 'current_database', 'current_schema', 'pg_terminate_backend',
  'pg_cancel_backend', 'pg_sleep', 'random', 'abs', 'floor', 'ceil', 'round', 'trunc',
  'array_length', 'array_lower', 'array_upper', 'cardinality', 'array_position', 'array_append',
  'array_prepend', 'array_cat', 'array_to_string', 'string_to_array', 'unnest', 'generate_series',
  'int8', 'int4', 'int2', 'float8', 'text', 'numeric', 'bool', 'pg_get_userbyid', 'format_type',
  'pg_is_in_recovery', 'pg_postmaster_start_time', 'txid_visible_in_snapshot']};
# functions with VARIADIC "any" cannot be shadowed as such: concrete
# overloads for the calls jobq could make
my @concrete = (
	[ 'jsonb_build_object', 'text,integer,text,timestamp with time zone,text,text,text,boolean', 'jsonb' ],
	[ 'jsonb_build_object',
		'text,integer,text,timestamp with time zone,text,text,text,text,text,text,text,text,text,text',
		'jsonb' ],
	[ 'jsonb_build_object', 'text,text,text,name,text,name,text,jsonb,text,jsonb', 'jsonb' ],
	[ 'jsonb_build_object', 'text,jsonb', 'jsonb' ],
	[ 'jsonb_build_object', 'text,text', 'jsonb' ],
	[ 'jsonb_build_object', 'text,integer', 'jsonb' ],
	[ 'jsonb_build_object', 'text,bigint', 'jsonb' ],
	[ 'jsonb_build_object', 'text,boolean', 'jsonb' ],
	[ 'jsonb_build_array', 'jsonb', 'jsonb' ],
	[ 'jsonb_build_array', 'jsonb,jsonb', 'jsonb' ],
	[ 'jsonb_build_array', 'text', 'jsonb' ],
	[ 'format', 'text,text', 'text' ],
	[ 'format', 'text,text,text', 'text' ],
	[ 'format', 'text,regrole', 'text' ],
	[ 'format', 'text,bigint', 'text' ],
	[ 'format', 'text,integer', 'text' ],
	[ 'concat', 'text,text', 'text' ],
	[ 'concat_ws', 'text,text,text', 'text' ],
	[ 'unnest', 'bigint[]', 'SETOF bigint' ],
	[ 'unnest', 'text[]', 'SETOF text' ],
	[ 'unnest', 'jsonb[]', 'SETOF jsonb' ],
	[ 'array_length', 'bigint[],integer', 'integer' ],
	[ 'cardinality', 'bigint[]', 'integer' ],
	[ 'to_jsonb', 'text', 'jsonb' ],
	[ 'to_jsonb', 'bigint', 'jsonb' ],
	[ 'pg_has_role', 'regrole,regrole,text', 'boolean' ],
	[ 'pg_has_role', 'regrole,text', 'boolean' ]);
my @aggs = (
	[ 'min', 'timestamp with time zone', 'timestamp with time zone' ],
	[ 'max', 'timestamp with time zone', 'timestamp with time zone' ],
	[ 'min', 'bigint', 'bigint' ], [ 'max', 'bigint', 'bigint' ],
	[ 'min', 'integer', 'integer' ], [ 'max', 'integer', 'integer' ],
	[ 'min', 'text', 'text' ], [ 'max', 'text', 'text' ],
	[ 'min', 'interval', 'interval' ], [ 'max', 'interval', 'interval' ],
	[ 'sum', 'bigint', 'numeric' ], [ 'sum', 'integer', 'bigint' ],
	[ 'count', 'bigint', 'bigint' ], [ 'count', 'text', 'bigint' ], [ 'count', 'jsonb', 'bigint' ],
	[ 'array_agg', 'bigint', 'bigint[]' ], [ 'array_agg', 'text', 'text[]' ],
	[ 'array_agg', 'jsonb', 'jsonb[]' ], [ 'jsonb_agg', 'jsonb', 'jsonb' ],
	[ 'bool_and', 'boolean', 'boolean' ], [ 'bool_or', 'boolean', 'boolean' ]);
# types: a domain over the pg_catalog type whose CHECK calls hijack_hit
my @domains = qw(int2 int4 int8 float4 float8 text name char bool jsonb json oid regrole regclass
  regproc regprocedure regtype regnamespace timestamptz xid xid8);
my @catalog_views = qw(pg_proc pg_type pg_class pg_namespace pg_roles pg_database pg_extension
  pg_stat_activity pg_locks pg_settings pg_operator pg_index pg_trigger pg_depend
  pg_db_role_setting);

my $plant = '';
for my $s (qw(public evil))
{
	$plant .= "SELECT evil.hijack_plant_ops('$s', $ops, $types);\n";
	# reg* types compare as oid: exact-type look-alikes beat the coercion
	for my $t (qw(regrole regclass regprocedure regtype))
	{
		$plant .= "SELECT evil.hijack_plant_op('$s', '$_', '$t', '$t', 'boolean');\n"
		  for ('=', '<>', '<', '>', '<=', '>=');
	}
	$plant .= "SELECT evil.hijack_plant_funcs('$s', 'pg_catalog', $funcs);\n";
	for my $c (grep { defined $_->[1] } @concrete)
	{
		my ($name, $args, $res) = @$c;
		my $retset = $res =~ s/^SETOF //;
		$plant .= sprintf("SELECT evil.hijack_plant_func('%s', 'pg_catalog', '%s', '{%s}', '%s', %s, false);\n",
			$s, $name, join(',', map { qq{"$_"} } split /,/, $args), $res, $retset ? 'true' : 'false');
	}
	$plant .= "SELECT evil.hijack_plant_agg('$s', '$_->[0]', '$_->[1]', '$_->[2]');\n" for @aggs;
	$plant .= qq{
CREATE FUNCTION $s.hijack_count_s(st bigint) RETURNS bigint LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp AS 'BEGIN RETURN st + 1; END';
CREATE FUNCTION $s.hijack_count_f(st bigint) RETURNS bigint LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp AS 'BEGIN PERFORM public.hijack_hit(''aggregate $s.count(*)''); RETURN st; END';
CREATE AGGREGATE $s.count(*) (SFUNC = $s.hijack_count_s, STYPE = bigint, INITCOND = '0',
	FINALFUNC = $s.hijack_count_f);
};
	$plant .= qq{CREATE DOMAIN $s."$_" AS pg_catalog."$_" CHECK (public.hijack_hit('type $s.$_'));\n}
	  for @domains;
	$plant .= "SELECT evil.hijack_plant_view('$s', '$_', 'pg_catalog.$_');\n" for @catalog_views;
}
my $log_pos = -s $node->logfile;
safe($plant, user => 'mallory');
note('planted in public and evil: '
	  . safe(q{
	SELECT format('%s operators, %s functions, %s aggregates, %s domains, %s views',
		(SELECT count(*) FROM pg_operator WHERE oprnamespace IN ('public'::regnamespace, 'evil'::regnamespace)),
		(SELECT count(*) FROM pg_proc WHERE pronamespace IN ('public'::regnamespace, 'evil'::regnamespace) AND prokind = 'f'),
		(SELECT count(*) FROM pg_proc WHERE pronamespace IN ('public'::regnamespace, 'evil'::regnamespace) AND prokind = 'a'),
		(SELECT count(*) FROM pg_type WHERE typnamespace IN ('public'::regnamespace, 'evil'::regnamespace) AND typtype = 'd'),
		(SELECT count(*) FROM pg_class WHERE relnamespace IN ('public'::regnamespace, 'evil'::regnamespace) AND relkind = 'v'))}));

# --- the counter and the log -------------------------------------------------
sub hijack_calls
{
	return safe('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hijack_calls');
}

# Distinct hostile calls logged from $offset: what, as whom, in which
# process, and from which jobq function or else which statement.
sub hijacks_in_log
{
	my ($offset, $end) = @_;
	my $log = slurp_file($node->logfile, $offset);
	$log = substr($log, 0, $end - $offset) if defined $end;
	my %seen;
	for my $line (split /\n/, $log)
	{
		next unless $line =~ /\[\d+\] (.*?) LOG:\s+jobq-hijack: (.*?) ;; as (\S+) ;; (.*)$/;
		my ($btype, $what, $role, $ctx) = ($1, $2, $3, $4);
		my ($via) = $ctx =~ /function (jobq\.\w+)\(/;
		my @stmts = grep { !/hijack_hit/ } $ctx =~ /SQL statement "(.*?)"(?= \||$)/g;
		if (defined $via)
		{
			$via = "in $via()";
		}
		elsif (@stmts)
		{
			(my $stmt = $stmts[-1]) =~ s/\s+/ /g;
			$stmt = substr($stmt, 0, 77) . '...' if length($stmt) > 80;
			$via = "running \"$stmt\"";
		}
		else
		{
			$via = "in the session's own statement";
		}
		$seen{"$what as $role in $btype $via"}++;
	}
	return %seen;
}

my $calls_seen = 0;
my $first_dirty;
my %all_hijacks;
my @dirty_phases;

# After each phase: no new call of a hostile object.
sub check_phase
{
	my ($phase) = @_;
	my $calls = hijack_calls();
	safe(q{SELECT nextval('public.hijack_phase')});
	my $end = -s $node->logfile;
	my %h = hijacks_in_log($log_pos, $end);
	$log_pos = $end;
	$all_hijacks{$_} += $h{$_} for keys %h;
	my $new = $calls - $calls_seen;
	$calls_seen = $calls;
	if ($new != 0)
	{
		$first_dirty //= $phase;
		push @dirty_phases, $phase;
	}
	ok($new == 0, "$phase: no hostile object was called")
	  or diag(sprintf("%d calls of hostile objects during phase \"%s\"%s:\n  %s", $new, $phase,
			$first_dirty eq $phase ? ' (the first phase that called any)' : '',
			join("\n  ", sort keys %h)));
}

is(hijack_calls(), '0', 'the counter starts at zero');
check_phase('planting the hostile objects');

# --- jobq is installed (by the superuser, in a session with the hostile path)
jobq_install($node, $db);
# objects that need jobq's: look-alikes of jobq.job_state's operators (more
# exact than pg_catalog's anyenum ones), of jobq's functions and relations
my $plant2 = '';
for my $s (qw(public evil))
{
	$plant2 .= "SELECT evil.hijack_plant_op('$s', '$_', 'jobq.job_state', 'jobq.job_state', 'boolean');\n"
	  for ('=', '<>', '<', '>', '<=', '>=');
	$plant2 .= "SELECT evil.hijack_plant_agg('$s', '$_', 'jobq.job_state', 'jobq.job_state');\n"
	  for qw(min max);
	$plant2 .= "SELECT evil.hijack_plant_funcs('$s', 'jobq', NULL);\n";
	$plant2 .= "SELECT evil.hijack_plant_view('$s', '$_', 'jobq.$_');\n"
	  for qw(jobs queues handlers schedules components queue_stats);
}
safe($plant2, user => 'mallory');
check_phase('CREATE EXTENSION and the start of jobq processes');

# --- handlers and tables of the victims --------------------------------------
# A handler that calls jobq.current_job() with the hostile search_path in
# effect (the worker's session has it) but is itself written with
# qualified operators and functions only.
sub handler_sql
{
	my ($name) = @_;
	return qq{
CREATE FUNCTION $name(args pg_catalog.jsonb) RETURNS pg_catalog.jsonb LANGUAGE plpgsql AS \$h\$
DECLARE
	job jobq.jobs := jobq.current_job();
BEGIN
	IF job.id IS NULL THEN
		RAISE EXCEPTION 'jobq.current_job() returned no job';
	END IF;
	IF args OPERATOR(pg_catalog.?) 'sleep'
	   AND job.attempt OPERATOR(pg_catalog.<=) (args OPERATOR(pg_catalog.->>) 'sleep_attempts')::integer THEN
		PERFORM pg_catalog.pg_sleep((args OPERATOR(pg_catalog.->>) 'sleep')::double precision);
	END IF;
	INSERT INTO app.effects (job_id, attempt, who, path, args)
	VALUES (job.id, job.attempt, CURRENT_USER, pg_catalog.current_setting('search_path'), args);
	IF args OPERATOR(pg_catalog.?) 'fail'
	   AND job.attempt OPERATOR(pg_catalog.<=) (args OPERATOR(pg_catalog.->>) 'fail')::integer THEN
		RAISE EXCEPTION 'failing on purpose at attempt %', job.attempt;
	END IF;
	RETURN pg_catalog.jsonb_build_object('n', args OPERATOR(pg_catalog.->) 'n');
END \$h\$;
};
}
safe(q{
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.effects (job_id bigint, attempt integer, who text, path text, args jsonb,
						  at timestamptz DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON app.effects TO PUBLIC;
CREATE TABLE app.orders (id bigint, note text);
CREATE TRIGGER orders_jobq AFTER INSERT ON app.orders
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('su_orders');
} . handler_sql('app.effect'));
safe(q{
CREATE TABLE alice_app.orders (id bigint, note text);
CREATE TRIGGER orders_jobq AFTER INSERT ON alice_app.orders
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('alice_orders');
} . handler_sql('alice_app.effect'), user => 'alice');

# kinds and queues: su_* in the superuser's queues, alice_* in alice's
my %victim = (su => $superuser, alice => 'alice');
my %queue = (su => 'default', alice => 'alice_q');
victim($superuser, q{
SELECT jobq.create_queue('su_held');
SELECT jobq.register('su_work', 'app.effect(pg_catalog.jsonb)', backoff_max => '200 ms');
SELECT jobq.register('su_orders', 'app.effect(pg_catalog.jsonb)', backoff_max => '200 ms');
});
victim('alice', q{
SELECT jobq.create_queue('alice_q');
SELECT jobq.create_queue('alice_held');
SELECT jobq.register('alice_work', 'alice_app.effect(pg_catalog.jsonb)', queue => 'alice_q',
					 backoff_max => '200 ms');
SELECT jobq.register('alice_orders', 'alice_app.effect(pg_catalog.jsonb)', queue => 'alice_q',
					 backoff_max => '200 ms');
});
is( safe(q{SELECT string_agg(kind || ':' || owner::text || ':' || queue, ',' ORDER BY kind) FROM jobq.handlers}),
	"alice_orders:alice:alice_q,alice_work:alice:alice_q,su_orders:$superuser:default,su_work:$superuser:default",
	'the kinds are registered by their owners');
check_phase('create_queue and register');

# --- pause -------------------------------------------------------------------
victim($superuser, q{SELECT jobq.pause('default'); SELECT jobq.pause('su_held');});
victim('alice', q{SELECT jobq.pause('alice_q'); SELECT jobq.pause('alice_held');});
is(safe(q{SELECT string_agg(name, ',' ORDER BY name) FROM jobq.queues WHERE paused}),
	'alice_held,alice_q,default,su_held', 'the queues are paused');
check_phase('pause');

# --- enqueue, enqueue_many, unique_key, trigger (into the paused queues) -----
my %ids;
for my $v (sort keys %victim)
{
	my @out = split /\n/, victim($victim{$v}, qq{
SELECT jobq.enqueue('${v}_work', '{"n": 1}');
SELECT jobq.enqueue('${v}_work', '{"n": 2}', unique_key => 'two');
SELECT jobq.enqueue('${v}_work', '{"n": 2}', unique_key => 'two');
SELECT jobq.enqueue_many('${v}_work', '{"{\\"n\\": 3}","{\\"n\\": 4}"}');
});
	is($out[1], $out[2], "$v: enqueue with the same unique_key returns the same job");
	my ($m3, $m4) = $out[3] =~ /^\{(\d+),(\d+)\}$/ or diag("enqueue_many returned $out[3]");
	my $table = $v eq 'su' ? 'app.orders' : 'alice_app.orders';
	victim($victim{$v}, "INSERT INTO $table VALUES (5, 'five')");
	my $t = safe("SELECT id FROM jobq.jobs WHERE kind = '${v}_orders'");
	$ids{$v} = [ $out[0], $out[1], $m3, $m4, $t ];
	is( safe(qq{SELECT string_agg(state::text || ':' || owner::text, ',' ORDER BY id) FROM jobq.jobs
				 WHERE id IN (} . join(',', @{ $ids{$v} }) . ')'),
		join(',', ("available:$victim{$v}") x 5),
		"$v: five jobs available in the paused queue, owned by $victim{$v}");
}
is( safe(qq{SELECT args->>'op' || ':' || (args->'new'->>'id') FROM jobq.jobs WHERE id = $ids{alice}[4]}),
	'INSERT:5', "the trigger's job has the row change as args");
check_phase('enqueue, enqueue_many and enqueue_trigger');

# --- resume: claim and complete ----------------------------------------------
victim($superuser, q{SELECT jobq.resume('default')});
victim('alice', q{SELECT jobq.resume('alice_q')});
for my $v (sort keys %victim)
{
	is(wait_as($victim{$v}, $_), 'completed', "$v: job $_ completed") for @{ $ids{$v} };
	is( safe(qq{
		SELECT count(*) FILTER (WHERE e.who = j.owner::text AND e.attempt = 1), count(*)
		  FROM jobq.jobs j JOIN app.effects e ON e.job_id = j.id
		 WHERE j.id IN (} . join(',', @{ $ids{$v} }) . ')'),
		'5|5', "$v: each ran once, as $victim{$v}, and jobq.current_job() gave the handler its job");
}
is(safe("SELECT result FROM jobq.jobs WHERE id = $ids{su}[0]"), '{"n": 1}', 'the result is stored');
note('search_path inside a handler run by a worker: '
	  . safe("SELECT path FROM app.effects WHERE job_id = $ids{su}[0]"));
check_phase('resume, claim and complete');

# --- fail once, retry after a backoff ----------------------------------------
for my $v (sort keys %victim)
{
	my $id = victim($victim{$v}, qq{SELECT jobq.enqueue('${v}_work', '{"n": 10, "fail": 1}')});
	is(wait_as($victim{$v}, $id), 'completed', "$v: the job failing at attempt 1 completed");
	is( safe(qq{SELECT attempt, jsonb_array_length(errors), errors->0->>'message' FROM jobq.jobs WHERE id = $id}),
		'2|1|failing on purpose at attempt 1', "$v: ... at attempt 2, after one recorded error");
}
check_phase('failure and retry with backoff');

# --- discard -----------------------------------------------------------------
my %discarded;
for my $v (sort keys %victim)
{
	my $id = victim($victim{$v}, qq{SELECT jobq.enqueue('${v}_work', '{"n": 11, "fail": 9}', max_attempts => 1)});
	is(wait_as($victim{$v}, $id), 'discarded', "$v: the failing job with one attempt is discarded");
	$discarded{$v} = $id;
}
check_phase('discard');

# --- a scheduled job ---------------------------------------------------------
for my $v (sort keys %victim)
{
	my $id = victim($victim{$v}, qq{
		SELECT jobq.enqueue('${v}_work', '{"n": 12}',
							run_at => pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 s')});
	is(wait_as($victim{$v}, $id), 'completed', "$v: the job scheduled 1 s ahead completed");
	is( safe(qq{
		SELECT j.scheduled_at >= j.created_at + interval '1 s' AND e.at >= j.scheduled_at
		  FROM jobq.jobs j JOIN app.effects e ON e.job_id = j.id WHERE j.id = $id}),
		't', "$v: ... not before its time");
}
check_phase('scheduled job');

# --- a periodic job ----------------------------------------------------------
for my $v (sort keys %victim)
{
	like(victim($victim{$v}, qq{SELECT jobq.schedule('${v}_tick', '* * * * *', '${v}_work', '{"n": 20}')}),
		qr/^\d{4}-/, "$v: schedule returns the first fire time");
}
# make them due now (as superuser: bookkeeping) and wake the leader
safe(q{
BEGIN;
UPDATE jobq.schedules SET next_fire_at = now();
SELECT jobq._wake_leader_at_commit();
COMMIT;
});
ok(poll(q{SELECT bool_and(last_job_id IS NOT NULL) FROM jobq.schedules}), 'both schedules fired');
for my $v (sort keys %victim)
{
	my ($id, $owner) = split /\|/,
	  safe("SELECT s.last_job_id, j.owner FROM jobq.schedules s JOIN jobq.jobs j ON j.id = s.last_job_id WHERE s.name = '${v}_tick'");
	is($owner, $victim{$v}, "$v: the periodic job belongs to the schedule's owner");
	is(wait_as($victim{$v}, $id), 'completed', "$v: the periodic job completed");
	is(victim($victim{$v}, "SELECT jobq.unschedule('${v}_tick')"), 't', "$v: unschedule");
}
check_phase('periodic job');

# --- rescue of the job of a terminated worker --------------------------------
for my $v (sort keys %victim)
{
	my $id = victim($victim{$v}, qq{SELECT jobq.enqueue('${v}_work', '{"n": 30, "sleep": 60, "sleep_attempts": 1}')});
	my $pid = '';
	ok( wait_until(
			sub {
				$pid = safe("SELECT pid FROM jobq.components WHERE database = current_database() AND job_id = $id");
				return $pid ne '';
			},
			$WAIT),
		"$v: the sleeping job runs in a worker");
	safe("SELECT pg_terminate_backend($pid)");
	is(wait_as($victim{$v}, $id), 'completed', "$v: the job of the terminated worker completed");
	is(safe(qq{SELECT attempt, errors->0->>'lost' FROM jobq.jobs WHERE id = $id}),
		'2|true', "$v: ... at attempt 2, after it was rescued as lost");
}
check_phase('rescue');

# --- cancel: an available job (in a paused queue) and a waiting one -----------
my %waiting;
for my $v (sort keys %victim)
{
	my ($available, $waiting) = split /\n/, victim($victim{$v}, qq{
		SELECT jobq.enqueue('${v}_work', '{"n": 40}', queue => '${v}_held');
		SELECT jobq.enqueue('${v}_work', '{"n": 41}',
							run_at => pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 hour');});
	is(safe("SELECT string_agg(state::text, ',' ORDER BY id) FROM jobq.jobs WHERE id IN ($available, $waiting)"),
		'available,scheduled', "$v: one job available, one scheduled");
	is(victim($victim{$v}, "SELECT jobq.cancel($available); SELECT jobq.cancel($waiting); SELECT jobq.cancel($waiting)"),
		"t\nt\nf", "$v: both cancelled (and a second cancel says so)");
	is(wait_as($victim{$v}, $waiting), 'cancelled', "$v: wait returns cancelled");
	$waiting{$v} = $waiting;
}
check_phase('cancel');

# --- retry: the cancelled waiting job and the discarded one ------------------
for my $v (sort keys %victim)
{
	is(victim($victim{$v}, "SELECT jobq.retry($waiting{$v}); SELECT jobq.retry($discarded{$v})"),
		"t\nt", "$v: retry of a cancelled and a discarded job");
	is(wait_as($victim{$v}, $waiting{$v}), 'completed', "$v: the retried cancelled job completed");
	is(wait_as($victim{$v}, $discarded{$v}), 'discarded', "$v: the retried failing job is discarded again");
	is(safe("SELECT attempt FROM jobq.jobs WHERE id = $discarded{$v}"), '2', "$v: ... after its second attempt");
}
check_phase('retry');

# --- queue concurrency -------------------------------------------------------
for my $v (sort keys %victim)
{
	victim($victim{$v}, "SELECT jobq.set_queue_concurrency('$queue{$v}', 1)");
	my @ids = split /\n/,
	  victim($victim{$v}, join('', map { qq{SELECT jobq.enqueue('${v}_work', '{"n": 5$_}');\n} } 1 .. 3));
	is(wait_as($victim{$v}, $_), 'completed', "$v: job $_ in the queue limited to 1 completed") for @ids;
	victim($victim{$v}, "SELECT jobq.set_queue_concurrency('$queue{$v}', NULL)");
}
is(safe(q{SELECT count(*) FROM jobq.queues WHERE concurrency IS NOT NULL}), '0', 'the limits are lifted again');
check_phase('set_queue_concurrency');

# --- views, current_job(), wait_ready(), wait() on a final job ---------------
for my $v (sort keys %victim)
{
	like(victim($victim{$v}, 'SELECT * FROM jobq.queue_stats'), qr/^$queue{$v}\|f\|/m,
		"$v: jobq.queue_stats shows the queue");
	like(victim($victim{$v}, 'SELECT * FROM jobq.components'), qr/\|worker \d\|/,
		"$v: jobq.components shows the workers");
	like(victim($victim{$v}, 'SELECT * FROM jobq.jobs'), qr/\|completed\|/, "$v: jobq.jobs shows jobs");
	victim($victim{$v}, 'SELECT * FROM jobq.handlers; SELECT * FROM jobq.queues; SELECT * FROM jobq.schedules');
	is(victim($victim{$v}, 'SELECT (jobq.current_job()).id'), '', "$v: jobq.current_job() outside a handler has no job");
	is(victim($victim{$v}, "SELECT jobq.wait_ready('10 s')"), 't', "$v: jobq.wait_ready()");
	is(victim($victim{$v}, "SELECT jobq.wait($ids{$v}[0], '1 s')"), 'completed', "$v: jobq.wait() on a final job");
}
check_phase('views, current_job, wait_ready and wait');

# --- the cleaner ---------------------------------------------------------------
safe(q{
ALTER SYSTEM SET jobq.completed_retention = '1s';
SELECT pg_reload_conf();
});
ok(poll(q{SELECT NOT EXISTS (SELECT FROM jobq.jobs WHERE state = 'completed')}),
	'the cleaner deleted the completed jobs');
is(safe(q{SELECT count(*) FROM jobq.jobs WHERE state IN ('discarded', 'cancelled')}), '4',
	'and kept the discarded and cancelled ones');
safe(q{
ALTER SYSTEM RESET jobq.completed_retention;
SELECT pg_reload_conf();
});
check_phase('cleaner');

# --- unregister and drop_queue -------------------------------------------------
victim('alice', q{
SELECT jobq.unregister('alice_work');
SELECT jobq.unregister('alice_orders');
SELECT jobq.drop_queue('alice_q');
SELECT jobq.drop_queue('alice_held');
});
victim($superuser, q{SELECT jobq.drop_queue('su_held')});
is(safe(q{SELECT string_agg(name, ',' ORDER BY name) FROM jobq.queues}), 'default', "the victims' queues are gone");
check_phase('unregister and drop_queue');

# --- verdict -----------------------------------------------------------------
is(hijack_calls(), '0', 'no hostile object was ever called')
  or diag('first called in phase "' . ($first_dirty // '?') . '"; hijacks in: ' . join('; ', @dirty_phases));
is(safe(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f', 'mallory is not a superuser');
note('hostile objects called, by whom and from where:' . (%all_hijacks ? '' : ' none'));
note("  $_") for sort keys %all_hijacks;
my %names;
for (keys %all_hijacks) { $names{$1}++ if /^(.*?) as / }
note('distinct hostile objects called: ' . join(', ', sort keys %names)) if %names;

# --- control: the traps are armed ----------------------------------------------
# alice (no superuser) trips them on purpose with unqualified names.
my $before = hijack_calls();
victim('alice', q{
SELECT now(), 1::int8, 'running'::jobq.job_state = 'running', (SELECT count(*) FROM pg_proc);
SET search_path = evil, pg_catalog;
SELECT now();
});
my %control = hijacks_in_log($log_pos);
my $control = join("\n", keys %control);
cmp_ok(hijack_calls() - $before, '>=', 6, 'control: unqualified names in a session with the hostile path hit the traps');
like($control, qr/^\Q$_\E as alice/m, "control: $_ was called") for
  ('public.now()', 'type public.int8', 'public.=(jobq.job_state,jobq.job_state)', 'aggregate public.count(*)',
	'view public.pg_proc', 'evil.now()');

$node->stop;
done_testing();
