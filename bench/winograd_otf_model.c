// A C model of ResNet-50's layer-4 Winograd products (F(1x3, 3x3) along rows over
// 7x7x512 -> 512, AVX-512), for the question whether the transformed weights must be
// stored: U = G g per kernel row is 15 floats per channel pair (15.7 MB per conv) where
// the raw 3x3 weights are 9 (9.4 MB).
//
// Variants, each timed with cold caches (a 64 MB memset before every run):
//   stored     U read from memory, as the generated kernel does today;
//   sequential each block of 16 output channels first transforms its raw weights into
//              an L2 scratch, then runs its five positions' products from it;
//   pipelined  the same, but block b's products transform block b+1's weights (one
//              kernel row per pass over the input channels, three of the five passes)
//              into a second scratch, so the weight stream overlaps the FMAs.
// All three must produce the same M (printed: the largest difference to `stored`).
//
//   gcc -O3 -march=native -o /tmp/otf bench/winograd_otf_model.c && /tmp/otf 20
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IC 512
#define OCB 32  // blocks of 16 output channels
#define XI 5    // positions of F(3, 3) along a row
#define ROWS 9  // input rows a 7-row output reads (3x3, pad 1)
#define TILES 3 // tiles of 3 outputs covering a 7-wide row
#define OROWS 7

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// F(3, 3)'s G (points 0, 1, -1, 2, infinity up to scaling): what matters here is its
// cost, two pass-through rows and three combinations.
static const float G[5][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {1.f / 6, 1.f / 3, 2.f / 3}, {0, 0, 1}};

// U of kernel row r of one input channel: raw g[r][0..3] (3 vectors) -> scratch[xi][ic][r].
static inline void transform_row(const float *g, float *scr, int ic, int r) {
    __m512 a = _mm512_load_ps(g), b = _mm512_load_ps(g + 16), c = _mm512_load_ps(g + 32);
    __m512 h = _mm512_set1_ps(0.5f), ac = _mm512_add_ps(a, c);
    _mm512_store_ps(scr + (((size_t)0 * IC + ic) * 3 + r) * 16, a);
    _mm512_store_ps(scr + (((size_t)1 * IC + ic) * 3 + r) * 16, _mm512_mul_ps(h, _mm512_add_ps(ac, b)));
    _mm512_store_ps(scr + (((size_t)2 * IC + ic) * 3 + r) * 16, _mm512_mul_ps(h, _mm512_sub_ps(ac, b)));
    __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(G[3][0]), a,
                               _mm512_fmadd_ps(_mm512_set1_ps(G[3][1]), b, _mm512_mul_ps(_mm512_set1_ps(G[3][2]), c)));
    _mm512_store_ps(scr + (((size_t)3 * IC + ic) * 3 + r) * 16, d);
    _mm512_store_ps(scr + (((size_t)4 * IC + ic) * 3 + r) * 16, c);
}

// Position xi of output block ocb: 21 accumulators (7 rows x 3 tiles), per input channel
// the three kernel rows' U and 27 broadcasts of V. With `gnext`, also transforms kernel
// row `r` of the next block's raw weights into `snext`.
static void products(const float *U, const float *V, float *M, int xi, int ocb, const float *gnext, float *snext,
                     int r) {
    __m512 acc[OROWS * TILES];
    for (int i = 0; i < OROWS * TILES; i++) acc[i] = _mm512_setzero_ps();
    const float *vx = V + (size_t)xi * IC * ROWS * TILES;
    for (int ic = 0; ic < IC; ic++) {
        const float *u = U + (size_t)ic * 48;
        if (!gnext) _mm_prefetch((const char *)(u + 1024), _MM_HINT_T0);
        __m512 w0 = _mm512_load_ps(u), w1 = _mm512_load_ps(u + 16), w2 = _mm512_load_ps(u + 32);
        if (gnext) {
            const float *gi = gnext + ((size_t)ic * 9 + r * 3) * 16;
            for (int q = 0; q < 3; q++) _mm_prefetch((const char *)(gi + 8192 + 16 * q), _MM_HINT_T0);
            transform_row(gi, snext, ic, r);
        }
        const float *v = vx + (size_t)ic * ROWS * TILES;
#pragma GCC unroll 9
        for (int row = 0; row < ROWS; row++) {
#pragma GCC unroll 3
            for (int t = 0; t < TILES; t++) {
                __m512 x = _mm512_set1_ps(v[row * TILES + t]);
                if (row < OROWS) acc[row * TILES + t] = _mm512_fmadd_ps(x, w0, acc[row * TILES + t]);
                if (row >= 1 && row - 1 < OROWS) acc[(row - 1) * TILES + t] = _mm512_fmadd_ps(x, w1, acc[(row - 1) * TILES + t]);
                if (row >= 2) acc[(row - 2) * TILES + t] = _mm512_fmadd_ps(x, w2, acc[(row - 2) * TILES + t]);
            }
        }
    }
    float *m = M + ((size_t)xi * OCB + ocb) * OROWS * TILES * 16;
    for (int i = 0; i < OROWS * TILES; i++) _mm512_store_ps(m + 16 * i, acc[i]);
}

