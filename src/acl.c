/* acl.c - see acl.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"

/* Sent as commands by src/ (redis_ops.c, redis_admin.c, redis_sub.c,
 * redis_conn.c), then called by the scripts (scripts.c). AUTH needs no
 * rule: every user may run it. */
static const char *const rw_commands[] = {
    "eval", "evalsha", "script|load", "ping", "role", "wait", "scan", "zrem", "subscribe",
    "unsubscribe", "select",
    /* inside the scripts */
    "get", "set", "del", "unlink", "exists", "pexpire", "pttl", "time", "publish", "zadd",
    "zpopmin", "zrange"};
/* status (the inspect script) and health. */
static const char *const ro_commands[] = {"eval", "ping", "role", "select",
                                          /* inside the inspect script */
                                          "get", "pttl", "exists"};

/* Append s to dst at *n; 0 if it does not fit. */
static int add(char *dst, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len + 1 > cap)
        return 0;
    memcpy(dst + *n, s, len);
    *n += len;
    dst[*n] = '\0';
    return 1;
}

static int add_s(char *dst, size_t cap, size_t *n, const char *s)
{
    return add(dst, cap, n, s, strlen(s));
}

/* " <sigil><open>P:*" with P's glob characters escaped (ACL patterns are
 * globs, matched as SCAN MATCH is: a '*' in a prefix must match only '*'). */
static int add_pattern(char *dst, size_t cap, size_t *n, const char *sigil, const char *open,
                       const char *prefix)
{
    if (!add_s(dst, cap, n, " ") || !add_s(dst, cap, n, sigil) || !add_s(dst, cap, n, open))
        return 0;
    for (const char *p = prefix; *p; p++)
        if ((strchr("*?[]\\", *p) && !add_s(dst, cap, n, "\\")) || !add(dst, cap, n, p, 1))
            return 0;
    return add_s(dst, cap, n, ":*");
}

size_t bl_acl_rules(char *dst, size_t cap, const char *prefix, int readonly)
{
    const char *const *cmds = readonly ? ro_commands : rw_commands;
    size_t ncmds = readonly ? sizeof ro_commands / sizeof *ro_commands
                            : sizeof rw_commands / sizeof *rw_commands;
    size_t n = 0;
    if (cap == 0)
        return 0;
    dst[0] = '\0';
    if (!add_s(dst, cap, &n, "-@all"))
        return 0;
    for (size_t i = 0; i < ncmds; i++)
        if (!add_s(dst, cap, &n, " +") || !add_s(dst, cap, &n, cmds[i]))
            return 0;
    if (!add_pattern(dst, cap, &n, "~", "", prefix) ||
        !add_pattern(dst, cap, &n, "~", "{", prefix))
        return 0;
    /* Wake-up channels are "{<lock key>}|<holder>": only the tagged form
     * (the 0.1 layout's "<lock key>|<holder>" is not used any more). */
    if (!readonly && !add_pattern(dst, cap, &n, "&", "{", prefix))
        return 0;
    return n;
}

/* ---- explaining a refusal --------------------------------------------------- */

int bl_acl_denied(const char *err)
{
    return err && (strncmp(err, "NOPERM", 6) == 0 ||
                   strncmp(err, "ERR The user executing the script can't", 39) == 0 ||
                   strncmp(err, "ERR ACL failure in script", 25) == 0);
}

enum what { W_COMMAND, W_KEY, W_CHANNEL, W_OTHER };

/* Redis 7.0: "... to run the 'x' command", "... can't run this command or
 * subcommand", "... access one of the keys ...", "... can't publish to the
 * channel ..."; Valkey 8: "... to run the 'x' command", "No permissions to
 * access a key", "... a channel". The command test comes first: a command
 * name may be "publish". */
static enum what classify(const char *err)
{
    if (strstr(err, "run the '") || strstr(err, "run this command"))
        return W_COMMAND;
    if (strstr(err, "channel"))
        return W_CHANNEL;
    if (strstr(err, " key"))
        return W_KEY;
    return W_OTHER;
}

