# A server without jobq in shared_preload_libraries: CREATE EXTENSION jobq
# is a plain ERROR (55000, with a hint) and the session lives on; a
# pg_restore of a database that uses jobq restores everything else.
use strict;
use warnings;
use lib 'test';
use JobqTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;

# One session: the CREATE EXTENSION fails, the next statement still runs.
my ($ret, $out, $err) = $plain->psql('postgres', q{
\set VERBOSITY verbose
CREATE EXTENSION jobq;
SELECT 'session alive';
}, on_error_stop => 0);
like($err, qr/ERROR:\s+55000: jobq must be loaded via shared_preload_libraries/,
	'CREATE EXTENSION without preloading is ERROR 55000');
like($err, qr/HINT:\s+Add jobq to shared_preload_libraries/, 'with a hint');
unlike($err, qr/FATAL|server closed the connection/, 'no FATAL');
is($out, 'session alive', 'the session goes on after the error');
is($plain->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'jobq'"),
	'0', 'nothing was created');

# Loading the library by creating one of its C functions is no FATAL either.
($ret, $out, $err) = $plain->psql('postgres', q{
CREATE FUNCTION jobq_probe() RETURNS void LANGUAGE C AS '$libdir/jobq', 'jobq_require_preload_sql';
SELECT jobq_probe();
SELECT 'still alive';
}, on_error_stop => 0);
like($err, qr/jobq must be loaded via shared_preload_libraries/, 'its functions refuse to run');
is($out, 'still alive', 'the session survives loading the library');

# A dump of a database using jobq, restored onto this server: the extension
# fails, the application's own objects and data arrive.
my $src = jobq_node('source', workers => 1);
jobq_install($src);
$src->safe_psql('postgres', q{
CREATE TABLE app_data (id int PRIMARY KEY, note text);
INSERT INTO app_data SELECT g, 'row ' || g FROM generate_series(1, 100) g;
CREATE VIEW app_view AS SELECT count(*) AS n FROM app_data;
});
my $dump = PostgreSQL::Test::Utils::tempdir() . '/source.dump';
$src->command_ok([ 'pg_dump', '-Fc', '-d', $src->connstr('postgres'), '-f', $dump ],
	'dump of a database using jobq');
$plain->safe_psql('postgres', 'CREATE DATABASE restored');
my ($stdout, $stderr) = ('', '');
IPC::Run::run([ 'pg_restore', '-d', $plain->connstr('restored'), $dump ],
	'>', \$stdout, '2>', \$stderr);
like($stderr, qr/jobq must be loaded via shared_preload_libraries/,
	'the restore reports why jobq could not be created');
unlike($stderr, qr/FATAL|server closed the connection/, 'the restore session was not killed');
is($plain->safe_psql('restored', 'SELECT n FROM app_view'), '100',
	'the rest of the database was restored');

$src->stop;
$plain->stop;
done_testing();
