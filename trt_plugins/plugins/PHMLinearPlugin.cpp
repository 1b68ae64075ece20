#include "PHMLinearPlugin.h"

namespace phm
{

PHMLinearPlugin::PHMLinearPlugin(PHMConfig cfg)
    : PHMPluginBase(std::move(cfg), {kPLUGIN_NAME, kIS_FFN, kNB_INPUTS, "x, cores, scales, bias"})
{
}

std::string PHMLinearPlugin::shapeError(nvinfer1::DynamicPluginTensorDesc const* in, int64_t dIn) const
{
    return projectionShapeError(in, kCORES, dIn, "PHMLinear");
}

CUresult PHMLinearPlugin::launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* y,
    void* workspace, CUstream stream) const noexcept
{
    (void) workspace;
    auto const& x = inputDesc[kX].dims;
    auto const& cores = inputDesc[kCORES].dims;
    int32_t const dIn = static_cast<int32_t>(x.d[x.nbDims - 1]);
    phm_linear_args a{};
    a.x = inputs[kX];
    a.cores = inputs[kCORES];
    a.scales = quantized() ? inputs[kSCALES] : nullptr;
    a.bias = mCfg.hasBias ? inputs[kBIAS] : nullptr;
    a.bases = deviceBasesPtr();
    a.y = y;
    a.tokens = static_cast<int32_t>(leadingVolume(x));
    a.m = static_cast<int32_t>(cores.d[0]);
    a.k = dIn / mCfg.n;
    a.num_bases = mCfg.numBases;
    a.group_size = mCfg.groupSize;
    a.stride_x = dIn;
    a.stride_y = mCfg.n * a.m;
    a.has_bias = mCfg.hasBias;
    a.activation = mCfg.act();
    a.n = mCfg.n;
    a.dtype = toPhmDtype(inputDesc[kX].type);
    a.weight_format = mCfg.wfmt();
    return phm_linear_launch(stream, &a);
}

} // namespace phm
