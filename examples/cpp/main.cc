// pali_example MODEL IMAGE [PROMPT]: the C++ API in a few lines.
//
// Generates an answer for the image, streams it again piece by piece, runs
// a small batch with beam search, and prints the boxes of a detection answer.
#include <iostream>
#include <string>

#include <pali_engine/pali_engine.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: pali_example MODEL IMAGE [PROMPT]\n";
    return 2;
  }
  const std::string prompt = argc > 3 ? argv[3] : "caption en";
  try {
    const auto engine = pali_engine::Engine::load(argv[1], {pali_engine::Dtype::float32, /*threads=*/0});
    const auto image = pali_engine::Image::from_file(argv[2]);

    const pali_engine::Result result = engine.generate(image, prompt);
    std::cout << result.text << "\n"
              << "  " << result.tokens.size() << " tokens, score " << result.score << ", "
              << result.timings.total_ms << " ms\n";

    std::cout << "streamed:";
    engine.stream(image, prompt, {}, [](std::string_view piece) {
      std::cout << " [" << piece << "]" << std::flush;
      return true;  // false would stop the generation here
    });
    std::cout << "\n";

    pali_engine::GenerateOptions beams;
    beams.num_beams = 3;
    beams.max_new_tokens = 24;
    for (const auto& answer : engine.generate({image, image}, {prompt, "detect circle ; star"}, beams)) {
      std::cout << answer.text << "\n";
      for (const auto& box : answer.objects)
        std::cout << "  " << box.label << ": (" << box.x0 << ", " << box.y0 << ") - (" << box.x1 << ", " << box.y1
                  << ")\n";
    }
  } catch (const pali_engine::Error& error) {
    std::cerr << "pali_example: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
