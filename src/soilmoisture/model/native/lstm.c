/* Native LSTM training kernel: one model, a whole training run (or a slice of epochs), one call.
 *
 * Semantics are those of soilmoisture.model.jax_engine (and so of the plain Keras loop): stacked LSTM
 * layers (Keras gate order i, f, c, o; zero initial state), Dropout after each recurrent layer, Dense(1)
 * on the last layer's output, per-series MAE over observed target days (or missing days counted as 0),
 * L2 on the recurrent kernels, Adam as Keras 3 writes it with the triangular cyclical learning rate at
 * the model's own step count. Dropout masks come from the same counter-based hash as the JAX engine,
 * so both engines give the same model from the same seed.
 *
 * Speed (why this file exists): batch size 1 means every optimizer step is one 883-day recurrence whose
 * per-day work is a 16 x 64 matrix-vector product; XLA runs it as many tiny kernels. Here one model's
 * weights stay in L1 cache, the input-to-gate products of all days are computed before the time loop,
 * the backward loop carries only dh/dc (weight-gradient products are done over all days after it), and
 * the caller runs one model per core.
 *
 * Compiled at first use by soilmoisture.model.native_engine with the machine's gcc, one library per
 * number of units (NH, a compile-time constant so the loops unroll and vectorise).
 *
 * Weight layout per model (Keras get_weights() order, row-major, concatenated): per layer l kernel
 * (fan_in, 4H), recurrent kernel (H, 4H), bias (4H); then Dense kernel (H, 1) and bias (1).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>

#ifndef NH
#error "compile with -DNH=<units>"
#endif
#define G4 (4 * NH)
#define MAXL 8

/* Explicit SIMD (GCC vector extensions, any ISA: AVX-512 here, two AVX2 halves elsewhere) for the
 * per-day products when the gate width allows it; plain loops otherwise. */
#if (NH % 16) == 0
#define VEC 1
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#define NV (G4 / 16)                                  /* vectors per gate row */
#define NHV (NH / 16)                                 /* vectors per hidden row */
static inline v16 ld(const float *p) { return *(const v16u *)p; }
static inline void st(float *p, v16 v) { *(v16u *)p = v; }
#else
#define VEC 0
#endif

#define SM_OK 0
#define SM_ENOMEM 1
#define SM_EARG 2

/* Runtime hyperparameters: the order of jax_engine._HYPER. */
enum { H_DROPOUT, H_L2, H_BETA1, H_BETA2, H_OMB1, H_OMB2, H_EPS, H_BASE_LR, H_LR_SPAN, H_STEP_SIZE, N_HYPER };

int sm_abi_version(void) { return 1; }
int sm_units(void) { return NH; }

/* ---------------------------------------------------------------------------------------------- */
/* Elementwise functions (branch-free so the compiler vectorises the gate loops)                 */
/* ---------------------------------------------------------------------------------------------- */
static inline float exp_f(float x) {
    /* Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial; relative error ~1e-7. */
    x = x < -87.0f ? -87.0f : x;                     /* ternaries, not fminf: they vectorise */
    x = x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) {
    /* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); absolute error ~1e-7 */
    float a = fabsf(x);
    float e = exp_f(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    return copysignf(t, x);
}

static inline uint32_t fmix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    return x ^ (x >> 16);
}

/* ---------------------------------------------------------------------------------------------- */
/* Model geometry and workspace                                                                    */
/* ---------------------------------------------------------------------------------------------- */
typedef struct {
    int T, F, L;
    long off_w[MAXL], off_r[MAXL], off_b[MAXL], off_wd, off_bd, n_params;
    int fan_in[MAXL];
} geom_t;

static void make_geom(geom_t *g, int T, int F, int L) {
    long off = 0;
    g->T = T; g->F = F; g->L = L;
    for (int l = 0; l < L; l++) {
        g->fan_in[l] = l == 0 ? F : NH;
        g->off_w[l] = off; off += (long)g->fan_in[l] * G4;
        g->off_r[l] = off; off += (long)NH * G4;
        g->off_b[l] = off; off += G4;
    }
    g->off_wd = off; off += NH;
    g->off_bd = off; off += 1;
    g->n_params = off;
}

long sm_n_params(int F, int L) {
    geom_t g;
    if (L < 1 || L > MAXL) return -1;
    make_geom(&g, 1, F, L);
    return g.n_params;
}

