// The join of two decoder states (joined_rows.h), shared by the decoders.
#include "models/joined_rows.h"

#include "core/system_memory.h"

namespace pali {

void join_states(const JoinableState& a, const JoinableState& b, int64_t row_floats, const char* what) {
  const size_t layers = a.row_kv.size();
  const JoinedLayout layout =
      joined_layout(a.row_start, a.row_limit, a.rows, a.length, b.row_start, b.row_limit, b.rows, b.length);
  if (joins_in_place(layout, a.capacity, a.rows + b.rows, a.row_capacity, a.requests + b.requests,
                     a.request_capacity, a.request_len, b.request_len)) {
    for (size_t li = 0; li < layers; ++li) {
      float* rows = a.row_kv[li].data();
      std::memset(rows + a.rows * a.capacity * row_floats, 0, b.rows * a.capacity * row_floats * sizeof(float));
      move_histories(b.row_kv[li].data(), b.rows, b.capacity, b.row_start, b.length, row_floats, rows, a.rows,
                     a.capacity, layout.shift_second);
      copy_request_blocks(b.request_kv[li].data(), b.requests, b.request_len, row_floats, a.request_kv[li].data(),
                          a.requests, a.request_len);
    }
    a.request_mask.resize(a.request_capacity * a.request_len);
    for (int64_t r = 0; r < b.requests; ++r) {
      int32_t* mask = a.request_mask.data() + (a.requests + r) * a.request_len;
      std::fill_n(std::copy_n(b.request_mask.data() + r * b.request_len, b.request_len, mask),
                  a.request_len - b.request_len, 0);
    }
    for (size_t v = 0; v < a.per_request.size(); ++v) {
      a.per_request[v]->resize(a.requests);
      a.per_request[v]->insert(a.per_request[v]->end(), b.per_request[v]->begin(), b.per_request[v]->end());
    }
    a.row_request.resize(a.rows);
    for (int64_t r = 0; r < b.rows; ++r) a.row_request.push_back(b.row_request[r] + a.requests);
    join_row_slots(a.row_start, a.row_limit, a.rows, b.row_start, b.row_limit, b.rows, layout);
    a.rows += b.rows;
    a.requests += b.requests;
    a.length = layout.length;
    return;
  }

  const int64_t rows = a.rows + b.rows;
  int64_t kept_requests = 0;
  {
    // Counted before anything changes, so that OutOfMemory leaves the state as it was.
    std::vector<int64_t> row_request(a.row_request.begin(), a.row_request.begin() + a.rows);
    kept_requests = static_cast<int64_t>(live_requests(row_request, a.rows, a.requests).size());
  }
  const int64_t requests = kept_requests + b.requests;
  const int64_t request_len = std::max(a.request_len, b.request_len);
  const int64_t row_capacity = room_for(rows), request_capacity = room_for(requests);
  const int64_t capacity = slots_room_for(layout.capacity);
  const double bytes = sizeof(float) * static_cast<double>(row_floats) * static_cast<double>(layers) *
                       (static_cast<double>(row_capacity) * capacity +
                        static_cast<double>(request_capacity) * request_len);
  require_available_memory(bytes, [&] { return str_cat(what, " for ", rows, " rows x ", layout.capacity, " tokens"); });
  const std::vector<int64_t> kept = live_requests(a.row_request, a.rows, a.requests);
  for (size_t li = 0; li < layers; ++li) {
    Buffer row_kv;
    float* to = row_kv.get(row_capacity * capacity * row_floats);
    // Zeros before each row's start: masked keys, but their values still meet a zero weight.
    std::memset(to, 0, rows * capacity * row_floats * sizeof(float));
    move_histories(a.row_kv[li].data(), a.rows, a.capacity, a.row_start, a.length, row_floats, to, 0, capacity,
                   layout.shift_first);
    move_histories(b.row_kv[li].data(), b.rows, b.capacity, b.row_start, b.length, row_floats, to, a.rows, capacity,
                   layout.shift_second);
    a.row_kv[li] = std::move(row_kv);
    // Each request's keys and values where they were, padded at the end to the
    // longer length (the mask hides the padding).
    Buffer request_kv;
    float* blocks = request_kv.get(request_capacity * request_len * row_floats);
    for (int64_t r = 0; r < kept_requests; ++r)
      copy_request_blocks(a.request_kv[li].data() + kept[r] * a.request_len * row_floats, 1, a.request_len,
                          row_floats, blocks, r, request_len);
    copy_request_blocks(b.request_kv[li].data(), b.requests, b.request_len, row_floats, blocks, kept_requests,
                        request_len);
    a.request_kv[li] = std::move(request_kv);
  }
  std::vector<int32_t> mask(request_capacity * request_len, 0);
  for (int64_t r = 0; r < kept_requests; ++r)
    std::copy_n(a.request_mask.data() + kept[r] * a.request_len, a.request_len, mask.data() + r * request_len);
  for (int64_t r = 0; r < b.requests; ++r)
    std::copy_n(b.request_mask.data() + r * b.request_len, b.request_len,
                mask.data() + (kept_requests + r) * request_len);
  a.request_mask.swap(mask);
  for (size_t v = 0; v < a.per_request.size(); ++v) {
    std::vector<int64_t> values;
    for (int64_t r : kept) values.push_back((*a.per_request[v])[r]);
    values.insert(values.end(), b.per_request[v]->begin(), b.per_request[v]->end());
    a.per_request[v]->swap(values);
  }
  for (int64_t r = 0; r < b.rows; ++r) a.row_request.push_back(b.row_request[r] + kept_requests);
  join_row_slots(a.row_start, a.row_limit, a.rows, b.row_start, b.row_limit, b.rows, layout);
  a.rows = rows;
  a.requests = requests;
  a.row_capacity = row_capacity;
  a.request_capacity = request_capacity;
  a.request_len = request_len;
  a.length = layout.length;
  a.capacity = capacity;
}

}  // namespace pali
