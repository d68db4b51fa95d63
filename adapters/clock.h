/* clock.h - the monotonic millisecond clock every adapter hands out. */
#ifndef BIDLOCK_ADAPTER_CLOCK_H
#define BIDLOCK_ADAPTER_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t bl_adapter_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
