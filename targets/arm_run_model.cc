// run-model: runs an edlc artifact on an aarch64 Linux board with the TVM runtime, no Python.
//
//   ./run-model [--dir ARTIFACT] [--repeat N] inputs.npz outputs.npz
//
// ARTIFACT (default: the directory holding this program) has manifest.json, model.so and
// params.npz, as `edlc compile --target arm -o ARTIFACT` writes them; lib/ beside this program
// holds libtvm_runtime.so and libtvm_ffi.so (found through the rpath $ORIGIN/lib).
// inputs.npz holds one array per model input, keyed by input name (numpy's np.savez; not
// np.savez_compressed); outputs.npz gets one array per model output, keyed by output name.
// --repeat N also times N runs after one warm-up and prints the median latency.
// Exit status: 0 ok, 2 bad input (missing or mismatched arrays, unreadable files), 1 other.

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// An error the user caused (exit 2); anything else exits 1.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path + ": cannot open");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// ---- dtypes: manifest names, numpy descrs, DLPack ------------------------------------------
struct DType {
  const char* name;   // as in manifest.json
  const char* descr;  // numpy .npy descr
  DLDataType dl;
};

const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"float16", "<f2", {kDLFloat, 16, 1}}, {"int8", "|i1", {kDLInt, 8, 1}},
    {"int16", "<i2", {kDLInt, 16, 1}},     {"int32", "<i4", {kDLInt, 32, 1}},
    {"int64", "<i8", {kDLInt, 64, 1}},     {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"uint16", "<u2", {kDLUInt, 16, 1}},   {"uint32", "<u4", {kDLUInt, 32, 1}},
    {"uint64", "<u8", {kDLUInt, 64, 1}},   {"bool", "|b1", {kDLBool, 8, 1}},
    {"bfloat16", "|V2", {kDLBfloat, 16, 1}},  // numpy writes ml_dtypes' bfloat16 as raw V2
};

const DType* DTypeByName(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DType* DTypeByDescr(std::string descr) {
  if (descr.size() == 3 && descr[0] == '=') descr[0] = '<';
  for (const DType& d : kDTypes) {
    if (descr == d.descr) return &d;
    if (descr.size() == 3 && d.descr[0] == '|' && descr.substr(1) == d.descr + 1) return &d;
  }
  return nullptr;
}

const DType* DTypeByDL(DLDataType t) {
  for (const DType& d : kDTypes)
    if (d.dl.code == t.code && d.dl.bits == t.bits && d.dl.lanes == t.lanes) return &d;
  return nullptr;
}

// ---- arrays and .npy ------------------------------------------------------------------------
struct Array {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::string data;  // C order

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The value of `key` in a .npy header dict, e.g. "'<f4'", "False" or "(1, 3, 8, 8)".
std::string HeaderField(const std::string& header, const std::string& key, const std::string& where) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw InputError(where + ": .npy header lacks '" + key + "'");
  size_t p = header.find(':', k) + 1;
  while (p < header.size() && header[p] == ' ') ++p;
  size_t end = header[p] == '(' ? header.find(')', p) + 1 : header.find_first_of(",}", p + 1);
  if (header[p] == '\'') end = header.find('\'', p + 1) + 1;
  return header.substr(p, end - p);
}

Array ParseNpy(const char* buf, size_t size, const std::string& where) {
  if (size < 10 || std::memcmp(buf, "\x93NUMPY", 6) != 0) throw InputError(where + ": not a .npy array");
  int major = static_cast<unsigned char>(buf[6]);
  size_t header_len, start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(buf[8]) | static_cast<unsigned char>(buf[9]) << 8;
    start = 10;
  } else {
    if (size < 12) throw InputError(where + ": truncated .npy header");
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = header_len << 8 | static_cast<unsigned char>(buf[8 + i]);
    start = 12;
  }
  if (start + header_len > size) throw InputError(where + ": truncated .npy header");
  std::string header(buf + start, header_len);
  Array a;
  std::string descr = HeaderField(header, "descr", where);
  descr = descr.size() >= 2 ? descr.substr(1, descr.size() - 2) : descr;
  a.dtype = DTypeByDescr(descr);
  if (!a.dtype) throw InputError(where + ": unsupported array dtype '" + descr + "'");
  if (HeaderField(header, "fortran_order", where) != "False")
    throw InputError(where + ": Fortran-ordered array; save it C-ordered (np.ascontiguousarray)");
  std::string shape = HeaderField(header, "shape", where);
  for (size_t p = 1; p < shape.size();) {
    size_t q = shape.find_first_of(",)", p);
    std::string dim = shape.substr(p, q - p);
    dim.erase(std::remove(dim.begin(), dim.end(), ' '), dim.end());
    if (!dim.empty()) a.shape.push_back(std::stoll(dim));
    p = q + 1;
  }
  size_t nbytes = static_cast<size_t>(a.numel()) * (a.dtype->dl.bits / 8);
  if (start + header_len + nbytes > size) throw InputError(where + ": truncated array data");
  a.data.assign(buf + start + header_len, nbytes);
  return a;
}

