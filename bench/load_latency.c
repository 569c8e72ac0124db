// One core's load latency from a buffer of N MiB (argument, default 400): a chase through
// the buffer's 64-byte lines in one random cycle, each load's address the value the last
// one read, so no two loads overlap and the prefetchers cannot guess the next line.
// Prints nanoseconds per load. Swept over sizes, it shows how much cache a core can use
// (on the 2-vCPU Zen 4 VM of the twenty-eighth session: about 8 MiB in most runs, less
// in some, though `lscpu` reports a 32 MB L3; BENCHMARKS.md). A second argument `huge`
// asks for transparent huge pages (madvise, Linux; the buffer is rounded up to whole
// 2 MiB pages), so that the loads do not also miss the TLB; the output says whether the
// advice was taken, not whether the kernel gave huge pages (AnonHugePages in
// /proc/PID/smaps).
// Build: gcc -O2 -o /tmp/load_latency bench/load_latency.c
#define _GNU_SOURCE // clock_gettime and, on Linux, MADV_HUGEPAGE under -std=c11 too
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// xorshift64: a seeded generator, so every run chases the same cycle.
static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv) {
    char *end = 0;
    unsigned long mib = argc > 1 ? strtoul(argv[1], &end, 10) : 400;
    if ((argc > 1 && (*end != '\0' || argv[1][0] == '-')) || mib == 0 || mib > (1ul << 20) ||
        mib > SIZE_MAX >> 21 || (argc > 2 && strcmp(argv[2], "huge") != 0) || argc > 3) {
        fprintf(stderr, "usage: load_latency MIB [huge]   (MIB from 1 to 1048576)\n");
        return 1;
    }
    int huge = argc > 2;
    const size_t page = 2u << 20; // a huge page
    size_t lines = (size_t)mib << 14; // 64-byte lines
    size_t bytes = (lines * 64 + page - 1) / page * page; // a multiple of the alignment
    uint64_t *buf = aligned_alloc(page, bytes);
    size_t *order = malloc(lines * sizeof *order);
    if (!buf || !order) {
        fprintf(stderr, "cannot allocate %lu MiB\n", mib);
        return 1;
    }
    const char *pages = "";
    if (huge) {
#ifdef MADV_HUGEPAGE
        if (madvise(buf, bytes, MADV_HUGEPAGE) == 0) {
            pages = " (huge pages advised)";
        } else {
            perror("madvise(MADV_HUGEPAGE)");
            pages = " (huge pages refused)";
        }
#else
        pages = " (no huge pages on this system)";
#endif
    }
    // A random order of the lines (Fisher-Yates); each line holds the index (in words) of
    // the next line of the cycle in its first word.
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < lines; i++) order[i] = i;
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j = next(&seed) % (i + 1);
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) buf[order[i] * 8] = order[(i + 1) % lines] * 8;
    free(order);
    // One pass to bring in what fits, then the timed loads.
    uint64_t at = 0;
    for (size_t i = 0; i < lines; i++) at = buf[at];
    const size_t loads = 4000000;
    double t0 = now();
    for (size_t i = 0; i < loads; i++) at = buf[at];
    double t1 = now();
    // `at` is printed so that the chase is not optimized away.
    printf("%lu MiB%s: %.1f ns per load (end %llu)\n", mib, pages,
           (t1 - t0) / loads * 1e9, (unsigned long long)at);
    free(buf);
    return 0;
}
