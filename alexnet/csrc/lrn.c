/* Local response normalisation across channels (Section 3.3 of the paper),
 * forward and backward, on contiguous (blocks, channels, plane) arrays.
 *
 *   s[c]  = k + alpha * SUM_{j = max(0, c-h)}^{min(C-1, c+h)} x[j]^2        (h = size / 2)
 *   y[c]  = x[c] * s[c]^-beta
 *   dx[c] = g[c] * s[c]^-beta - 2 alpha beta x[c] * SUM_{j in window(c)} u[j],
 *   u[j]  = g[j] x[j] s[j]^(-beta-1)
 *
 * alpha is the factor of each term (the paper's alpha, or alpha / n). A block
 * is one image's tower, so no window crosses a tower boundary. The window
 * slides over the channels as a running sum per pixel, kept in double so that
 * adding and removing squares does not drift; the pixels of a tile are the
 * vectorised inner loop, and (block, tile) pairs run in parallel under
 * OpenMP (the runtime PyTorch has loaded, so the two share one thread pool).
 * The backward pass recomputes s from x, so the caller keeps only x.
 *
 * Plain C without torch headers: it compiles in about a second on first use
 * and is called through ctypes (alexnet/fast_lrn.py). Returns 0, or 1 when
 * out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TILE 512 /* pixels per work item: the running sums stay in L1 */

