// Multiple-choice and cloze task files (shared/data/qa/, llm-foundry's jsonl layouts and
// llama.cpp's HellaSwag text layout) turned into (context, continuation) pairs per choice, the
// shape lm-eval-harness scores. Pure and torch-free; formats and prompts in docs/EVALUATION.md.
#ifndef ANCHORSERVE_EVAL_MC_DATA_H_
#define ANCHORSERVE_EVAL_MC_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::eval {

enum class McFormat {
  kQueryChoices,      // {"query": str, "choices": [str, ...], "gold": int}
  kSchema,            // {"context_options": [str, ...], "continuation": str, "gold": int}
  kLanguageModeling,  // {"context": str, "continuation": str}: one choice, greedy match
  kHellaswag,         // 6 lines per item: context, gold index, 4 endings
};

struct McTask {
  std::string name;
  McFormat format = McFormat::kQueryChoices;
  // Joins the query and the answer, as llm-foundry's continuation_delimiter ("\nAnswer: " for
  // ARC, PIQA and BoolQ, " " for the rest).
  std::string delimiter = " ";
};

// The known tasks: arc_easy, arc_challenge, piqa, boolq, openbookqa (obqa), commonsense_qa
// (csqa), siqa, copa, winogrande, lambada, hellaswag. NotFound listing them for anything else.
absl::StatusOr<McTask> FindMcTask(absl::string_view name);
std::vector<std::string> McTaskNames();

// One item: choice c is the text pair (contexts[c], continuations[c]); its score is the
// log-likelihood of the continuation given the context. The delimiter's trailing whitespace
// is moved from the context to the front of the continuation (lm-eval's rule), so a context
// never ends in whitespace: "Question: Q?\nAnswer:" + " blue".
struct McItem {
  std::vector<std::string> contexts;       // one per choice (query tasks: all equal)
  std::vector<std::string> continuations;  // one per choice (schema tasks: all equal)
  int gold = 0;
  int64_t line = 0;  // 1-based line of the source where the item starts

  size_t num_choices() const { return contexts.size(); }
  // The solved item as a few-shot demonstration: contexts[gold] + continuations[gold].
  std::string DemonstrationText() const;
};

// Parses a task file's text. Blank lines between jsonl records are skipped. Errors:
// InvalidArgument "<source>:<line>: <what>" for a line that is not JSON, a missing or mistyped
// field, fewer than two choices (one for kLanguageModeling), an empty query/choice/continuation
// or a gold index out of range; for kHellaswag also a truncated last item.
absl::StatusOr<std::vector<McItem>> ParseMcText(absl::string_view text, absl::string_view source,
                                                const McTask& task);

// Reads `path` and parses it (errors name the path). NotFound when the file cannot be opened.
absl::StatusOr<std::vector<McItem>> LoadMcFile(const std::string& path, const McTask& task);

// Number of Unicode code points (UTF-8 lead bytes) of `text` after stripping ASCII whitespace:
// the length acc_norm divides by (lm-eval divides by len(choice) in characters).
int64_t NormalizationLength(absl::string_view text);

}  // namespace anchorserve::eval

#endif  // ANCHORSERVE_EVAL_MC_DATA_H_
