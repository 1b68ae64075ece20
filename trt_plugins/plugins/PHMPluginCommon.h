/*
 * Shared pieces of the PHMLinear and PHMFFN TensorRT plugins: the fields both parse (names come
 * from phm/trt_plugins/spec.py, checked by tests/trt_plugins/test_plugins_source.py), their
 * validation and serialisation, logging, and the device copy of the bases.
 */
#pragma once

#include "NvInferRuntime.h"
#include "phm_kernels.h"

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace phm
{

// spec.py: DOMAIN's plugin_namespace and plugin_version
constexpr char const* kPLUGIN_NAMESPACE = "phm";
constexpr char const* kPLUGIN_VERSION = "1";

// Plugin field names (spec.py OpSpec.fields): PHMLinear uses the first seven, PHMFFN all eight.
constexpr char const* kFIELD_N = "n";
constexpr char const* kFIELD_NUM_BASES = "num_bases";
constexpr char const* kFIELD_BASES = "bases";
constexpr char const* kFIELD_WEIGHT_FORMAT = "weight_format";
constexpr char const* kFIELD_GROUP_SIZE = "group_size";
constexpr char const* kFIELD_HAS_BIAS = "has_bias";
constexpr char const* kFIELD_ACTIVATION = "activation";
constexpr char const* kFIELD_MLP_TYPE = "mlp_type";

//! Logs through the logger TensorRT hands to setLoggerFinder, else to stderr.
void logError(char const* msg) noexcept;

//! Run `fn` for a noexcept entry point: an exception (a bad_alloc while building a message, say) is
//! reported through the TensorRT logger as "<what>: <reason>" and `failed` is returned instead of
//! reaching TensorRT (where it would terminate the process).
template <typename R, typename F>
R guarded(char const* what, R failed, F&& fn) noexcept
{
    try
    {
        return fn();
    }
    catch (std::exception const& e)
    {
        logError((std::string(what) + ": " + e.what()).c_str());
    }
    catch (...)
    {
        logError(what);
    }
    return failed;
}
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! The fields of one PHM op, parsed and validated; serialised back with the same names and types.
struct PHMConfig
{
    int32_t n{2};
    int32_t numBases{2};
    std::vector<float> bases;          // B*n*n, row-major (b, i, j)
    std::string weightFormat{"float"}; // "float" | "int8" | "int4"
    int32_t groupSize{0};
    int32_t hasBias{0};
    std::string activation{"none"};    // spec.ACTIVATIONS
    std::string mlpType{"swiglu"};     // PHMFFN only

    phm_wfmt wfmt() const;
    phm_act act() const;

    //! Parse a field collection (from the ONNX parser or the engine); throws std::invalid_argument.
    static PHMConfig parse(nvinfer1::PluginFieldCollection const* fc, bool isFFN);
    void validate(bool isFFN) const;
};

//! Field descriptors for getFieldNames (data == nullptr) of one op.
std::vector<nvinfer1::PluginField> fieldNames(bool isFFN);

//! Owns the PluginFields pointing into a PHMConfig for getFieldsToSerialize.
class FieldSerializer
{
public:
    void set(PHMConfig const& cfg, bool isFFN);
    nvinfer1::PluginFieldCollection const* collection() const { return &mFC; }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{};
};

//! Device copy of the bases, made when the plugin is prepared (attachToContext, onShapeChange).
class DeviceBases
{
public:
    DeviceBases() = default;
    DeviceBases(DeviceBases const&) = delete;
    DeviceBases& operator=(DeviceBases const&) = delete;
    ~DeviceBases();
    //! Upload if not done yet; returns false (and logs) on failure.
    bool ensure(std::vector<float> const& host) noexcept;
    float const* get() const { return reinterpret_cast<float const*>(mPtr); }

private:
    CUdeviceptr mPtr{0};
};

//! Product of all dims but the last (the token count T of a (..., d) tensor).
int64_t leadingVolume(nvinfer1::Dims const& d);
phm_dtype toPhmDtype(nvinfer1::DataType t);

} // namespace phm
