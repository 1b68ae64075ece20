#include "PHMLinearPlugin.h"

#include <exception>
#include <string>

namespace phm
{

PHMLinearPlugin::PHMLinearPlugin(PHMConfig cfg)
    : PHMPluginBase(std::move(cfg), kIS_FFN)
{
}

nvinfer1::IPluginV3* PHMLinearPlugin::clone() noexcept
{
    try
    {
        return new PHMLinearPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

std::string checkProjection(PHMConfig const& cfg, nvinfer1::Dims const& cores, nvinfer1::Dims const& scales,
    nvinfer1::Dims const& bias, int64_t dIn, char const* what)
{
    std::string const w(what);
    if (cores.nbDims != 3)
        return w + " cores must be 3-D (rows, B, k)";
    if (cores.d[1] != cfg.numBases)
        return w + " cores dim 1 is " + std::to_string(cores.d[1]) + ", num_bases is " + std::to_string(cfg.numBases);
    if (dIn >= 0)
    {
        int64_t const k = cfg.wfmt() == PHM_WFMT_INT4 ? 2 * cores.d[2] : cores.d[2];
        if (dIn != cfg.n * k)
            return w + " cores expect d_in = " + std::to_string(cfg.n * k) + ", input has " + std::to_string(dIn);
        if (cfg.wfmt() == PHM_WFMT_INT4 && (k % cfg.groupSize) != 0)
            return w + " int4 group_size does not divide k = " + std::to_string(k);
        if (cfg.wfmt() == PHM_WFMT_INT4
            && (scales.nbDims != 3 || scales.d[0] != cores.d[0] || scales.d[1] != cores.d[1]
                || scales.d[2] != k / cfg.groupSize))
            return w + " int4 scales must be (rows, B, k/group_size)";
    }
    if (cfg.wfmt() == PHM_WFMT_INT8 && (scales.nbDims != 1 || scales.d[0] != cores.d[0]))
        return w + " int8 scales must be (rows,)";
    if (cfg.hasBias != 0)
    {
        int64_t vol = 1;
        for (int32_t i = 0; i < bias.nbDims; ++i)
            vol *= bias.d[i];
        if (vol != cfg.n * cores.d[0])
            return w + " bias must have n*rows = " + std::to_string(cfg.n * cores.d[0]) + " elements";
    }
    return {};
}

int32_t PHMLinearPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    if (nbInputs != kNB_INPUTS || nbOutputs != 1)
    {
        logError("PHMLinear expects 4 inputs (x, cores, scales, bias) and 1 output");
        return -1;
    }
    auto const& x = in[kX].desc.dims;
    int64_t const dIn = x.nbDims > 0 ? x.d[x.nbDims - 1] : -1;
    std::string const err
        = checkProjection(mCfg, in[kCORES].desc.dims, in[kSCALES].desc.dims, in[kBIAS].desc.dims, dIn, "PHMLinear");
    if (!err.empty())
    {
        logError(err.c_str());
        return -1;
    }
    return 0;
}

int32_t PHMLinearPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    (void) nbShapeInputs;
    if (nbInputs != kNB_INPUTS || nbOutputs != 1 || inputs[kX].nbDims < 1 || inputs[kCORES].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[kX];                                        // (..., d_in) -> (..., d_out)
    outputs[0].d[outputs[0].nbDims - 1] = exprBuilder.operation(
        nvinfer1::DimensionOperation::kPROD, *exprBuilder.constant(mCfg.n), *inputs[kCORES].d[0]);
    return 0;
}

bool PHMLinearPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    using nvinfer1::DataType;
    if (nbInputs != kNB_INPUTS || nbOutputs != 1 || inOut[pos].desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const xType = inOut[kX].desc.type;
    if (pos == kX)
    {
        // INT8 / INT4 weight-only cores take FP16 activations in and give FP16 out (spec.py).
        return mCfg.wfmt() == PHM_WFMT_FLOAT ? (xType == DataType::kFLOAT || xType == DataType::kHALF)
                                             : xType == DataType::kHALF;
    }
    if (pos == kNB_INPUTS)
    {
        return inOut[pos].desc.type == xType;                       // y
    }
    return projectionFormatOk(pos, kCORES, inOut);
}

int32_t PHMLinearPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    (void) outputDesc;
    (void) workspace;
    if (!deviceBases())
    {
        return -1;
    }
    auto const& x = inputDesc[kX].dims;
    auto const& cores = inputDesc[kCORES].dims;
    int32_t const dIn = static_cast<int32_t>(x.d[x.nbDims - 1]);
    phm_linear_args a{};
    a.x = inputs[kX];
    a.cores = inputs[kCORES];
    a.scales = mCfg.wfmt() == PHM_WFMT_FLOAT ? nullptr : inputs[kSCALES];
    a.bias = mCfg.hasBias ? inputs[kBIAS] : nullptr;
    a.bases = deviceBasesPtr();
    a.y = outputs[0];
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
    CUresult const rc = phm_linear_launch(reinterpret_cast<CUstream>(stream), &a);
    if (rc != CUDA_SUCCESS)
    {
        logError(phm_kernels_last_error());
        return -1;
    }
    return 0;
}

} // namespace phm
