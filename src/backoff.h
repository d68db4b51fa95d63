/* backoff.h - the waiting schedule, pure so it is testable (backoff.c). */
#ifndef BIDLOCK_BACKOFF_H
#define BIDLOCK_BACKOFF_H

#include <stdint.h>

typedef struct bl_backoff {
    double initial_ms, max_ms, multiplier;
} bl_backoff;

/* The pause before the next attempt. *step is the un-jittered pause of the
 * previous wait (0 before the first); it grows by multiplier up to max_ms.
 * The pause is drawn from [step/2, step] using rnd, and clamped so that it
 * never passes `deadline` (absolute ms, same clock as now). */
uint64_t bl_backoff_next(const bl_backoff *b, double *step, uint64_t rnd, uint64_t now,
                         uint64_t deadline);

#endif
