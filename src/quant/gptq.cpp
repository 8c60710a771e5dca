// GPTQ with lazy batch updates and act_order; see gptq.h.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/threads.h"

namespace sq {

namespace {

// Dot product with 4 independent accumulators: breaks the add-latency chain
// (≈4x on a scalar FP pipe) and lets the compiler pair lanes; the summation
// order is fixed, so results do not depend on the thread count.
inline double dot4(const double* a, const double* b, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += a[k] * b[k];
        s1 += a[k + 1] * b[k + 1];
        s2 += a[k + 2] * b[k + 2];
        s3 += a[k + 3] * b[k + 3];
    }
    for (; k < n; ++k) s0 += a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

}  // namespace

void hessian_accumulate(const float* x, int64_t tokens, int64_t cols, double* H) {
    // Tiles of 64 tokens (64·cols floats, 384 KB at cols = 1536, stay in cache
    // while every row a of H streams through them); upper triangle b ≥ a per
    // row in parallel, mirrored at the end.
    constexpr int64_t T = 64;
    for (int64_t t0 = 0; t0 < tokens; t0 += T) {
        const int64_t t1 = std::min(tokens, t0 + T);
        parallel_for_dynamic(cols, [&](int64_t a) {
            double* ha = H + a * cols;
            for (int64_t t = t0; t < t1; ++t) {
                const float* xt = x + t * cols;
                const double xa = xt[a];
                if (xa == 0.0) continue;
                for (int64_t b = a; b < cols; ++b) ha[b] += xa * (double)xt[b];
            }
        });
    }
    for (int64_t a = 0; a < cols; ++a)
        for (int64_t b = a + 1; b < cols; ++b) H[b * cols + a] = H[a * cols + b];
}

std::vector<double> gptq_inverse_cholesky(const double* H, int64_t n) {
    // Let J reverse the index order and M = J H J = L Lᵀ (lower Cholesky).
    // Then H = (J L J)(J L J)ᵀ with J L J upper, so H⁻¹ = Uᵀ U with
    // U = (J L J)⁻¹ = J L⁻¹ J upper: exactly the upper Cholesky factor of H⁻¹
    // that GPTQ needs, from one Cholesky and one triangular inverse, without
    // forming H⁻¹. Both steps are blocked by NB columns so each row of L is
    // read from memory once per block (cols = 4096: 128 MB per pass).
    constexpr int64_t NB = 16;
    auto m_at = [&](int64_t a, int64_t b) { return H[(n - 1 - a) * n + (n - 1 - b)]; };  // a ≥ b: upper H
    std::vector<double> l(n * n, 0.0);
    auto entry = [&](int64_t i, int64_t j) {  // L_ij for j ≤ i, prefixes [0, j) of rows i and j ready
        const double s = m_at(i, j) - dot4(l.data() + i * n, l.data() + j * n, j);
        if (i == j) {
            SQ_CHECK(s > 0.0 && std::isfinite(s), "gptq: H is not positive definite (pivot ", s, " at column ",
                     n - 1 - j, " of ", n, "); increase damp");
            l[i * n + i] = std::sqrt(s);
        } else {
            l[i * n + j] = s / l[j * n + j];
        }
    };
    for (int64_t j0 = 0; j0 < n; j0 += NB) {
        const int64_t j1 = std::min(n, j0 + NB);
        for (int64_t i = j0; i < j1; ++i)
            for (int64_t j = j0; j <= i; ++j) entry(i, j);
        auto below = [&](int64_t r) {
            for (int64_t j = j0; j < j1; ++j) entry(j1 + r, j);
        };
        if ((n - j1) * j1 >= (1 << 14))
            parallel_for(n - j1, below);
        else
            for (int64_t r = 0; r < n - j1; ++r) below(r);
    }
    // L⁻¹ by forward substitution, NB right-hand sides e_c at a time (blocks in parallel).
    std::vector<double> u(n * n, 0.0);
    const int64_t nblocks = (n + NB - 1) / NB;
    auto block = [&](int64_t bi) {
        const int64_t c0 = bi * NB, c1 = std::min(n, c0 + NB);
        std::vector<double> xs((c1 - c0) * n, 0.0);  // xs[c - c0][i] = (L⁻¹)_ic
        for (int64_t i = c0; i < n; ++i) {
            const double* li = l.data() + i * n;
            for (int64_t c = c0; c < c1 && c <= i; ++c) {
                double* xc = xs.data() + (c - c0) * n;
                xc[i] = i == c ? 1.0 / li[i] : -dot4(li + c, xc + c, i - c) / li[i];
                u[(n - 1 - i) * n + (n - 1 - c)] = xc[i];
            }
        }
    };
    if (n >= 64)
        parallel_for_dynamic(nblocks, block);
    else
        for (int64_t bi = 0; bi < nblocks; ++bi) block(bi);
    return u;
}

QuantWeights gptq_quantize(const float* w, int64_t rows, int64_t cols, const double* H, const GptqParams& p,
                           GptqStats* stats) {
    SQ_CHECK(rows >= 1 && cols >= 1, "gptq: empty matrix [", rows, ", ", cols, "]");
    SQ_CHECK(p.block >= 1, "gptq: block must be ≥ 1, got ", p.block);
    SQ_CHECK(p.damp >= 0.0f, "gptq: damp must be ≥ 0, got ", p.damp);
    int qmin, qmax;
    weight_qrange(p.quant.bits, p.quant.full_range, &qmin, &qmax);

    // Dead columns: zero weights, unit diagonal.
    std::vector<double> diag(cols);
    std::vector<char> dead(cols, 0);
    int64_t ndead = 0;
    for (int64_t j = 0; j < cols; ++j) {
        diag[j] = H[j * cols + j];
        SQ_CHECK(std::isfinite(diag[j]) && diag[j] >= 0.0, "gptq: H[", j, ", ", j, "] = ", diag[j],
                 " (a Gram matrix has a finite, non-negative diagonal)");
        if (diag[j] == 0.0) {
            dead[j] = 1;
            diag[j] = 1.0;
            ++ndead;
        }
    }
    std::vector<float> wz(w, w + rows * cols);
    if (ndead)
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j)
                if (dead[j]) wz[i * cols + j] = 0.0f;