static void transform_block(const float *g, float *scr) {
    for (int ic = 0; ic < IC; ic++) {
        for (int q = 0; q < 9; q++) _mm_prefetch((const char *)(g + ((size_t)ic * 9 + q) * 16 + 4096), _MM_HINT_T0);
        for (int r = 0; r < 3; r++) transform_row(g + ((size_t)ic * 9 + r * 3) * 16, scr, ic, r);
    }
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    size_t nU = (size_t)XI * OCB * IC * 48, nG = (size_t)OCB * IC * 9 * 16, nV = (size_t)XI * IC * ROWS * TILES;
    size_t nM = (size_t)XI * OCB * OROWS * TILES * 16, nS = (size_t)XI * IC * 48;
    float *U = aligned_alloc(64, nU * 4 + 65536), *Gr = aligned_alloc(64, nG * 4 + 65536), *V = aligned_alloc(64, nV * 4);
    float *M[3], *scr = aligned_alloc(64, nS * 4), *scr2 = aligned_alloc(64, nS * 4);
    for (int k = 0; k < 3; k++) M[k] = aligned_alloc(64, nM * 4);
    size_t nf = 64 << 20;
    char *flush = malloc(nf);
    for (size_t i = 0; i < nG; i++) Gr[i] = 1e-3f * ((i * 7) % 13) - 6e-3f;
    for (size_t i = 0; i < nV; i++) V[i] = 1e-2f * ((i * 5) % 11) - 5e-2f;
    for (int ocb = 0; ocb < OCB; ocb++)
        for (int ic = 0; ic < IC; ic++)
            for (int r = 0; r < 3; r++)
                for (int xi = 0; xi < XI; xi++)
                    for (int l = 0; l < 16; l++) {
                        float s = 0;
                        for (int k = 0; k < 3; k++) s += G[xi][k] * Gr[((((size_t)ocb * IC + ic) * 3 + r) * 3 + k) * 16 + l];
                        U[((((size_t)xi * OCB + ocb) * IC + ic) * 3 + r) * 16 + l] = s;
                    }
    const char *names[3] = {"stored (15.7 MB)", "sequential (9.4 MB)", "pipelined (9.4 MB)"};
    double best[3] = {1e9, 1e9, 1e9}, sum[3] = {0, 0, 0};
    for (int rep = 0; rep < reps; rep++)
        for (int var = 0; var < 3; var++) {
            memset(flush, rep & 255, nf);
            double t = now();
            if (var == 0) {
                for (int xi = 0; xi < XI; xi++)
                    for (int ocb = 0; ocb < OCB; ocb++) products(U + ((size_t)xi * OCB + ocb) * IC * 48, V, M[0], xi, ocb, 0, 0, 0);
            } else if (var == 1) {
                for (int ocb = 0; ocb < OCB; ocb++) {
                    transform_block(Gr + (size_t)ocb * IC * 144, scr);
                    for (int xi = 0; xi < XI; xi++) products(scr + (size_t)xi * IC * 48, V, M[1], xi, ocb, 0, 0, 0);
                }
            } else {
                float *cur = scr, *next = scr2;
                transform_block(Gr, cur);
                for (int ocb = 0; ocb < OCB; ocb++) {
                    const float *gn = ocb + 1 < OCB ? Gr + (size_t)(ocb + 1) * IC * 144 : 0;
                    for (int xi = 0; xi < XI; xi++)
                        products(cur + (size_t)xi * IC * 48, V, M[2], xi, ocb, xi < 3 ? gn : 0, next, xi);
                    float *tmp = cur;
                    cur = next;
                    next = tmp;
                }
            }
            t = now() - t;
            if (t < best[var]) best[var] = t;
            sum[var] += t;
        }
    for (int var = 0; var < 3; var++) {
        double md = 0;
        for (size_t i = 0; i < nM; i++) {
            double d = M[var][i] - M[0][i];
            md = d < 0 ? (-d > md ? -d : md) : (d > md ? d : md);
        }
        printf("%-20s best %.3f ms, mean %.3f ms, max diff to stored %.1e\n", names[var], best[var] * 1e3,
               sum[var] / reps * 1e3, md);
    }
    return 0;
}
