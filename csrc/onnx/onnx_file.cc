#include "onnx/onnx_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "core/error.h"
#include "onnx/protobuf_wire.h"

namespace pali::onnx {
namespace {

// Field numbers from onnx.proto.
namespace model_field {
constexpr uint32_t ir_version = 1, producer_name = 2, graph = 7, opset_import = 8,
                   metadata_props = 14;
}
namespace graph_field {
constexpr uint32_t initializer = 5;
}
namespace tensor_field {
constexpr uint32_t dims = 1, data_type = 2, segment = 3, float_data = 4, int32_data = 5,
                   string_data = 6, int64_data = 7, name = 8, raw_data = 9, double_data = 10,
                   uint64_data = 11, external_data = 13, data_location = 14;
}
namespace entry_field {
constexpr uint32_t key = 1, value = 2;
}
namespace opset_field {
constexpr uint32_t domain = 1, version = 2;
}

constexpr int kOnnxInt4 = 22;

// ONNX TensorProto.DataType values the engine can hold.
bool dtype_from_onnx(int onnx_type, DType* out) {
  switch (onnx_type) {
    case 1: *out = DType::f32; return true;
    case 2: *out = DType::u8; return true;
    case 3: *out = DType::i8; return true;
    case 5: *out = DType::i16; return true;
    case 6: *out = DType::i32; return true;
    case 7: *out = DType::i64; return true;
    case 9: *out = DType::boolean; return true;
    case 10: *out = DType::f16; return true;
    case 11: *out = DType::f64; return true;
    case 16: *out = DType::bf16; return true;
    case kOnnxInt4: *out = DType::u8; return true;  // packed pairs (InitializerInfo::int4)
    default: return false;
  }
}

// The typed field that holds values of a data type when raw_data is absent.
uint32_t typed_field_for(DType dtype) {
  switch (dtype) {
    case DType::f32: return tensor_field::float_data;
    case DType::f64: return tensor_field::double_data;
    case DType::i64: return tensor_field::int64_data;
    default: return tensor_field::int32_data;  // int32, int16, int8, uint8, bool, float16, bfloat16
  }
}

bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    size_t extra;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; }
    else return false;
    if (i + extra >= n) return false;
    for (size_t k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += extra + 1;
  }
  return true;
}

std::string utf8_string(const WireField& f, const char* what, const WireReader& reader) {
  if (f.type != kLengthDelimited) reader.fail(std::string(what) + " is not a string");
  if (!valid_utf8(f.bytes, f.size)) reader.fail(std::string(what) + " is not valid UTF-8");
  return std::string(reinterpret_cast<const char*>(f.bytes), f.size);
}

// A key/value StringStringEntryProto.
std::pair<std::string, std::string> parse_entry(const WireField& f, const uint8_t* origin,
                                                const char* what) {
  WireReader reader(f.bytes, f.size, origin);
  std::pair<std::string, std::string> entry;
  while (!reader.done()) {
    const WireField g = reader.next();
    if (g.number == entry_field::key) entry.first = utf8_string(g, what, reader);
    else if (g.number == entry_field::value) entry.second = utf8_string(g, what, reader);
  }
  return entry;
}

// Calls visit(value) for every element of a repeated scalar field, packed or not.
// Counts elements without decoding when visit is null-like (see count_typed_values).
template <typename Visit>
void for_each_typed_value(const uint8_t* message, size_t size, const uint8_t* origin,
                          uint32_t field_number, Visit&& visit) {
  WireReader reader(message, size, origin);
  const bool fixed64 = field_number == tensor_field::double_data;
  const bool fixed32 = field_number == tensor_field::float_data;
  while (!reader.done()) {
    const WireField f = reader.next();
    if (f.number != field_number) continue;
    if (f.type == kLengthDelimited) {  // packed
      if (fixed32 || fixed64) {
        const size_t width = fixed32 ? 4 : 8;
        if (f.size % width) reader.fail("packed field has a partial element");
        for (size_t i = 0; i < f.size; i += width) {
          uint64_t v = 0;
          for (size_t k = 0; k < width; ++k) v |= static_cast<uint64_t>(f.bytes[i + k]) << (8 * k);
          visit(v);
        }
      } else {
        WireReader packed(f.bytes, f.size, origin);
        while (!packed.done()) visit(packed.read_varint("packed varint"));
      }
    } else {
      const WireType expected = fixed32 ? kFixed32 : fixed64 ? kFixed64 : kVarint;
      if (f.type != expected) reader.fail("typed data field has the wrong wire type");
      visit(f.varint);
    }
  }
}

