#include "PHMPluginCommon.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>

// libnvinfer's global logger (NvInferRuntime.h), weak: the plugin libraries link libnvinfer and get
// it; a host that compiles the plugin sources without libnvinfer (the tests' harness) gets null.
#pragma weak getLogger

namespace phm
{
namespace
{
std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

std::string fieldString(nvinfer1::PluginField const& f)
{
    if (f.type != nvinfer1::PluginFieldType::kCHAR)
    {
        throw std::invalid_argument(std::string("field '") + f.name + "' must be a string (kCHAR)");
    }
    std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
    while (!s.empty() && s.back() == '\0')
    {
        s.pop_back(); // the ONNX parser passes the bytes; engines carry a terminating NUL
    }
    return s;
}

int32_t fieldInt(nvinfer1::PluginField const& f)
{
    if (f.type != nvinfer1::PluginFieldType::kINT32 || f.length != 1)
    {
        throw std::invalid_argument(std::string("field '") + f.name + "' must be one int32");
    }
    return *static_cast<int32_t const*>(f.data);
}
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void logError(char const* msg) noexcept
{
    nvinfer1::ILogger* logger{nullptr};
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder != nullptr)
        {
            logger = gLoggerFinder->findLogger();
        }
    }
    if (logger == nullptr && &getLogger != nullptr)
    {
        // no finder yet (static registration runs before TensorRT hands one out): TensorRT's own logger
        logger = getLogger();
    }
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, msg);
    }
    else
    {
        std::fprintf(stderr, "[phm_trt_plugins] ERROR: %s\n", msg);
    }
}

phm_wfmt PHMConfig::wfmt() const
{
    return weightFormat == "int8" ? PHM_WFMT_INT8 : weightFormat == "int4" ? PHM_WFMT_INT4 : PHM_WFMT_FLOAT;
}

phm_act PHMConfig::act() const
{
    if (activation == "silu")
        return PHM_ACT_SILU;
    if (activation == "gelu")
        return PHM_ACT_GELU;
    if (activation == "gelu_tanh")
        return PHM_ACT_GELU_TANH;
    if (activation == "relu")
        return PHM_ACT_RELU;
    return PHM_ACT_NONE;
}

PHMConfig PHMConfig::parse(nvinfer1::PluginFieldCollection const* fc, bool isFFN)
{
    PHMConfig cfg;
    if (isFFN)
    {
        cfg.activation = "silu"; // spec.py default for PHMFFN
    }
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& f = fc->fields[i];
        if (std::strcmp(f.name, kFIELD_N) == 0)
            cfg.n = fieldInt(f);
        else if (std::strcmp(f.name, kFIELD_NUM_BASES) == 0)
            cfg.numBases = fieldInt(f);
        else if (std::strcmp(f.name, kFIELD_BASES) == 0)
        {
            if (f.type != nvinfer1::PluginFieldType::kFLOAT32)
                throw std::invalid_argument("field 'bases' must be float32");
            auto const* p = static_cast<float const*>(f.data);
            cfg.bases.assign(p, p + f.length);
        }
        else if (std::strcmp(f.name, kFIELD_WEIGHT_FORMAT) == 0)
            cfg.weightFormat = fieldString(f);
        else if (std::strcmp(f.name, kFIELD_GROUP_SIZE) == 0)
            cfg.groupSize = fieldInt(f);
        else if (std::strcmp(f.name, kFIELD_HAS_BIAS) == 0)
            cfg.hasBias = fieldInt(f);
        else if (std::strcmp(f.name, kFIELD_ACTIVATION) == 0)
            cfg.activation = fieldString(f);
        else if (isFFN && std::strcmp(f.name, kFIELD_MLP_TYPE) == 0)
            cfg.mlpType = fieldString(f);
    }
    cfg.validate(isFFN);
    return cfg;
}

