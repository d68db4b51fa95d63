/* What libbidlock.so links: hiredis and libuuid, never a loop library. The
 * adapters are header-only (include/bidlock/), so a libev program does not
 * pull in libuv and the reverse. Read from the built files with readelf;
 * meson passes their paths. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#ifndef BIDLOCK_SHARED_LIB
#error "meson passes -DBIDLOCK_SHARED_LIB"
#endif

/* readelf's output for `path` (caller frees); asserts it ran. */
static char *readelf(const char *opts, const char *path)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "readelf %s '%s' 2>&1", opts, path);
    FILE *f = popen(cmd, "r");
    cr_assert(f, "popen: %s", cmd);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    cr_assert(out);
    size_t k;
    while ((k = fread(out + len, 1, cap - 1 - len, f)) > 0) {
        len += k;
        if (len == cap - 1) {
            char *bigger = realloc(out, cap *= 2);
            cr_assert(bigger);
            out = bigger;
        }
    }
    out[len] = '\0';
    cr_assert_eq(pclose(f), 0, "%s failed:\n%s", cmd, out);
    return out;
}

/* 1 if `path` has a NEEDED entry "[<lib>.so...". */
static int needs(const char *path, const char *lib)
{
    char *d = readelf("-d", path);
    char want[64];
    snprintf(want, sizeof want, "[%s.so", lib);
    int found = 0;
    for (char *line = strtok(d, "\n"); line; line = strtok(NULL, "\n"))
        if (strstr(line, "(NEEDED)") && strstr(line, want))
            found = 1;
    free(d);
    return found;
}

Test(linkage, libbidlock_needs_hiredis_but_neither_libev_nor_libuv)
{
    cr_assert(needs(BIDLOCK_SHARED_LIB, "libhiredis"), "the library does need hiredis");
    cr_assert(!needs(BIDLOCK_SHARED_LIB, "libev"), "libbidlock.so NEEDs libev");
    cr_assert(!needs(BIDLOCK_SHARED_LIB, "libuv"), "libbidlock.so NEEDs libuv");
}

/* Stronger than NEEDED (which --as-needed could hide): no undefined
 * symbol of either loop, so a program can link without them. */
Test(linkage, libbidlock_calls_no_libev_or_libuv_function)
{
    char *syms = readelf("--dyn-syms -W", BIDLOCK_SHARED_LIB);
    for (char *line = strtok(syms, "\n"); line; line = strtok(NULL, "\n")) {
        /* "  5: 0000000000000000  0 FUNC GLOBAL DEFAULT UND name[@version (n)]" */
        char ndx[16], name[256];
        if (sscanf(line, "%*s %*s %*s %*s %*s %*s %15s %255s", ndx, name) != 2 ||
            strcmp(ndx, "UND") != 0)
            continue;
        cr_assert(strncmp(name, "ev_", 3) != 0 && strncmp(name, "uv_", 3) != 0,
                  "libbidlock.so calls %s", name);
    }
    free(syms);
}

/* The echo examples link the shared library and only their own loop, as
 * an installed program does (built unless -Dexamples=false). */
#ifdef BIDLOCK_ECHO_LIBEV
Test(linkage, a_program_on_one_loop_needs_only_that_loop)
{
    cr_assert(needs(BIDLOCK_ECHO_LIBEV, "libev"));
    cr_assert(!needs(BIDLOCK_ECHO_LIBEV, "libuv"), "echo_libev NEEDs libuv");
    cr_assert(needs(BIDLOCK_ECHO_LIBUV, "libuv"));
    cr_assert(!needs(BIDLOCK_ECHO_LIBUV, "libev"), "echo_libuv NEEDs libev");
    cr_assert(!needs(BIDLOCK_ECHO_EPOLL, "libev") && !needs(BIDLOCK_ECHO_EPOLL, "libuv"),
              "echo_epoll NEEDs a loop library");
    cr_assert(needs(BIDLOCK_ECHO_EPOLL, "libbidlock"), "it runs on the shared library");
}
#endif
