/* status.c - names and sentences for status codes, from BL_STATUS_MAP, and
 * the library's version. */
#include "bidlock.h"

const char *bl_strerror(int status)
{
    switch (status) {
#define TEXT(name, value, text) \
    case name: return text;
        BL_STATUS_MAP(TEXT)
#undef TEXT
    default: return "unknown status";
    }
}

const char *bl_status_name(int status)
{
    switch (status) {
#define NAME(name, value, text) \
    case name: return #name;
        BL_STATUS_MAP(NAME)
#undef NAME
    default: return "BL_UNKNOWN";
    }
}

const char *bl_version(int *num)
{
    if (num)
        *num = BIDLOCK_VERSION_NUM;
    return BIDLOCK_VERSION;
}
