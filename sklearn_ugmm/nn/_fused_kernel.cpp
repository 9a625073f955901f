// Fused CPU kernel of the uGMM layer log-density (forward and backward).
//
// Built on first use by sklearn_ugmm/nn/_fused.py and called through ctypes;
// it needs no PyTorch headers. Never materialises a (batch, out, in) block:
// the forward pass keeps the running mixture sums of four samples of one
// neuron in vector registers, one pass over the inputs; the backward pass
// recomputes each responsibility and accumulates the gradients of x, loc,
// scale and the log-weights, tiled over samples and input columns.
// Also here: the sparse route for inputs that are mostly exactly 0
// (sparse_*: the zero inputs' part as a matrix product done by the caller,
// exponentials for the nonzero inputs only), the missing-input mask, and
// the float layer's parameter transforms (softplus, log_softmax).
//
// Layout (row-major; the input axis is padded to kp, a multiple of the
// vector width W, with components of weight zero):
//   x        (B, kp)     inputs
//   xm       (B, kp)     optional additive mask of missing inputs: 0 where
//                        observed, -1e30 where missing (x holds 0 there);
//                        null when every input is observed
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
#include <vector>
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
    static constexpr float complement_margin = 1;  // see complement_sums()
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
    static constexpr double complement_margin = 64;  // see complement_sums()
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
// (A table-driven version as for double below has one operation more per
// vector and measured no faster: the float kernel is bound by the total
// count of vector operations, not by the multiply-adds.)
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

// Table-driven exp2 for double (AVX-512): t = n + r with n a multiple of
// 1/16 and |r| <= 1/32; 2**n = 2**floor(n) * 2**frac(n), the first by
// scalef, the second from a 16-entry table indexed by the low mantissa bits
// of t + magic (vpermt2pd); 2**r by its Taylor series to degree 7
// (relative error 1.2e-18). Per vector three additions, one permute and 8
// multiply-adds instead of a rounding, a subtraction and 13 multiply-adds
// (the double forward pass is 17% faster). For t below -2**47 the table
// index is not meaningful, but the result is then exactly 0 (scalef), as
// for the stand-in of a zero weight. exp2_table_split is the table step,
// shared with exp2v_route below.
inline void exp2_table_split(Vec<double>::type t, Vec<double>::type& n, Vec<double>::type& r,
                             Vec<double>::type& base) {
    typedef Vec<double>::type V;
    alignas(64) static const double table[16] = {
        1.0, 1.0442737824274138403, 1.0905077326652576592, 1.1387886347566916537,
        1.1892071150027210667, 1.2418578120734840486, 1.2968395546510096659, 1.3542555469368927282,
        1.4142135623730950488, 1.4768261459394993114, 1.5422108254079408236, 1.6104903319492543082,
        1.6817928305074290861, 1.7562521603732994831, 1.8340080864093424635, 1.9152065613971472939};
    const __m512d lo = _mm512_load_pd(table);
    const __m512d hi = _mm512_load_pd(table + 8);
    const V magic = V{} + 422212465065984.0;  // 1.5 * 2**48: t + magic rounds t to a multiple of 1/16
    const V y = t + magic;
    n = y - magic;
    r = t - n;
    base = (V)_mm512_permutex2var_pd(lo, _mm512_castpd_si512((__m512d)y), hi);
}

template <>
inline Vec<double>::type exp2v<double>(Vec<double>::type t) {
    typedef Vec<double>::type V;
    V n, r, base;
    exp2_table_split(t, n, r, base);
    // (2**r - 1) / r, Taylor to degree 6 in r
    V q = V{} + 1.5252733804059838e-05;
    q = q * r + 0.00015403530393381606;
    q = q * r + 0.0013333558146428441;
    q = q * r + 0.009618129107628477;
    q = q * r + 0.055504108664821576;
    q = q * r + 0.2402265069591007;
    q = q * r + 0.6931471805599453;
    return times_exp2(base + base * (r * q), n);
}
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

// exp2 of the inference routes (no backward pass follows; the callers
// keep no shifts): exp2v, except for double on AVX-512, where 2**r of the
// table method is a minimax polynomial of degree 5 (q of degree 4) instead
// of Taylor's of degree 7: relative error 9e-15 instead of 1.2e-18 (the
// log-density's error, absolute), two multiply-adds fewer per vector of a
// kernel bound by them.
template <typename T, bool LEAN>
inline typename Vec<T>::type exp2v_route(typename Vec<T>::type t) {
    return exp2v<T>(t);
}

