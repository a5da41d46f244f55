// Rows that join a running decoder session: the layout shared by the decoders.
//
// Continuous batching appends a new request's rows to a session that has
// already generated for a while. Every row's own keys and values live in one
// slot space, the session's step writes slot `length` of every row, and a row
// that joined later starts at a later slot: row r's history is slots
// [row_start[r], length). Attention hides the slots before a row's start
// (joined_rows_mask), and what depends on a row's position (rotary positions,
// a prompt's distance for the sliding window) subtracts its start, so each
// row computes what it would alone. T5's relative position bias depends only
// on the distance between slots and needs nothing. row_limit[r] is the slot a
// row may reach (its start plus the tokens its request may generate), which
// sizes the caches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "models/workspace.h"

namespace pali {

// A decoder state's caches as a join sees them: references into the state.
// Both decoders' states have this shape: per-row keys and values in slots,
// and per-request keys and values (an encoder output's, a prompt's) read by
// their rows through row_request.
struct JoinableState {
  std::vector<Buffer>& row_kv;         // per layer [row_capacity, capacity, row_floats]
  std::vector<Buffer>& request_kv;     // per layer [request_capacity, request_len, row_floats]
  std::vector<int32_t>& request_mask;  // [request_capacity, request_len]
  std::vector<int64_t>& row_request;
  std::vector<int64_t>& row_start;
  std::vector<int64_t>& row_limit;
  int64_t& rows;
  int64_t& requests;
  int64_t& capacity;     // slots per row
  int64_t& length;       // slots filled
  int64_t& request_len;  // positions per request
  int64_t& row_capacity;
  int64_t& request_capacity;
  std::vector<std::vector<int64_t>*> per_request;  // further per-request values, kept with their request
};

// Joins b's rows and requests after a's (b is left for its owner to clear).
// While they fit, only b's rows and requests are copied; otherwise a's caches
// are rebuilt with room to spare, leaving out the requests no row reads and
// moving every history down to slot 0. `what` names the caches in the
// OutOfMemory thrown before anything changes when they would not fit.
void join_states(const JoinableState& a, const JoinableState& b, int64_t row_floats, const char* what);

// Where the rows of two sessions go when the second joins the first.
struct JoinedLayout {
  int64_t length = 0;    // slots filled after the join
  int64_t capacity = 0;  // slots the caches must hold
  int64_t shift_first = 0, shift_second = 0;  // slots each session's rows move by (may be negative)
};

// `a_*` and `b_*`: the two sessions' row starts and limits and their lengths.
// Both sessions' next token goes to one slot; the oldest remaining history then
// starts at slot 0.
inline JoinedLayout joined_layout(const std::vector<int64_t>& a_start, const std::vector<int64_t>& a_limit,
                                  int64_t a_rows, int64_t a_length, const std::vector<int64_t>& b_start,
                                  const std::vector<int64_t>& b_limit, int64_t b_rows, int64_t b_length) {
  const int64_t length = std::max(a_length, b_length);
  int64_t base = length;
  for (int64_t r = 0; r < a_rows; ++r) base = std::min(base, a_start[r] + length - a_length);
  for (int64_t r = 0; r < b_rows; ++r) base = std::min(base, b_start[r] + length - b_length);
  JoinedLayout out;
  out.length = length - base;
  out.shift_first = length - a_length - base;
  out.shift_second = length - b_length - base;
  out.capacity = std::max<int64_t>(out.length, 1);
  for (int64_t r = 0; r < a_rows; ++r) out.capacity = std::max(out.capacity, a_limit[r] + out.shift_first);
  for (int64_t r = 0; r < b_rows; ++r) out.capacity = std::max(out.capacity, b_limit[r] + out.shift_second);
  return out;
}

// The room a rebuilt join keeps: twice the rows and requests, half again the
// slots, so that the joins after it copy only what joins.
inline int64_t room_for(int64_t n) { return std::max<int64_t>(2 * n, 4); }
inline int64_t slots_room_for(int64_t capacity) { return capacity + std::max<int64_t>(capacity / 2, 16); }

// Whether a join fits the first session's caches as they are: its rows keep
// their slots, and the new rows, slots and requests fit the room there is.
inline bool joins_in_place(const JoinedLayout& layout, int64_t capacity, int64_t rows, int64_t row_capacity,
                           int64_t requests, int64_t request_capacity, int64_t request_len, int64_t joining_len) {
  return layout.shift_first == 0 && layout.capacity <= capacity && rows <= row_capacity &&
         requests <= request_capacity && joining_len <= request_len;
}

// Copies `requests` blocks of [from_len, row_floats] to blocks first.. of
// [to_len, row_floats] in `to`, zeroing each block's tail.
inline void copy_request_blocks(const float* from, int64_t requests, int64_t from_len, int64_t row_floats, float* to,
                                int64_t first, int64_t to_len) {
  for (int64_t b = 0; b < requests; ++b) {
    float* block = to + (first + b) * to_len * row_floats;
    std::memcpy(block, from + b * from_len * row_floats, from_len * row_floats * sizeof(float));
    std::memset(block + from_len * row_floats, 0, (to_len - from_len) * row_floats * sizeof(float));
  }
}

// Copies the histories of `rows` rows of `from` ([rows, from_capacity, row_floats],
// row r's in slots [start[r], length)) to rows first_row.. of `to`
// ([.., to_capacity, row_floats]), `shift` slots later.
inline void move_histories(const float* from, int64_t rows, int64_t from_capacity, const std::vector<int64_t>& start,
                           int64_t length, int64_t row_floats, float* to, int64_t first_row, int64_t to_capacity,
                           int64_t shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t begin = start[r], used = length - begin;
    if (used <= 0) continue;
    PALI_CHECK(begin + shift >= 0 && length + shift <= to_capacity, "a joined row's history does not fit");
    std::memcpy(to + ((first_row + r) * to_capacity + begin + shift) * row_floats,
                from + (r * from_capacity + begin) * row_floats, used * row_floats * sizeof(float));
  }
}

