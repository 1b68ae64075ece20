/*
 * PHMLinear TensorRT plugin: y = act(sum_b (H_b kron A_b) x + bias) (trt_plugins/README.md).
 * Inputs (spec.py PHM_LINEAR, all always present):
 *   0 x      (..., n*k)  FP32 | FP16 (FP16 for int8/int4 cores)
 *   1 cores  (m, B, k) x's type | INT8;  (m, B, k/2) INT8 packed int4
 *   2 scales FP32: int8 (m,), int4 (m, B, k/group_size), float cores: placeholder (1,)
 *   3 bias   (n*m,) x's type; placeholder (1,) when has_bias = 0
 * Output 0: y (..., n*m), x's type.
 */
#pragma once

#include "PHMPluginBase.h"

namespace phm
{

class PHMLinearPlugin : public PHMPluginBase
{
public:
    static constexpr char const* kPLUGIN_NAME = "PHMLinear";
    static constexpr bool kIS_FFN = false;
    // Input positions (spec.py: X, CORES, SCALES, BIAS)
    static constexpr int32_t kX = 0;
    static constexpr int32_t kCORES = 1;
    static constexpr int32_t kSCALES = 2;
    static constexpr int32_t kBIAS = 3;
    static constexpr int32_t kNB_INPUTS = 4;

    explicit PHMLinearPlugin(PHMConfig cfg);
    nvinfer1::IPluginV3* clone() noexcept override { return cloneAs<PHMLinearPlugin>(); }

private:
    std::string shapeError(nvinfer1::DynamicPluginTensorDesc const* in, int64_t dIn) const override;
    CUresult launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* y, void* workspace,
        CUstream stream) const noexcept override;
};

using PHMLinearPluginCreator = PHMPluginCreator<PHMLinearPlugin>;

} // namespace phm
