#pragma once
// What the end-to-end suites of the programs share: run a command line, read what it wrote.
#include "catch.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <sys/wait.h>

namespace increlora::test {

/// The JSON file at `path`; REQUIREs that it opens.
inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  INFO("reading " << path);
  REQUIRE(in.good());
  nlohmann::json j;
  in >> j;
  return j;
}

/// The exit status of `command` run by the shell (-1 when it did not exit normally).
inline int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// The whole text of the file at `path` ("" when it cannot be read).
inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace increlora::test