bool is_safe_relative_location(const std::string& location) {
  if (location.empty() || location[0] == '/' || location.find('\0') != std::string::npos) return false;
  size_t start = 0;
  while (start <= location.size()) {
    size_t end = location.find_first_of("/\\", start);
    if (end == std::string::npos) end = location.size();
    if (location.compare(start, end - start, "..") == 0 && end - start == 2) return false;
    start = end + 1;
  }
  return true;
}

// The canonical absolute path (symlinks resolved), or "" when it does not exist.
std::string real_path(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (!resolved) return "";
  std::string out(resolved);
  std::free(resolved);
  return out;
}

std::string parent_folder(const std::string& path) {
  if (path.empty()) return "";
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

std::shared_ptr<const OnnxFile> OnnxFile::open(const std::string& path) {
  std::shared_ptr<OnnxFile> model(new OnnxFile());
  model->path_ = path;
  const size_t slash = path.find_last_of('/');
  model->directory_ = slash == std::string::npos ? "." : path.substr(0, slash);
  if (model->directory_.empty()) model->directory_ = "/";
  model->file_ = MappedFile::open(path);
  for (const std::string& folder : {model->directory_, parent_folder(real_path(path))}) {
    std::string real = real_path(folder);
    if (!real.empty() && std::find(model->data_folders_.begin(), model->data_folders_.end(), real) ==
                             model->data_folders_.end())
      model->data_folders_.push_back(std::move(real));
  }
  try {
    model->parse();
  } catch (const WireError& e) {
    model->check_unchanged();  // a file rewritten while it is parsed reads as corrupted
    model->fail(str_cat("corrupted or truncated ONNX file: ", e.what()));
  } catch (const ModelFileError&) {
    model->check_unchanged();
    throw;
  }
  model->check_unchanged();
  return model;
}

void OnnxFile::check_unchanged() const {
  file_->check_unchanged();
  for (const auto& [location, file] : external_files_) file->check_unchanged();
}

void OnnxFile::fail(const std::string& what) const { throw ModelFileError(path_ + ": " + what); }

void OnnxFile::parse() {
  if (file_->size() == 0) fail("empty file, not an ONNX model");
  const uint8_t* origin = file_->data();
  WireReader reader(origin, file_->size(), origin);
  bool have_graph = false;
  std::set<std::string> metadata_keys;
  while (!reader.done()) {
    const WireField f = reader.next();
    switch (f.number) {
      case model_field::ir_version:
        if (f.type != kVarint) reader.fail("ir_version is not an integer");
        ir_version_ = static_cast<int64_t>(f.varint);
        break;
      case model_field::producer_name:
        producer_name_ = utf8_string(f, "producer_name", reader);
        break;
      case model_field::opset_import: {
        if (f.type != kLengthDelimited) reader.fail("opset_import is not a message");
        WireReader opset(f.bytes, f.size, origin);
        std::string domain;
        int64_t version = 0;
        while (!opset.done()) {
          const WireField g = opset.next();
          if (g.number == opset_field::domain) domain = utf8_string(g, "opset domain", opset);
          else if (g.number == opset_field::version && g.type == kVarint) version = static_cast<int64_t>(g.varint);
        }
        if (domain.empty() || domain == "ai.onnx") opset_version_ = version;
        break;
      }
      case model_field::metadata_props: {
        if (f.type != kLengthDelimited) reader.fail("metadata_props is not a message");
        auto entry = parse_entry(f, origin, "metadata_props");
        if (!metadata_keys.insert(entry.first).second)
          fail(str_cat("metadata key '", entry.first, "' appears twice"));
        metadata_.push_back(std::move(entry));
        break;
      }
      case model_field::graph:
        if (f.type != kLengthDelimited) reader.fail("graph is not a message");
        if (have_graph) fail("the model has two graphs");
        have_graph = true;
        parse_graph(f.bytes, f.size);
        break;
      default:
        break;
    }
  }
  if (!have_graph) fail("not an ONNX model: no graph found");
  if (ir_version_ <= 0) fail("not an ONNX model: no ir_version");
}

void OnnxFile::parse_graph(const uint8_t* bytes, size_t size) {
  WireReader reader(bytes, size, file_->data());
  while (!reader.done()) {
    const WireField f = reader.next();
    if (f.number != graph_field::initializer) continue;
    if (f.type != kLengthDelimited) reader.fail("initializer is not a message");
    parse_tensor(f.bytes, f.size);
  }
}

void OnnxFile::parse_tensor(const uint8_t* bytes, size_t size) {
  const uint8_t* origin = file_->data();
  WireReader reader(bytes, size, origin);
  InitializerInfo info;
  int64_t data_type = -1;
  bool have_raw = false, external = false, segmented = false;
  std::vector<std::pair<std::string, std::string>> external_entries;
  while (!reader.done()) {
    const WireField f = reader.next();
    switch (f.number) {
      case tensor_field::dims:
        if (f.type == kVarint) {
          info.shape.push_back(static_cast<int64_t>(f.varint));
        } else if (f.type == kLengthDelimited) {
          WireReader packed(f.bytes, f.size, origin);
          while (!packed.done()) info.shape.push_back(static_cast<int64_t>(packed.read_varint("dims")));
        } else {
          reader.fail("dims has the wrong wire type");
        }
        break;
      case tensor_field::data_type:
        if (f.type != kVarint) reader.fail("data_type is not an integer");
        data_type = static_cast<int64_t>(f.varint);
        break;
      case tensor_field::name:
        info.name = utf8_string(f, "tensor name", reader);
        break;
      case tensor_field::raw_data:
        if (f.type != kLengthDelimited) reader.fail("raw_data is not bytes");
        have_raw = true;
        info.bytes = f.bytes;
        info.size = f.size;
        break;
      case tensor_field::segment:
        segmented = true;
        break;
      case tensor_field::external_data:
        if (f.type != kLengthDelimited) reader.fail("external_data is not a message");
        external_entries.push_back(parse_entry(f, origin, "external_data"));
        break;
      case tensor_field::data_location:
        if (f.type != kVarint) reader.fail("data_location is not an integer");
        if (f.varint > 1) reader.fail("unknown data_location " + std::to_string(f.varint));
        external = f.varint == 1;
        break;
      default:
        break;
    }
  }

  const std::string label = info.name.empty() ? std::string("an unnamed initializer") : "tensor '" + info.name + "'";
  if (info.name.empty()) fail("an initializer has no name");
  if (index_.count(info.name)) fail(str_cat(label, " appears twice"));
  if (segmented) fail(str_cat(label, " is segmented, which is not supported"));
  if (data_type < 0) fail(str_cat(label, " has no data_type"));
  if (data_type > 0x7fffffff || !dtype_from_onnx(static_cast<int>(data_type), &info.dtype))
    fail(str_cat(label, " has unsupported data type ", data_type));
  info.onnx_data_type = static_cast<int>(data_type);
  info.int4 = data_type == kOnnxInt4;
  if (info.int4 && (info.shape.empty() || info.shape.back() % 2 != 0))
    fail(str_cat(label, " is int4 with shape ", shape_str(info.shape),
                 "; the engine reads int4 tensors whose last dimension is even"));
  for (int64_t d : info.shape)
    if (d < 0 || d > (int64_t{1} << 48)) fail(str_cat(label, " has an invalid dimension ", d));
  int64_t numel;
  try {
    numel = shape_numel(info.shape);
  } catch (const InvalidArgument&) {
    fail(str_cat(label, " has too many elements: ", shape_str(info.shape)));
  }
  const size_t element = dtype_size(info.dtype);
  if (static_cast<uint64_t>(numel) > (uint64_t{1} << 62) / element)
    fail(str_cat(label, " is too large: ", shape_str(info.shape)));
  const size_t expected_bytes = info.int4 ? static_cast<size_t>(numel) / 2 : static_cast<size_t>(numel) * element;
  const std::string type_label = info.int4 ? std::string("int4") : std::string(dtype_name(info.dtype));

  if (external) {
    if (have_raw) fail(str_cat(label, " has both raw_data and external data"));
    std::string location;
    uint64_t offset = 0, length = 0;
    bool have_length = false;
    for (const auto& [entry_key, value] : external_entries) {
      const std::string& key = entry_key;  // a lambda cannot capture a structured binding before C++20
      auto parse_number = [&](const std::string& text) {
        if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
          fail(str_cat(label, ": external data ", key, " '", text, "' is not a valid number"));
        return static_cast<uint64_t>(std::stoull(text));
      };
      if (key == "location") location = value;
      else if (key == "offset") offset = parse_number(value);
      else if (key == "length") { length = parse_number(value); have_length = true; }
    }
    if (location.empty()) fail(str_cat(label, " is external but names no location"));
    if (!is_safe_relative_location(location))
      fail(str_cat(label, ": external data location '", location,
                   "' must be a relative path inside the model's folder"));
    info.file = external_file(location);
    const uint64_t file_size = info.file->size();
    if (offset > file_size)
      fail(str_cat(label, ": external data offset ", offset, " is past the end of '", location,
                   "' (", file_size, " bytes)"));
    if (!have_length) length = file_size - offset;
    if (length > file_size - offset)
      fail(str_cat(label, ": external data [", offset, ", ", offset + length, ") is past the end of '",
                   location, "' (", file_size, " bytes); the file is truncated"));
    if (length != expected_bytes)
      fail(str_cat(label, ": external data has ", length, " bytes but ", type_label,
                   shape_str(info.shape), " needs ", expected_bytes));
    info.location = DataLocation::external;
    info.bytes = info.file->data() + offset;
    info.size = static_cast<size_t>(length);
  } else if (have_raw) {
    if (info.size != expected_bytes)
      fail(str_cat(label, ": raw_data has ", info.size, " bytes but ", type_label,
                   shape_str(info.shape), " needs ", expected_bytes));
    info.location = DataLocation::raw;
    info.file = file_;
  } else if (info.int4) {
    fail(str_cat(label, " is int4 in typed fields; the engine reads int4 tensors from raw_data or external data"));
  } else {
    info.location = DataLocation::typed;
    info.bytes = bytes;
    info.size = size;
    info.file = file_;
    int64_t count = 0;
    for_each_typed_value(bytes, size, origin, typed_field_for(info.dtype), [&](uint64_t) { ++count; });
    if (count != numel)
      fail(str_cat(label, ": holds ", count, " values but ", dtype_name(info.dtype),
                   shape_str(info.shape), " needs ", numel));
  }
  index_[info.name] = initializers_.size();
  initializers_.push_back(std::move(info));
}

std::shared_ptr<const MappedFile> OnnxFile::external_file(const std::string& location) {
  auto it = external_files_.find(location);
  if (it != external_files_.end()) return it->second;
  // The location is relative and has no "..", but a symlink inside the folder
  // may still point anywhere: the real path must lie inside the model's folder.
  const std::string given = directory_ + "/" + location;
  const std::string real = real_path(given);
  if (real.empty()) fail(str_cat("external data file is missing or unreadable: ", given, ": ", std::strerror(errno)));
  const bool inside = std::any_of(data_folders_.begin(), data_folders_.end(), [&](const std::string& folder) {
    return real.size() > folder.size() && real.compare(0, folder.size(), folder) == 0 &&
           (folder.back() == '/' || real[folder.size()] == '/');
  });
  if (!inside)
    fail(str_cat("external data location '", location, "' resolves to '", real,
                 "', outside the model's folder (through a symbolic link)"));
  std::shared_ptr<const MappedFile> mapped;
  try {
    mapped = MappedFile::open(real);
  } catch (const ModelFileError& e) {
    fail(str_cat("external data file is missing or unreadable: ", e.what()));
  }
  external_files_[location] = mapped;
  return mapped;
}

const std::string* OnnxFile::find_metadata(const std::string& key) const {
  for (const auto& entry : metadata_)
    if (entry.first == key) return &entry.second;
  return nullptr;
}

const InitializerInfo& OnnxFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(str_cat("no tensor named '", name, "'"));
  return initializers_[it->second];
}