#if defined(__AVX512F__)
template <>
inline Vec<double>::type exp2v_route<double, true>(Vec<double>::type t) {
    typedef Vec<double>::type V;
    V n, r, base;
    exp2_table_split(t, n, r, base);
    // (2**r - 1) / r on |r| <= 1/32, minimax (Chebyshev) of degree 4
    V q = V{} + 0.0013333744338239965;
    q = q * r + 0.009618317140580765;
    q = q * r + 0.05550410866027587;
    q = q * r + 0.24022650691319414;
    q = q * r + 0.6931471805599453;
    return times_exp2(base + base * (r * q), n);
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
inline Vec<float>::type log2v(Vec<float>::type v) {
    // log2 of one vector, as described above
    typedef Vec<float>::type V;
    const V m = (V)_mm512_getmant_ps((__m512)v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    const V e = (V)_mm512_getexp_ps((__m512)v);
    const V u = (m - 1.0f) / (m + 1.0f);
    const V u2 = u * u;
    V p = V{} + 1.0f / 13;
    p = p * u2 + 1.0f / 11;
    p = p * u2 + 1.0f / 9;
    p = p * u2 + 1.0f / 7;
    p = p * u2 + 1.0f / 5;
    p = p * u2 + 1.0f / 3;
    p = p * u2 + 1.0f;
    return e + (2.0f * 1.4426950408889634f) * u * p;
}

template <>
inline void log2_array<float>(const float* s, float* l2, int64_t n) {
    typedef Vec<float>::type V;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(l2 + i, (__m512)log2v((V)_mm512_loadu_ps(s + i)));
    for (; i < n; ++i) l2[i] = std::log2(s[i]);
}
#endif

// log2 of the forward pass's mixture sums on the inference routes (the
// callers keep no shifts; elsewhere log2_array): log2_array, except for
// double on AVX-512, where std::log2 per value cost as much as the exponentials of a
// narrow layer (a 10 -> 64 layer: 0.3 of its 0.65 ms per 1000 rows). Vector
// version: s = m 2**e with m in [sqrt(1/2), sqrt(2)) (getmant, halved
// above sqrt(2)), log2 m = 2 atanh(u) / ln 2 with u = (m - 1) / (m + 1),
// |u| <= 0.1716, atanh by a minimax polynomial (5e-18 relative; a few ulp
// once rounded). Sums that are 0 or tiny give garbage the callers
// replace (they recompute those with the exact peak).
template <typename T>
inline void log2_sums(const T* s, T* l2, int64_t n) {
    log2_array<T>(s, l2, n);
}

#if defined(__AVX512F__)
inline Vec<double>::type log2v(Vec<double>::type v) {
    typedef Vec<double>::type V;
    const V m1 = (V)_mm512_getmant_pd((__m512d)v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    const V e1 = (V)_mm512_getexp_pd((__m512d)v);
    const auto big = m1 > 1.4142135623730951;
    const V m = big ? m1 * 0.5 : m1;  // exact
    const V e = big ? e1 + 1.0 : e1;
    const V u = (m - 1.0) / (m + 1.0);
    const V u2 = u * u;
    // (atanh(u) / u - 1) / u**2: minimax (Chebyshev) of degree 6 in u**2 on
    // |u| <= 0.1716 (error 1.6e-16, 5e-18 relative once times u**2)
    V p = V{} + 0.07308439459514911;
    p = p * u2 + 0.07665843434319214;
    p = p * u2 + 0.09091445085156985;
    p = p * u2 + 0.11111105560224649;
    p = p * u2 + 0.1428571431303169;
    p = p * u2 + 0.19999999999949655;
    p = p * u2 + 0.3333333333333335;
    const V up = u + u * (u2 * p);  // atanh(u), its leading term unrounded
    return e + 2.8853900817779268 * up;
}

template <>
inline void log2_sums<double>(const double* s, double* l2, int64_t n) {
    typedef Vec<double>::type V;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm512_storeu_pd(l2 + i, (__m512d)log2v((V)_mm512_loadu_pd(s + i)));
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
// 0 where x[b, k] is observed, -1e30 (ABSENT_BITS in _fused.py) where it is
// missing, so that the component's log2 density drops far below exp2's
// range and it contributes
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
template <typename T, bool M, bool LEAN>
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
                    a0 += exp2v_route<T, LEAN>(masked<M, V>(s + c * d * d, m0 + k));
                    d = load<V>(x1 + k) - l;
                    a1 += exp2v_route<T, LEAN>(masked<M, V>(s + c * d * d, m1 + k));
                    d = load<V>(x2 + k) - l;
                    a2 += exp2v_route<T, LEAN>(masked<M, V>(s + c * d * d, m2 + k));
                    d = load<V>(x3 + k) - l;
                    a3 += exp2v_route<T, LEAN>(masked<M, V>(s + c * d * d, m3 + k));
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
                    a += exp2v_route<T, LEAN>(masked<M, V>(load<V>(cst + k) + load<V>(curv + k) * d * d, mb + k));
                }
                sums[b - b0] = hsum<T>(a);
            }
            T l2_own[chunk];  // inference (shift_t null): nothing kept for a backward pass
            T* l2 = shift_t ? shift_t + j * B + b0 : l2_own;
            if (shift_t)
                log2_array<T>(sums, l2, b1 - b0);
            else  // inference routes (no shifts kept): eight at a time in double
                log2_sums<T>(sums, l2, b1 - b0);
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
// rows to skip. any_far[j] says whether neuron j has a far row at all.
template <typename T>
void backward_factors(int64_t B, int64_t J, const T* shift_t, const T* grad, T* factor, T* offset, char* any_far) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    for (int64_t j = 0; j < J; ++j) {
        const T* sh = shift_t + j * B;
        T* fj = factor + j * B;
        T* oj = offset + j * B;
        int64_t b = 0;
        V far_lanes = V{};
        for (; b + W <= B; b += W) {
            const V s = load<V>(sh + b);
            V g;
            for (int i = 0; i < W; ++i) g[i] = grad[(b + i) * J + j];
            const auto far = !(s > T(-60));
            const V near = s > T(-60) ? s : V{};  // far lanes are not exponentiated
            store<V>(fj + b, far ? g : g * exp2v<T>(-near));
            store<V>(oj + b, far ? s : V{});
            far_lanes += far ? V{} + T(1) : V{};
        }
        bool any = hsum<T>(far_lanes) != T(0);
        for (; b < B; ++b) {
            const T g = grad[b * J + j];
            const bool far = !(sh[b] > T(-60));
            fj[b] = far ? g : g * std::exp2(-sh[b]);
            oj[b] = far ? sh[b] : T(0);
            any = any || far;
        }
        any_far[j] = any;
    }
}

// Backward for the input columns [v0 * W, v1 * W), every neuron and sample.
// Threads own disjoint columns of grad_x and of the parameter gradients, so
// nothing is reduced across threads.
template <typename T, bool NEED_X, bool M>
void backward_columns(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* factor_t,
                      const T* offset_t, const char* any_far, T* grad_x, T* grads, int64_t v0, int64_t v1) {
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
                if (!any_far[j]) {
                    // every row near its bound (the common case): no offsets,
                    // and a zero factor gives R = 0 without a branch; two
                    // samples per iteration, in separate accumulators
                    V u0 = V{}, u1 = V{}, u2 = V{};
                    int64_t b = b0;
                    for (; b + 2 <= b1; b += 2) {
                        const V da = load<V>(x + b * kp + k) - l;
                        const V db = load<V>(x + (b + 1) * kp + k) - l;
                        const V ta = masked<M, V>(s + c * da * da, M ? xm + b * kp + k : nullptr);
                        const V tb = masked<M, V>(s + c * db * db, M ? xm + (b + 1) * kp + k : nullptr);
                        const V ra = exp2v<T>(ta) * factor[b];
                        const V rb = exp2v<T>(tb) * factor[b + 1];
                        const V rda = ra * da;
                        const V rdb = rb * db;
                        s0 += ra;
                        u0 += rb;
                        s1 += rda;
                        u1 += rdb;
                        s2 += rda * da;
                        u2 += rdb * db;
                        if (NEED_X) {
                            T* gxa = grad_x + b * kp + k;
                            T* gxb = gxa + kp;
                            store<V>(gxa, load<V>(gxa) + rda * neg_inv_var);
                            store<V>(gxb, load<V>(gxb) + rdb * neg_inv_var);
                        }
                    }
                    for (; b < b1; ++b) {
                        const V d = load<V>(x + b * kp + k) - l;
                        const V t = masked<M, V>(s + c * d * d, M ? xm + b * kp + k : nullptr);
                        const V r = exp2v<T>(t) * factor[b];
                        const V rd = r * d;
                        s0 += r;
                        s1 += rd;
                        s2 += rd * d;
                        if (NEED_X) {
                            T* gx = grad_x + b * kp + k;
                            store<V>(gx, load<V>(gx) + rd * neg_inv_var);
                        }
                    }
                    s0 += u0;
                    s1 += u1;
                    s2 += u2;
                } else for (int64_t b = b0; b < b1; ++b) {
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

// prepare() in two parts, so that inference can keep the parameters' part
// of a layer between calls (_fused.cached_log_density):
//
// scan_inputs(): the largest |x| and a NaN probe (stats[0], stats[1]) for
// the clip check, and the number of inputs exactly 0 in x (B, kp) outside
// its padding (zeros from K on), returned: the choice of the sparse route
// costs no pass of its own.
template <typename T>
int64_t scan_inputs(int64_t B, int64_t K, int64_t kp, const T* x, T* stats) {
    // the sum only detects NaN (max ignores it)
    T x_max = 0, nan_probe = 0;
    int64_t zeros = 0;
#pragma omp simd reduction(max : x_max) reduction(+ : nan_probe, zeros)
    for (int64_t i = 0; i < B * kp; ++i) {
        const T a = std::fabs(x[i]);
        x_max = a > x_max ? a : x_max;
        nan_probe += a;
        zeros += a == T(0) ? 1 : 0;
    }
    stats[0] = x_max;
    stats[1] = nan_probe;
    return zeros - B * (kp - K);
}

// scan_inputs() of x (B, K) with row stride ldx, copied first into x_p
// (B, kp) with zero padding: the caller's torch pad, one pass fewer.
template <typename T>
int64_t pad_and_scan_inputs(int64_t B, int64_t K, int64_t kp, const T* x, int64_t ldx, T* x_p, T* stats) {
    for (int64_t b = 0; b < B; ++b) {
        std::memcpy(x_p + b * kp, x + b * ldx, K * sizeof(T));
        for (int64_t k = K; k < kp; ++k) x_p[b * kp + k] = T(0);
    }
    return scan_inputs<T>(B, K, kp, x_p, stats);
}

// prepare_params(): fills params (J, 3, kp) and bound (J) from loc
// (strided: tied means are an expanded view), scale, log(scale) and
// log_weights (contiguous (J, K)); stats gets the largest |loc|, the
// largest 1 / scale and a NaN probe for the clip check.
template <typename T>
void prepare_params(int64_t J, int64_t K, int64_t kp, const T* loc, int64_t loc_sj, int64_t loc_sk,
                    const T* scale, const T* log_weights, T* params, T* bound, T* stats) {
    const T log2e = T(1.4426950408889634074);
    const T half_log_2pi = T(0.91893853320467274178);
    T loc_max = 0, inv_max = 0, nan_probe = 0;
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
    stats[0] = loc_max;
    stats[1] = inv_max;
    stats[2] = nan_probe;
}

// Both parts and the clip check. Returns -1 when some standardised distance
// may reach z_lim or a square may overflow (the caller then uses the
// clipping reference kernel), else scan_inputs()'s count of zero inputs.
template <typename T>
int64_t prepare(int64_t B, int64_t J, int64_t K, int64_t kp, const T* x, const T* loc, int64_t loc_sj,
                int64_t loc_sk, const T* scale, const T* log_weights, T* params, T* bound, double z_lim) {
    T x_stats[2], p_stats[3];
    const int64_t zeros = scan_inputs<T>(B, K, kp, x, x_stats);
    prepare_params<T>(J, K, kp, loc, loc_sj, loc_sk, scale, log_weights, params, bound, p_stats);
    const double reach = double(x_stats[0]) + double(p_stats[0]);
    const double inv_max = double(p_stats[1]);
    const double sqrt_max = z_lim * z_lim;
    const bool safe = reach * inv_max < z_lim && reach < sqrt_max && inv_max < sqrt_max &&
                      x_stats[1] == x_stats[1] && p_stats[2] == p_stats[2];
    return safe ? zeros : -1;
}

template <typename T>
void forward(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* bound,
             T* out, T* shift, int n_threads) {
    auto run = [&](int64_t j0, int64_t j1) {
        // no shifts kept: the inference routes, their exp2
        if (xm && shift)
            forward_neurons<T, true, false>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
        else if (xm)
            forward_neurons<T, true, true>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
        else if (shift)
            forward_neurons<T, false, false>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
        else
            forward_neurons<T, false, true>(B, J, kp, x, xm, params, bound, out, shift, j0, j1);
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


// Inputs that are mostly exactly 0 (images, sparse features): a component
// at x = 0 does not depend on the sample, so the zero inputs' part of every
// mixture is one matrix product, zero_sums = (x == 0) @ e0.T with
// e0[j, k] = exp2(const[j, k] + curv[j, k] * loc[j, k]**2) (the caller
// computes it, a GEMM), and only the nonzero inputs are exponentiated, on
// the transposed parameters (kp, 3, jp) so that one input's components for
// 16 (8) neurons are one vector. sparse_setup() fills e0 (J, kp) and the
// transposed parameters from params; jp is J rounded up to the vector
// width, the extra neurons with weight zero. e0 may be null (the transposed
// dense route, which needs only the transposed parameters).
template <typename T>
void sparse_setup(int64_t J, int64_t kp, int64_t jp, const T* params, T* e0, T* params_t) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    for (int64_t j = 0; e0 && j < J; ++j) {
        const T* pj = params + j * 3 * kp;
        for (int64_t k = 0; k < kp; k += W) {
            const V l = load<V>(pj + k);
            store<V>(e0 + j * kp + k, exp2v<T>(load<V>(pj + 2 * kp + k) + load<V>(pj + kp + k) * l * l));
        }
    }
    // transposed by blocks of W neurons: W read streams, contiguous writes
    for (int64_t j0 = 0; j0 < J; j0 += W) {
        const int64_t nj = J - j0 < W ? J - j0 : W;
        for (int64_t k = 0; k < kp; ++k) {
            T* q = params_t + k * 3 * jp + j0;
            for (int64_t f = 0; f < 3; ++f) {
                const T* src = params + j0 * 3 * kp + f * kp + k;
                for (int64_t i = 0; i < nj; ++i) q[f * jp + i] = src[i * 3 * kp];
            }
        }
    }
    for (int64_t k = 0; k < kp; ++k) {
        T* q = params_t + k * 3 * jp;
        for (int64_t j = J; j < jp; ++j) {
            q[j] = 0;
            q[jp + j] = 0;
            q[2 * jp + j] = Vec<T>::zero_weight;
        }
    }
}

// Marks the zero inputs: zero (B, kp) gets 1 where x is exactly 0, else 0;
// returns how many inputs among the first K columns are 0.
template <typename T>
int64_t sparse_zeros(int64_t B, int64_t K, int64_t kp, const T* x, T* zero) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b) {
        const T* xb = x + b * kp;
        T* zb = zero + b * kp;
        int64_t c = 0;
#pragma omp simd reduction(+ : c)
        for (int64_t k = 0; k < kp; ++k) {
            const bool z = xb[k] == T(0);
            zb[k] = z ? T(1) : T(0);
            c += (z && k < K) ? 1 : 0;
        }
        count += c;
    }
    return count;
}

// The sums of NV neuron vectors from v0 at one sample, over its active
// inputs active[a0, a1): NV accumulators in registers, the parameters of
// each input loaded from three bases with constant offsets.
// With C (the complement route), also the sums of e0_t (kp, jp) over the
// same inputs into ni.
template <typename T, int NV, bool LEAN, bool C>
inline void sparse_accumulate(int64_t jp, const T* xb, const T* params_t, const T* e0_t, const int64_t* active,
                              int64_t a0, int64_t a1, T* si, T* ni, int64_t v0) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    V acc[NV], acc_e0[NV];
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) {
        acc[q] = load<V>(si + v0 + q * W);
        acc_e0[q] = C ? load<V>(ni + v0 + q * W) : V{};
    }
    for (int64_t a = a0; a < a1; ++a) {
        const int64_t k = active[a];
        const V xv = V{} + xb[k];
        const T* pl = params_t + k * 3 * jp + v0;
        const T* pc = pl + jp;
        const T* ps = pc + jp;
#pragma GCC unroll 8
        for (int q = 0; q < NV; ++q) {
            const V d = xv - load<V>(pl + q * W);
            acc[q] += exp2v_route<T, LEAN>(load<V>(ps + q * W) + load<V>(pc + q * W) * d * d);
            if constexpr (C) acc_e0[q] += load<V>(e0_t + k * jp + v0 + q * W);
        }
    }
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) {
        store<V>(si + v0 + q * W, acc[q]);
        if constexpr (C) store<V>(ni + v0 + q * W, acc_e0[q]);
    }
}

