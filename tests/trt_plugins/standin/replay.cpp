// TensorRT stand-in: replays, for every PHM node of an exported TensorRT twin graph, what TensorRT's
// ONNX parser, builder and runtime do to a plugin node, in a process linked against the stub
// libnvinfer (standin/nvinfer_stub.cpp) with the plugin library loaded as trtexec --staticPlugins
// does and the fake CUDA driver (standin/fake_cuda.c) executing the launches:
//   parser   creator lookup by (op type, plugin_version, plugin_namespace); fields from the node's
//            attributes (INT → kINT32, FLOATS → kFLOAT32, STRING → kCHAR without NUL); createPlugin(kBUILD)
//   builder  capability interfaces; output types; output shapes with a dynamic token dimension;
//            format negotiation (every input's type accepted, a wrong x type refused); configurePlugin
//            with dynamic dims and min/max; workspace size; getFieldsToSerialize
//   runtime  createPlugin(kRUNTIME) from the serialized fields; attachToContext; onShapeChange; enqueue
// and compares the output with ONNX Runtime's for the same inputs (written by the test).
//
//   replay PLUGIN_LIB DESCRIPTION        exit 0 when every node matched
//
// DESCRIPTION, one block per node (data files are raw little-endian arrays):
//   node NAME OP VERSION NAMESPACE TOLERANCE      (tolerance: of max |reference| of the output)
//   field NAME INT V | field NAME FLOATS N V... | field NAME STRING TEXT
//   input DTYPE NDIMS D... FILE                   (DTYPE f32 | f16 | i8; the first input is x)
//   output DTYPE NDIMS D... FILE                  (ONNX Runtime's output)
//   end
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
struct Tensor
{
    std::string dtype;
    std::vector<int64_t> dims;
    std::vector<unsigned char> data;
    DataType type() const { return dtype == "f32" ? DataType::kFLOAT : dtype == "f16" ? DataType::kHALF : DataType::kINT8; }
    size_t elem() const { return dtype == "f32" ? 4 : dtype == "f16" ? 2 : 1; }
    Dims trtDims() const
    {
        Dims d{};
        d.nbDims = (int32_t) dims.size();
        for (size_t i = 0; i < dims.size(); ++i)
            d.d[i] = dims[i];
        return d;
    }
};

struct Field
{
    std::string name, kind;
    int32_t i{0};
    std::vector<float> floats;
    std::string text;
};

struct Node
{
    std::string name, op, version, ns;
    double tolerance{0};
    std::vector<Field> fields;
    std::vector<Tensor> inputs;
    Tensor output;
};

bool readFile(std::string const& path, Tensor& t)
{
    std::ifstream f(path, std::ios::binary);
    size_t n = t.elem();
    for (auto d : t.dims)
        n *= (size_t) d;
    t.data.resize(n);
    return f.read(reinterpret_cast<char*>(t.data.data()), (std::streamsize) n) && f.gcount() == (std::streamsize) n;
}

Tensor readTensor(std::istringstream& ls)
{
    Tensor t;
    int nd = 0;
    ls >> t.dtype >> nd;
    t.dims.resize(nd);
    for (auto& d : t.dims)
        ls >> d;
    std::string file;
    ls >> file;
    if (!readFile(file, t))
        throw std::runtime_error("cannot read " + file);
    return t;
}

std::vector<Node> parse(char const* path)
{
    std::ifstream in(path);
    std::vector<Node> nodes;
    std::string line;
    while (std::getline(in, line))
    {
        std::istringstream ls(line);
        std::string tag;
        ls >> tag;
        if (tag == "node")
        {
            nodes.emplace_back();
            ls >> nodes.back().name >> nodes.back().op >> nodes.back().version >> nodes.back().ns >> nodes.back().tolerance;
        }
        else if (tag == "field")
        {
            Field f;
            ls >> f.name >> f.kind;
            if (f.kind == "INT")
                ls >> f.i;
            else if (f.kind == "FLOATS")
            {
                int n = 0;
                ls >> n;
                f.floats.resize(n);
                for (auto& v : f.floats)
                    ls >> v;
            }
            else
                ls >> f.text;
            nodes.back().fields.push_back(f);
        }
        else if (tag == "input")
            nodes.back().inputs.push_back(readTensor(ls));
        else if (tag == "output")
            nodes.back().output = readTensor(ls);
    }
    return nodes;
}

