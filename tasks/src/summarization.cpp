#include <increlora/tasks/summarization.hpp>

#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <utility>

namespace increlora::summarization {
namespace {

using json = nlohmann::ordered_json;

// One row of a file, whatever its format: the values by column (null = absent), and where it is, for messages.
struct Row {
  std::string where;  // "line 3" (JSON lines, CSV) or "element 2 of the array"
  json values;        // an object: column → value
};

struct Table {
  std::vector<std::string> columns;  // in order of first appearance
  std::vector<Row> rows;
};

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "\"" : ", \"") + n + "\"";
  return out.empty() ? "(none)" : out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "cannot open the summarization file '", path,
                  "'; give a .jsonl, .json or .csv file with a text and a summary column.");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.compare(0, 3, "\xEF\xBB\xBF") == 0) data.erase(0, 3);  // a UTF-8 BOM
  return data;
}

int64_t line_of(const std::string& data, size_t byte) {
  byte = std::min(byte, data.size());
  return 1 + std::count(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(byte), '\n');
}

void add_row(Table& table, std::string where, json values, const std::string& path) {
  INCRELORA_CHECK(values.is_object(), path, " ", where,
                  ": expected a JSON object (one example, column → value), found ", values.type_name(), ".");
  for (const auto& item : values.items())
    if (std::find(table.columns.begin(), table.columns.end(), item.key()) == table.columns.end())
      table.columns.push_back(item.key());
  table.rows.push_back(Row{std::move(where), std::move(values)});
}

// ----- JSON ---------------------------------------------------------------------------------------------------

Table read_json_lines(const std::string& data, const std::string& path) {
  Table table;
  int64_t line_number = 0;
  size_t start = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    ++line_number;
    std::string line = data.substr(start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json value;
    try {
      value = json::parse(line);
    } catch (const json::parse_error& e) {
      INCRELORA_CHECK(false, path, " line ", line_number, ": not valid JSON (", e.what(),
                      "); give one JSON object per line (JSON lines), or one JSON array of objects.");
    }
    add_row(table, "line " + std::to_string(line_number), std::move(value), path);
  }
  return table;
}

Table read_json_file(const std::string& data, const std::string& path) {
  const size_t first = data.find_first_not_of(" \t\r\n");
  INCRELORA_CHECK(first != std::string::npos, "the summarization file '", path,
                  "' is empty; give one JSON object per line, each with a text and a summary.");
  json whole;
  std::string whole_error;
  try {
    whole = json::parse(data);
  } catch (const json::parse_error& e) {
    if (data[first] == '[')
      INCRELORA_CHECK(false, path, " line ", line_of(data, e.byte == 0 ? 0 : e.byte - 1), ": not valid JSON (",
                      e.what(), ").");
    return read_json_lines(data, path);  // several values: JSON lines (their errors name the line)
  }
  const json* array = nullptr;
  if (whole.is_array()) array = &whole;
  else if (whole.is_object() && whole.contains("data") && whole["data"].is_array())
    array = &whole["data"];
  if (array == nullptr) return read_json_lines(data, path);  // one object: a file of one JSON line
  Table table;
  for (size_t i = 0; i < array->size(); ++i)
    add_row(table, "element " + std::to_string(i) + " of the array", (*array)[i], path);
  return table;
}

// ----- CSV (RFC 4180) -------------------------------------------------------------------------------------------

struct Record {
  int64_t line = 0;
  std::vector<std::string> fields;
};

