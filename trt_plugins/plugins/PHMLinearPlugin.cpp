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
    int32_t const dIn = static_cast<int32_t>(x.d[x.nbDims - 1]);
    int32_t const m = static_cast<int32_t>(inputDesc[kCORES].dims.d[0]);
    phm_linear_args const a = projectionArgs(inputDesc, inputs, kCORES, inputs[kX], dIn, y, mCfg.n * m);
    return phm_linear_launch(stream, &a);
}

} // namespace phm
