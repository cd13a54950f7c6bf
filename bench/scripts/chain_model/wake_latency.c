// How long a futex wake takes to get a parked process on core 0 running, by
// where the waker runs and what else core 0 runs (docs/benchmarks.md, "The
// chain on two cores, accounted", last item).
//
// Usage: wake_latency MODE WAKES       (prints p50/p90/p99 in µs)
//   cross-idle:    the waker on core 1; core 0 otherwise idle
//   cross-1yield:  the waker on core 1; one sched_yield loop on core 0
//   cross-2yield:  the waker on core 1; two sched_yield loops on core 0
//   same:          the waker on core 0, yield-polling (it wakes, then yields)
#define _GNU_SOURCE
#include "common.h"
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct shared { _Atomic int word; _Atomic long woke_ns; _Atomic int stop; };
static struct shared *sh;

static pid_t yield_loop(void) {
    pid_t pid = fork();
    if (!pid) {
        pin(0);
        while (!atomic_load(&sh->stop)) sched_yield();
        _exit(0);
    }
    return pid;
}

int main(int argc, char **argv) {
    const char *modes[] = {"cross-idle", "cross-1yield", "cross-2yield", "same"};
    int mode = -1, n = argc == 3 ? atoi(argv[2]) : 0;
    for (int m = 0; argc == 3 && m < 4; m++) if (!strcmp(argv[1], modes[m])) mode = m;
    if (mode < 0 || n < 100) {
        fprintf(stderr, "usage: wake_latency cross-idle|cross-1yield|cross-2yield|same WAKES (>= 100)\n");
        return 2;
    }
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 1; }
    pid_t sleeper = fork();
    if (!sleeper) {
        pin(0);
        for (;;) {
            while (atomic_load(&sh->word) == 0) {
                syscall(SYS_futex, &sh->word, FUTEX_WAIT, 0, NULL, NULL, 0);
                if (atomic_load(&sh->stop)) _exit(0);
            }
            atomic_store(&sh->word, 0);
            atomic_store(&sh->woke_ns, now_ns());
        }
    }
    pid_t loops[2] = {0, 0};
    for (int i = 0; i < mode && mode < 3; i++) loops[i] = yield_loop();
    int same_core = mode == 3;
    pin(same_core ? 0 : 1);
    long *lat = malloc(n * sizeof *lat);
    usleep(100000);
    for (int i = 0; i < n; i++) {
        atomic_store(&sh->woke_ns, 0);
        long t0 = now_ns();
        atomic_store(&sh->word, 1);
        syscall(SYS_futex, &sh->word, FUTEX_WAKE, 1, NULL, NULL, 0);
        long woke;
        while ((woke = atomic_load(&sh->woke_ns)) == 0)
            if (same_core) sched_yield();
        lat[i] = woke - t0;
        // 20 µs for the sleeper to park again before the next wake.
        for (long until = now_ns() + 20000; now_ns() < until;)
            if (same_core) sched_yield();
    }
    atomic_store(&sh->stop, 1);
    atomic_store(&sh->word, 1);
    syscall(SYS_futex, &sh->word, FUTEX_WAKE, 1, NULL, NULL, 0);
    kill(sleeper, SIGKILL);
    for (int i = 0; i < 2; i++) if (loops[i]) kill(loops[i], SIGKILL);
    qsort(lat, n, sizeof *lat, by_value);
    printf("%-12s p50 %6.2f  p90 %6.2f  p99 %6.2f us\n", modes[mode], lat[n / 2] / 1e3,
           lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3);
    return 0;
}