std::vector<Record> parse_csv(const std::string& data, const std::string& path) {
  std::vector<Record> records;
  const size_t n = data.size();
  size_t i = 0;
  int64_t line = 1;
  auto at_line_end = [&](size_t k) { return k >= n || data[k] == '\n' || data[k] == '\r'; };
  auto skip_line_end = [&] {  // past "\r\n", "\n" or "\r"
    if (i < n && data[i] == '\r') ++i;
    if (i < n && data[i] == '\n') ++i;
    ++line;
  };
  while (i < n) {
    Record record;
    record.line = line;
    bool blank = true;
    while (true) {
      std::string field;
      if (i < n && data[i] == '"') {
        blank = false;
        const int64_t opened = line;
        ++i;
        while (true) {
          INCRELORA_CHECK(i < n, path, " line ", opened, ": a quoted field is never closed; end it with '\"' ",
                          "and write a quote inside a quoted field as \"\".");
          if (data[i] == '"') {
            if (i + 1 < n && data[i + 1] == '"') {
              field.push_back('"');
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          if (data[i] == '\n') ++line;
          field.push_back(data[i++]);
        }
        INCRELORA_CHECK(at_line_end(i) || data[i] == ',', path, " line ", line, ": text after the closing quote of ",
                        "field ", record.fields.size() + 1, "; write a quote inside a quoted field as \"\".");
      } else {
        while (!at_line_end(i) && data[i] != ',') field.push_back(data[i++]);
        if (!field.empty()) blank = false;
      }
      record.fields.push_back(std::move(field));
      if (i < n && data[i] == ',') {
        blank = false;
        ++i;
        continue;
      }
      skip_line_end();
      break;
    }
    if (!blank) records.push_back(std::move(record));
  }
  return records;
}

Table read_csv(const std::string& data, const std::string& path) {
  auto records = parse_csv(data, path);
  INCRELORA_CHECK(!records.empty(), "the summarization file '", path,
                  "' is empty; give a header row (the column names) and one row per example.");
  Table table;
  table.columns = records.front().fields;
  for (size_t c = 0; c < table.columns.size(); ++c)
    INCRELORA_CHECK(std::count(table.columns.begin(), table.columns.end(), table.columns[c]) == 1, path,
                    " line 1: the column \"", table.columns[c], "\" appears twice in the header; rename one.");
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& record = records[r];
    INCRELORA_CHECK(record.fields.size() == table.columns.size(), path, " line ", record.line, ": ",
                    record.fields.size(), " fields, but the header has ", table.columns.size(), " (",
                    join(table.columns), "); quote fields that hold commas or newlines.");
    json values = json::object();
    for (size_t c = 0; c < table.columns.size(); ++c) values[table.columns[c]] = record.fields[c];
    table.rows.push_back(Row{"line " + std::to_string(record.line), std::move(values)});
  }
  return table;
}

// ----- Examples -------------------------------------------------------------------------------------------------

const std::string& string_value(const Row& row, const std::string& column, const std::string& path) {
  const auto it = row.values.find(column);
  INCRELORA_CHECK(it != row.values.end() && !it->is_null(), path, " ", row.where, ": no value in the column \"",
                  column, "\"; every example needs one.");
  INCRELORA_CHECK(it->is_string(), path, " ", row.where, ": the column \"", column, "\" should hold a string, found ",
                  it->type_name(), ".");
  return it->get_ref<const std::string&>();
}

std::string id_value(const Row& row, const std::string& path) {
  const auto it = row.values.find("id");
  INCRELORA_CHECK(it != row.values.end() && !it->is_null(), path, " ", row.where,
                  ": no value in the column \"id\"; give every example an id, or none.");
  if (it->is_string()) return it->get<std::string>();
  INCRELORA_CHECK(it->is_number_integer(), path, " ", row.where,
                  ": the column \"id\" should hold a string or an integer, found ", it->type_name(), ".");
  return it->dump();
}

}  // namespace

std::optional<Columns> dataset_columns(const std::string& dataset_name) {
  static const std::map<std::string, Columns> mapping{
      {"amazon_reviews_multi", {"review_body", "review_title"}},
      {"big_patent", {"description", "abstract"}},
      {"cnn_dailymail", {"article", "highlights"}},
      {"orange_sum", {"text", "summary"}},
      {"pn_summary", {"article", "summary"}},
      {"psc", {"extract_text", "summary_text"}},
      {"samsum", {"dialogue", "summary"}},
      {"thaisum", {"body", "summary"}},
      {"xglue", {"news_body", "news_title"}},
      {"xsum", {"document", "summary"}},
      {"wiki_summary", {"article", "highlights"}},
  };
  const auto it = mapping.find(dataset_name);
  if (it == mapping.end()) return std::nullopt;
  return it->second;
}

