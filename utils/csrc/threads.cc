// Pins the OpenMP threads to cores, as a Paddle custom operator (cpu_kernels.bind_threads, which
// utils/placement.py calls at the start and end of a CPU training run and explains). It runs one
// parallel region on the same Intel OpenMP runtime as MKL's and Paddle's kernels, so it places
// their threads: each thread sets its own affinity.
#include <omp.h>
#include <sched.h>

#include <cerrno>
#include <vector>

#include "paddle/extension.h"

namespace {

// cores [n] int32; one_each: thread t runs on cores[t % n] alone, else every thread on all n.
// Returns [threads] int32: 0 for each thread placed, else the errno sched_setaffinity gave it.
std::vector<paddle::Tensor> BindThreads(const paddle::Tensor& cores, bool one_each) {
  PD_CHECK(cores.is_cpu() && cores.dtype() == paddle::DataType::INT32, "bind_threads takes int32 core numbers");
  const int count = static_cast<int>(cores.numel());
  PD_CHECK(count > 0, "bind_threads: no cores given");
  const int* core = cores.data<int>();
  const int threads = omp_get_max_threads();
  auto result = paddle::empty({threads}, paddle::DataType::INT32, paddle::CPUPlace());
  int* status = result.data<int>();
  for (int t = 0; t < threads; ++t) status[t] = EINVAL;  // a thread the region did not reach
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    cpu_set_t set;
    CPU_ZERO(&set);
    if (one_each) {
      CPU_SET(core[t % count], &set);
    } else {
      for (int i = 0; i < count; ++i) CPU_SET(core[i], &set);
    }
    status[t] = sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : errno;  // 0: the calling thread
  }
  return {result};
}

std::vector<std::vector<int64_t>> BindShapes(const std::vector<int64_t>&) { return {{omp_get_max_threads()}}; }

std::vector<paddle::DataType> BindTypes(const paddle::DataType&) { return {paddle::DataType::INT32}; }

}  // namespace

PD_BUILD_OP(ds2_bind_threads)
    .Inputs({"Cores"})
    .Outputs({"Status"})
    .Attrs({"one_each: bool"})
    .SetKernelFn(PD_KERNEL(BindThreads))
    .SetInferShapeFn(PD_INFER_SHAPE(BindShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(BindTypes));
