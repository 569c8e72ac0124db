// A C model of one level of Strassen's algorithm for a 1x1 conv, C = W X (+ bias, ReLU)
// with W: M x K weights, X: K x N activations (input channels x pixels), against the
// plain product, with the register tiles of the two backends: the JIT's (8 pixels x one
// 4-lane vector, broadcast-FMA) and the Rust backend's (14 pixels x two 16-lane
// vectors). The question it answers: do seven half-size products beat eight when their
// sums of blocks cost memory passes, at 128 and at 512 bits?
//
// Variants, best of the runs, caches warm:
//   direct      pack X into panels [N/P][K][P], then the tiled product;
//   strassen    pack the seven activation sums into seven half-size panels, then the seven
//               products (weight sums made once, outside the timing), each added into
//               the output quadrants it enters (product by product);
//   task-local  the same seven products per (output block, tile) in turn, the quadrants
//               in a local buffer, each stored with bias and ReLU after its last product.
// Prints the product times (the packs apart), their ratios to the direct product, and
// the largest difference from the direct result relative to its largest value.
//
// Build and run (M K N, N a multiple of 2 P: 16 at 128 bits, 28 at 512):
//   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=128 -o /tmp/s128 bench/strassen_model.c
//   gcc -O3 -march=x86-64-v4 -DWIDE -o /tmp/s512 bench/strassen_model.c
//   /tmp/s128 1024 256 208 20; /tmp/s512 1024 256 196 30
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef WIDE
#define VW 4
#define P 8
#define V 1
typedef __m128 vec;
#define vload _mm_loadu_ps
#define vstore _mm_storeu_ps
#define vbcast(p) _mm_broadcast_ss(p)
#define vfma(a, b, c) _mm_fmadd_ps(a, b, c)
#define vzero _mm_setzero_ps
#define vadd _mm_add_ps
#define vsub _mm_sub_ps
#define vmax _mm_max_ps
#else
#define VW 16
#define P 14
#define V 2
typedef __m512 vec;
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vbcast(p) _mm512_set1_ps(*(p))
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vzero _mm512_setzero_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmax _mm512_max_ps
#endif
#define MB (VW * V) // output channels per register tile

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// One register tile's product over a reduction of `k`: `acc[v][p]` = sum over `kk` of the
// weight vector `v` of tile `wb` ([K][MB]) times the pixel `p` of panel tile `pb` ([K][P]),
// broadcast; the direct convs' loop, and each of Strassen's seven products.
static inline void tile_product(vec acc[V][P], const float *wb, const float *pb, int k) {
    for (int v = 0; v < V; v++)
        for (int p = 0; p < P; p++) acc[v][p] = vzero();
    for (int kk = 0; kk < k; kk++) {
        vec wv[V];
        for (int v = 0; v < V; v++) wv[v] = vload(wb + kk * MB + v * VW);
        for (int p = 0; p < P; p++) {
            vec b = vbcast(pb + kk * P + p);
            for (int v = 0; v < V; v++) acc[v][p] = vfma(b, wv[v], acc[v][p]);
        }
    }
}

// Weights: [M/MB][K][MB]. Panel: [N/P][K][P]. C: [M/VW][N][VW].
// dst modes: 0 store, 1 add, 2 sub; final: add bias, relu.
typedef struct {
    float *c;
    int mode;
    int final;
} Dst;

