// The engine's own reader of ONNX model files.
//
// It reads only what the engine needs: the graph's initializers (name, data
// type, dims, and where their bytes are: raw_data, typed fields, or external
// data beside the file) and the model's metadata_props. The file and its
// external data files are mapped into memory, and tensors whose bytes lie
// aligned in a mapping are returned as views of it, without a copy.
//
// The reader is strict: every length, offset and count is checked, and a
// truncated, corrupted or hostile file raises ModelFileError naming the file
// and the problem. No protobuf or onnx library is needed.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace pali::onnx {

// Where an initializer's bytes are.
enum class DataLocation { raw, typed, external };

struct InitializerInfo {
  std::string name;
  DType dtype = DType::f32;
  int onnx_data_type = 0;
  Shape shape;
  // ONNX INT4: two signed 4-bit values a byte, the even index in the low
  // nibble; `dtype` is then u8, `shape` the values' shape (its last dimension
  // even, so that rows start on bytes) and tensor() gives u8 [..., last / 2].
  bool int4 = false;
  DataLocation location = DataLocation::raw;
  // raw and external: the bytes themselves; typed: the whole TensorProto message,
  // decoded on demand.
  const uint8_t* bytes = nullptr;
  size_t size = 0;
  std::shared_ptr<const MappedFile> file;  // the mapping holding `bytes`
};

class OnnxFile {
 public:
  // Maps and parses `path`; throws ModelFileError on any problem.
  static std::shared_ptr<const OnnxFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  int64_t ir_version() const { return ir_version_; }
  const std::string& producer_name() const { return producer_name_; }
  // Opset of the default ("" or "ai.onnx") domain; 0 when absent.
  int64_t opset_version() const { return opset_version_; }

  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  // Value of a metadata key, or nullptr.
  const std::string* find_metadata(const std::string& key) const;

  // Initializers in file order.
  const std::vector<InitializerInfo>& initializers() const { return initializers_; }
  bool has_tensor(const std::string& name) const { return index_.count(name) != 0; }
  // Throws ModelFileError naming the file and the tensor when absent.
  const InitializerInfo& info(const std::string& name) const;
  // The tensor's values: a view of the mapping when possible, else a decoded copy.
  Tensor tensor(const std::string& name) const;
  // "int4" for an INT4 initializer, else its dtype's name.
  const char* dtype_label(const std::string& name) const;
  // Drops the resident pages of the tensor's bytes (MappedFile::release); views
  // of it stay valid. Call when the values have been copied elsewhere.
  void release(const std::string& name) const;
  // The same for n bytes at p, part of a tensor's values read from a mapping
  // (a no-op for memory that is not): packing a large tensor drops its pages
  // as it goes.
  void release_bytes(const void* p, size_t n) const;
  // Throws ModelFileError when the file or one of its external data files
  // changed since it was opened (MappedFile::check_unchanged). Call after
  // copying what was read from the mappings.
  void check_unchanged() const;

 private:
  OnnxFile() = default;
  void parse();
  void parse_graph(const uint8_t* bytes, size_t size);
  void parse_tensor(const uint8_t* bytes, size_t size);
  std::shared_ptr<const MappedFile> external_file(const std::string& location);
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::string directory_;
  // Real paths of the folders external data may come from: the model's folder
  // and, when the model is a symlink, the folder of the file it points to.
  std::vector<std::string> data_folders_;
  std::shared_ptr<const MappedFile> file_;
  std::map<std::string, std::shared_ptr<const MappedFile>> external_files_;
  int64_t ir_version_ = 0;
  int64_t opset_version_ = 0;
  std::string producer_name_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::vector<InitializerInfo> initializers_;
  std::map<std::string, size_t> index_;
};

}  // namespace pali::onnx
