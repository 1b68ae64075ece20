/*
 * IPluginV3 code shared by PHMLinear and PHMFFN: capability dispatch, names, fields to serialise,
 * per-context preparation (kernels loaded, bases on the device: at attachToContext and onShapeChange,
 * never in enqueue), format rules, output shape and type, configure's input count and enqueue's
 * error report. Both ops' inputs are x followed by one (cores, scales,
 * bias) triple per projection (spec.py), which is what lets one implementation serve both. A
 * subclass keeps its shape checks (shapeError), its launches (launch) and, for PHMFFN, the workspace.
 */
#pragma once

#include "PHMPluginCommon.h"

#include <exception>
#include <memory>
#include <string>

namespace phm
{

//! What the shared code needs to know about an op (the subclass's spec.py constants).
struct PHMOpInfo
{
    char const* name;   // plugin name (ONNX op_type)
    bool isFFN;         // PHMFFN: one more field (mlp_type)
    int32_t nbInputs;   // x + 3 per projection; the last projection's cores give y's width
    char const* inputs; // the inputs, named in the input-count error
};

class PHMPluginBase : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime
{
public:
    PHMPluginBase(PHMConfig cfg, PHMOpInfo op);
    PHMPluginBase(PHMPluginBase const& other);
    ~PHMPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return mOp.name; }
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept final;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept final;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    //! Why the static shapes of `in` (all nbInputs present) do not fit the fields; empty if they do.
    //! dIn is x's last dim, -1 if unknown.
    virtual std::string shapeError(nvinfer1::DynamicPluginTensorDesc const* in, int64_t dIn) const = 0;
    //! The kernel launches writing y; called with the bases on the device.
    virtual CUresult launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* y,
        void* workspace, CUstream stream) const noexcept = 0;

    //! Checks the (cores, scales, bias) triple at input coresPos: cores (rows, B, kc) against
    //! d_in = n*k (dIn < 0: unknown) and the weight format. Empty when consistent, else the reason.
    std::string projectionShapeError(
        nvinfer1::DynamicPluginTensorDesc const* in, int32_t coresPos, int64_t dIn, char const* what) const;
    //! Launch arguments of the projection at input coresPos: reads x (rows of strideX = n*k) and
    //! writes y (rows of strideY); scales / bias stay null where they are placeholders.
    phm_linear_args projectionArgs(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
        int32_t coresPos, void const* x, int32_t strideX, void* y, int32_t strideY) const;

    //! The launch fields that come from the op's fields and x's type and token count, the same in
    //! phm_linear_args and phm_gate_up_args; the caller sets the pointers, sizes and strides.
    template <typename Args>
    Args launchArgs(nvinfer1::PluginTensorDesc const& x) const
    {
        Args a{};
        a.bases = deviceBasesPtr();
        a.tokens = static_cast<int32_t>(leadingVolume(x.dims));
        a.num_bases = mCfg.numBases;
        a.group_size = mCfg.groupSize;
        a.has_bias = mCfg.hasBias;
        a.activation = mCfg.act();
        a.n = mCfg.n;
        a.dtype = toPhmDtype(x.type);
        a.weight_format = mCfg.wfmt();
        return a;
    }

    //! clone() of subclass T: the copy constructor gives each clone its own device bases.
    template <typename T>
    nvinfer1::IPluginV3* cloneAs() const noexcept
    {
        try
        {
            return new T(static_cast<T const&>(*this));
        }
        catch (std::exception const& e)
        {
            logError(e.what());
        }
        return nullptr;
    }

    //! Everything enqueue needs that is synchronous, done once: the kernels of this device's arch
    //! loaded (phm_kernels_prepare) and the bases uploaded. Outside enqueue only (CUDA-graph capture
    //! and --useCudaGraph allow no load, allocation or copy there); false (logged) on failure.
    bool prepare() noexcept;
    float const* deviceBasesPtr() const { return mDeviceBases->get(); }
    bool quantized() const { return mCfg.wfmt() != PHM_WFMT_FLOAT; }

    PHMConfig mCfg;
    PHMOpInfo mOp;
    std::unique_ptr<DeviceBases> mDeviceBases;
    bool mPrepared{false};
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