typedef struct {
    float *xn;              /* (T, F) normalised input of the current series */
    float *act[MAXL];       /* (T, 4H) gate activations i, f, g, o */
    float *c[MAXL];         /* (T, H) cell state */
    float *tc[MAXL];        /* (T, H) tanh(cell state) */
    float *h[MAXL];         /* (T + 1, H) hidden state, row 0 = initial zeros, row t+1 = day t */
    float *u[MAXL];         /* (T, H) layer output after dropout (= h when no dropout) */
    float *mask[MAXL];      /* (T, H) dropout scale per unit (0 or 1 / (1 - p)) */
    float *dz;              /* (T, 4H) gate pre-activation gradients of one layer */
    float *du;              /* (T, H) gradient wrt a layer's (dropped) output */
    float *du_prev;         /* (T, H) */
    float *pred;            /* (T,) */
    float *rt;              /* (4H, H) transposed recurrent kernel */
    void *block;
} work_t;

static int work_alloc(work_t *w, const geom_t *g) {
    long T = g->T, L = g->L;
    long n = T * g->F + L * (T * G4 + 3 * T * NH + (T + 1) * NH + T * NH) + T * G4 + 2 * T * NH + T + G4 * NH;
    float *p = (float *)calloc((size_t)n + 64, sizeof(float));
    if (!p) return SM_ENOMEM;
    w->block = p;
    w->xn = p; p += T * g->F;
    for (int l = 0; l < L; l++) {
        w->act[l] = p; p += T * G4;
        w->c[l] = p; p += T * NH;
        w->tc[l] = p; p += T * NH;
        w->u[l] = p; p += T * NH;
        w->h[l] = p; p += (T + 1) * NH;
        w->mask[l] = p; p += T * NH;
    }
    w->dz = p; p += T * G4;
    w->du = p; p += T * NH;
    w->du_prev = p; p += T * NH;
    w->pred = p; p += T;
    w->rt = p; p += G4 * NH;
    return SM_OK;
}

static void work_free(work_t *w) { free(w->block); }


/* ---------------------------------------------------------------------------------------------- */
/* Small dense products with register blocking (the compiler keeps the accumulators in registers)  */
/* ---------------------------------------------------------------------------------------------- */
#define JB (G4 < 64 ? G4 : 64)                       /* column block of the 4H gate axis */

/* C (K, 4H) += A^T B, A (T, lda) first K columns, B (T, 4H). */
static void gemm_tn_acc(int T, int K, int lda, const float *A, const float *B, float *C) {
    int k = 0;
#if VEC && (JB % 16) == 0
    for (; k + 4 <= K; k += 4) {
        for (int j0 = 0; j0 < G4; j0 += JB) {
            v16 acc[4][JB / 16];
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                for (int v = 0; v < JB / 16; v++) acc[q][v] = (v16){0};
            for (int t = 0; t < T; t++) {
                const float *a = A + (long)t * lda + k;
                const float *b = B + (long)t * G4 + j0;
#pragma GCC unroll 4
                for (int v = 0; v < JB / 16; v++) {
                    const v16 bv = ld(b + 16 * v);
                    acc[0][v] += a[0] * bv; acc[1][v] += a[1] * bv; acc[2][v] += a[2] * bv; acc[3][v] += a[3] * bv;
                }
            }
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                for (int v = 0; v < JB / 16; v++) {
                    float *c = C + (long)(k + q) * G4 + j0 + 16 * v;
                    st(c, ld(c) + acc[q][v]);
                }
        }
    }
#endif
    for (; k + 4 <= K; k += 4) {
        for (int j0 = 0; j0 < G4; j0 += JB) {
            float acc[4][JB];
            for (int q = 0; q < 4; q++)
                for (int j = 0; j < JB; j++) acc[q][j] = 0.0f;
            for (int t = 0; t < T; t++) {
                const float *a = A + (long)t * lda + k;
                const float *b = B + (long)t * G4 + j0;
                const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
                for (int j = 0; j < JB; j++) {
                    const float bj = b[j];
                    acc[0][j] += a0 * bj; acc[1][j] += a1 * bj; acc[2][j] += a2 * bj; acc[3][j] += a3 * bj;
                }
            }
            for (int q = 0; q < 4; q++)
                for (int j = 0; j < JB; j++) C[(long)(k + q) * G4 + j0 + j] += acc[q][j];
        }
    }
    for (; k < K; k++) {
        for (int j0 = 0; j0 < G4; j0 += JB) {
            float acc[JB];
            for (int j = 0; j < JB; j++) acc[j] = 0.0f;
            for (int t = 0; t < T; t++) {
                const float a0 = A[(long)t * lda + k];
                const float *b = B + (long)t * G4 + j0;
                for (int j = 0; j < JB; j++) acc[j] += a0 * b[j];
            }
            for (int j = 0; j < JB; j++) C[(long)k * G4 + j0 + j] += acc[j];
        }
    }
}

