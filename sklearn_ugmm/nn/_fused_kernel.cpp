// Fused CPU kernel of the uGMM layer log-density (forward and backward).
//
// Built on first use by sklearn_ugmm/nn/_fused.py and called through ctypes;
// it needs no PyTorch headers. Never materialises a (batch, out, in) block:
// the forward pass keeps one running sum per (sample, neuron) in registers,
// the backward pass recomputes each responsibility and accumulates the
// gradients in registers.
//
// Layout (all row-major, the input axis padded to a multiple of the vector
// width W with components of log-weight -inf):
//   x       (B, Kp)     inputs
//   params  (J, 3, Kp)  per neuron: loc, curv, shifted const, where the log2
//                       density of component k of neuron j at sample b is
//                       const[j, k] + curv[j, k] * (x[b, k] - loc[j, k])**2,
//                       curv = -log2(e) / (2 scale**2), and const is shifted
//                       by bound[j] = max_k const[j, k] so that every
//                       component is <= 0.
//   out     (B, J)      natural-log densities
// Backward inputs, transposed for contiguous reads per neuron:
//   shift_t (J, B)      out * log2(e) - bound, per (neuron, sample)
//   grad_t  (J, B)      incoming gradient
// Outputs: grad_x (B, Kp) (optional) and sums (J, 3, Kp):
//   sum_b R, sum_b R d, sum_b R d**2 with R the responsibility times the
//   incoming gradient and d = x - loc.

#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
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
    static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2**52
    static constexpr int64_t bias = 1023;
    static constexpr int mantissa = 52;
    static constexpr double tiny = 8.673617379884035e-19;  // 2**-60
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

// 2**t for t <= 0 (arguments below floor_bits give exactly 0, -inf included).
// Round-to-nearest splits t = n + f with |f| <= 1/2; 2**f = exp(f ln 2) by
// its Taylor polynomial (degree 6 in float: 1.2e-7 relative error; degree
// 12 in double: 6e-17).
template <typename T>
inline typename Vec<T>::type exp2v(typename Vec<T>::type t) {
    typedef typename Vec<T>::type V;
    typedef typename Vec<T>::itype I;
    const V lo = V{} + Vec<T>::floor_bits;
    const I under = t < lo;
    t = under ? lo : t;
    const V n = (t + Vec<T>::round_magic) - Vec<T>::round_magic;
    const V y = (t - n) * T(0.6931471805599453094);
    V p;
    if (sizeof(T) == 4) {
        p = V{} + T(1.0 / 720);
        p = p * y + T(1.0 / 120);
        p = p * y + T(1.0 / 24);
        p = p * y + T(1.0 / 6);
        p = p * y + T(0.5);
        p = p * y + T(1.0);
        p = p * y + T(1.0);
    } else {
        p = V{} + T(1.0 / 479001600);
        p = p * y + T(1.0 / 39916800);
        p = p * y + T(1.0 / 3628800);
        p = p * y + T(1.0 / 362880);
        p = p * y + T(1.0 / 40320);
        p = p * y + T(1.0 / 5040);
        p = p * y + T(1.0 / 720);
        p = p * y + T(1.0 / 120);
        p = p * y + T(1.0 / 24);
        p = p * y + T(1.0 / 6);
        p = p * y + T(0.5);
        p = p * y + T(1.0);
        p = p * y + T(1.0);
    }
    const I e = (__builtin_convertvector(n, I) + Vec<T>::bias) << Vec<T>::mantissa;
    V two_n;
    std::memcpy(&two_n, &e, sizeof(V));
    const V r = p * two_n;
    return under ? V{} : r;
}

template <typename T>
inline T hsum(typename Vec<T>::type v) {
    T s = 0;
    for (int i = 0; i < Vec<T>::width; ++i) s += v[i];
    return s;
}

template <typename T>
inline T hmax(typename Vec<T>::type v) {
    T m = v[0];
    for (int i = 1; i < Vec<T>::width; ++i) m = v[i] > m ? v[i] : m;
    return m;
}

