// The scheduling policy: one pure, deterministic function from the active requests and the KV
// budget to what the next engine step runs (TensorRT-LLM's capacity scheduler is the model:
// a small class that takes the requests and the budget and returns what runs and what pauses).
// No torch, no clocks, no engine state: the engine builds a `RequestView` per request after it
// has expired deadlines and dropped cancelled requests, calls `Plan`, and executes the plan.
//
// Per step, in this order (docs/KV_CACHE.md for what the blocks hold):
//  1. Every running decode gets its token; decodes are never held back by prompts. When their
//     new blocks exceed the free blocks, running requests are preempted (swapped out) from the
//     lowest rank up (lowest priority, then latest arrival) until the decodes fit; the
//     top-ranked request is never preempted.
//  2. Running prefills continue in chunks, by rank, within the token budget and the blocks
//     above the watermark. If nothing can run at all (no decodes, no block even for one
//     prompt token), running requests are preempted from the bottom until the top one can.
//  3. Preempted requests resume and waiting requests are admitted, in queue order, while
//     blocks above the watermark, tokens and running slots remain; the first that does not
//     fit stops the queue. Skipped in a step that preempts.
// Fairness: a prompt takes at most max_prefill_chunk tokens per step, and all prompts together
// at most max_prefill_tokens_while_decoding while decodes run, so the time of a decode step
// (the ITL) is bounded whatever the prompts, and several prompts progress side by side.
// A request that cannot fit even with the whole pool to itself is reported `unschedulable`
// (the engine fails it with RESOURCE_EXHAUSTED) instead of being retried forever.
#ifndef ANCHORSERVE_SCHEDULER_POLICY_H_
#define ANCHORSERVE_SCHEDULER_POLICY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace anchorserve::scheduler {

enum class RequestState {
  kWaiting,     // queued, never run; holds no blocks for this turn
  kPrefilling,  // running, prompt tokens left
  kDecoding,    // running, prompt done; one token per step
  kPreempted,   // its KV state is on the host; must be swapped in before it runs again
};

// What the policy sees of one request. Plain data, built by the engine each step.
struct RequestView {
  uint64_t id = 0;
  int32_t priority = 0;  // higher runs first
  uint64_t arrival = 0;  // submission order, lower is earlier; ties break on the lower id
  RequestState state = RequestState::kWaiting;
  // Prompt tokens not yet prefilled: > 0 when prefilling, 0 when decoding. A waiting or
  // preempted request with 0 left comes back as a decode.
  int64_t prompt_tokens_left = 0;
  // Device blocks the request holds now (running requests; a waiting session turn whose
  // history is on the device may hold some too).
  int64_t blocks_held = 0;
  // Blocks to allocate and fill from host memory before the request can run: a preempted
  // request's swapped state, or a waiting turn's offloaded session. 0 for running requests.
  int64_t swapped_blocks = 0;
  // New blocks the next single token needs (its pending decode token, or the next prompt
  // token): 1 when the region that token goes to (anchor slots, kept-full, sentence) has no
  // free slot in its last block, else 0. Leave 1 when unknown: that is safe, at worst a request
  // holding the whole pool with a slot to spare is reported unschedulable.
  int64_t next_token_blocks = 1;
  // The fewest blocks the request must hold at once before it finishes, when the engine knows
  // it up front (a `full`-mode prompt or long kept-full spans never shrink); 0 when unknown.
  // Above the pool, the request is unschedulable at once instead of after filling the pool.
  int64_t min_total_blocks = 0;
};

