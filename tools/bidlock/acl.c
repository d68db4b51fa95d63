/* acl.c - `bidlock acl [--prefix P] [--user NAME] [--readonly]`: print the
 * ACL SETUSER line that grants what bidlock needs for prefix P and nothing
 * else (the rules come from src/acl.c, beside the library's scripts). No
 * connection is made: an operator pipes the line to redis-cli / valkey-cli,
 * or copies the rules into an ACL file after "user NAME".
 *
 * The line sets permissions exactly (resetkeys, resetchannels,
 * clearselectors, -@all, then the grants) and leaves passwords alone: run
 * again on an existing user it keeps that user's passwords, and a new user
 * has none, so it cannot log in until one is added (ACL SETUSER NAME
 * >secret). Printing a password placeholder would create a user whose
 * password is the placeholder when pasted as is. */
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "acl.h"
#include "tool.h"

/* One argument as redis-cli reads a line: bare, or double-quoted with
 * '\' and '"' escaped when it holds a quote or a backslash. */
static void put_arg(const char *s)
{
    if (!strpbrk(s, "\"'\\")) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

static int bad_user(const char *u)
{
    if (!*u || strlen(u) > 128)
        return 1;
    for (const unsigned char *p = (const unsigned char *)u; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return 1;
    return 0;
}

int acl_main(int argc, char **argv)
{
    const char *prefix = NULL, *user = NULL;
    int readonly = 0;
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h"))
            return print_help();
        if (!strcmp(arg, "--readonly")) {
            readonly = 1;
            continue;
        }
        const char **slot = NULL;
        const char *name = NULL;
        if (!strncmp(arg, "--prefix", 8) && (arg[8] == '\0' || arg[8] == '='))
            slot = &prefix, name = "--prefix";
        else if (!strncmp(arg, "--user", 6) && (arg[6] == '\0' || arg[6] == '='))
            slot = &user, name = "--user";
        else if (arg[0] == '-')
            return usage_error("unknown option '%s' for 'acl'", arg);
        else
            return usage_error("unexpected argument '%s' for 'acl'", arg);
        const char *eq = strchr(arg, '=');
        if (eq)
            *slot = eq + 1;
        else if (i + 1 < argc)
            *slot = argv[++i];
        else
            return usage_error("%s needs a value", name);
    }
    bl_config cfg;
    bl_config_init(&cfg);
    if (prefix)
        cfg.key_prefix = prefix;
    char why[512];
    if (bl_config_validate(&cfg, why, sizeof why) != BL_OK)
        return usage_error("--prefix: %s", why);
    if (!user)
        user = readonly ? "bidlock-readonly" : "bidlock";
    if (bad_user(user))
        return usage_error("--user '%s' is not an ACL user name (1..128 bytes, no whitespace "
                           "or control characters)",
                           user);
    char rules[2048];
    if (bl_acl_rules(rules, sizeof rules, cfg.key_prefix, readonly) == 0)
        return usage_error("--prefix: too long for the rules");
    fputs("ACL SETUSER ", stdout);
    put_arg(user);
    fputs(" on resetkeys resetchannels clearselectors", stdout);
    for (char *tok = strtok(rules, " "); tok; tok = strtok(NULL, " ")) {
        putchar(' ');
        put_arg(tok);
    }
    putchar('\n');
    if (fflush(stdout) != 0)
        return EX_IOERR;
    say("this keeps the passwords of an existing user '%s'; a new one has none and cannot "
        "log in until you add one: ACL SETUSER %s >PASSWORD",
        user, user);
    return 0;
}
