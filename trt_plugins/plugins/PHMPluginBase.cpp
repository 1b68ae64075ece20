#include "PHMPluginBase.h"

namespace phm
{

PHMPluginBase::PHMPluginBase(PHMConfig cfg, PHMOpInfo op)
    : mCfg(std::move(cfg))
    , mOp(op)
    , mDeviceBases(std::make_unique<DeviceBases>())
{
    mSerializer.set(mCfg, mOp.isFFN);
}

// A copy shares nothing on the device: each clone (one per execution context) uploads its own bases.
PHMPluginBase::PHMPluginBase(PHMPluginBase const& other)
    : mCfg(other.mCfg)
    , mOp(other.mOp)
    , mDeviceBases(std::make_unique<DeviceBases>())
{
    mSerializer.set(mCfg, mOp.isFFN);
}

nvinfer1::IPluginCapability* PHMPluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

int32_t PHMPluginBase::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs < 1)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0]; // y has x's type
    return 0;
}

int32_t PHMPluginBase::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    (void) nbShapeInputs;
    int32_t const lastCores = mOp.nbInputs - 3; // PHMLinear: its cores; PHMFFN: down's
    if (nbInputs != mOp.nbInputs || nbOutputs != 1 || inputs[0].nbDims < 1 || inputs[lastCores].nbDims != 3)
    {
        return -1;
    }
    outputs[0] = inputs[0]; // (..., d_in) -> (..., n * rows)
    outputs[0].d[outputs[0].nbDims - 1] = exprBuilder.operation(
        nvinfer1::DimensionOperation::kPROD, *exprBuilder.constant(mCfg.n), *inputs[lastCores].d[0]);
    return 0;
}

bool PHMPluginBase::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    using nvinfer1::DataType;
    if (nbInputs != mOp.nbInputs || nbOutputs != 1 || inOut[pos].desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const xType = inOut[0].desc.type;
    DataType const type = inOut[pos].desc.type;
    if (pos == 0)
    {
        // INT8 / INT4 weight-only cores take FP16 activations in and give FP16 out (spec.py).
        return quantized() ? xType == DataType::kHALF : (xType == DataType::kFLOAT || xType == DataType::kHALF);
    }
    if (pos == nbInputs)
    {
        return type == xType; // y
    }
    // The projection's (cores, scales, bias); a plain MLP's gate placeholders follow the same rules.
    int32_t const coresPos = 1 + (pos - 1) / 3 * 3;
    if (pos == coresPos)
    {
        return quantized() ? type == DataType::kINT8 : type == xType;
    }
    if (pos == coresPos + 1)
    {
        return type == DataType::kFLOAT; // scales (or their placeholder)
    }
    return type == xType;            // bias (or its placeholder)
}

int32_t PHMPluginBase::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) out;
    return guarded(mOp.name, int32_t{-1}, [&]() -> int32_t {
        if (nbInputs != mOp.nbInputs || nbOutputs != 1)
        {
            std::string const msg = std::string(mOp.name) + " expects " + std::to_string(mOp.nbInputs)
                + " inputs (" + mOp.inputs + ") and 1 output";
            logError(msg.c_str());
            return -1;
        }
        auto const& x = in[0].desc.dims;
        std::string const err = shapeError(in, x.nbDims > 0 ? x.d[x.nbDims - 1] : -1);
        if (!err.empty())
        {
            logError(err.c_str());
            return -1;
        }
        return 0;
    });
}

