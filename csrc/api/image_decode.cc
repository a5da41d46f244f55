// PNG (libpng) and JPEG (libjpeg) files decoded as PIL decodes them.
//
// Why these libraries: they are what PIL itself links (libjpeg-turbo with its
// default settings: accurate integer DCT, fancy upsampling), so JPEG pixels
// come out identical, and PNG needs only the transformations PIL makes:
// palettes and low bit depths expanded, 16-bit samples cut to their high byte
// (PIL's "RGB;16B", "LA;16B"), 16-bit grey clipped to 255 (PIL's I;16 -> RGB
// conversion), no gamma correction. Transparency (an alpha channel, or a tRNS
// chunk) gives RGBA; everything else RGB. CMYK JPEGs are inverted (PIL
// assumes Adobe's convention) and converted with PIL's cmyk2rgb.
//
// Both libraries report errors by longjmp: each decode runs in a function
// with no C++ objects of its own, into buffers its caller owns.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "api/image.h"
#include "api/python_format.h"
#include "core/error.h"

namespace pali::api {
namespace {

using Pixels = pali_engine::Image::Pixels;

constexpr size_t kMaxPixels = size_t{1} << 30;  // PIL's decompression-bomb limit is far below this

// The whole file, refused unless it is a regular file; messages as image.py's.
std::vector<uint8_t> read_regular_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) throw InvalidArgument(str_cat("image file not found: ", py_str_repr(path)));
    throw InvalidArgument(str_cat("cannot open image file ", py_str_repr(path), ": ", std::strerror(errno)));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    const mode_t mode = info.st_mode;
    ::close(fd);
    const char* kind = S_ISDIR(mode) ? "a directory"
                       : S_ISFIFO(mode) ? "a named pipe"
                       : S_ISCHR(mode) || S_ISBLK(mode) ? "a device"
                       : S_ISSOCK(mode) ? "a socket"
                                        : "not a regular file";
    throw InvalidArgument(str_cat("image path ", py_str_repr(path), " is ", kind, "; give the path of an image file"));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(info.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return bytes;
}

// ---------------------------------------------------------------- PNG

struct PngSource {
  const uint8_t* data;
  size_t size, position;
  bool truncated;
  char message[200];
  jmp_buf jump;
};

void png_error_handler(png_structp png, png_const_charp message) {
  auto* source = static_cast<PngSource*>(png_get_error_ptr(png));
  if (!source->truncated) std::snprintf(source->message, sizeof source->message, "%s", message);
  std::longjmp(source->jump, 1);
}

void png_warning_handler(png_structp, png_const_charp) {}

void png_read_from_memory(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (length > source->size - source->position) {
    source->truncated = true;
    std::snprintf(source->message, sizeof source->message, "image file is truncated");
    png_error(png, "truncated");
  }
  std::memcpy(out, source->data + source->position, length);
  source->position += length;
}

struct PngHeader {
  png_uint_32 width, height;
  int bit_depth, color_type, channels;
  bool has_alpha, grey16;  // grey16: 16-bit grey without transparency, read as is and clipped
  size_t row_bytes;
};

// Reads the header and sets up the transformations; false on error (source->message).
bool png_begin(png_structp png, png_infop info, PngSource* source, PngHeader* header) {
  if (setjmp(source->jump)) return false;
  png_set_read_fn(png, source, png_read_from_memory);
  png_read_info(png, info);
  png_get_IHDR(png, info, &header->width, &header->height, &header->bit_depth, &header->color_type, nullptr,
               nullptr, nullptr);
  const bool trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  const bool grey = (header->color_type & PNG_COLOR_MASK_COLOR) == 0;
  header->has_alpha = (header->color_type & PNG_COLOR_MASK_ALPHA) != 0 || trns;
  header->grey16 = grey && header->bit_depth == 16 && !header->has_alpha;
  if (header->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (grey && header->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (trns) png_set_tRNS_to_alpha(png);
  if (!header->grey16) {
    if (header->bit_depth == 16) png_set_strip_16(png);
    if (grey) png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  header->row_bytes = png_get_rowbytes(png, info);
  header->channels = png_get_channels(png, info);
  return true;
}

bool png_rows(png_structp png, png_infop info, PngSource* source, png_bytepp rows) {
  if (setjmp(source->jump)) return false;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return true;
}

Pixels decode_png(const std::vector<uint8_t>& file, const std::string& path) {
  PngSource source{file.data(), file.size(), 0, false, {0}, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source, png_error_handler, png_warning_handler);
  if (!png) throw OutOfMemory("cannot allocate a PNG decoder");
  png_infop info = png_create_info_struct(png);
  struct Release {
    png_structp* png;
    png_infop* info;
    ~Release() { png_destroy_read_struct(png, info, nullptr); }
  } release{&png, &info};
  if (!info) throw OutOfMemory("cannot allocate a PNG decoder");
  png_set_user_limits(png, 1u << 30, 1u << 30);
  PngHeader header{};
  const auto fail = [&] { throw InvalidArgument(str_cat("cannot read image file ", py_str_repr(path), ": ", source.message)); };
  if (!png_begin(png, info, &source, &header)) fail();
  if (static_cast<size_t>(header.width) * header.height > kMaxPixels)
    throw InvalidArgument(str_cat("cannot read image file ", py_str_repr(path), ": image of ", header.width, "x",
                                  header.height, " pixels is too large"));
  std::vector<uint8_t> raw(header.row_bytes * header.height);
  std::vector<png_bytep> rows(header.height);
  for (png_uint_32 y = 0; y < header.height; ++y) rows[y] = raw.data() + y * header.row_bytes;
  if (!png_rows(png, info, &source, rows.data())) fail();

  Pixels out;
  out.width = static_cast<int>(header.width);
  out.height = static_cast<int>(header.height);
  out.from_file = true;
  const size_t count = static_cast<size_t>(out.width) * out.height;
  if (header.grey16) {
    // PIL opens it as I;16, whose conversion to RGB clips each value to 255.
    out.channels = 3;
    out.bytes.resize(count * 3);
    for (size_t i = 0; i < count; ++i) {
      const unsigned value = (raw[2 * i] << 8) | raw[2 * i + 1];
      const uint8_t v = static_cast<uint8_t>(value > 255 ? 255 : value);
      out.bytes[3 * i] = out.bytes[3 * i + 1] = out.bytes[3 * i + 2] = v;
    }
    return out;
  }
  PALI_CHECK(header.channels == 3 || header.channels == 4, "PNG decoded to ", header.channels, " channels");
  out.channels = header.channels;
  out.bytes = std::move(raw);
  return out;
}

// ---------------------------------------------------------------- JPEG

struct JpegError {
  jpeg_error_mgr manager;
  jmp_buf jump;
  bool truncated;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* error = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, error->message);
  std::longjmp(error->jump, 1);
}

void jpeg_quiet(j_common_ptr cinfo, int level) {
  auto* error = reinterpret_cast<JpegError*>(cinfo->err);
  // A premature end of data is a warning to libjpeg (it pads the image); PIL refuses the file.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) error->truncated = true;
}

struct JpegHeader {
  int width, height, components;
  J_COLOR_SPACE space;
};

bool jpeg_begin(jpeg_decompress_struct* cinfo, JpegError* error, const std::vector<uint8_t>* file,
                JpegHeader* header) {
  if (setjmp(error->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, file->data(), static_cast<unsigned long>(file->size()));
  jpeg_read_header(cinfo, TRUE);
  const J_COLOR_SPACE in = cinfo->jpeg_color_space;
  cinfo->out_color_space = in == JCS_GRAYSCALE ? JCS_GRAYSCALE : in == JCS_CMYK || in == JCS_YCCK ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(cinfo);
  header->width = static_cast<int>(cinfo->output_width);
  header->height = static_cast<int>(cinfo->output_height);
  header->components = cinfo->output_components;
  header->space = cinfo->out_color_space;
  return true;
}

bool jpeg_rows(jpeg_decompress_struct* cinfo, JpegError* error, uint8_t* out, size_t row_bytes) {
  if (setjmp(error->jump)) return false;
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out + cinfo->output_scanline * row_bytes;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

Pixels decode_jpeg(const std::vector<uint8_t>& file, const std::string& path) {
  jpeg_decompress_struct cinfo{};
  JpegError error{};
  cinfo.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = jpeg_error_exit;
  error.manager.emit_message = jpeg_quiet;
  struct Release {
    jpeg_decompress_struct* cinfo;
    ~Release() { jpeg_destroy_decompress(cinfo); }
  } release{&cinfo};
  const auto fail = [&](const char* message) {
    throw InvalidArgument(str_cat("cannot read image file ", py_str_repr(path), ": ", message));
  };
  JpegHeader header{};
  if (!jpeg_begin(&cinfo, &error, &file, &header)) fail(error.message);
  if (static_cast<size_t>(header.width) * header.height > kMaxPixels) fail("image is too large");
  const size_t row_bytes = static_cast<size_t>(header.width) * header.components;
  std::vector<uint8_t> raw(row_bytes * header.height);
  if (!jpeg_rows(&cinfo, &error, raw.data(), row_bytes)) fail(error.message);
  if (error.truncated) fail("image file is truncated");

  Pixels out;
  out.width = header.width;
  out.height = header.height;
  out.channels = 3;
  out.from_file = true;
  const size_t count = static_cast<size_t>(out.width) * out.height;
  out.bytes.resize(count * 3);
  if (header.space == JCS_GRAYSCALE) {
    for (size_t i = 0; i < count; ++i) out.bytes[3 * i] = out.bytes[3 * i + 1] = out.bytes[3 * i + 2] = raw[i];
  } else if (header.space == JCS_CMYK) {
    // PIL reads CMYK JPEGs inverted ("CMYK;I") and converts with cmyk2rgb.
    const auto muldiv255 = [](int a, int b) {
      const int t = a * b + 128;
      return ((t >> 8) + t) >> 8;
    };
    for (size_t i = 0; i < count; ++i) {
      const uint8_t* p = raw.data() + 4 * i;
      const int nk = p[3];  // 255 - (255 - k)
      for (int c = 0; c < 3; ++c) {
        const int v = nk - muldiv255(255 - p[c], nk);
        out.bytes[3 * i + c] = static_cast<uint8_t>(v <= 0 ? 0 : v < 256 ? v : 255);
      }
    }
  } else {
    out.bytes = std::move(raw);
  }
  return out;
}

}  // namespace

Pixels decode_image_file(const std::string& path) {
  const std::vector<uint8_t> file = read_regular_file(path);
  static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (file.size() >= 8 && std::memcmp(file.data(), png_signature, 8) == 0) return decode_png(file, path);
  if (file.size() >= 3 && file[0] == 0xFF && file[1] == 0xD8 && file[2] == 0xFF) return decode_jpeg(file, path);
  throw InvalidArgument(str_cat("cannot read image file ", py_str_repr(path),
                                ": cannot identify image file (this build reads PNG and JPEG)"));
}

}  // namespace pali::api
