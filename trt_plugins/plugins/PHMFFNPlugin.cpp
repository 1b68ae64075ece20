#include "PHMFFNPlugin.h"
#include "PHMLinearPlugin.h" // checkProjection

#include <exception>
#include <string>

namespace phm
{

PHMFFNPlugin::PHMFFNPlugin(PHMConfig cfg)
    : PHMPluginBase(std::move(cfg), kIS_FFN)
{
}

nvinfer1::IPluginV3* PHMFFNPlugin::clone() noexcept
{
    try
    {
        return new PHMFFNPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

int32_t PHMFFNPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    if (nbInputs != kNB_INPUTS || nbOutputs != 1)
    {
        logError("PHMFFN expects 10 inputs (x, gate/up/down cores, scales, bias) and 1 output");
        return -1;
    }
    auto const& x = in[kX].desc.dims;
    int64_t const dModel = x.nbDims > 0 ? x.d[x.nbDims - 1] : -1;
    std::string err;
    if (gated())
    {
        err = checkProjection(mCfg, in[kGATE_CORES].desc.dims, in[kGATE_SCALES].desc.dims, in[kGATE_BIAS].desc.dims,
            dModel, "PHMFFN gate");
    }
    if (err.empty())
    {
        err = checkProjection(mCfg, in[kUP_CORES].desc.dims, in[kUP_SCALES].desc.dims, in[kUP_BIAS].desc.dims,
            dModel, "PHMFFN up");
    }
    if (err.empty())
    {
        int64_t const up = in[kUP_CORES].desc.dims.d[0];
        err = checkProjection(mCfg, in[kDOWN_CORES].desc.dims, in[kDOWN_SCALES].desc.dims,
            in[kDOWN_BIAS].desc.dims, up >= 0 ? mCfg.n * up : -1, "PHMFFN down");
    }
    if (err.empty() && gated() && in[kGATE_CORES].desc.dims.d[0] != in[kUP_CORES].desc.dims.d[0])
    {
        err = "PHMFFN gate and up cores differ in rows";
    }
    if (!err.empty())
    {
        logError(err.c_str());
        return -1;
    }
    return 0;
}

int32_t PHMFFNPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    (void) nbShapeInputs;
    if (nbInputs != kNB_INPUTS || nbOutputs != 1 || inputs[kX].nbDims < 1 || inputs[kDOWN_CORES].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[kX];
    outputs[0].d[outputs[0].nbDims - 1] = exprBuilder.operation(
        nvinfer1::DimensionOperation::kPROD, *exprBuilder.constant(mCfg.n), *inputs[kDOWN_CORES].d[0]);
    return 0;
}

bool PHMFFNPlugin::supportsFormatCombination(
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
        return mCfg.wfmt() == PHM_WFMT_FLOAT ? (xType == DataType::kFLOAT || xType == DataType::kHALF)
                                             : xType == DataType::kHALF;
    }
    if (pos == kNB_INPUTS)
    {
        return inOut[pos].desc.type == xType;
    }
    int32_t const coresPos = pos < kUP_CORES ? kGATE_CORES : pos < kDOWN_CORES ? kUP_CORES : kDOWN_CORES;
    if (!gated() && coresPos == kGATE_CORES)
    {
        // plain MLP: gate inputs are placeholders; accept the documented placeholder types
        return pos == kGATE_SCALES ? inOut[pos].desc.type == DataType::kFLOAT
                                   : projectionFormatOk(pos, coresPos, inOut);
    }
    return projectionFormatOk(pos, coresPos, inOut);
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

int32_t PHMFFNPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    (void) outputDesc;
    if (!deviceBases())
    {
        return -1;
    }
    auto const& x = inputDesc[kX].dims;
    int32_t const dModel = static_cast<int32_t>(x.d[x.nbDims - 1]);
    int32_t const tokens = static_cast<int32_t>(leadingVolume(x));
    int32_t const f = static_cast<int32_t>(inputDesc[kUP_CORES].dims.d[0]);
    bool const quantized = mCfg.wfmt() != PHM_WFMT_FLOAT;
    // h lives in the workspace, 256-byte aligned
    auto* h = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace) + 255) & ~uintptr_t{255});
    CUstream const s = reinterpret_cast<CUstream>(stream);
    CUresult rc;
    if (gated())
    {
        phm_gate_up_args a{};
        a.x = inputs[kX];
        a.gate_cores = inputs[kGATE_CORES];
        a.up_cores = inputs[kUP_CORES];
        a.gate_scales = quantized ? inputs[kGATE_SCALES] : nullptr;
        a.up_scales = quantized ? inputs[kUP_SCALES] : nullptr;
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
        rc = phm_gate_up_launch(s, &a);
    }
    else
    {
        phm_linear_args a{};
        a.x = inputs[kX];
        a.cores = inputs[kUP_CORES];
        a.scales = quantized ? inputs[kUP_SCALES] : nullptr;
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
        rc = phm_linear_launch(s, &a);
    }
    if (rc == CUDA_SUCCESS)
    {
        phm_linear_args d{};
        d.x = h;
        d.cores = inputs[kDOWN_CORES];
        d.scales = quantized ? inputs[kDOWN_SCALES] : nullptr;
        d.bias = mCfg.hasBias ? inputs[kDOWN_BIAS] : nullptr;
        d.bases = deviceBasesPtr();
        d.y = outputs[0];
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
        rc = phm_linear_launch(s, &d);
    }
    if (rc != CUDA_SUCCESS)
    {
        logError(phm_kernels_last_error());
        return -1;
    }
    return 0;
}

} // namespace phm
