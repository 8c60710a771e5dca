// Hadamard matrices and the fast Hadamard transform (QuaRot-style rotations).
//
// Order n = m · 2^e with H_n = (H_m ⊗ S_{2^e}) / sqrt(n):
//   S_P  Sylvester's ±1 matrix, S_P[b, d] = (-1)^popcount(b & d) (symmetric);
//   H_m  a ±1 "small factor", m = 1, or m ≤ kHadamardMaxSmallOrder built here by
//        Paley I  (m = q + 1,    q prime, q ≡ 3 mod 4): H = I + [[0, 1ᵀ], [-1, Q]]
//        Paley II (m = 2(q + 1), q prime, q ≡ 1 mod 4): H = C ⊗ [[1,1],[1,-1]] + I ⊗ [[1,-1],[-1,-1]],
//                                                       C = [[0, 1ᵀ], [1, Q]]
//        with Q[i, j] = χ(j - i mod q), χ the Legendre symbol (χ(0) = 0).
// The smallest constructible m is used (576 = 36·16 with 36 Paley II q=17;
// 1536 = 12·128, Paley I q=11; 14336 = 28·512, Paley II q=13; 4096 = 2^12).
// Orders with no such factor (11008 = 43·2^8: 172, 344, 688 are not Paley
// orders) are unsupported: hadamard_matrix / hadamard_transform throw sq::Error
// naming the order. The cap on m keeps the dense part of the transform at
// ≤ 256 multiply-adds per element (the WHT part costs log2(2^e)).
//
// Element index j = a·2^e + b (a < m, b < 2^e): rows of x are viewed as
// [m, 2^e]; the transform applies the WHT to each of the m contiguous
// segments, then mixes the segments with H_m.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sq {

constexpr int kHadamardMaxSmallOrder = 256;

// The small factor m used for order n (1 for powers of two), or 0 when n is unsupported.
int hadamard_small_order(int n);

bool hadamard_supported(int n);

// How order n is built, for logs and errors, e.g. "576 = 36 (Paley II, q=17) x 2^4".
std::string hadamard_describe(int n);

// The unnormalized ±1 small factor H_m [m, m] (H_m H_mᵀ = m I); m must be 1
// or a Paley order ≤ kHadamardMaxSmallOrder, else sq::Error.
std::vector<int8_t> hadamard_small_matrix(int m);

// Dense orthonormal H_n [n, n], row-major (H_n H_nᵀ = I). n² floats: tests
// and small sizes only (14336² floats are 822 MB).
std::vector<float> hadamard_matrix(int n);

// Deterministic random ±1 diagonal [n] from seed: bit 63 of successive
// std::mt19937_64(seed) outputs (1 -> -1). Portable: mt19937_64's output is
// fixed by the C++ standard, unlike std::*_distribution.
std::vector<float> hadamard_signs(int n, uint64_t seed);

// In place, every row r of x [rows, n]:  x_r ← (x_r ⊙ signs) · H_n,
// i.e. x · R with the orthogonal rotation R = diag(signs) · H_n (QuaRot's
// random Hadamard); signs == nullptr means R = H_n. Since y = x Wᵀ = (xR)(WR)ᵀ,
// the same call rotates activations and weights (W [C_out, C_in], n = C_in).
// Parallel over rows; O(n (log2 2^e + m)) per row.
void hadamard_transform(float* x, int64_t rows, int n, const float* signs = nullptr);

// The inverse rotation, in place: x_r ← (x_r · H_nᵀ) ⊙ signs = x_r · Rᵀ.
void hadamard_transform_inverse(float* x, int64_t rows, int n, const float* signs = nullptr);

}  // namespace sq
