#include "scheduler/policy.h"

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace anchorserve::scheduler {
namespace {

bool IsRunning(const RequestView& r) {
  return r.state == RequestState::kPrefilling || r.state == RequestState::kDecoding;
}

// Higher priority first, then earlier arrival, then lower id: a total order, so the plan does
// not depend on the order of the input.
bool RanksBefore(const RequestView* a, const RequestView* b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  if (a->arrival != b->arrival) return a->arrival < b->arrival;
  return a->id < b->id;
}

// Queue order for resumes and admissions: by priority; within a priority, preempted requests
// (already started, holding host state) before waiting ones; then by arrival. A lower-priority
// preempted request never jumps ahead of a higher-priority waiting one.
bool QueuesBefore(const RequestView* a, const RequestView* b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  const bool a_preempted = a->state == RequestState::kPreempted;
  const bool b_preempted = b->state == RequestState::kPreempted;
  if (a_preempted != b_preempted) return a_preempted;
  return RanksBefore(a, b);
}

// True when the request cannot make its next step even with the whole pool to itself.
bool NeverFits(const RequestView& r, int64_t total_blocks) {
  return r.blocks_held + r.swapped_blocks + r.next_token_blocks > total_blocks ||
         r.min_total_blocks > total_blocks;
}

// The largest chunk in [0, max_tokens] whose blocks fit in `room`. BlocksForStep is
// non-decreasing in the token count, so a binary search finds it.
int64_t LargestChunk(const RequestView& r, int64_t max_tokens, int64_t room, int64_t block_tokens) {
  if (max_tokens <= 0 || room < 0) return 0;
  int64_t lo = 0;
  int64_t hi = max_tokens;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (BlocksForStep(r, mid, block_tokens) <= room) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

absl::Status CheckRequests(absl::Span<const RequestView> requests, int64_t free_blocks,
                           int64_t total_blocks) {
  if (free_blocks < 0 || free_blocks > total_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("free_blocks ", free_blocks, " outside [0, total_blocks ", total_blocks, "]"));
  }
  std::vector<uint64_t> ids;
  ids.reserve(requests.size());
  for (const RequestView& r : requests) {
    ids.push_back(r.id);
    const auto bad = [&r](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("request ", r.id, ": ", what));
    };
    if (r.prompt_tokens_left < 0 || r.blocks_held < 0 || r.swapped_blocks < 0 ||
        r.min_total_blocks < 0) {
      return bad("negative token or block count");
    }
    if (r.next_token_blocks < 0 || r.next_token_blocks > 1) {
      return bad(absl::StrCat("next_token_blocks ", r.next_token_blocks, " not 0 or 1"));
    }
    if (r.state == RequestState::kPrefilling && r.prompt_tokens_left == 0) {
      return bad("prefilling with no prompt tokens left");
    }
    if (r.state == RequestState::kDecoding && r.prompt_tokens_left != 0) {
      return bad("decoding with prompt tokens left");
    }
    if (IsRunning(r) && r.swapped_blocks != 0) return bad("running with swapped blocks");
  }
  std::sort(ids.begin(), ids.end());
  const auto dup = std::adjacent_find(ids.begin(), ids.end());
  if (dup != ids.end()) return absl::InvalidArgumentError(absl::StrCat("duplicate id ", *dup));
  return absl::OkStatus();
}

}  // namespace

int64_t BlocksForTokens(int64_t tokens, int64_t block_tokens) {
  if (tokens <= 0) return 0;
  return (tokens + block_tokens - 1) / block_tokens + std::min<int64_t>(tokens, 3) - 1;
}

int64_t BlocksForStep(const RequestView& request, int64_t tokens, int64_t block_tokens) {
  if (tokens == 1) return request.next_token_blocks;
  return BlocksForTokens(tokens, block_tokens);
}

int64_t StepPlan::ScheduledTokens() const {
  int64_t tokens = static_cast<int64_t>(decodes.size());
  for (const PrefillChunk& c : prefills) tokens += c.tokens;
  return tokens;
}

bool StepPlan::Empty() const {
  return decodes.empty() && prefills.empty() && preempt.empty() && resume.empty() &&
         unschedulable.empty();
}

absl::StatusOr<SchedulingPolicy> SchedulingPolicy::Create(const PolicyOptions& o) {
  const auto bad = [](absl::string_view field, int64_t value, absl::string_view rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler option ", field, " = ", value, ": must be ", rule));
  };
  if (o.block_tokens < 1) return bad("block_tokens", o.block_tokens, ">= 1");
  if (o.total_blocks < 1) return bad("total_blocks", o.total_blocks, ">= 1");
  if (o.max_batched_tokens < 1) return bad("max_batched_tokens", o.max_batched_tokens, ">= 1");
  if (o.max_running < 1 || o.max_running > o.max_batched_tokens) {
    return bad("max_running", o.max_running,
               absl::StrCat("in [1, max_batched_tokens ", o.max_batched_tokens,
                            "] (every running decode needs a token each step)"));
  }
  if (o.max_prefill_chunk < 1) return bad("max_prefill_chunk", o.max_prefill_chunk, ">= 1");
  if (o.max_prefill_tokens_while_decoding < 1 ||
      o.max_prefill_tokens_while_decoding > o.max_batched_tokens) {
    return bad("max_prefill_tokens_while_decoding", o.max_prefill_tokens_while_decoding,
               absl::StrCat("in [1, max_batched_tokens ", o.max_batched_tokens, "]"));
  }
  if (o.watermark_blocks < 0 || o.watermark_blocks >= o.total_blocks) {
    return bad("watermark_blocks", o.watermark_blocks,
               absl::StrCat("in [0, total_blocks ", o.total_blocks, ")"));
  }
  return SchedulingPolicy(o);
}