    // Static per-row scales on the full (dead-zeroed) rows.
    std::vector<float> hd;
    if (p.hdiag_scales) hd.assign(diag.begin(), diag.end());
    const std::vector<float> scales = weight_scales(wz.data(), rows, cols, p.quant, p.hdiag_scales ? hd.data() : nullptr);

    // Column order: act_order sorts by decreasing diag H (stable, so ties keep index order).
    std::vector<int64_t> perm(cols);
    std::iota(perm.begin(), perm.end(), 0);
    if (p.act_order)
        std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });

    // Permuted, damped H.
    double mean_diag = 0;
    for (double d : diag) mean_diag += d;
    mean_diag /= (double)cols;
    const double lambda = (double)p.damp * mean_diag;
    std::vector<double> hp(cols * cols);
    parallel_for(cols, [&](int64_t a) {
        for (int64_t b = 0; b < cols; ++b) hp[a * cols + b] = a == b ? 0.0 : H[perm[a] * cols + perm[b]];
        hp[a * cols + a] = diag[perm[a]] + lambda;
    });
    const std::vector<double> ud = gptq_inverse_cholesky(hp.data(), cols);
    hp.clear();
    hp.shrink_to_fit();
    std::vector<float> u(ud.begin(), ud.end());

    // Permuted working copy of W.
    std::vector<float> wk(rows * cols);
    parallel_for(rows, [&](int64_t i) {
        for (int64_t t = 0; t < cols; ++t) wk[i * cols + t] = wz[i * cols + perm[t]];
    });

    // Sweep, row groups of 16: each group reads U once per block instead of once per row.
    constexpr int64_t G = 16;
    const int64_t B = p.block;
    QuantWeights q;
    q.rows = rows;
    q.cols = cols;
    q.bits = p.quant.bits;
    q.scales = scales;
    q.codes.resize(rows * cols);
    const int64_t ngroups = (rows + G - 1) / G;
    parallel_for_dynamic(ngroups, [&](int64_t gi) {
        const int64_t r0 = gi * G, r1 = std::min(rows, r0 + G);
        std::vector<float> err((r1 - r0) * B);
        for (int64_t i1 = 0; i1 < cols; i1 += B) {
            const int64_t i2 = std::min(cols, i1 + B);
            for (int64_t t = i1; t < i2; ++t) {
                const float* ut = u.data() + t * cols;
                const float d = ut[t];
                for (int64_t r = r0; r < r1; ++r) {
                    float* wr = wk.data() + r * cols;
                    const int c = weight_quant_value(wr[t], scales[r], qmin, qmax);
                    q.codes[r * cols + perm[t]] = (int8_t)c;
                    const float e = (wr[t] - (float)c * scales[r]) / d;
                    err[(r - r0) * B + (t - i1)] = e;
                    for (int64_t j = t + 1; j < i2; ++j) wr[j] -= e * ut[j];
                }
            }
            if (i2 == cols) break;
            for (int64_t r = r0; r < r1; ++r) {
                float* wr = wk.data() + r * cols;
                for (int64_t t = i1; t < i2; ++t) {
                    const float e = err[(r - r0) * B + (t - i1)];
                    if (e == 0.0f) continue;
                    const float* ut = u.data() + t * cols;
                    for (int64_t j = i2; j < cols; ++j) wr[j] -= e * ut[j];
                }
            }
        }
    });
    if (stats) {
        stats->dead_columns = ndead;
        stats->lambda = lambda;
    }
    return q;
}

}  // namespace sq
