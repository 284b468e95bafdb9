// tvmdeploy C++ loader: run a tvmdeploy artifact folder without Python.
//
// Header-only. Needs TVM's C++ runtime and tvm-ffi headers, both shipped in the PyPI wheels:
//   headers:   <site-packages>/tvm_ffi/include            (tvm/ffi/*.h and dlpack/dlpack.h)
//   libraries: <site-packages>/tvm_ffi/lib/libtvm_ffi.so  (FFI, modules, JSON)
//              <site-packages>/tvm/lib/libtvm_runtime.so  (Relax VM, CPU device, thread pool)
// Only tvm/ffi/* headers are used: the wheel's tvm/include/tvm/runtime/tensor.h includes
// tvm/support/io.h, which the wheel does not ship.
//
// Before the library is loaded, Model::Load checks, like the Python loader:
//   - manifest.json (schema version, plain file names only: nothing outside the folder),
//   - with trusted keys: the Ed25519 signature in manifest.sig over the manifest's exact
//     bytes (needs OpenSSL >= 1.1.1: compile with TVMDEPLOY_WITH_OPENSSL and link libcrypto),
//   - the sha256 of every file the manifest lists; no other file may be in the folder,
//   - CPU architecture and /proc/cpuinfo feature flags, and the device (CPU only here).
// Model::Run checks every input's dtype and shape against the manifest.
//
// Errors are tvmdeploy::Error with a one-line message.
#pragma once

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef TVMDEPLOY_WITH_OPENSSL
#include <openssl/evp.h>
#include <openssl/pem.h>
#endif

namespace tvmdeploy {

constexpr int kSchemaVersion = 1;
constexpr const char* kManifestName = "manifest.json";
constexpr const char* kSignatureName = "manifest.sig";

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

// ---------------------------------------------------------------- SHA-256 (FIPS 180-4)
class Sha256 {
 public:
  Sha256() { Reset(); }
  void Reset() {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(h_, init, sizeof(h_));
    length_ = 0;
    buffered_ = 0;
  }
  void Update(const void* data, size_t size) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    length_ += size;
    while (size > 0) {
      size_t take = std::min(size, sizeof(buffer_) - buffered_);
      std::memcpy(buffer_ + buffered_, p, take);
      buffered_ += take;
      p += take;
      size -= take;
      if (buffered_ == 64) {
        Block(buffer_);
        buffered_ = 0;
      }
    }
  }
  std::array<uint8_t, 32> Digest() {
    uint64_t bits = length_ * 8;
    uint8_t pad = 0x80;
    Update(&pad, 1);
    uint8_t zero = 0;
    while (buffered_ != 56) Update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    Update(len, 8);
    std::array<uint8_t, 32> out{};
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<uint8_t>(h_[i] >> (24 - 8 * j));
    return out;
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void Block(const uint8_t* b) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(b[4 * i]) << 24) | (uint32_t(b[4 * i + 1]) << 16) | (uint32_t(b[4 * i + 2]) << 8) | b[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
      h = g; g = f; f = e; e = d + t1; d = c; c = bb; bb = a; a = t1 + t2;
    }
    h_[0] += a; h_[1] += bb; h_[2] += c; h_[3] += d; h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += h;
  }
  uint32_t h_[8];
  uint64_t length_;
  uint8_t buffer_[64];
  size_t buffered_;
};

inline std::string Hex(const uint8_t* data, size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < size; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  return out;
}

inline std::string Sha256Hex(const std::string& bytes) {
  Sha256 h;
  h.Update(bytes.data(), bytes.size());
  auto d = h.Digest();
  return Hex(d.data(), d.size());
}

// A file inside the artifact, opened without following a symbolic link.
inline int OpenInside(const std::string& folder, const std::string& name) {
  return ::open((folder + "/" + name).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
}

inline std::string ReadSmallFile(const std::string& folder, const std::string& name, size_t limit) {
  int fd = OpenInside(folder, name);
  if (fd < 0) throw Error(folder + ": cannot open " + name + " (" + std::strerror(errno) + "; a symbolic link is refused)");
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) {
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) {
      ::close(fd);
      throw Error(folder + "/" + name + " is larger than " + std::to_string(limit) + " bytes; not a tvmdeploy file");
    }
  }
  ::close(fd);
  if (n < 0) throw Error(folder + ": cannot read " + name + " (" + std::strerror(errno) + ")");
  return out;
}

