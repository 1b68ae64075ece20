/* TensorRT stand-in: a fake libcuda.so.1 (the CUDA driver the PHM launcher dlopens) that executes
 * every kernel launch on the host with a plain C reference of the PHM op, so the plugins' outputs
 * can be compared with ONNX Runtime's. "Device" memory is host memory (cuMemAlloc = malloc).
 *
 * The fake cubins of the stand-in build are "\x7fELF" + the kernel's symbol + NUL
 * (e.g. phm_gate_up_sm90_fp16_int8_n2_decode_a16): cuLibraryLoadData reads the symbol, and a launch
 * decodes family, dtype and weight format from it and reads the arguments in the order
 * kernels/csrc/phm_runtime.c passes them:
 *   linear:  x, cores, scales, bias, bases, y, tokens, m, k, B, group, stride_x, stride_y, has_bias, act
 *   gate_up: x, gate_cores, up_cores, gate_scales, up_scales, gate_bias, up_bias, bases, h,
 *            tokens, f, k, B, group, stride_x, stride_h, has_bias, act
 * Math (trainer/hypercomplex.phm_forward; cores (m, B, k), bases (B, n, n) fp32):
 *   y[t, i·m + r] = act(Σ_b Σ_c (Σ_j H_b[i, j] x[t, j·k + c]) A_b[r, c] + bias[i·m + r])
 *   INT8 A = q · scale[r]; INT4 A = nibble(q[r, b, c/2]) · scale[r, b, c/G] (low nibble first).
 * STANDIN_SM (default 90) is the device's arch; cuMemAlloc counts how often it was called; the
 * driver queries phm-doctor makes are answered too (STANDIN_DRIVER_CUDA, default 12.6). */
#include <cuda.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char symbol[160];
} fake_kernel;

CUresult cuGetErrorString(CUresult error, const char** str) {
    static char buf[64];
    snprintf(buf, sizeof buf, "fake CUDA error %d", (int)error);
    *str = buf;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice(CUdevice* device) { *device = 0; return CUDA_SUCCESS; }
/* what phm-doctor asks a driver: STANDIN_DRIVER_CUDA (default 12.6) is the driver's CUDA version */
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* version) {
    const char* env = getenv("STANDIN_DRIVER_CUDA");
    int major = 12, minor = 6;
    if (env) sscanf(env, "%d.%d", &major, &minor);
    *version = major * 1000 + minor * 10;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* count) { *count = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    (void)dev;
    snprintf(name, (size_t)len, "%s", "TensorRT stand-in GPU");
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) { (void)dev; *pctx = (CUcontext)1; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext ctx) { (void)ctx; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
    (void)dev;
    const char* env = getenv("STANDIN_SM");
    int sm = env ? atoi(env) : 90;
    *pi = attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? sm / 10 : sm % 10;
    return CUDA_SUCCESS;
}
CUresult cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option* jitOptions, void** jitOptionsValues,
                           unsigned int numJitOptions, CUlibraryOption* libraryOptions, void** libraryOptionValues,
                           unsigned int numLibraryOptions) {
    (void)jitOptions; (void)jitOptionsValues; (void)numJitOptions; (void)libraryOptions; (void)libraryOptionValues;
    (void)numLibraryOptions;
    const char* c = (const char*)code;
    if (memcmp(c, "\x7f" "ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
    fake_kernel* k = calloc(1, sizeof *k);
    snprintf(k->symbol, sizeof k->symbol, "%s", c + 4);
    *library = (CUlibrary)k;
    return CUDA_SUCCESS;
}
CUresult cuLibraryUnload(CUlibrary library) { free(library); return CUDA_SUCCESS; }
CUresult cuLibraryGetKernel(CUkernel* pKernel, CUlibrary library, const char* name) {
    (void)name;
    *pKernel = (CUkernel)library;
    return CUDA_SUCCESS;
}
CUresult cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev) {
    (void)attrib; (void)val; (void)kernel; (void)dev;
    return CUDA_SUCCESS;
}
int standin_allocations;
CUresult cuMemAlloc(CUdeviceptr* dptr, size_t bytesize) {
    void* p = NULL;
    if (posix_memalign(&p, 256, bytesize ? bytesize : 1)) return CUDA_ERROR_OUT_OF_MEMORY;
    ++standin_allocations;
    *dptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) { memcpy((void*)dst, src, bytes); return CUDA_SUCCESS; }
CUresult cuMemFree(CUdeviceptr dptr) { free((void*)dptr); return CUDA_SUCCESS; }

/* --- the reference ---------------------------------------------------------------------------- */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
    if (exp == 0) {
        if (man == 0) f = sign;
        else {  /* subnormal */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; --exp; }
            f = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) f = sign | 0x7f800000u | (man << 13);
    else f = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float out;
    memcpy(&out, &f, 4);
    return out;
}
static uint16_t float_to_half(float v) {  /* round to nearest even */
    uint32_t f;
    memcpy(&f, &v, 4);
    uint32_t sign = (f >> 16) & 0x8000;
    int32_t exp = (int32_t)((f >> 23) & 0xff) - 127 + 15;
    uint32_t man = f & 0x7fffff;
    if (((f >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp), half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) ++half;
        return (uint16_t)(sign | half);
    }
    uint32_t half = (uint32_t)(exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;
    return (uint16_t)(sign | half);
}
static float load(const void* p, long i, int fp16) {
    return fp16 ? half_to_float(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}
static void store(void* p, long i, float v, int fp16) {
    if (fp16) ((uint16_t*)p)[i] = float_to_half(v);
    else ((float*)p)[i] = v;
}
static float act(float v, int a) {
    switch (a) {
    case 1: return v / (1.0f + expf(-v));                                              /* silu */
    case 2: return 0.5f * v * (1.0f + erff(v / sqrtf(2.0f)));                          /* gelu */
    case 3: return 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));  /* gelu_tanh */
    case 4: return v > 0 ? v : 0;                                                      /* relu */
    default: return v;
    }
}

