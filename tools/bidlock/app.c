/* app.c - the life of one invocation on the loop: every exit goes through
 * finish() (close the manager, stop our watchers, let ev_run return); a
 * watchdog ends it if Redis never answers; signals arrive on a signalfd. */
#include <signal.h>
#include <sysexits.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "tool.h"

static void on_closed(bl_manager *m, void *data)
{
    (void)m;
    app *a = data;
    a->m = NULL;
    ev_io_stop(a->loop, &a->sig_w);
    if (a->sigfd >= 0)
        close(a->sigfd);
    a->sigfd = -1;
    ev_child_stop(a->loop, &a->child_w);
    ev_timer_stop(a->loop, &a->watchdog);
    ev_timer_stop(a->loop, &a->grace);
    /* Nothing of ours is active now: ev_run returns. */
}

void finish(app *a, int code)
{
    if (a->finishing)
        return;
    a->finishing = 1;
    a->exit_code = code;
    ev_timer_stop(a->loop, &a->watchdog);
    if (bl_manager_close(a->m, on_closed, a) != BL_OK)
        on_closed(a->m, a);
}

static void on_hung(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    app *a = w->data;
    if (a->sub == SUB_RUN) {
        run_hung(a); /* it knows whether the acquire or the release hangs */
        return;
    }
    say("no answer from Redis within %.1f s", a->watchdog_s);
    finish(a, EX_UNAVAILABLE);
}

void start_watchdog(app *a, int64_t extra_ms)
{
    a->watchdog_s = (double)(a->connect_timeout_ms + (uint64_t)extra_ms + ANSWER_SLACK_MS) / 1000.0;
    ev_timer_init(&a->watchdog, on_hung, a->watchdog_s, 0.);
    a->watchdog.data = a;
    ev_timer_start(a->loop, &a->watchdog);
}

static void on_signal(app *a, int signo, int from_tty)
{
    if (a->sub == SUB_RUN) {
        run_signal(a, signo, from_tty);
        return;
    }
    if (!a->signo)
        a->signo = signo;
    finish(a, 128 + signo);
}

/* A signalfd rather than ev_signal: its siginfo tells a terminal's Ctrl-C
 * (sent by the kernel to the whole foreground group) from a kill(1). */
static void on_sigfd(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    app *a = w->data;
    struct signalfd_siginfo si;
    while (a->sigfd >= 0 && read(a->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        on_signal(a, (int)si.ssi_signo, si.ssi_code == SI_KERNEL);
}

int watch_signals(app *a)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL); /* COMMAND gets an empty mask back */
    a->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (a->sigfd < 0)
        return -1;
    ev_io_init(&a->sig_w, on_sigfd, a->sigfd, EV_READ);
    a->sig_w.data = a;
    ev_io_start(a->loop, &a->sig_w);
    return 0;
}
