// Choosing the device that scores log-likelihoods: the CPU ModelLoglik, or
// CudaLoglik (built with -DSPECQUANT_CUDA=ON), which runs the same model on
// the GPU (model/model_cuda.h) and computes log-softmax and greedy flags on
// the device, so only the scored numbers come back.
#pragma once
#include <memory>
#include <string>

#include "eval/loglik.h"

namespace sq {

// device "cpu" or "cuda". A build without CUDA throws sq::Error for "cuda"
// ("built without CUDA"), as does a machine without a CUDA device.
// batch_tokens (cuda): tokens per varlen batch of score_batch and
// rolling_logprobs_batch, ≥ max_length; 0 = one document per call; −1 =
// $SQ_CUDA_BATCH_TOKENS, else the default (loglik_cuda.cpp). The CPU ignores it.
std::unique_ptr<LoglikSource> loglik_source_make(const Model& model, int max_length, const std::string& device,
                                                 int batch_tokens = -1);

// True when this binary was built with the CUDA backend.
bool cuda_built();

}  // namespace sq
