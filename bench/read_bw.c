// One core's read bandwidth from a buffer of N MiB (argument, default 400): eight
// independent 512-bit load streams summed into registers, five passes, each printed.
// Small buffers read from cache, large ones from DRAM: the figures behind "weights stream
// from DRAM" in BENCHMARKS.md. A second argument `huge` asks for transparent huge pages
// (madvise, Linux), as resnetc's weight buffers do; without it the buffer has the
// system's default pages. Build: gcc -O2 -mavx512f -o /tmp/read_bw bench/read_bw.c
#include <immintrin.h>
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

int main(int argc, char **argv) {
    char *end = 0;
    unsigned long mib = argc > 1 ? strtoul(argv[1], &end, 10) : 400;
    if ((argc > 1 && (*end != '\0' || argv[1][0] == '-')) || mib == 0 || mib > (1ul << 20)) {
        fprintf(stderr, "usage: read_bw MIB [huge]   (MIB from 1 to 1048576)\n");
        return 1;
    }
    int huge = argc > 2 && strcmp(argv[2], "huge") == 0;
    const size_t align = 2u << 20; // a huge page, and a multiple of the 64 bytes loads need
    size_t n = (size_t)mib << 18;   // floats
    float *a = aligned_alloc(align, n * 4);
    if (!a) {
        fprintf(stderr, "cannot allocate %lu MiB\n", mib);
        return 1;
    }
#ifdef MADV_HUGEPAGE
    if (huge && madvise(a, n * 4, MADV_HUGEPAGE) != 0) perror("madvise(MADV_HUGEPAGE)");
#endif
    for (size_t i = 0; i < n; i++) a[i] = (float)(i % 1000);
    for (int pass = 0; pass < 5; pass++) {
        double t = now();
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        for (size_t i = 0; i < n; i += 128) {
            s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
            s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
            s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
            s4 = _mm512_add_ps(s4, _mm512_load_ps(a + i + 64));
            s5 = _mm512_add_ps(s5, _mm512_load_ps(a + i + 80));
            s6 = _mm512_add_ps(s6, _mm512_load_ps(a + i + 96));
            s7 = _mm512_add_ps(s7, _mm512_load_ps(a + i + 112));
        }
        t = now() - t;
        __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)),
                                   _mm512_add_ps(_mm512_add_ps(s4, s5), _mm512_add_ps(s6, s7)));
        // Printing the sum keeps the loads.
        printf("%lu MiB%s: %.1f GB/s (sum %g)\n", mib, huge ? " (huge pages)" : "", n * 4 / t / 1e9,
               _mm512_reduce_add_ps(sum));
    }
    free(a);
    return 0;
}