Columns resolve_columns(const std::vector<std::string>& file_columns, const ReadOptions& options,
                        const std::string& source) {
  auto known = dataset_columns(options.dataset_name);
  const auto has = [&](const std::string& c) {
    return std::find(file_columns.begin(), file_columns.end(), c) != file_columns.end();
  };
  if (!known && options.text_column.empty() && options.summary_column.empty()) {
    // A local file of a known layout (the XSum sample: id, document, summary): the pair the name table gives for
    // it, where the seed would take the first two columns and train on the ids.
    for (const char* name : {"xsum", "cnn_dailymail", "samsum", "orange_sum", "pn_summary", "thaisum", "big_patent",
                             "amazon_reviews_multi", "psc", "xglue", "wiki_summary"}) {
      const auto pair = dataset_columns(name);
      if (has(pair->text) && has(pair->summary)) {
        known = pair;
        break;
      }
    }
  }
  // Otherwise the first two columns, an "id" column left out (it names examples; it is never a text).
  std::vector<std::string> candidates;
  for (const auto& c : file_columns) {
    if (c != "id") candidates.push_back(c);
  }
  auto pick = [&](const std::string& given, const char* flag, size_t position) {
    std::string column;
    if (!given.empty()) column = given;
    else if (known) column = position == 0 ? known->text : known->summary;
    else {
      INCRELORA_CHECK(candidates.size() > position, source, " has the columns ", join(file_columns),
                      ": too few to take the ", position == 0 ? "first" : "second", " (other than id) as the ",
                      flag, "; give --", flag, ".");
      return candidates[position];
    }
    INCRELORA_CHECK(std::find(file_columns.begin(), file_columns.end(), column) != file_columns.end(), source,
                    " has no column \"", column, "\"", given.empty() ? " (the " + options.dataset_name +
                    " default)" : std::string(), "; its columns are ", join(file_columns), ". Give --", flag,
                    " with one of them.");
    return column;
  };
  return Columns{pick(options.text_column, "text_column", 0), pick(options.summary_column, "summary_column", 1)};
}

std::vector<Example> read_examples(const std::string& path, const ReadOptions& options) {
  const bool csv = ends_with(path, ".csv");
  INCRELORA_CHECK(csv || ends_with(path, ".json") || ends_with(path, ".jsonl"), "the summarization file '", path,
                  "' is neither .csv, .json nor .jsonl; rename it after its format.");
  const std::string data = read_all(path);
  const Table table = csv ? read_csv(data, path) : read_json_file(data, path);
  INCRELORA_CHECK(!table.rows.empty(), "the summarization file '", path,
                  "' holds no examples; give at least one row with a text and a summary.");
  const Columns columns = resolve_columns(table.columns, options, path);
  const bool has_id = std::find(table.columns.begin(), table.columns.end(), "id") != table.columns.end();
  std::vector<Example> out;
  out.reserve(table.rows.size());
  for (size_t r = 0; r < table.rows.size(); ++r) {
    const Row& row = table.rows[r];
    Example e;
    e.id = has_id ? id_value(row, path) : std::to_string(r);
    e.document = string_value(row, columns.text, path);
    e.summary = string_value(row, columns.summary, path);
    out.push_back(std::move(e));
  }
  return out;
}

Split split(const std::vector<Example>& examples, double validation_percentage, uint64_t seed) {
  INCRELORA_CHECK(validation_percentage >= 0 && validation_percentage <= 100, "split: validation_percentage is ",
                  validation_percentage, "; give a percentage in [0, 100].");
  const uint64_t n = examples.size();
  const long double share = static_cast<long double>(n) * validation_percentage / 100.0L;
  const uint64_t validation_count = std::min<uint64_t>(n, static_cast<uint64_t>(std::ceil(share - 1e-9L)));
  std::vector<uint64_t> order(n);
  for (uint64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 generator(seed);
  for (uint64_t i = n; i > 1; --i) {  // Fisher–Yates; the modulo bias is < 2^-40 for any realistic n
    const uint64_t j = generator() % i;
    std::swap(order[i - 1], order[j]);
  }
  std::vector<char> in_validation(n, 0);
  for (uint64_t k = 0; k < validation_count; ++k) in_validation[order[k]] = 1;
  Split out;
  out.validation.reserve(validation_count);
  out.train.reserve(n - validation_count);
  for (uint64_t i = 0; i < n; ++i) (in_validation[i] ? out.validation : out.train).push_back(examples[i]);
  return out;
}

}  // namespace increlora::summarization
