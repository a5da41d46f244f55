// libFuzzer target for the config reader: the strict JSON reader (csrc/core/json)
// and the architectures' field tables (csrc/models/*_config.cc).
//
// The contract under test: any text, however malformed, deep or hostile,
// either reads or raises InvalidArgument (JsonError, ConfigError); it never
// crashes, overflows the stack, reads out of bounds, hangs or throws anything
// else. What reads writes back (dump) to text that reads again to the same
// value, and a config a table accepts gives back (to_json) a config the same
// table accepts unchanged. Build and run: .ci/fuzz.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/json.h"
#include "models/pali_config.h"
#include "models/paligemma_config.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "config_fuzzer: %s: %s\n", what, detail.c_str());
  std::abort();
}

template <typename Config>
void check_table(const pali::Json& json) {
  try {
    const Config config = Config::from_json(json);
    const pali::Json normalised = config.to_json();
    const std::string again = Config::from_json(normalised).to_json().dump();
    if (again != normalised.dump()) fail("to_json is not a fixed point", normalised.dump() + " vs " + again);
  } catch (const pali::InvalidArgument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const pali::Json json = pali::Json::parse(text);
    const std::string dumped = json.dump();
    const std::string redumped = pali::Json::parse(dumped).dump();
    if (redumped != dumped) fail("dump does not read back to the same value", dumped + " vs " + redumped);
    (void)json.describe();
    check_table<pali::PaliConfig>(json);
    check_table<pali::PaliGemmaConfig>(json);
  } catch (const pali::InvalidArgument&) {
  } catch (const std::exception& error) {
    fail("an exception outside the contract", error.what());
  }
  return 0;
}
