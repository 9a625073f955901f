// Fused CPU kernel of the uGMM layer log-density (forward and backward).
//
// Built on first use by sklearn_ugmm/nn/_fused.py and called through ctypes;
// it needs no PyTorch headers. Never materialises a (batch, out, in) block:
// the forward pass keeps the running mixture sums of four samples of one
// neuron in vector registers, one pass over the inputs; the backward pass
// recomputes each responsibility and accumulates the gradients of x, loc,
// scale and the log-weights, tiled over samples and input columns.
//
// Layout (row-major; the input axis is padded to kp, a multiple of the
// vector width W, with components of weight zero):
//   x        (B, kp)     inputs
//   xm       (B, kp)     optional additive mask of missing inputs: 0 where
//                        observed, absent_bits where missing (x holds 0
//                        there); null when every input is observed
//   params   (J, 3, kp)  per neuron: loc, curv and const, where the log2
//                        density of component k of neuron j at sample b is
//                        const[j, k] + curv[j, k] * (x[b, k] - loc[j, k])**2,
//                        curv = -log2(e) / (2 scale**2), and const is shifted
//                        by bound[j] = max_k const[j, k] so that every
//                        component is <= 0 (prepare())
//   out      (B, J)      natural-log densities (forward)
//   shift_t  (J, B)      log2 of each mixture relative to its bound (forward,
//                        kept for the backward pass)
//   grad_x   (B, kp)     (backward, optional)
//   grads    (3, J, kp)  gradients of log_weights, loc and scale (backward)

#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
    typedef float type __attribute__((vector_size(64)));
    typedef int32_t itype __attribute__((vector_size(64)));
    static constexpr int width = 16;
    static constexpr float floor_bits = -125.0f;  // below: exactly 0 (no subnormals)
    static constexpr float zero_weight = -1e30f;  // log2 of a weight 0: exp2 gives exactly 0
    static constexpr float round_magic = 12582912.0f;  // 1.5 * 2**23
    static constexpr int bias = 127;
    static constexpr int mantissa = 23;
    static constexpr float tiny = 8.673617379884035e-19f;  // 2**-60
};

template <>
struct Vec<double> {
    typedef double type __attribute__((vector_size(64)));
    typedef int64_t itype __attribute__((vector_size(64)));
    static constexpr int width = 8;
    static constexpr double floor_bits = -1020.0;
    static constexpr double zero_weight = -1e300;
    static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2**52
    static constexpr int64_t bias = 1023;
    static constexpr int mantissa = 52;
    static constexpr double tiny = 8.673617379884035e-19;  // 2**-60
};

