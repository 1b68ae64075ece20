/* Internal: the CUDA driver entry points the launchers use, resolved at run time with dlopen so the
 * library links against neither libcuda nor libcudart (TensorRT / torch have loaded the driver). */
#ifndef PHM_DRIVER_H
#define PHM_DRIVER_H

#include <cuda.h>

#include "phm_kernels.h"  /* PHM_API */

typedef struct {
    __typeof__(&cuGetErrorString) getErrorString;
    __typeof__(&cuCtxGetDevice) ctxGetDevice;
    __typeof__(&cuDeviceGetAttribute) deviceGetAttribute;
    __typeof__(&cuLibraryLoadData) libraryLoadData;
    __typeof__(&cuLibraryUnload) libraryUnload;
    __typeof__(&cuLibraryGetKernel) libraryGetKernel;
    __typeof__(&cuKernelSetAttribute) kernelSetAttribute;
    __typeof__(&cuLaunchKernel) launchKernel;
    __typeof__(&cuMemAlloc) memAlloc;      /* only phm_device_upload / phm_device_free use these */
    __typeof__(&cuMemcpyHtoD) memcpyHtoD;
    __typeof__(&cuMemFree) memFree;
} phm_driver_api;

#ifdef __cplusplus
extern "C" {
#endif
/* Tests only: replace the driver (NULL restores dlopen). Not thread-safe against launches. */
PHM_API void phm_kernels_set_driver_for_testing(const phm_driver_api* api);
#ifdef __cplusplus
}
#endif
#endif
