// Test harness: exercises the PHM IPluginV3 plugins (built without static registration) against
// the public TensorRT headers, with a fake CUDA driver, and prints what they do. Driven by
// tests/trt_plugins/test_plugins_harness.py, which compares the output with phm.trt_plugins.spec.
#include "PHMFFNPlugin.h"
#include "PHMLinearPlugin.h"
#include "phm_driver.h"
#include "phm_kernel_table.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
// What the fake driver saw: synchronous calls made while an enqueue ran (none allowed), unloads,
// shared-memory opt-ins per device; gDevice is the current context's device, gFailGet a kernel lookup
// that fails (a half-done load).
int gInEnqueue = 0, gSyncInEnqueue = 0, gUnloads = 0, gSmemDev70 = 0, gFailGet = 0;
CUdevice gDevice = 0;
void sync() { gSyncInEnqueue += gInEnqueue; }
CUresult fakeErr(CUresult, char const** s) { *s = "fake"; return CUDA_SUCCESS; }
CUresult fakeDev(CUdevice* d) { *d = gDevice; return CUDA_SUCCESS; }
CUresult fakeAttr(int* v, CUdevice_attribute a, CUdevice) { *v = a == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? 9 : 0; return CUDA_SUCCESS; }
CUresult fakeLoad(CUlibrary* lib, void const* code, CUjit_option*, void**, unsigned, CUlibraryOption*, void**, unsigned)
{
    sync();
    *lib = (CUlibrary) code;
    return CUDA_SUCCESS;
}
CUresult fakeUnload(CUlibrary) { sync(); ++gUnloads; return CUDA_SUCCESS; }
CUresult fakeGet(CUkernel* k, CUlibrary lib, char const*)
{
    if (gFailGet)
        return CUDA_ERROR_NOT_FOUND;
    *k = (CUkernel) lib;
    return CUDA_SUCCESS;
}
CUresult fakeSetAttr(CUfunction_attribute, int, CUkernel, CUdevice dev) { sync(); gSmemDev70 += dev == 70; return CUDA_SUCCESS; }
CUresult fakeLaunch(CUfunction f, unsigned gx, unsigned, unsigned, unsigned bx, unsigned, unsigned, unsigned,
    CUstream, void** args, void**)
{
    for (int i = 0; i < phm_kernel_table_size; ++i)
    {
        phm_kernel_image const* img = phm_kernel_table[i].image;
        if ((void const*) img->image == (void const*) f)
        {
            int nptr = img->num_params == 17 ? 6 : 9;
            std::printf("launch %s grid=%u threads=%u ints=", img->symbol, gx, bx);
            for (int j = nptr; j < img->num_params - 2; ++j)
                std::printf("%d,", *(int32_t*) args[j]);
            std::printf("\n");
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_HANDLE;
}
alignas(256) unsigned char gDeviceHeap[1 << 16];
size_t gHeapUsed = 0;
CUresult fakeAlloc(CUdeviceptr* p, size_t n) { sync(); *p = (CUdeviceptr) (gDeviceHeap + gHeapUsed); gHeapUsed += (n + 255) & ~size_t{255}; return CUDA_SUCCESS; }
CUresult fakeCopy(CUdeviceptr d, void const* h, size_t n) { sync(); std::memcpy((void*) d, h, n); return CUDA_SUCCESS; }
CUresult fakeFree(CUdeviceptr) { sync(); return CUDA_SUCCESS; }

char const* typeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    default: return "other";
    }
}

// Fields the way the ONNX parser passes them: INT -> int32, FLOATS -> float32, STRING -> chars (no NUL).
struct Fields
{
    int32_t n{2}, nb{2}, group{16}, hasBias{1};
    std::vector<float> bases{1, 0, 0, 1, 0, -1, 1, 0};
    std::string wfmt{"int4"}, act{"silu"}, mlp{"swiglu"};
    std::vector<PluginField> f;
    PluginFieldCollection fc{};
    PluginFieldCollection const* get(bool ffn)
    {
        f = {PluginField("n", &n, PluginFieldType::kINT32, 1), PluginField("num_bases", &nb, PluginFieldType::kINT32, 1),
            PluginField("bases", bases.data(), PluginFieldType::kFLOAT32, (int32_t) bases.size()),
            PluginField("weight_format", wfmt.data(), PluginFieldType::kCHAR, (int32_t) wfmt.size()),
            PluginField("group_size", &group, PluginFieldType::kINT32, 1),
            PluginField("has_bias", &hasBias, PluginFieldType::kINT32, 1),
            PluginField("activation", act.data(), PluginFieldType::kCHAR, (int32_t) act.size())};
        if (ffn)
            f.emplace_back("mlp_type", mlp.data(), PluginFieldType::kCHAR, (int32_t) mlp.size());
        fc.nbFields = (int32_t) f.size();
        fc.fields = f.data();
        return &fc;
    }
};