/* Out (T, H) = D (T, 4H) @ Wt (4H, H): eight rows at a time, independent accumulators. */
static void gemm_nt(int T, const float *D, const float *Wt, float *out) {
    int t = 0;
#if VEC && NHV <= 2
    for (; t + 8 <= T; t += 8) {
        v16 acc[8][NHV];
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++)
#pragma GCC unroll 2
            for (int v = 0; v < NHV; v++) acc[q][v] = (v16){0};
        for (int j = 0; j < G4; j++) {
            const float *wr = Wt + (long)j * NH;
#pragma GCC unroll 2
            for (int v = 0; v < NHV; v++) {
                const v16 wv = ld(wr + 16 * v);
#pragma GCC unroll 8
                for (int q = 0; q < 8; q++) acc[q][v] += D[(long)(t + q) * G4 + j] * wv;
            }
        }
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++)
#pragma GCC unroll 2
            for (int v = 0; v < NHV; v++) st(out + (long)(t + q) * NH + 16 * v, acc[q][v]);
    }
#endif
    for (; t + 8 <= T; t += 8) {
        float acc[8][NH];
        for (int q = 0; q < 8; q++)
            for (int k = 0; k < NH; k++) acc[q][k] = 0.0f;
        for (int j = 0; j < G4; j++) {
            const float *wr = Wt + (long)j * NH;
            for (int q = 0; q < 8; q++) {
                const float d = D[(long)(t + q) * G4 + j];
                for (int k = 0; k < NH; k++) acc[q][k] += d * wr[k];
            }
        }
        for (int q = 0; q < 8; q++)
            for (int k = 0; k < NH; k++) out[(long)(t + q) * NH + k] = acc[q][k];
    }
    for (; t < T; t++) {
        float acc[NH];
        for (int k = 0; k < NH; k++) acc[k] = 0.0f;
        for (int j = 0; j < G4; j++) {
            const float d = D[(long)t * G4 + j];
            for (int k = 0; k < NH; k++) acc[k] += d * Wt[(long)j * NH + k];
        }
        for (int k = 0; k < NH; k++) out[(long)t * NH + k] = acc[k];
    }
}