static void gemm(const float *w, const float *panel, int m, int k, int n, Dst *d, int nd,
                 int cstride_vec, const float *bias) {
    // cstride_vec: floats between output vectors in C ([M/VW][N][VW] -> Nfull*VW)
    for (int mb = 0; mb < m / MB; mb++) {
        const float *wb = w + (size_t)mb * k * MB;
        for (int t = 0; t < n / P; t++) {
            vec acc[V][P];
            tile_product(acc, wb, panel + (size_t)t * k * P, k);
            for (int i = 0; i < nd; i++) {
                for (int v = 0; v < V; v++) {
                    int ov = mb * V + v;
                    float *cb = d[i].c + (size_t)ov * cstride_vec + (size_t)t * P * VW;
                    vec bv = d[i].final ? vload(bias + (size_t)ov * VW) : vzero();
                    for (int p = 0; p < P; p++) {
                        vec x = acc[v][p];
                        if (d[i].mode == 1) x = vadd(vload(cb + p * VW), x);
                        else if (d[i].mode == 2) x = vsub(vload(cb + p * VW), x);
                        if (d[i].final) x = vmax(vadd(x, bv), vzero());
                        vstore(cb + p * VW, x);
                    }
                }
            }
        }
    }
}

// Pack X ([K/VW][N][VW] activations) into panels [N/P][K][P] for rows k0.., cols n0..,
// optionally with a second block added (sign).
static void pack(float *panel, const float *x, int kfull, int nfull, int k0, int n0, int k,
                 int n, int k1, int n1, int sign) {
    for (int t = 0; t < n / P; t++)
        for (int kk = 0; kk < k; kk++)
            for (int p = 0; p < P; p++) {
                int ka = k0 + kk, na = n0 + t * P + p;
                float a = x[((size_t)(ka / VW) * nfull + na) * VW + ka % VW];
                if (sign) {
                    int kb = k1 + kk, nb = n1 + t * P + p;
                    float b = x[((size_t)(kb / VW) * nfull + nb) * VW + kb % VW];
                    a = sign > 0 ? a + b : a - b;
                }
                panel[((size_t)t * k + kk) * P + p] = a;
            }
    (void)kfull;
}

static void pack_w(float *dst, const float *w, int mfull, int kfull, int m0, int k0, int m,
                   int k, int m1, int k1, int sign) {
    // w: plain [M][K]
    for (int mb = 0; mb < m / MB; mb++)
        for (int kk = 0; kk < k; kk++)
            for (int j = 0; j < MB; j++) {
                float a = w[(size_t)(m0 + mb * MB + j) * kfull + k0 + kk];
                if (sign) {
                    float b = w[(size_t)(m1 + mb * MB + j) * kfull + k1 + kk];
                    a = sign > 0 ? a + b : a - b;
                }
                dst[((size_t)mb * k + kk) * MB + j] = a;
            }
    (void)mfull;
}


