# README's client snippets (section "Clients") run as written against a
# real server: node-postgres, psycopg 3 and psycopg2 each enqueue a job with
# jsonb args and two with enqueue_many, wait for the first, and print what
# they got: the id's type in the language, the number of ids, the state and
# the result the handler returned.
#
# Skipped only when a driver is missing outside CI; under CI (CI=true) a
# missing driver fails (test/install_deps.sh installs them).
use strict;
use warnings;
use lib 'test';
use JobqTest;
use Cwd ();
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;

my $PYTHON = '/usr/bin/python3';    # Debian's, with python3-psycopg{,2}
my $NODE_MODULES = Cwd::abs_path('test/clients') . '/node_modules';

# The indented block after each "<!-- client: name -->" in README.md.
my %snippet;
{
	my $readme = slurp_file('README.md');
	while ($readme =~ /<!-- client: (\w+) -->\n((?:(?: {4}.*)?\n)+)/g)
	{
		my ($name, $block) = ($1, $2);
		$block =~ s/^ {4}//mg;
		$snippet{$name} = $block;
	}
}
is(join(',', sort keys %snippet), 'node,psycopg,psycopg2', 'README.md has the three client snippets');

my %available = (
	node => system("node -e \"require('$NODE_MODULES/pg')\" 2>/dev/null") == 0,
	psycopg => system("$PYTHON -c 'import psycopg' 2>/dev/null") == 0,
	psycopg2 => system("$PYTHON -c 'import psycopg2' 2>/dev/null") == 0);

my $node = jobq_node('clients', workers => 2);
jobq_install($node);
$node->safe_psql('postgres', q{
CREATE FUNCTION public.send_email(job_args jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT job_args';
SELECT jobq.register('send_email', 'public.send_email(jsonb)');
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my %run = (
	node => [ 'node', "$dir/snippet.js" ],
	psycopg => [ $PYTHON, "$dir/snippet_psycopg.py" ],
	psycopg2 => [ $PYTHON, "$dir/snippet_psycopg2.py" ]);
my %id_type = (node => 'string', psycopg => 'int', psycopg2 => 'int');
my %result = (
	node => '{"to":"ada@example.com","tags":["welcome"]}',
	psycopg => '{"to": "ada@example.com", "tags": ["welcome"]}',
	psycopg2 => '{"to": "ada@example.com", "tags": ["welcome"]}');

for my $name (sort keys %run)
{
	if (!$available{$name})
	{
		if (($ENV{CI} // '') eq 'true')
		{
			fail("the $name driver is missing (test/install_deps.sh installs it)");
		}
		else
		{
			note("skipping the $name snippet: its driver is missing");
		}
		next;
	}
	my $file = $run{$name}[1];
	open my $fh, '>', $file or die "cannot write $file: $!";
	print $fh $snippet{$name};
	close $fh;

	my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM jobq.jobs');
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGDATABASE} = 'postgres';
	local $ENV{NODE_PATH} = $NODE_MODULES;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run($run{$name}, '>', \$out, '2>', \$err, IPC::Run::timeout($JobqTest::TIMEOUT));
	ok($ok, "the $name snippet runs") or diag($err);
	chomp $out;
	is($out, "$id_type{$name} 2 completed $result{$name}",
		"$name: the id's type, two ids from enqueue_many, the job completed with its jsonb result");
	is($node->safe_psql('postgres', "SELECT count(*) - $before FROM jobq.jobs WHERE args ? 'to'"),
		'3', "$name: three jobs with their jsonb args");
}

$node->stop;
done_testing();
