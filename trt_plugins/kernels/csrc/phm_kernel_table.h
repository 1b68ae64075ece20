/* Internal: the table aot.py generates (phm_kernel_table.c) and phm_runtime.c reads. */
#ifndef PHM_KERNEL_TABLE_H
#define PHM_KERNEL_TABLE_H

#include <stddef.h>

typedef struct {
    const char* symbol;          /* unique name: family_smXX_dtype_wfmt_nN_config_align */
    const char* entry;           /* kernel entry point inside the cubin */
    const unsigned char* image;  /* cubin */
    size_t image_size;
    int shared;                  /* dynamic shared memory bytes */
    int threads;                 /* num_warps * 32 */
    int num_params;              /* kernel parameters incl. Triton's two scratch pointers */
} phm_kernel_image;

typedef struct {
    int family, sm, dtype, wfmt, n, config, aligned;
    const phm_kernel_image* image;
} phm_kernel_entry;

typedef struct {
    int n, config, block_t, block_m, block_k;
} phm_tile_config;

/* config ids, same order as configs.CONFIG_NAMES */
#define PHM_CFG_GEMV 0
#define PHM_CFG_DECODE 1
#define PHM_CFG_PREFILL 2
#define PHM_CFG_PREFILL_MIXW 3

extern const phm_kernel_entry phm_kernel_table[];
extern const int phm_kernel_table_size;
extern const phm_tile_config phm_tile_configs[];
extern const int phm_tile_configs_size;
extern const int phm_gemv_max_t;
extern const int phm_decode_max_t;

#endif
