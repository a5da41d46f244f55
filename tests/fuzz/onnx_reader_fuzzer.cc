// libFuzzer target for the engine's ONNX reader (csrc/onnx, csrc/core/mapped_file).
//
// The contract under test: any file, however truncated, corrupted or hostile,
// either reads or raises ModelFileError; it never crashes, reads out of bounds,
// hangs, or throws anything else. The reader takes a path, so each input is
// written to model.onnx in a scratch folder, then opened and read the way
// pali_engine.inspect() and load_tensor() read it: every initializer's values,
// the metadata, and the unchanged-file check.
//
// The scratch folder also holds what external data may point at: weights.bin
// (4096 bytes, byte i is i * 7 mod 256, which the seed corpus refers to), an
// empty file, a subfolder, a FIFO (opened without blocking, then refused) and a
// symbolic link that leaves the folder (refused). Build and run: .ci/fuzz.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "core/error.h"
#include "onnx/onnx_file.h"

namespace {

std::string scratch_folder;
std::string model_path;

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
}

void make_scratch_folder() {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = tmp && *tmp ? tmp : "/tmp";
  std::string templ = base + "/onnx-reader-fuzz-XXXXXX";
  if (!::mkdtemp(templ.data())) {
    std::perror("mkdtemp");
    std::abort();
  }
  // The model's folder is a subfolder, so that a link can point just outside it.
  const std::string outside = templ;
  scratch_folder = outside + "/model";
  model_path = scratch_folder + "/model.onnx";
  uint8_t weights[4096];
  for (size_t i = 0; i < sizeof weights; ++i) weights[i] = static_cast<uint8_t>(i * 7);
  if (::mkdir(scratch_folder.c_str(), 0700) != 0 || ::mkdir((scratch_folder + "/sub").c_str(), 0700) != 0 ||
      ::mkfifo((scratch_folder + "/fifo.bin").c_str(), 0600) != 0 ||
      ::symlink("../secret.bin", (scratch_folder + "/outside.bin").c_str()) != 0) {
    std::perror("scratch folder");
    std::abort();
  }
  write_file(scratch_folder + "/weights.bin", weights, sizeof weights);
  write_file(scratch_folder + "/sub/weights.bin", weights, 64);
  write_file(scratch_folder + "/empty.bin", weights, 0);
  write_file(outside + "/secret.bin", weights, sizeof weights);
}

// Reads every byte of a tensor, so that a view past its mapping faults here.
uint64_t checksum(const pali::Tensor& t) {
  const auto* p = static_cast<const volatile uint8_t*>(t.raw());
  uint64_t sum = 0;
  for (size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  make_scratch_folder();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_file(model_path, data, size);
  try {
    auto file = pali::onnx::OnnxFile::open(model_path);
    volatile uint64_t sink = file->ir_version() + file->opset_version() + file->producer_name().size();
    for (const auto& [key, value] : file->metadata()) sink = sink + (file->find_metadata(key) == &value);
    for (const auto& info : file->initializers()) {
      const pali::Tensor t = file->tensor(info.name);
      if (t.nbytes() != info.size && info.location != pali::onnx::DataLocation::typed) std::abort();
      sink = sink + checksum(t);
      file->release(info.name);
    }
    file->check_unchanged();
    (void)sink;
  } catch (const pali::ModelFileError&) {
    // The expected outcome for a broken file.
  }
  return 0;
}
