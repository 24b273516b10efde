// The toolkit's flag parser: the seed's forms, and bad values refused naming the flag.
#include "support.hpp"

#include <increlora/apps/flags.hpp>

#include <limits>

using increlora::apps::Flags;

namespace {

struct Parsed {
  int64_t steps = 10;
  double lr = 1e-3;
  std::string name = "x";
  bool flag = false, other = true;
  std::string input;
};

Parsed parse(std::vector<std::string> args) {
  Parsed p;
  Flags f("prog");
  f.add("steps", &p.steps, "optimizer steps");
  f.add("lr", &p.lr, "learning rate");
  f.add("name", &p.name, "a name");
  f.add("flag", &p.flag, "a switch");
  f.add("other", &p.other, "another switch");
  f.positional("INPUT", &p.input, "the input", /*required=*/false);
  f.ignore("report_to", true, "see the log");
  f.ignore("overwrite_output_dir", false, "always on");
  args.insert(args.begin(), "prog");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  f.parse(static_cast<int>(argv.size()), argv.data());
  return p;
}

}  // namespace

TEST_CASE("Flags take the seed's forms", "[apps][flags]") {
  const auto p = parse({"--steps", "12", "--lr=5e-4", "--name", "a b", "--flag", "--other", "False", "in.txt"});
  CHECK(p.steps == 12);
  CHECK(p.lr == 5e-4);
  CHECK(p.name == "a b");
  CHECK(p.flag);
  CHECK_FALSE(p.other);
  CHECK(p.input == "in.txt");
  CHECK(parse({"--flag", "True"}).flag);
  CHECK(parse({"--flag=1"}).flag);
  CHECK_FALSE(parse({"--flag", "false"}).flag);
  int64_t steps = 1;
  double lr = 0.1;
  Flags f("prog");
  f.add("steps", &steps, "optimizer steps");
  f.add("lr", &lr, "learning rate");
  f.ignore("report_to", true, "see the log");
  f.ignore("overwrite_output_dir", false, "always on");
  const char* argv[] = {"prog", "--report_to", "none", "--overwrite_output_dir", "--steps", "3"};
  f.parse(6, argv);
  REQUIRE(f.ignored_seen().size() == 2);
  CHECK(f.ignored_seen()[0].first == "report_to");
  CHECK(f.given("steps"));
  CHECK_FALSE(f.given("lr"));
  CHECK(f.to_json()["steps"] == 3);
  CHECK_THAT(f.usage(), HasSubstring("--steps"));
}

TEST_CASE("Flags refuse bad values and unknown flags, naming them", "[apps][flags][errors]") {
  CHECK_THROWS_WITH(parse({"--steps", "12abc"}), HasSubstring("--steps: expected an integer, got '12abc'"));
  CHECK_THROWS_WITH(parse({"--steps", "1.5"}), HasSubstring("--steps: expected an integer"));
  CHECK_THROWS_WITH(parse({"--steps", "99999999999999999999"}), HasSubstring("--steps: expected an integer"));
  CHECK_THROWS_WITH(parse({"--steps="}), HasSubstring("--steps: expected an integer, got ''"));
  CHECK_THROWS_WITH(parse({"--lr", "fast"}), HasSubstring("--lr: expected a finite number, got 'fast'"));
  CHECK_THROWS_WITH(parse({"--lr", "nan"}), HasSubstring("--lr: expected a finite number"));
  CHECK_THROWS_WITH(parse({"--lr", "1e999"}), HasSubstring("--lr: expected a finite number"));
  CHECK_THROWS_WITH(parse({"--flag=maybe"}), HasSubstring("--flag: expected True or False, got 'maybe'"));
  CHECK_THROWS_WITH(parse({"--steps"}), HasSubstring("--steps needs a value (optimizer steps)"));
  CHECK_THROWS_WITH(parse({"--stpes", "3"}), HasSubstring("unknown flag --stpes. Known flags: --steps, --lr"));
  CHECK_THROWS_WITH(parse({"a", "b"}), HasSubstring("unexpected argument 'b'"));
}
