// tvmdeploy_run: load a tvmdeploy artifact folder with the header-only C++ loader, run it on
// inputs from .npy files (or zeros), print a summary of every output, optionally save them.
//
//   tvmdeploy_run ARTIFACT [--trusted-key PUB]... [--input NAME=FILE.npy]... [--zeros]
//                 [--threads N] [--save-outputs DIR]
//
// Exit status: 0 on success, 1 with one line on stderr for anything the user can fix.
#include <tvmdeploy/loader.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

using tvmdeploy::Error;
using tvmdeploy::HostTensor;

// numpy dtype descr <-> TVM dtype name (little endian only).
const std::map<std::string, std::string>& NpyToTvm() {
  static const std::map<std::string, std::string> m = {
      {"<f4", "float32"}, {"<f8", "float64"}, {"<f2", "float16"}, {"|i1", "int8"}, {"|u1", "uint8"},
      {"<i2", "int16"}, {"<i4", "int32"}, {"<i8", "int64"}, {"|b1", "bool"}, {"<u2", "uint16"},
      {"<u4", "uint32"}, {"<u8", "uint64"}};
  return m;
}

std::string HeaderValue(const std::string& header, const std::string& key) {
  auto at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Error("no '" + key + "' in the .npy header");
  auto colon = header.find(':', at);
  auto start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '\'') return header.substr(start + 1, header.find('\'', start + 1) - start - 1);
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  return header.substr(start, header.find_first_of(",}", start) - start);
}

HostTensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("input file " + path + " cannot be read");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::string(magic, 6) != "\x93NUMPY") throw Error(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(&header[0], header_len);
  if (HeaderValue(header, "fortran_order") != "False") throw Error(path + ": Fortran-order arrays are not supported");
  std::string descr = HeaderValue(header, "descr");
  auto dtype = NpyToTvm().find(descr);
  if (dtype == NpyToTvm().end()) throw Error(path + ": dtype " + descr + " is not supported");
  HostTensor t;
  t.dtype = dtype->second;
  std::string dims = HeaderValue(header, "shape");
  size_t count = 1;
  for (size_t pos = 0; pos < dims.size();) {
    size_t end = dims.find(',', pos);
    std::string d = dims.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (d.find_first_not_of(' ') != std::string::npos) {
      t.shape.push_back(std::stoll(d));
      count *= static_cast<size_t>(t.shape.back());
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  size_t item = descr == "<f8" || descr == "<i8" || descr == "<u8" ? 8
                : descr == "<f4" || descr == "<i4" || descr == "<u4"  ? 4
                : descr == "<f2" || descr == "<i2" || descr == "<u2"  ? 2
                                                                      : 1;
  t.data.resize(count * item);
  in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
  if (static_cast<size_t>(in.gcount()) != t.data.size()) throw Error(path + " is truncated");
  return t;
}

void WriteNpy(const std::string& path, const HostTensor& t) {
  std::string descr;
  for (const auto& kv : NpyToTvm())
    if (kv.second == t.dtype) descr = kv.first;
  if (descr.empty()) throw Error("cannot save an output of dtype " + t.dtype + " as .npy");
  std::string shape;
  for (auto d : t.shape) shape += std::to_string(d) + ", ";
  if (t.shape.size() > 1) shape.resize(shape.size() - 2);
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  char b[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(b, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
}

void PrintSummary(const std::string& name, const HostTensor& t) {
  std::string shape;
  for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
  std::cout << "output " << name << ": " << t.dtype << "[" << shape << "]";
  if (t.dtype == "float32" && !t.data.empty()) {
    const float* v = reinterpret_cast<const float*>(t.data.data());
    size_t n = t.data.size() / 4, argmax = 0;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      sum += v[i];
      if (v[i] > v[argmax]) argmax = i;
    }
    std::printf("  min %.6g  max %.6g  mean %.6g  argmax %zu", *std::min_element(v, v + n),
                *std::max_element(v, v + n), sum / n, argmax);
  }
  std::cout << "\n";
}

int Run(int argc, char** argv) {
  std::string artifact, save_dir;
  tvmdeploy::LoadOptions options;
  std::map<std::string, std::string> input_files;
  bool zeros = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--trusted-key") options.trusted_key_files.push_back(value());
    else if (a == "--input") {
      std::string v = value();
      auto eq = v.find('=');
      if (eq == std::string::npos) throw Error("--input takes NAME=FILE.npy, got " + v);
      input_files[v.substr(0, eq)] = v.substr(eq + 1);
    } else if (a == "--zeros") zeros = true;
    else if (a == "--threads") options.threads = std::stoi(value());
    else if (a == "--save-outputs") save_dir = value();
    else if (!a.empty() && a[0] == '-') throw Error("unknown option " + a);
    else if (artifact.empty()) artifact = a;
    else throw Error("one artifact folder only (got " + artifact + " and " + a + ")");
  }
  if (artifact.empty()) {
    throw Error("usage: tvmdeploy_run ARTIFACT [--trusted-key PUB]... [--input NAME=FILE.npy]... [--zeros] "
                "[--threads N] [--save-outputs DIR]");
  }
  tvmdeploy::Model model = tvmdeploy::Model::Load(artifact, options);
  const auto& m = model.manifest();
  std::vector<HostTensor> inputs;
  for (const auto& spec : m.inputs) {
    auto file = input_files.find(spec.name);
    if (file != input_files.end()) {
      inputs.push_back(ReadNpy(file->second));
      input_files.erase(file);
    } else if (zeros) {
      HostTensor t{spec.dtype, spec.shape, {}};
      size_t count = 1;
      for (auto d : spec.shape) count *= static_cast<size_t>(d);
      t.data.assign(count * ((tvm::ffi::StringToDLDataType(spec.dtype).bits + 7) / 8), 0);
      inputs.push_back(std::move(t));
    } else {
      throw Error("no input for " + spec.Describe() + ": give --input " + spec.name + "=FILE.npy, or --zeros");
    }
  }
  if (!input_files.empty()) throw Error("the model has no input named '" + input_files.begin()->first + "'");
  std::vector<HostTensor> outputs = model.Run(inputs);
  std::cout << "model " << m.model_name << " (" << m.preset << "), verified and loaded from " << artifact
            << (options.trusted_key_files.empty() ? "" : " (signature checked)") << ", threads on "
            << model.thread_pool() << "'s pool\n";
  for (size_t i = 0; i < outputs.size(); ++i) {
    PrintSummary(i < m.outputs.size() ? m.outputs[i].name : std::to_string(i), outputs[i]);
    if (!save_dir.empty()) WriteNpy(save_dir + "/output_" + std::to_string(i) + ".npy", outputs[i]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    // TVM's own errors span several lines (with a traceback): keep the last non-empty one.
    std::string text = e.what(), line;
    std::istringstream lines(text);
    std::string last;
    while (std::getline(lines, line))
      if (line.find_first_not_of(" \t") != std::string::npos) last = line;
    std::cerr << "tvmdeploy_run: error: " << last << "\n";
    return 1;
  }
}