// Flush subnormal results to zero while a kernel runs (restored after):
// components far below their mixture's sum would otherwise come out of exp2
// as subnormals, which x86 cores handle in slow microcode.
struct FlushSubnormals {
#if defined(__SSE__)
    unsigned int saved;
    FlushSubnormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
    ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

template <typename V>
inline V load(const void* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
}

template <typename V>
inline void store(void* p, V v) {
    std::memcpy(p, &v, sizeof(V));
}

// 2**t for finite t <= 0; arguments below floor_bits give exactly 0.
// Round-to-nearest splits t = n + f with |f| <= 1/2, and 2**f is a
// polynomial in f: a minimax one of degree 5 in float (relative error 8e-8,
// 2.5e-7 once evaluated in float), the Taylor series of exp(f ln 2) to
// degree 12 in double (6e-17).
template <typename T>
inline typename Vec<T>::type exp2_poly(typename Vec<T>::type f) {
    typedef typename Vec<T>::type V;
    V p;
    if (sizeof(T) == 4) {
        p = V{} + T(0.0013276471638194493);
        p = p * f + T(0.009675541550864957);
        p = p * f + T(0.0555071327650015);
        p = p * f + T(0.24022119719881596);
        p = p * f + T(0.6931469670617303);
        p = p * f + T(1.0000000716554687);
    } else {
        p = V{} + T(2.5678435993488196e-11);
        p = p * f + T(4.44553827187081e-10);
        p = p * f + T(7.054911620801121e-09);
        p = p * f + T(1.0178086009239696e-07);
        p = p * f + T(1.3215486790144305e-06);
        p = p * f + T(1.5252733804059838e-05);
        p = p * f + T(0.00015403530393381606);
        p = p * f + T(0.0013333558146428441);
        p = p * f + T(0.009618129107628477);
        p = p * f + T(0.055504108664821576);
        p = p * f + T(0.2402265069591007);
        p = p * f + T(0.6931471805599453);
        p = p * f + T(1.0);
    }
    return p;
}

#if defined(__AVX512F__)
// AVX-512: round and scale by 2**n in one instruction each; scaling far
// below the smallest subnormal gives exactly 0, so no select is needed.
inline Vec<float>::type round_nearest(Vec<float>::type t) {
    return (Vec<float>::type)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline Vec<double>::type round_nearest(Vec<double>::type t) {
    return (Vec<double>::type)_mm512_roundscale_pd((__m512d)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline Vec<float>::type times_exp2(Vec<float>::type p, Vec<float>::type n) {
    return (Vec<float>::type)_mm512_scalef_ps((__m512)p, (__m512)n);
}
inline Vec<double>::type times_exp2(Vec<double>::type p, Vec<double>::type n) {
    return (Vec<double>::type)_mm512_scalef_pd((__m512d)p, (__m512d)n);
}

// No clamp: scalef gives exactly 0 far below the smallest subnormal, and
// for |t| >= 2**23 (2**52) t is an integer, so f = 0. Arguments must not be
// -inf, hence the finite stand-in for log2 of a zero weight (zero_weight).
template <typename T>
inline typename Vec<T>::type exp2v(typename Vec<T>::type t) {
    typedef typename Vec<T>::type V;
    const V n = round_nearest(t);
    return times_exp2(exp2_poly<T>(t - n), n);
}

#if defined(__AVX512DQ__)
// float, one instruction fewer: f = t - floor(t) in [0, 1) by vreduceps,
// and scalef multiplies by 2**floor(t) itself. Minimax polynomial of degree
// 5 for 2**f on [0, 1) (relative error 8e-8, 1.6e-7 evaluated in float).
template <>
inline Vec<float>::type exp2v<float>(Vec<float>::type t) {
    typedef Vec<float>::type V;
    const V f = (V)_mm512_reduce_ps((__m512)t, 0x09);  // round down, no precision exception
    V p = V{} + 0.0018775766251151876f;
    p = p * f + 0.008989340521747737f;
    p = p * f + 0.05582631735842908f;
    p = p * f + 0.24015361744641062f;
    p = p * f + 0.6931530731150215f;
    p = p * f + 0.9999999250681713f;
    return times_exp2(p, t);
}
#endif
#else
template <typename T>
inline typename Vec<T>::type exp2v(typename Vec<T>::type t) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::itype I;
    const V lo = V{} + Vec<T>::floor_bits;
    const I under = t < lo;
    t = under ? lo : t;
    const V n = (t + Vec<T>::round_magic) - Vec<T>::round_magic;
    const I e = (__builtin_convertvector(n, I) + Vec<T>::bias) << Vec<T>::mantissa;
    V two_n;
    std::memcpy(&two_n, &e, sizeof(V));
    const V r = exp2_poly<T>(t - n) * two_n;
    return under ? V{} : r;
}
#endif

template <typename T>
inline T hsum(typename Vec<T>::type v) {
    T s = 0;
    for (int i = 0; i < Vec<T>::width; ++i) s += v[i];
    return s;
}

#if defined(__AVX512F__)
template <>
inline float hsum<float>(Vec<float>::type v) {
    return _mm512_reduce_add_ps((__m512)v);
}
template <>
inline double hsum<double>(Vec<double>::type v) {
    return _mm512_reduce_add_pd((__m512d)v);
}
#endif

// log2 of n positive normal numbers; vectorised for float on AVX-512:
// s = m 2**e with m in [1, 2), log2 m = 2 atanh(u) / ln 2 with
// u = (m - 1) / (m + 1) in [0, 1/3), by its series to u**13 (relative
// error 5e-9).
template <typename T>
inline void log2_array(const T* s, T* l2, int64_t n) {
    for (int64_t i = 0; i < n; ++i) l2[i] = std::log2(s[i]);
}

#if defined(__AVX512F__)
template <>
inline void log2_array<float>(const float* s, float* l2, int64_t n) {
    typedef Vec<float>::type V;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(s + i);
        const V m = (V)_mm512_getmant_ps(v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
        const V e = (V)_mm512_getexp_ps(v);
        const V u = (m - 1.0f) / (m + 1.0f);
        const V u2 = u * u;
        V p = V{} + 1.0f / 13;
        p = p * u2 + 1.0f / 11;
        p = p * u2 + 1.0f / 9;
        p = p * u2 + 1.0f / 7;
        p = p * u2 + 1.0f / 5;
        p = p * u2 + 1.0f / 3;
        p = p * u2 + 1.0f;
        _mm512_storeu_ps(l2 + i, (__m512)(e + (2.0f * 1.4426950408889634f) * u * p));
    }
    for (; i < n; ++i) l2[i] = std::log2(s[i]);
}
#endif

template <typename T>
inline T hmax(typename Vec<T>::type v) {
    T m = v[0];
    for (int i = 1; i < Vec<T>::width; ++i) m = v[i] > m ? v[i] : m;
    return m;
}

// Missing inputs (NaN in the caller's x) come as an additive mask (B, kp):
// 0 where x[b, k] is observed, absent_bits where it is missing, so that the
// component's log2 density drops far below exp2's range and it contributes
// exactly 0 to the mixture and to every gradient (x holds 0 there, so its
// distance stays finite). Without a mask (M false) nothing is added.
template <bool M, typename V, typename T>
inline V masked(V t, const T* m) {
    if constexpr (M) {
        return t + load<V>(m);
    } else {
        (void)m;
        return t;
    }
}

// log2 of the mixture of neuron j at one sample, relative to bound[j],
// with an exact maximum: used when the bounded sum underflows.
template <typename T, bool M>
T exact_log2_sum(const T* xb, const T* mb, const T* pj, int64_t kp) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    const T* loc = pj;
    const T* curv = pj + kp;
    const T* cst = pj + 2 * kp;
    V mx = V{} - INFINITY;
    for (int64_t k = 0; k < kp; k += W) {
        const V d = load<V>(xb + k) - load<V>(loc + k);
        const V t = masked<M, V>(load<V>(cst + k) + load<V>(curv + k) * d * d, mb + k);
        mx = t > mx ? t : mx;
    }
    const T peak = hmax<T>(mx);
    V acc = V{};
    for (int64_t k = 0; k < kp; k += W) {
        const V d = load<V>(xb + k) - load<V>(loc + k);
        V t = masked<M, V>(load<V>(cst + k) + load<V>(curv + k) * d * d, mb + k) - peak;
        t = t < T(0) ? t : V{};
        acc += exp2v<T>(t);
    }
    return std::log2(hsum<T>(acc)) + peak;
}

// Forward for neurons [j0, j1), every sample; four samples share each
// parameter load. Writes the natural-log output (B, J) and, for the backward
// pass, shift_t (J, B): the log2 of each mixture relative to its bound, from
// the same rounded components, so that the backward responsibilities stay
// <= 1 (and the dominant one 1) even when log-densities are huge.
template <typename T, bool M>
void forward_neurons(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params,
                     const T* bound, T* out, T* shift_t, int64_t j0, int64_t j1) {
    FlushSubnormals ftz;
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    constexpr int64_t chunk = 256;
    T sums[chunk];
    for (int64_t j = j0; j < j1; ++j) {
        const T* pj = params + j * 3 * kp;
        const T* loc = pj;
        const T* curv = pj + kp;
        const T* cst = pj + 2 * kp;
        for (int64_t b0 = 0; b0 < B; b0 += chunk) {
            const int64_t b1 = b0 + chunk < B ? b0 + chunk : B;
            int64_t b = b0;
            for (; b + 4 <= b1; b += 4) {
                const T* x0 = x + b * kp;
                const T* x1 = x0 + kp;
                const T* x2 = x1 + kp;
                const T* x3 = x2 + kp;
                const T* m0 = M ? xm + b * kp : nullptr;
                const T* m1 = m0 + kp;
                const T* m2 = m1 + kp;
                const T* m3 = m2 + kp;
                V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
                for (int64_t k = 0; k < kp; k += W) {
                    const V l = load<V>(loc + k);
                    const V c = load<V>(curv + k);
                    const V s = load<V>(cst + k);
                    V d;
                    d = load<V>(x0 + k) - l;
                    a0 += exp2v<T>(masked<M, V>(s + c * d * d, m0 + k));
                    d = load<V>(x1 + k) - l;
                    a1 += exp2v<T>(masked<M, V>(s + c * d * d, m1 + k));
                    d = load<V>(x2 + k) - l;
                    a2 += exp2v<T>(masked<M, V>(s + c * d * d, m2 + k));
                    d = load<V>(x3 + k) - l;
                    a3 += exp2v<T>(masked<M, V>(s + c * d * d, m3 + k));
                }
                sums[b - b0] = hsum<T>(a0);
                sums[b - b0 + 1] = hsum<T>(a1);
                sums[b - b0 + 2] = hsum<T>(a2);
                sums[b - b0 + 3] = hsum<T>(a3);
            }
            for (; b < b1; ++b) {
                const T* xb = x + b * kp;
                const T* mb = M ? xm + b * kp : nullptr;
                V a = V{};
                for (int64_t k = 0; k < kp; k += W) {
                    const V d = load<V>(xb + k) - load<V>(loc + k);
                    a += exp2v<T>(masked<M, V>(load<V>(cst + k) + load<V>(curv + k) * d * d, mb + k));
                }
                sums[b - b0] = hsum<T>(a);
            }
            T* l2 = shift_t + j * B + b0;
            log2_array<T>(sums, l2, b1 - b0);
            for (b = b0; b < b1; ++b) {
                // a sum below 2**-60 of the bound: too far from every
                // component for the bound, redo with the exact peak
                if (!(sums[b - b0] >= Vec<T>::tiny)) l2[b - b0] = exact_log2_sum<T, M>(x + b * kp, M ? xm + b * kp : nullptr, pj, kp);
                out[b * J + j] = (l2[b - b0] + bound[j]) * T(0.6931471805599453094);
            }
        }
    }
}

// Per (neuron, sample) factors of the backward pass, (J, B) each, from the
// forward pass's shift_t (J, B). A row whose mixture is within 2**60 of its
// bound (the common case) gets factor = grad * 2**-shift and offset 0, so
// R = exp2(component) * factor; a far row gets factor = grad and
// offset = shift, so R = exp2(component - offset) * grad. factor 0 marks
// rows to skip.
template <typename T>
void backward_factors(int64_t B, int64_t J, const T* shift_t, const T* grad, T* factor, T* offset) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    for (int64_t j = 0; j < J; ++j) {
        const T* sh = shift_t + j * B;
        T* fj = factor + j * B;
        T* oj = offset + j * B;
        int64_t b = 0;
        for (; b + W <= B; b += W) {
            const V s = load<V>(sh + b);
            V g;
            for (int i = 0; i < W; ++i) g[i] = grad[(b + i) * J + j];
            const auto far = !(s > T(-60));
            const V near = s > T(-60) ? s : V{};  // far lanes are not exponentiated
            store<V>(fj + b, far ? g : g * exp2v<T>(-near));
            store<V>(oj + b, far ? s : V{});
        }
        for (; b < B; ++b) {
            const T g = grad[b * J + j];
            const bool far = !(sh[b] > T(-60));
            fj[b] = far ? g : g * std::exp2(-sh[b]);
            oj[b] = far ? sh[b] : T(0);
        }
    }
}

// Backward for the input columns [v0 * W, v1 * W), every neuron and sample.
// Threads own disjoint columns of grad_x and of the parameter gradients, so
// nothing is reduced across threads.
template <typename T, bool NEED_X, bool M>
void backward_columns(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* factor_t,
                      const T* offset_t, T* grad_x, T* grads, int64_t v0, int64_t v1) {
    FlushSubnormals ftz;
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    constexpr int64_t rows = 256;  // samples per tile: a column tile of x and grad_x stays in L1
    const T two_ln2 = T(2.0 * 0.6931471805599453094);
    for (int64_t b0 = 0; b0 < B; b0 += rows) {
        const int64_t b1 = b0 + rows < B ? b0 + rows : B;
        for (int64_t v = v0; v < v1; ++v) {
            const int64_t k = v * W;
            if (NEED_X) {
                for (int64_t b = b0; b < b1; ++b) store<V>(grad_x + b * kp + k, V{});
            }
            for (int64_t j = 0; j < J; ++j) {
                const T* pj = params + j * 3 * kp;
                const V l = load<V>(pj + k);
                const V c = load<V>(pj + kp + k);
                const V s = load<V>(pj + 2 * kp + k);
                const V neg_inv_var = c * two_ln2;  // -1 / scale**2
                const T* factor = factor_t + j * B;
                const T* offset = offset_t + j * B;
                V s0 = V{}, s1 = V{}, s2 = V{};  // sum_b R, sum_b R d, sum_b R d**2
                for (int64_t b = b0; b < b1; ++b) {
                    const T f = factor[b];
                    if (f == T(0)) continue;
                    const V d = load<V>(x + b * kp + k) - l;
                    V t = masked<M, V>(s + c * d * d, M ? xm + b * kp + k : nullptr);
                    if (offset[b] != T(0)) {
                        t -= offset[b];
                        t = t < T(0) ? t : V{};  // rounding at huge magnitudes must not give R > 1
                    }
                    const V r = exp2v<T>(t) * f;
                    const V rd = r * d;
                    s0 += r;
                    s1 += rd;
                    s2 += rd * d;
                    if (NEED_X) {
                        T* gx = grad_x + b * kp + k;
                        store<V>(gx, load<V>(gx) + rd * neg_inv_var);
                    }
                }
                T* g0 = grads + j * kp + k;
                T* g1 = g0 + J * kp;
                T* g2 = g1 + J * kp;
                if (b0 > 0) {
                    s0 += load<V>(g0);
                    s1 += load<V>(g1);
                    s2 += load<V>(g2);
                }
                if (b1 < B) {
                    store<V>(g0, s0);
                    store<V>(g1, s1);
                    store<V>(g2, s2);
                } else {
                    // d/d log_weight = R; d/d loc = R d / scale**2;
                    // d/d scale = R (d**2 / scale**2 - 1) / scale
                    const V inv_var = -neg_inv_var;
                    V inv_scale;
                    for (int i = 0; i < W; ++i) inv_scale[i] = std::sqrt(inv_var[i]);
                    store<V>(g0, s0);
                    store<V>(g1, s1 * inv_var);
                    store<V>(g2, (s2 * inv_var - s0) * inv_scale);
                }
            }
        }
    }
}

// Fills params (J, 3, kp) and bound (J) from loc (strided: tied means are an
// expanded view), scale, log(scale) and log_weights (contiguous (J, K)).
// Returns 1 when some standardised distance may reach z_lim or a square may
// overflow (the caller then uses the clipping reference kernel), else 0.
template <typename T>
int prepare(int64_t B, int64_t J, int64_t K, int64_t kp, const T* x, const T* loc, int64_t loc_sj,
            int64_t loc_sk, const T* scale, const T* log_weights, T* params, T* bound, double z_lim) {
    const T log2e = T(1.4426950408889634074);
    const T half_log_2pi = T(0.91893853320467274178);
    // maxima for the clip check; the sums only detect NaN (max ignores it)
    T x_max = 0, loc_max = 0, inv_max = 0, nan_probe = 0;
#pragma omp simd reduction(max : x_max) reduction(+ : nan_probe)
    for (int64_t i = 0; i < B * kp; ++i) {
        const T a = std::fabs(x[i]);
        x_max = a > x_max ? a : x_max;
        nan_probe += a;
    }
    for (int64_t j = 0; j < J; ++j) {
        T* pl = params + j * 3 * kp;
        T* pc = pl + kp;
        T* ps = pc + kp;
        const T* lj = loc + j * loc_sj;
        const T* sj = scale + j * K;
        T* log2_scale = pc;  // borrowed: curv is written after its last read
        log2_array<T>(sj, log2_scale, K);
        const T* lwj = log_weights + j * K;
        if (loc_sk == 1) {
            std::memcpy(pl, lj, K * sizeof(T));
        } else {
            for (int64_t k = 0; k < K; ++k) pl[k] = lj[k * loc_sk];
        }
        T peak = -INFINITY;
#pragma omp simd reduction(max : peak, loc_max, inv_max) reduction(+ : nan_probe)
        for (int64_t k = 0; k < K; ++k) {
            const T inv = T(1) / sj[k];
            const T cst = (lwj[k] - half_log_2pi) * log2e - log2_scale[k];
            pc[k] = T(-0.5) * log2e * inv * inv;
            ps[k] = cst;
            peak = cst > peak ? cst : peak;
            const T al = std::fabs(pl[k]);
            loc_max = al > loc_max ? al : loc_max;
            inv_max = inv > inv_max ? inv : inv_max;
            nan_probe += al + inv;
        }
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) {
            const T shifted = ps[k] - peak;
            ps[k] = shifted > Vec<T>::zero_weight ? shifted : Vec<T>::zero_weight;
        }
        for (int64_t k = K; k < kp; ++k) {
            pl[k] = 0;
            pc[k] = 0;
            ps[k] = Vec<T>::zero_weight;  // padding components have weight zero
        }
        bound[j] = peak;
    }
    const double reach = double(x_max) + double(loc_max);
    const double sqrt_max = z_lim * z_lim;
    const bool safe = reach * double(inv_max) < z_lim && reach < sqrt_max && double(inv_max) < sqrt_max &&
                      nan_probe == nan_probe;
    return safe ? 0 : 1;
}

