#include <increlora/apps/flags.hpp>

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>

namespace increlora::apps {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

}  // namespace

bool is_bool_text(const std::string& s) {
  return s == "true" || s == "false" || s == "True" || s == "False" || s == "1" || s == "0";
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const auto comma = s.find(',', start);
    auto item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Flags::Flags(std::string program, std::string synopsis) : program_(std::move(program)), synopsis_(std::move(synopsis)) {}

void Flags::add(const std::string& name, int64_t* v, const std::string& help) {
  add_flag(name, Kind::kInt, v, help, std::to_string(*v));
}
void Flags::add(const std::string& name, double* v, const std::string& help) {
  add_flag(name, Kind::kDouble, v, help, fmt::format("{}", *v));
}
void Flags::add(const std::string& name, std::string* v, const std::string& help) {
  add_flag(name, Kind::kString, v, help, *v);
}
void Flags::add(const std::string& name, bool* v, const std::string& help) {
  add_flag(name, Kind::kBool, v, help, *v ? "True" : "False");
}
void Flags::positional(const std::string& name, std::string* v, const std::string& help, bool required) {
  add_flag(name, Kind::kString, v, help, *v);
  flags_.back().positional = true;
  flags_.back().required = required;
}
void Flags::ignore(const std::string& name, bool takes_value, const std::string& why) {
  ignored_[name] = {takes_value, why};
}

void Flags::add_flag(const std::string& name, Kind kind, void* target, const std::string& help, std::string def) {
  if (std::any_of(flags_.begin(), flags_.end(), [&](const Flag& f) { return f.name == name; })) {
    throw std::logic_error("Flags: --" + name + " is added twice");
  }
  flags_.push_back({name, kind, target, help, std::move(def)});
}

void Flags::parse(int argc, const char* const* argv) {
  auto next_positional = flags_.begin();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      next_positional = std::find_if(next_positional, flags_.end(), [](const Flag& f) { return f.positional; });
      if (next_positional == flags_.end()) fail(fmt::format("unexpected argument '{}': flags start with --", arg));
      set(*next_positional, arg);
      next_positional->given = true;
      ++next_positional;
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const auto eq = name.find('='); eq != std::string::npos) value = name.substr(eq + 1), name.resize(eq);
    if (const auto ig = ignored_.find(name); ig != ignored_.end()) {
      seen_ignored_.emplace_back(name, ig->second.second);
      if (!value && i + 1 < argc && (ig->second.first || is_bool_text(argv[i + 1]))) ++i;
      continue;
    }
    const auto it = std::find_if(flags_.begin(), flags_.end(),
                                 [&](const Flag& f) { return f.name == name && !f.positional; });
    if (it == flags_.end()) {
      std::string known;
      for (const auto& f : flags_) {
        if (!f.positional) known += (known.empty() ? "--" : ", --") + f.name;
      }
      fail(fmt::format("unknown flag --{}. Known flags: {}", name, known));
    }
    if (it->kind == Kind::kBool) {
      if (!value && i + 1 < argc && is_bool_text(argv[i + 1])) value = argv[++i];
      set(*it, value.value_or("true"));
    } else {
      if (!value) {
        if (i + 1 >= argc) fail(fmt::format("--{} needs a value ({})", name, it->help));
        value = argv[++i];
      }
      set(*it, *value);
    }
    it->given = true;
  }
  if (help_) return;
  for (const auto& f : flags_) {
    if (f.positional && f.required && !f.given) fail(fmt::format("missing {} ({})", f.name, f.help));
  }
}

bool Flags::given(const std::string& name) const {
  for (const auto& f : flags_) {
    if (f.name == name) return f.given;
  }
  return false;
}

nlohmann::json Flags::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : flags_) {
    switch (f.kind) {
      case Kind::kInt: j[f.name] = *static_cast<int64_t*>(f.target); break;
      case Kind::kDouble: j[f.name] = *static_cast<double*>(f.target); break;
      case Kind::kString: j[f.name] = *static_cast<std::string*>(f.target); break;
      case Kind::kBool: j[f.name] = *static_cast<bool*>(f.target); break;
    }
  }
  return j;
}

std::string Flags::usage() const {
  std::string s = fmt::format("usage: {}", program_);
  for (const auto& f : flags_) {
    if (f.positional) s += f.required ? " " + f.name : " [" + f.name + "]";
  }
  s += " " + synopsis_ + "\n";
  bool any_positional = false;
  for (const auto& f : flags_) {
    if (!f.positional) continue;
    if (!any_positional) s += "\narguments:\n";
    any_positional = true;
    s += fmt::format("  {:<32} {}\n", f.name, f.help);
  }
  s += "\nflags (default in brackets):\n";
  for (const auto& f : flags_) {
    if (!f.positional) s += fmt::format("  --{:<30} {} [{}]\n", f.name, f.help, f.default_text);
  }
  if (!ignored_.empty()) {
    s += "\naccepted for the seed's command lines, without effect:\n";
    for (const auto& [name, v] : ignored_) s += fmt::format("  --{:<30} {}\n", name, v.second);
  }
  return s;
}

void Flags::set(const Flag& f, const std::string& text) {
  const auto bad = [&](const char* what) -> void {
    fail(fmt::format("--{}: expected {}, got '{}' ({})", f.name, what, text, f.help));
  };
  switch (f.kind) {
    case Kind::kInt: {
      // strtoll, not stoll: it reports overflow (errno) without exceptions, and "12abc" leaves text unread.
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) bad("an integer");
      *static_cast<int64_t*>(f.target) = v;
      break;
    }
    case Kind::kDouble: {
      errno = 0;
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v)) {
        bad("a finite number");
      }
      *static_cast<double*>(f.target) = v;
      break;
    }
    case Kind::kString: *static_cast<std::string*>(f.target) = text; break;
    case Kind::kBool:
      if (!is_bool_text(text)) bad("True or False");
      *static_cast<bool*>(f.target) = text == "true" || text == "True" || text == "1";
      break;
  }
}

void parse_command_line(Flags& flags, int argc, const char* const* argv) {
  flags.parse(argc, argv);
  if (flags.help()) {
    std::fputs(flags.usage().c_str(), stdout);
    std::exit(0);
  }
  for (const auto& [name, why] : flags.ignored_seen()) {
    fmt::print("{}: --{} has no effect here ({})\n", flags.program(), name, why);
  }
}

int run_program(const std::string& program, const std::function<int(int, char**)>& run, int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "{}: {}\n({} --help lists the flags)\n", program, e.what(), program);
    return 2;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what());
    return 1;
  }
}

}  // namespace increlora::apps
