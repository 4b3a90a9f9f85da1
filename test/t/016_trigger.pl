# Enqueueing from a trigger: AFTER INSERT OR UPDATE OR DELETE ... FOR EACH
# ROW EXECUTE FUNCTION jobq.enqueue_trigger('kind') enqueues one job per row
# change, whose handler receives op, schema, table, old and new; the job
# belongs to the role that changed the row; a rolled-back change enqueues
# nothing.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = jobq_node('trigger', workers => 2);
jobq_install($node);

$node->safe_psql('postgres', q{
CREATE ROLE bob;
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE TABLE app.items (id int PRIMARY KEY, name text);
GRANT SELECT, INSERT, UPDATE, DELETE ON app.items TO bob;
CREATE TABLE app.events (job_id bigint, op text, sch text, tbl text, old jsonb, new jsonb,
						 who text);
GRANT INSERT ON app.events TO PUBLIC;
CREATE FUNCTION app.on_item(args jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.events VALUES ((jobq.current_job()).id, args->>'op', args->>'schema',
		args->>'table', args->'old', args->'new', current_user);
END $$;
SELECT jobq.register('item_changed', 'app.on_item(jsonb)');
SELECT jobq.grant('kind', 'item_changed', 'public');
CREATE TRIGGER items_jobq AFTER INSERT OR UPDATE OR DELETE ON app.items
	FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('item_changed');
});

$node->safe_psql('postgres', q{INSERT INTO app.items VALUES (1, 'one')});
$node->safe_psql('postgres', q{UPDATE app.items SET name = 'uno' WHERE id = 1});
$node->safe_psql('postgres', q{DELETE FROM app.items WHERE id = 1});
# a multi-row statement: one job per row
$node->safe_psql('postgres', q{INSERT INTO app.items VALUES (2, 'two'), (3, 'three')});
# rolled back: nothing
$node->safe_psql('postgres', q{BEGIN; INSERT INTO app.items VALUES (4, 'ghost'); ROLLBACK});
my ($ret, $out, $err) = $node->psql('postgres',
	q{INSERT INTO app.items VALUES (5, 'ghost'), (2, 'duplicate')});
isnt($ret, 0, 'a failing insert fails');
# by another role
$node->safe_psql('postgres', q{SET ROLE bob; UPDATE app.items SET name = 'deux' WHERE id = 2});

is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM jobq.jobs WHERE kind = 'item_changed'}),
	'6',
	'six row changes enqueued six jobs; the rolled-back and failed ones none');

my @ids = split /\n/, $node->safe_psql('postgres',
	q{SELECT id FROM jobq.jobs WHERE kind = 'item_changed' ORDER BY id});
for my $id (@ids)
{
	is(wait_job($node, $id), 'completed', "trigger job $id completed");
}

is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(format('%s %s.%s old=%s new=%s by %s', op, sch, tbl,
		                           coalesce(old::text, '-'), coalesce(new::text, '-'), who),
		                    E'\n' ORDER BY job_id)
		    FROM app.events}),
	join("\n",
		'INSERT app.items old=null new={"id": 1, "name": "one"} by postgres',
		'UPDATE app.items old={"id": 1, "name": "one"} new={"id": 1, "name": "uno"} by postgres',
		'DELETE app.items old={"id": 1, "name": "uno"} new=null by postgres',
		'INSERT app.items old=null new={"id": 2, "name": "two"} by postgres',
		'INSERT app.items old=null new={"id": 3, "name": "three"} by postgres',
		'UPDATE app.items old={"id": 2, "name": "two"} new={"id": 2, "name": "deux"} by bob'),
	'each handler received op, schema, table, old and new, and ran as the role that changed the row');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.events WHERE new->>'name' = 'ghost'}),
	'0', 'no job for the rolled-back or failed inserts ran');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(owner::text, ',' ORDER BY id) FROM jobq.jobs WHERE kind = 'item_changed'}),
	'postgres,postgres,postgres,postgres,postgres,bob',
	'each job belongs to the role that changed the row');

# Misuse is refused with a clear error.
($ret, $out, $err) = $node->psql('postgres', q{
	CREATE TRIGGER items_bad BEFORE INSERT ON app.items
		FOR EACH ROW EXECUTE FUNCTION jobq.enqueue_trigger('item_changed');
	INSERT INTO app.items VALUES (10, 'ten')});
like($err, qr/must be fired AFTER \.\.\. FOR EACH ROW/, 'a BEFORE trigger is refused when it fires');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.items WHERE id = 10}), '0',
	'... and the insert fails');

$node->stop;
done_testing();
