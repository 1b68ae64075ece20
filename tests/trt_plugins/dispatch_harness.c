/* Test harness: drives phm_runtime.c's launchers through a fake CUDA driver and prints what would
 * be launched, so tests/trt_plugins/test_aot.py can compare the C dispatch with configs.select.
 * stdin lines:  family sm dtype wfmt n tokens rows k num_bases group aligned
 * stdout lines: rc symbol grid threads shared nargs int-args... */
#include "phm_driver.h"
#include "phm_kernel_table.h"
#include "phm_kernels.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int g_sm = 90;

static CUresult fake_err(CUresult c, const char** s) { (void)c; *s = "fake"; return CUDA_SUCCESS; }
static CUresult fake_dev(CUdevice* d) { *d = 0; return CUDA_SUCCESS; }
static CUresult fake_attr(int* v, CUdevice_attribute a, CUdevice d) {
    (void)d;
    *v = a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? g_sm / 10 : g_sm % 10;
    return CUDA_SUCCESS;
}
static CUresult fake_load(CUlibrary* lib, const void* code, CUjit_option* o, void** ov, unsigned int no,
                          CUlibraryOption* lo, void** lov, unsigned int nlo) {
    (void)o; (void)ov; (void)no; (void)lo; (void)lov; (void)nlo;
    *lib = (CUlibrary)code;
    return CUDA_SUCCESS;
}
static CUresult fake_unload(CUlibrary lib) {
    (void)lib;
    return CUDA_SUCCESS;
}
static CUresult fake_get(CUkernel* k, CUlibrary lib, const char* name) {
    (void)name;
    *k = (CUkernel)lib;
    return CUDA_SUCCESS;
}
static CUresult fake_setattr(CUfunction_attribute a, int v, CUkernel k, CUdevice d) {
    (void)a; (void)v; (void)k; (void)d;
    return CUDA_SUCCESS;
}
static CUresult fake_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned shared, CUstream s, void** args, void** extra) {
    (void)gy; (void)gz; (void)by; (void)bz; (void)s; (void)extra;
    const phm_kernel_image* img = NULL;
    for (int i = 0; i < phm_kernel_table_size; ++i)
        if ((const void*)phm_kernel_table[i].image->image == (const void*)f) img = phm_kernel_table[i].image;
    if (!img) { printf("-1 unknown\n"); return CUDA_ERROR_INVALID_HANDLE; }
    /* the int arguments follow the pointers: count pointer params from the family */
    int nptr = img->num_params == 17 ? 6 : 9;
    printf("0 %s %u %u %u %d", img->symbol, gx, bx, shared, img->num_params);
    for (int i = nptr; i < img->num_params - 2; ++i) printf(" %d", *(int32_t*)args[i]);
    printf("\n");
    return CUDA_SUCCESS;
}

int main(void) {
    phm_driver_api api = {fake_err, fake_dev, fake_attr, fake_load, fake_unload, fake_get, fake_setattr,
                          fake_launch, NULL, NULL, NULL};
    phm_kernels_set_driver_for_testing(&api);
    int family, dtype, wfmt, n, tokens, rows, k, nb, group, aligned;
    static char buf[1 << 16] __attribute__((aligned(256)));
    while (scanf("%d %d %d %d %d %d %d %d %d %d %d", &family, &g_sm, &dtype, &wfmt, &n, &tokens, &rows,
                 &k, &nb, &group, &aligned) == 11) {
        char* p = aligned ? buf : buf + 2; /* misaligned pointers select the generic variant */
        CUresult rc = phm_kernels_prepare(); /* the device's arch loaded first, as the plugins do */
        if (rc != CUDA_SUCCESS) {
        } else if (family == PHM_FAMILY_LINEAR) {
            phm_linear_args a = {p, p, p, p, (const float*)buf, p, tokens, rows, k, nb, group,
                                 n * k, n * rows, 1, 1, n, (phm_dtype)dtype, (phm_wfmt)wfmt};
            rc = phm_linear_launch(NULL, &a);
        } else {
            phm_gate_up_args a = {p, p, p, p, p, p, p, (const float*)buf, p, tokens, rows, k, nb, group,
                                  n * k, n * rows, 1, 1, n, (phm_dtype)dtype, (phm_wfmt)wfmt};
            rc = phm_gate_up_launch(NULL, &a);
        }
        if (rc != CUDA_SUCCESS) printf("%d %s\n", (int)rc, phm_kernels_last_error());
        fflush(stdout);
    }
    return 0;
}
