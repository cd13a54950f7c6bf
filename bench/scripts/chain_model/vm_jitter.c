// How often, and for how long, a core is taken away from a thread that never
// sleeps: one spinning thread per core reads CLOCK_MONOTONIC back to back
// and counts the gaps between reads (docs/benchmarks.md, "Where the
// milliseconds of the tail come from"). Nothing else of ours runs, so a gap
// is the guest kernel (an interrupt, a kernel thread) or the host (the vCPU
// descheduled): the floor under every latency tail measured on the machine.
//
// Usage: vm_jitter SECONDS CORE [CORE...]
//   prints, per core: gaps of 10-100 µs, 0.1-1 ms, 1-10 ms and over 10 ms
//   (count, and per second), the longest gap, the share of the time lost in
//   all gaps, and in gaps of 1 ms and more (a request that arrives in one of
//   those waits a millisecond or more, whatever serves it)
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { BUCKETS = 4 };
static const long bucket_floor_ns[BUCKETS] = {10000, 100000, 1000000, 10000000};
static const char *bucket_name[BUCKETS] = {"10-100us", "0.1-1ms", "1-10ms", ">10ms"};

struct probe {
    int core;
    double seconds;
    long count[BUCKETS];
    long lost_ns;
    long lost_ms_gaps_ns;
    long longest_ns;
    long reads;
};

static void *spin(void *arg) {
    struct probe *p = arg;
    pin(p->core);
    long start = now_ns();
    long end = start + (long)(p->seconds * 1e9);
    long last = start;
    for (;;) {
        long t = now_ns();
        long gap = t - last;
        last = t;
        p->reads++;
        if (gap >= bucket_floor_ns[0]) {
            int b = BUCKETS - 1;
            while (gap < bucket_floor_ns[b]) b--;
            p->count[b]++;
            p->lost_ns += gap;
            if (gap >= 1000000) p->lost_ms_gaps_ns += gap;
            if (gap > p->longest_ns) p->longest_ns = gap;
        }
        if (t >= end) break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SECONDS CORE [CORE...]\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    int n = argc - 2;
    struct probe *probes = calloc((size_t)n, sizeof *probes);
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    for (int i = 0; i < n; i++) {
        probes[i].core = atoi(argv[i + 2]);
        probes[i].seconds = seconds;
        pthread_create(&threads[i], NULL, spin, &probes[i]);
    }
    for (int i = 0; i < n; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < n; i++) {
        struct probe *p = &probes[i];
        printf("core %d: %.0f s, %ld reads;", p->core, seconds, p->reads);
        for (int b = 0; b < BUCKETS; b++)
            printf(" %s %ld (%.1f/s);", bucket_name[b], p->count[b], p->count[b] / seconds);
        printf(" longest %.2f ms; lost %.3f%%, in gaps >= 1 ms %.3f%%\n", p->longest_ns / 1e6,
               100.0 * (double)p->lost_ns / (seconds * 1e9),
               100.0 * (double)p->lost_ms_gaps_ns / (seconds * 1e9));
    }
    return 0;
}