template <typename T>
void forward(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* bound,
             T* out, T* shift, int n_threads) {
    auto run = [&](int64_t j0, int64_t j1) {
        if (xm)
            forward_neurons<T, true>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
        else
            forward_neurons<T, false>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
    };
    if (n_threads <= 1 || J < 2) {
        run(0, J);
        return;
    }
#ifdef _OPENMP
    // small chunks handed out on demand: a thread preempted by another
    // process (a busy machine) holds up the others for one chunk at most
    constexpr int64_t neurons = 4;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t j = 0; j < J; j += neurons) {
        run(j, j + neurons < J ? j + neurons : J);
    }
#else
    run(0, J);
#endif
}

// factor and offset ((J, B) each) are scratch memory.
template <typename T>
void backward(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* shift,
              const T* grad_out, T* factor, T* offset, T* grad_x, T* grads, int n_threads) {
    backward_factors<T>(B, J, shift, grad_out, factor, offset);
    const int64_t nv = kp / Vec<T>::width;
    auto run = [&](int64_t v0, int64_t v1) {
        if (grad_x && xm)
            backward_columns<T, true, true>(B, J, kp, x, xm, params, factor, offset, grad_x, grads, v0, v1);
        else if (grad_x)
            backward_columns<T, true, false>(B, J, kp, x, xm, params, factor, offset, grad_x, grads, v0, v1);
        else if (xm)
            backward_columns<T, false, true>(B, J, kp, x, xm, params, factor, offset, grad_x, grads, v0, v1);
        else
            backward_columns<T, false, false>(B, J, kp, x, xm, params, factor, offset, grad_x, grads, v0, v1);
    };
    if (n_threads <= 1 || nv < 2) {
        run(0, nv);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t v = 0; v < nv; ++v) run(v, v + 1);
#else
    run(0, nv);
#endif
}

}  // namespace