absl::StatusOr<StepPlan> SchedulingPolicy::Plan(absl::Span<const RequestView> requests,
                                                int64_t free_blocks) const {
  RETURN_IF_ERROR(CheckRequests(requests, free_blocks, options_.total_blocks));
  const int64_t bt = options_.block_tokens;
  StepPlan plan;

  std::vector<const RequestView*> running;  // by rank
  std::vector<const RequestView*> queued;   // preempted + waiting, in queue order
  for (const RequestView& r : requests) {
    if (NeverFits(r, options_.total_blocks)) {
      plan.unschedulable.push_back(r.id);
    } else if (IsRunning(r)) {
      running.push_back(&r);
    } else {
      queued.push_back(&r);
    }
  }
  std::sort(plan.unschedulable.begin(), plan.unschedulable.end());
  std::sort(running.begin(), running.end(), RanksBefore);
  std::sort(queued.begin(), queued.end(), QueuesBefore);

  // Blocks this step may allocate: the free ones plus those of the requests it swaps out.
  int64_t avail = free_blocks;
  const auto preempt_lowest = [&] {
    const RequestView* victim = running.back();
    running.pop_back();
    plan.preempt.push_back(victim->id);
    avail += victim->blocks_held;
  };

  // 1. Decodes. The top-ranked request is never preempted: it would need even more blocks to
  // come back, and it can only miss its block when blocks are held outside this view.
  int64_t decode_blocks = 0;
  for (const RequestView* r : running) {
    if (r->state == RequestState::kDecoding) decode_blocks += r->next_token_blocks;
  }
  while (decode_blocks > avail && running.size() > 1) {
    if (running.back()->state == RequestState::kDecoding) {
      decode_blocks -= running.back()->next_token_blocks;
    }
    preempt_lowest();
  }
  int64_t used = 0;
  int64_t tokens_left = options_.max_batched_tokens;
  for (const RequestView* r : running) {
    if (r->state != RequestState::kDecoding || r->next_token_blocks > avail - used) continue;
    plan.decodes.push_back(r->id);
    used += r->next_token_blocks;
    --tokens_left;
  }
  int64_t prefill_tokens_left =
      plan.decodes.empty() ? tokens_left
                           : std::min(tokens_left, options_.max_prefill_tokens_while_decoding);

  // Blocks a new allocation may take: the watermark stays free unless this is the first work
  // of the step.
  const auto room = [&] {
    const bool has_work = !plan.decodes.empty() || !plan.prefills.empty();
    return avail - used - (has_work ? options_.watermark_blocks : 0);
  };
  const auto max_chunk = [&](const RequestView& r) {
    return std::min(
        {r.prompt_tokens_left, options_.max_prefill_chunk, tokens_left, prefill_tokens_left});
  };
  const auto add_chunk = [&](const RequestView& r, int64_t n) {
    plan.prefills.push_back({r.id, n});
    used += r.swapped_blocks + BlocksForStep(r, n, bt);
    tokens_left -= n;
    prefill_tokens_left -= n;
  };

  // 2. Continuing prefills, by rank. With no decodes and no block for even one prompt token,
  // the prefills would stall forever: preempt from the bottom until the top one can move.
  for (;;) {
    for (const RequestView* r : running) {
      if (r->state != RequestState::kPrefilling) continue;
      const int64_t n = LargestChunk(*r, max_chunk(*r), room(), bt);
      if (n > 0) add_chunk(*r, n);
    }
    if (!plan.decodes.empty() || !plan.prefills.empty() || running.size() <= 1) break;
    preempt_lowest();
  }

  // 3. Resumes and admissions, in queue order, head of line: the first request that does not
  // fit stops the queue, so a large request is not overtaken forever by small ones. Skipped in
  // a step that preempts, which would otherwise swap requests in and out in the same step.
  if (!plan.preempt.empty()) return plan;
  int64_t running_count = static_cast<int64_t>(running.size());
  for (const RequestView* r : queued) {
    if (running_count >= options_.max_running) break;
    const int64_t r_room = room() - r->swapped_blocks;
    if (r->prompt_tokens_left == 0) {
      if (tokens_left < 1 || r_room < r->next_token_blocks) break;
      plan.decodes.push_back(r->id);
      used += r->swapped_blocks + r->next_token_blocks;
      --tokens_left;
    } else {
      const int64_t n = LargestChunk(*r, max_chunk(*r), r_room, bt);
      if (n == 0) break;
      add_chunk(*r, n);
    }
    if (r->state == RequestState::kPreempted) plan.resume.push_back(r->id);
    ++running_count;
  }
  return plan;
}

}  // namespace anchorserve::scheduler
