// The generation flags chat, generate and bench share (--max-tokens, sampling, --stop, --mode,
// --anchor-insertion) and how they fill a GenerateRequest. Unset sampling flags stay unset in
// the request, so the server's documented defaults apply.
#ifndef ANCHORSERVE_CLIENT_GENERATION_FLAGS_H_
#define ANCHORSERVE_CLIENT_GENERATION_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "client/flag_parser.h"

namespace anchorserve::client {

struct GenerationFlags {
  int64_t max_tokens = 128;
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  std::string mode;              // "", "anchor" or "full"
  std::string anchor_insertion;  // "", "sentences", "messages", "none" or "client"
  bool include_anchor_tokens = false;
  bool ignore_eos = false;       // generate exactly max_tokens (benchmarks)
};

// Declares the flags on `parser`; `flags->max_tokens` keeps its current value as the default.
void AddGenerationFlags(FlagParser& parser, GenerationFlags* flags);

// Copies the flags into `request` (session and prompt untouched). InvalidArgument naming the
// flag when --mode or --anchor-insertion is not one of its words.
absl::Status ApplyGenerationFlags(const GenerationFlags& flags,
                                  anchorserve::v1::GenerateRequest* request);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_GENERATION_FLAGS_H_
