// The engine's exceptions as the API's: every public function of the C++ API
// runs its body through translated(), so that what leaves is a
// pali_engine::Error whose kind matches the engine's exception class
// (core/error.h) and whose message is the engine's.
#pragma once

#include <exception>
#include <new>

#include "core/error.h"
#include "pali_engine/pali_engine.hpp"

namespace pali::api {

template <typename F>
auto translated(F&& fn) -> decltype(fn()) {
  using pali_engine::Error;
  using pali_engine::ErrorKind;
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const ModelFileError& error) {
    throw Error(ErrorKind::model_file, error.what());
  } catch (const InvalidArgument& error) {
    throw Error(ErrorKind::invalid_argument, error.what());
  } catch (const OutOfMemory& error) {
    throw Error(ErrorKind::out_of_memory, error.what());
  } catch (const std::bad_alloc&) {
    throw Error(ErrorKind::out_of_memory, "out of memory");
  } catch (const std::exception& error) {
    throw Error(ErrorKind::runtime, error.what());
  }
}

}  // namespace pali::api