inline std::string Sha256OfFile(const std::string& folder, const std::string& name) {
  int fd = OpenInside(folder, name);
  if (fd < 0) {
    throw Error(folder + ": " + name + " is missing or not a regular file; the artifact is incomplete, recompile it");
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(folder + ": " + name + " is not a regular file; refusing to load the artifact");
  }
  Sha256 h;
  std::vector<char> buf(1 << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) h.Update(buf.data(), static_cast<size_t>(n));
  ::close(fd);
  if (n < 0) throw Error(folder + ": cannot read " + name);
  auto d = h.Digest();
  return Hex(d.data(), d.size());
}

inline bool PlainName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

inline std::string Base64Decode(const std::string& text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=' || c == '\n' || c == '\r') continue;
    else throw Error("invalid base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// JSON helpers over tvm-ffi's parser (json::Value is ffi::Any).
using JsonObject = tvm::ffi::Map<tvm::ffi::Any, tvm::ffi::Any>;
using JsonArray = tvm::ffi::Array<tvm::ffi::Any>;

inline tvm::ffi::Any Get(const JsonObject& obj, const char* key, const std::string& where) {
  auto it = obj.find(tvm::ffi::String(key));
  if (it == obj.end()) throw Error(where + ": unreadable manifest (no '" + key + "'); recompile the artifact");
  return (*it).second;
}

inline std::string GetString(const JsonObject& obj, const char* key, const std::string& where) {
  auto v = Get(obj, key, where).try_cast<tvm::ffi::String>();
  if (!v) throw Error(where + ": unreadable manifest ('" + key + "' is not a string); recompile the artifact");
  return std::string(*v);
}

inline int64_t GetInt(const JsonObject& obj, const char* key, const std::string& where) {
  auto v = Get(obj, key, where).try_cast<int64_t>();
  if (!v) throw Error(where + ": unreadable manifest ('" + key + "' is not an integer); recompile the artifact");
  return *v;
}

inline JsonObject AsObject(const tvm::ffi::Any& v, const std::string& where) {
  auto o = v.try_cast<JsonObject>();
  if (!o) throw Error(where + ": unreadable manifest (expected a JSON object); recompile the artifact");
  return *o;
}

inline JsonArray AsArray(const tvm::ffi::Any& v, const std::string& where) {
  auto a = v.try_cast<JsonArray>();
  if (!a) throw Error(where + ": unreadable manifest (expected a JSON array); recompile the artifact");
  return *a;
}

inline std::string MachineArch() {
  struct utsname u;
  if (::uname(&u) != 0) return "unknown";
  std::string m = u.machine;
  if (m == "amd64") return "x86_64";
  if (m == "arm64") return "aarch64";
  return m;
}

// This CPU's feature flags from /proc/cpuinfo (x86 'flags', arm64 'Features'); empty if unknown.
inline std::set<std::string> CpuFlags(bool* known) {
  std::string arch = MachineArch();
  std::string key = arch == "x86_64" ? "flags" : arch == "aarch64" ? "Features" : "";
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  *known = false;
  while (!key.empty() && std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon);
    k.erase(k.find_last_not_of(" \t") + 1);
    if (k != key) continue;
    std::istringstream words(line.substr(colon + 1));
    std::set<std::string> flags;
    std::string w;
    while (words >> w) flags.insert(w);
    *known = true;
    return flags;
  }
  return {};
}

// Cores (not hyperthreads) among the CPUs this process may run on.
inline int PhysicalCores() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return std::max(1u, std::thread::hardware_concurrency());
  std::set<std::string> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    std::string topology = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream package(topology + "physical_package_id"), core(topology + "core_id");
    std::string p, c;
    cores.insert(package >> p && core >> c ? p + ":" + c : std::to_string(cpu));
  }
  return std::max<int>(1, static_cast<int>(cores.size()));
}

// TVM sizes its worker pool once, when it starts, from TVM_NUM_THREADS, else from half the
// logical CPUs (on a 2-vCPU machine: one worker, which config_threadpool cannot add to, and
// the caller pinned to CPU 0). Its workers spin 300000 sched_yield rounds after each kernel
// (~70 ms of a core after every run), and any spinning collapses when another process
// wants the cores (each yield gives a time slice away: 25x slower): 0, workers sleep at
// once. The same as the Python loader (runtime/thread_pool.py); values the user set win.
inline void SizeThreadPool(int64_t threads) {
  setenv("TVM_NUM_THREADS", std::to_string(std::max<int64_t>(threads, PhysicalCores())).c_str(), 0);
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "0", 0);
}

