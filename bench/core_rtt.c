// Round trip of a cache line between two threads, the two cores a 2-thread run gets:
// tells which phase of a shared host a measurement ran in. On the 2-vCPU Zen 5 VM of
// BENCHMARKS.md (eighteenth session) it reads 0.08-0.14 us while the two vCPUs share a
// cache and about 0.37 us while they do not; resnetc's 2-thread runs of ResNet-50 took
// 13.2-13.7 and 15.4-15.5 ms in those phases. Prints the median over 21 batches of 2000 round trips, in
// microseconds. `bench/run.sh` builds it and `compare.py --rtt-probe` runs it before every
// round. Build and run alone:
//   cc -O2 -pthread -o /tmp/core_rtt bench/core_rtt.c && /tmp/core_rtt
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROUNDS = 2000, BATCHES = 21 };

static _Atomic long turn;

// Waits until `turn` holds `want`; yields now and then, so that it ends on one CPU too.
static void await(long want) {
    for (long spins = 1; atomic_load_explicit(&turn, memory_order_acquire) != want; spins++) {
        if (spins % 4096 == 0) sched_yield();
    }
}

static void *pong(void *unused) {
    (void)unused;
    for (long i = 0; i < (long)ROUNDS * BATCHES; i++) {
        await(2 * i + 1);
        atomic_store_explicit(&turn, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    pthread_t other;
    if (pthread_create(&other, NULL, pong, NULL) != 0) {
        fprintf(stderr, "core_rtt: cannot start a thread\n");
        return 1;
    }
    double us[BATCHES];
    for (long b = 0; b < BATCHES; b++) {
        double t0 = now();
        for (long r = 0; r < ROUNDS; r++) {
            long i = b * ROUNDS + r;
            atomic_store_explicit(&turn, 2 * i + 1, memory_order_release);
            await(2 * i + 2);
        }
        us[b] = (now() - t0) * 1e6 / ROUNDS;
    }
    pthread_join(other, NULL);
    qsort(us, BATCHES, sizeof us[0], by_value);
    printf("%.3f\n", us[BATCHES / 2]);
    return 0;
}
