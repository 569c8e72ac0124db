// Peak fp32 FMA throughput of one core per vector width: a loop of independent
// `vfmadd231ps` chains (12 per loop body, enough to hide the FMA latency on two ports),
// timed three times per width; prints GFLOP/s (2 flops per lane per FMA), best of three.
// The reference for "percent of peak" figures (ResNet-50's direct convs on the Cranelift
// JIT are compared with the 128-bit figure). Build and run:
//   gcc -O2 -o fma_peak bench/fma_peak.c && ./fma_peak
// Needs an x86-64 CPU with AVX-512F for the 512-bit line (skipped otherwise).
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA12(R)                                                                           \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "0\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "1\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "2\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "3\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "4\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "5\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "6\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "7\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "8\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "9\n\t"                                       \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "10\n\t"                                      \
    "vfmadd231ps %%" R "14, %%" R "15, %%" R "11\n\t"

// One timed loop of `n` iterations of 24 FMAs (two bodies) at register width `R`.
#define LOOP(R, n)                                                                         \
    do {                                                                                   \
        long i = (n);                                                                      \
        __asm__ volatile("vxorps %%" R "14, %%" R "14, %%" R "14\n\t"                      \
                         "vxorps %%" R "15, %%" R "15, %%" R "15\n\t"                      \
                         "1:\n\t" FMA12(R) FMA12(R) "dec %0\n\t"                           \
                         "jnz 1b\n\t"                                                      \
                         : "+r"(i)::"memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",      \
                           "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",       \
                           "xmm14", "xmm15");                                              \
    } while (0)

static double best(int width, long n) {
    double top = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        if (width == 128) LOOP("xmm", n);
        if (width == 256) LOOP("ymm", n);
        if (width == 512) LOOP("zmm", n);
        double g = n * 24.0 * 2 * (width / 32) / (now() - t0) / 1e9;
        if (g > top) top = g;
    }
    return top;
}

int main(void) {
    const long n = 50000000;
    printf("128-bit (xmm): %.1f GFLOP/s\n", best(128, n));
    printf("256-bit (ymm): %.1f GFLOP/s\n", best(256, n));
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        printf("512-bit (zmm): %.1f GFLOP/s\n", best(512, n));
    } else {
        printf("512-bit (zmm): no AVX-512F\n");
    }
    return 0;
}
