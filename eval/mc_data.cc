#include "eval/mc_data.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "eval/text_file.h"

namespace anchorserve::eval {
namespace {

const std::vector<McTask>& Tasks() {
  static const auto* tasks = new std::vector<McTask>{
      {"arc_easy", McFormat::kQueryChoices, "\nAnswer: "},
      {"arc_challenge", McFormat::kQueryChoices, "\nAnswer: "},
      {"piqa", McFormat::kQueryChoices, "\nAnswer: "},
      {"boolq", McFormat::kQueryChoices, "\nAnswer: "},
      {"openbookqa", McFormat::kQueryChoices, " "},
      {"commonsense_qa", McFormat::kQueryChoices, " "},
      {"siqa", McFormat::kQueryChoices, " "},
      {"copa", McFormat::kQueryChoices, " "},
      {"winogrande", McFormat::kSchema, " "},
      {"lambada", McFormat::kLanguageModeling, " "},
      {"hellaswag", McFormat::kHellaswag, " "},
  };
  return *tasks;
}

// Splits the delimiter into what stays with the context and the whitespace that moves to the
// continuation.
struct Joint {
  std::string context_tail;
  std::string continuation_head;
};

Joint SplitDelimiter(absl::string_view delimiter) {
  const absl::string_view kept = absl::StripTrailingAsciiWhitespace(delimiter);
  return {std::string(kept), std::string(delimiter.substr(kept.size()))};
}

std::string Where(absl::string_view source, int64_t line) {
  return absl::StrCat(source, ":", line, ": ");
}

absl::StatusOr<std::string> NonEmptyString(const nlohmann::json& value, absl::string_view what,
                                           const std::string& where) {
  if (!value.is_string())
    return absl::InvalidArgumentError(absl::StrCat(where, what, " is not a string"));
  std::string text(absl::StripAsciiWhitespace(value.get<std::string>()));
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(where, what, " is empty"));
  return text;
}

absl::StatusOr<const nlohmann::json*> Field(const nlohmann::json& object, const char* key,
                                            const std::string& where) {
  auto it = object.find(key);
  if (it == object.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "missing \"", key, "\""));
  }
  return &*it;
}

absl::StatusOr<std::vector<std::string>> NonEmptyStrings(const nlohmann::json& object,
                                                         const char* key, size_t min_size,
                                                         const std::string& where) {
  ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, key, where));
  if (!value->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "\"", key, "\" is not a list"));
  }
  if (value->size() < min_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"", key, "\" has ", value->size(), " entries, need ", min_size));
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < value->size(); ++i) {
    ASSIGN_OR_RETURN(std::string text,
                     NonEmptyString((*value)[i], absl::StrCat("\"", key, "\"[", i, "]"), where));
    out.push_back(std::move(text));
  }
  return out;
}

absl::StatusOr<int> GoldIndex(const nlohmann::json& object, size_t num_choices,
                              const std::string& where) {
  ASSIGN_OR_RETURN(const nlohmann::json* value, Field(object, "gold", where));
  if (!value->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "\"gold\" is not an integer"));
  }
  const int64_t gold = value->get<int64_t>();
  if (gold < 0 || gold >= static_cast<int64_t>(num_choices)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"gold\" ", gold, " is outside [0, ", num_choices, ")"));
  }
  return static_cast<int>(gold);
}

absl::StatusOr<McItem> ParseJsonItem(const nlohmann::json& object, const McTask& task,
                                     const std::string& where) {
  const Joint joint = SplitDelimiter(task.delimiter);
  McItem item;
  switch (task.format) {
    case McFormat::kQueryChoices: {
      ASSIGN_OR_RETURN(const nlohmann::json* query_json, Field(object, "query", where));
      ASSIGN_OR_RETURN(std::string query, NonEmptyString(*query_json, "\"query\"", where));
      ASSIGN_OR_RETURN(std::vector<std::string> choices,
                       NonEmptyStrings(object, "choices", 2, where));
      ASSIGN_OR_RETURN(item.gold, GoldIndex(object, choices.size(), where));
      for (const std::string& choice : choices) {
        item.contexts.push_back(query + joint.context_tail);
        item.continuations.push_back(joint.continuation_head + choice);
      }
      return item;
    }
    case McFormat::kSchema: {
      ASSIGN_OR_RETURN(std::vector<std::string> options,
                       NonEmptyStrings(object, "context_options", 2, where));
      ASSIGN_OR_RETURN(const nlohmann::json* continuation_json,
                       Field(object, "continuation", where));
      ASSIGN_OR_RETURN(std::string continuation,
                       NonEmptyString(*continuation_json, "\"continuation\"", where));
      ASSIGN_OR_RETURN(item.gold, GoldIndex(object, options.size(), where));
      for (const std::string& option : options) {
        item.contexts.push_back(option + joint.context_tail);
        item.continuations.push_back(joint.continuation_head + continuation);
      }
      return item;
    }
    case McFormat::kLanguageModeling: {
      ASSIGN_OR_RETURN(const nlohmann::json* context_json, Field(object, "context", where));
      ASSIGN_OR_RETURN(std::string context, NonEmptyString(*context_json, "\"context\"", where));
      ASSIGN_OR_RETURN(const nlohmann::json* continuation_json,
                       Field(object, "continuation", where));
      ASSIGN_OR_RETURN(std::string continuation,
                       NonEmptyString(*continuation_json, "\"continuation\"", where));
      item.contexts.push_back(context + joint.context_tail);
      item.continuations.push_back(joint.continuation_head + continuation);
      item.gold = 0;
      return item;
    }
    case McFormat::kHellaswag:
      break;
  }
  return absl::InternalError("not a jsonl format");
}

