#include "PHMFFNPlugin.h"

namespace phm
{

PHMFFNPlugin::PHMFFNPlugin(PHMConfig cfg)
    : PHMPluginBase(std::move(cfg), {kPLUGIN_NAME, kIS_FFN, kNB_INPUTS, "x, gate/up/down cores, scales, bias"})
{
}

std::string PHMFFNPlugin::shapeError(nvinfer1::DynamicPluginTensorDesc const* in, int64_t dModel) const
{
    std::string err;
    if (gated())
    {
        err = projectionShapeError(in, kGATE_CORES, dModel, "PHMFFN gate");
    }
    if (err.empty())
    {
        err = projectionShapeError(in, kUP_CORES, dModel, "PHMFFN up");
    }
    if (err.empty())
    {
        int64_t const up = in[kUP_CORES].desc.dims.d[0];
        err = projectionShapeError(in, kDOWN_CORES, up >= 0 ? mCfg.n * up : -1, "PHMFFN down");
    }
    if (err.empty() && gated() && in[kGATE_CORES].desc.dims.d[0] != in[kUP_CORES].desc.dims.d[0])
    {
        err = "PHMFFN gate and up cores differ in rows";
    }
    return err;
}

size_t PHMFFNPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept
{
    (void) outputs;
    (void) nbOutputs;
    if (nbInputs != kNB_INPUTS)
    {
        return 0;
    }
    int64_t const tokens = leadingVolume(inputs[kX].max);
    int64_t const rows = inputs[kUP_CORES].max.d[0];
    size_t const elem = inputs[kX].desc.type == nvinfer1::DataType::kHALF ? 2 : 4;
    return static_cast<size_t>(tokens * mCfg.n * rows) * elem + 256;
}

CUresult PHMFFNPlugin::launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* y,
    void* workspace, CUstream stream) const noexcept
{
    auto const& x = inputDesc[kX].dims;
    int32_t const dModel = static_cast<int32_t>(x.d[x.nbDims - 1]);
    int32_t const tokens = static_cast<int32_t>(leadingVolume(x));
    int32_t const f = static_cast<int32_t>(inputDesc[kUP_CORES].dims.d[0]);
    // h lives in the workspace, 256-byte aligned
    auto* h = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace) + 255) & ~uintptr_t{255});
    CUresult rc;
    if (gated())
    {
        phm_gate_up_args a{};
        a.x = inputs[kX];
        a.gate_cores = inputs[kGATE_CORES];
        a.up_cores = inputs[kUP_CORES];
        a.gate_scales = quantized() ? inputs[kGATE_SCALES] : nullptr;
        a.up_scales = quantized() ? inputs[kUP_SCALES] : nullptr;
        a.gate_bias = mCfg.hasBias ? inputs[kGATE_BIAS] : nullptr;
        a.up_bias = mCfg.hasBias ? inputs[kUP_BIAS] : nullptr;
        a.bases = deviceBasesPtr();
        a.h = h;
        a.tokens = tokens;
        a.f = f;
        a.k = dModel / mCfg.n;
        a.num_bases = mCfg.numBases;
        a.group_size = mCfg.groupSize;
        a.stride_x = dModel;
        a.stride_h = mCfg.n * f;
        a.has_bias = mCfg.hasBias;
        a.activation = mCfg.act();
        a.n = mCfg.n;
        a.dtype = toPhmDtype(inputDesc[kX].type);
        a.weight_format = mCfg.wfmt();
        rc = phm_gate_up_launch(stream, &a);
    }
    else
    {
        phm_linear_args a{};
        a.x = inputs[kX];
        a.cores = inputs[kUP_CORES];
        a.scales = quantized() ? inputs[kUP_SCALES] : nullptr;
        a.bias = mCfg.hasBias ? inputs[kUP_BIAS] : nullptr;
        a.bases = deviceBasesPtr();
        a.y = h;
        a.tokens = tokens;
        a.m = f;
        a.k = dModel / mCfg.n;
        a.num_bases = mCfg.numBases;
        a.group_size = mCfg.groupSize;
        a.stride_x = dModel;
        a.stride_y = mCfg.n * f;
        a.has_bias = mCfg.hasBias;
        a.activation = mCfg.act();
        a.n = mCfg.n;
        a.dtype = toPhmDtype(inputDesc[kX].type);
        a.weight_format = mCfg.wfmt();
        rc = phm_linear_launch(stream, &a);
    }
    if (rc == CUDA_SUCCESS)
    {
        phm_linear_args d{};
        d.x = h;
        d.cores = inputs[kDOWN_CORES];
        d.scales = quantized() ? inputs[kDOWN_SCALES] : nullptr;
        d.bias = mCfg.hasBias ? inputs[kDOWN_BIAS] : nullptr;
        d.bases = deviceBasesPtr();
        d.y = y;
        d.tokens = tokens;
        d.m = static_cast<int32_t>(inputDesc[kDOWN_CORES].dims.d[0]);
        d.k = f;
        d.num_bases = mCfg.numBases;
        d.group_size = mCfg.groupSize;
        d.stride_x = mCfg.n * f;
        d.stride_y = dModel;
        d.has_bias = mCfg.hasBias;
        d.activation = PHM_ACT_NONE;
        d.n = mCfg.n;
        d.dtype = toPhmDtype(inputDesc[kX].type);
        d.weight_format = mCfg.wfmt();
        rc = phm_linear_launch(stream, &d);
    }
    return rc;
}

} // namespace phm