// The neuron vectors [0, jp) of one sample: NV = 8, then 4, 2, 1 per pass.
template <typename T, bool LEAN, bool C>
inline void sparse_accumulate_all(int64_t jp, const T* xb, const T* params_t, const T* e0_t,
                                  const int64_t* active, int64_t a0, int64_t a1, T* si, T* ni) {
    constexpr int W = Vec<T>::width;
    for (int64_t v0 = 0; v0 < jp;) {
        const int64_t left = (jp - v0) / W;
        if (left >= 8) {
            sparse_accumulate<T, 8, LEAN, C>(jp, xb, params_t, e0_t, active, a0, a1, si, ni, v0);
            v0 += 8 * W;
        } else if (left >= 4) {
            sparse_accumulate<T, 4, LEAN, C>(jp, xb, params_t, e0_t, active, a0, a1, si, ni, v0);
            v0 += 4 * W;
        } else if (left >= 2) {
            sparse_accumulate<T, 2, LEAN, C>(jp, xb, params_t, e0_t, active, a0, a1, si, ni, v0);
            v0 += 2 * W;
        } else {
            sparse_accumulate<T, 1, LEAN, C>(jp, xb, params_t, e0_t, active, a0, a1, si, ni, v0);
            v0 += W;
        }
    }
}

