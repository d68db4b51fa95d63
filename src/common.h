/* common.h - limits every module shares. Not installed. */
#ifndef BIDLOCK_COMMON_H
#define BIDLOCK_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "bidlock.h"

#define BL_ID_MAX 256
#define BL_PREFIX_MAX 64
#define BL_HOLDER_MAX 320
/* bl_transfer's lease when the caller passes 0: long enough for the
 * receiver to take it over, short enough that a dead receiver costs little. */
#define BL_TRANSFER_DEFAULT_MS 5000
#define BL_ERRMSG_MAX 256
#define BL_MAX_MS (30ULL * 24 * 3600 * 1000) /* 30 days */

#endif
