// What it costs a core to write lines that another core has read since its last write.
//
//     cc -O2 -mavx512f -mprfchw -mclflushopt -o cross_write bench/cross_write.c -lpthread && ./cross_write [MODE]
//
// Two threads, pinned to CPUs 0 and 1, share a 900 KB buffer (the size of a Winograd conv's
// transformed input on ResNet's 28x28x128 convs). Per iteration thread A writes every line
// of it (one 64-byte vector each) and is timed; then thread B touches a quarter of the lines
// (every fourth; its pass is timed too), and A writes again. Modes, what B does and how A
// writes:
//   0: B idle                    (A's lines stay its own: the baseline)
//   1: B reads a quarter         (those lines are then shared; A's store must take them back)
//   2: as 1, A prefetches each line with write intent (`prefetchw`) eight lines ahead
//   3: B writes a quarter        (those lines are then B's alone)
//   4: as 1, A writes with non-temporal stores (past the caches)
// and, with A's plain stores, ways for B to read that might leave A's next store cheap:
//   5: B reads each line after a write-intent prefetch of it (`prefetchw`)
//   6: B reads each line, then flushes it from every cache (`clflushopt`)
//   7: B reads each line after an atomic OR of zero into it (`lock or`: the line is B's)
//   8: B reads each line after a non-temporal prefetch of it (`prefetchnta`)
//   9: B reads each line, then stores another value to it (the line is then B's, as in 3;
//      what the Winograd products do to the `V` they have read)
// and what becomes of B's copies later:
//  10: as 3, then B streams 4 MB of its own memory (B's lines leave its L2)
//  11: as 1, then the same stream (B's read copies leave its L2)
//  12: B only streams (the baseline of 10 and 11)
//  13: B writes a quarter, then reads it back (its own lines, read by their writer)
// Run it with the core RTT probe (`core_rtt.c`) beside it: on a 2-vCPU AMD EPYC VM the
// figures depend on whether the host placed the vCPUs on cores that share a cache.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (900 * 1024)
#define LINES (BYTES / 64)
#define ITERS 2000
// Modes 10-12's stream of B's own memory.
#define EVICT_BYTES (4 << 20)

static float *buf, *evict;
static int mode;
// Even: A's turn; odd: B's; negative: stop.
static atomic_int turn;
static volatile float sink;
// B's seconds over all iterations.
static double b_seconds;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *thread_b(void *arg) {
    (void)arg;
    pin(1);
    for (;;) {
        int t;
        while ((t = atomic_load(&turn)) >= 0 && t % 2 == 0) {
        }
        if (t < 0) return NULL;
        double t0 = now();
        __m512 acc = _mm512_setzero_ps();
        for (int l = 0; l < LINES; l += 4) {
            float *line = buf + 16 * l;
            if (mode == 0 || mode == 12) continue;
            if (mode == 3 || mode == 10 || mode == 13) {
                _mm512_store_ps(line, acc);
                continue;
            }
            if (mode == 5) __builtin_prefetch(line, 1, 3);
            if (mode == 7) __atomic_fetch_or((int *)line, 0, __ATOMIC_RELAXED);
            if (mode == 8) _mm_prefetch((const char *)line, _MM_HINT_NTA);
            acc = _mm512_add_ps(acc, _mm512_load_ps(line));
            if (mode == 6) _mm_clflushopt(line);
            // Another value than the one read: a store of the same value could be left out.
            if (mode == 9) _mm512_store_ps(line, _mm512_add_ps(acc, _mm512_set1_ps(1.0f)));
        }
        if (mode == 13) {
            // A second pass, so that the loads come from the cache, not the stores'
            // values forwarded (the barrier keeps the compiler from doing the same).
            __asm__ volatile("" ::: "memory");
            for (int l = 0; l < LINES; l += 4) acc = _mm512_add_ps(acc, _mm512_load_ps(buf + 16 * l));
        }
        if (mode >= 10 && mode <= 12) {
            for (int i = 0; i < EVICT_BYTES / 4; i += 16) acc = _mm512_add_ps(acc, _mm512_load_ps(evict + i));
            for (int i = 0; i < EVICT_BYTES / 4; i += 16) _mm512_store_ps(evict + i, acc);
        }
        sink = _mm512_reduce_add_ps(acc);
        b_seconds += now() - t0;
        atomic_store(&turn, t + 1);
    }
}

int main(int argc, char **argv) {
    char *end = NULL;
    long only = argc == 2 ? strtol(argv[1], &end, 10) : -1;
    if (argc > 2 || (argc == 2 && (end == argv[1] || *end || only < 0 || only > 13))) {
        fprintf(stderr, "usage: cross_write [MODE]   (MODE from 0 to 13; all of them without it)\n");
        return 1;
    }
    evict = aligned_alloc(64, EVICT_BYTES);
    memset(evict, 0, EVICT_BYTES);
    for (mode = 0; mode <= 13; mode++) {
        if (only >= 0 && only != mode) continue;
        buf = aligned_alloc(64, BYTES);
        memset(buf, 0, BYTES);
        atomic_store(&turn, 0);
        b_seconds = 0;
        pin(0);
        pthread_t b;
        pthread_create(&b, NULL, thread_b, NULL);
        double total = 0;
        __m512 v = _mm512_set1_ps(1.0f);
        for (int it = 0; it < ITERS; it++) {
            double t0 = now();
            for (int l = 0; l < LINES; l++) {
                if (mode == 2 && l + 8 < LINES) __builtin_prefetch(buf + 16 * (l + 8), 1, 3);
                if (mode == 4)
                    _mm512_stream_ps(buf + 16 * l, v);
                else
                    _mm512_store_ps(buf + 16 * l, v);
            }
            if (mode == 4) _mm_sfence();
            total += now() - t0;
            int t = atomic_load(&turn);
            atomic_store(&turn, t + 1);
            while (atomic_load(&turn) == t + 1) {
            }
        }
        atomic_store(&turn, -2);
        pthread_join(b, NULL);
        free(buf);
        printf("mode %d: %.1f us per write of %d KB, B %.1f us per pass (means over %d)\n", mode, total / ITERS * 1e6,
               BYTES / 1024, b_seconds / ITERS * 1e6, ITERS);
    }
    return 0;
}
