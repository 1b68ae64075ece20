/*
 * PHMFFN TensorRT plugin: swiglu y = down(act(gate(x)) * up(x)); plain y = down(act(up(x))).
 * Inputs (spec.py PHM_FFN, all always present; unused ones are (1,) placeholders):
 *   0 x (..., n*k)
 *   1 gate_cores (f, B, k | k/2)  2 gate_scales  3 gate_bias (n*f,)
 *   4 up_cores   (f, B, k | k/2)  5 up_scales    6 up_bias   (n*f,)
 *   7 down_cores (k, B, f | f/2)  8 down_scales  9 down_bias (n*k,)
 * Output 0: y (..., n*k), x's type. Workspace: the intermediate h (T, n*f) in x's type.
 * Two launches: the fused gate/up/activation kernel (or PHMLinear with activation for plain) and
 * the PHMLinear kernel for down.
 */
#pragma once

#include "PHMPluginBase.h"

namespace phm
{

class PHMFFNPlugin : public PHMPluginBase
{
public:
    static constexpr char const* kPLUGIN_NAME = "PHMFFN";
    static constexpr bool kIS_FFN = true;
    // Input positions (spec.py: X, GATE_*, UP_*, DOWN_*)
    static constexpr int32_t kX = 0;
    static constexpr int32_t kGATE_CORES = 1;
    static constexpr int32_t kGATE_SCALES = 2;
    static constexpr int32_t kGATE_BIAS = 3;
    static constexpr int32_t kUP_CORES = 4;
    static constexpr int32_t kUP_SCALES = 5;
    static constexpr int32_t kUP_BIAS = 6;
    static constexpr int32_t kDOWN_CORES = 7;
    static constexpr int32_t kDOWN_SCALES = 8;
    static constexpr int32_t kDOWN_BIAS = 9;
    static constexpr int32_t kNB_INPUTS = 10;

    explicit PHMFFNPlugin(PHMConfig cfg);
    nvinfer1::IPluginV3* clone() noexcept override { return cloneAs<PHMFFNPlugin>(); }
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

private:
    std::string shapeError(nvinfer1::DynamicPluginTensorDesc const* in, int64_t dModel) const override;
    CUresult launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* y, void* workspace,
        CUstream stream) const noexcept override;
    bool gated() const { return mCfg.mlpType == "swiglu"; }
};

using PHMFFNPluginCreator = PHMPluginCreator<PHMFFNPlugin>;

} // namespace phm
