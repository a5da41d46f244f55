// pali_engine._core.OnnxFile: the engine's ONNX reader, for inspect() and load_tensor().
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "bindings/gil.h"
#include "onnx/onnx_file.h"

namespace pali::bindings {

void bind_onnx(py::module_& m) {
  using onnx::OnnxFile;
  py::class_<OnnxFile, std::shared_ptr<OnnxFile>>(m, "OnnxFile", py::module_local(),
                                                  "An ONNX file mapped into memory, read strictly.")
      .def(py::init([](const std::string& path) {
             std::shared_ptr<const OnnxFile> file = without_gil([&] { return OnnxFile::open(path); });
             return std::const_pointer_cast<OnnxFile>(file);
           }),
           py::arg("path"))
      .def_property_readonly("path", &OnnxFile::path)
      .def_property_readonly("ir_version", &OnnxFile::ir_version)
      .def_property_readonly("opset_version", &OnnxFile::opset_version)
      .def_property_readonly("producer_name", &OnnxFile::producer_name)
      .def_property_readonly("metadata",
                             [](const OnnxFile& f) {
                               py::dict out;
                               for (const auto& [key, value] : f.metadata()) out[py::str(key)] = py::str(value);
                               return out;
                             })
      .def_property_readonly("tensor_names",
                             [](const OnnxFile& f) {
                               std::vector<std::string> names;
                               for (const auto& info : f.initializers()) names.push_back(info.name);
                               return names;
                             })
      .def(
          "tensor_info",
          [](const OnnxFile& f, const std::string& name) {
            const auto& info = f.info(name);
            return py::make_tuple(f.dtype_label(name), py::tuple(py::cast(info.shape)));
          },
          py::arg("name"), "(dtype name, shape) of an initializer; int4 values come from tensor() as "
                           "uint8 pairs, the even index in the low nibble.")
      .def(
          "tensor",
          [](const OnnxFile& f, const std::string& name) {
            Tensor t = without_gil([&] { return f.tensor(name); });
            return tensor_to_numpy(t);
          },
          py::arg("name"),
          "The initializer's values as a read-only array sharing the file's memory when "
          "possible (bfloat16 as uint16 bits).")
      .def("check_unchanged", &OnnxFile::check_unchanged,
           "Raises ModelFileError when the file changed since it was opened (call after copying values).");
}

}  // namespace pali::bindings
