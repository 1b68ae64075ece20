/*
 * Plugin library entry points.
 * - Static registration (default build, libphm_trt_plugins.so): creators register with the global
 *   registry under namespace "phm" when the library is dlopen'ed: trtexec --staticPlugins,
 *   polygraphy --plugins, ctypes.CDLL.
 * - getCreators / setLoggerFinder (both builds): IPluginRegistry::loadLibrary, trtexec
 *   --dynamicPlugins, version-compatible engines. loadLibrary refuses creators that are already
 *   registered, so that path uses libphm_trt_plugins_dyn.so, built with PHM_NO_STATIC_REGISTRATION.
 * The library links libnvinfer (getPluginRegistry resolves through its own DT_NEEDED wherever the
 * host loaded libnvinfer, even privately) and not libcudart. Static registration never throws or
 * dereferences a missing registry: a failure is one logged line and the library still loads.
 */
#include "PHMFFNPlugin.h"
#include "PHMLinearPlugin.h"

namespace
{
phm::PHMLinearPluginCreator& linearCreator()
{
    static phm::PHMLinearPluginCreator creator;
    return creator;
}

phm::PHMFFNPluginCreator& ffnCreator()
{
    static phm::PHMFFNPluginCreator creator;
    return creator;
}

#ifndef PHM_NO_STATIC_REGISTRATION
//! REGISTER_TENSORRT_PLUGIN registers under namespace ""; ours are looked up as "phm" (the ONNX
//! node's plugin_namespace), so register explicitly with the creators' own namespace.
struct StaticRegistrar
{
    StaticRegistrar() noexcept
    {
        phm::guarded("static registration", 0, [] {
            nvinfer1::IPluginRegistry* registry = getPluginRegistry();
            if (registry == nullptr)
            {
                phm::logError("static registration: TensorRT returned no plugin registry; PHMLinear and PHMFFN "
                              "are not registered");
                return 0;
            }
            for (nvinfer1::IPluginCreatorInterface* creator :
                {static_cast<nvinfer1::IPluginCreatorInterface*>(&linearCreator()),
                    static_cast<nvinfer1::IPluginCreatorInterface*>(&ffnCreator())})
            {
                if (!registry->registerCreator(*creator, phm::kPLUGIN_NAMESPACE))
                {
                    phm::logError((std::string("static registration: the registry refused ")
                        + static_cast<nvinfer1::IPluginCreatorV3One*>(creator)->getPluginName()
                        + " (already registered: load one of libphm_trt_plugins.so / _dyn.so, not both)").c_str());
                }
            }
            return 0;
        });
    }
};
StaticRegistrar const gStaticRegistrar{};
#endif
} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&linearCreator(), &ffnCreator()};
    nbCreators = 2;
    return kCreators;
}

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    phm::setLoggerFinder(finder);
}
