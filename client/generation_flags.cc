#include "client/generation_flags.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace anchorserve::client {

void AddGenerationFlags(FlagParser& parser, GenerationFlags* flags) {
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  parser.AddInt("max-tokens", &flags->max_tokens, 1, kInt32Max,
                absl::StrCat("tokens to generate per request (default ", flags->max_tokens, ")"));
  parser.AddOptionalDouble("temperature", &flags->temperature, 0, 100,
                           "sampling temperature; 0 = greedy (server default 1.0)");
  parser.AddOptionalInt("top-k", &flags->top_k, 0, kInt32Max, "top-k sampling; 0 = off");
  parser.AddOptionalDouble("top-p", &flags->top_p, 0, 1, "nucleus sampling; 1 = off");
  parser.AddOptionalDouble("min-p", &flags->min_p, 0, 1, "min-p sampling; 0 = off");
  parser.AddOptionalDouble("repetition-penalty", &flags->repetition_penalty, 0, 100,
                           "repetition penalty; 1 = off");
  parser.AddOptionalInt("seed", &flags->seed, 0, std::numeric_limits<int64_t>::max(),
                        "sampling seed (default: random per request)");
  parser.AddRepeatedString("stop", &flags->stop, "stop string (repeatable)");
  parser.AddString("mode", &flags->mode, "attention: anchor (server default) or full");
  parser.AddString("anchor-insertion", &flags->anchor_insertion,
                   "where <AC> goes: sentences (default), messages, none or client");
  parser.AddBool("include-anchors", &flags->include_anchor_tokens,
                 "show generated <AC> tokens in the text");
  parser.AddBool("ignore-eos", &flags->ignore_eos,
                 "keep generating past end-of-sequence: exactly --max-tokens per request");
}

absl::Status ApplyGenerationFlags(const GenerationFlags& flags,
                                  anchorserve::v1::GenerateRequest* request) {
  request->set_max_tokens(static_cast<int32_t>(flags.max_tokens));
  if (flags.temperature) request->set_temperature(static_cast<float>(*flags.temperature));
  if (flags.top_k) request->set_top_k(static_cast<int32_t>(*flags.top_k));
  if (flags.top_p) request->set_top_p(static_cast<float>(*flags.top_p));
  if (flags.min_p) request->set_min_p(static_cast<float>(*flags.min_p));
  if (flags.repetition_penalty) {
    request->set_repetition_penalty(static_cast<float>(*flags.repetition_penalty));
  }
  if (flags.seed) request->set_seed(static_cast<uint64_t>(*flags.seed));
  for (const std::string& stop : flags.stop) request->add_stop(stop);
  if (flags.ignore_eos) request->set_ignore_eos(true);

  if (flags.mode.empty()) {
    request->set_mode(anchorserve::v1::ATTENTION_MODE_UNSPECIFIED);
  } else if (flags.mode == "anchor") {
    request->set_mode(anchorserve::v1::ATTENTION_MODE_ANCHOR);
  } else if (flags.mode == "full") {
    request->set_mode(anchorserve::v1::ATTENTION_MODE_FULL);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--mode: expected anchor or full, got \"", flags.mode, "\""));
  }

  const std::string& ins = flags.anchor_insertion;
  if (ins.empty()) {
    request->set_anchor_insertion(anchorserve::v1::ANCHOR_INSERTION_UNSPECIFIED);
  } else if (ins == "sentences") {
    request->set_anchor_insertion(anchorserve::v1::ANCHOR_INSERTION_SENTENCES);
  } else if (ins == "messages") {
    request->set_anchor_insertion(anchorserve::v1::ANCHOR_INSERTION_MESSAGES);
  } else if (ins == "none") {
    request->set_anchor_insertion(anchorserve::v1::ANCHOR_INSERTION_NONE);
  } else if (ins == "client") {
    request->set_anchor_insertion(anchorserve::v1::ANCHOR_INSERTION_CLIENT);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--anchor-insertion: expected sentences, messages, none or client, got \"", ins, "\""));
  }
  request->set_include_anchor_tokens(flags.include_anchor_tokens);
  return absl::OkStatus();
}

}  // namespace anchorserve::client
