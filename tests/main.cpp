// The test runner: Catch2's session, plus a line saying which devices the device-parametrised cases cover.
#if INCRELORA_CATCH_MAJOR >= 3
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <torch/cuda.h>

#include <cstdio>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  // stderr: test discovery reads the listing from stdout.
  std::fprintf(stderr, "increlora tests: CUDA %s\n",
               torch::cuda::is_available() ? "available: device cases run on CPU and CUDA"
                                           : "not available: device cases run on CPU only");
  return session.run();
}