// tvmdeploy's thread pool (compiler/native/parallel_pool.c, linked into the libraries
// tvmdeploy builds for a Linux CPU): the library's parallel-launch slot, which TVM fills
// with its own pool when it loads the library, is pointed at it, as the Python loader
// does (runtime/parallel_pool.py). Its workers spin while an inference runs (begin ..
// end) and sleep between inferences. TVMDEPLOY_THREAD_POOL=tvm keeps TVM's pool.
struct ParallelPool {
  void (*begin)() = nullptr;
  void (*end)() = nullptr;
};

inline ParallelPool AttachParallelPool(const std::string& library_path, int64_t threads) {
  ParallelPool pool;
  const char* choice = std::getenv("TVMDEPLOY_THREAD_POOL");
  if (threads < 2 || (choice != nullptr && std::string(choice) == "tvm")) return pool;
  void* handle = dlopen(library_path.c_str(), RTLD_NOLOAD | RTLD_LAZY);  // the copy TVM loaded
  if (handle == nullptr) return pool;
  auto configure = reinterpret_cast<int (*)(int)>(dlsym(handle, "tvmdeploy_pool_configure"));
  void* launch = dlsym(handle, "tvmdeploy_parallel_launch");
  auto begin = reinterpret_cast<void (*)()>(dlsym(handle, "tvmdeploy_pool_begin"));
  auto end = reinterpret_cast<void (*)()>(dlsym(handle, "tvmdeploy_pool_end"));
  auto slot = static_cast<void**>(dlsym(handle, "__TVMBackendParallelLaunch"));
  bool barrier = dlsym(handle, "__TVMBackendParallelBarrier") != nullptr;  // the pool has none
  if (configure && launch && begin && end && slot && !barrier) {
    configure(static_cast<int>(threads));
    *slot = launch;
    pool.begin = begin;
    pool.end = end;
  }
  dlclose(handle);  // TVM's module keeps the library loaded
  return pool;
}

// Brackets one inference on the pool (nothing for libraries without it).
class PoolInference {
 public:
  explicit PoolInference(const ParallelPool& pool) : pool_(pool) {
    if (pool_.begin) pool_.begin();
  }
  ~PoolInference() {
    if (pool_.end) pool_.end();
  }
  PoolInference(const PoolInference&) = delete;
  PoolInference& operator=(const PoolInference&) = delete;

 private:
  const ParallelPool& pool_;
};

}  // namespace detail

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;

  static std::string ShapeString(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
  std::string Describe() const { return name + ": " + dtype + ShapeString(shape); }
};

struct Manifest {
  int64_t schema_version = 0;
  std::string model_name, preset, device, arch, library, weights;
  int64_t threads = 0;
  std::vector<std::string> cpu_flags;
  std::vector<TensorSpec> inputs, outputs;
  std::map<std::string, std::string> files;  // file name -> sha256
  std::string bytes;  // the manifest.json bytes these fields were parsed from
};

// A tensor in host memory: what goes in and comes out of Model::Run.
struct HostTensor {
  std::string dtype;  // "float32", "int64", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // C order, little endian
};

struct LoadOptions {
  std::vector<std::string> trusted_key_files;  // PEM Ed25519 public keys; empty: no signature check
  int threads = -1;  // runtime threads; -1: the manifest's (0: one per core)
};

