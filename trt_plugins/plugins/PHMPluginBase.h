/*
 * IPluginV3 boilerplate shared by PHMLinear and PHMFFN: capability dispatch, names, fields to
 * serialise, per-context device bases. Subclasses implement shapes, formats, workspace, enqueue.
 */
#pragma once

#include "PHMPluginCommon.h"

#include <memory>

namespace phm
{

class PHMPluginBase : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime
{
public:
    PHMPluginBase(PHMConfig cfg, bool isFFN);
    PHMPluginBase(PHMPluginBase const& other);
    ~PHMPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

    // IPluginV3OneBuild (common parts)
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;

    // IPluginV3OneRuntime (common parts)
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    //! x / cores / scales / bias type rules of one projection whose cores sit at input `coresPos`.
    bool projectionFormatOk(int32_t pos, int32_t coresPos, nvinfer1::DynamicPluginTensorDesc const* inOut) const;
    //! Bases on the device for this context (uploads on first use); false if the upload failed.
    bool deviceBases() noexcept { return mDeviceBases->ensure(mCfg.bases); }
    float const* deviceBasesPtr() const { return mDeviceBases->get(); }

    PHMConfig mCfg;
    bool mIsFFN;
    std::unique_ptr<DeviceBases> mDeviceBases;
    FieldSerializer mSerializer;
};

//! Creator shared by both ops (IPluginCreatorV3One); T is the plugin class.
template <typename T>
class PHMPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PHMPluginCreator()
        : mFieldNames(fieldNames(T::kIS_FFN))
    {
        mFC.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFC.fields = mFieldNames.data();
    }
    char const* getPluginName() const noexcept override { return T::kPLUGIN_NAME; }
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override
    {
        (void) phase;
        try
        {
            return new T(PHMConfig::parse(fc, T::kIS_FFN));
        }
        catch (std::exception const& e)
        {
            std::string msg = std::string(T::kPLUGIN_NAME) + " '" + (name ? name : "") + "': " + e.what();
            logError(msg.c_str());
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFC{};
};

} // namespace phm