// log2 of the mixture of neuron j at one sample, relative to bound[j],
// with an exact maximum: used when the bounded sum underflows.
template <typename T>
T exact_log2_sum(const T* xb, const T* pj, int64_t kp) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    const T* loc = pj;
    const T* curv = pj + kp;
    const T* cst = pj + 2 * kp;
    V mx = V{} - INFINITY;
    for (int64_t k = 0; k < kp; k += W) {
        const V d = load<V>(xb + k) - load<V>(loc + k);
        const V t = load<V>(cst + k) + load<V>(curv + k) * d * d;
        mx = t > mx ? t : mx;
    }
    const T peak = hmax<T>(mx);
    V acc = V{};
    for (int64_t k = 0; k < kp; k += W) {
        const V d = load<V>(xb + k) - load<V>(loc + k);
        V t = load<V>(cst + k) + load<V>(curv + k) * d * d - peak;
        t = t < T(0) ? t : V{};
        acc += exp2v<T>(t);
    }
    return std::log2(hsum<T>(acc)) + peak;
}

template <typename T>
inline T finish(T s, T bound, const T* xb, const T* pj, int64_t kp) {
    const T l2 = s >= Vec<T>::tiny ? std::log2(s) : exact_log2_sum<T>(xb, pj, kp);
    return (l2 + bound) * T(0.6931471805599453094);
}

// Forward for neurons [j0, j1), every sample; four samples share each
// parameter load.
template <typename T>
void forward_neurons(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* bound,
                     T* out, int64_t j0, int64_t j1) {
    typedef typename Vec<T>::type V;
    constexpr int W = Vec<T>::width;
    for (int64_t j = j0; j < j1; ++j) {
        const T* pj = params + j * 3 * kp;
        const T* loc = pj;
        const T* curv = pj + kp;
        const T* cst = pj + 2 * kp;
        int64_t b = 0;
        for (; b + 4 <= B; b += 4) {
            const T* x0 = x + b * kp;
            const T* x1 = x0 + kp;
            const T* x2 = x1 + kp;
            const T* x3 = x2 + kp;
            V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
            for (int64_t k = 0; k < kp; k += W) {
                const V l = load<V>(loc + k);
                const V c = load<V>(curv + k);
                const V s = load<V>(cst + k);
                V d;
                d = load<V>(x0 + k) - l;
                a0 += exp2v<T>(s + c * d * d);
                d = load<V>(x1 + k) - l;
                a1 += exp2v<T>(s + c * d * d);
                d = load<V>(x2 + k) - l;
                a2 += exp2v<T>(s + c * d * d);
                d = load<V>(x3 + k) - l;
                a3 += exp2v<T>(s + c * d * d);
            }
            out[(b + 0) * J + j] = finish<T>(hsum<T>(a0), bound[j], x0, pj, kp);
            out[(b + 1) * J + j] = finish<T>(hsum<T>(a1), bound[j], x1, pj, kp);
            out[(b + 2) * J + j] = finish<T>(hsum<T>(a2), bound[j], x2, pj, kp);
            out[(b + 3) * J + j] = finish<T>(hsum<T>(a3), bound[j], x3, pj, kp);
        }
        for (; b < B; ++b) {
            const T* xb = x + b * kp;
            V a = V{};
            for (int64_t k = 0; k < kp; k += W) {
                const V d = load<V>(xb + k) - load<V>(loc + k);
                a += exp2v<T>(load<V>(cst + k) + load<V>(curv + k) * d * d);
            }
            out[b * J + j] = finish<T>(hsum<T>(a), bound[j], xb, pj, kp);
        }
    }
}

