// Conversion of the released AnLLM checkpoints (torch.save pickles) to safetensors.
#ifndef ANCHORSERVE_MODEL_CHECKPOINT_CONVERT_H_
#define ANCHORSERVE_MODEL_CHECKPOINT_CONVERT_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace anchorserve::model {

// Reads <from_dir>/pytorch_model.bin (or the shards named by pytorch_model.bin.index.json),
// written by torch.save as a zip archive, and writes an HF safetensors model directory to
// `to_dir`: sharded model-*.safetensors (dtypes kept: F32/F16/BF16), plus copies of
// config.json, tokenizer.model, added_tokens.json, special_tokens_map.json,
// tokenizer_config.json and generation_config.json when present. Loads one .bin file at a
// time into memory. Errors name the file (and tensor) that failed.
absl::Status ConvertTorchCheckpoint(const std::string& from_dir, const std::string& to_dir,
                                    size_t max_shard_bytes);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_CHECKPOINT_CONVERT_H_