// The rows' starts and limits after a join: the first session's, then the second's.
inline void join_row_slots(std::vector<int64_t>& a_start, std::vector<int64_t>& a_limit, int64_t a_rows,
                           const std::vector<int64_t>& b_start, const std::vector<int64_t>& b_limit, int64_t b_rows,
                           const JoinedLayout& layout) {
  a_start.resize(a_rows);
  a_limit.resize(a_rows);
  for (int64_t r = 0; r < a_rows; ++r) {
    a_start[r] += layout.shift_first;
    a_limit[r] += layout.shift_first;
  }
  for (int64_t r = 0; r < b_rows; ++r) {
    a_start.push_back(b_start[r] + layout.shift_second);
    a_limit.push_back(b_limit[r] + layout.shift_second);
  }
}

// Whether some row started after slot 0 (only then is a mask needed).
inline bool has_joined_rows(const std::vector<int64_t>& start, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    if (start[r] > 0) return true;
  return false;
}

// mask[rows, kv_len]: 1 for the slots of each row's own history, 0 before its start.
inline void joined_rows_mask(const std::vector<int64_t>& start, int64_t rows, int64_t kv_len,
                             std::vector<uint8_t>& mask) {
  mask.assign(rows * kv_len, 1);
  for (int64_t r = 0; r < rows; ++r)
    std::memset(mask.data() + r * kv_len, 0, std::min(start[r], kv_len));
}

// The requests some row still reads, in order (their prompt or encoder keys
// and values are all a join copies: finished requests are left behind), with
// row_request renumbered among them.
inline std::vector<int64_t> live_requests(std::vector<int64_t>& row_request, int64_t rows, int64_t requests) {
  std::vector<int64_t> renumbered(requests, -1), live;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t& index = renumbered[row_request[r]];
    if (index < 0) {
      index = static_cast<int64_t>(live.size());
      live.push_back(row_request[r]);
    }
  }
  // Keep the requests' order: number them by their old index.
  std::sort(live.begin(), live.end());
  for (size_t i = 0; i < live.size(); ++i) renumbered[live[i]] = static_cast<int64_t>(i);
  row_request.resize(rows);
  for (int64_t r = 0; r < rows; ++r) row_request[r] = renumbered[row_request[r]];
  return live;
}

// values[r] = values[source[r]] for r < rows: per-row bookkeeping follows its
// row through a reorder.
template <typename T>
void gather_rows(std::vector<T>& values, const int64_t* source, int64_t rows) {
  std::vector<T> next(rows);
  for (int64_t r = 0; r < rows; ++r) next[r] = values[source[r]];
  values.swap(next);
}

}  // namespace pali