/* The command name the server quoted ("... run the 'time' command"),
 * upper-cased into out; 0 if it quoted none. */
static int quoted_command(const char *err, char *out, size_t cap)
{
    const char *p = strstr(err, "run the '");
    if (!p)
        return 0;
    p += strlen("run the '");
    const char *q = strchr(p, '\'');
    if (!q || q == p || (size_t)(q - p) >= cap)
        return 0;
    size_t i = 0;
    for (; p < q; p++)
        out[i++] = (char)toupper((unsigned char)*p);
    out[i] = '\0';
    return 1;
}

/* The commands called on line `line` (1-based) of body, "PTTL or PEXPIRE",
 * into out; 0 if none is found there. */
static int line_commands(const char *body, long line, char *out, size_t cap)
{
    const char *s = body;
    for (long i = 1; i < line && s; i++) {
        s = strchr(s, '\n');
        if (s)
            s++;
    }
    if (!s || !*s)
        return 0;
    const char *end = strchr(s, '\n');
    if (!end)
        end = s + strlen(s);
    size_t n = 0;
    out[0] = '\0';
    int found = 0;
    for (const char *p = s; p < end;) {
        const char *c = strstr(p, "call('");
        if (!c || c >= end)
            break;
        c += strlen("call('");
        const char *q = strchr(c, '\'');
        if (!q || q >= end)
            break;
        size_t len = (size_t)(q - c);
        if (n + len + 5 >= cap)
            break;
        if (found) {
            memcpy(out + n, " or ", 4);
            n += 4;
        }
        for (size_t k = 0; k < len; k++)
            out[n++] = (char)toupper((unsigned char)c[k]);
        out[n] = '\0';
        found = 1;
        p = q + 1;
    }
    return found;
}

const char *bl_acl_explain(char *dst, size_t cap, const char *err, const char *command,
                           const char *script_name, const char *script_body, const char *prefix)
{
    char what[64], where[64], pats[300];
    long line = 0;
    const char *at = strstr(err, "@user_script:");
    if (at)
        line = strtol(at + strlen("@user_script:"), NULL, 10);
    if (script_name && line > 0)
        snprintf(where, sizeof where, "bidlock's %s script, line %ld", script_name, line);
    else if (script_name)
        snprintf(where, sizeof where, "bidlock's %s script", script_name);
    else
        snprintf(where, sizeof where, "sent by bidlock");
    if (!quoted_command(err, what, sizeof what) &&
        !(script_body && line > 0 && line_commands(script_body, line, what, sizeof what)))
        snprintf(what, sizeof what, "%s", command ? command : "a command");

    enum what w = classify(err);
    size_t n = 0;
    pats[0] = '\0';
    if (w == W_KEY || w == W_CHANNEL) {
        int ok = w == W_KEY ? add_pattern(pats, sizeof pats, &n, "~", "", prefix) &&
                                  add_pattern(pats, sizeof pats, &n, "~", "{", prefix)
                            : add_pattern(pats, sizeof pats, &n, "&", "{", prefix);
        if (!ok)
            pats[0] = '\0';
    }
    const char *hint = "`bidlock acl` prints the rules bidlock needs";
    switch (w) {
    case W_COMMAND:
        snprintf(dst, cap, "NOPERM the ACL user may not run %s (%s); %s", what, where, hint);
        break;
    case W_KEY:
        snprintf(dst, cap, "NOPERM the ACL user may not access a key of %s (%s); it needs%s",
                 what, where, pats);
        break;
    case W_CHANNEL:
        snprintf(dst, cap,
                 "NOPERM the ACL user may not use a wake-up channel in %s (%s); it needs%s",
                 what, where, pats);
        break;
    default:
        snprintf(dst, cap, "NOPERM %s (%s; %s)",
                 strncmp(err, "NOPERM ", 7) == 0 ? err + 7 : err, where, hint);
        break;
    }
    return dst;
}
