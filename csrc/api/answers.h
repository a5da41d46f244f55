// The objects of a detection or segmentation answer, as the Python package
// reads them (GenerationResult.objects).
//
//   "pali"       pali_engine/detection.py: <locY0><locX0><locY1><locX1> label ; ...
//                bins of 1023 over the square the model saw, the padding of a
//                non-square image taken off again, clipped to the image
//   "paligemma"  pali_engine/segmentation.py: the same with bins of 1024 over the
//                stretched image, optionally followed by 16 <segNNN> mask codes
#pragma once

#include <string_view>
#include <vector>

#include "pali_engine/pali_engine.hpp"

namespace pali::api {

std::vector<pali_engine::Object> parse_detections(std::string_view text, int width, int height,
                                                  pali_engine::Resize resize);

std::vector<pali_engine::Object> parse_segmentation(std::string_view text, int width, int height);

}  // namespace pali::api
