/* echo_epoll.c - bidlock inside a program's own epoll loop, no loop
 * library. Try-lock each "marketplace posting" line of stdin once and print
 * the outcome (see echo_common.h).
 *
 *   printf 'ebay p1\netsy p2\n' | echo_epoll [redis-port]      (default 6379)
 *
 * The program owns the loop: one epoll set holding stdin (while echo wants
 * input) and bidlock's one fd (bidlock/epoll.h); it calls
 * bl_epoll_dispatch() whenever that fd is readable. */
#include <bidlock/epoll.h>
#include <sys/epoll.h>

#include "echo_common.h"

typedef struct prog {
    int epfd;     /* the program's epoll set */
    bl_epoll *ep; /* bidlock, one fd in it */
    int stdin_on; /* echo wants input */
    int file;     /* stdin is a regular file, which epoll refuses: always ready */
} prog;

/* Watch stdin only while echo wants input. */
static void want_input(echo *e, int on)
{
    prog *p = e->user;
    if (on == p->stdin_on)
        return;
    p->stdin_on = on;
    if (p->file)
        return;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = e};
    if (epoll_ctl(p->epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, 0 /* stdin */, &ev) == 0 || !on)
        return;
    if (errno == EPERM) {
        p->file = 1; /* read it whenever echo wants input */
        return;
    }
    p->stdin_on = 0;
    echo_feed(e, -1); /* reports errno, ends the input */
}

int main(int argc, char **argv)
{
    static prog p;
    static echo e;
    p.ep = bl_epoll_new();
    p.epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: bidlock's fd */
    if (!p.ep || p.epfd < 0 || epoll_ctl(p.epfd, EPOLL_CTL_ADD, bl_epoll_fd(p.ep), &ev) != 0) {
        perror("epoll");
        return 1;
    }
    bl_loop bl;
    bl_epoll_loop(&bl, p.ep); /* bidlock's hooks into this loop */

    e.want_input = want_input;
    e.user = &p;
    if (echo_start(&e, &bl, argc, argv) != 0)
        return 1;
    /* Until stdin ended and the manager closed: bidlock has nothing left. */
    while (!e.closed || bl_epoll_alive(p.ep)) {
        struct epoll_event evs[8];
        int file_ready = p.file && p.stdin_on;
        int n = epoll_wait(p.epfd, evs, 8, file_ready ? 0 : -1);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                bl_epoll_dispatch(p.ep); /* bidlock's callbacks run here */
            else if (p.stdin_on)         /* not paused earlier in this batch */
                echo_read(&e, 0);
        }
        if (file_ready && p.stdin_on)
            echo_read(&e, 0);
    }
    epoll_ctl(p.epfd, EPOLL_CTL_DEL, bl_epoll_fd(p.ep), NULL);
    bl_epoll_free(p.ep);
    close(p.epfd);
    return e.closed ? 0 : 1;
}