// Task-local Strassen: for each output block mb (of M/2) and tile t (of N/2), the seven
// products in turn; quadrant partial sums in a small local buffer, each quadrant's last
// product adds the bias, applies ReLU and stores into C.
static void strassen_tasks(float **t7, float **s7, int m2, int k2, int n2, float *c, int nfull,
                           const float *bias) {
    // signs[i][q]: how product i enters quadrant q (11, 12, 21, 22): 0 none, 1 +, -1 -
    static const int sg[7][4] = {{1, 0, 0, 1}, {0, 0, 1, -1}, {0, 1, 0, 1}, {1, 0, 1, 0},
                                 {-1, 1, 0, 0}, {0, 0, 0, 1}, {1, 0, 0, 0}};
    static const int last[4] = {6, 4, 3, 5};
    static const int first[4] = {0, 2, 1, 0};
    for (int mb = 0; mb < m2 / MB; mb++)
        for (int t = 0; t < n2 / P; t++) {
            vec q[4][V][P];
            for (int i = 0; i < 7; i++) {
                const float *wb = t7[i] + (size_t)mb * k2 * MB;
                vec acc[V][P];
                tile_product(acc, wb, s7[i] + (size_t)t * k2 * P, k2);
                for (int qq = 0; qq < 4; qq++) {
                    int sgn = sg[i][qq];
                    if (!sgn) continue;
                    for (int v = 0; v < V; v++)
                        for (int p = 0; p < P; p++) {
                            vec x = acc[v][p];
                            if (i == first[qq]) q[qq][v][p] = sgn > 0 ? x : vsub(vzero(), x);
                            else q[qq][v][p] = sgn > 0 ? vadd(q[qq][v][p], x) : vsub(q[qq][v][p], x);
                        }
                    if (i == last[qq]) {
                        int mo = (qq >= 2) ? m2 : 0, no = (qq & 1) ? n2 : 0;
                        for (int v = 0; v < V; v++) {
                            int ov = (mo + mb * MB) / VW + v;
                            vec bv = vload(bias + (size_t)ov * VW);
                            float *cb = c + (size_t)ov * nfull * VW + (size_t)(no + t * P) * VW;
                            for (int p = 0; p < P; p++)
                                vstore(cb + p * VW, vmax(vadd(q[qq][v][p], bv), vzero()));
                        }
                    }
                }
            }
        }
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: strassen_model M K N [RUNS]   (N a multiple of %d)\n", 2 * P);
        return 1;
    }
    int M = atoi(argv[1]), K = atoi(argv[2]), N = atoi(argv[3]);
    int reps = argc > 4 ? atoi(argv[4]) : 20;
    if (M <= 0 || K <= 0 || N <= 0 || N % (2 * P) != 0 || reps <= 0) {
        fprintf(stderr, "strassen_model: M, K, N and RUNS must be positive, N a multiple of %d\n", 2 * P);
        return 1;
    }
    int M2 = M / 2, K2 = K / 2, N2 = N / 2;
    float *w = malloc(sizeof(float) * M * K), *x = malloc(sizeof(float) * K * N);
    float *bias = malloc(sizeof(float) * M);
    srand(1);
    for (size_t i = 0; i < (size_t)M * K; i++) w[i] = rand() / (float)RAND_MAX - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
    for (int i = 0; i < M; i++) bias[i] = rand() / (float)RAND_MAX - 0.5f;
    float *wp = aligned_alloc(64, sizeof(float) * M * K);
    pack_w(wp, w, M, K, 0, 0, M, K, 0, 0, 0);
    float *panel = aligned_alloc(64, sizeof(float) * K * N);
    float *c3 = aligned_alloc(64, sizeof(float) * M * N), *c1 = aligned_alloc(64, sizeof(float) * M * N), *c2 = aligned_alloc(64, sizeof(float) * M * N);
    // Strassen weights T1..T7 (A = W: A11 = rows 0.., cols 0..; A12 = rows 0, cols K2; ...)
    float *t[7], *s[7];
    for (int i = 0; i < 7; i++) {
        t[i] = aligned_alloc(64, sizeof(float) * M2 * K2);
        s[i] = aligned_alloc(64, sizeof(float) * K2 * N2);
    }
    // M1 = (A11 + A22)(B11 + B22); M2 = (A21 + A22) B11; M3 = A11 (B12 - B22);
    // M4 = A22 (B21 - B11); M5 = (A11 + A12) B22; M6 = (A21 - A11)(B11 + B12);
    // M7 = (A12 - A22)(B21 + B22)
    pack_w(t[0], w, M, K, 0, 0, M2, K2, M2, K2, 1);
    pack_w(t[1], w, M, K, M2, 0, M2, K2, M2, K2, 1);
    pack_w(t[2], w, M, K, 0, 0, M2, K2, 0, 0, 0);
    pack_w(t[3], w, M, K, M2, K2, M2, K2, 0, 0, 0);
    pack_w(t[4], w, M, K, 0, 0, M2, K2, 0, K2, 1);
    pack_w(t[5], w, M, K, M2, 0, M2, K2, 0, 0, -1);
    pack_w(t[6], w, M, K, 0, K2, M2, K2, M2, K2, -1);
    double best_d = 1e9, best_s = 1e9, best_p = 1e9, best_pd = 1e9, best_g = 1e9, best_l = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        pack(panel, x, K, N, 0, 0, K, N, 0, 0, 0);
        double t0b = now();
        if (t0b - t0 < best_pd) best_pd = t0b - t0;
        t0 = t0b;
        Dst d = {c1, 0, 1};
        gemm(wp, panel, M, K, N, &d, 1, N * VW, bias);
        double t1 = now();
        // B blocks: B11 = k 0.., n 0..; B12 = k 0, n N2; B21 = k K2, n 0; B22 = k K2, n N2
        pack(s[0], x, K, N, 0, 0, K2, N2, K2, N2, 1);
        pack(s[1], x, K, N, 0, 0, K2, N2, 0, 0, 0);
        pack(s[2], x, K, N, 0, N2, K2, N2, K2, N2, -1);
        pack(s[3], x, K, N, K2, 0, K2, N2, 0, 0, -1);
        pack(s[4], x, K, N, K2, N2, K2, N2, 0, 0, 0);
        pack(s[5], x, K, N, 0, 0, K2, N2, 0, N2, 1);
        pack(s[6], x, K, N, K2, 0, K2, N2, K2, N2, 1);
        double t2 = now();
        // C quadrants in [M/VW][N][VW]: C11 = c2, C12 = c2 + N2*VW, C21 = c2 + M2/VW*N*VW, C22 = ...
        float *q11 = c2, *q12 = c2 + N2 * VW, *q21 = c2 + (size_t)(M2 / VW) * N * VW,
              *q22 = q21 + N2 * VW;
        const float *b1 = bias, *b2 = bias + M2;
        Dst d1[2] = {{q11, 0, 0}, {q22, 0, 0}};
        gemm(t[0], s[0], M2, K2, N2, d1, 2, N * VW, b1);
        Dst d2[2] = {{q21, 0, 0}, {q22, 2, 0}};
        gemm(t[1], s[1], M2, K2, N2, d2, 2, N * VW, b2);
        Dst d3[2] = {{q12, 0, 0}, {q22, 1, 0}};
        gemm(t[2], s[2], M2, K2, N2, d3, 2, N * VW, b1);
        Dst d4[2] = {{q11, 1, 0}, {q21, 1, 1}};
        gemm(t[3], s[3], M2, K2, N2, d4, 2, N * VW, b2);
        Dst d5[2] = {{q11, 2, 0}, {q12, 1, 1}};
        gemm(t[4], s[4], M2, K2, N2, d5, 2, N * VW, b1);
        Dst d6[1] = {{q22, 1, 1}};
        gemm(t[5], s[5], M2, K2, N2, d6, 1, N * VW, b2);
        Dst d7[1] = {{q11, 1, 1}};
        gemm(t[6], s[6], M2, K2, N2, d7, 1, N * VW, b1);
        double t3 = now();
        strassen_tasks(t, s, M2, K2, N2, c3, N, bias);
        double t4 = now();
        if (t4 - t3 < best_l) best_l = t4 - t3;
        if (t1 - t0 < best_d) best_d = t1 - t0;
        if (t3 - t1 < best_s) best_s = t3 - t1;
        if (t3 - t2 < best_g) best_g = t3 - t2;
        if (t2 - t1 < best_p) best_p = t2 - t1;
    }
    double maxd = 0, maxr = 0;
    for (size_t i = 0; i < (size_t)M * N; i++) {
        double e = c1[i] - c2[i], e3 = c1[i] - c3[i];
        if (e < 0) e = -e;
        if (e3 < 0) e3 = -e3;
        if (e3 > e) e = e3;
        if (e > maxd) maxd = e;
        double a = c1[i] < 0 ? -c1[i] : c1[i];
        if (a > maxr) maxr = a;
    }
    double fl = 2.0 * M * K * N;
    printf("M=%4d K=%4d N=%4d  direct gemm %.3f ms (%.1f GF/s, pack %.3f)  strassen gemms %.3f (pack %.3f)  ratio %.3f  task-local %.3f (ratio %.3f)  rel err %.1e\n",
           M, K, N, best_d * 1e3, fl / best_d * 1e-9, best_pd * 1e3, best_g * 1e3, best_p * 1e3,
           best_g / best_d, best_l * 1e3, best_l / best_d, maxd / maxr);
    return 0;
}