std::string PHMPluginBase::projectionShapeError(
    nvinfer1::DynamicPluginTensorDesc const* in, int32_t coresPos, int64_t dIn, char const* what) const
{
    nvinfer1::Dims const& cores = in[coresPos].desc.dims;
    nvinfer1::Dims const& scales = in[coresPos + 1].desc.dims;
    nvinfer1::Dims const& bias = in[coresPos + 2].desc.dims;
    std::string const w(what);
    if (cores.nbDims != 3)
        return w + " cores must be 3-D (rows, B, k)";
    if (cores.d[1] != mCfg.numBases)
        return w + " cores dim 1 is " + std::to_string(cores.d[1]) + ", num_bases is " + std::to_string(mCfg.numBases);
    if (dIn >= 0)
    {
        int64_t const k = mCfg.wfmt() == PHM_WFMT_INT4 ? 2 * cores.d[2] : cores.d[2];
        if (dIn != mCfg.n * k)
            return w + " cores expect d_in = " + std::to_string(mCfg.n * k) + ", input has " + std::to_string(dIn);
        if (mCfg.wfmt() == PHM_WFMT_INT4 && (k % mCfg.groupSize) != 0)
            return w + " int4 group_size does not divide k = " + std::to_string(k);
        if (mCfg.wfmt() == PHM_WFMT_INT4
            && (scales.nbDims != 3 || scales.d[0] != cores.d[0] || scales.d[1] != cores.d[1]
                || scales.d[2] != k / mCfg.groupSize))
            return w + " int4 scales must be (rows, B, k/group_size)";
    }
    if (mCfg.wfmt() == PHM_WFMT_INT8 && (scales.nbDims != 1 || scales.d[0] != cores.d[0]))
        return w + " int8 scales must be (rows,)";
    if (mCfg.hasBias != 0)
    {
        int64_t vol = 1;
        for (int32_t i = 0; i < bias.nbDims; ++i)
            vol *= bias.d[i];
        if (vol != mCfg.n * cores.d[0])
            return w + " bias must have n*rows = " + std::to_string(mCfg.n * cores.d[0]) + " elements";
    }
    return {};
}

bool PHMPluginBase::prepare() noexcept
{
    if (mPrepared)
    {
        return true;
    }
    if (phm_kernels_prepare() != CUDA_SUCCESS)
    {
        logError(phm_kernels_last_error());
        return false;
    }
    mPrepared = mDeviceBases->ensure(mCfg.bases);
    return mPrepared;
}

int32_t PHMPluginBase::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) in;
    (void) nbInputs;
    (void) out;
    (void) nbOutputs;
    // Every shape-dependent value is read from the descriptors in enqueue. TensorRT calls this before
    // the enqueues of new shapes, in the builder's timing as in a context, outside stream capture:
    // the plugin objects the builder times are never attached, so they are prepared here.
    return prepare() ? 0 : -1;
}

int32_t PHMPluginBase::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    (void) outputDesc;
    if (!mPrepared)
    {
        guarded(mOp.name, 0, [&] {
            logError((std::string(mOp.name) + " enqueued before attachToContext / onShapeChange prepared it: "
                "enqueue loads, allocates and copies nothing").c_str());
            return 0;
        });
        return -1;
    }
    if (launch(inputDesc, inputs, outputs[0], workspace, reinterpret_cast<CUstream>(stream)) != CUDA_SUCCESS)
    {
        logError(phm_kernels_last_error());
        return -1;
    }
    return 0;
}

phm_linear_args PHMPluginBase::projectionArgs(nvinfer1::PluginTensorDesc const* inputDesc,
    void const* const* inputs, int32_t coresPos, void const* x, int32_t strideX, void* y, int32_t strideY) const
{
    auto a = launchArgs<phm_linear_args>(inputDesc[0]);
    a.x = x;
    a.cores = inputs[coresPos];
    a.scales = quantized() ? inputs[coresPos + 1] : nullptr;
    a.bias = mCfg.hasBias ? inputs[coresPos + 2] : nullptr;
    a.y = y;
    a.m = static_cast<int32_t>(inputDesc[coresPos].dims.d[0]);
    a.k = strideX / mCfg.n;
    a.stride_x = strideX;
    a.stride_y = strideY;
    return a;
}

nvinfer1::IPluginV3* PHMPluginBase::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    (void) context;
    try
    {
        auto* p = static_cast<PHMPluginBase*>(clone());
        // Load the kernels and upload the bases now, outside any CUDA-graph capture of enqueue.
        if (p != nullptr && !p->prepare())
        {
            delete p;
            return nullptr;
        }
        return p;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* PHMPluginBase::getFieldsToSerialize() noexcept
{
    return guarded(mOp.name, static_cast<nvinfer1::PluginFieldCollection const*>(nullptr), [&] {
        mSerializer.set(mCfg, mOp.isFFN);
        return mSerializer.collection();
    });
}

} // namespace phm