inline Manifest ParseManifest(const std::string& bytes, const std::string& where) {
  tvm::ffi::String error;
  tvm::ffi::Any root = tvm::ffi::json::Parse(tvm::ffi::String(bytes), &error);
  if (!error.empty()) throw Error(where + ": unreadable manifest (" + std::string(error) + "); recompile the artifact");
  using namespace detail;
  JsonObject obj = AsObject(root, where);
  Manifest m;
  m.bytes = bytes;
  m.schema_version = GetInt(obj, "schema_version", where);
  if (m.schema_version > kSchemaVersion) {
    throw Error(where + ": manifest schema " + std::to_string(m.schema_version) +
                " is newer than this loader understands (" + std::to_string(kSchemaVersion) + "); upgrade it");
  }
  m.model_name = GetString(obj, "model_name", where);
  m.preset = GetString(obj, "preset", where);
  m.device = GetString(obj, "device", where);
  m.arch = GetString(obj, "arch", where);
  m.library = GetString(obj, "library", where);
  m.weights = GetString(obj, "weights", where);
  m.threads = GetInt(obj, "threads", where);
  for (const auto& f : AsArray(Get(obj, "cpu_flags", where), where)) {
    m.cpu_flags.push_back(std::string(f.cast<tvm::ffi::String>()));
  }
  for (const char* which : {"inputs", "outputs"}) {
    for (const auto& item : AsArray(Get(obj, which, where), where)) {
      JsonObject t = AsObject(item, where);
      TensorSpec spec{GetString(t, "name", where), {}, GetString(t, "dtype", where)};
      for (const auto& d : AsArray(Get(t, "shape", where), where)) spec.shape.push_back(d.cast<int64_t>());
      (std::string(which) == "inputs" ? m.inputs : m.outputs).push_back(spec);
    }
  }
  for (const auto& kv : AsObject(Get(obj, "files", where), where)) {
    std::string name(kv.first.cast<tvm::ffi::String>());
    if (!PlainName(name)) {
      throw Error(where + ": the manifest lists '" + name + "', which is not a plain file name; refusing to look outside the artifact");
    }
    m.files[name] = std::string(kv.second.cast<tvm::ffi::String>());
  }
  if (!m.files.count(m.library)) throw Error(where + ": the manifest lists no hash for its library " + m.library);
  return m;
}

// Ed25519 over the manifest's exact bytes; throws unless one trusted key signed it.
inline void VerifySignature(const std::string& folder, const std::string& manifest_bytes,
                            const std::vector<std::string>& trusted_key_files) {
#ifndef TVMDEPLOY_WITH_OPENSSL
  (void)manifest_bytes;
  (void)trusted_key_files;
  throw Error(folder + ": trusted keys were given, but this program was built without OpenSSL, which checks "
              "Ed25519 signatures; rebuild with -DTVMDEPLOY_WITH_OPENSSL=ON (libssl-dev)");
#else
  using namespace detail;
  struct Key {
    std::string path, id;
    EVP_PKEY* pkey;
  };
  std::vector<Key> keys;
  auto free_keys = [&keys] { for (auto& k : keys) EVP_PKEY_free(k.pkey); };
  for (const auto& path : trusted_key_files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) { free_keys(); throw Error("trusted key " + path + " cannot be read"); }
    std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (pkey == nullptr || EVP_PKEY_id(pkey) != EVP_PKEY_ED25519) {
      EVP_PKEY_free(pkey);
      free_keys();
      throw Error(path + " is not an Ed25519 PEM public key; use the .pub file from `tvmdeploy keygen`");
    }
    uint8_t raw[32];
    size_t len = sizeof(raw);
    EVP_PKEY_get_raw_public_key(pkey, raw, &len);
    Sha256 h;
    h.Update(raw, len);
    auto d = h.Digest();
    keys.push_back({path, Hex(d.data(), d.size()).substr(0, 16), pkey});
  }
  if (keys.empty()) throw Error("no trusted keys given");
  std::string doc_bytes;
  try {
    doc_bytes = ReadSmallFile(folder, kSignatureName, 4096);
  } catch (const Error&) {
    free_keys();
    throw Error(folder + " is not signed (no readable " + kSignatureName + ") and trusted keys are required; "
                "sign it with `tvmdeploy sign`");
  }
  tvm::ffi::String error;
  tvm::ffi::Any doc_any = tvm::ffi::json::Parse(tvm::ffi::String(doc_bytes), &error);
  std::string signer, signature;
  try {
    if (!error.empty()) throw Error("");
    JsonObject doc = AsObject(doc_any, folder);
    if (GetString(doc, "algorithm", folder) != "ed25519") throw Error("");
    signer = GetString(doc, "key_id", folder);
    signature = Base64Decode(GetString(doc, "signature", folder));
    if (signature.size() != 64) throw Error("");
  } catch (const Error&) {
    free_keys();
    throw Error(folder + "/" + kSignatureName + ": unreadable signature; re-sign the artifact");
  }
  const Key* match = nullptr;
  std::string trusted;
  for (const auto& k : keys) {
    if (k.id == signer) match = &k;
    trusted += (trusted.empty() ? "" : ", ") + k.id + " (" + k.path + ")";
  }
  if (match == nullptr) {
    free_keys();
    throw Error(folder + " is signed by key " + signer + ", which is not among the trusted keys (" + trusted +
                "); refusing to load it");
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, match->pkey) == 1 &&
            EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                             reinterpret_cast<const unsigned char*>(manifest_bytes.data()), manifest_bytes.size()) == 1;
  EVP_MD_CTX_free(ctx);
  free_keys();
  if (!ok) {
    throw Error(folder + ": the signature does not match manifest.json (the manifest was modified after signing, "
                "or the signature was forged); refusing to load it");
  }
