/* pali-engine's C API: the engine behind opaque handles, for C programs and
 * for other languages' foreign-function interfaces.
 *
 * It is the C++ API (pali_engine.hpp) with status codes instead of
 * exceptions: every call that can fail returns a pali_status_t, and on
 * failure pali_last_error() gives this thread's message (the Python package's
 * message for the same mistake). No C++ exception crosses it. Handles are
 * freed with their *_free function (NULL is allowed); an engine may be used
 * from several threads at once, the other handles from one thread at a time.
 *
 *   pali_engine_t* engine = NULL;
 *   pali_image_t* image = NULL;
 *   pali_result_t* result = NULL;
 *   if (pali_engine_load("pali-default.onnx", NULL, 0, NULL, &engine) != PALI_OK ||
 *       pali_image_from_file("shapes.png", &image) != PALI_OK ||
 *       pali_generate(engine, image, "caption en", NULL, &result) != PALI_OK)
 *     fprintf(stderr, "%s\n", pali_last_error());
 *   else
 *     printf("%s\n", pali_result_text(result, 0));
 *   pali_result_free(result);
 *   pali_image_free(image);
 *   pali_engine_free(engine);
 */
#ifndef PALI_ENGINE_H_
#define PALI_ENGINE_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define PALI_ENGINE_C_API
#else
#define PALI_ENGINE_C_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pali_status {
  PALI_OK = 0,
  PALI_ERROR_INVALID_ARGUMENT = 1, /* the caller passed something wrong */
  PALI_ERROR_MODEL_FILE = 2,       /* a model file is missing, broken or inconsistent */
  PALI_ERROR_OUT_OF_MEMORY = 3,    /* a request too large for this machine */
  PALI_ERROR_RUNTIME = 4           /* anything else; the message says what and where */
} pali_status_t;

typedef struct pali_engine_s pali_engine_t;
typedef struct pali_image_s pali_image_t;
typedef struct pali_options_s pali_options_t;
typedef struct pali_result_s pali_result_t;

/* The package's version ("0.1.0"). */
PALI_ENGINE_C_API const char* pali_version(void);

/* The message of the last call that failed in this thread ("" before any);
 * valid until the next failing call in this thread. */
PALI_ENGINE_C_API const char* pali_last_error(void);

/* ---- engines ---- */

/* Loads and checks a model file. dtype: "float32", "float16", "bfloat16",
 * "int8", "int4", "int4_g64" or "int4_g128" (NULL: the file's own when it
 * stores quantized weights, else "float32");
 * threads: CPU threads of each call, 0 for all cores; resize: how a
 * non-square image becomes square, "pad" or "stretch" (NULL: the model's
 * convention). */
PALI_ENGINE_C_API pali_status_t pali_engine_load(const char* path, const char* dtype, int threads, const char* resize,
                                                 pali_engine_t** engine);
PALI_ENGINE_C_API void pali_engine_free(pali_engine_t* engine);
/* "pali" or "paligemma" (valid while the engine lives). */
PALI_ENGINE_C_API const char* pali_engine_architecture(const pali_engine_t* engine);

/* ---- images ---- */

/* A PNG or JPEG file. */
PALI_ENGINE_C_API pali_status_t pali_image_from_file(const char* path, pali_image_t** image);
/* width x height pixels of 3 bytes (R, G, B), rows one after the other; copied. */
PALI_ENGINE_C_API pali_status_t pali_image_from_rgb(int width, int height, const uint8_t* rgb, pali_image_t** image);
/* channels: 1 (grey), 3 (RGB) or 4 (RGBA, composited on white); copied. */
PALI_ENGINE_C_API pali_status_t pali_image_from_pixels(int width, int height, int channels, const uint8_t* pixels,
                                                       pali_image_t** image);
PALI_ENGINE_C_API void pali_image_free(pali_image_t* image);
PALI_ENGINE_C_API int pali_image_width(const pali_image_t* image);
PALI_ENGINE_C_API int pali_image_height(const pali_image_t* image);

/* ---- generation options ----
 * By name, as Python's Engine.generate takes them: max_new_tokens,
 * min_new_tokens, num_beams, length_penalty, early_stopping (a bool, or the
 * string "never"), num_return_sequences, no_repeat_ngram_size,
 * repetition_penalty, do_sample, temperature, top_k, top_p, seed. Unknown
 * names and bad values are reported by the generation call, as Python
 * reports them. */

