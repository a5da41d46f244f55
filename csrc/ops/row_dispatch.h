// Runtime row count -> template parameter, for the register-blocked kernels.
//
// A kernel's accumulators stay in registers only when its row count is a
// compile-time constant; this turns the rows left in a block into one.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace pali {

// Calls f(std::integral_constant<int, R>{}) with R = min(rows, Max), rows >= 1.
template <int Max, typename F>
inline void dispatch_rows(int64_t rows, F&& f) {
  if constexpr (Max == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (rows >= Max) {
    f(std::integral_constant<int, Max>{});
  } else {
    dispatch_rows<Max - 1>(rows, std::forward<F>(f));
  }
}

}  // namespace pali