// The complement route (inference): a sample's zero inputs' part of the
// mixtures is Z = total - N, with total[j] = sum_{k < K} e0[j, k] and N the
// sum of e0 over its nonzero inputs (accumulated beside the exponentials:
// no matrix product over the zero inputs). Z's rounding error is a few ulp
// of total + N, which is at most 2 N + Z; so where N exceeds the mixture
// sum S = Z + P (P: the exponentials) by more than complement_margin, the
// sample's Z is summed directly over its zero inputs instead. On return,
// si holds S.
template <typename T>
void complement_sums(int64_t J, int64_t K, int64_t jp, const T* xb, const T* e0_t, const T* total, T* si,
                     const T* ni) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    int far = 0;
#pragma omp simd reduction(| : far)
    for (int64_t j = 0; j < J; ++j) far |= !(ni[j] <= (total[j] - ni[j] + si[j]) * Vec<T>::complement_margin);
    if (!far) {
#pragma omp simd
        for (int64_t j = 0; j < J; ++j) si[j] += total[j] - ni[j];
        return;
    }
    for (int64_t v = 0; v < jp; v += W) {
        V z = V{};
        for (int64_t k = 0; k < K; ++k)
            if (xb[k] == T(0)) z += load<V>(e0_t + k * jp + v);
        store<V>(si + v, load<V>(si + v) + z);
    }
}

// Forward for samples [b0, b1) from zero_sums (B, J) and the nonzero inputs.
// Tiled: for a block of samples, the inputs go by chunks whose transposed
// parameters stay in cache, each sample's sums carried from chunk to chunk.
//
// With dense_k > 0 (the transposed dense route, inference only) every input
// k < dense_k is taken, zero or not, and zero_sums is null: vectorised over
// neurons, a layer with few inputs wastes no lanes on the padding of its
// input axis, and no horizontal sum is needed per (sample, neuron).
//
// With e0_t (kp, jp) and e0_total (jp) (the complement route, inference
// only; zero_sums null): the zero inputs' part from the nonzero inputs'
// e0, see complement_sums().
template <typename T, bool LEAN>
void sparse_forward_rows(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x, const T* params,
                         const T* params_t, const T* bound, const T* zero_sums, T* out, T* shift_t, int64_t b0,
                         int64_t b1, int64_t dense_k, const T* e0_t, const T* e0_total) {
    FlushSubnormals ftz;
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    constexpr int64_t chunk = 64;  // inputs per chunk: 64 * 3 * jp values
    const int64_t nb = b1 - b0;
    std::vector<int64_t> active(nb * kp), start(nb + 1), cursor(nb);
    std::vector<T> sums(nb * jp, T(0)), l2(jp), sums_e0(e0_t ? nb * jp : 0, T(0));
    start[0] = 0;
    for (int64_t i = 0; i < nb; ++i) {
        const T* xb = x + (b0 + i) * kp;
        int64_t n = start[i];
        if (dense_k > 0) {
            for (int64_t k = 0; k < dense_k; ++k) active[n++] = k;
        } else {
            for (int64_t k = 0; k < kp; ++k) {  // branchless: MNIST's zeros come in no predictable order
                active[n] = k;
                n += xb[k] != T(0);
            }
        }
        start[i + 1] = n;
        cursor[i] = start[i];
    }
    for (int64_t k0 = 0; k0 < kp; k0 += chunk) {
        const int64_t k1 = k0 + chunk;
        for (int64_t i = 0; i < nb; ++i) {
            const T* xb = x + (b0 + i) * kp;
            int64_t a0 = cursor[i], a1 = a0;
            while (a1 < start[i + 1] && active[a1] < k1) ++a1;
            cursor[i] = a1;
            if (a0 == a1) continue;
            T* si = sums.data() + i * jp;
            if (e0_t)
                sparse_accumulate_all<T, LEAN, true>(jp, xb, params_t, e0_t, active.data(), a0, a1, si,
                                                     sums_e0.data() + i * jp);
            else
                sparse_accumulate_all<T, LEAN, false>(jp, xb, params_t, nullptr, active.data(), a0, a1, si,
                                                      nullptr);
        }
    }
    for (int64_t i = 0; i < nb; ++i) {
        const int64_t b = b0 + i;
        const T* xb = x + b * kp;
        T* si = sums.data() + i * jp;
        if (zero_sums) {
            const T* zb = zero_sums + b * J;
            for (int64_t j = 0; j < J; ++j) si[j] += zb[j];
        }
        if (e0_t) complement_sums<T>(J, kp, jp, xb, e0_t, e0_total, si, sums_e0.data() + i * jp);
        T* lj = l2.data();
        if (shift_t)
            log2_array<T>(si, lj, J);
        else  // inference routes (no shifts kept): eight at a time in double
            log2_sums<T>(si, lj, J);
        int tiny = 0;
#pragma omp simd reduction(| : tiny)
        for (int64_t j = 0; j < J; ++j) tiny |= !(si[j] >= Vec<T>::tiny);
        if (tiny) {
            // a sum below 2**-60 of the bound: redo with the exact peak, as the dense kernel
            for (int64_t j = 0; j < J; ++j)
                if (!(si[j] >= Vec<T>::tiny)) lj[j] = exact_log2_sum<T, false>(xb, nullptr, params + j * 3 * kp, kp);
        }
        T* ob = out + b * J;
#pragma omp simd
        for (int64_t j = 0; j < J; ++j) ob[j] = (lj[j] + bound[j]) * T(0.6931471805599453094);
        if (shift_t) {
            for (int64_t j = 0; j < J; ++j) shift_t[j * B + b] = lj[j];
        }
    }
}

