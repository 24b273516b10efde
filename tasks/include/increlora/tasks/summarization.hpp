#pragma once
/// \file
/// Summarization data: the files the seed's run_summarization reads through Hugging Face `datasets` (JSON lines,
/// a JSON array, CSV), with its choice of the document and summary columns, and a deterministic train/validation
/// split. Plain strings only; the scores are in <increlora/tasks/rouge.hpp>.
///
/// Example:
/// \code
///   namespace summarization = increlora::summarization;
///   summarization::ReadOptions options;
///   options.dataset_name = "xsum";  // document / summary, as the seed's summarization_name_mapping says
///   auto examples = summarization::read_examples("/data/xsum/validation.jsonl", options);
///   auto parts = summarization::split(examples, /*validation_percentage=*/10, /*seed=*/42);
/// \endcode

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace increlora::summarization {

/// One document with its reference summary.
struct Example {
  std::string id;        ///< the "id" column when the file has one, else the row index (0, 1, ...) as text
  std::string document;  ///< the text column
  std::string summary;   ///< the summary column
};

/// The text and summary column of a dataset.
struct Columns {
  std::string text;
  std::string summary;
};

/// The seed's summarization_name_mapping: the columns of the Hugging Face datasets it knows by name (xsum:
/// document / summary; cnn_dailymail: article / highlights; samsum: dialogue / summary; amazon_reviews_multi:
/// review_body / review_title; big_patent: description / abstract; orange_sum: text / summary; pn_summary:
/// article / summary; psc: extract_text / summary_text; thaisum: body / summary; xglue: news_body / news_title;
/// wiki_summary: article / highlights). No value for any other name (`resolve_columns` says what is used then).
std::optional<Columns> dataset_columns(const std::string& dataset_name);

/// How `read_examples` picks the columns (run_summarization's --dataset_name, --text_column, --summary_column).
struct ReadOptions {
  std::string dataset_name;    ///< looked up with `dataset_columns` for the columns not given; "" = none
  std::string text_column;     ///< "" = from `dataset_name` or the file's columns (see `resolve_columns`)
  std::string summary_column;  ///< "" = likewise
};

/// The columns for a file with columns `file_columns` (in the file's order): each given column as it is, else the
/// one `dataset_columns(options.dataset_name)` names; for an unknown name, the first pair of the name table the
/// file holds both columns of (document / summary, article / highlights, dialogue / summary, text / summary,
/// ...), else the first (text) and second (summary) columns other than "id". run_summarization takes the first
/// two columns as they are, which for a local XSum file (id, document, summary) trains on the ids: we differ
/// there on purpose. Throws when a chosen column is not in the file, listing the file's columns and
/// naming `source` (the file, for the message), or when the file has too few columns to pick from.
Columns resolve_columns(const std::vector<std::string>& file_columns, const ReadOptions& options,
                        const std::string& source = "the file");

/// Reads a summarization file, as Hugging Face datasets' json and csv loaders read it:
/// * .json / .jsonl: JSON lines (one object per line, blank lines skipped), a JSON array of objects, or one
///   object whose "data" member is that array (datasets' `field="data"`; other members are ignored); the columns
///   are the keys in order of first appearance;
/// * .csv: RFC 4180 (a header row; comma-separated fields; fields in double quotes may hold commas, newlines and
///   doubled quotes ""; CRLF or LF line ends; a UTF-8 BOM at the start skipped; blank lines skipped).
/// Columns as `resolve_columns` chooses them. The "id" column may hold strings or integers (written as text).
/// Throws (c10::Error) naming the file, the line (JSON lines, CSV) or element (JSON array) and the column for a
/// missing column, a value that is not a string (null included: rows with missing text are an error, not
/// skipped), malformed JSON or CSV, a CSV row with more or fewer fields than the header, a file without examples,
/// an unknown extension, or a file that cannot be opened.
std::vector<Example> read_examples(const std::string& path, const ReadOptions& options = {});

/// A train/validation split.
struct Split {
  std::vector<Example> train;
  std::vector<Example> validation;
};

/// Splits `examples` deterministically: ceil(n × validation_percentage / 100) examples (as datasets'
/// train_test_split rounds its test part; a product within 1e-9 of an integer counts as that integer, so 10 % of 50
/// is 5 however the percentage was computed), drawn by a Fisher–Yates shuffle driven by std::mt19937_64(seed)
/// (whose output the C++ standard fixes, so the split is the same on every platform), go to validation; the rest
/// to train. Both parts keep the order of `examples`. Throws when validation_percentage is outside [0, 100].
Split split(const std::vector<Example>& examples, double validation_percentage, uint64_t seed);

}  // namespace increlora::summarization