std::string dumpFields(PluginFieldCollection const* fc)
{
    std::string s;
    for (int i = 0; i < fc->nbFields; ++i)
    {
        auto const& f = fc->fields[i];
        s += std::string(f.name) + ":" + typeName(f.type) + "=";
        if (f.type == PluginFieldType::kCHAR)
            s += std::string((char const*) f.data);
        else if (f.type == PluginFieldType::kINT32)
            s += std::to_string(*(int32_t const*) f.data);
        else
            for (int j = 0; j < f.length; ++j)
                s += std::to_string((int) ((float const*) f.data)[j]) + "|";
        s += " ";
    }
    return s;
}

int enqueue(IPluginV3OneRuntime* rt, PluginTensorDesc const* in, PluginTensorDesc const* out, void const* const* inputs,
    void* const* outputs, void* workspace)
{
    gInEnqueue = 1;
    int rc = rt->enqueue(in, out, inputs, outputs, workspace, nullptr);
    gInEnqueue = 0;
    return rc;
}

DynamicPluginTensorDesc desc(DataType t, std::vector<int64_t> dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = (int32_t) dims.size();
    for (size_t i = 0; i < dims.size(); ++i)
        d.desc.dims.d[i] = d.min.d[i] = d.max.d[i] = dims[i];
    d.min.nbDims = d.max.nbDims = d.desc.dims.nbDims;
    return d;
}
} // namespace

