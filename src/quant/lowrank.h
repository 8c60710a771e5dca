// Low-rank 16-bit branch as an alternative basis to Fourier (SVDQuant-style):
// the top-r right singular subspace of W, by randomized subspace iteration
// (Halko, Martinsson, Tropp 2011) on the float GEMM, small eigenproblems by
// cyclic Jacobi in double.
#pragma once
#include <cstdint>
#include <vector>

namespace sq {

// V [cols, r], orthonormal columns spanning (approximately) W's top-r right
// singular subspace, ordered by decreasing singular value. W [rows, cols].
// oversample extra columns, `iters` power iterations; deterministic in seed.
std::vector<float> lowrank_basis(const float* w, int64_t rows, int64_t cols, int r, int iters = 4,
                                 int oversample = 10, uint64_t seed = 1);

// Symmetric eigen-decomposition of A [n, n] (double, cyclic Jacobi):
// eigenvalues descending in `vals`, eigenvectors as columns of `vecs` [n, n].
void sym_eig_jacobi(std::vector<double> A, int n, std::vector<double>& vals, std::vector<double>& vecs);

}  // namespace sq
