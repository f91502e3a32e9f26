/*
 * comm_watch.h: the bookkeeping of the NCCL watchdog (comm_nccl.c), kept apart from
 * CUDA so that a CPU test (tests/test_comm_watch.c) can drive it.
 *
 * Per stream, a ring of FAB__WATCH_SLOTS slots, each "a marker recorded on the stream
 * after a collective (a CUDA event), and when that collective was issued". The
 * caller owns the markers; the ring says which slot to record into and asks the
 * caller whether a slot's marker is still pending.
 *
 * Guarantees (the stream runs in order, so a marker completes after every earlier one):
 *  - never early: the age reported is that of a collective still pending, since the
 *    time it was issued, so a timeout on it is real;
 *  - not postponed by later posts: a full ring re-records only its newest slot; the
 *    older slots keep their times. A stuck collective issued with a slot to spare
 *    is reported one timeout after its issue however many follow it; one issued
 *    into the last free slot may be reported later, by as long as the ring stays
 *    full after it.
 */
#ifndef FAB_COMM_WATCH_H
#define FAB_COMM_WATCH_H

enum { FAB__WATCH_SLOTS = 8 };

typedef struct fab__watch {
    double posted[FAB__WATCH_SLOTS]; /* when the collective behind each slot was issued */
    int head, count;                 /* the slots in flight, oldest first */
} fab__watch;

/* Is the marker in slot i still pending? (1 yes, 0 no: done, or an error that the
 * next CUDA call reports, which is not the watchdog's to judge.) */
typedef int (*fab__watch_pending_fn)(void *arg, int slot);

/* Retires the slots whose markers are done; returns how long the oldest one still
 * pending has been, at time `now` (0 when none is). */
static inline double fab__watch_oldest_age(fab__watch *w, fab__watch_pending_fn pending, void *arg, double now)
{
    while (w->count > 0) {
        if (pending(arg, w->head))
            return now - w->posted[w->head];
        w->head = (w->head + 1) % FAB__WATCH_SLOTS;
        w->count--;
    }
    return 0;
}

/* The slot to record the next marker into: the next free one, or the newest when
 * all are in flight (call fab__watch_oldest_age first to free the done ones). */
static inline int fab__watch_next_slot(const fab__watch *w)
{
    int full = w->count == FAB__WATCH_SLOTS;
    return (w->head + w->count - full) % FAB__WATCH_SLOTS;
}

/* After the marker was recorded into `slot` (fab__watch_next_slot's) at `now`. */
static inline void fab__watch_commit(fab__watch *w, int slot, double now)
{
    w->posted[slot] = now;
    if (w->count < FAB__WATCH_SLOTS)
        w->count++;
}

#endif
