// Spectral split (FFTW single precision) and the adaptive truncation module; see spectral.h.
#include "quant/spectral.h"

#include <fftw3.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/fp16.h"
#include "core/threads.h"

namespace sq {

std::mutex& fftw_planner_mutex() {
    static std::mutex m;
    return m;
}

namespace {

// One r2c and one c2r plan of length n, unaligned so that any row pointer can
// be passed to the thread-safe new-array execute functions.
struct FftPlans {
    fftwf_plan r2c = nullptr, c2r = nullptr;
    explicit FftPlans(int64_t n) {
        SQ_CHECK(n >= 1 && n <= INT_MAX, "spectral: row length ", n, " out of range");
        std::lock_guard<std::mutex> lock(fftw_planner_mutex());
        float* re = fftwf_alloc_real(n);
        fftwf_complex* cx = fftwf_alloc_complex(n / 2 + 1);
        const unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
        r2c = fftwf_plan_dft_r2c_1d((int)n, re, cx, flags);
        c2r = fftwf_plan_dft_c2r_1d((int)n, cx, re, flags);
        fftwf_free(re);
        fftwf_free(cx);
        if (!r2c || !c2r) {
            if (r2c) fftwf_destroy_plan(r2c);
            if (c2r) fftwf_destroy_plan(c2r);
            fail("spectral: FFTW could not plan a transform of length ", n);
        }
    }
    ~FftPlans() {
        std::lock_guard<std::mutex> lock(fftw_planner_mutex());
        fftwf_destroy_plan(r2c);
        fftwf_destroy_plan(c2r);
    }
    FftPlans(const FftPlans&) = delete;
    FftPlans& operator=(const FftPlans&) = delete;
};

void rfft_rows(const FftPlans& plans, const float* w, int64_t rows, int64_t cols, std::complex<float>* out) {
    const int64_t nb = cols / 2 + 1;
    parallel_for(rows, [&](int64_t i) {
        std::vector<float> in(w + i * cols, w + (i + 1) * cols);  // r2c takes a non-const input
        fftwf_execute_dft_r2c(plans.r2c, in.data(), reinterpret_cast<fftwf_complex*>(out + i * nb));
    });
}

// Parseval weight of bin f: 1 for DC and (N even) Nyquist, 2 otherwise.
double bin_weight(int64_t f, int64_t n) { return (f == 0 || 2 * f == n) ? 1.0 : 2.0; }

}  // namespace

std::vector<std::complex<float>> spectral_rfft(const float* w, int64_t rows, int64_t cols) {
    FftPlans plans(cols);
    std::vector<std::complex<float>> out(rows * (cols / 2 + 1));
    rfft_rows(plans, w, rows, cols, out.data());
    return out;
}

std::vector<float> spectral_power(const float* w, int64_t rows, int64_t cols) {
    const int64_t nb = cols / 2 + 1;
    const std::vector<std::complex<float>> f = spectral_rfft(w, rows, cols);
    std::vector<float> p(rows * nb);
    parallel_for(rows, [&](int64_t i) {
        for (int64_t b = 0; b < nb; ++b) {
            const std::complex<float> z = f[i * nb + b];
            const double re = z.real(), im = z.imag();
            p[i * nb + b] = (float)(bin_weight(b, cols) * (re * re + im * im) / (double)cols);
        }
    });
    return p;
}

double spectral_energy_fraction_lowest(const float* w, int64_t rows, int64_t cols, double fraction,
                                       std::vector<float>* per_row) {
    SQ_CHECK(fraction >= 0.0 && fraction <= 1.0, "spectral_energy_fraction_lowest: fraction must be in [0, 1], got ",
             fraction);
    SQ_CHECK(rows >= 1, "spectral_energy_fraction_lowest: no rows");
    const int64_t nb = cols / 2 + 1;
    const int64_t nlow = std::clamp((int64_t)std::ceil(fraction * (double)nb - 1e-9), (int64_t)0, nb);
    const std::vector<float> p = spectral_power(w, rows, cols);
    std::vector<float> frac(rows);
    parallel_for(rows, [&](int64_t i) {
        double lo = 0, all = 0;
        for (int64_t b = 0; b < nb; ++b) {
            all += p[i * nb + b];
            if (b < nlow) lo += p[i * nb + b];
        }
        frac[i] = all > 0 ? (float)(lo / all) : 1.0f;
    });
    double mean = 0;
    for (float v : frac) mean += v;
    if (per_row) *per_row = frac;
    return mean / (double)rows;
}

std::vector<float> spectral_basis(int64_t cols, int K) {
    const int64_t nb = cols / 2 + 1;
    SQ_CHECK(K >= 1 && K <= nb, "spectral_basis: K must be in [1, ", nb, "] for C_in = ", cols, ", got ", K);
    const int64_t nc = 2 * (int64_t)K - 1;
    const double dc = 1.0 / std::sqrt((double)cols), ac = std::sqrt(2.0 / (double)cols);
    std::vector<float> b(cols * nc);
    for (int64_t n = 0; n < cols; ++n) {
        float* row = b.data() + n * nc;
        row[0] = (float)dc;
        for (int64_t f = 1; f < K; ++f) {
            if (2 * f == cols) {  // Nyquist: cos(πn) = (-1)^n, no sine
                row[f] = (float)((n & 1) ? -dc : dc);
                row[K - 1 + f] = 0.0f;
                continue;
            }
            const double theta = 2.0 * M_PI * (double)((f * n) % cols) / (double)cols;
            row[f] = (float)(ac * std::cos(theta));
            row[K - 1 + f] = (float)(ac * std::sin(theta));
        }
    }
    return b;
}

SpectralSplit spectral_split(const float* w, int64_t rows, int64_t cols, const std::vector<int>& k) {
    const int64_t nb = cols / 2 + 1;
    SQ_CHECK((int64_t)k.size() == rows, "spectral_split: k has ", k.size(), " entries for ", rows, " rows");
    int K = 1;
    for (int64_t i = 0; i < rows; ++i) {
        SQ_CHECK(k[i] >= 0 && k[i] <= nb, "spectral_split: k[", i, "] = ", k[i], " outside [0, ", nb,
                 "] for C_in = ", cols);
        K = std::max(K, k[i]);
    }
    SpectralSplit s;
    s.rows = rows;
    s.cols = cols;
    s.K = K;
    s.k = k;
    const int64_t nc = 2 * (int64_t)K - 1;
    s.coef.assign(rows * nc, 0.0f);
    s.residual.resize(rows * cols);
    FftPlans plans(cols);
    std::vector<std::complex<float>> f(rows * nb);
    rfft_rows(plans, w, rows, cols, f.data());
    const double dc = 1.0 / std::sqrt((double)cols), ac = std::sqrt(2.0 / (double)cols);
    const float inv_n = (float)(1.0 / (double)cols);
    parallel_for(rows, [&](int64_t i) {
        const int ki = k[i];
        const std::complex<float>* fi = f.data() + i * nb;
        float* ci = s.coef.data() + i * nc;
        float* ri = s.residual.data() + i * cols;
        const float* wi = w + i * cols;
        if (ki == 0) {
            std::copy(wi, wi + cols, ri);
            return;
        }
        ci[0] = (float)(fi[0].real() * dc);
        for (int64_t b = 1; b < ki; ++b) {
            if (2 * b == cols) {
                ci[b] = (float)(fi[b].real() * dc);
            } else {
                ci[b] = (float)(fi[b].real() * ac);
                ci[K - 1 + b] = (float)(-(double)fi[b].imag() * ac);
            }
        }
        std::vector<std::complex<float>> masked(nb, std::complex<float>(0.0f, 0.0f));
        std::copy(fi, fi + ki, masked.begin());
        std::vector<float> kept(cols);
        fftwf_execute_dft_c2r(plans.c2r, reinterpret_cast<fftwf_complex*>(masked.data()), kept.data());
        for (int64_t n = 0; n < cols; ++n) ri[n] = wi[n] - kept[n] * inv_n;
    });
    return s;
}

void spectral_residual(const float* w, int64_t rows, int64_t cols, const float* coef, const float* basis, int64_t nc,
                       float* residual) {
    SQ_CHECK(nc >= 1, "spectral_residual: nc must be ≥ 1");
    // Basis transposed to [nc, cols] so the inner loop is contiguous.
    std::vector<float> bt(nc * cols);
    for (int64_t n = 0; n < cols; ++n)
        for (int64_t c = 0; c < nc; ++c) bt[c * cols + n] = basis[n * nc + c];
    parallel_for(rows, [&](int64_t i) {
        std::vector<double> acc(w + i * cols, w + (i + 1) * cols);
        for (int64_t c = 0; c < nc; ++c) {
            const double a = coef[i * nc + c];
            if (a == 0.0) continue;
            const float* bc = bt.data() + c * cols;
            for (int64_t n = 0; n < cols; ++n) acc[n] -= a * bc[n];
        }
        for (int64_t n = 0; n < cols; ++n) residual[i * cols + n] = (float)acc[n];
    });
}

void spectral_round_fp16(const float* w, SpectralSplit& s, bool round_basis) {
    const int64_t nc = 2 * (int64_t)s.K - 1;
    SQ_CHECK((int64_t)s.coef.size() == s.rows * nc && (int64_t)s.residual.size() == s.rows * s.cols,
             "spectral_round_fp16: split has inconsistent sizes");
    for (float& c : s.coef) c = fp16_to_fp32(fp32_to_fp16(c));
    std::vector<float> b = spectral_basis(s.cols, s.K);
    if (round_basis)
        for (float& v : b) v = fp16_to_fp32(fp32_to_fp16(v));
    spectral_residual(w, s.rows, s.cols, s.coef.data(), b.data(), nc, s.residual.data());
}

// ---- adaptive truncation module ----

Importance importance_from_name(const std::string& name) {
    if (name == "abs_mean") return Importance::abs_mean;
    if (name == "abs_max") return Importance::abs_max;
    if (name == "l2") return Importance::l2;
    if (name == "entropy" || name == "spectral_entropy") return Importance::spectral_entropy;
    fail("unknown importance score '", name, "' (expected abs_mean, abs_max, l2 or entropy)");
}

const char* importance_name(Importance kind) {
    switch (kind) {
        case Importance::abs_mean: return "abs_mean";
        case Importance::abs_max: return "abs_max";
        case Importance::l2: return "l2";
        case Importance::spectral_entropy: return "entropy";
    }
    return "?";
}

std::vector<float> row_importance(const float* w, int64_t rows, int64_t cols, Importance kind) {
    std::vector<float> s(rows);
    if (kind == Importance::spectral_entropy) {
        const int64_t nb = cols / 2 + 1;
        const std::vector<float> p = spectral_power(w, rows, cols);
        parallel_for(rows, [&](int64_t i) {
            double tot = 0;
            for (int64_t b = 0; b < nb; ++b) tot += p[i * nb + b];
            double h = 0;
            if (tot > 0)
                for (int64_t b = 0; b < nb; ++b) {
                    const double q = p[i * nb + b] / tot;
                    if (q > 0) h -= q * std::log(q);
                }
            s[i] = (float)h;
        });
        return s;
    }
    parallel_for(rows, [&](int64_t i) {
        const float* wi = w + i * cols;
        double acc = 0;
        for (int64_t j = 0; j < cols; ++j) {
            const double a = std::fabs((double)wi[j]);
            if (kind == Importance::abs_max)
                acc = std::max(acc, a);
            else if (kind == Importance::abs_mean)
                acc += a;
            else
                acc += a * a;
        }
        if (kind == Importance::abs_mean) acc /= (double)cols;
        if (kind == Importance::l2) acc = std::sqrt(acc);
        s[i] = (float)acc;
    });
    return s;
}

std::vector<int> allocate_bins(const std::vector<float>& importance, int64_t budget, int k_min, int k_max,
                               float temperature) {
    const int64_t n = (int64_t)importance.size();
    SQ_CHECK(n >= 1, "allocate_bins: no rows");
    SQ_CHECK(k_min >= 0 && k_max >= k_min, "allocate_bins: need 0 ≤ k_min ≤ k_max, got k_min = ", k_min,
             ", k_max = ", k_max);
    SQ_CHECK(temperature > 0.0f, "allocate_bins: temperature must be > 0, got ", temperature);
    SQ_CHECK(budget >= n * k_min, "allocate_bins: budget ", budget, " < rows·k_min = ", n, "·", k_min);
    SQ_CHECK(budget <= n * k_max, "allocate_bins: budget ", budget, " > rows·k_max = ", n, "·", k_max);
    for (int64_t i = 0; i < n; ++i)
        SQ_CHECK(std::isfinite(importance[i]), "allocate_bins: importance[", i, "] is not finite");
    if (budget == n * k_min) return std::vector<int>(n, k_min);
    if (budget == n * k_max) return std::vector<int>(n, k_max);

    // z-score; logits z / T. The softmax normalisation is absorbed into λ, and
    // everything is solved in the log domain so that no p_i underflows: at tiny
    // temperatures the allocation becomes greedy in score order (it does not
    // collapse to uniform among underflowed rows).
    double mean = 0;
    for (float v : importance) mean += v;
    mean /= (double)n;
    double var = 0;
    for (float v : importance) var += ((double)v - mean) * ((double)v - mean);
    const double sd = std::sqrt(var / (double)n);
    const auto [mn_it, mx_it] = std::minmax_element(importance.begin(), importance.end());
    const bool flat = *mn_it == *mx_it;
    std::vector<double> logit(n);
    for (int64_t i = 0; i < n; ++i) logit[i] = flat ? 0.0 : ((double)importance[i] - mean) / sd / (double)temperature;
    const auto [lmin_it, lmax_it] = std::minmax_element(logit.begin(), logit.end());
    const double lmin = *lmin_it, lmax = *lmax_it;

    // Solve S(L) = Σ clamp(exp(L + logit_i), k_min, k_max) = budget for L = log λ
    // by bisection: S is continuous and nondecreasing, S(lo) ≤ n·max(k_min, 1e-3/n)
    // ≤ budget (budget > n·k_min here) and S(hi) = n·k_max > budget.
    auto target = [&](int64_t i, double L) {
        return std::clamp(std::exp(L + logit[i]), (double)k_min, (double)k_max);
    };
    auto total_at = [&](double L) {
        double s = 0;
        for (int64_t i = 0; i < n; ++i) s += target(i, L);
        return s;
    };
    double lo = std::log(std::max((double)k_min, 1e-3 / (double)n)) - lmax;
    double hi = std::log((double)k_max) - lmin;
    for (int it = 0; it < 400; ++it) {
        const double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;  // interval at double resolution
        (total_at(mid) < (double)budget ? lo : hi) = mid;
    }
    const double L = hi;  // S(hi) ≥ budget

    // Largest remainder rounding.
    std::vector<int> k(n);
    std::vector<double> frac(n);
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double t = target(i, L);
        const double fl = std::floor(t);
        k[i] = (int)fl;
        frac[i] = t - fl;
        total += k[i];
    }
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        if (frac[a] != frac[b]) return frac[a] > frac[b];
        if (importance[a] != importance[b]) return importance[a] > importance[b];
        return a < b;
    });
    // Normally |budget - total| < n and one pass suffices; the loops also
    // absorb any floating-point slack in λ.
    while (total < budget)
        for (int64_t j = 0; j < n && total < budget; ++j)
            if (k[order[j]] < k_max) ++k[order[j]], ++total;
    while (total > budget)
        for (int64_t j = n - 1; j >= 0 && total > budget; --j)
            if (k[order[j]] > k_min) --k[order[j]], --total;
    return k;
}

}  // namespace sq
