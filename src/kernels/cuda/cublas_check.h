// SQ_CUBLAS(...): a failing cuBLAS call throws sq::Error with the call, status, file and line.
#pragma once
#include <cublas_v2.h>

#include "core/error.h"

#define SQ_CUBLAS(call)                                                                                   \
    do {                                                                                                  \
        cublasStatus_t sq_st_ = (call);                                                                   \
        if (sq_st_ != CUBLAS_STATUS_SUCCESS)                                                              \
            ::sq::fail("cuBLAS: ", #call, " failed: ", cublasGetStatusString(sq_st_), " at ", __FILE__, ":", \
                       __LINE__);                                                                         \
    } while (0)