#endif
}

// Every listed file matches its sha256, and nothing else is in the folder.
inline void VerifyFiles(const std::string& folder, const Manifest& m) {
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) throw Error(folder + ": cannot list the artifact folder");
  std::vector<std::string> extra;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == ".." || name == kManifestName || name == kSignatureName) continue;
    if (!m.files.count(name)) extra.push_back(name);
  }
  ::closedir(dir);
  if (!extra.empty()) {
    throw Error(folder + ": " + extra.front() + " is not listed in manifest.json; refusing to load an artifact with "
                "files the manifest does not vouch for");
  }
  for (const auto& kv : m.files) {
    if (detail::Sha256OfFile(folder, kv.first) != kv.second) {
      throw Error(folder + ": " + kv.first + " does not match the sha256 in manifest.json (modified or corrupted after "
                  "the build); refusing to load it, recompile or re-download the artifact");
    }
  }
}

inline void CheckMachine(const std::string& folder, const Manifest& m) {
  std::string here = detail::MachineArch();
  if (m.arch != here) {
    throw Error(folder + ": built for " + m.arch + " (preset " + m.preset + "), but this machine is " + here +
                "; compile for a " + here + " preset");
  }
  bool known = false;
  auto flags = detail::CpuFlags(&known);
  if (known) {
    for (const auto& f : m.cpu_flags) {
      if (!flags.count(f)) {
        throw Error(folder + ": built for a CPU with " + f + " (preset " + m.preset +
                    "), which this CPU lacks; recompile with a preset for this machine");
      }
    }
  }
  if (m.device != "cpu") {
    throw Error(folder + ": built for device '" + m.device + "' (preset " + m.preset +
                "); this C++ loader runs CPU artifacts only, use the Python loader for GPUs");
  }
  if (m.weights != "embedded") {
    throw Error(folder + ": its weights travel beside the library (" + m.weights +
                ", magnitude pruning); this C++ loader needs them embedded, recompile without --prune-magnitude");
  }
}

class Model {
 public:
  // Verify (signature, hashes, machine) and load an artifact folder.
  static Model Load(const std::string& folder, const LoadOptions& options = {}) {
    std::string manifest_bytes = detail::ReadSmallFile(folder, kManifestName, 16 << 20);
    if (!options.trusted_key_files.empty()) VerifySignature(folder, manifest_bytes, options.trusted_key_files);
    Manifest manifest = ParseManifest(manifest_bytes, folder + "/" + kManifestName);
    VerifyFiles(folder, manifest);
    CheckMachine(folder, manifest);
    int64_t threads = options.threads >= 0 ? options.threads : manifest.threads;
    detail::SizeThreadPool(threads);  // before TVM's pool starts
    if (threads > 0) {
      if (auto config = tvm::ffi::Function::GetGlobal("runtime.config_threadpool")) (*config)(0, threads);
    }
    std::string library_path = folder + "/" + manifest.library;
    tvm::ffi::Module library = tvm::ffi::Module::LoadFromFile(library_path);
    detail::ParallelPool pool = detail::AttachParallelPool(library_path, threads > 0 ? threads : detail::PhysicalCores());
    auto load_executable = library->GetFunction("vm_load_executable");
    if (!load_executable) throw Error(folder + ": " + manifest.library + " holds no Relax VM executable");
    tvm::ffi::Module vm = (*load_executable)().cast<tvm::ffi::Module>();
    // One device, CPU, with the pooled allocator (as tvm.runtime.vm.VirtualMachine does).
    constexpr int kPooledAllocator = 2;
    auto init = vm->GetFunction("vm_initialization");
    if (!init) throw Error(folder + ": the executable has no vm_initialization");
    (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    auto main = vm->GetFunction("main");
    if (!main) throw Error(folder + ": the executable has no 'main' function");
    return Model(std::move(manifest), std::move(vm), *main, pool);
  }

  const Manifest& manifest() const { return manifest_; }

  // "tvmdeploy": the library's parallel loops run on tvmdeploy's pool; "tvm": on TVM's.
  std::string thread_pool() const { return pool_.begin ? "tvmdeploy" : "tvm"; }

  // Run once; inputs in manifest order, each checked against its dtype and shape.
  std::vector<HostTensor> Run(const std::vector<HostTensor>& inputs) const {
    const auto& specs = manifest_.inputs;
    if (inputs.size() != specs.size()) {
      std::string expected;
      for (const auto& s : specs) expected += (expected.empty() ? "" : ", ") + s.Describe();
      throw Error("expected " + std::to_string(specs.size()) + " input(s) (" + expected + "), got " +
                  std::to_string(inputs.size()));
    }
    std::vector<tvm::ffi::Any> args;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const auto& in = inputs[i];
      const auto& spec = specs[i];
      if (in.dtype != spec.dtype) {
        throw Error("input '" + spec.name + "' has dtype " + in.dtype + ", expected " + spec.dtype);
      }
      if (in.shape != spec.shape) {
        throw Error("input '" + spec.name + "' has shape " + TensorSpec::ShapeString(in.shape) + ", expected " +
                    TensorSpec::ShapeString(spec.shape) + " (the artifact is compiled for that shape)");
      }
      tvm::ffi::Tensor t = NewCpuTensor(spec.dtype, spec.shape);
      size_t bytes = tvm::ffi::GetDataSize(*t.GetDLTensorPtr());
      if (in.data.size() != bytes) {
        throw Error("input '" + spec.name + "' holds " + std::to_string(in.data.size()) + " bytes, expected " +
                    std::to_string(bytes));
      }
      std::memcpy(t.GetDLTensorPtr()->data, in.data.data(), bytes);
      args.emplace_back(std::move(t));
    }
    std::vector<tvm::ffi::AnyView> views(args.begin(), args.end());
    // The Relax VM is not re-entrant (two calls at once share its frames and storage):
    // calls on one Model take turns; load one Model per thread to run them in parallel.
    std::lock_guard<std::mutex> turn(*turn_);
    tvm::ffi::Any result;
    {
      detail::PoolInference inference(pool_);
      main_.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    }
    std::vector<HostTensor> outputs;
    Collect(result, &outputs);  // copies out of the VM's storage, which the next call reuses
    return outputs;
  }