// sparse_forward_rows() with the exp2 of its route (no shifts kept: the inference routes')
template <typename T>
inline void sparse_rows(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x, const T* params,
                        const T* params_t, const T* bound, const T* zero_sums, T* out, T* shift_t, int64_t b0,
                        int64_t b1, int64_t dense_k, const T* e0_t, const T* e0_total) {
    if (shift_t)
        sparse_forward_rows<T, false>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift_t, b0, b1,
                                      dense_k, e0_t, e0_total);
    else
        sparse_forward_rows<T, true>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift_t, b0, b1,
                                     dense_k, e0_t, e0_total);
}

template <typename T>
void sparse_forward(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x, const T* params, const T* params_t,
                    const T* bound, const T* zero_sums, T* out, T* shift, int n_threads, int64_t dense_k = 0,
                    const T* e0_t = nullptr, const T* e0_total = nullptr) {
    constexpr int64_t rows = 32;  // samples per tile
    if (n_threads <= 1 || B <= rows) {
        for (int64_t b = 0; b < B; b += rows)
            sparse_rows<T>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift, b,
                           b + rows < B ? b + rows : B, dense_k, e0_t, e0_total);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t b = 0; b < B; b += rows) {
        sparse_rows<T>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift, b,
                       b + rows < B ? b + rows : B, dense_k, e0_t, e0_total);
    }
#else
    sparse_rows<T>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift, 0, B, dense_k, e0_t, e0_total);
#endif
}

// The complement route's parameters: e0_t (kp, jp), e0 transposed (zero
// for the padding neurons), and total (jp), its sums over the inputs.
template <typename T>
void complement_setup(int64_t J, int64_t kp, int64_t jp, const T* e0, T* e0_t, T* total) {
    for (int64_t k = 0; k < kp; ++k)
        for (int64_t j = 0; j < jp; ++j) e0_t[k * jp + j] = j < J ? e0[j * kp + k] : T(0);
    for (int64_t j = 0; j < jp; ++j) {
        double t = 0;  // summed in double: total's rounding is Z's
        for (int64_t k = 0; j < J && k < kp; ++k) t += e0[j * kp + k];
        total[j] = T(t);
    }
}

