// One core's read bandwidth from a buffer of N MB (argument): four independent 512-bit
// load streams summed into registers, five passes, each printed. Small buffers read from
// cache, large ones from DRAM: the figures behind "weights stream from DRAM" in
// BENCHMARKS.md. Build: gcc -O2 -mavx512f -o /tmp/read_bw bench/read_bw.c
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 400;
    size_t n = mb * 1024 * 1024 / 4 / 64 * 64;
    if (n == 0) {
        fprintf(stderr, "usage: read_bw MB (at least 1)\n");
        return 1;
    }
    float *a = aligned_alloc(64, n * 4);
    if (!a) {
        fprintf(stderr, "cannot allocate %zu MB\n", mb);
        return 1;
    }
    for (size_t i = 0; i < n; i++) a[i] = (float)(i % 1000);
    for (int pass = 0; pass < 5; pass++) {
        double t = now();
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (size_t i = 0; i < n; i += 64) {
            s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
            s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
            s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
        }
        t = now() - t;
        // Printing the sum keeps the loads.
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        printf("%zu MB: %.1f GB/s (sum %g)\n", mb, n * 4 / t / 1e9, sum);
    }
    free(a);
    return 0;
}
