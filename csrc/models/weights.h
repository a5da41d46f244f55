// Weights looked up by name in a model file, with errors that name the tensor.
//
// Every lookup states the shape it expects; at the end of loading,
// check_all_used() fails on any tensor the model did not take, so a file that
// does not match its config is refused instead of silently misread.
//
// A listing store (no file) answers every lookup with a tensor of the shape
// asked for and no data, and records the lookups: building a model on it
// gives the list of tensors its file must hold, from the model code itself
// (Python's file checks use that list). Blocks that compute on a weight while
// loading skip it when `listing()`.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "onnx/onnx_file.h"
#include "ops/linear.h"

namespace pali {

struct TensorSpec {
  std::string name;
  Shape shape;
};

class WeightStore {
 public:
  explicit WeightStore(std::shared_ptr<const onnx::OnnxFile> file) : file_(std::move(file)) {}
  // A listing store.
  WeightStore() = default;

  bool listing() const { return file_ == nullptr; }
  // The lookups of a listing store, in order, each name once.
  const std::vector<TensorSpec>& listed() const { return listed_; }

  // The tensor as stored (any float dtype), checked against `shape`.
  Tensor raw(const std::string& name, const Shape& shape);
  // The tensor converted to a float32 CPU tensor the model owns.
  Tensor f32(const std::string& name, const Shape& shape);
  // A copy of a tensor taken with raw(), in memory the model owns.
  Tensor copy(const Tensor& stored);
  // A linear layer's weight [out, in] (and bias [out] when `bias` is non-empty),
  // prepared as prepare() does. A weight the file stores quantized (int8 or
  // int4 codes beside `<name>_scale`, as `pali-engine convert --dtype
  // int8|int4` writes them) is packed as it is when `format` is the file's,
  // and dequantized for a float format; another quantized format is refused.
  LinearWeight linear(const std::string& weight, int64_t out, int64_t in, const std::string& bias,
                      WeightFormat format);
  // Several linear layers sharing an input, fused along the output dimension.
  LinearWeight linear_concat(const std::vector<std::string>& weights, const std::vector<int64_t>& outs,
                             int64_t in, const std::vector<std::string>& biases, WeightFormat format);

  // Throws ModelFileError naming the tensors no lookup took.
  void check_all_used() const;
  const std::string& path() const { return file_->path(); }
  // A tensor the model derived itself (a reshaped convolution, a tied
  // embedding) prepared as a linear weight, in this model's arena; i8 weights
  // get int8_activations: the model's int8 mode is W8A8.
  LinearWeight prepare(const Tensor& weight, const Tensor* bias, WeightFormat format);
  // Drops the resident pages of a tensor taken with raw() once the model holds
  // what it derived from it (no-op for a listing store).
  void release(const std::string& name) const;
  // The same for n bytes of such a tensor: copying, converting and packing
  // drop the pages of what they have read as they go, so that loading never
  // holds a large tensor of the file resident beside its copy.
  void release_bytes(const void* p, size_t n) const;

 private:
  // The codes and scales of a weight the file stores quantized, checked; nullopt when it is a float tensor.
  std::optional<QuantizedRows> quantized(const std::string& name, int64_t out, int64_t in, WeightFormat* format);

  std::shared_ptr<const onnx::OnnxFile> file_;
  PackedArena arena_;
  std::set<std::string> used_;
  std::vector<TensorSpec> listed_;
};

}  // namespace pali
