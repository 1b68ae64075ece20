#include "PHMPluginBase.h"

#include <exception>

namespace phm
{

PHMPluginBase::PHMPluginBase(PHMConfig cfg, bool isFFN)
    : mCfg(std::move(cfg))
    , mIsFFN(isFFN)
    , mDeviceBases(std::make_unique<DeviceBases>())
{
    mSerializer.set(mCfg, mIsFFN);
}

// A copy shares nothing on the device: each clone (one per execution context) uploads its own bases.
PHMPluginBase::PHMPluginBase(PHMPluginBase const& other)
    : mCfg(other.mCfg)
    , mIsFFN(other.mIsFFN)
    , mDeviceBases(std::make_unique<DeviceBases>())
{
    mSerializer.set(mCfg, mIsFFN);
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

bool PHMPluginBase::projectionFormatOk(
    int32_t pos, int32_t coresPos, nvinfer1::DynamicPluginTensorDesc const* inOut) const
{
    using nvinfer1::DataType;
    DataType const xType = inOut[0].desc.type;
    bool const quantized = mCfg.wfmt() != PHM_WFMT_FLOAT;
    if (pos == coresPos)
    {
        return quantized ? inOut[pos].desc.type == DataType::kINT8 : inOut[pos].desc.type == xType;
    }
    if (pos == coresPos + 1)
    {
        return inOut[pos].desc.type == DataType::kFLOAT; // scales (or their placeholder)
    }
    return inOut[pos].desc.type == xType;                // bias (or its placeholder)
}

int32_t PHMPluginBase::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    (void) in;
    (void) nbInputs;
    (void) out;
    (void) nbOutputs;
    return 0; // every shape-dependent value is read from the descriptors in enqueue
}

nvinfer1::IPluginV3* PHMPluginBase::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    (void) context;
    try
    {
        auto* p = static_cast<PHMPluginBase*>(clone());
        // Upload the bases now, outside any CUDA graph capture of the context's enqueue.
        if (p != nullptr && !p->deviceBases())
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
    mSerializer.set(mCfg, mIsFFN);
    return mSerializer.collection();
}

} // namespace phm
