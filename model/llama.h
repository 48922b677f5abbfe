// A Llama-architecture causal LM (HF LlamaForCausalLM semantics) on libtorch, behind a
// torch-free interface so that server/ and client/ never see torch headers (BUILD.md rule 1).
#ifndef ANCHORSERVE_MODEL_LLAMA_H_
#define ANCHORSERVE_MODEL_LLAMA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/model_config.h"

namespace anchorserve::model {

enum class Device { kCpu, kCuda };
enum class Precision { kFloat32, kBFloat16 };

absl::StatusOr<Device> ParseDevice(absl::string_view name);        // "cpu" | "cuda"
absl::StatusOr<Precision> ParsePrecision(absl::string_view name);  // "float32" | "bfloat16"
absl::string_view DeviceName(Device device);
absl::string_view PrecisionName(Precision precision);

// True when this build links a CUDA libtorch and a GPU is visible.
bool CudaAvailable();
// CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies); 0 on a CPU-only build
// or a machine without a GPU. Cheap; any thread.
int CudaDeviceCount();

struct LoadOptions {
  Device device = Device::kCpu;
  Precision precision = Precision::kFloat32;
  int num_threads = 0;  // CPU intra-op threads; 0 = libtorch's default
  // cuda: which visible device holds the weights (0 .. CudaDeviceCount() - 1); ignored on cpu.
  // Loading also makes it the calling thread's current CUDA device, so that what the caller
  // allocates next without naming a device (the KV pool, cache/block_pool.cc) lands beside
  // the weights; threads that only run ATen ops on the model's tensors need nothing more.
  int device_index = 0;
};

struct LlamaImpl;  // torch-side state, see model/llama_impl.h

// Weights and forward of one model. Immutable after creation: const methods may be called
// from several threads at once.
class LlamaModel {
 public:
  // Loads <dir>/config.json and the safetensors weights (single file or sharded index),
  // converting F32/F16/BF16 to `options.precision` on `options.device`.
  // Errors: InvalidArgument/NotFound/DataLoss naming the file and tensor for a bad config,
  // a missing or mis-shaped tensor or a corrupt file; FailedPrecondition for CUDA without a GPU.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::string& dir,
                                                          const LoadOptions& options);

  // Random weights N(0, init_std), norms 1, drawn on the device (benchmarks of large shapes;
  // tests use a larger init_std so that attention visibly matters).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> CreateRandom(const ModelConfig& config,
                                                                  uint64_t seed,
                                                                  const LoadOptions& options,
                                                                  double init_std = 0.02);
  ~LlamaModel();

  const ModelConfig& config() const { return config_; }
  const LoadOptions& options() const { return options_; }
  int64_t WeightBytes() const;

  // One forward over a whole sequence with an explicit attention mask: `allowed` is L x L
  // row-major (1 = key visible), positions[i] the RoPE position of token i. Returns L x V
  // logits (fp32, row-major). Rows whose keys are all blocked attend uniformly (HF's clamp).
  // Errors: InvalidArgument for mismatched sizes or ids outside the vocabulary.
  absl::StatusOr<std::vector<float>> ForwardFull(absl::Span<const int32_t> ids,
                                                 absl::Span<const int32_t> positions,
                                                 absl::Span<const uint8_t> allowed) const;

  // For the library's own torch-side users (AnchorSequence, cache/, scheduler/).
  const LlamaImpl& impl() const { return *impl_; }

 private:
  LlamaModel(ModelConfig config, LoadOptions options, std::unique_ptr<LlamaImpl> impl);

  ModelConfig config_;
  LoadOptions options_;
  std::unique_ptr<LlamaImpl> impl_;
};

// Measured device-to-device copy bandwidth in bytes/s (bytes read + written), the floor's
// denominator in benchmarks. CPU: a large memcpy-like tensor copy.
double MeasureCopyBandwidth(Device device, int64_t bytes);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_LLAMA_H_
