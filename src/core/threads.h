// Threading: OpenMP underneath; one place sets the thread count (-t).
#pragma once
#include <cstdint>

namespace sq {

void threads_set(int n);  // n <= 0: all hardware threads
int threads_count();

// parallel_for(n, f): f(i) for i in [0, n), static schedule over threads.
template <class F>
void parallel_for(int64_t n, F&& f) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i);
}

// Dynamic schedule for uneven work (attention rows, eval examples).
template <class F>
void parallel_for_dynamic(int64_t n, F&& f) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace sq
