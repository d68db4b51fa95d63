/* backoff.c - how long a waiting request pauses before its next attempt. */
#include "backoff.h"

uint64_t bl_backoff_next(const bl_backoff *b, double *step, uint64_t rnd, uint64_t now,
                         uint64_t deadline)
{
    double s = *step <= 0 ? b->initial_ms : *step * b->multiplier;
    if (s > b->max_ms)
        s = b->max_ms;
    if (s < 1)
        s = 1;
    *step = s;
    /* Equal jitter: keep half the pause, randomise the other half, so
     * waiters that collided once spread out without ever spinning. */
    double half = s / 2.0;
    double frac = (double)(rnd >> 11) / (double)(1ULL << 53); /* [0,1) */
    uint64_t pause = (uint64_t)(half + frac * half + 0.5);
    if (pause < 1)
        pause = 1;
    if (now >= deadline)
        return 0;
    if (pause > deadline - now)
        pause = deadline - now;
    return pause;
}