/* Z (T, 4H) = bias + In (T, K) @ W (K, 4H), four rows at a time. */
static void gemm_in(int T, int K, const float *In, const float *W, const float *bias, float *Z) {
    int t = 0;
#if VEC && (JB % 16) == 0
    for (; t + 4 <= T; t += 4) {
        for (int j0 = 0; j0 < G4; j0 += JB) {
            v16 acc[4][JB / 16];
#pragma GCC unroll 4
            for (int v = 0; v < JB / 16; v++) {
                const v16 bv = ld(bias + j0 + 16 * v);
                acc[0][v] = bv; acc[1][v] = bv; acc[2][v] = bv; acc[3][v] = bv;
            }
            for (int k = 0; k < K; k++) {
                const float *wr = W + (long)k * G4 + j0;
                const float x0 = In[(long)t * K + k], x1 = In[(long)(t + 1) * K + k];
                const float x2 = In[(long)(t + 2) * K + k], x3 = In[(long)(t + 3) * K + k];
#pragma GCC unroll 4
                for (int v = 0; v < JB / 16; v++) {
                    const v16 wv = ld(wr + 16 * v);
                    acc[0][v] += x0 * wv; acc[1][v] += x1 * wv; acc[2][v] += x2 * wv; acc[3][v] += x3 * wv;
                }
            }
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                for (int v = 0; v < JB / 16; v++) st(Z + (long)(t + q) * G4 + j0 + 16 * v, acc[q][v]);
        }
    }
#endif
    for (; t + 4 <= T; t += 4) {
        for (int j0 = 0; j0 < G4; j0 += JB) {
            float acc[4][JB];
            for (int q = 0; q < 4; q++)
                for (int j = 0; j < JB; j++) acc[q][j] = bias[j0 + j];
            for (int k = 0; k < K; k++) {
                const float *wr = W + (long)k * G4 + j0;
                const float x0 = In[(long)t * K + k], x1 = In[(long)(t + 1) * K + k];
                const float x2 = In[(long)(t + 2) * K + k], x3 = In[(long)(t + 3) * K + k];
                for (int j = 0; j < JB; j++) {
                    const float wj = wr[j];
                    acc[0][j] += x0 * wj; acc[1][j] += x1 * wj; acc[2][j] += x2 * wj; acc[3][j] += x3 * wj;
                }
            }
            for (int q = 0; q < 4; q++)
                for (int j = 0; j < JB; j++) Z[(long)(t + q) * G4 + j0 + j] = acc[q][j];
        }
    }
    for (; t < T; t++) {
        float *z = Z + (long)t * G4;
        for (int j = 0; j < G4; j++) z[j] = bias[j];
        for (int k = 0; k < K; k++) {
            const float xk = In[(long)t * K + k];
            for (int j = 0; j < G4; j++) z[j] += xk * W[(long)k * G4 + j];
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Forward pass of one series                                                                      */
/* ---------------------------------------------------------------------------------------------- */
static void normalise(const geom_t *g, const float *x, const float *mean, const float *std, float *xn) {
    const int F = g->F;
    for (long t = 0; t < g->T; t++) {
        for (int f = 0; f < F; f++) {
            float v = (x[t * F + f] - mean[f]) / std[f];
            v = v != v ? 0.0f : v;                    /* NaN -> 0 after normalisation (numpy nan_to_num) */
            v = v > FLT_MAX ? FLT_MAX : (v < -FLT_MAX ? -FLT_MAX : v);
            xn[t * F + f] = v;
        }
    }
}

/* One LSTM layer over all days. in: (T, fan_in). Fills act, c, tc, h. */
static void lstm_layer_forward(const geom_t *g, int l, const float *params, const float *in, work_t *w) {
    const int T = g->T, K = g->fan_in[l];
    const float *W = params + g->off_w[l], *R = params + g->off_r[l], *b = params + g->off_b[l];
    float *act = w->act[l], *c = w->c[l], *tc = w->tc[l], *h = w->h[l];
    /* Input-to-gate products of all days first (written into act, overwritten by the activations). */
    gemm_in(T, K, in, W, b, act);
    memset(h, 0, sizeof(float) * NH);                 /* h[0] = initial state */
    float cprev[NH];
    memset(cprev, 0, sizeof cprev);
    for (int t = 0; t < T; t++) {
        float *z = act + (long)t * G4;
        const float *hp = h + (long)t * NH;
#if VEC
        {
            v16 a0[NV], a1[NV];
#pragma GCC unroll 16
            for (int q = 0; q < NV; q++) { a0[q] = ld(z + 16 * q); a1[q] = (v16){0}; }
#pragma GCC unroll 64
            for (int k = 0; k < NH; k += 2) {
                const float h0 = hp[k], h1 = hp[k + 1];
                const float *r0 = R + (long)k * G4, *r1 = r0 + G4;
#pragma GCC unroll 16
                for (int q = 0; q < NV; q++) { a0[q] += h0 * ld(r0 + 16 * q); a1[q] += h1 * ld(r1 + 16 * q); }
            }
#pragma GCC unroll 16
            for (int q = 0; q < NV; q++) st(z + 16 * q, a0[q] + a1[q]);
        }
        for (int j = 0; j < 2 * NH; j++) z[j] = sigmoid_f(z[j]);
        for (int j = 2 * NH; j < 3 * NH; j++) z[j] = tanh_f(z[j]);
        for (int j = 3 * NH; j < G4; j++) z[j] = sigmoid_f(z[j]);
#else
        float acc0[G4], acc1[G4];
        for (int j = 0; j < G4; j++) { acc0[j] = z[j]; acc1[j] = 0.0f; }
        for (int k = 0; k < NH; k += 2) {
            const float h0 = hp[k], h1 = hp[k + 1];
            const float *r0 = R + (long)k * G4, *r1 = r0 + G4;
            for (int j = 0; j < G4; j++) { acc0[j] += h0 * r0[j]; acc1[j] += h1 * r1[j]; }
        }
        for (int j = 0; j < NH; j++) z[j] = sigmoid_f(acc0[j] + acc1[j]);
        for (int j = NH; j < 2 * NH; j++) z[j] = sigmoid_f(acc0[j] + acc1[j]);
        for (int j = 2 * NH; j < 3 * NH; j++) z[j] = tanh_f(acc0[j] + acc1[j]);
        for (int j = 3 * NH; j < G4; j++) z[j] = sigmoid_f(acc0[j] + acc1[j]);
#endif
        float *ct = c + (long)t * NH, *tct = tc + (long)t * NH, *ht = h + (long)(t + 1) * NH;
        for (int j = 0; j < NH; j++) {
            float cc = z[NH + j] * cprev[j] + z[j] * z[2 * NH + j];
            float tt = tanh_f(cc);
            ct[j] = cc;
            cprev[j] = cc;
            tct[j] = tt;
            ht[j] = z[3 * NH + j] * tt;
        }
    }
}

/* Dropout masks of one series: the hash of jax_engine (model key, step count, layer, day, batch slot,
 * unit), index laid out as (L, T, B, H). */
static void make_masks(const geom_t *g, int B, int slot, uint32_t count, const uint32_t *key, float p,
                       work_t *w) {
    const float scale = 1.0f / (1.0f - p);
    const uint32_t salt = fmix32((count * 0x9E3779B1u) ^ key[1]);
    for (int l = 0; l < g->L; l++) {
        float *m = w->mask[l];
        for (int t = 0; t < g->T; t++) {
            uint32_t base = (uint32_t)((((uint64_t)l * g->T + t) * B + slot) * NH);
            for (int j = 0; j < NH; j++) {
                uint32_t idx = base + (uint32_t)j;
                uint32_t bits = fmix32(idx * 0x9E3779B1u + salt + key[0]);
                float u = (float)(bits >> 8) * (1.0f / 16777216.0f);
                m[(long)t * NH + j] = u >= p ? scale : 0.0f;
            }
        }
    }
}

/* Forward of all layers and the Dense head; dropout when masks_on. Fills w->pred (T,). */
static void forward(const geom_t *g, const float *params, const float *x, const float *mean, const float *std,
                    int masks_on, work_t *w) {
    const int T = g->T;
    normalise(g, x, mean, std, w->xn);
    const float *in = w->xn;
    for (int l = 0; l < g->L; l++) {
        lstm_layer_forward(g, l, params, in, w);
        const float *h = w->h[l] + NH;
        float *u = w->u[l];
        if (masks_on) {
            const float *m = w->mask[l];
            for (long i = 0; i < (long)T * NH; i++) u[i] = h[i] * m[i];
        } else {
            memcpy(u, h, sizeof(float) * (size_t)T * NH);
        }
        in = u;
    }
    const float *wd = params + g->off_wd;
    const float bd = params[g->off_bd];
    const float *u = w->u[g->L - 1];
    for (int t = 0; t < T; t++) w->pred[t] = 0.0f;
    for (int k = 0; k < NH; k++) {                    /* days independent: no serial reduction */
        const float wk = wd[k];
        for (int t = 0; t < T; t++) w->pred[t] += u[(long)t * NH + k] * wk;
    }
    for (int t = 0; t < T; t++) w->pred[t] += bd;
}

/* Per-series MAE over day weights; also the day weights' sum. y NaN = not observed. */
static float series_mae(int T, const float *pred, const float *y, int zero_fill, float *wsum_out) {
    double err = 0.0;
    float wsum = 0.0f;
    for (int t = 0; t < T; t++) {
        float yt = y[t];
        int obs = yt == yt && fabsf(yt) <= FLT_MAX;
        float wt = zero_fill ? 1.0f : (obs ? 1.0f : 0.0f);
        float yf = obs ? yt : 0.0f;
        err += (double)(fabsf(pred[t] - yf) * wt);
        wsum += wt;
    }
    *wsum_out = wsum;
    return (float)(err / fmaxf(wsum, 1.0f));
}

/* ---------------------------------------------------------------------------------------------- */
/* Backward pass of one series (after forward), gradients added into grad                           */
/* ---------------------------------------------------------------------------------------------- */
static void backward(const geom_t *g, const float *params, const float *y, int zero_fill, float scale,
                     int masks_on, work_t *w, float *grad) {
    const int T = g->T, L = g->L;
    /* d loss / d pred: sign(pred - y) * w_t / max(sum w, 1) * scale (scale: the series' weight in the step) */
    float wsum = 0.0f;
    for (int t = 0; t < T; t++) {
        float yt = y[t];
        int obs = yt == yt && fabsf(yt) <= FLT_MAX;
        wsum += zero_fill ? 1.0f : (obs ? 1.0f : 0.0f);
    }
    const float dscale = scale / fmaxf(wsum, 1.0f);
    const float *wd = params + g->off_wd;
    float *gwd = grad + g->off_wd;
    float gbd = 0.0f;
    const float *ul = w->u[L - 1];
    float *du = w->du;
    for (int t = 0; t < T; t++) {
        float yt = y[t];
        int obs = yt == yt && fabsf(yt) <= FLT_MAX;
        float wt = zero_fill ? 1.0f : (obs ? 1.0f : 0.0f);
        float d = w->pred[t] - (obs ? yt : 0.0f);
        float sg = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
        float dp = sg * wt * dscale;
        gbd += dp;
        for (int k = 0; k < NH; k++) {
            gwd[k] += ul[(long)t * NH + k] * dp;
            du[(long)t * NH + k] = dp * wd[k];
        }
    }
    grad[g->off_bd] += gbd;

    for (int l = L - 1; l >= 0; l--) {
        const int K = g->fan_in[l];
        const float *W = params + g->off_w[l], *R = params + g->off_r[l];
        float *gW = grad + g->off_w[l], *gR = grad + g->off_r[l], *gb = grad + g->off_b[l];
        const float *act = w->act[l], *c = w->c[l], *tc = w->tc[l], *h = w->h[l];
        float *dz = w->dz;
        float *rt = w->rt;
        for (int k = 0; k < NH; k++)
            for (int j = 0; j < G4; j++) rt[(long)j * NH + k] = R[(long)k * G4 + j];
        if (masks_on) {
            const float *m = w->mask[l];
            for (long i = 0; i < (long)T * NH; i++) du[i] *= m[i];   /* through Dropout */
        }
        static const float zeros[NH];
        float dh_next[NH], dc_next[NH];
        memset(dh_next, 0, sizeof dh_next);
        memset(dc_next, 0, sizeof dc_next);
        for (int t = T - 1; t >= 0; t--) {
            const float *a = act + (long)t * G4;
            const float *tct = tc + (long)t * NH;
            const float *cp = t > 0 ? c + (long)(t - 1) * NH : zeros;   /* c before day t */
            float *d = dz + (long)t * G4;
            const float *dut = du + (long)t * NH;
            for (int j = 0; j < NH; j++) {
                float i_ = a[j], f_ = a[NH + j], g_ = a[2 * NH + j], o_ = a[3 * NH + j];
                float cprev = cp[j];
                float dh = dut[j] + dh_next[j];
                float tt = tct[j];
                float dc = dc_next[j] + dh * (o_ * (1.0f - tt * tt));
                d[j] = dc * (g_ * (i_ * (1.0f - i_)));
                d[NH + j] = dc * (cprev * (f_ * (1.0f - f_)));
                d[2 * NH + j] = dc * (i_ * (1.0f - g_ * g_));
                d[3 * NH + j] = dh * (tt * (o_ * (1.0f - o_)));
                dc_next[j] = dc * f_;
            }
            /* dh_next = dz @ R^T, four partial sums (one per gate block) for shorter dependency chains */
#if VEC
            {
                v16 a0[NHV], a1[NHV], a2[NHV], a3[NHV];
#pragma GCC unroll 16
                for (int q = 0; q < NHV; q++) { a0[q] = (v16){0}; a1[q] = (v16){0}; a2[q] = (v16){0}; a3[q] = (v16){0}; }
#pragma GCC unroll 64
                for (int j = 0; j < NH; j++) {
                    const float d0 = d[j], d1 = d[NH + j], d2 = d[2 * NH + j], d3 = d[3 * NH + j];
                    const float *r0 = rt + (long)j * NH, *r1 = rt + (long)(NH + j) * NH;
                    const float *r2 = rt + (long)(2 * NH + j) * NH, *r3 = rt + (long)(3 * NH + j) * NH;
#pragma GCC unroll 16
                    for (int q = 0; q < NHV; q++) {
                        a0[q] += d0 * ld(r0 + 16 * q); a1[q] += d1 * ld(r1 + 16 * q);
                        a2[q] += d2 * ld(r2 + 16 * q); a3[q] += d3 * ld(r3 + 16 * q);
                    }
                }
#pragma GCC unroll 16
                for (int q = 0; q < NHV; q++) st(dh_next + 16 * q, (a0[q] + a1[q]) + (a2[q] + a3[q]));
            }
#else
            float a0[NH], a1[NH], a2[NH], a3[NH];
            for (int k = 0; k < NH; k++) { a0[k] = 0.0f; a1[k] = 0.0f; a2[k] = 0.0f; a3[k] = 0.0f; }
            for (int j = 0; j < NH; j++) {
                const float d0 = d[j], d1 = d[NH + j], d2 = d[2 * NH + j], d3 = d[3 * NH + j];
                const float *r0 = rt + (long)j * NH, *r1 = rt + (long)(NH + j) * NH;
                const float *r2 = rt + (long)(2 * NH + j) * NH, *r3 = rt + (long)(3 * NH + j) * NH;
                for (int k = 0; k < NH; k++) {
                    a0[k] += d0 * r0[k]; a1[k] += d1 * r1[k]; a2[k] += d2 * r2[k]; a3[k] += d3 * r3[k];
                }
            }
            for (int k = 0; k < NH; k++) dh_next[k] = (a0[k] + a1[k]) + (a2[k] + a3[k]);
#endif
        }
        /* Weight gradients over all days: gR += h_prev^T dz, gW += in^T dz, gb += sum dz. */
        const float *in = l == 0 ? w->xn : w->u[l - 1];
        gemm_tn_acc(T, NH, NH, h, dz, gR);           /* h rows 0..T-1 = states before days 0..T-1 */
        gemm_tn_acc(T, K, K, in, dz, gW);
        for (int t = 0; t < T; t++) {
            const float *d = dz + (long)t * G4;
            for (int j = 0; j < G4; j++) gb[j] += d[j];
        }
        if (l > 0) {
            /* gradient into the layer below's dropped output: du_prev = dz @ W^T */
            float *wt = w->rt;                        /* reuse: (4H, H) transposed input kernel */
            for (int k = 0; k < NH; k++)
                for (int j = 0; j < G4; j++) wt[(long)j * NH + k] = W[(long)k * G4 + j];
            gemm_nt(T, dz, wt, w->du_prev);
            float *tmp = w->du; w->du = w->du_prev; w->du_prev = tmp;
            du = w->du;
        }
    }
}

static float l2_sum(const geom_t *g, const float *params) {
    double s = 0.0;
    for (int l = 0; l < g->L; l++) {
        const float *R = params + g->off_r[l];
        for (long i = 0; i < (long)NH * G4; i++) s += (double)R[i] * R[i];
    }
    return (float)s;
}

static float clr_f(float step, float base, float span, float step_size) {
    float cycle = floorf(1.0f + step / (2.0f * step_size));
    float xx = fabsf(step / step_size - 2.0f * cycle + 1.0f);
    return base + span * fmaxf(0.0f, 1.0f - xx);
}

/* ---------------------------------------------------------------------------------------------- */
/* Public entry points                                                                              */
/* ---------------------------------------------------------------------------------------------- */

/* Train one model for n_epochs epochs.
 *   x (P, T, F) raw features; mean/std (F,) the model's normalisation; y_train, y_val (P, T) targets
 *   (NaN = not observed). hyper: N_HYPER floats (jax_engine._HYPER). key: 2 uint32 (dropout stream).
 *   params, m, v (n_params) in/out; count in/out (optimizer steps taken so far).
 *   order, sw (n_epochs, S, B): probe index and 1/0 weight per batch slot of each step.
 *   val_idx (V,) probes evaluated after each epoch (no dropout, observed days of y_val).
 * Out: train_loss, val_loss (NaN when V = 0), l2 (n_epochs,).
 */
int sm_fit(int P, int T, int F, int L, int B, int S, int n_epochs, int V,
           const float *x, const float *mean, const float *std, const float *y_train, const float *y_val,
           int zero_fill, int dropout_on, const float *hyper, const uint32_t *key,
           float *params, float *m, float *v, int32_t *count,
           const int32_t *order, const float *sw, const int32_t *val_idx,
           float *train_loss, float *val_loss, float *l2_out) {
    if (L < 1 || L > MAXL || T < 1 || F < 1 || B < 1 || P < 1) return SM_EARG;
    geom_t g;
    make_geom(&g, T, F, L);
    work_t w;
    if (work_alloc(&w, &g) != SM_OK) return SM_ENOMEM;
    float *grad = (float *)malloc(sizeof(float) * (size_t)g.n_params);
    if (!grad) { work_free(&w); return SM_ENOMEM; }
    const float p_drop = hyper[H_DROPOUT], l2 = hyper[H_L2];
    const float b1 = hyper[H_BETA1], b2 = hyper[H_BETA2], omb1 = hyper[H_OMB1], omb2 = hyper[H_OMB2];
    const float eps = hyper[H_EPS];
    const long stride = (long)T * F;
    for (int e = 0; e < n_epochs; e++) {
        double loss_sum = 0.0;
        int n_active = 0;
        for (int s = 0; s < S; s++) {
            const int32_t *idx = order + ((long)e * S + s) * B;
            const float *wts = sw + ((long)e * S + s) * B;
            float swsum = 0.0f;
            for (int b = 0; b < B; b++) swsum += wts[b];
            if (swsum <= 0.0f) continue;                /* padded step: the model is untouched */
            const float swden = fmaxf(swsum, 1.0f);
            memset(grad, 0, sizeof(float) * (size_t)g.n_params);
            double dl = 0.0;
            for (int b = 0; b < B; b++) {
                if (wts[b] == 0.0f) continue;
                const int pr = idx[b];
                if (pr < 0 || pr >= P) { free(grad); work_free(&w); return SM_EARG; }
                if (dropout_on) make_masks(&g, B, b, (uint32_t)*count, key, p_drop, &w);
                forward(&g, params, x + (long)pr * stride, mean, std, dropout_on, &w);
                float wsum;
                float per = series_mae(T, w.pred, y_train + (long)pr * T, zero_fill, &wsum);
                dl += (double)per * wts[b];
                backward(&g, params, y_train + (long)pr * T, zero_fill, wts[b] / swden, dropout_on, &w, grad);
            }
            loss_sum += dl / swden;
            n_active++;
            /* L2 on recurrent kernels: d/dR (l2 * sum R^2) = 2 l2 R */
            for (int l = 0; l < L; l++) {
                const float *R = params + g.off_r[l];
                float *gR = grad + g.off_r[l];
                for (long i = 0; i < (long)NH * G4; i++) gR[i] += 2.0f * l2 * R[i];
            }
            /* Adam (Keras 3) with the cyclical rate at this model's step count */
            const float lr = clr_f((float)*count, hyper[H_BASE_LR], hyper[H_LR_SPAN], hyper[H_STEP_SIZE]);
            const float tt = (float)(*count + 1);
            const float alpha = lr * sqrtf(1.0f - powf(b2, tt)) / (1.0f - powf(b1, tt));
            for (long i = 0; i < g.n_params; i++) {
                const float gi = grad[i];
                const float m2 = m[i] + (gi - m[i]) * omb1;
                const float v2 = v[i] + (gi * gi - v[i]) * omb2;
                m[i] = m2;
                v[i] = v2;
                params[i] = params[i] - (m2 * alpha) / (sqrtf(v2) + eps);
            }
            *count += 1;
        }
        train_loss[e] = n_active ? (float)(loss_sum / n_active) : NAN;
        if (V > 0) {
            double vs = 0.0;
            for (int i = 0; i < V; i++) {
                const int pr = val_idx[i];
                if (pr < 0 || pr >= P) { free(grad); work_free(&w); return SM_EARG; }
                forward(&g, params, x + (long)pr * stride, mean, std, 0, &w);
                float wsum;
                vs += series_mae(T, w.pred, y_val + (long)pr * T, 0, &wsum);
            }
            val_loss[e] = (float)(vs / V);
        } else {
            val_loss[e] = NAN;
        }
        l2_out[e] = l2 * l2_sum(&g, params);
    }
    free(grad);
    work_free(&w);
    return SM_OK;
}

/* Predictions (no dropout) of one model on n probes idx: out (n, T). */
int sm_predict(int P, int T, int F, int L, int n, const float *x, const float *mean, const float *std,
               const float *params, const int32_t *idx, float *out) {
    if (L < 1 || L > MAXL || T < 1 || F < 1 || P < 1) return SM_EARG;
    geom_t g;
    make_geom(&g, T, F, L);
    work_t w;
    if (work_alloc(&w, &g) != SM_OK) return SM_ENOMEM;
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= P) { work_free(&w); return SM_EARG; }
        forward(&g, params, x + (long)idx[i] * T * F, mean, std, 0, &w);
        memcpy(out + (long)i * T, w.pred, sizeof(float) * (size_t)T);
    }
    work_free(&w);
    return SM_OK;
}

/* Loss and gradient of one optimizer step (no update), for the tests: data loss of the batch
 * (series idx (B,), weights sw (B,)) plus l2 * sum R^2; dropout masks as sm_fit draws them at step
 * count. grad (n_params) is overwritten. Returns the status; *loss the data loss (without L2). */
int sm_loss_grad(int P, int T, int F, int L, int B, const float *x, const float *mean, const float *std,
                 const float *y, int zero_fill, int dropout_on, const float *hyper, const uint32_t *key,
                 int32_t count, const float *params, const int32_t *idx, const float *sw,
                 float *loss, float *grad) {
    if (L < 1 || L > MAXL || T < 1 || F < 1 || B < 1 || P < 1) return SM_EARG;
    geom_t g;
    make_geom(&g, T, F, L);
    work_t w;
    if (work_alloc(&w, &g) != SM_OK) return SM_ENOMEM;
    memset(grad, 0, sizeof(float) * (size_t)g.n_params);
    float swsum = 0.0f;
    for (int b = 0; b < B; b++) swsum += sw[b];
    const float swden = swsum > 1.0f ? swsum : 1.0f;
    double dl = 0.0;
    for (int b = 0; b < B; b++) {
        if (sw[b] == 0.0f) continue;
        if (idx[b] < 0 || idx[b] >= P) { work_free(&w); return SM_EARG; }
        if (dropout_on) make_masks(&g, B, b, (uint32_t)count, key, hyper[H_DROPOUT], &w);
        forward(&g, params, x + (long)idx[b] * T * F, mean, std, dropout_on, &w);
        float wsum;
        dl += (double)series_mae(T, w.pred, y + (long)idx[b] * T, zero_fill, &wsum) * sw[b];
        backward(&g, params, y + (long)idx[b] * T, zero_fill, sw[b] / swden, dropout_on, &w, grad);
    }
    for (int l = 0; l < L; l++) {
        const float *R = params + g.off_r[l];
        float *gR = grad + g.off_r[l];
        for (long i = 0; i < (long)NH * G4; i++) gR[i] += 2.0f * hyper[H_L2] * R[i];
    }
    *loss = (float)(dl / swden);
    work_free(&w);
    return SM_OK;
}
