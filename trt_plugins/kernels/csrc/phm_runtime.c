/*
 * Host side of the AOT PHM kernels: resolves the driver, loads the embedded cubins of the current
 * device's arch (cuLibraryLoadData: context-independent, so one handle serves every context and
 * device) and raises their shared-memory limit, in phm_kernels_prepare(); picks the specialisation
 * for (arch, dtype, weight format, n, T, B, alignment) with the same rule as
 * trt_plugins/kernels/configs.py, computes the grid and launches on the caller's stream.
 * The launchers load nothing, allocate nothing, synchronise nothing and copy nothing: a kernel that
 * phm_kernels_prepare() did not load is an error, so a launch is safe inside CUDA-graph capture.
 */
#include "phm_kernels.h"
#include "phm_driver.h"
#include "phm_kernel_table.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PHM_STR_(x) #x
#define PHM_STR(x) PHM_STR_(x)  /* expands cuda.h's versioned-name macros first */

static _Thread_local char g_error[512];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static phm_driver_api g_api;
static int g_api_state; /* 0 unresolved, 1 ok, -1 failed */
static const phm_driver_api* g_test_api;

static CUresult fail(CUresult code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return code;
}

const char* phm_kernels_last_error(void) { return g_error; }

void phm_kernels_set_driver_for_testing(const phm_driver_api* api) { g_test_api = api; }

static const phm_driver_api* driver(void) {
    if (g_test_api) return g_test_api;
    pthread_mutex_lock(&g_lock);
    if (g_api_state == 0) {
        void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (!lib) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_GLOBAL);
        g_api_state = -1;
        if (lib) {
#define PHM_RESOLVE(field, fn) *(void**)&g_api.field = dlsym(lib, PHM_STR(fn))
            PHM_RESOLVE(getErrorString, cuGetErrorString);
            PHM_RESOLVE(ctxGetDevice, cuCtxGetDevice);
            PHM_RESOLVE(deviceGetAttribute, cuDeviceGetAttribute);
            PHM_RESOLVE(libraryLoadData, cuLibraryLoadData);
            PHM_RESOLVE(libraryUnload, cuLibraryUnload);
            PHM_RESOLVE(libraryGetKernel, cuLibraryGetKernel);
            PHM_RESOLVE(kernelSetAttribute, cuKernelSetAttribute);
            PHM_RESOLVE(launchKernel, cuLaunchKernel);
            PHM_RESOLVE(memAlloc, cuMemAlloc);
            PHM_RESOLVE(memcpyHtoD, cuMemcpyHtoD);
            PHM_RESOLVE(memFree, cuMemFree);
#undef PHM_RESOLVE
            if (g_api.getErrorString && g_api.ctxGetDevice && g_api.deviceGetAttribute &&
                g_api.libraryLoadData && g_api.libraryUnload && g_api.libraryGetKernel && g_api.kernelSetAttribute &&
                g_api.launchKernel && g_api.memAlloc && g_api.memcpyHtoD && g_api.memFree)
                g_api_state = 1;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return g_api_state == 1 ? &g_api : NULL;
}

/* Loaded handles, one per table entry (CUkernel is context-independent), allocated on first prepare
 * with the table's size. Written under g_lock by phm_kernels_prepare only; a launch reads its entry. */
typedef struct {
    CUlibrary library;
    CUkernel kernel;
} loaded_kernel;
static loaded_kernel* g_loaded;

static CUresult driver_fail(const phm_driver_api* api, CUresult rc, const char* what, const char* symbol) {
    const char* s = NULL;
    api->getErrorString(rc, &s);
    return fail(rc, "%s %s failed: %s", what, symbol, s ? s : "?");
}

/* Load entry `index` (once) and give it the device's dynamic shared memory; a half-done load (the
 * library loaded, its kernel not found) unloads what it loaded. Called with g_lock held. */
static CUresult load(const phm_driver_api* api, int index, CUdevice dev) {
    const phm_kernel_image* img = phm_kernel_table[index].image;
    loaded_kernel* lk = &g_loaded[index];
    CUresult rc;
    if (!lk->kernel) {
        CUlibrary library = NULL;
        rc = api->libraryLoadData(&library, img->image, NULL, NULL, 0, NULL, NULL, 0);
        if (rc != CUDA_SUCCESS) return driver_fail(api, rc, "loading", img->symbol);
        rc = api->libraryGetKernel(&lk->kernel, library, img->entry);
        if (rc != CUDA_SUCCESS) {
            lk->kernel = NULL;
            api->libraryUnload(library);
            return driver_fail(api, rc, "finding the kernel of", img->symbol);
        }
        lk->library = library;
    }
    /* per device (any number of them), idempotent: cheap to repeat on every prepare */
    if (img->shared > 49152) {
        rc = api->kernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, img->shared, lk->kernel, dev);
        if (rc != CUDA_SUCCESS) return driver_fail(api, rc, "raising the shared memory of", img->symbol);
    }
    return CUDA_SUCCESS;
}

