// CPU log_softmax and top-k over rows. log_softmax has an AVX2 kernel on
// x86-64 and NEON and portable ones from one template (ops/simd_lanes.h); top-k
// is plain C++ everywhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/simd_lanes.h"
#include "ops/softmax_topk.h"
#if defined(PALI_CPU_AVX2)
#include "ops/simd_avx2.h"
#endif

namespace pali {

namespace {

#if defined(PALI_CPU_AVX2)
void log_softmax_row_avx2(const float* xr, int64_t v, float* yr) {
  __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= v; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(xr + j));
  float mxs = simd::hmax(mx);
  for (; j < v; ++j) mxs = std::max(mxs, xr[j]);
  if (mxs == -std::numeric_limits<float>::infinity()) {
    for (j = 0; j < v; ++j) yr[j] = -std::numeric_limits<float>::infinity();
    return;
  }
  const __m256 mv = _mm256_set1_ps(mxs);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  j = 0;
  for (; j + 16 <= v; j += 16) {
    s0 = _mm256_add_ps(s0, simd::exp(_mm256_sub_ps(_mm256_loadu_ps(xr + j), mv)));
    s1 = _mm256_add_ps(s1, simd::exp(_mm256_sub_ps(_mm256_loadu_ps(xr + j + 8), mv)));
  }
  double sum = simd::hsum(_mm256_add_ps(s0, s1));
  for (; j < v; ++j) sum += std::exp(static_cast<double>(xr[j] - mxs));
  const float shift = mxs + static_cast<float>(std::log(sum));
  const __m256 sv = _mm256_set1_ps(shift);
  j = 0;
  for (; j + 8 <= v; j += 8) _mm256_storeu_ps(yr + j, _mm256_sub_ps(_mm256_loadu_ps(xr + j), sv));
  for (; j < v; ++j) yr[j] = xr[j] - shift;
}
#endif

// The same on L's vectors: the sum in float lanes (all of it in double for the
// portable path), the tail and the log in double.
template <typename L>
void log_softmax_row(const float* xr, int64_t v, float* yr) {
  using V = typename L::V;
  constexpr int W = L::kWidth;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  V mx = L::set1(kNegInf);
  int64_t j = 0;
  for (; j + W <= v; j += W) mx = L::max(mx, L::load(xr + j));
  float mxs = L::hmax(mx);
  for (; j < v; ++j) mxs = std::max(mxs, xr[j]);
  if (mxs == kNegInf) {
    for (j = 0; j < v; ++j) yr[j] = kNegInf;
    return;
  }
  double sum = 0.0;
  j = 0;
  if constexpr (W > 1) {
    const V mv = L::set1(mxs);
    V s = L::zero();
    for (; j + W <= v; j += W) s = L::add(s, L::exp(L::sub(L::load(xr + j), mv)));
    sum = L::hsum(s);
  }
  for (; j < v; ++j) sum += std::exp(static_cast<double>(xr[j] - mxs));
  const float shift = mxs + static_cast<float>(std::log(sum));
  const V sv = L::set1(shift);
  for (j = 0; j + W <= v; j += W) L::store(yr + j, L::sub(L::load(xr + j), sv));
  for (; j < v; ++j) yr[j] = xr[j] - shift;
}

}  // namespace

void log_softmax(const float* x, int64_t m, int64_t v, float* y) {
  PALI_CHECK_ARG(m >= 0 && v > 0, "log_softmax: bad sizes m=", m, " v=", v);
  if (m == 0) return;
  PALI_CHECK_ARG(x && y, "log_softmax: null pointer");
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / v);
  const auto rows = [&](auto row) {
    parallel_for(0, m, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) row(x + r * v, v, y + r * v);
    });
  };
#if defined(PALI_CPU_AVX2)
  if (simd::avx2_chosen()) {
    rows(log_softmax_row_avx2);
    return;
  }
#endif
  simd::with_lanes([&](auto lanes) { rows(log_softmax_row<decltype(lanes)>); });
}

namespace {

// a ranks before b: larger value first (NaN largest), then lower index.
inline bool ranks_before(float av, int64_t ai, float bv, int64_t bi) {
  const bool an = std::isnan(av), bn = std::isnan(bv);
  if (an != bn) return an;
  if (!an && av != bv) return av > bv;
  return ai < bi;
}

struct Entry {
  float v;
  int64_t i;
};

}  // namespace

void topk(const float* x, int64_t m, int64_t v, int64_t k, float* values, int64_t* indices) {
  PALI_CHECK_ARG(m >= 0 && v > 0 && k >= 1 && k <= v, "topk: need 1 <= k <= v, got k=", k,
                 " v=", v);
  if (m == 0) return;
  PALI_CHECK_ARG(x && values && indices, "topk: null pointer");
  const auto before = [](const Entry& a, const Entry& b) { return ranks_before(a.v, a.i, b.v, b.i); };
  parallel_for(0, m, 1, [&](int64_t rb, int64_t re) {
    std::vector<Entry> heap;
    for (int64_t r = rb; r < re; ++r) {
      const float* xr = x + r * v;
      heap.clear();
      if (k * 4 < v) {
        // Min-heap (worst on top) of the best k so far; most entries fail the
        // first comparison against the current k-th.
        heap.reserve(k);
        for (int64_t j = 0; j < k; ++j) heap.push_back({xr[j], j});
        std::make_heap(heap.begin(), heap.end(), before);
        for (int64_t j = k; j < v; ++j) {
          const float val = xr[j];
          const Entry& worst = heap.front();
          // Index j is larger than every index in the heap: j wins only on a strictly larger value.
          const bool better = std::isnan(val) ? !std::isnan(worst.v) : (!std::isnan(worst.v) && val > worst.v);
          if (!better) continue;
          std::pop_heap(heap.begin(), heap.end(), before);
          heap.back() = {val, j};
          std::push_heap(heap.begin(), heap.end(), before);
        }
        std::sort_heap(heap.begin(), heap.end(), before);
      } else {
        heap.resize(v);
        for (int64_t j = 0; j < v; ++j) heap[j] = {xr[j], j};
        std::partial_sort(heap.begin(), heap.begin() + k, heap.end(), before);
      }
      for (int64_t j = 0; j < k; ++j) {
        values[r * k + j] = heap[j].v;
        indices[r * k + j] = heap[j].i;
      }
    }
  });
}

}  // namespace pali