void PHMConfig::validate(bool isFFN) const
{
    auto bad = [](std::string const& m) { throw std::invalid_argument(m); };
    if (n != 2 && n != 4)
        bad("n=" + std::to_string(n) + " is not supported by the kernels (2, 4)");
    if (numBases < 1 || numBases > n * n)
        bad("num_bases=" + std::to_string(numBases) + " outside 1..n*n");
    if (bases.size() != static_cast<size_t>(numBases * n * n))
        bad("bases has " + std::to_string(bases.size()) + " floats, expected num_bases*n*n = "
            + std::to_string(numBases * n * n));
    if (weightFormat != "float" && weightFormat != "int8" && weightFormat != "int4")
        bad("weight_format '" + weightFormat + "' not in float, int8, int4");
    if (weightFormat == "int4" && (groupSize <= 0 || groupSize % 2 != 0))
        bad("int4 needs an even group_size > 0");
    if (hasBias != 0 && hasBias != 1)
        bad("has_bias must be 0 or 1");
    if (activation != "none" && activation != "silu" && activation != "gelu" && activation != "gelu_tanh"
        && activation != "relu")
        bad("activation '" + activation + "' unknown");
    if (isFFN && activation == "none")
        bad("PHMFFN activation 'none' is not an MLP");
    if (isFFN && mlpType != "swiglu" && mlpType != "plain")
        bad("mlp_type '" + mlpType + "' not in swiglu, plain");
}

std::vector<nvinfer1::PluginField> fieldNames(bool isFFN)
{
    using nvinfer1::PluginField;
    using T = nvinfer1::PluginFieldType;
    std::vector<PluginField> f{PluginField(kFIELD_N, nullptr, T::kINT32, 1),
        PluginField(kFIELD_NUM_BASES, nullptr, T::kINT32, 1), PluginField(kFIELD_BASES, nullptr, T::kFLOAT32, 0),
        PluginField(kFIELD_WEIGHT_FORMAT, nullptr, T::kCHAR, 0), PluginField(kFIELD_GROUP_SIZE, nullptr, T::kINT32, 1),
        PluginField(kFIELD_HAS_BIAS, nullptr, T::kINT32, 1), PluginField(kFIELD_ACTIVATION, nullptr, T::kCHAR, 0)};
    if (isFFN)
    {
        f.emplace_back(kFIELD_MLP_TYPE, nullptr, T::kCHAR, 0);
    }
    return f;
}

void FieldSerializer::set(PHMConfig const& cfg, bool isFFN)
{
    using nvinfer1::PluginField;
    using T = nvinfer1::PluginFieldType;
    // Strings are serialised with their terminating NUL (length + 1); parse() strips it.
    mFields = {PluginField(kFIELD_N, &cfg.n, T::kINT32, 1), PluginField(kFIELD_NUM_BASES, &cfg.numBases, T::kINT32, 1),
        PluginField(kFIELD_BASES, cfg.bases.data(), T::kFLOAT32, static_cast<int32_t>(cfg.bases.size())),
        PluginField(kFIELD_WEIGHT_FORMAT, cfg.weightFormat.c_str(), T::kCHAR,
            static_cast<int32_t>(cfg.weightFormat.size() + 1)),
        PluginField(kFIELD_GROUP_SIZE, &cfg.groupSize, T::kINT32, 1),
        PluginField(kFIELD_HAS_BIAS, &cfg.hasBias, T::kINT32, 1),
        PluginField(kFIELD_ACTIVATION, cfg.activation.c_str(), T::kCHAR,
            static_cast<int32_t>(cfg.activation.size() + 1))};
    if (isFFN)
    {
        mFields.emplace_back(
            kFIELD_MLP_TYPE, cfg.mlpType.c_str(), T::kCHAR, static_cast<int32_t>(cfg.mlpType.size() + 1));
    }
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.data();
}

DeviceBases::~DeviceBases()
{
    phm_device_free(mPtr);
}

bool DeviceBases::ensure(std::vector<float> const& host) noexcept
{
    if (mPtr != 0)
    {
        return true;
    }
    if (phm_device_upload(host.data(), host.size() * sizeof(float), &mPtr) != CUDA_SUCCESS)
    {
        logError(phm_kernels_last_error());
        return false;
    }
    return true;
}

int64_t leadingVolume(nvinfer1::Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i + 1 < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

phm_dtype toPhmDtype(nvinfer1::DataType t)
{
    return t == nvinfer1::DataType::kHALF ? PHM_DTYPE_FP16 : PHM_DTYPE_FP32;
}

} // namespace phm