/* The driver and the current context's device and arch (sm = major * 10 + minor). */
static CUresult current_device(const phm_driver_api** api, CUdevice* dev, int* sm) {
    int major = 0, minor = 0;
    *api = driver();
    if (!*api) return fail(CUDA_ERROR_NOT_INITIALIZED, "%s", "libcuda.so.1 could not be loaded");
    CUresult rc = (*api)->ctxGetDevice(dev);
    if (rc == CUDA_SUCCESS) rc = (*api)->deviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, *dev);
    if (rc == CUDA_SUCCESS) rc = (*api)->deviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, *dev);
    if (rc != CUDA_SUCCESS) return fail(rc, "%s", "no current CUDA context / device query failed");
    *sm = major * 10 + minor;
    return CUDA_SUCCESS;
}

CUresult phm_kernels_prepare(void) {
    const phm_driver_api* api;
    CUdevice dev;
    int sm;
    CUresult rc = current_device(&api, &dev, &sm);
    if (rc != CUDA_SUCCESS) return rc;
    if (!phm_kernels_have_arch(sm))
        return fail(CUDA_ERROR_NO_BINARY_FOR_GPU, "no PHM kernel compiled for sm_%d (rebuild with --arch sm_%d)", sm, sm);
    pthread_mutex_lock(&g_lock);
    if (!g_loaded) g_loaded = (loaded_kernel*)calloc((size_t)phm_kernel_table_size, sizeof *g_loaded);
    if (!g_loaded) rc = fail(CUDA_ERROR_OUT_OF_MEMORY, "%s", "no host memory for the kernel handles");
    for (int i = 0; rc == CUDA_SUCCESS && i < phm_kernel_table_size; ++i)
        if (phm_kernel_table[i].sm == sm) rc = load(api, i, dev);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static int select_config(int tokens, int n, int num_bases) {
    if (tokens <= phm_gemv_max_t) return PHM_CFG_GEMV;
    if (tokens <= phm_decode_max_t) return PHM_CFG_DECODE;
    return num_bases > n ? PHM_CFG_PREFILL_MIXW : PHM_CFG_PREFILL;
}

static const phm_tile_config* tile_config(int n, int config) {
    for (int i = 0; i < phm_tile_configs_size; ++i)
        if (phm_tile_configs[i].n == n && phm_tile_configs[i].config == config) return &phm_tile_configs[i];
    return NULL;
}

static int find_entry(int family, int sm, int dtype, int wfmt, int n, int config, int aligned) {
    for (int i = 0; i < phm_kernel_table_size; ++i) {
        const phm_kernel_entry* e = &phm_kernel_table[i];
        if (e->family == family && e->sm == sm && e->dtype == dtype && e->wfmt == wfmt && e->n == n &&
            e->config == config && e->aligned == aligned)
            return i;
    }
    return -1;
}

int phm_kernels_have_arch(int sm) {
    for (int i = 0; i < phm_kernel_table_size; ++i)
        if (phm_kernel_table[i].sm == sm) return 1;
    return 0;
}

const char* phm_kernels_select_name(int family, int sm, phm_dtype dtype, phm_wfmt wfmt, int n,
                                    int tokens, int num_bases, int aligned) {
    int i = find_entry(family, sm, dtype, wfmt, n, select_config(tokens, n, num_bases), aligned);
    if (i < 0 && aligned) i = find_entry(family, sm, dtype, wfmt, n, select_config(tokens, n, num_bases), 0);
    return i < 0 ? NULL : phm_kernel_table[i].image->symbol;
}

static int al16(const void* p) { return p == NULL || ((uintptr_t)p & 15u) == 0; }

/* Common path: validate, pick, grid, launch. `params` are the kernel's non-constexpr arguments. */
static CUresult launch(CUstream stream, int family, int dtype, int wfmt, int n, int tokens, int rows,
                       int k, int num_bases, int group_size, int aligned, void** params, int nparams) {
    if (n != 2 && n != 4) return fail(CUDA_ERROR_INVALID_VALUE, "n=%d not supported (2, 4)", n);
    if (num_bases < 1 || num_bases > n * n) return fail(CUDA_ERROR_INVALID_VALUE, "%s", "num_bases outside 1..n*n");
    if (tokens < 0 || rows <= 0 || k <= 0) return fail(CUDA_ERROR_INVALID_VALUE, "%s", "bad tokens/rows/k");
    if (wfmt == PHM_WFMT_INT4 && (group_size <= 0 || group_size % 2 || k % group_size))
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "int4 group_size must be even and divide k");
    if (tokens == 0) return CUDA_SUCCESS;
    const phm_driver_api* api;
    CUdevice dev;
    int sm;
    CUresult rc = current_device(&api, &dev, &sm);
    if (rc != CUDA_SUCCESS) return rc;
    int config = select_config(tokens, n, num_bases);
    int idx = find_entry(family, sm, dtype, wfmt, n, config, aligned);
    if (idx < 0 && aligned) idx = find_entry(family, sm, dtype, wfmt, n, config, 0);
    if (idx < 0) {
        return fail(CUDA_ERROR_NO_BINARY_FOR_GPU,
                    "no PHM kernel compiled for sm_%d dtype=%d wfmt=%d n=%d (rebuild with --arch)", sm,
                    dtype, wfmt, n);
    }
    const phm_kernel_image* img = phm_kernel_table[idx].image;
    const phm_tile_config* tc = tile_config(n, config);
    if (!tc || img->num_params != nparams + 2) return fail(CUDA_ERROR_INVALID_IMAGE, "%s", "kernel table mismatch");
    CUkernel kernel = g_loaded ? g_loaded[idx].kernel : NULL;
    if (!kernel)
        return fail(CUDA_ERROR_NOT_READY, "%s is not loaded: phm_kernels_prepare() must run first, outside "
                    "stream capture (the plugins do it when attached to a context and on a shape change)",
                    img->symbol);
    CUdeviceptr global_scratch = 0, profile_scratch = 0; /* Triton's trailing scratch params */
    void* args[40];
    for (int i = 0; i < nparams; ++i) args[i] = params[i];
    args[nparams] = &global_scratch;
    args[nparams + 1] = &profile_scratch;
    unsigned grid = (unsigned)(((tokens + tc->block_t - 1) / tc->block_t) * ((rows + tc->block_m - 1) / tc->block_m));
    rc = api->launchKernel((CUfunction)kernel, grid, 1, 1, (unsigned)img->threads, 1, 1,
                           (unsigned)img->shared, stream, args, NULL);
    if (rc != CUDA_SUCCESS) {
        const char* s = NULL;
        api->getErrorString(rc, &s);
        snprintf(g_error, sizeof g_error, "launching %s failed: %s", img->symbol, s ? s : "?");
    }
    return rc;
}

