/* ids.c - key validation, key building, holder ids and randomness. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "ids.h"

int bl_einval(char *why, size_t why_len, const char *fmt, ...)
{
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return BL_EINVAL;
}

/* Control characters and ASCII whitespace would make keys ambiguous in logs,
 * redis-cli and shell scripts; bytes >= 0x80 (UTF-8) are fine. */
static int bad_byte(unsigned char c)
{
    return c <= 0x20 || c == 0x7f;
}

int bl_validate_id(const char *id, int is_marketplace, char *why, size_t why_len)
{
    const char *what = is_marketplace ? "marketplace" : "posting";
    if (!id)
        return bl_einval(why, why_len, "%s is NULL", what);
    size_t n = strnlen(id, BL_ID_MAX + 1);
    if (n == 0)
        return bl_einval(why, why_len, "%s is empty", what);
    if (n > BL_ID_MAX)
        return bl_einval(why, why_len, "%s is longer than 256 bytes", what);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (bad_byte(c))
            return bl_einval(why, why_len, "%s contains whitespace or a control character", what);
        if (is_marketplace && c == ':')
            return bl_einval(why, why_len, "%s contains ':'", what);
        if (c == '}')
            return bl_einval(why, why_len,
                             "%s contains '}', which would end the Redis Cluster hash tag "
                             "{<lock key>} of the lock's other keys early", what);
    }
    return 0;
}

int bl_validate_prefix(const char *prefix, char *why, size_t why_len)
{
    if (!prefix || !*prefix)
        return bl_einval(why, why_len, "%s is empty", "key_prefix");
    size_t n = strnlen(prefix, BL_PREFIX_MAX + 1);
    if (n > BL_PREFIX_MAX)
        return bl_einval(why, why_len, "%s is longer than 64 bytes", "key_prefix");
    for (size_t i = 0; i < n; i++) {
        if (bad_byte((unsigned char)prefix[i]))
            return bl_einval(why, why_len, "%s contains whitespace or a control character",
                        "key_prefix");
        if (prefix[i] == '}')
            return bl_einval(why, why_len,
                             "%s contains '}', which would end the Redis Cluster hash tag "
                             "{<lock key>} of the lock's other keys early", "key_prefix");
    }
    /* Names that start with '{' are the tagged ones ("{<lock key>}:q"):
     * a lock key never does, so the two kinds cannot be mistaken. */
    if (prefix[0] == '{')
        return bl_einval(why, why_len,
                         "%s may not start with '{' (bidlock's hash-tagged key names "
                         "start with it)", "key_prefix");
    /* "<prefix>::..." names the fence/queue/done keys; keep them apart. */
    if (prefix[n - 1] == ':' || strstr(prefix, "::"))
        return bl_einval(why, why_len, "%s may not end with ':' or contain '::'", "key_prefix");
    return 0;
}

int bl_make_holder(char *buf, size_t len)
{
    char host[256];
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0'; /* gethostname need not terminate a cut name */
    /* ':' separates the fields; keep the host part free of it. */
    for (char *p = host; *p; p++)
        if (*p == ':' || bad_byte((unsigned char)*p))
            *p = '_';
    uuid_t u;
    char us[37];
    uuid_generate_random(u); /* v4 from the kernel: unguessable */
    uuid_unparse_lower(u, us);
    int n = snprintf(buf, len, "%.200s:%ld:%s", host, (long)getpid(), us);
    return (n > 0 && (size_t)n < len) ? 0 : BL_ENOMEM;
}

uint64_t bl_random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^
            ((uint64_t)getpid() << 32);
    }
    return s;
}

uint64_t bl_rand_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t bl_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int bl_validate_holder(const char *holder, char *why, size_t why_len)
{
    size_t n = strnlen(holder, BL_HOLDER_MAX);
    if (n == 0)
        return bl_einval(why, why_len, "holder is empty");
    if (n >= BL_HOLDER_MAX)
        return bl_einval(why, why_len, "holder is longer than %d bytes", BL_HOLDER_MAX - 1);
    if (holder[0] == '~')
        return bl_einval(why, why_len, "holder starts with '~' (the mark of a reserved lock)");
    for (size_t i = 0; i < n; i++)
        if (bad_byte((unsigned char)holder[i]))
            return bl_einval(why, why_len, "holder contains whitespace or a control character");
    return 0;
}
