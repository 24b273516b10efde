#pragma once
/// \file
/// `Flags`: the command-line parser every program of the toolkit shares. It takes the forms of the seed's
/// (Hugging Face) command lines: `--name value`, `--name=value`, and for booleans a bare `--name` or
/// `--name True|False|true|false|1|0`. A value that does not parse (a number with trailing text, a NaN, an
/// out-of-range integer, a boolean spelled otherwise) is refused with a message naming the flag, the value and
/// what the flag is for; so is an unknown flag, with the list of known ones.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace increlora::apps {

class Flags {
 public:
  /// `program` names the program in the usage text; `synopsis` follows it ("--task_name TASK [flags]").
  explicit Flags(std::string program, std::string synopsis = "[flags]");

  void add(const std::string& name, int64_t* value, const std::string& help);
  void add(const std::string& name, double* value, const std::string& help);
  void add(const std::string& name, std::string* value, const std::string& help);
  void add(const std::string& name, bool* value, const std::string& help);
  /// A positional argument, in the order added; `required` ones must be given.
  void positional(const std::string& name, std::string* value, const std::string& help, bool required);
  /// Accepted for compatibility with the seed's command lines, and without effect: parse() records it so that
  /// the program can say so (`ignored_seen`). `takes_value` flags consume the next argument.
  void ignore(const std::string& name, bool takes_value, const std::string& why);

  /// Parses argv; throws std::invalid_argument naming what is wrong. `--help` / `-h` sets help().
  void parse(int argc, const char* const* argv);
  bool help() const { return help_; }
  /// Whether the command line gave the flag.
  bool given(const std::string& name) const;
  /// The compatibility-only flags the command line gave, each with why it has no effect.
  const std::vector<std::pair<std::string, std::string>>& ignored_seen() const { return seen_ignored_; }
  /// Every flag with a default or given value, by name (positionals included), as JSON.
  nlohmann::json to_json() const;
  std::string usage() const;
  const std::string& program() const { return program_; }

 private:
  enum class Kind { kInt, kDouble, kString, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help, default_text;
    bool given = false;
    bool positional = false;
    bool required = false;
  };
  void add_flag(const std::string& name, Kind kind, void* target, const std::string& help, std::string def);
  static void set(const Flag& flag, const std::string& text);

  std::string program_, synopsis_;
  std::vector<Flag> flags_;
  std::map<std::string, std::pair<bool, std::string>> ignored_;
  std::vector<std::pair<std::string, std::string>> seen_ignored_;
  bool help_ = false;
};

/// Whether `text` is one of the boolean spellings the parser takes.
bool is_bool_text(const std::string& text);
/// "a, b ,c" → {"a", "b", "c"} (blanks trimmed, empty items dropped).
std::vector<std::string> split_commas(const std::string& text);

/// A program's parse: `flags.parse(argc, argv)`; with --help, prints the usage on stdout and exits with status 0;
/// then one line on stdout per seed flag given that has no effect here ("glue: --report_to has no effect here
/// (see log.jsonl)"). Throws what `parse` throws.
void parse_command_line(Flags& flags, int argc, const char* const* argv);

/// A program's main(): runs `run` and turns what it throws into a message on stderr and an exit status — 2 for a
/// bad flag (std::invalid_argument, with a pointer to --help), 1 for any other error (c10::Error without its
/// backtrace).
int run_program(const std::string& program, const std::function<int(int, char**)>& run, int argc, char** argv);

}  // namespace increlora::apps