CUresult phm_linear_launch(CUstream stream, const phm_linear_args* a) {
    if (!a || !a->x || !a->cores || !a->bases || !a->y)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "phm_linear_launch: NULL tensor");
    if (a->weight_format != PHM_WFMT_FLOAT && !a->scales)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "quantized cores need scales");
    /* Unused pointers still need a valid-looking value; the kernels never dereference them. */
    const void* scales = a->scales ? a->scales : (const void*)a->bases;
    const void* bias = a->has_bias ? a->bias : (const void*)a->bases;
    if (a->has_bias && !a->bias) return fail(CUDA_ERROR_INVALID_VALUE, "%s", "has_bias without bias");
    int group = a->weight_format == PHM_WFMT_INT4 ? a->group_size : 1;
    int aligned = al16(a->x) && al16(a->cores) && al16(scales) && al16(bias) && al16(a->bases) &&
                  al16(a->y) && a->m % 16 == 0 && a->k % 16 == 0 && a->stride_x % 16 == 0 &&
                  a->stride_y % 16 == 0;
    void* params[] = {(void*)&a->x, (void*)&a->cores, (void*)&scales, (void*)&bias, (void*)&a->bases,
                      (void*)&a->y, (void*)&a->tokens, (void*)&a->m, (void*)&a->k, (void*)&a->num_bases,
                      (void*)&group, (void*)&a->stride_x, (void*)&a->stride_y, (void*)&a->has_bias,
                      (void*)&a->activation};
    return launch(stream, PHM_FAMILY_LINEAR, a->dtype, a->weight_format, a->n, a->tokens, a->m, a->k,
                  a->num_bases, a->group_size, aligned, params, (int)(sizeof params / sizeof params[0]));
}

