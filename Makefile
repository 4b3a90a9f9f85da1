# jobq: PGXS build, install and tests.
#
#   make && make install                 build and install (as root)
#   make installcheck                    regress, isolation and TAP tests, each
#                                        on a throwaway cluster with jobq
#                                        preloaded (as a non-root user)
#   PG_CFLAGS=-Werror make               what CI builds with

EXTENSION = jobq
MODULE_big = jobq
OBJS = \
	src/api.o \
	src/backoff.o \
	src/cleaner.o \
	src/commit.o \
	src/cron.o \
	src/ddl.o \
	src/external.o \
	src/final_counts.o \
	src/guc.o \
	src/job_control.o \
	src/job_state.o \
	src/jobq.o \
	src/launcher.o \
	src/leader.o \
	src/metrics.o \
	src/periodic.o \
	src/plans.o \
	src/process.o \
	src/rescuer.o \
	src/roles.o \
	src/scheduler.o \
	src/settings.o \
	src/shmem.o \
	src/views.o \
	src/worker.o
DATA = $(wildcard sql/jobq--*.sql)

REGRESS = api errors security cron paused_queue external final_counts plans
REGRESS_OPTS = --temp-instance=tmp_regress --temp-config=test/jobq.conf
ISOLATION = claim_race unique_race cancel_claim
ISOLATION_OPTS = --inputdir=test --temp-instance=tmp_isolation --temp-config=test/isolation.conf
TAP_TESTS = 1
PROVE_TESTS = $(wildcard test/t/*.pl)
PROVE_FLAGS = -I test

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every module includes the shared header: a change to it (a shared-memory
# struct, say) must rebuild them all, or they disagree on its layout
$(OBJS): src/jobq.h