PALI_ENGINE_C_API pali_status_t pali_options_new(pali_options_t** options);
PALI_ENGINE_C_API void pali_options_free(pali_options_t* options);
PALI_ENGINE_C_API pali_status_t pali_options_set_int(pali_options_t* options, const char* name, int64_t value);
PALI_ENGINE_C_API pali_status_t pali_options_set_uint(pali_options_t* options, const char* name, uint64_t value);
PALI_ENGINE_C_API pali_status_t pali_options_set_float(pali_options_t* options, const char* name, double value);
PALI_ENGINE_C_API pali_status_t pali_options_set_bool(pali_options_t* options, const char* name, int value);
PALI_ENGINE_C_API pali_status_t pali_options_set_string(pali_options_t* options, const char* name, const char* value);
/* Python's None: the option's default (max_new_tokens: the model's; seed: a fresh one). */
PALI_ENGINE_C_API pali_status_t pali_options_set_none(pali_options_t* options, const char* name);

/* ---- generation ----
 * options may be NULL (every default). A result holds
 * count x num_return_sequences sequences, input-major: sequence k of input i
 * is index i * pali_result_sequences_per_input(result) + k. */

PALI_ENGINE_C_API pali_status_t pali_generate(const pali_engine_t* engine, const pali_image_t* image,
                                              const char* prompt, const pali_options_t* options,
                                              pali_result_t** result);
PALI_ENGINE_C_API pali_status_t pali_generate_batch(const pali_engine_t* engine, const pali_image_t* const* images,
                                                    const char* const* prompts, size_t count,
                                                    const pali_options_t* options, pali_result_t** result);

/* Called with each piece of text (UTF-8, not NUL-terminated) as it is
 * generated; return nonzero to go on, 0 to stop the generation. */
typedef int (*pali_text_callback)(const char* piece, size_t length, void* user_data);

/* Greedy search and sampling stream token by token, beam search once at the
 * end. result may be NULL when only the pieces are wanted. */
PALI_ENGINE_C_API pali_status_t pali_stream(const pali_engine_t* engine, const pali_image_t* image,
                                            const char* prompt, const pali_options_t* options,
                                            pali_text_callback on_text_piece, void* user_data,
                                            pali_result_t** result);

/* ---- results ----
 * Accessors given an index past the end return NULL, 0 or zeros. Strings and
 * arrays are valid while the result lives. */

typedef struct pali_timings {
  double preprocess_ms, vision_ms, encoder_ms, first_token_ms, decode_ms;
  int64_t steps;
  double generate_ms, total_ms;
} pali_timings_t;

typedef struct pali_object {
  double x0, y0, x1, y1; /* the box in the input image's pixels */
  const char* label;
  int has_codes;  /* a PaliGemma segmentation's mask codes follow */
  int codes[16];
} pali_object_t;

PALI_ENGINE_C_API void pali_result_free(pali_result_t* result);
PALI_ENGINE_C_API size_t pali_result_count(const pali_result_t* result);
PALI_ENGINE_C_API size_t pali_result_sequences_per_input(const pali_result_t* result);
PALI_ENGINE_C_API const char* pali_result_text(const pali_result_t* result, size_t index);
/* The generated ids (eos included when generation ended with it); returns their count. */
PALI_ENGINE_C_API size_t pali_result_tokens(const pali_result_t* result, size_t index, const int64_t** tokens);
PALI_ENGINE_C_API double pali_result_score(const pali_result_t* result, size_t index);
PALI_ENGINE_C_API int pali_result_finished(const pali_result_t* result, size_t index);
PALI_ENGINE_C_API pali_timings_t pali_result_timings(const pali_result_t* result, size_t index);
/* The boxes of a detection or segmentation answer. */
PALI_ENGINE_C_API size_t pali_result_object_count(const pali_result_t* result, size_t index);
PALI_ENGINE_C_API pali_status_t pali_result_object(const pali_result_t* result, size_t index, size_t object,
                                                   pali_object_t* out);
/* One JSON object, as `pali-engine run --json` prints it. */
PALI_ENGINE_C_API const char* pali_result_json(const pali_result_t* result, size_t index);

#ifdef __cplusplus
}
#endif

#endif /* PALI_ENGINE_H_ */