#define LRN_DEFINE(T, SUFFIX, SQRT, POW)                                                     \
    /* t = s^-beta, where beta = 0.75 (every convention's value) takes two square roots */   \
    static inline T inv_pow_##SUFFIX(T s, T beta) {                                          \
        return beta == (T)0.75 ? (T)1 / SQRT(s * SQRT(s)) : POW(s, -beta);                   \
    }                                                                                        \
                                                                                             \
    /* the squares of channels 0 .. h-1: the window sum before channel 0 is added in */      \
    static void start_window_##SUFFIX(double *restrict ss, const T *x, int64_t h,            \
                                      int64_t channels, int64_t plane, int64_t n) {          \
        for (int64_t p = 0; p < n; p++) ss[p] = 0;                                           \
        for (int64_t j = 0; j < h && j < channels; j++) {                                    \
            const T *restrict xj = x + j * plane;                                            \
            for (int64_t p = 0; p < n; p++) ss[p] += (double)xj[p] * xj[p];                  \
        }                                                                                    \
    }                                                                                        \
                                                                                             \
    /* slide the window from channel c-1 to c: add channel c+h, drop channel c-h-1 */        \
    static void slide_window_##SUFFIX(double *restrict ss, const T *x, int64_t c, int64_t h, \
                                      int64_t channels, int64_t plane, int64_t n) {          \
        if (c + h < channels) {                                                              \
            const T *restrict xa = x + (c + h) * plane;                                      \
            for (int64_t p = 0; p < n; p++) ss[p] += (double)xa[p] * xa[p];                  \
        }                                                                                    \
        if (c - h - 1 >= 0) {                                                                \
            const T *restrict xr = x + (c - h - 1) * plane;                                  \
            for (int64_t p = 0; p < n; p++) ss[p] -= (double)xr[p] * xr[p];                  \
        }                                                                                    \
    }                                                                                        \
                                                                                             \
    int lrn_forward_##SUFFIX(const T *x, T *y, int64_t blocks, int64_t channels,             \
                             int64_t plane, int64_t size, double alpha, double beta,         \
                             double k, int threads) {                                        \
        const int64_t h = size / 2, tiles = (plane + TILE - 1) / TILE;                       \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                    \
        for (int64_t item = 0; item < blocks * tiles; item++) {                              \
            double ss[TILE];                                                                 \
            const int64_t b = item / tiles, p0 = item % tiles * TILE;                        \
            const int64_t n = plane - p0 < TILE ? plane - p0 : TILE;                         \
            const T *xb = x + b * channels * plane + p0;                                     \
            T *yb = y + b * channels * plane + p0;                                           \
            start_window_##SUFFIX(ss, xb, h, channels, plane, n);                            \
            for (int64_t c = 0; c < channels; c++) {                                         \
                slide_window_##SUFFIX(ss, xb, c, h, channels, plane, n);                     \
                const T *restrict xc = xb + c * plane;                                       \
                T *restrict yc = yb + c * plane;                                             \
                for (int64_t p = 0; p < n; p++)                                              \
                    yc[p] = xc[p] * inv_pow_##SUFFIX((T)(k + alpha * ss[p]), (T)beta);       \
            }                                                                                \
        }                                                                                    \
        return 0;                                                                            \
    }                                                                                        \
                                                                                             \
    int lrn_backward_##SUFFIX(const T *x, const T *g, T *dx, int64_t blocks,                 \
                              int64_t channels, int64_t plane, int64_t size, double alpha,   \
                              double beta, double k, int threads) {                          \
        const int64_t h = size / 2, tiles = (plane + TILE - 1) / TILE;                       \
        const T coef = (T)(2.0 * alpha * beta);                                              \
        int failed = 0;                                                                      \
        _Pragma("omp parallel num_threads(threads) reduction(| : failed)") {                 \
            /* the last `size` channels of u, a ring indexed by channel % size */            \
            T *ring = malloc(size * TILE * sizeof(T));                                       \
            failed |= ring == NULL;                                                          \
            _Pragma("omp for schedule(static)")                                              \
            for (int64_t item = 0; item < blocks * tiles; item++) {                          \
                if (ring == NULL) continue;                                                  \
                double ss[TILE], us[TILE]; /* window sums of x^2 at c, of u at c - h */      \
                const int64_t b = item / tiles, p0 = item % tiles * TILE;                    \
                const int64_t n = plane - p0 < TILE ? plane - p0 : TILE;                     \
                const int64_t offset = b * channels * plane + p0;                            \
                const T *xb = x + offset, *gb = g + offset;                                  \
                T *dxb = dx + offset;                                                        \
                start_window_##SUFFIX(ss, xb, h, channels, plane, n);                        \
                for (int64_t p = 0; p < n; p++) us[p] = 0;                                   \
                /* step c adds u[c] and the first term of dx[c], then finishes dx[c - h], */ \
                /* whose window c-2h .. c is now complete */                                 \
                for (int64_t c = 0; c < channels + h; c++) {                                 \
                    T *restrict slot = ring + c % size * TILE; /* holds u[c - size] */       \
                    if (c >= size)                                                           \
                        for (int64_t p = 0; p < n; p++) us[p] -= slot[p];                    \
                    if (c < channels) {                                                      \
                        slide_window_##SUFFIX(ss, xb, c, h, channels, plane, n);             \
                        const T *restrict xc = xb + c * plane, *restrict gc = gb + c * plane; \
                        T *restrict dxc = dxb + c * plane;                                   \
                        for (int64_t p = 0; p < n; p++) {                                    \
                            const T s = (T)(k + alpha * ss[p]);                              \
                            dxc[p] = gc[p] * inv_pow_##SUFFIX(s, (T)beta);                   \
                            slot[p] = dxc[p] * xc[p] / s;                                    \
                            us[p] += slot[p];                                                \
                        }                                                                    \
                    }                                                                        \
                    const int64_t d = c - h;                                                 \
                    if (d < 0) continue;                                                     \
                    const T *restrict xd = xb + d * plane;                                   \
                    T *restrict dxd = dxb + d * plane;                                       \
                    for (int64_t p = 0; p < n; p++) dxd[p] -= coef * xd[p] * (T)us[p];       \
                }                                                                            \
            }                                                                                \
            free(ring);                                                                      \
        }                                                                                    \
        return failed;                                                                       \
    }

LRN_DEFINE(float, f32, sqrtf, powf)
LRN_DEFINE(double, f64, sqrt, pow)