std::string NpyBytes(const Array& a) {
  std::string header = std::string("{'descr': '") + a.dtype->descr +
                       "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < a.shape.size(); ++i)  // numpy's form: "()", "(5,)", "(2, 3)"
    header += std::to_string(a.shape[i]) + (a.shape.size() == 1 ? "," : i + 1 < a.shape.size() ? ", " : "");
  header += "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + a.data;
}

// ---- .npz (a zip of .npy files, stored uncompressed) -----------------------------------------
uint64_t Le(const std::string& b, size_t off, int n) {
  if (off + n > b.size()) throw InputError("truncated zip structure");
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(b[off + i]);
  return v;
}

std::map<std::string, Array> ReadNpz(const std::string& path) {
  std::string z = ReadFile(path);
  size_t eocd = std::string::npos;
  if (z.size() < 22) throw InputError(path + ": not an .npz (zip) file");
  size_t lowest = z.size() > 22 + 65535 ? z.size() - 22 - 65535 : 0;  // after a comment, at most
  for (size_t i = z.size() - 22 + 1; i-- > lowest;) {
    if (Le(z, i, 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd == std::string::npos) throw InputError(path + ": not an .npz (zip) file");
  uint64_t count = Le(z, eocd + 10, 2), cd = Le(z, eocd + 16, 4);
  if ((count == 0xffff || cd == 0xffffffff) && eocd >= 20 && Le(z, eocd - 20, 4) == 0x07064b50) {
    uint64_t z64 = Le(z, eocd - 20 + 8, 8);  // zip64 end of central directory record
    count = Le(z, z64 + 32, 8);
    cd = Le(z, z64 + 48, 8);
  }
  std::map<std::string, Array> out;
  for (uint64_t e = 0, p = cd; e < count; ++e) {
    if (Le(z, p, 4) != 0x02014b50) throw InputError(path + ": corrupt zip central directory");
    uint64_t method = Le(z, p + 10, 2), csize = Le(z, p + 20, 4), usize = Le(z, p + 24, 4);
    uint64_t nlen = Le(z, p + 28, 2), xlen = Le(z, p + 30, 2), clen = Le(z, p + 32, 2);
    uint64_t local = Le(z, p + 42, 4);
    std::string name = z.substr(p + 46, nlen);
    for (size_t x = p + 46 + nlen; x + 4 <= p + 46 + nlen + xlen;) {  // zip64 extra field
      uint64_t id = Le(z, x, 2), len = Le(z, x + 2, 2), q = x + 4;
      if (id == 1) {
        if (usize == 0xffffffff) usize = Le(z, q, 8), q += 8;
        if (csize == 0xffffffff) csize = Le(z, q, 8), q += 8;
        if (local == 0xffffffff) local = Le(z, q, 8), q += 8;
      }
      x += 4 + len;
    }
    p += 46 + nlen + xlen + clen;
    if (method != 0)
      throw InputError(path + ": '" + name + "' is compressed; write the file with np.savez, not np.savez_compressed");
    if (Le(z, local, 4) != 0x04034b50) throw InputError(path + ": corrupt zip entry '" + name + "'");
    uint64_t data = local + 30 + Le(z, local + 26, 2) + Le(z, local + 28, 2);
    if (data + csize > z.size()) throw InputError(path + ": truncated zip entry '" + name + "'");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    out[name] = ParseNpy(z.data() + data, csize, path + ":" + name);
  }
  return out;
}

uint32_t Crc32(const std::string& s) {
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

void PutLe(std::string& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b += static_cast<char>(v >> (8 * i) & 0xff);
}

void WriteNpz(const std::string& path, const std::vector<std::pair<std::string, Array>>& arrays) {
  std::string z, cd;
  for (const auto& [key, a] : arrays) {
    std::string name = key + ".npy", data = NpyBytes(a);
    if (data.size() >= 0xffffffffu || z.size() >= 0xffffffffu)
      throw std::runtime_error("output too large for a plain zip (4 GiB)");
    uint32_t crc = Crc32(data);
    uint64_t offset = z.size();
    auto header = [&](std::string& b, bool central) {
      PutLe(b, central ? 0x02014b50 : 0x04034b50, 4);
      if (central) PutLe(b, 20, 2);  // version made by
      PutLe(b, 20, 2);               // version needed
      PutLe(b, 0, 2);                // flags
      PutLe(b, 0, 2);                // method: stored
      PutLe(b, 0, 2);                // time
      PutLe(b, 0x21, 2);             // date (1980-01-01)
      PutLe(b, crc, 4);
      PutLe(b, data.size(), 4);
      PutLe(b, data.size(), 4);
      PutLe(b, name.size(), 2);
      PutLe(b, 0, 2);  // extra length
      if (central) {
        PutLe(b, 0, 2);  // comment length
        PutLe(b, 0, 2);  // disk
        PutLe(b, 0, 2);  // internal attributes
        PutLe(b, 0, 4);  // external attributes
        PutLe(b, offset, 4);
      }
      b += name;
    };
    header(z, false);
    z += data;
    header(cd, true);
  }
  uint64_t cd_offset = z.size();
  z += cd;
  PutLe(z, 0x06054b50, 4);
  PutLe(z, 0, 4);
  PutLe(z, arrays.size(), 2);
  PutLe(z, arrays.size(), 2);
  PutLe(z, cd.size(), 4);
  PutLe(z, cd_offset, 4);
  PutLe(z, 0, 2);
  std::ofstream f(path, std::ios::binary);
  if (!f.write(z.data(), z.size())) throw InputError(path + ": cannot write");
}

// ---- tensors ----------------------------------------------------------------------------------
struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t size = std::max<size_t>(ffi::GetDataSize(*t), 1);
    t->data = std::aligned_alloc(64, (size + 63) / 64 * 64);
    if (!t->data) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToTensor(const Array& a) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(a.shape.data(), a.shape.size()),
                                           a.dtype->dl, DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

void Flatten(const ffi::Any& v, std::vector<ffi::Tensor>* out) {
  if (auto t = v.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = v.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& x : *arr) Flatten(x, out);
  } else {
    throw std::runtime_error("the model returned a value that is not a tensor: " + v.GetTypeKey());
  }
}

Array FromTensor(const ffi::Tensor& t) {
  const DLTensor* d = t.GetDLTensorPtr();
  if (d->device.device_type != kDLCPU) throw std::runtime_error("output tensor not on the CPU");
  Array a;
  a.dtype = DTypeByDL(d->dtype);
  if (!a.dtype) throw std::runtime_error("output has a dtype this runner cannot write");
  a.shape.assign(d->shape, d->shape + d->ndim);
  if (!t.IsContiguous()) throw std::runtime_error("output tensor is not contiguous");
  a.data.assign(static_cast<const char*>(d->data) + d->byte_offset,
                static_cast<size_t>(a.numel()) * (a.dtype->dl.bits / 8));
  return a;
}

// ---- the manifest -------------------------------------------------------------------------------
struct Spec {
  std::string name;
  const DType* dtype;
  std::vector<ffi::Any> shape;  // int64 or a symbolic name
};

std::vector<Spec> Specs(const ffi::json::Object& manifest, const char* key) {
  std::vector<Spec> specs;
  for (const ffi::Any& s : manifest.at(key).cast<ffi::json::Array>()) {
    auto obj = s.cast<ffi::json::Object>();
    Spec spec{std::string(obj.at("name").cast<ffi::String>()), nullptr, {}};
    std::string dtype = obj.at("dtype").cast<ffi::String>();
    spec.dtype = DTypeByName(dtype);
    if (!spec.dtype) throw std::runtime_error("model " + std::string(key) + " '" + spec.name + "' has dtype " + dtype + ", which this runner cannot handle");
    for (const ffi::Any& d : obj.at("shape").cast<ffi::json::Array>()) spec.shape.push_back(d);
    specs.push_back(spec);
  }
  return specs;
}

std::string SpecStr(const Spec& s) {
  std::string out = s.name + ": " + s.dtype->name + "[";
  for (size_t i = 0; i < s.shape.size(); ++i) {
    auto dim = s.shape[i].try_cast<int64_t>();
    out += (i ? ", " : "") + (dim ? std::to_string(*dim) : std::string(s.shape[i].cast<ffi::String>()));
  }
  return out + "]";
}

void CheckInput(const Spec& s, const Array& a, std::map<std::string, int64_t>* bound) {
  bool ok = a.dtype == s.dtype && a.shape.size() == s.shape.size();
  for (size_t i = 0; ok && i < s.shape.size(); ++i) {
    if (auto dim = s.shape[i].try_cast<int64_t>()) {
      ok = *dim == a.shape[i];
    } else {
      std::string sym = s.shape[i].cast<ffi::String>();
      ok = bound->emplace(sym, a.shape[i]).first->second == a.shape[i];
    }
  }
  if (!ok)
    throw InputError("input '" + s.name + "': " + a.dtype->name + ShapeStr(a.shape) + ", expected " + SpecStr(s));
}

std::string ExeDir(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string path = n > 0 ? std::string(buf, n) : std::string(argv0);
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

int Run(int argc, char** argv) {
  std::string dir, in_path, out_path;
  int repeat = 0;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else if (arg == "-h" || arg == "--help") {
      std::printf("usage: %s [--dir ARTIFACT] [--repeat N] inputs.npz outputs.npz\n", argv[0]);
      return 0;
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2)
    throw InputError("usage: run-model [--dir ARTIFACT] [--repeat N] inputs.npz outputs.npz");
  in_path = positional[0];
  out_path = positional[1];
  if (dir.empty()) dir = ExeDir(argv[0]);

  ffi::String error;
  ffi::json::Value parsed = ffi::json::Parse(ReadFile(dir + "/manifest.json"), &error);
  if (!error.empty()) throw InputError(dir + "/manifest.json: " + std::string(error));
  auto manifest = parsed.cast<ffi::json::Object>();
  std::vector<Spec> inputs = Specs(manifest, "inputs"), outputs = Specs(manifest, "outputs");

  std::map<std::string, Array> given = ReadNpz(in_path);
  std::vector<ffi::Any> args;
  std::map<std::string, int64_t> bound;
  std::string expected;
  for (const Spec& s : inputs) expected += (expected.empty() ? "" : "; ") + SpecStr(s);
  for (const Spec& s : inputs) {
    auto it = given.find(s.name);
    if (it == given.end()) throw InputError(in_path + ": missing input '" + s.name + "'; the model expects " + expected);
    CheckInput(s, it->second, &bound);
    args.push_back(ToTensor(it->second));
    given.erase(it);
  }
  if (!given.empty()) throw InputError(in_path + ": unknown input '" + given.begin()->first + "'; the model expects " + expected);
  std::map<std::string, Array> params = ReadNpz(dir + "/params.npz");
  for (const ffi::Any& p : manifest.at("params").cast<ffi::json::Array>()) {
    std::string name = p.cast<ffi::String>();
    auto it = params.find(name);
    if (it == params.end()) throw InputError(dir + "/params.npz: missing weight '" + name + "'");
    args.push_back(ToTensor(it->second));
  }
  params.clear();

  ffi::Module lib = ffi::Module::LoadFromFile(dir + "/model.so");
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // devices as (type, id, allocator) triples; 2 = pooled allocator, as relax.VirtualMachine
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any result;
  main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
  if (repeat > 0) {
    std::vector<double> ms;
    for (int i = 0; i < repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      ffi::Any r;
      main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &r);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("latency: median %.3f ms over %d runs\n", ms[ms.size() / 2], repeat);
  }
  std::vector<ffi::Tensor> flat;
  Flatten(result, &flat);
  if (flat.size() != outputs.size())
    throw std::runtime_error("the model returned " + std::to_string(flat.size()) + " outputs, expected " + std::to_string(outputs.size()));
  std::vector<std::pair<std::string, Array>> named;
  for (size_t i = 0; i < flat.size(); ++i) named.emplace_back(outputs[i].name, FromTensor(flat[i]));
  WriteNpz(out_path, named);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const InputError& e) {
    std::fprintf(stderr, "run-model: error: %s\n", e.what());
    return 2;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "run-model: TVM error: %s: %s\n", std::string(e.kind()).c_str(), std::string(e.message()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run-model: error: %s\n", e.what());
    return 1;
  }
}