absl::StatusOr<std::vector<McItem>> ParseJsonLines(absl::string_view text, absl::string_view source,
                                                   const McTask& task) {
  std::vector<McItem> items;
  int64_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::string where = Where(source, line_number);
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line.begin(), line.end());
    } catch (const nlohmann::json::exception& e) {
      const std::string message = e.what();
      return absl::InvalidArgumentError(
          absl::StrCat(where, "not valid JSON (", message.substr(0, message.find('\n')), ")"));
    }
    if (!object.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "not a JSON object"));
    }
    ASSIGN_OR_RETURN(McItem item, ParseJsonItem(object, task, where));
    item.line = line_number;
    items.push_back(std::move(item));
  }
  return items;
}

// llama.cpp's --hellaswag file: context, gold index (0-3), then 4 endings, 6 lines an item.
absl::StatusOr<std::vector<McItem>> ParseHellaswag(absl::string_view text, absl::string_view source,
                                                   const McTask& task) {
  constexpr int kEndings = 4;
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();  // the final newline
  const Joint joint = SplitDelimiter(task.delimiter);
  std::vector<McItem> items;
  for (size_t first = 0; first < lines.size(); first += 2 + kEndings) {
    const int64_t line_number = static_cast<int64_t>(first) + 1;
    if (first + 2 + kEndings > lines.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(source, line_number), "truncated item: ", lines.size() - first,
                       " lines, need 6 (context, gold index, 4 endings)"));
    }
    McItem item;
    item.line = line_number;
    const std::string context(absl::StripAsciiWhitespace(lines[first]));
    if (context.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(Where(source, line_number), "empty context"));
    }
    int gold;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(lines[first + 1]), &gold) || gold < 0 ||
        gold >= kEndings) {
      return absl::InvalidArgumentError(absl::StrCat(Where(source, line_number + 1),
                                                     "gold index must be 0..3, got \"",
                                                     lines[first + 1], "\""));
    }
    item.gold = gold;
    for (int e = 0; e < kEndings; ++e) {
      const std::string ending(absl::StripAsciiWhitespace(lines[first + 2 + e]));
      if (ending.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(source, line_number + 2 + e), "empty ending"));
      }
      item.contexts.push_back(context + joint.context_tail);
      item.continuations.push_back(joint.continuation_head + ending);
    }
    items.push_back(std::move(item));
  }
  return items;
}

}  // namespace

absl::StatusOr<McTask> FindMcTask(absl::string_view name) {
  std::string canonical(name);
  if (canonical == "obqa") canonical = "openbookqa";
  if (canonical == "csqa") canonical = "commonsense_qa";
  for (const McTask& task : Tasks()) {
    if (task.name == canonical) return task;
  }
  return absl::NotFoundError(
      absl::StrCat("unknown task \"", name, "\"; known: ", absl::StrJoin(McTaskNames(), ", ")));
}

std::vector<std::string> McTaskNames() {
  std::vector<std::string> names;
  for (const McTask& task : Tasks()) names.push_back(task.name);
  return names;
}

std::string McItem::DemonstrationText() const { return contexts[gold] + continuations[gold]; }

absl::StatusOr<std::vector<McItem>> ParseMcText(absl::string_view text, absl::string_view source,
                                                const McTask& task) {
  if (task.format == McFormat::kHellaswag) return ParseHellaswag(text, source, task);
  return ParseJsonLines(text, source, task);
}

absl::StatusOr<std::vector<McItem>> LoadMcFile(const std::string& path, const McTask& task) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  return ParseMcText(text, path, task);
}

int64_t NormalizationLength(absl::string_view text) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  int64_t n = 0;
  for (unsigned char c : stripped) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

}  // namespace anchorserve::eval
