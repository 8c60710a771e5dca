#include "core/threads.h"

#include <omp.h>

#include <thread>

namespace sq {

void threads_set(int n) {
    if (n <= 0) n = (int)std::thread::hardware_concurrency();
    if (n <= 0) n = 1;
    omp_set_num_threads(n);
}

int threads_count() { return omp_get_max_threads(); }

}  // namespace sq