// Fixed limits of one engine. Every knob with its default; `SchedulingPolicy::Create` checks
// them.
struct PolicyOptions {
  int64_t block_tokens = 16;          // token slots per KV block (cache/block_pool.h)
  int64_t total_blocks = 0;           // blocks in the pool; required, >= 1
  int64_t max_batched_tokens = 2048;  // tokens per step: decodes + prefill chunks
  int32_t max_running = 64;           // running (prefilling + decoding) requests; <= the above
  int64_t max_prefill_chunk = 512;    // prompt tokens of one request per step
  // Fairness: in a step that carries decodes of already running requests, all prefill chunks
  // together take at most this many tokens, so a long prompt cannot stretch every decode step
  // to a full budget; with no decodes running, prefills may use the whole budget.
  // In [1, max_batched_tokens].
  int64_t max_prefill_tokens_while_decoding = 1024;
  // Blocks kept free for the growth of running decodes: prefill chunks, resumes and admissions
  // leave this many free, unless they are the first work of an otherwise empty step (with
  // nothing running there is nothing to protect, and the head of the queue must be able to
  // start). Decodes may use them. In [0, total_blocks); max_running is a sensible value.
  int64_t watermark_blocks = 0;
};

struct PrefillChunk {
  uint64_t id = 0;
  int64_t tokens = 0;  // >= 1, <= the request's prompt_tokens_left
  bool operator==(const PrefillChunk&) const = default;
};

// What one step runs. Every id appears at most once among decodes + prefills, at most once
// among preempt, resume and unschedulable; preempted and unschedulable requests are not
// scheduled. The engine executes it as: fail `unschedulable`, swap out `preempt` (their blocks
// return to the pool), swap in `resume`, then one forward over `decodes` and `prefills`.
struct StepPlan {
  std::vector<uint64_t> decodes;        // one token each; running decodes first, by rank
  std::vector<PrefillChunk> prefills;   // a waiting request listed here is admitted
  std::vector<uint64_t> preempt;        // lowest rank first
  std::vector<uint64_t> resume;         // each also listed in decodes or prefills
  std::vector<uint64_t> unschedulable;  // ascending id; fail with RESOURCE_EXHAUSTED

  int64_t ScheduledTokens() const;  // decodes + prefill tokens, <= max_batched_tokens
  bool Empty() const;
  bool operator==(const StepPlan&) const = default;
};

// An upper bound on the new blocks any sequence needs to store `tokens` more tokens, whatever
// its current fill and however the tokens split among its three regions (each may open a
// block): ceil(tokens / block_tokens) + min(tokens, 3) - 1, and 0 for 0 tokens. Blocks freed
// by REDUCTION within the step are not counted: the cache allocates before it frees.
int64_t BlocksForTokens(int64_t tokens, int64_t block_tokens);

// The blocks the policy reserves for `request` to process `tokens` tokens in one step (its
// swapped blocks not included): `next_token_blocks` for one token, else BlocksForTokens.
int64_t BlocksForStep(const RequestView& request, int64_t tokens, int64_t block_tokens);

// Immutable and stateless beyond its options: safe to call from any thread; the engine thread
// is the only caller in practice.
class SchedulingPolicy {
 public:
  // InvalidArgument naming the field when an option is out of range.
  static absl::StatusOr<SchedulingPolicy> Create(const PolicyOptions& options);

  // Plans one step over `requests` (read only; any order, the plan does not depend on it) with
  // `free_blocks` of the pool free now. Deterministic: equal inputs give equal plans.
  // Guarantees: ScheduledTokens() <= max_batched_tokens; the blocks reserved (BlocksForStep of
  // every scheduled request plus the swapped blocks of resumed ones) never exceed
  // free_blocks + the blocks held by preempted requests; never preempts a request ranked above
  // one it schedules. With every block visible to the policy (held by the listed requests or
  // free), a plan for a non-empty set of requests always schedules or fails something; if
  // blocks are held elsewhere (idle sessions), the top-ranked request may have to sit out a
  // step, and the engine should offload idle sessions.
  // Errors: InvalidArgument for duplicate ids, negative counts, a state that contradicts
  // prompt_tokens_left, or free_blocks outside [0, total_blocks].
  absl::StatusOr<StepPlan> Plan(absl::Span<const RequestView> requests, int64_t free_blocks) const;

  const PolicyOptions& options() const { return options_; }

 private:
  explicit SchedulingPolicy(const PolicyOptions& options) : options_(options) {}

  PolicyOptions options_;
};

}  // namespace anchorserve::scheduler

#endif  // ANCHORSERVE_SCHEDULER_POLICY_H_
