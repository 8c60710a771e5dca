#include "quant/lowrank.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "kernels/cpu/gemm_f32.h"

namespace sq {

namespace {

// y [n, out] = x [n, in] · w [out, in]ᵀ
void mm_t(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y) {
    gemm_f32(x, n, gemm_f32_view(w, out, in), y);
}

// Orthonormalizes the columns of Y [m, c] (row-major) in place: modified
// Gram-Schmidt in double, run twice ("twice is enough"). A column that
// vanishes is replaced by zeros.
void orthonormalize_cols(std::vector<float>& Y, int64_t m, int c) {
    std::vector<double> col(m);
    std::vector<std::vector<double>> done;
    for (int j = 0; j < c; ++j) {
        for (int64_t i = 0; i < m; ++i) col[i] = Y[i * c + j];
        for (int pass = 0; pass < 2; ++pass)
            for (auto& q : done) {
                double d = 0;
                for (int64_t i = 0; i < m; ++i) d += q[i] * col[i];
                for (int64_t i = 0; i < m; ++i) col[i] -= d * q[i];
            }
        double nrm = 0;
        for (double v : col) nrm += v * v;
        nrm = std::sqrt(nrm);
        if (nrm > 1e-30)
            for (auto& v : col) v /= nrm;
        else
            std::fill(col.begin(), col.end(), 0.0);
        done.push_back(col);
        for (int64_t i = 0; i < m; ++i) Y[i * c + j] = (float)col[i];
    }
}

// Transpose of A [r, c] → [c, r].
std::vector<float> transpose(const float* a, int64_t r, int64_t c) {
    std::vector<float> t((size_t)r * c);
    for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j) t[j * r + i] = a[i * c + j];
    return t;
}

}  // namespace

void sym_eig_jacobi(std::vector<double> A, int n, std::vector<double>& vals, std::vector<double>& vecs) {
    std::vector<double> V((size_t)n * n, 0.0);
    for (int i = 0; i < n; ++i) V[(size_t)i * n + i] = 1.0;
    for (int sweep = 0; sweep < 60; ++sweep) {
        double off = 0;
        for (int p = 0; p < n; ++p)
            for (int q = p + 1; q < n; ++q) off += A[(size_t)p * n + q] * A[(size_t)p * n + q];
        if (off < 1e-30) break;
        for (int p = 0; p < n; ++p)
            for (int q = p + 1; q < n; ++q) {
                const double apq = A[(size_t)p * n + q];
                if (std::fabs(apq) < 1e-300) continue;
                const double app = A[(size_t)p * n + p], aqq = A[(size_t)q * n + q];
                const double theta = (aqq - app) / (2.0 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; ++k) {  // A ← Jᵀ A J
                    const double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
                    A[(size_t)k * n + p] = c * akp - s * akq;
                    A[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; ++k) {
                    const double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
                    A[(size_t)p * n + k] = c * apk - s * aqk;
                    A[(size_t)q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; ++k) {
                    const double vkp = V[(size_t)k * n + p], vkq = V[(size_t)k * n + q];
                    V[(size_t)k * n + p] = c * vkp - s * vkq;
                    V[(size_t)k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return A[(size_t)a * n + a] > A[(size_t)b * n + b]; });
    vals.resize(n);
    vecs.assign((size_t)n * n, 0.0);
    for (int j = 0; j < n; ++j) {
        vals[j] = A[(size_t)order[j] * n + order[j]];
        for (int i = 0; i < n; ++i) vecs[(size_t)i * n + j] = V[(size_t)i * n + order[j]];
    }
}

std::vector<float> lowrank_basis(const float* w, int64_t rows, int64_t cols, int r, int iters, int oversample,
                                 uint64_t seed) {
    SQ_CHECK(r >= 1 && r <= std::min(rows, cols), "lowrank_basis: rank ", r, " out of range for ", rows, "x", cols);
    const int c = (int)std::min<int64_t>(r + oversample, std::min(rows, cols));
    std::mt19937_64 rng(seed);
    // Box-Muller on the raw generator: portable across standard libraries.
    auto gauss = [&]() {
        const double u1 = ((rng() >> 11) + 0.5) * 0x1.0p-53, u2 = ((rng() >> 11) + 0.5) * 0x1.0p-53;
        return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
    };
    std::vector<float> omega_t((size_t)c * cols);  // Ωᵀ [c, cols]
    for (auto& v : omega_t) v = gauss();
    const std::vector<float> wt = transpose(w, rows, cols);  // Wᵀ [cols, rows]
    std::vector<float> Y((size_t)rows * c), Z((size_t)cols * c);
    mm_t(w, rows, omega_t.data(), c, cols, Y.data());  // Y = W Ω
    orthonormalize_cols(Y, rows, c);
    for (int it = 0; it <= iters; ++it) {
        const std::vector<float> yt = transpose(Y.data(), rows, c);  // Qᵀ [c, rows]
        mm_t(wt.data(), cols, yt.data(), c, rows, Z.data());         // Z = Wᵀ Q
        orthonormalize_cols(Z, cols, c);
        if (it == iters) break;
        const std::vector<float> zt = transpose(Z.data(), cols, c);
        mm_t(w, rows, zt.data(), c, cols, Y.data());  // Y = W Z
        orthonormalize_cols(Y, rows, c);
    }
    // Rotate Z's span to W's right singular vectors: eig of (WZ)ᵀ(WZ).
    const std::vector<float> zt = transpose(Z.data(), cols, c);
    mm_t(w, rows, zt.data(), c, cols, Y.data());  // M = W Z [rows, c]
    std::vector<double> G((size_t)c * c, 0.0);
    for (int64_t i = 0; i < rows; ++i)
        for (int a = 0; a < c; ++a)
            for (int b = 0; b < c; ++b) G[(size_t)a * c + b] += (double)Y[i * c + a] * Y[i * c + b];
    std::vector<double> vals, vecs;
    sym_eig_jacobi(G, c, vals, vecs);
    std::vector<float> V((size_t)cols * r);
    for (int64_t i = 0; i < cols; ++i)
        for (int j = 0; j < r; ++j) {
            double s = 0;
            for (int a = 0; a < c; ++a) s += (double)Z[i * c + a] * vecs[(size_t)a * c + j];
            V[i * r + j] = (float)s;
        }
    return V;
}

}  // namespace sq