int main()
{
    phm_driver_api api{fakeErr, fakeDev, fakeAttr, fakeLoad, fakeUnload, fakeGet, fakeSetAttr, fakeLaunch, fakeAlloc,
        fakeCopy, fakeFree};
    phm_kernels_set_driver_for_testing(&api);
    // a kernel lookup that fails after its library loaded: the library is unloaded, the error reported
    gFailGet = 1;
    int halfRc = phm_kernels_prepare();
    std::printf("half_failed rc=%d unloads=%d\n", halfRc, gUnloads);
    gFailGet = 0;
    int32_t nb = 0;
    auto* const* creators = getCreators(nb);
    std::printf("creators %d\n", nb);
    for (int i = 0; i < nb; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        std::printf("creator %s %s %s fields=", c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace());
        auto const* fn = c->getFieldNames();
        for (int j = 0; j < fn->nbFields; ++j)
            std::printf("%s:%s,", fn->fields[j].name, typeName(fn->fields[j].type));
        std::printf("\n");
    }
    auto* linC = static_cast<IPluginCreatorV3One*>(creators[0]);
    auto* ffnC = static_cast<IPluginCreatorV3One*>(creators[1]);

    // PHMLinear, int4 cores, fp16: x (2, 3, 64) -> n=2, k=32, m=48, B=2, group 16
    Fields fl;
    IPluginV3* p = linC->createPlugin("lin", fl.get(false), TensorRTPhase::kBUILD);
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::printf("plugin %s %s %s outputs=%d\n", core->getPluginName(), core->getPluginVersion(),
        core->getPluginNamespace(), build->getNbOutputs());
    std::string ser = dumpFields(rt->getFieldsToSerialize());
    std::printf("serialized %s\n", ser.c_str());
    IPluginV3* p2 = linC->createPlugin("lin", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::printf("roundtrip %d\n", ser == dumpFields(rt2->getFieldsToSerialize()) ? 1 : 0);

    DynamicPluginTensorDesc io[5] = {desc(DataType::kHALF, {2, 3, 64}), desc(DataType::kINT8, {48, 2, 16}),
        desc(DataType::kFLOAT, {48, 2, 2}), desc(DataType::kHALF, {96}), desc(DataType::kHALF, {2, 3, 96})};
    std::printf("formats");
    for (int pos = 0; pos < 5; ++pos)
        std::printf(" %d", build->supportsFormatCombination(pos, io, 4, 1) ? 1 : 0);
    io[0].desc.type = DataType::kFLOAT;
    std::printf(" x_fp32_with_int4=%d", build->supportsFormatCombination(0, io, 4, 1) ? 1 : 0);
    io[0].desc.type = DataType::kHALF;
    io[1].desc.type = DataType::kHALF;
    std::printf(" fp16_cores_for_int4=%d\n", build->supportsFormatCombination(1, io, 4, 1) ? 1 : 0);
    io[1].desc.type = DataType::kINT8;
    std::printf("configure ok=%d", build->configurePlugin(io, 4, io + 4, 1));
    DynamicPluginTensorDesc bad = desc(DataType::kINT8, {48, 2, 8});
    DynamicPluginTensorDesc io2[5] = {io[0], bad, io[2], io[3], io[4]};
    std::printf(" bad=%d\n", build->configurePlugin(io2, 4, io2 + 4, 1));

    IPluginV3* ctxPlugin = rt->attachToContext(nullptr);
    auto* crt = static_cast<IPluginV3OneRuntime*>(ctxPlugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc in[4], out[1];
    for (int i = 0; i < 4; ++i)
        in[i] = io[i].desc;
    out[0] = io[4].desc;
    alignas(256) static unsigned char buf[4096];
    void const* inputs[4] = {buf, buf, buf, buf};
    void* outputs[1] = {buf};
    std::printf("enqueue %d\n", enqueue(crt, in, out, inputs, outputs, nullptr));
    in[0].dims.d[0] = 1; in[0].dims.d[1] = 1;   // decode step: T = 1
    std::printf("enqueue %d\n", enqueue(crt, in, out, inputs, outputs, nullptr));
    // the build-time plugin (never attached, as the builder's timing copies): enqueue refuses until a
    // shape change prepared it, and then launches without any synchronous call
    std::printf("unprepared_enqueue %d\n", enqueue(rt, in, out, inputs, outputs, nullptr));
    std::printf("shape_change %d\n", rt->onShapeChange(in, 4, out, 1));
    std::printf("prepared_enqueue %d\n", enqueue(rt, in, out, inputs, outputs, nullptr));

    // invalid fields -> nullptr
    Fields badF;
    badF.n = 3;
    std::printf("bad_n %d\n", linC->createPlugin("x", badF.get(false), TensorRTPhase::kBUILD) == nullptr ? 1 : 0);
    Fields badB;
    badB.bases.pop_back();
    std::printf("bad_bases %d\n", ffnC->createPlugin("x", badB.get(true), TensorRTPhase::kBUILD) == nullptr ? 1 : 0);

    // PHMFFN swiglu fp32 float: x (5, 32) n=2 k=16, f=40, B=3
    Fields ff;
    ff.nb = 3;
    ff.bases = {1, 0, 0, 1, 0, -1, 1, 0, 1, 0, 0, -1};
    ff.wfmt = "float";
    ff.group = 0;
    ff.act = "gelu_tanh";
    IPluginV3* q = ffnC->createPlugin("ffn", ff.get(true), TensorRTPhase::kBUILD);
    auto* qb = static_cast<IPluginV3OneBuild*>(q->getCapabilityInterface(PluginCapabilityType::kBUILD));
    DynamicPluginTensorDesc fio[11] = {desc(DataType::kFLOAT, {5, 32}), desc(DataType::kFLOAT, {40, 3, 16}),
        desc(DataType::kFLOAT, {1}), desc(DataType::kFLOAT, {80}), desc(DataType::kFLOAT, {40, 3, 16}),
        desc(DataType::kFLOAT, {1}), desc(DataType::kFLOAT, {80}), desc(DataType::kFLOAT, {16, 3, 40}),
        desc(DataType::kFLOAT, {1}), desc(DataType::kFLOAT, {32}), desc(DataType::kFLOAT, {5, 32})};
    int okAll = 1;
    for (int pos = 0; pos < 11; ++pos)
        okAll &= qb->supportsFormatCombination(pos, fio, 10, 1) ? 1 : 0;
    std::printf("ffn formats=%d configure=%d workspace=%zu\n", okAll, qb->configurePlugin(fio, 10, fio + 10, 1),
        qb->getWorkspaceSize(fio, 10, fio + 10, 1));
    auto* qrt = static_cast<IPluginV3OneRuntime*>(q->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    IPluginV3* qctx = qrt->attachToContext(nullptr);
    auto* qcrt = static_cast<IPluginV3OneRuntime*>(qctx->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc fin[10], fout[1];
    for (int i = 0; i < 10; ++i)
        fin[i] = fio[i].desc;
    fout[0] = fio[10].desc;
    void const* finputs[10] = {buf, buf, buf, buf, buf, buf, buf, buf, buf, buf};
    std::printf("enqueue %d\n", enqueue(qcrt, fin, fout, finputs, outputs, buf + 1024));
    std::printf("sync_in_enqueue %d\n", gSyncInEnqueue);
    // a context on device 70: its prepare raises every big-shared-memory kernel's limit there
    gDevice = 70;
    int devRc = phm_kernels_prepare();
    std::printf("device70 rc=%d smem_optins=%d\n", devRc, gSmemDev70);
    delete p;
    delete p2;
    delete ctxPlugin;
    delete q;
    delete qctx;
    return 0;
}