const char* OnnxFile::dtype_label(const std::string& name) const {
  const InitializerInfo& info = this->info(name);
  return info.int4 ? "int4" : dtype_name(info.dtype);
}

Tensor OnnxFile::tensor(const std::string& name) const {
  const InitializerInfo& info = this->info(name);
  const size_t element = dtype_size(info.dtype);
  if (info.location != DataLocation::typed) {
    Shape shape = info.shape;
    if (info.int4) shape.back() /= 2;  // the bytes: two values each
    const bool aligned = reinterpret_cast<uintptr_t>(info.bytes) % element == 0;
    if (aligned) return Tensor::view(info.bytes, info.dtype, shape, info.file);
    Tensor copy = Tensor::empty(info.dtype, shape);
    std::memcpy(copy.raw_mutable(), info.bytes, info.size);
    return copy;
  }
  Tensor out = Tensor::empty(info.dtype, info.shape);
  uint8_t* dst = static_cast<uint8_t*>(out.raw_mutable());
  size_t i = 0;
  for_each_typed_value(info.bytes, info.size, file_->data(), typed_field_for(info.dtype),
                       [&](uint64_t v) {
                         // Values are the low `element` bytes, little-endian, as in raw_data.
                         for (size_t k = 0; k < element; ++k) dst[i * element + k] = static_cast<uint8_t>(v >> (8 * k));
                         ++i;
                       });
  return out;
}

void OnnxFile::release(const std::string& name) const {
  const InitializerInfo& info = this->info(name);
  if (info.location != DataLocation::typed && info.file) info.file->release(info.bytes, info.size);
}

void OnnxFile::release_bytes(const void* p, size_t n) const {
  // MappedFile::release ignores ranges outside its own mapping.
  file_->release(p, n);
  for (const auto& [location, file] : external_files_) file->release(p, n);
}

}  // namespace pali::onnx