// Backward for the input columns [v0 * W, v1 * W), every neuron and sample:
// threads own disjoint columns of grad_x and of the sums, so nothing is
// reduced across threads.
template <typename T, bool NEED_X>
void backward_columns(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* shift_t,
                      const T* grad_t, T* grad_x, T* sums, int64_t v0, int64_t v1) {
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
                T* sj = sums + j * 3 * kp;
                V s0 = V{}, s1 = V{}, s2 = V{};
                const T* shift = shift_t + j * B;
                const T* grad = grad_t + j * B;
                for (int64_t b = b0; b < b1; ++b) {
                    const T g = grad[b];
                    if (g == T(0)) continue;
                    const V d = load<V>(x + b * kp + k) - l;
                    V t = (s - shift[b]) + c * d * d;
                    t = t < T(0) ? t : V{};  // rounding at huge magnitudes must not give R > 1
                    const V r = exp2v<T>(t) * g;
                    const V rd = r * d;
                    s0 += r;
                    s1 += rd;
                    s2 += rd * d;
                    if (NEED_X) {
                        T* gx = grad_x + b * kp + k;
                        store<V>(gx, load<V>(gx) + rd * neg_inv_var);
                    }
                }
                if (b0 == 0) {
                    store<V>(sj + k, s0);
                    store<V>(sj + kp + k, s1);
                    store<V>(sj + 2 * kp + k, s2);
                } else {
                    store<V>(sj + k, load<V>(sj + k) + s0);
                    store<V>(sj + kp + k, load<V>(sj + kp + k) + s1);
                    store<V>(sj + 2 * kp + k, load<V>(sj + 2 * kp + k) + s2);
                }
            }
        }
    }
}

template <typename T>
void forward(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* bound, T* out,
             int n_threads) {
    if (n_threads <= 1 || J < 2) {
        forward_neurons<T>(B, J, kp, x, params, bound, out, 0, J);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t n = omp_get_num_threads(), i = omp_get_thread_num();
        forward_neurons<T>(B, J, kp, x, params, bound, out, J * i / n, J * (i + 1) / n);
    }
#else
    forward_neurons<T>(B, J, kp, x, params, bound, out, 0, J);
#endif
}

template <typename T>
void backward(int64_t B, int64_t J, int64_t kp, const T* x, const T* params, const T* shift_t,
              const T* grad_t, T* grad_x, T* sums, int n_threads) {
    const int64_t nv = kp / Vec<T>::width;
    auto run = [&](int64_t v0, int64_t v1) {
        if (grad_x)
            backward_columns<T, true>(B, J, kp, x, params, shift_t, grad_t, grad_x, sums, v0, v1);
        else
            backward_columns<T, false>(B, J, kp, x, params, shift_t, grad_t, grad_x, sums, v0, v1);
    };
    if (n_threads <= 1 || nv < 2) {
        run(0, nv);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t n = omp_get_num_threads(), i = omp_get_thread_num();
        run(nv * i / n, nv * (i + 1) / n);
    }
#else
    run(0, nv);
#endif
}

}  // namespace

extern "C" {

int ugmm_fused_width_f32() { return Vec<float>::width; }
int ugmm_fused_width_f64() { return Vec<double>::width; }

void ugmm_fused_forward_f32(int64_t B, int64_t J, int64_t kp, const float* x, const float* params,
                            const float* bound, float* out, int n_threads) {
    forward<float>(B, J, kp, x, params, bound, out, n_threads);
}

void ugmm_fused_forward_f64(int64_t B, int64_t J, int64_t kp, const double* x, const double* params,
                            const double* bound, double* out, int n_threads) {
    forward<double>(B, J, kp, x, params, bound, out, n_threads);
}

void ugmm_fused_backward_f32(int64_t B, int64_t J, int64_t kp, const float* x, const float* params,
                             const float* shift_t, const float* grad_t, float* grad_x, float* sums,
                             int n_threads) {
    backward<float>(B, J, kp, x, params, shift_t, grad_t, grad_x, sums, n_threads);
}

void ugmm_fused_backward_f64(int64_t B, int64_t J, int64_t kp, const double* x, const double* params,
                             const double* shift_t, const double* grad_t, double* grad_x, double* sums,
                             int n_threads) {
    backward<double>(B, J, kp, x, params, shift_t, grad_t, grad_x, sums, n_threads);
}

}  // extern "C"
