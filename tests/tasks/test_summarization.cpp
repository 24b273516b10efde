// Summarization data: the shared XSum sample read with the right counts and columns, the seed's column choice
// (flags, the dataset-name table, the first two columns), JSON arrays, {"data": [...]} and RFC 4180 CSV written
// by the tests, the deterministic split, and the errors for bad input.
#include "catch.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/tasks/summarization.hpp>

#include <c10/util/Exception.h>

#include <cmath>
#include <fstream>
#include <set>

namespace summarization = increlora::summarization;
using increlora::test::TempDir;

namespace {

std::string xsum_path() { return increlora::test::shared_dir() + "/data/summarization/xsum_sample.jsonl"; }

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

summarization::ReadOptions columns(const std::string& text, const std::string& summary) {
  summarization::ReadOptions o;
  o.text_column = text;
  o.summary_column = summary;
  return o;
}

// The message of the c10::Error that `read_examples(path, options)` throws ("" when it does not throw).
std::string read_error(const std::string& path, const summarization::ReadOptions& options = {}) {
  try {
    summarization::read_examples(path, options);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// The shared sample

TEST_CASE("read_examples reads the 50 XSum examples with their ids documents and summaries", "[summarization]") {
  summarization::ReadOptions options;
  options.dataset_name = "xsum";
  const auto examples = summarization::read_examples(xsum_path(), options);
  REQUIRE(examples.size() == 50);
  CHECK(examples.front().id == "38295789");
  CHECK(examples.front().summary ==
        "Former Premier League footballer Sam Sodje has appeared in court alongside three brothers accused of "
        "charity fraud.");
  CHECK(examples.front().document.rfind("The ex-Reading defender denied fraudulent trading charges", 0) == 0);
  CHECK(examples.front().document.find("\nMr Sodje, 37,") != std::string::npos);  // "\n" decoded
  CHECK(examples[1].id == "40202028");
  std::set<std::string> ids;
  for (const auto& e : examples) {
    ids.insert(e.id);
    CHECK(!e.document.empty());
    CHECK(!e.summary.empty());
  }
  CHECK(ids.size() == 50);
  // The same columns from the flags.
  const auto flagged = summarization::read_examples(xsum_path(), columns("document", "summary"));
  CHECK(flagged.back().document == examples.back().document);
  CHECK(flagged.back().summary == examples.back().summary);
}

TEST_CASE("Without flags or a known dataset name a known column pair is found in the file", "[summarization]") {
  // The sample's columns are id, document, summary: the seed would take id as the text; the xsum pair is found.
  const auto examples = summarization::read_examples(xsum_path());
  REQUIRE(examples.size() == 50);
  CHECK(examples.front().document.rfind("The ex-Reading defender", 0) == 0);
  CHECK(examples.front().id == "38295789");
  const auto c = summarization::resolve_columns({"id", "body_text", "title"}, summarization::ReadOptions{});
  CHECK((c.text == "body_text" && c.summary == "title"));  // no known pair: the first two columns but id
}

TEST_CASE("resolve_columns prefers the flags then the dataset table then the first two columns", "[summarization]") {
  const std::vector<std::string> file{"article", "highlights", "id"};
  summarization::ReadOptions o;
  auto c = summarization::resolve_columns(file, o);
  CHECK((c.text == "article" && c.summary == "highlights"));
  o.dataset_name = "cnn_dailymail";
  c = summarization::resolve_columns({"id", "article", "highlights"}, o);
  CHECK((c.text == "article" && c.summary == "highlights"));
  o.summary_column = "id";
  c = summarization::resolve_columns({"id", "article", "highlights"}, o);
  CHECK((c.text == "article" && c.summary == "id"));
  o = summarization::ReadOptions{};
  o.dataset_name = "samsum";
  CHECK_THROWS_WITH(summarization::resolve_columns(file, o, "f.jsonl"),
                    HasSubstring("f.jsonl has no column \"dialogue\" (the samsum default)") &&
                        HasSubstring("\"article\", \"highlights\", \"id\"") && HasSubstring("--text_column"));
  CHECK_THROWS_WITH(summarization::resolve_columns({"only"}, summarization::ReadOptions{}),
                    HasSubstring("too few") && HasSubstring("--summary_column"));
}

TEST_CASE("dataset_columns holds the seed's summarization_name_mapping", "[summarization]") {
  const std::vector<std::tuple<std::string, std::string, std::string>> table{
      {"amazon_reviews_multi", "review_body", "review_title"}, {"big_patent", "description", "abstract"},
      {"cnn_dailymail", "article", "highlights"},              {"orange_sum", "text", "summary"},
      {"pn_summary", "article", "summary"},                    {"psc", "extract_text", "summary_text"},
      {"samsum", "dialogue", "summary"},                       {"thaisum", "body", "summary"},
      {"xglue", "news_body", "news_title"},                    {"xsum", "document", "summary"},
      {"wiki_summary", "article", "highlights"}};
  for (const auto& [name, text, summary] : table) {
    INFO(name);
    const auto c = summarization::dataset_columns(name);
    REQUIRE(c.has_value());
    CHECK(c->text == text);
    CHECK(c->summary == summary);
  }
  CHECK_FALSE(summarization::dataset_columns("my_data").has_value());
  CHECK_FALSE(summarization::dataset_columns("").has_value());
}

// ---------------------------------------------------------------------------------------------------------
// Formats

TEST_CASE("read_examples reads CSV with quotes doubled quotes newlines CRLF and a BOM", "[summarization][csv]") {
  TempDir dir;
  const std::string path = dir.file("data.csv");
  write_text(path,
             "\xEF\xBB\xBF" "document,summary\r\n"
             "\"First, with a comma\",plain\r\n"
             "\"Two\nlines and \"\"quotes\"\"\",\"\"\r\n"
             "\r\n"
             "unquoted \"inner\" quote,last\n"
             ",empty document");  // no final newline
  const auto examples = summarization::read_examples(path);
  REQUIRE(examples.size() == 4);
  CHECK(examples[0].document == "First, with a comma");
  CHECK(examples[0].summary == "plain");
  CHECK(examples[0].id == "0");
  CHECK(examples[1].document == "Two\nlines and \"quotes\"");
  CHECK(examples[1].summary == "");
  CHECK(examples[2].document == "unquoted \"inner\" quote");  // as pandas reads it
  CHECK(examples[3].document == "");
  CHECK(examples[3].summary == "empty document");
  CHECK(examples[3].id == "3");
}

TEST_CASE("read_examples takes the id column of a CSV and the named columns", "[summarization][csv]") {
  TempDir dir;
  const std::string path = dir.file("data.csv");
  write_text(path, "title,id,body,abstract\nT1,a-1,B1,A1\nT2,a-2,B2,A2\n");
  const auto examples = summarization::read_examples(path, columns("body", "abstract"));
  REQUIRE(examples.size() == 2);
  CHECK(examples[1].id == "a-2");
  CHECK(examples[1].document == "B2");
  CHECK(examples[1].summary == "A2");
}

TEST_CASE("read_examples reads a JSON array and a data wrapper with integer ids", "[summarization][json]") {
  TempDir dir;
  const std::string array = dir.file("array.json");
  write_text(array, "[\n  {\"id\": 7, \"text\": \"T0\", \"summary\": \"S0\"},\n"
                    "  {\"id\": \"x\", \"text\": \"T1\", \"summary\": \"S1\"}\n]\n");
  // Flagged as the id column's text, an integer is no document (datasets would hand the tokenizer an int): an
  // error naming the column.
  CHECK_THROWS_WITH(summarization::read_examples(array, columns("id", "summary")),
                    HasSubstring("element 0 of the array: the column \"id\" should hold a string"));
  auto examples = summarization::read_examples(array);  // text / summary: a known pair
  REQUIRE(examples.size() == 2);
  CHECK(examples[0].id == "7");
  CHECK(examples[1].id == "x");
  CHECK(examples[1].document == "T1");
  CHECK(examples[1].summary == "S1");

  const std::string wrapped = dir.file("wrapped.json");
  write_text(wrapped, "{\"version\": \"1\", \"data\": [{\"dialogue\": \"D\", \"summary\": \"S\"}]}");
  summarization::ReadOptions o;
  o.dataset_name = "samsum";
  examples = summarization::read_examples(wrapped, o);
  REQUIRE(examples.size() == 1);
  CHECK(examples[0].id == "0");
  CHECK(examples[0].document == "D");

  const std::string lines = dir.file("lines.json");  // JSON lines under .json, with a blank line
  write_text(lines, "{\"a\": \"1\", \"b\": \"2\"}\n\n{\"b\": \"4\", \"a\": \"3\"}\r\n");
  examples = summarization::read_examples(lines);
  REQUIRE(examples.size() == 2);
  CHECK((examples[1].document == "3" && examples[1].summary == "4"));  // columns in order of first appearance
}

// ---------------------------------------------------------------------------------------------------------
// Errors

TEST_CASE("read_examples names the file line and column of bad input", "[summarization][errors]") {
  TempDir dir;
  auto check = [&](const std::string& name, const std::string& text, const summarization::ReadOptions& options,
                   std::vector<std::string> parts) {
    const std::string path = dir.file(name);
    write_text(path, text);
    const std::string message = read_error(path, options);
    INFO(name << ": " << message);
    REQUIRE(!message.empty());
    CHECK_THAT(message, HasSubstring("increlora:"));
    CHECK_THAT(message, HasSubstring(path));
    for (const auto& p : parts) CHECK_THAT(message, HasSubstring(p));
  };
  const auto ds = columns("document", "summary");
  check("missing.jsonl", "{\"document\": \"d\", \"title\": \"t\"}\n", ds,
        {"no column \"summary\"", "\"document\", \"title\"", "--summary_column"});
  check("number.jsonl", "{\"document\": \"d\", \"summary\": \"s\"}\n{\"document\": 5, \"summary\": \"s\"}\n", ds,
        {"line 2", "\"document\"", "should hold a string", "number"});
  check("null.jsonl", "{\"document\": \"d\", \"summary\": \"s\"}\n{\"document\": \"d\"}\n", ds,
        {"line 2", "no value in the column \"summary\""});
  check("bad.jsonl", "{\"document\": \"d\", \"summary\": \"s\"}\n{\"document\": \"d\", \"summary\": }\n", ds,
        {"line 2", "not valid JSON"});
  check("notobject.jsonl", "[1, 2]\n", ds, {"element 0", "expected a JSON object"});
  check("badarray.json", "[\n{\"document\": \"d\", \"summary\": \"s\"},\n{\"document\": \"d\" \"summary\": \"s\"}\n]",
        ds, {"line 3", "not valid JSON"});
  check("arraynumber.json", "[{\"document\": \"d\", \"summary\": [\"s\"]}]", ds,
        {"element 0 of the array", "\"summary\"", "array"});
  check("badid.jsonl", "{\"id\": 1.5, \"document\": \"d\", \"summary\": \"s\"}\n", ds, {"line 1", "\"id\""});
  check("empty.jsonl", "", ds, {"empty"});
  check("blank.jsonl", "\n \n", ds, {"empty"});
  check("empty.json", "[]", ds, {"no examples"});
  check("empty.csv", "", ds, {"empty"});
  check("header.csv", "document,summary\n", ds, {"no examples"});
  check("fields.csv", "document,summary\na,b\na,b,c\n", ds, {"line 3", "3 fields", "header has 2"});
  check("few.csv", "document,summary\na\n", ds, {"line 2", "1 fields"});
  check("open.csv", "document,summary\n\"never closed,b\n", ds, {"line 2", "never closed"});
  check("after.csv", "document,summary\n\"a\"x,b\n", ds, {"line 2", "after the closing quote"});
  check("twice.csv", "document,summary,document\na,b,c\n", ds, {"appears twice"});
  check("missing.csv", "text,title\na,b\n", ds, {"no column \"document\"", "\"text\", \"title\""});
  check("data.txt", "document,summary\n", ds, {"neither .csv, .json nor .jsonl"});
  const std::string absent = dir.file("absent.jsonl");
  CHECK_THAT(read_error(absent), HasSubstring("cannot open") && HasSubstring(absent));
}

// ---------------------------------------------------------------------------------------------------------
// Split

TEST_CASE("split is deterministic keeps file order and puts ceil of the percentage in validation",
          "[summarization][split]") {
  std::vector<summarization::Example> examples;
  for (int i = 0; i < 50; ++i) examples.push_back({std::to_string(i), "d" + std::to_string(i), "s"});
  const auto a = summarization::split(examples, 10, 42);
  const auto b = summarization::split(examples, 10, 42);
  const auto c = summarization::split(examples, 10, 43);
  REQUIRE(a.validation.size() == 5);
  REQUIRE(a.train.size() == 45);
  std::vector<std::string> ids_a, ids_b, ids_c;
  for (const auto& e : a.validation) ids_a.push_back(e.id);
  for (const auto& e : b.validation) ids_b.push_back(e.id);
  for (const auto& e : c.validation) ids_c.push_back(e.id);
  CHECK(ids_a == ids_b);
  CHECK(ids_a != ids_c);
  std::set<std::string> all;
  for (const auto* part : {&a.train, &a.validation}) {
    for (size_t i = 0; i < part->size(); ++i) {
      all.insert((*part)[i].id);
      if (i > 0) CHECK(std::stoi((*part)[i - 1].id) < std::stoi((*part)[i].id));  // file order kept
    }
  }
  CHECK(all.size() == 50);
  CHECK(summarization::split(examples, 3, 0).validation.size() == 2);    // ceil(1.5)
  CHECK(summarization::split(examples, 2.5, 0).validation.size() == 2);  // ceil(1.25)
  const std::vector<summarization::Example> hundred(100);
  CHECK(summarization::split(hundred, 100.0 * 0.07, 0).validation.size() == 7);  // 7.000000000000001 % → 7, not 8
  CHECK(summarization::split(examples, 0, 0).validation.empty());
  CHECK(summarization::split(examples, 100, 0).train.empty());
  CHECK(summarization::split({}, 10, 0).validation.empty());
  CHECK_THROWS_WITH(summarization::split(examples, 101, 0), HasSubstring("validation_percentage is 101"));
  CHECK_THROWS_WITH(summarization::split(examples, -1, 0), HasSubstring("[0, 100]"));
  CHECK_THROWS_WITH(summarization::split(examples, std::nan(""), 0), HasSubstring("[0, 100]"));
}
