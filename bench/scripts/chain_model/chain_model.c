// A C model of the foo -> bar chain of `bench engine` on two cores, to test
// how the workers should wait before building it into nocturne
// (docs/benchmarks.md, "The chain on two cores, accounted").
//
// Four processes, as `nocturne serve --poll spin --io-cores 1 --worker-cores 0`
// places them: the client (blocking TCP, one keep-alive connection), "foo" and
// "bar" on core 0; an "engine" on core 1 that busy-polls its socket and passes
// flags in shared memory (client -> foo -> bar -> foo -> client).
//
// Usage: chain_model MODE ROUND_TRIPS     (prints p50/p90/p99 in µs)
//   floor:     the engine answers at once (no workers): the kernel's round trip
//   echo:      foo answers without calling bar (one yielding worker on core 0)
//   yield:     bar yield-polls for its call, as nocturne's workers do now
//   park:      bar parks on a futex after each call; the engine wakes it
//              (a wake that crosses from core 1 to core 0)
//   delegate:  bar parks; the engine asks foo (yield-polling on core 0 for
//              bar's answer) to wake it (a wake on the sleeper's own core)
//
// The park protocol is Dekker's, as in nocturne-ipc's doorbells: the sleeper
// stores "sleeping", re-checks its flag, then FUTEX_WAITs; the engine
// publishes, then swaps "sleeping" away; whoever wins the swap wakes. All
// atomics are sequentially consistent: this is a model, not the product.
#define _GNU_SOURCE
#include "common.h"
#include <arpa/inet.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum mode { FLOOR, ECHO, YIELD, PARK, DELEGATE };
static const char *mode_names[] = {"floor", "echo", "yield", "park", "delegate"};

struct shared {
    _Atomic long foo_call, foo_answer;   // engine -> foo, foo -> engine
    _Atomic long bar_call_out;           // foo -> engine: call bar
    _Atomic long bar_call, bar_answer;   // engine -> bar, bar -> engine
    _Atomic long bar_answer_in;          // engine -> foo: bar answered
    _Atomic int bar_sleeping, bar_futex; // bar's doorbell
    _Atomic int wake_bar_please;         // engine -> foo: wake bar for me
    _Atomic int stop;
};
static struct shared *sh;
static enum mode mode;

static void wake_bar(void) {
    atomic_store(&sh->bar_futex, 1);
    syscall(SYS_futex, &sh->bar_futex, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void foo(void) {
    pin(0);
    long seen = 0;
    for (;;) {
        long call;
        while ((call = atomic_load(&sh->foo_call)) == seen) {
            if (atomic_load(&sh->stop)) _exit(0);
            sched_yield();
        }
        seen = call;
        if (mode != ECHO) {
            atomic_store(&sh->bar_call_out, call);
            // Waiting for bar's answer, yield-polling; in DELEGATE mode this
            // wait also serves the engine's requests to wake bar.
            while (atomic_load(&sh->bar_answer_in) != call) {
                if (atomic_exchange(&sh->wake_bar_please, 0)) wake_bar();
                else sched_yield();
            }
        }
        atomic_store(&sh->foo_answer, call);
    }
}

static void bar(void) {
    pin(0);
    long seen = 0;
    for (;;) {
        long call;
        while ((call = atomic_load(&sh->bar_call)) == seen) {
            if (atomic_load(&sh->stop)) _exit(0);
            if (mode == YIELD) { sched_yield(); continue; }
            atomic_store(&sh->bar_sleeping, 1);
            if (atomic_load(&sh->bar_call) != seen) { atomic_store(&sh->bar_sleeping, 0); continue; }
            syscall(SYS_futex, &sh->bar_futex, FUTEX_WAIT, 0, NULL, NULL, 0);
            atomic_store(&sh->bar_futex, 0);
            atomic_store(&sh->bar_sleeping, 0);
        }
        seen = call;
        atomic_store(&sh->bar_answer, call);
    }
}

static void engine(int port) {
    pin(1);
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(listener, (void *)&addr, sizeof addr) || listen(listener, 1)) { perror("engine: bind"); _exit(1); }
    int conn = accept(listener, NULL, NULL);
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(conn, F_SETFL, O_NONBLOCK);
    char buf[256];
    long requests = 0, forwarded = 0, returned = 0, answered = 0;
    for (;;) {
        ssize_t n = recv(conn, buf, sizeof buf, 0);
        if (n == 0) _exit(0);
        if (n > 0) {
            requests++;
            if (mode == FLOOR) { send(conn, buf, 64, 0); continue; }
            atomic_store(&sh->foo_call, requests);
        }
        long out = atomic_load(&sh->bar_call_out);
        if (out != forwarded) {
            forwarded = out;
            atomic_store(&sh->bar_call, out);
            if ((mode == PARK || mode == DELEGATE) && atomic_exchange(&sh->bar_sleeping, 0)) {
                if (mode == PARK) wake_bar();
                else atomic_store(&sh->wake_bar_please, 1);
            }
        }
        long back = atomic_load(&sh->bar_answer);
        if (back != returned) { returned = back; atomic_store(&sh->bar_answer_in, back); }
        long done = atomic_load(&sh->foo_answer);
        if (done != answered) { answered = done; send(conn, buf, 64, 0); }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: chain_model floor|echo|yield|park|delegate ROUND_TRIPS\n"); return 2; }
    mode = (enum mode)-1;
    for (int m = FLOOR; m <= DELEGATE; m++) if (!strcmp(argv[1], mode_names[m])) mode = m;
    int n = atoi(argv[2]);
    if ((int)mode < 0 || n < 100) { fprintf(stderr, "chain_model: bad mode or ROUND_TRIPS < 100\n"); return 2; }
    int port = 20000 + getpid() % 20000;
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 1; }
    pid_t children[3];
    if (!(children[0] = fork())) engine(port);
    if (!(children[1] = fork())) foo();
    if (!(children[2] = fork())) bar();
    pin(0);
    int fd = -1;
    for (int i = 0; i < 100 && fd < 0; i++) {  // until the engine listens
        usleep(10000);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
        if (connect(fd, (void *)&addr, sizeof addr)) { close(fd); fd = -1; }
    }
    int status = 1;
    if (fd < 0) { perror("chain_model: connect"); goto out; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[64];
    memset(buf, 'x', sizeof buf);
    long *lat = malloc(n * sizeof *lat);
    for (int i = -1000; i < n; i++) {  // 1000 warm-up round trips
        long t0 = now_ns();
        if (send(fd, buf, sizeof buf, 0) != sizeof buf) { perror("send"); goto out; }
        for (size_t got = 0; got < sizeof buf;) {
            ssize_t k = recv(fd, buf + got, sizeof buf - got, 0);
            if (k <= 0) { perror("recv"); goto out; }
            got += k;
        }
        if (i >= 0) lat[i] = now_ns() - t0;
    }
    qsort(lat, n, sizeof *lat, by_value);
    printf("%-8s p50 %6.2f  p90 %6.2f  p99 %6.2f us\n", mode_names[mode], lat[n / 2] / 1e3,
           lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3);
    status = 0;
out:
    atomic_store(&sh->stop, 1);
    wake_bar();
    for (int i = 0; i < 3; i++) kill(children[i], SIGKILL);
    return status;
}
