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
    int32_t const f = static_cast<int32_t>(inputDesc[kUP_CORES].dims.d[0]);
    int32_t const strideH = mCfg.n * f;
    // h lives in the workspace, 256-byte aligned
    auto* h = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace) + 255) & ~uintptr_t{255});
    CUresult rc;
    if (gated())
    {
        auto a = launchArgs<phm_gate_up_args>(inputDesc[kX]);
        a.x = inputs[kX];
        a.gate_cores = inputs[kGATE_CORES];
        a.up_cores = inputs[kUP_CORES];
        a.gate_scales = quantized() ? inputs[kGATE_SCALES] : nullptr;
        a.up_scales = quantized() ? inputs[kUP_SCALES] : nullptr;
        a.gate_bias = mCfg.hasBias ? inputs[kGATE_BIAS] : nullptr;
        a.up_bias = mCfg.hasBias ? inputs[kUP_BIAS] : nullptr;
        a.h = h;
        a.f = f;
        a.k = dModel / mCfg.n;
        a.stride_x = dModel;
        a.stride_h = strideH;
        rc = phm_gate_up_launch(stream, &a);
    }
    else
    {
        // plain: up with the activation is a PHMLinear
        phm_linear_args const a = projectionArgs(inputDesc, inputs, kUP_CORES, inputs[kX], dModel, h, strideH);
        rc = phm_linear_launch(stream, &a);
    }
    if (rc == CUDA_SUCCESS)
    {
        phm_linear_args d = projectionArgs(inputDesc, inputs, kDOWN_CORES, h, strideH, y, dModel);
        d.activation = PHM_ACT_NONE;
        rc = phm_linear_launch(stream, &d);
    }
    return rc;
}

} // namespace phm
