/* pali_example_c MODEL IMAGE [PROMPT]: the C API, from C.
 *
 * Loads the model, generates an answer with beam search, streams it, and
 * frees every handle; a failed call prints pali_last_error(). */
#include <stdio.h>

#include <pali_engine/pali_engine.h>

static int print_piece(const char* piece, size_t length, void* user_data) {
  (void)user_data;
  printf("[%.*s]", (int)length, piece);
  fflush(stdout);
  return 1; /* 0 would stop the generation */
}

int main(int argc, char** argv) {
  const char* prompt = argc > 3 ? argv[3] : "caption en";
  pali_engine_t* engine = NULL;
  pali_image_t* image = NULL;
  pali_options_t* options = NULL;
  pali_result_t* result = NULL;
  int status = 1;
  if (argc < 3) {
    fprintf(stderr, "usage: pali_example_c MODEL IMAGE [PROMPT]\n");
    return 2;
  }
  if (pali_engine_load(argv[1], "float32", 0, NULL, &engine) != PALI_OK ||
      pali_image_from_file(argv[2], &image) != PALI_OK || pali_options_new(&options) != PALI_OK ||
      pali_options_set_int(options, "num_beams", 3) != PALI_OK ||
      pali_generate(engine, image, prompt, options, &result) != PALI_OK) {
    fprintf(stderr, "pali_example_c: %s\n", pali_last_error());
    goto done;
  }
  printf("%s (score %.4f)\n", pali_result_text(result, 0), pali_result_score(result, 0));
  if (pali_stream(engine, image, prompt, NULL, print_piece, NULL, NULL) != PALI_OK) {
    fprintf(stderr, "pali_example_c: %s\n", pali_last_error());
    goto done;
  }
  printf("\n");
  status = 0;
done:
  pali_result_free(result);
  pali_options_free(options);
  pali_image_free(image);
  pali_engine_free(engine);
  return status;
}