// The builder's dimension expressions: constants, and symbols for the dynamic token dimensions.
struct ExprImpl : apiv::VDimensionExpr
{
    bool constant;
    int64_t value;
    ExprImpl(bool c, int64_t v) : constant(c), value(v) {}
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return constant ? value : -1; }
    bool isSizeTensor() const override { return false; }
};

struct Expr : IDimensionExpr
{
    ExprImpl impl;
    Expr(bool c, int64_t v) : impl(c, v) { mImpl = &impl; }
};

struct Builder : apiv::VExprBuilder
{
    std::vector<std::unique_ptr<Expr>> exprs;
    IDimensionExpr const* make(bool c, int64_t v)
    {
        exprs.push_back(std::make_unique<Expr>(c, v));
        return exprs.back().get();
    }
    IDimensionExpr const* constant(int64_t v) override { return make(true, v); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        if (!a.isConstant() || !b.isConstant())
            return make(false, -1);
        int64_t x = a.getConstantValue(), y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return make(true, x + y);
        case DimensionOperation::kPROD: return make(true, x * y);
        case DimensionOperation::kMAX: return make(true, x > y ? x : y);
        case DimensionOperation::kMIN: return make(true, x < y ? x : y);
        case DimensionOperation::kSUB: return make(true, x - y);
        case DimensionOperation::kEQUAL: return make(true, x == y);
        case DimensionOperation::kLESS: return make(true, x < y);
        case DimensionOperation::kFLOOR_DIV: return make(true, x / y);
        case DimensionOperation::kCEIL_DIV: return make(true, (x + y - 1) / y);
        }
        return make(false, -1);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};

struct ExprBuilder : IExprBuilder
{
    explicit ExprBuilder(Builder* b) { mImpl = b; }
};

std::vector<PluginField> pluginFields(std::vector<Field> const& fields)
{
    std::vector<PluginField> out;
    for (auto const& f : fields)
    {
        if (f.kind == "INT")
            out.emplace_back(f.name.c_str(), &f.i, PluginFieldType::kINT32, 1);
        else if (f.kind == "FLOATS")
            out.emplace_back(f.name.c_str(), f.floats.data(), PluginFieldType::kFLOAT32, (int32_t) f.floats.size());
        else
            out.emplace_back(f.name.c_str(), f.text.data(), PluginFieldType::kCHAR, (int32_t) f.text.size());
    }
    return out;
}

// A copy of a serialized field collection (TensorRT writes it into the engine, then reads it back).
struct Serialized
{
    std::vector<std::string> names;
    std::vector<std::vector<unsigned char>> data;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};
    explicit Serialized(PluginFieldCollection const* src)
    {
        names.reserve(src->nbFields);
        data.reserve(src->nbFields);
        for (int32_t i = 0; i < src->nbFields; ++i)
        {
            auto const& f = src->fields[i];
            size_t size = f.type == PluginFieldType::kCHAR ? 1 : 4;
            auto const* bytes = static_cast<unsigned char const*>(f.data);
            names.emplace_back(f.name);
            data.emplace_back(bytes, bytes + size * (size_t) f.length);
        }
        for (int32_t i = 0; i < src->nbFields; ++i)
            fields.emplace_back(names[i].c_str(), data[i].data(), src->fields[i].type, src->fields[i].length);
        fc.nbFields = (int32_t) fields.size();
        fc.fields = fields.data();
    }
};