// factor and offset ((J, B) each) are scratch memory.
template <typename T>
void backward(int64_t B, int64_t J, int64_t kp, const T* x, const T* xm, const T* params, const T* shift,
              const T* grad_out, T* factor, T* offset, T* grad_x, T* grads, int n_threads) {
    std::vector<char> any_far(J);
    backward_factors<T>(B, J, shift, grad_out, factor, offset, any_far.data());
    const int64_t nv = kp / Vec<T>::width;
    auto run = [&](int64_t v0, int64_t v1) {
        if (grad_x && xm)
            backward_columns<T, true, true>(B, J, kp, x, xm, params, factor, offset, any_far.data(), grad_x, grads, v0, v1);
        else if (grad_x)
            backward_columns<T, true, false>(B, J, kp, x, xm, params, factor, offset, any_far.data(), grad_x, grads, v0, v1);
        else if (xm)
            backward_columns<T, false, true>(B, J, kp, x, xm, params, factor, offset, any_far.data(), grad_x, grads, v0, v1);
        else
            backward_columns<T, false, false>(B, J, kp, x, xm, params, factor, offset, any_far.data(), grad_x, grads, v0, v1);
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

// Backward of the sparse route (no gradient of x). sparse_factors() writes
// the factors transposed, factor_bt (B, jp) = grad * 2**-shift (zero for
// the padding neurons), and returns 1 when some mixture is far from its
// bound (the caller then takes the dense backward, whose far-row handling
// this route does not repeat). With zero_grads = (x == 0).T @ factor_bt
// (kp, jp), a GEMM by the caller, the zero inputs' part of
// sum_b R, sum_b R d and sum_b R d**2 is e0 * zero_grads times 1, -loc and
// loc**2 (d = -loc there); sparse_backward() adds the nonzero inputs' part,
// column by column over their nonzero rows, vectorised over neurons, and
// writes the gradients of log_weights, loc and scale as grads (3, J, kp).
template <typename T>
int sparse_factors(int64_t B, int64_t J, int64_t jp, const T* shift_t, const T* grad, T* factor_bt) {
    for (int64_t j = 0; j < J; ++j)
        for (int64_t b = 0; b < B; ++b)
            if (!(shift_t[j * B + b] > T(-60))) return 1;
    for (int64_t b = 0; b < B; ++b) {
        T* fb = factor_bt + b * jp;
        for (int64_t j = 0; j < J; ++j) fb[j] = grad[b * J + j] * std::exp2(-shift_t[j * B + b]);
        for (int64_t j = J; j < jp; ++j) fb[j] = T(0);
    }
    return 0;
}

// Columns [k0, k1) (multiples of W); gradients written (3, J, kp) through a
// buffer of W columns, so that each neuron's row gets W contiguous values.
template <typename T>
void sparse_backward_columns(int64_t J, int64_t jp, const T* x, int64_t kp, const T* params_t,
                             const T* factor_bt, const T* zero_grads, const int64_t* col_start,
                             const int64_t* col_rows, T* grads, int64_t k0, int64_t k1) {
    FlushSubnormals ftz;
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    constexpr int block = 4;  // neuron vectors per pass: 12 accumulators, 12 parameters
    const T two_ln2 = T(2.0 * 0.6931471805599453094);
    std::vector<T> buffer(W * 3 * jp);
    for (int64_t k = k0; k < k1; ++k) {
        const T* p = params_t + k * 3 * jp;
        T* g = buffer.data() + (k % W) * 3 * jp;
        for (int64_t v0 = 0; v0 < jp; v0 += block * W) {
            const int nv = (jp - v0) / W < block ? int((jp - v0) / W) : block;
            V l[block], c[block], s[block], a0[block], a1[block], a2[block];
            for (int q = 0; q < nv; ++q) {
                l[q] = load<V>(p + v0 + q * W);
                c[q] = load<V>(p + jp + v0 + q * W);
                s[q] = load<V>(p + 2 * jp + v0 + q * W);
                a0[q] = a1[q] = a2[q] = V{};
            }
            if (nv == block) {
                for (int64_t a = col_start[k]; a < col_start[k + 1]; ++a) {
                    const int64_t b = col_rows[a];
                    const V xv = V{} + x[b * kp + k];
                    const T* f = factor_bt + b * jp + v0;
#pragma GCC unroll 4
                    for (int q = 0; q < block; ++q) {
                        const V d = xv - l[q];
                        const V r = exp2v<T>(s[q] + c[q] * d * d) * load<V>(f + q * W);
                        const V rd = r * d;
                        a0[q] += r;
                        a1[q] += rd;
                        a2[q] += rd * d;
                    }
                }
            } else {
                for (int64_t a = col_start[k]; a < col_start[k + 1]; ++a) {
                    const int64_t b = col_rows[a];
                    const V xv = V{} + x[b * kp + k];
                    const T* f = factor_bt + b * jp + v0;
                    for (int q = 0; q < nv; ++q) {
                        const V d = xv - l[q];
                        const V r = exp2v<T>(s[q] + c[q] * d * d) * load<V>(f + q * W);
                        const V rd = r * d;
                        a0[q] += r;
                        a1[q] += rd;
                        a2[q] += rd * d;
                    }
                }
            }
            for (int q = 0; q < nv; ++q) {
                // the zero inputs: R = e0 * factor, d = -loc
                const V eg = exp2v<T>(s[q] + c[q] * l[q] * l[q]) * load<V>(zero_grads + k * jp + v0 + q * W);
                const V s0 = a0[q] + eg;
                const V s1 = a1[q] - l[q] * eg;
                const V s2 = a2[q] + l[q] * l[q] * eg;
                const V inv_var = c[q] * -two_ln2;  // 1 / scale**2
                V inv_scale;
                for (int i = 0; i < W; ++i) inv_scale[i] = std::sqrt(inv_var[i]);
                store<V>(g + v0 + q * W, s0);
                store<V>(g + jp + v0 + q * W, s1 * inv_var);
                store<V>(g + 2 * jp + v0 + q * W, (s2 * inv_var - s0) * inv_scale);
            }
        }
        if (k % W == W - 1) {
            const int64_t kb = k - (W - 1);
            for (int64_t f = 0; f < 3; ++f)
                for (int64_t j = 0; j < J; ++j) {
                    T* dst = grads + (f * J + j) * kp + kb;
                    const T* src = buffer.data() + f * jp + j;
                    for (int i = 0; i < W; ++i) dst[i] = src[i * 3 * jp];
                }
        }
    }
}

template <typename T>
void sparse_backward(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x, const T* params_t,
                     const T* factor_bt, const T* zero_grads, T* grads, int n_threads) {
    // nonzero rows of each input column
    std::vector<int64_t> col_start(kp + 1, 0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < kp; ++k) col_start[k + 1] += x[b * kp + k] != T(0);
    for (int64_t k = 0; k < kp; ++k) col_start[k + 1] += col_start[k];
    std::vector<int64_t> col_rows(col_start[kp] > 0 ? col_start[kp] : 1), fill(col_start.begin(), col_start.end() - 1);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < kp; ++k)
            if (x[b * kp + k] != T(0)) col_rows[fill[k]++] = b;
    auto run = [&](int64_t k0, int64_t k1) {
        sparse_backward_columns<T>(J, jp, x, kp, params_t, factor_bt, zero_grads, col_start.data(),
                                   col_rows.data(), grads, k0, k1);
    };
    if (n_threads <= 1 || kp < 2) {
        run(0, kp);
        return;
    }
#ifdef _OPENMP
    constexpr int64_t columns = Vec<T>::width;  // kp is a multiple
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t k = 0; k < kp; k += columns) run(k, k + columns);
#else
    run(0, kp);
#endif
}


// The layer's parameter transforms, for float: scale = min_scale +
// softplus(raw) (torch's threshold 20: raw itself above it) and log_w =
// log_softmax(logits) per row (-inf logits, dropped components, give -inf),
// with what their backward needs: sig = d softplus / d raw and w =
// softmax(logits). Vectorised on AVX-512; one pass over (J, K).
inline float log1p_scalar(float e) { return std::log1p(e); }


void transform_f32(int64_t J, int64_t K, const float* raw, float min_scale, const float* logits, float* scale,
                   float* log_w, float* sig, float* w) {
    typedef Vec<float>::type V;
    constexpr int W = Vec<float>::width;
    const float log2e = 1.4426950408889634f, ln2 = 0.6931471805599453f;
    for (int64_t j = 0; j < J; ++j) {
        const float* rj = raw + j * K;
        const float* lj = logits + j * K;
        float* sj = scale + j * K;
        float* gj = sig + j * K;
        float* oj = log_w + j * K;
        float* wj = w + j * K;
        int64_t k = 0;
#if defined(__AVX512F__)
        for (; k + W <= K; k += W) {
            const V r = load<V>(rj + k);
            const auto big = r > 20.0f;
            const V e = exp2v<float>((big ? V{} : r) * log2e);  // exp(r), r <= 20
            const V u = e + 1.0f;
            // log1p(e) = log(u) e / (u - 1) (exact where u rounds to 1: e)
            const V lp = u == 1.0f ? e : log2v(u) * ln2 * e / (u - 1.0f);
            store<V>(sj + k, (big ? r : lp) + min_scale);
            store<V>(gj + k, big ? V{} + 1.0f : e / u);
        }
#endif
        for (; k < K; ++k) {
            const float r = rj[k];
            if (r > 20.0f) {
                sj[k] = r + min_scale;
                gj[k] = 1.0f;
            } else {
                const float e = std::exp(r);
                sj[k] = log1p_scalar(e) + min_scale;
                gj[k] = e / (e + 1.0f);
            }
        }
        float peak = -INFINITY;
        for (k = 0; k < K; ++k) peak = lj[k] > peak ? lj[k] : peak;
        // every row keeps a finite logit (a neuron never loses all its components)
        float total = 0.0f;
        k = 0;
#if defined(__AVX512F__)
        V acc = V{};
        for (; k + W <= K; k += W) {
            V t = (load<V>(lj + k) - peak) * log2e;
            t = t > Vec<float>::zero_weight ? t : V{} + Vec<float>::zero_weight;  // -inf: weight 0
            acc += exp2v<float>(t);
        }
        total = hsum<float>(acc);
#endif
        for (; k < K; ++k) total += std::exp(lj[k] - peak);
        const float lse = peak + std::log(total);
        k = 0;
#if defined(__AVX512F__)
        for (; k + W <= K; k += W) {
            const V lw = load<V>(lj + k) - lse;
            store<V>(oj + k, lw);
            const V t = lw * log2e;
            store<V>(wj + k, exp2v<float>(t > Vec<float>::zero_weight ? t : V{} + Vec<float>::zero_weight));
        }
#endif
        for (; k < K; ++k) {
            oj[k] = lj[k] - lse;
            wj[k] = std::exp(oj[k]);
        }
    }
}