 private:
  struct CpuAlloc {
    void AllocData(DLTensor* t) {
      size_t bytes = std::max<size_t>(tvm::ffi::GetDataSize(*t), 1);
      t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      if (t->data == nullptr) throw Error("out of memory for a tensor of " + std::to_string(bytes) + " bytes");
    }
    void FreeData(DLTensor* t) { std::free(t->data); }
  };

  static tvm::ffi::Tensor NewCpuTensor(const std::string& dtype, const std::vector<int64_t>& shape) {
    DLDevice cpu{kDLCPU, 0};
    return tvm::ffi::Tensor::FromNDAlloc(CpuAlloc(), tvm::ffi::ShapeView(shape.data(), shape.size()),
                                         tvm::ffi::StringToDLDataType(dtype), cpu);
  }

  static void Collect(const tvm::ffi::Any& value, std::vector<HostTensor>* out) {
    if (auto t = value.try_cast<tvm::ffi::Tensor>()) {
      const DLTensor* dl = t->GetDLTensorPtr();
      if (dl->device.device_type != kDLCPU || !tvm::ffi::IsContiguous(*dl)) {
        throw Error("an output is not a contiguous CPU tensor");
      }
      HostTensor h;
      h.dtype = std::string(tvm::ffi::DLDataTypeToString(dl->dtype));
      h.shape.assign(dl->shape, dl->shape + dl->ndim);
      size_t bytes = tvm::ffi::GetDataSize(*dl);
      const uint8_t* p = static_cast<const uint8_t*>(dl->data) + dl->byte_offset;
      h.data.assign(p, p + bytes);
      out->push_back(std::move(h));
      return;
    }
    if (auto a = value.try_cast<tvm::ffi::Array<tvm::ffi::Any>>()) {
      for (const auto& item : *a) Collect(item, out);
      return;
    }
    throw Error("the model returned something other than tensors (type " + value.GetTypeKey() + ")");
  }

  Model(Manifest manifest, tvm::ffi::Module vm, tvm::ffi::Function main, detail::ParallelPool pool)
      : manifest_(std::move(manifest)), vm_(std::move(vm)), main_(std::move(main)), pool_(pool) {}

  Manifest manifest_;
  tvm::ffi::Module vm_;
  tvm::ffi::Function main_;
  detail::ParallelPool pool_;
  std::shared_ptr<std::mutex> turn_ = std::make_shared<std::mutex>();  // shared_ptr: Model stays movable
};

}  // namespace tvmdeploy