float value(Tensor const& t, size_t i)
{
    if (t.dtype == "f32")
        return reinterpret_cast<float const*>(t.data.data())[i];
    uint16_t h = reinterpret_cast<uint16_t const*>(t.data.data())[i];
    uint32_t sign = (uint32_t) (h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
    if (exp == 0)
        return (sign ? -1.f : 1.f) * std::ldexp((float) man, -24);
    f = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
    float out;
    std::memcpy(&out, &f, 4);
    return out;
}

bool replay(Node const& node)
{
    auto fail = [&](char const* what) {
        std::printf("node %s %s FAILED %s\n", node.name.c_str(), node.op.c_str(), what);
        return false;
    };
    auto* creator = static_cast<IPluginCreatorV3One*>(
        getPluginRegistry()->getCreator(node.op.c_str(), node.version.c_str(), node.ns.c_str()));
    if (creator == nullptr)
        return fail("creator lookup");
    auto fieldList = pluginFields(node.fields);
    PluginFieldCollection fc{(int32_t) fieldList.size(), fieldList.data()};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin(node.name.c_str(), &fc, TensorRTPhase::kBUILD));
    if (!plugin)
        return fail("createPlugin(kBUILD)");
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    if (!core || !build || !plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
        return fail("capability interfaces");
    if (node.op != core->getPluginName() || node.ns != core->getPluginNamespace() || build->getNbOutputs() != 1)
        return fail("name / namespace / outputs");
    int32_t const nIn = (int32_t) node.inputs.size();
    std::vector<DataType> inTypes;
    for (auto const& t : node.inputs)
        inTypes.push_back(t.type());
    DataType outType{};
    if (build->getOutputDataTypes(&outType, 1, inTypes.data(), nIn) != 0 || outType != node.output.type())
        return fail("output data type");

    // shapes: x's leading (token) dims are dynamic, every other dim a constant
    Builder impl;
    ExprBuilder eb(&impl);
    std::vector<DimsExprs> inExprs(nIn);
    for (int32_t i = 0; i < nIn; ++i)
    {
        auto const& t = node.inputs[i];
        inExprs[i].nbDims = (int32_t) t.dims.size();
        for (size_t d = 0; d < t.dims.size(); ++d)
            inExprs[i].d[d] = i == 0 && d + 1 < t.dims.size() ? impl.make(false, -1) : eb.constant(t.dims[d]);
    }
    DimsExprs outExpr{};
    if (build->getOutputShapes(inExprs.data(), nIn, nullptr, 0, &outExpr, 1, eb) != 0)
        return fail("getOutputShapes");
    if (outExpr.nbDims != (int32_t) node.output.dims.size() || !outExpr.d[outExpr.nbDims - 1]->isConstant()
        || outExpr.d[outExpr.nbDims - 1]->getConstantValue() != node.output.dims.back())
        return fail("output shape");
    for (int32_t d = 0; d + 1 < outExpr.nbDims; ++d)
        if (outExpr.d[d] != inExprs[0].d[d])
            return fail("output shape keeps the dynamic token dims");

    // format negotiation and configure, as the builder does them (desc dims -1 where dynamic)
    std::vector<DynamicPluginTensorDesc> dyn(nIn + 1);
    for (int32_t i = 0; i <= nIn; ++i)
    {
        Tensor const& t = i < nIn ? node.inputs[i] : node.output;
        dyn[i].desc.type = t.type();
        dyn[i].desc.format = TensorFormat::kLINEAR;
        dyn[i].desc.dims = dyn[i].min = dyn[i].opt = dyn[i].max = t.trtDims();
        if (i == 0 || i == nIn)
            for (int32_t d = 0; d + 1 < dyn[i].desc.dims.nbDims; ++d)
                dyn[i].desc.dims.d[d] = -1;
    }
    for (int32_t pos = 0; pos <= nIn; ++pos)
        if (!build->supportsFormatCombination(pos, dyn.data(), nIn, 1))
            return fail("supportsFormatCombination refused the graph's types");
    auto wrong = dyn;
    wrong[0].desc.type = DataType::kINT32;
    if (build->supportsFormatCombination(0, wrong.data(), nIn, 1))
        return fail("supportsFormatCombination accepted an int32 x");
    if (build->configurePlugin(dyn.data(), nIn, dyn.data() + nIn, 1) != 0)
        return fail("configurePlugin");
    size_t const workspace = build->getWorkspaceSize(dyn.data(), nIn, dyn.data() + nIn, 1);

    // engine: serialized fields → the runtime's plugin
    auto* runtimeOfBuild = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    Serialized ser(runtimeOfBuild->getFieldsToSerialize());
    std::unique_ptr<IPluginV3> loaded(creator->createPlugin(node.name.c_str(), &ser.fc, TensorRTPhase::kRUNTIME));
    if (!loaded)
        return fail("createPlugin(kRUNTIME) from the serialized fields");
    auto* lrt = static_cast<IPluginV3OneRuntime*>(loaded->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::unique_ptr<IPluginV3> ctx(lrt->attachToContext(nullptr));
    if (!ctx)
        return fail("attachToContext");
    auto* rt = static_cast<IPluginV3OneRuntime*>(ctx->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::vector<PluginTensorDesc> in(nIn), out(1);
    for (int32_t i = 0; i < nIn; ++i)
    {
        in[i] = dyn[i].desc;
        in[i].dims = node.inputs[i].trtDims();
    }
    out[0] = dyn[nIn].desc;
    out[0].dims = node.output.trtDims();
    if (rt->onShapeChange(in.data(), nIn, out.data(), 1) != 0)
        return fail("onShapeChange");
    std::vector<void const*> ptrs;
    std::vector<std::vector<unsigned char>> copies;  // "device" copies, 256-byte aligned as TensorRT's
    for (auto const& t : node.inputs)
    {
        copies.emplace_back(t.data.size() + 256);
        auto* p = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(copies.back().data()) + 255) & ~uintptr_t{255});
        std::memcpy(p, t.data.data(), t.data.size());
        ptrs.push_back(p);
    }
    std::vector<unsigned char> y(node.output.data.size() + 256), ws(workspace + 256);
    void* yp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(y.data()) + 255) & ~uintptr_t{255});
    void* wsp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) & ~uintptr_t{255});
    void* outs[1] = {yp};
    if (rt->enqueue(in.data(), out.data(), ptrs.data(), outs, wsp, nullptr) != 0)
        return fail("enqueue");

    Tensor got = node.output;
    std::memcpy(got.data.data(), yp, got.data.size());
    size_t const count = got.data.size() / got.elem();
    double maxErr = 0, maxRef = 0;
    for (size_t i = 0; i < count; ++i)
    {
        double r = value(node.output, i), g = value(got, i);
        maxErr = std::fmax(maxErr, std::fabs(g - r));
        maxRef = std::fmax(maxRef, std::fabs(r));
    }
    bool const ok = maxErr <= node.tolerance * maxRef + 1e-6 && std::isfinite(maxErr);
    std::printf("node %s %s T=%lld max_err=%.3g max_ref=%.3g workspace=%zu %s\n", node.name.c_str(), node.op.c_str(),
        (long long) (count / (size_t) node.output.dims.back()), maxErr, maxRef, workspace, ok ? "ok" : "MISMATCH");
    return ok;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: replay PLUGIN_LIB DESCRIPTION\n");
        return 2;
    }
    if (dlopen(argv[1], RTLD_LAZY) == nullptr)  // trtexec --staticPlugins
    {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    int bad = 0, total = 0;
    try
    {
        for (auto const& node : parse(argv[2]))
        {
            ++total;
            bad += replay(node) ? 0 : 1;
        }
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "replay: %s\n", e.what());
        return 1;
    }
    std::printf("replayed %d nodes, %d failed\n", total, bad);
    return bad || total == 0 ? 1 : 0;
}
