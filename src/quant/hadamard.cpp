// Hadamard matrices (Sylvester ⊗ Paley I/II) and the fast transform; see hadamard.h.
#include "quant/hadamard.h"

#include <bit>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/threads.h"

namespace sq {

namespace {

bool is_prime(int q) {
    if (q < 2) return false;
    for (int d = 2; d * d <= q; ++d)
        if (q % d == 0) return false;
    return true;
}

enum class Paley { none, one, two };

// Which construction builds the ±1 factor of order m (m > 1), preferring Paley I.
Paley paley_kind(int m, int* q) {
    if (m % 4 != 0) return Paley::none;
    if (is_prime(m - 1) && (m - 1) % 4 == 3) {
        *q = m - 1;
        return Paley::one;
    }
    if (is_prime(m / 2 - 1) && (m / 2 - 1) % 4 == 1) {
        *q = m / 2 - 1;
        return Paley::two;
    }
    return Paley::none;
}

// Legendre symbol table chi[a] for a in [0, q): 0, +1 (nonzero square), -1.
std::vector<int> legendre_table(int q) {
    std::vector<int> chi(q, -1);
    chi[0] = 0;
    for (int64_t x = 1; x < q; ++x) chi[(x * x) % q] = 1;
    return chi;
}

int64_t pow2_part(int64_t n) { return n & -n; }

void check_supported(int n) {
    SQ_CHECK(hadamard_supported(n), "hadamard: no Hadamard matrix of order ", n, " (", hadamard_describe(n),
             "); supported orders are m·2^e with m = 1 or a Paley I/II order ≤ ", kHadamardMaxSmallOrder);
}

// In-place unnormalized Walsh-Hadamard transform of one length-p segment (p a power of two).
void wht_inplace(float* v, int64_t p) {
    for (int64_t h = 1; h < p; h <<= 1)
        for (int64_t i = 0; i < p; i += 2 * h)
            for (int64_t j = i; j < i + h; ++j) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

// Shared body of the forward (x·H) and inverse (x·Hᵀ) transforms.
void transform_impl(float* x, int64_t rows, int n, const float* signs, bool inverse) {
    check_supported(n);
    const int m = hadamard_small_order(n);
    const int64_t p = n / m;
    std::vector<float> hm;  // H_m as float, [m, m]
    if (m > 1) {
        const std::vector<int8_t> h8 = hadamard_small_matrix(m);
        hm.assign(h8.begin(), h8.end());
    }
    const float norm = (float)(1.0 / std::sqrt((double)n));
    parallel_for(rows, [&](int64_t r) {
        float* v = x + r * n;
        if (signs && !inverse)
            for (int64_t j = 0; j < n; ++j) v[j] *= signs[j];
        for (int a = 0; a < m; ++a) wht_inplace(v + a * p, p);
        if (m > 1) {
            // y[c, :] = Σ_a H_m[a, c] · v[a, :]  (forward);  Σ_a H_m[c, a] · v[a, :]  (inverse)
            std::vector<float> y((size_t)n, 0.0f);
            for (int c = 0; c < m; ++c) {
                float* yc = y.data() + (int64_t)c * p;
                for (int a = 0; a < m; ++a) {
                    const float h = inverse ? hm[(size_t)c * m + a] : hm[(size_t)a * m + c];
                    const float* va = v + (int64_t)a * p;
                    if (h > 0)
                        for (int64_t d = 0; d < p; ++d) yc[d] += va[d];
                    else
                        for (int64_t d = 0; d < p; ++d) yc[d] -= va[d];
                }
            }
            for (int64_t j = 0; j < n; ++j) v[j] = y[j] * norm;
        } else {
            for (int64_t j = 0; j < n; ++j) v[j] *= norm;
        }
        if (signs && inverse)
            for (int64_t j = 0; j < n; ++j) v[j] *= signs[j];
    });
}

}  // namespace

int hadamard_small_order(int n) {
    if (n < 1) return 0;
    const int64_t two = pow2_part(n);
    const int64_t odd = n / two;
    if (odd == 1) return 1;
    for (int64_t m = odd; m <= kHadamardMaxSmallOrder && n % m == 0; m *= 2) {
        int q;
        if (paley_kind((int)m, &q) != Paley::none) return (int)m;
    }
    return 0;
}

bool hadamard_supported(int n) { return hadamard_small_order(n) > 0; }

std::string hadamard_describe(int n) {
    if (n < 1) return str(n, " is not a positive order");
    const int64_t two = pow2_part(n);
    const int64_t odd = n / two;
    const int e = std::countr_zero((uint64_t)two);
    const int m = hadamard_small_order(n);
    if (m == 1) return str(n, " = 2^", e, " (Sylvester)");
    if (m > 1) {
        int q = 0;
        const Paley k = paley_kind(m, &q);
        return str(n, " = ", m, " (Paley ", k == Paley::one ? "I" : "II", ", q=", q, ") x 2^",
                   std::countr_zero((uint64_t)(n / m)));
    }
    std::string tried;
    for (int64_t mm = odd; mm <= kHadamardMaxSmallOrder && n % mm == 0; mm *= 2)
        tried += str(tried.empty() ? "" : ", ", mm);
    return str(n, " = ", odd, " x 2^", e, ": no Paley factor among ",
               tried.empty() ? std::string("(none ≤ cap)") : tried);
}

std::vector<int8_t> hadamard_small_matrix(int m) {
    if (m == 1) return {1};
    int q = 0;
    const Paley kind = m > 1 && m <= kHadamardMaxSmallOrder ? paley_kind(m, &q) : Paley::none;
    SQ_CHECK(kind != Paley::none, "hadamard: ", m, " is not a supported small order (Paley I/II, ≤ ",
             kHadamardMaxSmallOrder, ")");
    const std::vector<int> chi = legendre_table(q);
    const int c = q + 1;
    // Core [c, c]: Paley I: S = [[0, 1ᵀ], [-1, Q]] (skew); Paley II: C = [[0, 1ᵀ], [1, Q]] (symmetric).
    std::vector<int> core((size_t)c * c, 0);
    for (int j = 1; j < c; ++j) {
        core[j] = 1;
        core[(size_t)j * c] = kind == Paley::one ? -1 : 1;
    }
    for (int i = 1; i < c; ++i)
        for (int j = 1; j < c; ++j) core[(size_t)i * c + j] = chi[((j - i) % q + q) % q];
    std::vector<int8_t> h((size_t)m * m);
    if (kind == Paley::one) {
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < m; ++j) h[(size_t)i * m + j] = (int8_t)(core[(size_t)i * c + j] + (i == j ? 1 : 0));
    } else {
        // Each core entry becomes a 2x2 block: 0 -> [[1,-1],[-1,-1]], ±1 -> ±[[1,1],[1,-1]].
        for (int i = 0; i < c; ++i)
            for (int j = 0; j < c; ++j) {
                const int e = core[(size_t)i * c + j];
                const int blk[4] = {e == 0 ? 1 : e, e == 0 ? -1 : e, e == 0 ? -1 : e, e == 0 ? -1 : -e};
                for (int u = 0; u < 2; ++u)
                    for (int v = 0; v < 2; ++v) h[(size_t)(2 * i + u) * m + 2 * j + v] = (int8_t)blk[2 * u + v];
            }
    }
    return h;
}

std::vector<float> hadamard_matrix(int n) {
    check_supported(n);
    const int m = hadamard_small_order(n);
    const int64_t p = n / m;
    const std::vector<int8_t> hm = hadamard_small_matrix(m);
    const float norm = (float)(1.0 / std::sqrt((double)n));
    std::vector<float> h((size_t)n * n);
    parallel_for(n, [&](int64_t r) {
        const int64_t a = r / p, b = r % p;
        for (int64_t col = 0; col < n; ++col) {
            const int64_t c = col / p, d = col % p;
            const int sign = hm[(size_t)(a * m + c)] * ((std::popcount((uint64_t)(b & d)) & 1) ? -1 : 1);
            h[(size_t)r * n + col] = sign > 0 ? norm : -norm;
        }
    });
    return h;
}

std::vector<float> hadamard_signs(int n, uint64_t seed) {
    SQ_CHECK(n >= 1, "hadamard_signs: n must be ≥ 1, got ", n);
    std::mt19937_64 rng(seed);
    std::vector<float> s(n);
    for (auto& v : s) v = (rng() >> 63) ? -1.0f : 1.0f;
    return s;
}

void hadamard_transform(float* x, int64_t rows, int n, const float* signs) {
    transform_impl(x, rows, n, signs, false);
}

void hadamard_transform_inverse(float* x, int64_t rows, int n, const float* signs) {
    transform_impl(x, rows, n, signs, true);
}

}  // namespace sq