typedef struct { int fp16, wfmt, n; } kind;   /* wfmt 0 float, 1 int8, 2 int4 */

static float core(const void* cores, const float* scales, kind kd, int r, int b, int c, int B, int k, int group) {
    long i = ((long)r * B + b) * k + c;
    if (kd.wfmt == 0) return load(cores, i, kd.fp16);
    if (kd.wfmt == 1) return ((const int8_t*)cores)[i] * scales[r];
    int8_t byte = ((const int8_t*)cores)[((long)r * B + b) * (k / 2) + c / 2];
    int q = c % 2 ? (byte >> 4) & 0xf : byte & 0xf;
    q = (q ^ 8) - 8;
    return q * scales[((long)r * B + b) * (k / group) + c / group];
}

/* One projection's weights: cores, their scales (quantized cores) and bias (read iff has_bias). */
typedef struct {
    const void* cores;
    const float* scales;
    const void* bias;
} projection;

/* out[t, i·rows + r] of one projection, bias added, before the activation */
static float project(const void* x, int stride_x, projection p, int has_bias, const float* bases, kind kd,
                     int t, int i, int r, int rows, int B, int k, int group) {
    double acc = 0;
    for (int b = 0; b < B; ++b)
        for (int c = 0; c < k; ++c) {
            double z = 0;
            for (int j = 0; j < kd.n; ++j)
                z += bases[(b * kd.n + i) * kd.n + j] * load(x, (long)t * stride_x + (long)j * k + c, kd.fp16);
            acc += z * core(p.cores, p.scales, kd, r, b, c, B, k, group);
        }
    return (float)acc + (has_bias ? load(p.bias, (long)i * rows + r, kd.fp16) : 0.0f);
}

static kind parse(const char* symbol, int* gate_up) {
    kind kd = {0, 0, 2};
    *gate_up = strncmp(symbol, "phm_gate_up_", 12) == 0;
    kd.fp16 = strstr(symbol, "_fp16_") != NULL;
    kd.wfmt = strstr(symbol, "_int8_") ? 1 : strstr(symbol, "_int4_") ? 2 : 0;
    kd.n = strstr(symbol, "_n4_") ? 4 : 2;
    return kd;
}

#define PTR(i) (*(void**)params[i])
#define INT(i) (*(int32_t*)params[i])

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream stream, void** params, void** extra) {
    (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)stream; (void)extra;
    int gate_up;
    kind kd = parse(((fake_kernel*)f)->symbol, &gate_up);
    projection up, gate = {0};
    const float* bases;
    void* out;
    int first;  /* index of the first int argument (tokens) */
    if (gate_up) {
        gate = (projection){PTR(1), PTR(3), PTR(5)};
        up = (projection){PTR(2), PTR(4), PTR(6)};
        bases = PTR(7), out = PTR(8), first = 9;
    } else {
        up = (projection){PTR(1), PTR(2), PTR(3)};
        bases = PTR(4), out = PTR(5), first = 6;
    }
    const void* x = PTR(0);
    int T = INT(first), rows = INT(first + 1), k = INT(first + 2), B = INT(first + 3), group = INT(first + 4),
        sx = INT(first + 5), so = INT(first + 6), has_bias = INT(first + 7), a = INT(first + 8);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < kd.n; ++i)
            for (int r = 0; r < rows; ++r) {
                float u = project(x, sx, up, has_bias, bases, kd, t, i, r, rows, B, k, group);
                /* linear: act(up); gate_up: act(gate) * up, the fused first half of a SwiGLU PHMFFN */
                float v = gate_up ? act(project(x, sx, gate, has_bias, bases, kd, t, i, r, rows, B, k, group), a) * u
                                  : act(u, a);
                store(out, (long)t * so + (long)i * rows + r, v, kd.fp16);
            }
    return CUDA_SUCCESS;
}
