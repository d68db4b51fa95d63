/* acl.h - the server permissions bidlock needs, and what to say when one is
 * missing. Pure string work (no hiredis, no other bidlock file), so the
 * `bidlock acl` command compiles acl.c in beside the shared library and the
 * tests pin it on its own.
 *
 * The rules grant, for one key prefix P (glob characters escaped):
 *   keys      ~P:*  ~{P:*      the lock P:M:X and its queue, fence and done
 *                              keys in both layouts: P::q:M:X (before the
 *                              Cluster layout) and {P:M:X}:q (after it)
 *   channels  &P:*  &{P:*      the wake-up channels P:M:X|H and {P:M:X}|H
 *   commands  what src/ sends (EVAL, EVALSHA, SCRIPT LOAD, PING, ROLE, WAIT,
 *             SCAN, ZREM, SUBSCRIBE, UNSUBSCRIBE, SELECT) and what the
 *             scripts in scripts.c call (GET, SET, DEL, UNLINK, EXISTS,
 *             PEXPIRE, PTTL, TIME, PUBLISH, ZADD, ZPOPMIN, ZRANGE, ZREM).
 * The read-only set is for `status` and `health`: PING, ROLE, SELECT, and
 * EVAL of the inspect script (GET, PTTL, EXISTS) on the same key patterns
 * (EVAL checks its declared keys as written to, so %R~ would refuse it; the
 * command list is what keeps it read-only). */
#ifndef BIDLOCK_ACL_H
#define BIDLOCK_ACL_H

#include <stddef.h>

/* The rules, space-separated, for prefix into dst[0..cap): "-@all +eval ...
 * ~P:* ..." (no user name, no on/off, no password). Returns the length, or
 * 0 if they do not fit (cap >= 1024 always fits a 64-byte prefix). Each
 * rule is one token (a prefix holds no whitespace, see bl_validate_prefix);
 * quoting them for a shell or redis-cli is the caller's business. */
size_t bl_acl_rules(char *dst, size_t cap, const char *prefix, int readonly);

/* 1 if err is the server refusing a command, key or channel to this user:
 * a NOPERM reply, or an ACL failure inside a script (Redis 7.0 answers
 * those with "ERR The user executing the script can't ...", Valkey 8 with
 * "ERR ACL failure in script: ..."). */
int bl_acl_denied(const char *err);

/* A message for such an error into dst[0..cap), starting "NOPERM" and
 * naming what is missing: the command (from the server's text, else from
 * the line of script_body the error points at), or the key or channel
 * patterns prefix needs. script_name/script_body: the script the call ran
 * (NULL for a plain command, whose name is then `command`). Returns dst. */
const char *bl_acl_explain(char *dst, size_t cap, const char *err, const char *command,
                           const char *script_name, const char *script_body, const char *prefix);

#endif