CUresult phm_gate_up_launch(CUstream stream, const phm_gate_up_args* a) {
    if (!a || !a->x || !a->gate_cores || !a->up_cores || !a->bases || !a->h)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "phm_gate_up_launch: NULL tensor");
    if (a->weight_format != PHM_WFMT_FLOAT && (!a->gate_scales || !a->up_scales))
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "quantized cores need scales");
    if (a->has_bias && (!a->gate_bias || !a->up_bias))
        return fail(CUDA_ERROR_INVALID_VALUE, "%s", "has_bias without biases");
    const void* gs = a->gate_scales ? a->gate_scales : (const void*)a->bases;
    const void* us = a->up_scales ? a->up_scales : (const void*)a->bases;
    const void* gb = a->has_bias ? a->gate_bias : (const void*)a->bases;
    const void* ub = a->has_bias ? a->up_bias : (const void*)a->bases;
    int group = a->weight_format == PHM_WFMT_INT4 ? a->group_size : 1;
    int aligned = al16(a->x) && al16(a->gate_cores) && al16(a->up_cores) && al16(gs) && al16(us) &&
                  al16(gb) && al16(ub) && al16(a->bases) && al16(a->h) && a->f % 16 == 0 &&
                  a->k % 16 == 0 && a->stride_x % 16 == 0 && a->stride_h % 16 == 0;
    void* params[] = {(void*)&a->x, (void*)&a->gate_cores, (void*)&a->up_cores, (void*)&gs, (void*)&us,
                      (void*)&gb, (void*)&ub, (void*)&a->bases, (void*)&a->h, (void*)&a->tokens,
                      (void*)&a->f, (void*)&a->k, (void*)&a->num_bases, (void*)&group,
                      (void*)&a->stride_x, (void*)&a->stride_h, (void*)&a->has_bias, (void*)&a->activation};
    return launch(stream, PHM_FAMILY_GATE_UP, a->dtype, a->weight_format, a->n, a->tokens, a->f, a->k,
                  a->num_bases, a->group_size, aligned, params, (int)(sizeof params / sizeof params[0]));
}

CUresult phm_device_upload(const void* host, size_t bytes, CUdeviceptr* out) {
    const phm_driver_api* api = driver();
    if (!api || !api->memAlloc) return fail(CUDA_ERROR_NOT_INITIALIZED, "%s", "libcuda.so.1 could not be loaded");
    *out = 0;
    CUresult rc = api->memAlloc(out, bytes);
    if (rc == CUDA_SUCCESS) rc = api->memcpyHtoD(*out, host, bytes);
    if (rc != CUDA_SUCCESS) {
        if (*out) api->memFree(*out);
        *out = 0;
        return fail(rc, "device upload of %zu bytes failed", bytes);
    }
    return CUDA_SUCCESS;
}

CUresult phm_device_free(CUdeviceptr ptr) {
    const phm_driver_api* api = driver();
    if (!ptr) return CUDA_SUCCESS;
    if (!api || !api->memFree) return CUDA_ERROR_NOT_INITIALIZED;
    return api->memFree(ptr);
}
