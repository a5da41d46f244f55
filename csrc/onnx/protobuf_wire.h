// A bounded reader of the protobuf wire format: just enough to walk an ONNX file.
//
// Every read is checked against the end of its buffer; malformed input throws
// WireError with the byte offset, never reads out of bounds. Nested messages
// are read as sub-ranges, so nesting depth is fixed by the caller, not the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pali::onnx {

class WireError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

struct WireField {
  uint32_t number = 0;
  WireType type = kVarint;
  uint64_t varint = 0;             // kVarint, kFixed64 and kFixed32 values
  const uint8_t* bytes = nullptr;  // kLengthDelimited payload
  size_t size = 0;
};

class WireReader {
 public:
  // `origin` is the start of the whole file, to report absolute offsets.
  WireReader(const uint8_t* begin, size_t size, const uint8_t* origin)
      : pos_(begin), end_(begin + size), origin_(origin) {}

  bool done() const { return pos_ >= end_; }

  WireField next() {
    WireField field;
    const uint64_t key = read_varint("field key");
    const uint64_t number = key >> 3;
    const uint8_t type = static_cast<uint8_t>(key & 7u);
    if (number == 0 || number > 0x1fffffffu) fail("invalid field number " + std::to_string(number));
    field.number = static_cast<uint32_t>(number);
    switch (type) {
      case kVarint:
        field.type = kVarint;
        field.varint = read_varint("varint field");
        break;
      case kFixed64:
        field.type = kFixed64;
        field.varint = read_fixed(8);
        break;
      case kFixed32:
        field.type = kFixed32;
        field.varint = read_fixed(4);
        break;
      case kLengthDelimited: {
        field.type = kLengthDelimited;
        const uint64_t length = read_varint("length");
        if (length > static_cast<uint64_t>(end_ - pos_))
          fail("field " + std::to_string(number) + " claims " + std::to_string(length) +
               " bytes but only " + std::to_string(end_ - pos_) + " remain");
        field.bytes = pos_;
        field.size = static_cast<size_t>(length);
        pos_ += length;
        break;
      }
      default:
        fail("unsupported wire type " + std::to_string(type) + " for field " + std::to_string(number));
    }
    return field;
  }

  uint64_t read_varint(const char* what) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= end_) fail(std::string("truncated ") + what);
      const uint8_t byte = *pos_++;
      if (shift == 63 && byte > 1) fail(std::string("overlong ") + what);
      value |= static_cast<uint64_t>(byte & 0x7fu) << shift;
      if (!(byte & 0x80u)) return value;
    }
    fail(std::string("overlong ") + what);
    return 0;
  }

  size_t offset() const { return static_cast<size_t>(pos_ - origin_); }

  [[noreturn]] void fail(const std::string& what) const {
    throw WireError(what + " at byte " + std::to_string(offset()));
  }

 private:
  uint64_t read_fixed(int nbytes) {
    if (end_ - pos_ < nbytes) fail("truncated fixed-width field");
    uint64_t value = 0;
    for (int i = 0; i < nbytes; ++i) value |= static_cast<uint64_t>(pos_[i]) << (8 * i);
    pos_ += nbytes;
    return value;
  }

  const uint8_t* pos_;
  const uint8_t* end_;
  const uint8_t* origin_;
};

}  // namespace pali::onnx
