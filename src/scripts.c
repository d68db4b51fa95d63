/* scripts.c - Lua bodies. KEYS[1] is the lock key, ARGV[1] the holder id.
 * Both return 1 (done) or 0 (taken / not ours); anything else is an error. */
#include "scripts.h"

const bl_script bl_scripts[BL_SCRIPT_COUNT] = {
    [BL_SCRIPT_ACQUIRE] = {"acquire",
                           /* ARGV[2]: TTL in ms */
                           "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
                           "return 1 end return 0"},
    [BL_SCRIPT_RELEASE] = {"release",
                           /* Compare-and-delete: only the holder deletes. */
                           "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                           "return redis.call('DEL', KEYS[1]) end return 0"},
};
