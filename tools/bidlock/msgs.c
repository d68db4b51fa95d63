/* msgs.c - what the `bidlock` command says on stderr, and the exit code
 * (sysexits.h) of a library status. */
#include <stdarg.h>
#include <stdio.h>
#include <sysexits.h>

#include "tool.h"

void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *p = line; *p; p++) /* one line, whatever the message holds */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "bidlock: %s\n", line);
}

int usage_error(const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    say("%s (see 'bidlock --help')", msg);
    return EX_USAGE;
}

/* "Redis unavailable: Connection refused", "Redis error: NOAUTH ...". */
const char *detail(int status, const char *msg)
{
    static char buf[512];
    const char *what = status == BL_ECONN    ? "Redis unavailable"
                       : status == BL_EREDIS ? "Redis error"
                                             : bl_strerror(status);
    if (msg && *msg)
        snprintf(buf, sizeof buf, "%s: %s", what, msg);
    else
        snprintf(buf, sizeof buf, "%s", status == BL_ECONN ? "Redis unavailable" : bl_strerror(status));
    return buf;
}

int connection_code(int status)
{
    switch (status) {
    case BL_ECONN:
    case BL_EREDIS:
    case BL_ENOREPL: return EX_UNAVAILABLE; /* too few replicas acknowledged it */
    case BL_EINVAL: return EX_USAGE;
    case BL_ENOMEM: return EX_OSERR;
    default: return EX_SOFTWARE;
    }
}
