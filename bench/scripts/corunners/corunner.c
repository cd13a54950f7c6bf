/*
 * The scheduling model behind docs/benchmarks.md "What shares the client's
 * core": a blocking ping-pong client and the co-runners that share its core.
 * No nocturne code, so that what it shows is the kernel's (and the VM's).
 *
 *   corunner ping PORT PATH N   N timed POSTs of "hi" to 127.0.0.1:PORT/PATH
 *                               over one keep-alive connection (after 1000
 *                               untimed ones); prints RTT percentiles in µs
 *                               and, when the server sends Server-Timing,
 *                               the p50 time spent inside it
 *   corunner yield [SPIN_NS]    sched_yield() forever, spinning SPIN_NS
 *                               between yields (default 0)
 *   corunner busy               spin forever, never entering the kernel
 *
 * Every mode pins itself to core 0 (the client's core of the 2-core
 * placement). Build: cc -O2 -o corunner corunner.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Reads one response with a Content-Length body; returns its length or -1. */
static int read_response(int fd, char *buf, int cap) {
    int got = 0;
    for (;;) {
        int r = read(fd, buf + got, cap - 1 - got);
        if (r <= 0) return -1;
        got += r;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "content-length:");
        if (end && cl && got >= (end + 4 - buf) + atoi(cl + 15)) return got;
        if (got >= cap - 1) return -1;
    }
}

/* Milliseconds of `name;dur=` in a Server-Timing header, 0 without it. */
static double timing_us(const char *buf, const char *name) {
    const char *st = strcasestr(buf, "server-timing:");
    const char *at = st ? strstr(st, name) : NULL;
    double ms = 0;
    if (at) sscanf(at + strlen(name), ";dur=%lf", &ms);
    return ms * 1000;
}

static int ping(int port, const char *path, int n) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        return 1;
    }
    char req[256], buf[4096];
    int len = snprintf(req, sizeof req,
                       "POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", path);
    double *rtt = malloc(n * sizeof *rtt), *inside = malloc(n * sizeof *inside);
    for (int i = -1000; i < n; i++) {
        double t0 = now_us();
        if (write(fd, req, len) != len || read_response(fd, buf, sizeof buf) < 0) {
            fprintf(stderr, "request %d failed\n", i);
            return 1;
        }
        double t1 = now_us();
        if (i < 0) continue;
        rtt[i] = t1 - t0;
        inside[i] = timing_us(buf, "queue") + timing_us(buf, "exec") + timing_us(buf, "overhead");
    }
    qsort(rtt, n, sizeof *rtt, by_value);
    qsort(inside, n, sizeof *inside, by_value);
    printf("rtt p10 %.1f p25 %.1f p50 %.1f p75 %.1f p90 %.1f p99 %.1f | server p50 %.1f\n",
           rtt[n / 10], rtt[n / 4], rtt[n / 2], rtt[n * 3 / 4], rtt[n * 9 / 10],
           rtt[n * 99 / 100], inside[n / 2]);
    return 0;
}

int main(int argc, char **argv) {
    cpu_set_t core0;
    CPU_ZERO(&core0);
    CPU_SET(0, &core0);
    if (sched_setaffinity(0, sizeof core0, &core0)) {
        perror("sched_setaffinity");
        return 1;
    }
    if (argc == 5 && !strcmp(argv[1], "ping")) return ping(atoi(argv[2]), argv[3], atoi(argv[4]));
    if (argc >= 2 && !strcmp(argv[1], "yield")) {
        long spin_ns = argc > 2 ? atol(argv[2]) : 0;
        for (;;) {
            double t = now_us();
            while ((now_us() - t) * 1000 < spin_ns) {}
            sched_yield();
        }
    }
    if (argc == 2 && !strcmp(argv[1], "busy"))
        for (volatile unsigned long i = 0;; i++) {}
    fprintf(stderr, "usage: corunner ping PORT PATH N | yield [SPIN_NS] | busy\n");
    return 2;
}
