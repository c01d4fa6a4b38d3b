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
 * adding and removing squares does not drift; so is the window sum of u.
 * Each channel is a few vectorised loops over the pixels of a tile, whose
 * rows stay in cache, and (block, tile) pairs run in parallel under OpenMP
 * (the runtime PyTorch has loaded, so the two share one thread pool). The
 * backward pass recomputes s from x, so the caller keeps only x.
 *
 * Plain C without torch headers: it compiles in about a second on first use
 * and is called through ctypes (alexnet/fast_lrn.py). Returns 0, or 1 when
 * out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define TILE 512 /* pixels per work item: the running sums stay in L1 */

/* Ask for transparent huge pages for a fresh output buffer before it is first
 * written: faulting it in by 4 KiB pages costs as much as the LRN itself. */
static void advise_huge_pages(void *data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t page = 4096, start = ((uintptr_t)data + page - 1) / page * page;
    const uintptr_t end = ((uintptr_t)data + bytes) / page * page;
    if (bytes >= (4u << 20) && end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)data, (void)bytes;
#endif
}

/* Each loop over a tile's pixels is a small function with restrict parameters,
 * so that the compiler knows that the rows do not overlap and vectorises it. */
#define LRN_DEFINE(T, SUFFIX, SQRT, POW)                                                      \
    /* ss += `in`^2, one channel entering the window, or -= `out`^2, one leaving it */       \
    static inline void add_squares_##SUFFIX(double *restrict ss, const T *restrict in,        \
                                            double sign, int64_t n) {                         \
        for (int64_t p = 0; p < n; p++) ss[p] += sign * ((double)in[p] * in[p]);              \
    }                                                                                         \
                                                                                              \
    /* y = x * s^-beta; beta = 0.75 (every convention's value) takes two square roots, in */  \
    /* a loop without a branch inside, which vectorises where powf would not */               \
    static inline void forward_row_##SUFFIX(T *restrict yc, const T *restrict xc,             \
                                            const double *restrict ss, int64_t n,             \
                                            double alpha, double beta, double k) {            \
        if (beta == 0.75)                                                                     \
            for (int64_t p = 0; p < n; p++) {                                                 \
                const T s = (T)(k + alpha * ss[p]);                                           \
                yc[p] = xc[p] / SQRT(s * SQRT(s));                                            \
            }                                                                                 \
        else                                                                                  \
            for (int64_t p = 0; p < n; p++) yc[p] = xc[p] * POW((T)(k + alpha * ss[p]), (T)-beta); \
    }                                                                                         \
                                                                                              \
    /* dx[c] = g s^-beta (the first term); u[c] = g x s^(-beta-1) enters the ring and us */  \
    static inline void backward_row_##SUFFIX(T *restrict dxc, T *restrict slot,               \
                                             double *restrict us, const T *restrict xc,       \
                                             const T *restrict gc, const double *restrict ss, \
                                             int64_t n, double alpha, double beta, double k) { \
        if (beta == 0.75)                                                                     \
            for (int64_t p = 0; p < n; p++) {                                                 \
                const T s = (T)(k + alpha * ss[p]);                                           \
                const T gt = gc[p] / SQRT(s * SQRT(s)), u = gt * xc[p] / s;                   \
                dxc[p] = gt;                                                                  \
                slot[p] = u;                                                                  \
                us[p] += u;                                                                   \
            }                                                                                 \
        else                                                                                  \
            for (int64_t p = 0; p < n; p++) {                                                 \
                const T s = (T)(k + alpha * ss[p]);                                           \
                const T gt = gc[p] * POW(s, (T)-beta), u = gt * xc[p] / s;                    \
                dxc[p] = gt;                                                                  \
                slot[p] = u;                                                                  \
                us[p] += u;                                                                   \
            }                                                                                 \
    }                                                                                         \
                                                                                              \
    /* u[c - size] leaves the running sum us */                                               \
    static inline void drop_##SUFFIX(double *restrict us, const T *restrict slot, int64_t n) { \
        for (int64_t p = 0; p < n; p++) us[p] -= slot[p];                                     \
    }                                                                                         \
                                                                                              \
    /* the second term of dx[d], whose window sum of u is complete */                         \
    static inline void finish_row_##SUFFIX(T *restrict dxd, const T *restrict xd,             \
                                           const double *restrict us, T coef, int64_t n) {    \
        for (int64_t p = 0; p < n; p++) dxd[p] -= coef * xd[p] * (T)us[p];                    \
    }                                                                                         \
                                                                                              \
    /* slide the window of block xb onto channel c: channel c+h enters, c-h-1 leaves */       \
    static inline void slide_##SUFFIX(double *ss, const T *xb, int64_t c, int64_t h,          \
                                      int64_t channels, int64_t plane, int64_t n) {           \
        if (c + h < channels) add_squares_##SUFFIX(ss, xb + (c + h) * plane, 1.0, n);         \
        if (c - h - 1 >= 0) add_squares_##SUFFIX(ss, xb + (c - h - 1) * plane, -1.0, n);      \
    }                                                                                         \
                                                                                              \
    int lrn_forward_##SUFFIX(const T *x, T *y, int64_t blocks, int64_t channels,              \
                             int64_t plane, int64_t size, double alpha, double beta,          \
                             double k, int threads) {                                         \
        const int64_t h = size / 2, tiles = (plane + TILE - 1) / TILE;                        \
        advise_huge_pages(y, (size_t)(blocks * channels * plane) * sizeof(T));                \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                     \
        for (int64_t item = 0; item < blocks * tiles; item++) {                               \
            double ss[TILE] = {0}; /* the running sum of squares over the window */           \
            const int64_t b = item / tiles, p0 = item % tiles * TILE;                         \
            const int64_t n = plane - p0 < TILE ? plane - p0 : TILE;                          \
            const T *xb = x + b * channels * plane + p0;                                      \
            T *yb = y + b * channels * plane + p0;                                            \
            for (int64_t j = 0; j < h && j < channels; j++) /* the window before channel 0 */ \
                add_squares_##SUFFIX(ss, xb + j * plane, 1.0, n);                             \
            for (int64_t c = 0; c < channels; c++) {                                          \
                slide_##SUFFIX(ss, xb, c, h, channels, plane, n);                             \
                forward_row_##SUFFIX(yb + c * plane, xb + c * plane, ss, n, alpha, beta, k);  \
            }                                                                                 \
        }                                                                                     \
        return 0;                                                                             \
    }                                                                                         \
                                                                                              \
    int lrn_backward_##SUFFIX(const T *x, const T *g, T *dx, int64_t blocks,                  \
                              int64_t channels, int64_t plane, int64_t size, double alpha,    \
                              double beta, double k, int threads) {                           \
        const int64_t h = size / 2, tiles = (plane + TILE - 1) / TILE;                        \
        const T coef = (T)(2.0 * alpha * beta);                                               \
        int failed = 0;                                                                       \
        advise_huge_pages(dx, (size_t)(blocks * channels * plane) * sizeof(T));               \
        _Pragma("omp parallel num_threads(threads) reduction(| : failed)") {                  \
            /* u of the last `size` channels, a ring indexed by channel % size */             \
            T *ring = malloc(size * TILE * sizeof(T));                                        \
            failed |= ring == NULL;                                                           \
            _Pragma("omp for schedule(static)")                                               \
            for (int64_t item = 0; item < blocks * tiles; item++) {                           \
                if (ring == NULL) continue;                                                   \
                /* running sums over the windows: of x^2 at c, of u at c - h */               \
                double ss[TILE] = {0}, us[TILE] = {0};                                        \
                const int64_t b = item / tiles, p0 = item % tiles * TILE;                     \
                const int64_t n = plane - p0 < TILE ? plane - p0 : TILE;                      \
                const int64_t offset = b * channels * plane + p0;                             \
                const T *xb = x + offset, *gb = g + offset;                                   \
                T *dxb = dx + offset;                                                         \
                for (int64_t j = 0; j < h && j < channels; j++)                               \
                    add_squares_##SUFFIX(ss, xb + j * plane, 1.0, n);                         \
                /* step c brings in channel c, then finishes dx[c - h], whose window */       \
                /* c-2h .. c is now complete */                                               \
                for (int64_t c = 0; c < channels + h; c++) {                                  \
                    T *slot = ring + c % size * TILE; /* u[c - size], then u[c] */            \
                    if (c >= size) drop_##SUFFIX(us, slot, n);                                \
                    if (c < channels) {                                                       \
                        slide_##SUFFIX(ss, xb, c, h, channels, plane, n);                     \
                        backward_row_##SUFFIX(dxb + c * plane, slot, us, xb + c * plane,      \
                                              gb + c * plane, ss, n, alpha, beta, k);         \
                    }                                                                         \
                    if (c >= h)                                                               \
                        finish_row_##SUFFIX(dxb + (c - h) * plane, xb + (c - h) * plane, us,  \
                                            coef, n);                                         \
                }                                                                             \
            }                                                                                 \
            free(ring);                                                                       \
        }                                                                                     \
        return failed;                                                                        \
    }

LRN_DEFINE(float, f32, sqrtf, powf)
LRN_DEFINE(double, f64, sqrt, pow)
