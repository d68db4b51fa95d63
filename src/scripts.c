/* scripts.c - Lua bodies. The names they work on are in keyspace.h.
 *
 * A waiter listens on the channel "{<lock key>}|<its holder id>" while it
 * waits: a hand-off message reaches only the waiter it was handed to. The
 * queue holds holder ids, one per manager: the entry speaks for every
 * request of that manager on the key (see keep_queued in backend.h).
 *
 * Fencing tokens are max(last + 1, server time in us): strictly increasing
 * while the fence key lives, and still increasing after it expired as long
 * as the server clock does not step back past the last token.
 *
 * Every key a script touches is declared in KEYS, and the names of
 * keyspace.h all hash to the lock key's slot (one Cluster slot). On one server the scripts also
 * get the 0.1 layout's names as extra KEYS (old done marker, old fence
 * counter): a posting marked done under the old name stays done, the old
 * counter is a token floor when the new one is missing, and release-done
 * writes the old marker too, for clients of the old layout still running.
 * In a cluster those extra keys are never passed (another slot; no client
 * of the old layout could run there).
 */
#include "scripts.h"

const bl_script bl_scripts[BL_SCRIPT_COUNT] = {
    /* KEYS: lock fence done queue [old_done old_fence]
     * ARGV: holder ttl_ms fence_ttl_ms queue_ttl_ms(0 = try once, no queue)
     *       queued(1 if this request joined the queue before)
     *       keep(1 if another request of this holder still waits: a grant
     *       keeps the holder in the queue, moved to the back)
     *       reclaim(1: a lock held under this very holder id is ours to take:
     *       the holder has no request that holds or gets it, so it is a
     *       grant whose reply was lost)
     *       done('0': skip the done markers; bl_config.done_markers)
     *       fence('0': no token, return 1; bl_config.fencing_tokens)
     * -> token > 0 | 0 busy | -2 done | -3 busy, held under this holder id
     * The uncontended path is SET NX first: 4 calls in all (1 with neither
     * done markers nor tokens, which redis_ops.c then sends as a bare SET). */
    [BL_SCRIPT_ACQUIRE] = {"acquire",
        "if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then\n"
        "  local v = redis.call('GET', KEYS[1])\n"
        "  if v ~= '~' .. ARGV[1] and not (v == ARGV[1] and ARGV[7] == '1') then\n"
        "    local qt = tonumber(ARGV[4])\n"
        "    if qt > 0 then\n"
        "      local t = redis.call('TIME')\n"
        "      redis.call('ZADD', KEYS[4], 'NX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])\n"
        "      if redis.call('PTTL', KEYS[4]) < qt then redis.call('PEXPIRE', KEYS[4], qt) end\n"
        "    end\n"
        "    if v == ARGV[1] then return -3 end\n"
        "    return 0\n"
        "  end\n"
        "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n" /* reserved for us */
        "end\n"
        "local d = 0\n"
        "if ARGV[8] ~= '0' then d = #KEYS > 4 and redis.call('EXISTS', KEYS[3], KEYS[5]) or redis.call('EXISTS', KEYS[3]) end\n"
        "if d > 0 then\n"
        "  redis.call('DEL', KEYS[1])\n"
        "  if ARGV[6] ~= '1' then redis.call('ZREM', KEYS[4], ARGV[1]) end\n"
        "  return -2\n"
        "end\n"
        "if ARGV[6] == '1' then\n"
        "  local t = redis.call('TIME')\n"
        "  redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])\n"
        "  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[4], ARGV[4]) end\n"
        "elseif ARGV[5] == '1' then redis.call('ZREM', KEYS[4], ARGV[1]) end\n"
        "if ARGV[9] == '0' then return 1 end\n"
        /* SET .. GET writes the new token and returns the last one in one
         * call; only if the clock stepped back is it written again. */
        "local t = redis.call('TIME')\n"
        "local tok = t[1] * 1000000 + t[2]\n"
        "local prev = tonumber(redis.call('SET', KEYS[2], string.format('%.0f', tok), 'PX', ARGV[3], 'GET'))\n"
        "if not prev and KEYS[6] then prev = tonumber(redis.call('GET', KEYS[6])) end\n"
        "if prev and prev >= tok then\n"
        "  tok = prev + 1\n"
        "  redis.call('SET', KEYS[2], string.format('%.0f', tok), 'PX', ARGV[3])\n"
        "end\n"
        "return tok\n"},
    /* KEYS: lock done queue fence [old_done old_fence]
     * ARGV: holder done_ttl_ms(0 = no) handoff_ms fence_ttl_ms
     * -> 0 not held | 1 released | 2 handed off to the longest waiter
     * The hand-off is a grant (direct hand-off): the waiter's holder id
     * becomes the holder for handoff_ms, with the next fencing token, and
     * the message "g<token>" on its channel tells it so; it extends the
     * lease to its own TTL when it takes over. A waiter that has gone
     * costs handoff_ms. */
    [BL_SCRIPT_RELEASE] = {"release",
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
        "if tonumber(ARGV[2]) > 0 then\n"
        "  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])\n"
        "  if KEYS[5] then redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2]) end\n"
        "  redis.call('DEL', KEYS[1])\n"
        "  for _, w in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do\n"
        "    redis.call('PUBLISH', '{' .. KEYS[1] .. '}|' .. w, '*')\n"
        "  end\n"
        "  redis.call('DEL', KEYS[3])\n"
        "  return 1\n"
        "end\n"
        "local w = redis.call('ZPOPMIN', KEYS[3])\n"
        "if w[1] then\n"
        "  redis.call('SET', KEYS[1], w[1], 'PX', ARGV[3])\n"
        "  local t = redis.call('TIME')\n"
        "  local tok = t[1] * 1000000 + t[2]\n"
        "  local prev = tonumber(redis.call('SET', KEYS[4], string.format('%.0f', tok), 'PX', ARGV[4], 'GET'))\n"
        "  if not prev and KEYS[6] then prev = tonumber(redis.call('GET', KEYS[6])) end\n"
        "  if prev and prev >= tok then\n"
        "    tok = prev + 1\n"
        "    redis.call('SET', KEYS[4], string.format('%.0f', tok), 'PX', ARGV[4])\n"
        "  end\n"
        "  redis.call('PUBLISH', '{' .. KEYS[1] .. '}|' .. w[1], 'g' .. string.format('%.0f', tok))\n"
        "  return 2\n"
        "end\n"
        "redis.call('DEL', KEYS[1])\n"
        "return 1\n"},
    /* KEYS: lock   ARGV: holder ttl_ms  -> 1 renewed | 0 not held */
    [BL_SCRIPT_EXTEND] = {"extend",
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
        "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
        "end\n"
        "return 0\n"},
    /* A group (bl_acquire_many): per posting S keys, S = ARGV[4]:
     *   lock fence done [old_done old_fence]
     * ARGV: holder ttl_ms fence_ttl_ms S
     * -> {1, token...} in KEYS order | {0, i} posting i is taken |
     *    {-2, i} posting i is done (i 0-based). Done first (retrying cannot
     * help), then taken, then every lock set and every token taken: all or
     * nothing in one script. Any value at a lock is "taken", our own id or
     * a reservation for us included (a group never reclaims). */
    [BL_SCRIPT_ACQUIRE_MANY] = {"acquire_many",
        "local s = tonumber(ARGV[4])\n"
        "local n = #KEYS / s\n"
        "for i = 0, n - 1 do\n"
        "  local b = i * s\n"
        "  local d = s > 3 and redis.call('EXISTS', KEYS[b + 3], KEYS[b + 4]) or redis.call('EXISTS', KEYS[b + 3])\n"
        "  if d > 0 then return {-2, i} end\n"
        "end\n"
        "for i = 0, n - 1 do\n"
        "  if redis.call('EXISTS', KEYS[i * s + 1]) == 1 then return {0, i} end\n"
        "end\n"
        "local t = redis.call('TIME')\n"
        "local now = t[1] * 1000000 + t[2]\n"
        "local out = {1}\n"
        "for i = 0, n - 1 do\n"
        "  local b = i * s\n"
        "  redis.call('SET', KEYS[b + 1], ARGV[1], 'PX', ARGV[2])\n"
        "  local tok = now\n"
        "  local prev = tonumber(redis.call('SET', KEYS[b + 2], string.format('%.0f', tok), 'PX', ARGV[3], 'GET'))\n"
        "  if not prev and s > 3 then prev = tonumber(redis.call('GET', KEYS[b + 5])) end\n"
        "  if prev and prev >= tok then\n"
        "    tok = prev + 1\n"
        "    redis.call('SET', KEYS[b + 2], string.format('%.0f', tok), 'PX', ARGV[3])\n"
        "  end\n"
        "  out[i + 2] = tok\n"
        "end\n"
        "return out\n"},
    /* Per posting S keys, S = ARGV[4]: lock done queue [old_done]
     * ARGV: holder done_ttl_ms(0 = no) handoff_ms S
     * -> {released, handed_off}: each posting as the release script does
     * (holder-checked; done marker; hand-off to its longest waiter). */
    [BL_SCRIPT_RELEASE_MANY] = {"release_many",
        "local s = tonumber(ARGV[4])\n"
        "local mine, handed = 0, 0\n"
        "for i = 0, #KEYS / s - 1 do\n"
        "  local b = i * s\n"
        "  if redis.call('GET', KEYS[b + 1]) == ARGV[1] then\n"
        "    mine = mine + 1\n"
        "    if tonumber(ARGV[2]) > 0 then\n"
        "      redis.call('SET', KEYS[b + 2], ARGV[1], 'PX', ARGV[2])\n"
        "      if s > 3 then redis.call('SET', KEYS[b + 4], ARGV[1], 'PX', ARGV[2]) end\n"
        "      redis.call('DEL', KEYS[b + 1])\n"
        "      for _, w in ipairs(redis.call('ZRANGE', KEYS[b + 3], 0, -1)) do\n"
        "        redis.call('PUBLISH', '{' .. KEYS[b + 1] .. '}|' .. w, '*')\n"
        "      end\n"
        "      redis.call('DEL', KEYS[b + 3])\n"
        "    else\n"
        "      local w = redis.call('ZPOPMIN', KEYS[b + 3])\n"
        "      if w[1] then\n"
        "        redis.call('SET', KEYS[b + 1], '~' .. w[1], 'PX', ARGV[3])\n"
        "        redis.call('PUBLISH', '{' .. KEYS[b + 1] .. '}|' .. w[1], '')\n"
        "        handed = handed + 1\n"
        "      else\n"
        "        redis.call('DEL', KEYS[b + 1])\n"
        "      end\n"
        "    end\n"
        "  end\n"
        "end\n"
        "return {mine, handed}\n"},
    /* KEYS: locks   ARGV: holder ttl_ms
     * -> 1 every one renewed | 0 one or more not held (the rest renewed) */
    [BL_SCRIPT_EXTEND_MANY] = {"extend_many",
        "local ok = 1\n"
        "for i = 1, #KEYS do\n"
        "  if redis.call('GET', KEYS[i]) == ARGV[1] then\n"
        "    redis.call('PEXPIRE', KEYS[i], ARGV[2])\n"
        "  else\n"
        "    ok = 0\n"
        "  end\n"
        "end\n"
        "return ok\n"},
    /* Many leases of one holder, renewed as the extend script does, each on
     * its own (not a group: one lost lease leaves the others renewed).
     * KEYS: locks   ARGV: holder ttl_ms... (one per key, in KEYS order)
     * -> {1 renewed | 0 not held, per key in KEYS order} */
    [BL_SCRIPT_EXTEND_BATCH] = {"extend_batch",
        "local out = {}\n"
        "for i = 1, #KEYS do\n"
        "  if redis.call('GET', KEYS[i]) == ARGV[1] then\n"
        "    out[i] = redis.call('PEXPIRE', KEYS[i], ARGV[i + 1])\n"
        "  else\n"
        "    out[i] = 0\n"
        "  end\n"
        "end\n"
        "return out\n"},
    /* KEYS: lock done fence [old_done old_fence]
     * -> {value|nil, pttl, done(0/1), token|nil}
     * A key of another type at the lock's name is an error (WRONGTYPE), as
     * it is for acquire: not "free", which acquire would then refuse. */
    [BL_SCRIPT_INSPECT] = {"inspect",
        "local v = redis.call('GET', KEYS[1])\n"
        "local d = redis.call('EXISTS', KEYS[2])\n"
        "local t = redis.call('GET', KEYS[3])\n"
        "if KEYS[4] then\n"
        "  if d == 0 then d = redis.call('EXISTS', KEYS[4]) end\n"
        "  if not t then t = redis.call('GET', KEYS[5]) end\n"
        "end\n"
        "return {v, redis.call('PTTL', KEYS[1]), d, t}\n"},
    /* KEYS: candidate lock keys, then (holder '' only) wait queues of the
     * 0.1 layout   ARGV: holder ('' = any) nlocks -> locks removed */
    [BL_SCRIPT_CLEANUP] = {"cleanup",
        "local n = 0\n"
        "for i, k in ipairs(KEYS) do\n"
        "  local mine = ARGV[1] == ''\n"
        "  if not mine then\n"
        "    local v = redis.pcall('GET', k)\n"
        "    mine = v == ARGV[1] or v == '~' .. ARGV[1]\n"
        "  end\n"
        "  if mine then\n"
        "    local u = redis.call('UNLINK', k)\n"
        "    if i <= tonumber(ARGV[2]) then n = n + u end\n"
        "  end\n"
        "end\n"
        "return n\n"},
    /* KEYS: lock fence   ARGV: holder target lease_ms fence_ttl_ms
     * (no old-layout keys: the lock is held, so its new fence key exists)
     * -> token > 0 (the lock is target's, for lease_ms) | 0 not held
     * The lock is never free: the value changes hands in one SET. The
     * target's own acquire then takes it as "held under our id" (reclaim),
     * and a directed wake-up tells it at once if it waits. */
    [BL_SCRIPT_TRANSFER] = {"transfer",
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
        "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
        "local t = redis.call('TIME')\n"
        "local tok = t[1] * 1000000 + t[2]\n"
        "local prev = tonumber(redis.call('SET', KEYS[2], string.format('%.0f', tok), 'PX', ARGV[4], 'GET'))\n"
        "if prev and prev >= tok then\n"
        "  tok = prev + 1\n"
        "  redis.call('SET', KEYS[2], string.format('%.0f', tok), 'PX', ARGV[4])\n"
        "end\n"
        "redis.call('PUBLISH', '{' .. KEYS[1] .. '}|' .. ARGV[2], '')\n"
        "return tok\n"},
    /* KEYS: lock fence -> {} not held (or not a lock) |
     *   {lock key, holder, pttl, last token ('0' if none), time s, time us}
     * For bl_list_locks: the token is the server's microseconds at the
     * grant, so TIME minus it is how long the lock has been held. */
    [BL_SCRIPT_LOCK_INFO] = {"lock_info",
        "local v = redis.pcall('GET', KEYS[1])\n"
        "if type(v) ~= 'string' then return {} end\n"
        "local f = redis.pcall('GET', KEYS[2])\n"
        "if type(f) ~= 'string' then f = '0' end\n"
        "local t = redis.call('TIME')\n"
        "return {KEYS[1], v, redis.call('PTTL', KEYS[1]), f, t[1], t[2]}\n"},
};
