// TensorRT stand-in: a stub libnvinfer.so.10 with the plugin registry the PHM plugin library calls,
// compiled against the public TensorRT 10.x headers. What TensorRT does with a plugin library:
//   - static registration: the library's initialisers call getPluginRegistry()->registerCreator;
//   - IPluginRegistry::loadLibrary (trt.get_plugin_registry().load_library, trtexec --dynamicPlugins):
//     dlopen without RTLD_GLOBAL, getCreators, setLoggerFinder, register each creator.
// Lookups go by (name, version, namespace), as the ONNX parser's for a PHMLinear / PHMFFN node.
// standin_* entry points let the tests read what was registered and drive loadLibrary from ctypes.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
class StubLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::fprintf(stderr, "[standin %d] %s\n", static_cast<int>(severity), msg);
    }
};

class StubLoggerFinder : public ILoggerFinder
{
public:
    ILogger* findLogger() noexcept override
    {
        return &mLogger;
    }

private:
    StubLogger mLogger;
};

struct Entry
{
    IPluginCreatorInterface* creator;
    std::string name, version, ns;
};

class StubRegistry : public IPluginRegistry
{
public:
    bool registerCreator(IPluginCreator& creator, AsciiChar const* const ns) noexcept override
    {
        return registerCreator(static_cast<IPluginCreatorInterface&>(creator), ns);
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const& creator) noexcept override
    {
        return deregisterCreator(static_cast<IPluginCreatorInterface const&>(creator));
    }
    bool isParentSearchEnabled() const override
    {
        return true;
    }
    void setParentSearchEnabled(bool const) override {}

    PluginLibraryHandle loadLibrary(AsciiChar const* path) noexcept override
    {
        void* handle = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
        if (handle == nullptr)
        {
            std::fprintf(stderr, "[standin] loadLibrary: %s\n", dlerror());
            return nullptr;
        }
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        using SetFinder = void (*)(ILoggerFinder*);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
        auto setFinder = reinterpret_cast<SetFinder>(dlsym(handle, "setLoggerFinder"));
        if (getCreators == nullptr)
        {
            std::fprintf(stderr, "[standin] loadLibrary: %s has no getCreators\n", path);
            dlclose(handle);
            return nullptr;
        }
        if (setFinder != nullptr)
            setFinder(&mFinder);
        int32_t n = 0;
        auto* const* creators = getCreators(n);
        for (int32_t i = 0; i < n; ++i)
        {
            // TensorRT refuses a creator that is already registered: the static and dynamic builds
            // of one library cannot both be loaded through this path.
            if (!registerCreator(*creators[i], getNamespace(creators[i])))
            {
                dlclose(handle);
                return nullptr;
            }
        }
        return handle;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        Entry e{&creator, name(&creator), version(&creator), ns ? ns : ""};
        for (auto const& other : mEntries)
            if (other.name == e.name && other.version == e.version && other.ns == e.ns)
            {
                std::fprintf(stderr, "[standin] creator %s/%s/%s already registered\n", e.name.c_str(),
                    e.version.c_str(), e.ns.c_str());
                return false;
            }
        mEntries.push_back(e);
        mAll.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(mAll.size());
        return mAll.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const pluginName, AsciiChar const* const pluginVersion,
        AsciiChar const* const ns = "") noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (auto const& e : mEntries)
            if (e.name == pluginName && e.version == pluginVersion && e.ns == (ns ? ns : ""))
                return e.creator;
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return -1;
    }

    std::string describe()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        std::string out;
        for (auto const& e : mEntries)
            out += e.name + "/" + e.version + "/" + e.ns + ";";
        return out;
    }

private:
    static std::string name(IPluginCreatorInterface* c)
    {
        return static_cast<IPluginCreatorV3One*>(c)->getPluginName();
    }
    static std::string version(IPluginCreatorInterface* c)
    {
        return static_cast<IPluginCreatorV3One*>(c)->getPluginVersion();
    }
    static char const* getNamespace(IPluginCreatorInterface* c)
    {
        return static_cast<IPluginCreatorV3One*>(c)->getPluginNamespace();
    }

    std::mutex mMutex;
    std::vector<Entry> mEntries;
    std::vector<IPluginCreatorInterface*> mAll;
    StubLoggerFinder mFinder;
};

StubRegistry& registry()
{
    static StubRegistry r;
    return r;
}
StubLogger gLogger;
} // namespace

// STANDIN_NO_REGISTRY=1: a libnvinfer whose registry is unavailable (what a plugin must survive).
extern "C" TENSORRTAPI IPluginRegistry* getPluginRegistry() noexcept
{
    char const* none = std::getenv("STANDIN_NO_REGISTRY");
    return none != nullptr && none[0] == '1' ? nullptr : &registry();
}

extern "C" TENSORRTAPI int32_t getInferLibVersion() noexcept
{
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH; // as libnvinfer reports its own
}

extern "C" TENSORRTAPI ILogger* getLogger() noexcept
{
    return &gLogger;
}

// "name/version/namespace;" per registered creator, into buf (truncated at size); returns the count.
extern "C" TENSORRTAPI int standin_registered(char* buf, int size)
{
    std::string const s = registry().describe();
    std::snprintf(buf, static_cast<size_t>(size), "%s", s.c_str());
    int n = 0;
    for (char c : s)
        n += c == ';';
    return n;
}

// What trt.get_plugin_registry().load_library(path) does; 1 on success.
extern "C" TENSORRTAPI int standin_load_library(char const* path)
{
    return registry().loadLibrary(path) != nullptr ? 1 : 0;
}