// Product neurons (UGMMProductLayer; inference only): the weighted sum
//   out[b, j] = cst[j] + sum_k hw[j, k] * clip(z)**2,  z = (x[b, k] - loc[j, k]) * inv[j, k],
// with hw = -w / 2, inv = 1 / scale and cst[j] = -sum_k w[j, k] (log
// scale[j, k] + log(2 pi) / 2), z clipped to [-z_lim, z_lim] as in the
// reference (NaN stays NaN). No exponential: a few multiply-adds per
// component. params (J, 3, kp): loc, inv, hw, the padding with hw = 0.
template <typename T>
inline typename Vec<T>::type product_term(typename Vec<T>::type x, const T* pj, int64_t kp, int64_t k,
                                          typename Vec<T>::type lim) {
    typedef typename Vec<T>::type V;
    V z = (x - load<V>(pj + k)) * load<V>(pj + kp + k);
    z = z > lim ? lim : z;
    z = z < -lim ? -lim : z;
    return load<V>(pj + 2 * kp + k) * (z * z);
}

// Rows [b0, b1), every neuron; four rows share each parameter load.
template <typename T>
void product_forward_rows(int64_t J, int64_t kp, const T* x, const T* params, const T* cst, T z_lim, T* out,
                          int64_t b0, int64_t b1) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    const V lim = V{} + z_lim;
    int64_t b = b0;
    for (; b + 4 <= b1; b += 4) {
        const T* x0 = x + b * kp;
        for (int64_t j = 0; j < J; ++j) {
            const T* pj = params + j * 3 * kp;
            V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
            for (int64_t k = 0; k < kp; k += W) {
                a0 += product_term<T>(load<V>(x0 + k), pj, kp, k, lim);
                a1 += product_term<T>(load<V>(x0 + kp + k), pj, kp, k, lim);
                a2 += product_term<T>(load<V>(x0 + 2 * kp + k), pj, kp, k, lim);
                a3 += product_term<T>(load<V>(x0 + 3 * kp + k), pj, kp, k, lim);
            }
            out[b * J + j] = cst[j] + hsum<T>(a0);
            out[(b + 1) * J + j] = cst[j] + hsum<T>(a1);
            out[(b + 2) * J + j] = cst[j] + hsum<T>(a2);
            out[(b + 3) * J + j] = cst[j] + hsum<T>(a3);
        }
    }
    for (; b < b1; ++b) {
        for (int64_t j = 0; j < J; ++j) {
            const T* pj = params + j * 3 * kp;
            V a = V{};
            for (int64_t k = 0; k < kp; k += W) a += product_term<T>(load<V>(x + b * kp + k), pj, kp, k, lim);
            out[b * J + j] = cst[j] + hsum<T>(a);
        }
    }
}

template <typename T>
void product_forward(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* cst, double z_lim,
                     T* out, int n_threads) {
    constexpr int64_t rows = 64;
    if (n_threads <= 1 || B <= rows) {
        product_forward_rows<T>(J, kp, x, params, cst, T(z_lim), out, 0, B);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t b = 0; b < B; b += rows) {
        product_forward_rows<T>(J, kp, x, params, cst, T(z_lim), out, b, b + rows < B ? b + rows : B);
    }
#else
    product_forward_rows<T>(J, kp, x, params, cst, T(z_lim), out, 0, B);
#endif
}

// Backward of the product neurons' sum of squares q[b, j] = sum_k hw[j, k] *
// clip(z)**2 (product_forward without cst) for the incoming gradient g (B, J):
//   grad_x[b, k] = sum_j g[b, j] * 2 hw z inv   (z not clipped; 0 where clipped)
// and per component, accumulated over the rows into sums (J, 3, kp):
//   sums[j, 0, k] = sum_b g z,  sums[j, 1, k] = sum_b g z**2   (z not clipped)
//   sums[j, 2, k] = sum_b g clip(z)**2
// from which the caller forms the gradients of loc (-2 hw inv sums0), scale
// (-2 hw inv sums1) and hw (sums2). One thread: the layer is small (an
// output layer over the last hidden one).
template <typename T>
void product_backward(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* grad_out,
                      double z_lim, T* grad_x, T* sums) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    const V lim = V{} + T(z_lim);
    const V zero = V{};
    for (int64_t i = 0; i < J * 3 * kp; ++i) sums[i] = T(0);
    for (int64_t b = 0; b < B; ++b) {
        const T* xb = x + b * kp;
        T* gxb = grad_x + b * kp;
        for (int64_t k = 0; k < kp; ++k) gxb[k] = T(0);
        for (int64_t j = 0; j < J; ++j) {
            const T* pj = params + j * 3 * kp;
            T* sj = sums + j * 3 * kp;
            const V g = V{} + grad_out[b * J + j];
            for (int64_t k = 0; k < kp; k += W) {
                V d = load<V>(xb + k) - load<V>(pj + k);
                V inv = load<V>(pj + kp + k);
                V z = d * inv;
                V zc = z > lim ? lim : z;
                zc = zc < -lim ? -lim : zc;
                V zu = z == zc ? zc : zero;
                V gz = g * zu;
                V hw = load<V>(pj + 2 * kp + k);
                store<V>(gxb + k, load<V>(gxb + k) + (hw + hw) * gz * inv);
                store<V>(sj + k, load<V>(sj + k) + gz);
                store<V>(sj + kp + k, load<V>(sj + kp + k) + gz * zu);
                store<V>(sj + 2 * kp + k, load<V>(sj + 2 * kp + k) + g * (zc * zc));
            }
        }
    }
}

