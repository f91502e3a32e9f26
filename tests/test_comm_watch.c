/*
 * test_comm_watch.c: the NCCL watchdog's bookkeeping (src/comm/comm_watch.h),
 * which the GPU-only transport uses, driven here by a simulated stream.
 *
 * The stream runs collectives in issue order: collective i, issued at t[i], ends
 * at c[i] = max(c[i-1], t[i]) + d[i] (d = infinity: stuck, and everything after it
 * with it). The host issues them at random gaps, and between issues polls like
 * the watchdog thread (every POLL). Checked for every poll of every run:
 *  - never early: when the oldest pending slot's age exceeds the timeout T, some
 *    collective issued at least T ago is really still pending;
 *  - not postponed: a stuck collective issued while the ring had a free slot to
 *    spare is reported within T + POLL of its issue, however fast the host keeps
 *    issuing after it (with one slot, as before this ring, it never would be);
 *  - reported at all: a run with a stuck collective always ends in a timeout.
 */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../src/comm/comm_watch.h"

enum { MAXC = 4000 };
static const double T = 1.0, POLL = 0.01;

typedef struct sim {
    int n;
    double t[MAXC], c[MAXC];
    int in_slot[FAB__WATCH_SLOTS]; /* which collective each slot's marker follows */
    double now;
} sim;

static int pending(void *arg, int slot)
{
    sim *s = arg;
    return s->c[s->in_slot[slot]] > s->now;
}

/* some collective issued by now - T still pending at now */
static int really_late(const sim *s, int upto)
{
    for (int j = 0; j < upto; j++)
        if (s->t[j] <= s->now - T && s->c[j] > s->now)
            return 1;
    return 0;
}

/* One run: n collectives; returns the time of the timeout (INFINITY: none). */
static double run(sim *s, int n, double mean_gap, double mean_dur, int stuck, int *room_at_stuck)
{
    fab__watch w;
    memset(&w, 0, sizeof w);
    s->n = n;
    double prev_end = 0, tnow = 0;
    for (int i = 0; i < n; i++) {
        tnow += mean_gap * fab_test_uniform(0, 2);
        s->t[i] = tnow;
        double d = i == stuck ? INFINITY : mean_dur * fab_test_uniform(0, 2);
        s->c[i] = fmax(prev_end, s->t[i]) + d;
        prev_end = s->c[i];
    }
    double fault = INFINITY;
    double end = s->t[n - 1] + 3 * T;
    int issued = 0;
    for (s->now = 0; s->now < end && fault == INFINITY; s->now += POLL) {
        while (issued < n && s->t[issued] <= s->now) { /* arm(): retire, pick a slot, record */
            double keep = s->now;
            s->now = s->t[issued];
            (void)fab__watch_oldest_age(&w, pending, s, s->now);
            if (issued == stuck)
                *room_at_stuck = w.count <= FAB__WATCH_SLOTS - 2; /* a slot to spare after it */
            int slot = fab__watch_next_slot(&w);
            assert_true(slot >= 0 && slot < FAB__WATCH_SLOTS);
            s->in_slot[slot] = issued;
            fab__watch_commit(&w, slot, s->now);
            assert_true(w.count >= 1 && w.count <= FAB__WATCH_SLOTS);
            s->now = keep;
            issued++;
        }
        double age = fab__watch_oldest_age(&w, pending, s, s->now);
        if (age > T) {
            if (!really_late(s, issued))
                fail_msg("timeout reported at %.3f (age %.3f) with no collective pending for %.3f", s->now, age, T);
            fault = s->now;
        }
    }
    return fault;
}

static void test_random_runs(void **state)
{
    (void)state;
    static sim s;
    int stuck_runs = 0, quick = 0;
    for (int trial = 0; trial < 300; trial++) {
        fab_test_reseed((uint64_t)trial);
        int n = 50 + (int)(fab_test_rand_u64() % 400);
        double gap = 0.002 + 0.05 * fab_test_uniform(0, 1);
        /* the stream keeps up (a few in flight), or falls behind (the ring fills) */
        double dur = gap * (trial % 2 ? fab_test_uniform(0.05, 0.9) : fab_test_uniform(1.5, 6));
        int stuck = trial % 3 == 0 ? -1 : (int)(fab_test_rand_u64() % (uint64_t)n);
        int room = 0;
        double fault = run(&s, n, gap, dur, stuck, &room);
        if (stuck < 0) {
            /* no collective stuck: any timeout must have been genuine (checked in run) */
            continue;
        }
        stuck_runs++;
        if (fault == INFINITY)
            fail_msg("trial %d: collective %d of %d is stuck and no timeout came", trial, stuck, n);
        if (room) {
            quick++;
            if (fault > s.t[stuck] + T + 2 * POLL)
                fail_msg("trial %d: stuck collective issued at %.3f reported at %.3f, more than T + POLL later",
                         trial, s.t[stuck], fault);
        }
    }
    printf("# %d runs with a stuck collective, %d of them issued with room in the ring\n", stuck_runs, quick);
    assert_true(quick >= 40 && quick <= stuck_runs - 40); /* both cases were exercised */
}

/* The case the ring is for: the host keeps issuing (every POLL/2) behind a stuck
 * collective for 5 T. The watchdog must still report it within T + POLL. */
static void test_posting_does_not_postpone(void **state)
{
    (void)state;
    static sim s;
    fab_test_reseed(7);
    int room = 0;
    double fault = run(&s, MAXC, POLL / 4, POLL / 8, 10, &room);
    assert_true(room);
    assert_true(s.t[MAXC - 1] > s.t[10] + 5 * T);
    assert_true(fault <= s.t[10] + T + 2 * POLL);
    assert_true(fault >= s.t[10] + T);
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_runs),
        cmocka_unit_test(test_posting_does_not_postpone),
    };
    return fab_test_run(tests);
}
