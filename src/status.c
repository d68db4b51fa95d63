/* status.c - names and sentences for status codes. */
#include "bidlock.h"

const char *bl_strerror(int status)
{
    switch (status) {
    case BL_OK: return "success";
    case BL_ETIMEDOUT: return "lock not acquired before the deadline";
    case BL_EBUSY: return "lock is held by another holder";
    case BL_ENOTHELD: return "lock is not held by this holder (expired or taken over)";
    case BL_ECONN: return "Redis connection error";
    case BL_EREDIS: return "Redis replied with an error";
    case BL_EINVAL: return "invalid argument";
    case BL_ECANCELED: return "request cancelled";
    case BL_ENOMEM: return "out of memory";
    case BL_ECLOSED: return "manager is closing";
    case BL_EDONE: return "posting is already done";
    case BL_ELOST: return "lock was lost while held";
    default: return "unknown status";
    }
}

const char *bl_status_name(int status)
{
    switch (status) {
    case BL_OK: return "BL_OK";
    case BL_ETIMEDOUT: return "BL_ETIMEDOUT";
    case BL_EBUSY: return "BL_EBUSY";
    case BL_ENOTHELD: return "BL_ENOTHELD";
    case BL_ECONN: return "BL_ECONN";
    case BL_EREDIS: return "BL_EREDIS";
    case BL_EINVAL: return "BL_EINVAL";
    case BL_ECANCELED: return "BL_ECANCELED";
    case BL_ENOMEM: return "BL_ENOMEM";
    case BL_ECLOSED: return "BL_ECLOSED";
    case BL_EDONE: return "BL_EDONE";
    case BL_ELOST: return "BL_ELOST";
    default: return "BL_UNKNOWN";
    }
}
