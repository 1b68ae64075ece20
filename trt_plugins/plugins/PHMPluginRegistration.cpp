/*
 * Plugin library entry points.
 * - Static registration (default build, libphm_trt_plugins.so): creators register with the global
 *   registry under namespace "phm" when the library is dlopen'ed: trtexec --staticPlugins,
 *   polygraphy --plugins, ctypes.CDLL.
 * - getCreators / setLoggerFinder (both builds): IPluginRegistry::loadLibrary, trtexec
 *   --dynamicPlugins, version-compatible engines. loadLibrary refuses creators that are already
 *   registered, so that path uses libphm_trt_plugins_dyn.so, built with PHM_NO_STATIC_REGISTRATION.
 * The library links neither libnvinfer nor libcudart: getPluginRegistry resolves in the host process.
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
    StaticRegistrar()
    {
        getPluginRegistry()->registerCreator(linearCreator(), phm::kPLUGIN_NAMESPACE);
        getPluginRegistry()->registerCreator(ffnCreator(), phm::kPLUGIN_NAMESPACE);
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
