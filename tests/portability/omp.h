// A declaration-only omp.h for tests/test_portability.py, which compiles (never links)
// the CPU sources with zig's clang: zig ships no OpenMP runtime, and torch's
// ATen/ParallelOpenMP.h includes <omp.h> when -fopenmp is on, as it is in the real build.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif
int omp_get_num_threads(void);
int omp_get_thread_num(void);
int omp_get_max_threads(void);
int omp_in_parallel(void);
void omp_set_num_threads(int);
#ifdef __cplusplus
}
#endif
