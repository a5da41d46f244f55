// Scratch buffers for one forward pass, grown on demand and reused.
//
// Each request owns its workspace, so concurrent calls on one model share only
// the (read-only) weights.
#pragma once

#include "core/aligned_buffer.h"

namespace pali {

using Buffer = AlignedBuffer<float>;

}  // namespace pali