extern "C" {

int ugmm_fused_width_f32() { return Vec<float>::width; }
int ugmm_fused_width_f64() { return Vec<double>::width; }

#define UGMM_EXPORT(T, SUFFIX)                                                                                 \
    int ugmm_fused_prepare_##SUFFIX(int64_t B, int64_t J, int64_t K, int64_t kp, const T* x, const T* loc,     \
                                    int64_t loc_sj, int64_t loc_sk, const T* scale, const T* log_weights,     \
                                    T* params, T* bound, double z_lim) {                                      \
        return prepare<T>(B, J, K, kp, x, loc, loc_sj, loc_sk, scale, log_weights, params, bound, z_lim);     \
    }                                                                                                          \
    void ugmm_fused_forward_##SUFFIX(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm,               \
                                     const T* params, const T* bound, T* out, T* shift, int n_threads) {      \
        forward<T>(B, J, kp, x, xm, params, bound, out, shift, n_threads);                                    \
    }                                                                                                          \
    void ugmm_fused_backward_##SUFFIX(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm,              \
                                      const T* params, const T* shift, const T* grad_out, T* factor,          \
                                      T* offset, T* grad_x, T* grads, int n_threads) {                        \
        backward<T>(B, J, kp, x, xm, params, shift, grad_out, factor, offset, grad_x, grads, n_threads);      \
    }

UGMM_EXPORT(float, f32)
UGMM_EXPORT(double, f64)

}  // extern "C"