// Backward of transform_f32: from the gradients of log_w and scale (rows of
// length kp in grads, laid out (3, J, kp)) to those of logits and raw.
void untransform_f32(int64_t J, int64_t K, int64_t kp, const float* grads, const float* sig, const float* w,
                     float* grad_raw, float* grad_logits) {
    for (int64_t j = 0; j < J; ++j) {
        const float* g_lw = grads + j * kp;
        const float* g_scale = grads + 2 * J * kp + j * kp;
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t k = 0; k < K; ++k) total += g_lw[k];
        const float* wj = w + j * K;
        const float* gj = sig + j * K;
        float* gl = grad_logits + j * K;
        float* gr = grad_raw + j * K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) {
            gl[k] = g_lw[k] - wj[k] * total;
            gr[k] = g_scale[k] * gj[k];
        }
    }
}

}  // namespace

extern "C" {

void ugmm_fused_transform_f32(int64_t J, int64_t K, const float* raw, double min_scale, const float* logits,
                              float* scale, float* log_w, float* sig, float* w) {
    transform_f32(J, K, raw, float(min_scale), logits, scale, log_w, sig, w);
}

void ugmm_fused_untransform_f32(int64_t J, int64_t K, int64_t kp, const float* grads, const float* sig,
                                const float* w, float* grad_raw, float* grad_logits) {
    untransform_f32(J, K, kp, grads, sig, w, grad_raw, grad_logits);
}

int ugmm_fused_width_f32() { return Vec<float>::width; }
int ugmm_fused_width_f64() { return Vec<double>::width; }

#define UGMM_EXPORT(T, SUFFIX)                                                                                 \
    int64_t ugmm_fused_prepare_##SUFFIX(int64_t B, int64_t J, int64_t K, int64_t kp, const T* x, const T* loc, \
                                    int64_t loc_sj, int64_t loc_sk, const T* scale, const T* log_weights,     \
                                    T* params, T* bound, double z_lim) {                                      \
        return prepare<T>(B, J, K, kp, x, loc, loc_sj, loc_sk, scale, log_weights, params, bound, z_lim);     \
    }                                                                                                          \
    int64_t ugmm_fused_scan_inputs_##SUFFIX(int64_t B, int64_t K, int64_t kp, const T* x, T* stats) {           \
        return scan_inputs<T>(B, K, kp, x, stats);                                                             \
    }                                                                                                          \
    int64_t ugmm_fused_pad_and_scan_inputs_##SUFFIX(int64_t B, int64_t K, int64_t kp, const T* x, int64_t ldx,  \
                                                    T* x_p, T* stats) {                                        \
        return pad_and_scan_inputs<T>(B, K, kp, x, ldx, x_p, stats);                                           \
    }                                                                                                          \
    void ugmm_fused_prepare_params_##SUFFIX(int64_t J, int64_t K, int64_t kp, const T* loc, int64_t loc_sj,     \
                                            int64_t loc_sk, const T* scale, const T* log_weights, T* params,   \
                                            T* bound, T* stats) {                                              \
        prepare_params<T>(J, K, kp, loc, loc_sj, loc_sk, scale, log_weights, params, bound, stats);            \
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

#define UGMM_EXPORT_SPARSE(T, SUFFIX)                                                                          \
    int64_t ugmm_fused_sparse_zeros_##SUFFIX(int64_t B, int64_t K, int64_t kp, const T* x, T* zero) {             \
        return sparse_zeros<T>(B, K, kp, x, zero);                                                             \
    }                                                                                                          \
    void ugmm_fused_sparse_setup_##SUFFIX(int64_t J, int64_t kp, int64_t jp, const T* params, T* e0,            \
                                          T* params_t) {                                                       \
        sparse_setup<T>(J, kp, jp, params, e0, params_t);                                                      \
    }                                                                                                          \
    void ugmm_fused_sparse_forward_##SUFFIX(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x,           \
                                            const T* params, const T* params_t, const T* bound,                \
                                            const T* zero_sums, T* out, T* shift, int n_threads) {             \
        sparse_forward<T>(B, J, kp, jp, x, params, params_t, bound, zero_sums, out, shift, n_threads);         \
    }                                                                                                          \
    void ugmm_fused_transposed_forward_##SUFFIX(int64_t B, int64_t J, int64_t K, int64_t kp, int64_t jp,        \
                                                const T* x, const T* params, const T* params_t,                \
                                                const T* bound, T* out, T* shift, int n_threads) {             \
        sparse_forward<T>(B, J, kp, jp, x, params, params_t, bound, nullptr, out, shift, n_threads, K);        \
    }                                                                                                          \
    void ugmm_fused_complement_setup_##SUFFIX(int64_t J, int64_t kp, int64_t jp, const T* e0, T* e0_t,           \
                                              T* total) {                                                      \
        complement_setup<T>(J, kp, jp, e0, e0_t, total);                                                       \
    }                                                                                                          \
    void ugmm_fused_complement_forward_##SUFFIX(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x,       \
                                                const T* params, const T* params_t, const T* e0_t,             \
                                                const T* total, const T* bound, T* out, int n_threads) {       \
        sparse_forward<T>(B, J, kp, jp, x, params, params_t, bound, nullptr, out, nullptr, n_threads, 0, e0_t,  \
                          total);                                                                              \
    }                                                                                                          \
    void ugmm_fused_product_forward_##SUFFIX(int64_t B, int64_t J, int64_t kp, const T* x, const T* params,     \
                                             const T* cst, double z_lim, T* out, int n_threads) {              \
        product_forward<T>(B, J, kp, x, params, cst, z_lim, out, n_threads);                                   \
    }                                                                                                          \
    void ugmm_fused_product_backward_##SUFFIX(int64_t B, int64_t J, int64_t kp, const T* x, const T* params,    \
                                              const T* grad_out, double z_lim, T* grad_x, T* sums) {            \
        product_backward<T>(B, J, kp, x, params, grad_out, z_lim, grad_x, sums);                               \
    }

#define UGMM_EXPORT_SPARSE_BACKWARD(T, SUFFIX)                                                                 \
    int ugmm_fused_sparse_factors_##SUFFIX(int64_t B, int64_t J, int64_t jp, const T* shift, const T* grad,      \
                                           T* factor_bt) {                                                     \
        return sparse_factors<T>(B, J, jp, shift, grad, factor_bt);                                            \
    }                                                                                                          \
    void ugmm_fused_sparse_backward_##SUFFIX(int64_t B, int64_t J, int64_t kp, int64_t jp, const T* x,          \
                                             const T* params_t, const T* factor_bt, const T* zero_grads,       \
                                             T* grads, int n_threads) {                                        \
        sparse_backward<T>(B, J, kp, jp, x, params_t, factor_bt, zero_grads, grads, n_threads);                \
    }

UGMM_EXPORT_SPARSE_BACKWARD(float, f32)
UGMM_EXPORT_SPARSE_BACKWARD(double, f64)
UGMM_EXPORT_SPARSE(float, f32)
UGMM_EXPORT_SPARSE(double, f64)
UGMM_EXPORT(float, f32)
UGMM_EXPORT(double, f64)

}  // extern "C"
