// The scheduling policy stepped against a fake model, in the manner of TensorRT-LLM's capacity
// scheduler tests: each scenario lists requests (with the iteration they arrive at) and, per
// range of iterations, the expected decode / prefill / preempt / resume / unschedulable sets.
// The fake model stores tokens the way cache/paged_sequence does and checks every plan against
// the blocks really free; a property test runs random workloads through the same loop.
#include "scheduler/policy.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace anchorserve::scheduler {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool IsRunning(RequestState s) {
  return s == RequestState::kPrefilling || s == RequestState::kDecoding;
}

// Same order as the policy's rank: higher priority, then earlier arrival, then lower id.
bool RanksBefore(const RequestView& a, const RequestView& b) {
  if (a.priority != b.priority) return a.priority > b.priority;
  if (a.arrival != b.arrival) return a.arrival < b.arrival;
  return a.id < b.id;
}

// One request of a scenario.
struct FakeRequest {
  uint64_t id = 0;
  int32_t priority = 0;
  int64_t prompt = 1;
  int64_t max_tokens = 1;
  // Every sentence_len-th token (1-based position) is an anchor that closes its sentence;
  // 0 is `full` mode: every token is kept-full and nothing is ever freed before the end.
  int64_t sentence_len = 0;
  int arrive_at = 0;                // iteration
  bool declare_min_blocks = false;  // full mode: tell the policy the footprint up front
};

// Executes plans like the engine would, over a pool of `total_blocks`. Tokens go where
// cache/paged_sequence puts them: anchors into anchor slots, the rest into the sentence
// region, which an anchor frees (REDUCTION); in full mode everything is kept-full. A step
// allocates every block it writes before it frees any. Prefill does not emit a token; each
// decode emits one, and a request finishes after max_tokens of them.
class FakeModel {
 public:
  explicit FakeModel(const PolicyOptions& options) : options_(options) {}

  void Arrive(const FakeRequest& spec) {
    Seq seq;
    seq.spec = spec;
    seq.arrival = next_arrival_++;
    seqs_.emplace(spec.id, seq);
  }

  std::vector<RequestView> Views() const {
    std::vector<RequestView> views;
    for (const auto& [id, s] : seqs_) {
      if (s.finished || s.failed) continue;
      RequestView v;
      v.id = id;
      v.priority = s.spec.priority;
      v.arrival = s.arrival;
      v.state = s.state;
      v.prompt_tokens_left = s.spec.prompt - s.prefilled;
      v.blocks_held = IsRunning(s.state) ? Blocks(s) : 0;
      v.swapped_blocks = s.state == RequestState::kPreempted ? Blocks(s) : 0;
      v.next_token_blocks = BlocksToWrite(s, 1);
      if (s.spec.declare_min_blocks && s.spec.sentence_len == 0) {
        v.min_total_blocks = CeilDiv(s.spec.prompt + s.spec.max_tokens, options_.block_tokens);
      }
      views.push_back(v);
    }
    return views;
  }

  int64_t free_blocks() const {
    int64_t used = 0;
    for (const auto& [id, s] : seqs_) {
      if (!s.finished && !s.failed && IsRunning(s.state)) used += Blocks(s);
    }
    return options_.total_blocks - used;
  }

  // True when every request that arrived has finished or failed.
  bool Idle() const {
    for (const auto& [id, s] : seqs_) {
      if (!s.finished && !s.failed) return false;
    }
    return true;
  }

  std::set<uint64_t> Failed() const {
    std::set<uint64_t> out;
    for (const auto& [id, s] : seqs_) {
      if (s.failed) out.insert(id);
    }
    return out;
  }

  // Applies `plan`; an error names the first thing the engine could not have done.
  absl::Status Execute(const StepPlan& plan) {
    std::set<uint64_t> scheduled;
    for (uint64_t id : plan.decodes) {
      if (!scheduled.insert(id).second) return Bad(id, "scheduled twice");
    }
    for (const PrefillChunk& c : plan.prefills) {
      if (!scheduled.insert(c.id).second) return Bad(c.id, "scheduled twice");
    }
    std::set<uint64_t> listed;
    for (const auto* list : {&plan.preempt, &plan.resume, &plan.unschedulable}) {
      for (uint64_t id : *list) {
        if (!listed.insert(id).second) return Bad(id, "listed twice among preempt/resume/fail");
      }
    }
    for (uint64_t id : plan.preempt) {
      if (scheduled.count(id)) return Bad(id, "both preempted and scheduled");
    }
    for (uint64_t id : plan.unschedulable) {
      if (scheduled.count(id)) return Bad(id, "both unschedulable and scheduled");
    }
    for (uint64_t id : plan.resume) {
      if (!scheduled.count(id)) return Bad(id, "resumed but not scheduled");
    }
    if (plan.ScheduledTokens() > options_.max_batched_tokens) {
      return absl::InternalError(absl::StrCat("step of ", plan.ScheduledTokens(), " tokens"));
    }

    // Swap out, swap in, then allocate everything the forward writes.
    int64_t avail = free_blocks();
    for (uint64_t id : plan.preempt) {
      Seq* s = Find(id);
      if (s == nullptr || !IsRunning(s->state)) return Bad(id, "preempted while not running");
      avail += Blocks(*s);
      s->state = RequestState::kPreempted;
    }
    int64_t allocated = 0;
    for (uint64_t id : plan.resume) {
      Seq* s = Find(id);
      if (s == nullptr || s->state != RequestState::kPreempted) return Bad(id, "not preempted");
      allocated += Blocks(*s);
      s->state =
          s->prefilled < s->spec.prompt ? RequestState::kPrefilling : RequestState::kDecoding;
    }
    for (uint64_t id : plan.decodes) {
      Seq* s = Find(id);
      if (s == nullptr || s->state != RequestState::kDecoding) return Bad(id, "not decoding");
      allocated += BlocksToWrite(*s, 1);
    }
    for (const PrefillChunk& c : plan.prefills) {
      Seq* s = Find(c.id);
      if (s == nullptr ||
          (s->state != RequestState::kWaiting && s->state != RequestState::kPrefilling)) {
        return Bad(c.id, "prefill chunk for a request not waiting or prefilling");
      }
      if (c.tokens < 1 || c.tokens > s->spec.prompt - s->prefilled) {
        return Bad(c.id, absl::StrCat("chunk of ", c.tokens, " tokens"));
      }
      allocated += BlocksToWrite(*s, c.tokens);
    }
    if (allocated > avail) {
      return absl::InternalError(
          absl::StrCat("step allocates ", allocated, " blocks, ", avail, " free"));
    }

    for (uint64_t id : plan.unschedulable) {
      Seq* s = Find(id);
      if (s == nullptr) return Bad(id, "unknown");
      s->failed = true;
    }
    for (uint64_t id : plan.decodes) {
      Seq& s = *Find(id);
      Write(s, 1);
      if (++s.generated == s.spec.max_tokens) s.finished = true;
    }
    for (const PrefillChunk& c : plan.prefills) {
      Seq& s = *Find(c.id);
      Write(s, c.tokens);
      s.prefilled += c.tokens;
      s.state = s.prefilled < s.spec.prompt ? RequestState::kPrefilling : RequestState::kDecoding;
    }
    return absl::OkStatus();
  }

 private:
  struct Seq {
    FakeRequest spec;
    uint64_t arrival = 0;
    RequestState state = RequestState::kWaiting;
    int64_t prefilled = 0;
    int64_t generated = 0;
    int64_t anchor_slots = 0;  // tokens per region
    int64_t kept = 0;
    int64_t sentence = 0;
    bool finished = false;
    bool failed = false;

    int64_t position() const { return prefilled + generated; }
    bool IsAnchor(int64_t pos) const {
      return spec.sentence_len > 0 && (pos + 1) % spec.sentence_len == 0;
    }
  };

  int64_t Blocks(const Seq& s) const {
    const int64_t bt = options_.block_tokens;
    return CeilDiv(s.anchor_slots, bt) + CeilDiv(s.kept, bt) + CeilDiv(s.sentence, bt);
  }

  // New blocks to write the next `n` tokens, nothing freed in between.
  int64_t BlocksToWrite(const Seq& s, int64_t n) const {
    const int64_t bt = options_.block_tokens;
    if (s.spec.sentence_len == 0) return CeilDiv(s.kept + n, bt) - CeilDiv(s.kept, bt);
    int64_t anchors = 0;
    for (int64_t p = s.position(); p < s.position() + n; ++p) anchors += s.IsAnchor(p) ? 1 : 0;
    return CeilDiv(s.anchor_slots + anchors, bt) - CeilDiv(s.anchor_slots, bt) +
           CeilDiv(s.sentence + n - anchors, bt) - CeilDiv(s.sentence, bt);
  }

  static void Write(Seq& s, int64_t n) {
    for (int64_t p = s.position(); p < s.position() + n; ++p) {
      if (s.spec.sentence_len == 0) {
        ++s.kept;
      } else if (s.IsAnchor(p)) {
        ++s.anchor_slots;
        s.sentence = 0;  // REDUCTION: the closed sentence's blocks go back to the pool
      } else {
        ++s.sentence;
      }
    }
  }

  Seq* Find(uint64_t id) {
    auto it = seqs_.find(id);
    if (it == seqs_.end() || it->second.finished || it->second.failed) return nullptr;
    return &it->second;
  }

  static absl::Status Bad(uint64_t id, const std::string& what) {
    return absl::InternalError(absl::StrCat("request ", id, ": ", what));
  }

  PolicyOptions options_;
  std::map<uint64_t, Seq> seqs_;
  uint64_t next_arrival_ = 0;
};

// What the policy promises for every plan, whatever the workload (policy.h). Empty when all
// hold, else the first broken promise.
std::string BrokenPromise(const PolicyOptions& options, const std::vector<RequestView>& views,
                          int64_t free_blocks, const StepPlan& plan) {
  std::map<uint64_t, const RequestView*> by_id;
  for (const RequestView& v : views) by_id[v.id] = &v;
  const std::set<uint64_t> decodes(plan.decodes.begin(), plan.decodes.end());
  const std::set<uint64_t> preempt(plan.preempt.begin(), plan.preempt.end());
  const std::set<uint64_t> resume(plan.resume.begin(), plan.resume.end());
  const std::set<uint64_t> failed(plan.unschedulable.begin(), plan.unschedulable.end());
  std::map<uint64_t, int64_t> step_tokens;
  for (uint64_t id : plan.decodes) step_tokens[id] = 1;
  int64_t prefill_tokens = 0;
  for (const PrefillChunk& c : plan.prefills) {
    step_tokens[c.id] = c.tokens;
    prefill_tokens += c.tokens;
    const RequestView& v = *by_id.at(c.id);
    if (c.tokens > std::min(v.prompt_tokens_left, options.max_prefill_chunk)) {
      return absl::StrCat("chunk of ", c.tokens, " for request ", c.id);
    }
  }

  if (plan.ScheduledTokens() > options.max_batched_tokens) return "over the token budget";
  int64_t reserved = 0;
  int64_t avail = free_blocks;
  for (uint64_t id : plan.preempt) avail += by_id.at(id)->blocks_held;
  for (const auto& [id, tokens] : step_tokens) {
    const RequestView& v = *by_id.at(id);
    reserved += v.swapped_blocks + BlocksForStep(v, tokens, options.block_tokens);
  }
  if (reserved > avail) return absl::StrCat("reserves ", reserved, " of ", avail, " blocks");

  bool ran_decodes = false;  // decodes of requests that were running before this step
  int64_t running_after = 0;
  for (const RequestView& v : views) {
    const bool scheduled = step_tokens.count(v.id) > 0;
    if (v.state == RequestState::kDecoding && !failed.count(v.id)) {
      if (decodes.count(v.id)) {
        ran_decodes = true;
      } else if (!preempt.count(v.id)) {
        return absl::StrCat("running decode ", v.id, " left out");
      }
    }
    if (preempt.count(v.id) && !IsRunning(v.state)) return "preempted a request not running";
    if (resume.count(v.id) != (scheduled && v.state == RequestState::kPreempted)) {
      return absl::StrCat("request ", v.id, " resumed without running or the reverse");
    }
    const bool never_fits =
        v.blocks_held + v.swapped_blocks + v.next_token_blocks > options.total_blocks ||
        v.min_total_blocks > options.total_blocks;
    if (never_fits != (failed.count(v.id) > 0)) {
      return absl::StrCat("request ", v.id,
                          never_fits ? " never fits, not reported" : " reported, fits");
    }
    if ((IsRunning(v.state) && !preempt.count(v.id) && !failed.count(v.id)) ||
        (!IsRunning(v.state) && scheduled)) {
      ++running_after;
    }
    for (uint64_t victim : plan.preempt) {
      if (scheduled && !RanksBefore(v, *by_id.at(victim))) {
        return absl::StrCat("preempted ", victim, " to run ", v.id, " ranked below it");
      }
    }
  }
  if (ran_decodes && prefill_tokens > options.max_prefill_tokens_while_decoding) {
    return absl::StrCat(prefill_tokens, " prefill tokens beside decodes");
  }
  const bool admitted = !resume.empty() || std::any_of(plan.prefills.begin(), plan.prefills.end(),
                                                       [&](const PrefillChunk& c) {
                                                         return !IsRunning(by_id.at(c.id)->state);
                                                       });
  if (admitted && running_after > options.max_running) return "over max_running";
  if (!views.empty() && plan.Empty()) return "empty plan while requests are active";
  return "";
}

// A plan as sets, for comparing with a table row.
struct StepSets {
  std::set<uint64_t> decodes = {};
  std::map<uint64_t, int64_t> prefills = {};  // id -> tokens
  std::set<uint64_t> preempt = {};
  std::set<uint64_t> resume = {};
  std::set<uint64_t> unschedulable = {};
  bool operator==(const StepSets&) const = default;
};

void PrintTo(const StepSets& s, std::ostream* os) {
  *os << "{decodes {" << absl::StrJoin(s.decodes, ",") << "} prefills {"
      << absl::StrJoin(s.prefills, ",", absl::PairFormatter(":")) << "} preempt {"
      << absl::StrJoin(s.preempt, ",") << "} resume {" << absl::StrJoin(s.resume, ",")
      << "} unschedulable {" << absl::StrJoin(s.unschedulable, ",") << "}}";
}

StepSets SetsOf(const StepPlan& plan) {
  StepSets s;
  s.decodes.insert(plan.decodes.begin(), plan.decodes.end());
  for (const PrefillChunk& c : plan.prefills) s.prefills[c.id] = c.tokens;
  s.preempt.insert(plan.preempt.begin(), plan.preempt.end());
  s.resume.insert(plan.resume.begin(), plan.resume.end());
  s.unschedulable.insert(plan.unschedulable.begin(), plan.unschedulable.end());
  return s;
}

// Expected sets for iterations [begin, end).
struct ExpectedSteps {
  int begin = 0;
  int end = 0;
  StepSets sets;
};

struct Scenario {
  PolicyOptions options;
  std::vector<FakeRequest> requests;
  std::vector<ExpectedSteps> table;  // must cover every iteration
  int iterations = 0;                // until every request finished or failed
};

struct RunResult {
  int iterations = 0;
  std::set<uint64_t> failed;
  int64_t preemptions = 0;
  int64_t resumes = 0;
};

// Steps policy and fake model until every request finished or failed. Every plan is checked
// against the policy's promises and executed by the fake model; with a table, against the
// expected sets of its iteration.
RunResult RunWorkload(const PolicyOptions& options, const std::vector<FakeRequest>& requests,
                      const std::vector<ExpectedSteps>* table, int max_iterations) {
  RunResult result;
  absl::StatusOr<SchedulingPolicy> policy = SchedulingPolicy::Create(options);
  EXPECT_TRUE(policy.ok()) << policy.status();
  if (!policy.ok()) return result;
  FakeModel model(options);
  int last_arrival = 0;
  for (const FakeRequest& r : requests) last_arrival = std::max(last_arrival, r.arrive_at);
  int it = 0;
  for (; it < max_iterations; ++it) {
    for (const FakeRequest& r : requests) {
      if (r.arrive_at == it) model.Arrive(r);
    }
    if (it > last_arrival && model.Idle()) break;
    const std::vector<RequestView> views = model.Views();
    const int64_t free_blocks = model.free_blocks();
    absl::StatusOr<StepPlan> plan = policy->Plan(views, free_blocks);
    EXPECT_TRUE(plan.ok()) << "iteration " << it << ": " << plan.status();
    if (!plan.ok()) return result;
    const std::string broken = BrokenPromise(options, views, free_blocks, *plan);
    EXPECT_EQ(broken, "") << "iteration " << it;
    if (table != nullptr) {
      auto row = std::find_if(table->begin(), table->end(),
                              [it](const ExpectedSteps& e) { return e.begin <= it && it < e.end; });
      if (row == table->end()) {
        ADD_FAILURE() << "iteration " << it << " not in the table; plan "
                      << ::testing::PrintToString(SetsOf(*plan));
      } else {
        EXPECT_EQ(SetsOf(*plan), row->sets) << "iteration " << it;
      }
    }
    result.preemptions += static_cast<int64_t>(plan->preempt.size());
    result.resumes += static_cast<int64_t>(plan->resume.size());
    const absl::Status executed = model.Execute(*plan);
    EXPECT_TRUE(executed.ok()) << "iteration " << it << ": " << executed;
    if (!broken.empty() || !executed.ok()) return result;
  }
  EXPECT_LT(it, max_iterations) << "requests still active after " << max_iterations << " steps";
  result.iterations = it;
  result.failed = model.Failed();
  return result;
}

void RunScenario(const Scenario& s) {
  const RunResult result = RunWorkload(s.options, s.requests, &s.table, 10 * s.iterations + 100);
  EXPECT_EQ(result.iterations, s.iterations);
}

// Roomy defaults; each scenario tightens the limit it is about.
PolicyOptions Roomy() {
  return {.block_tokens = 4,
          .total_blocks = 1000,
          .max_batched_tokens = 256,
          .max_running = 16,
          .max_prefill_chunk = 256,
          .max_prefill_tokens_while_decoding = 256,
          .watermark_blocks = 0};
}

TEST(SchedulingPolicyTest, AllFit) {
  Scenario s;
  s.options = Roomy();
  s.requests = {{.id = 1, .prompt = 8, .max_tokens = 5},
                {.id = 2, .prompt = 8, .max_tokens = 5},
                {.id = 3, .prompt = 8, .max_tokens = 5}};
  s.table = {{0, 1, {.prefills = {{1, 8}, {2, 8}, {3, 8}}}},  //
             {1, 6, {.decodes = {1, 2, 3}}}};
  s.iterations = 6;
  RunScenario(s);
}

TEST(SchedulingPolicyTest, TokenBudgetChunksPrefill) {
  Scenario s;
  s.options = Roomy();
  s.options.max_batched_tokens = 16;
  s.options.max_prefill_chunk = 16;
  s.options.max_prefill_tokens_while_decoding = 16;
  s.requests = {{.id = 1, .prompt = 40, .max_tokens = 3},
                {.id = 2, .prompt = 10, .max_tokens = 3, .arrive_at = 1}};
  s.table = {{0, 2, {.prefills = {{1, 16}}}},  // request 2 arrives but the budget is spent
             {2, 3, {.prefills = {{1, 8}, {2, 8}}}},
             {3, 4, {.decodes = {1}, .prefills = {{2, 2}}}},
             {4, 6, {.decodes = {1, 2}}},
             {6, 7, {.decodes = {2}}}};
  s.iterations = 7;
  RunScenario(s);
}

// The ITL bound: a 200-token prompt arriving next to two decoding requests never takes a step
// from them, and takes at most the prefill share (16 of 32 tokens) while they run; once they
// are done, a prompt may use the whole budget.
TEST(SchedulingPolicyTest, DecodesRunEveryStepBesideHugePrompt) {
  Scenario s;
  s.options = Roomy();
  s.options.max_batched_tokens = 32;
  s.options.max_prefill_chunk = 32;
  s.options.max_prefill_tokens_while_decoding = 16;
  s.requests = {{.id = 1, .prompt = 4, .max_tokens = 20},
                {.id = 2, .prompt = 4, .max_tokens = 20},
                {.id = 3, .prompt = 200, .max_tokens = 2, .arrive_at = 2},
                {.id = 4, .prompt = 96, .max_tokens = 1, .arrive_at = 18}};
  s.table = {{0, 1, {.prefills = {{1, 4}, {2, 4}}}},
             {1, 2, {.decodes = {1, 2}}},
             {2, 14, {.decodes = {1, 2}, .prefills = {{3, 16}}}},
             {14, 15, {.decodes = {1, 2}, .prefills = {{3, 8}}}},
             {15, 17, {.decodes = {1, 2, 3}}},
             {17, 18, {.decodes = {1, 2}}},
             {18, 21, {.decodes = {1, 2}, .prefills = {{4, 16}}}},
             {21, 22, {.prefills = {{4, 32}}}},  // no decodes left: the whole budget
             {22, 23, {.prefills = {{4, 16}}}},
             {23, 24, {.decodes = {4}}}};
  s.iterations = 24;
  RunScenario(s);
}

TEST(SchedulingPolicyTest, AdmitsByPriorityThenArrival) {
  Scenario s;
  s.options = Roomy();
  s.options.max_running = 1;
  s.requests = {{.id = 1, .priority = 0, .prompt = 4, .max_tokens = 2},
                {.id = 2, .priority = 1, .prompt = 4, .max_tokens = 2},
                {.id = 3, .priority = 0, .prompt = 4, .max_tokens = 2},
                {.id = 4, .priority = 1, .prompt = 4, .max_tokens = 2}};
  s.table = {{0, 1, {.prefills = {{2, 4}}}},   // priority 1, earliest
             {1, 3, {.decodes = {2}}},         //
             {3, 4, {.prefills = {{4, 4}}}},   // priority 1
             {4, 6, {.decodes = {4}}},         //
             {6, 7, {.prefills = {{1, 4}}}},   // priority 0, earliest
             {7, 9, {.decodes = {1}}},         //
             {9, 10, {.prefills = {{3, 4}}}},  //
             {10, 12, {.decodes = {3}}}};
  s.iterations = 12;
  RunScenario(s);
}

TEST(SchedulingPolicyTest, MaxRunningSequences) {
  Scenario s;
  s.options = Roomy();
  s.options.max_running = 2;
  s.requests = {{.id = 1, .prompt = 4, .max_tokens = 3},
                {.id = 2, .prompt = 4, .max_tokens = 3},
                {.id = 3, .prompt = 4, .max_tokens = 3}};
  s.table = {{0, 1, {.prefills = {{1, 4}, {2, 4}}}},
             {1, 4, {.decodes = {1, 2}}},
             {4, 5, {.prefills = {{3, 4}}}},
             {5, 8, {.decodes = {3}}}};
  s.iterations = 8;
  RunScenario(s);
}

// Three full-mode requests in a pool of 6 blocks of 2 tokens: each decode step every other
// token needs a block. The lowest priority, latest arrival goes first (3), then 2; they come
// back, in queue order, once the high-priority request finishes.
TEST(SchedulingPolicyTest, PreemptsLowestPriorityLatestArrivalThenResumes) {
  Scenario s;
  s.options = Roomy();
  s.options.block_tokens = 2;
  s.options.total_blocks = 6;
  s.requests = {{.id = 1, .priority = 1, .prompt = 2, .max_tokens = 6},
                {.id = 2, .priority = 0, .prompt = 2, .max_tokens = 6},
                {.id = 3, .priority = 0, .prompt = 2, .max_tokens = 6}};
  s.table = {{0, 1, {.prefills = {{1, 2}, {2, 2}, {3, 2}}}},
             {1, 3, {.decodes = {1, 2, 3}}},
             {3, 4, {.decodes = {1, 2}, .preempt = {3}}},
             {4, 5, {.decodes = {1, 2}}},  // 3 needs 2 blocks back + 1: none free
             {5, 6, {.decodes = {1}, .preempt = {2}}},
             {6, 7, {.decodes = {1}}},
             {7, 8, {.decodes = {2}, .resume = {2}}},  // 1 finished; 2 is ahead of 3
             {8, 9, {.decodes = {2}}},
             {9, 10, {.decodes = {3}, .resume = {3}}},
             {10, 13, {.decodes = {3}}}};
  s.iterations = 13;
  RunScenario(s);
}

// Request 1 closes a sentence every 4 tokens: its anchor frees the sentence's blocks, which
// lets the preempted full-mode request 2 come back while 1 is still running.
TEST(SchedulingPolicyTest, ResumesWhenAnchorsFreeBlocks) {
  Scenario s;
  s.options = Roomy();
  s.options.block_tokens = 2;
  s.options.total_blocks = 6;
  s.requests = {{.id = 1, .priority = 1, .prompt = 2, .max_tokens = 8, .sentence_len = 4},
                {.id = 2, .priority = 0, .prompt = 2, .max_tokens = 8}};
  s.table = {{0, 1, {.prefills = {{1, 2}, {2, 2}}}},
             {1, 5, {.decodes = {1, 2}}},
             {5, 6, {.decodes = {1}, .preempt = {2}}},
             {6, 7, {.decodes = {1}}},  // 1's anchor (token 8) frees 2 blocks after this step
             {7, 8, {.decodes = {1, 2}, .resume = {2}}},
             {8, 9, {.decodes = {1, 2}}},
             {9, 11, {.decodes = {2}}}};
  s.iterations = 11;
  RunScenario(s);
}

// A full-mode prompt of 20 tokens needs 10 blocks; the pool has 4. Declared up front, the
// request fails at once and the other one runs.
TEST(SchedulingPolicyTest, UnschedulableDeclaredUpFront) {
  Scenario s;
  s.options = Roomy();
  s.options.block_tokens = 2;
  s.options.total_blocks = 4;
  s.requests = {{.id = 1, .prompt = 20, .max_tokens = 1, .declare_min_blocks = true},
                {.id = 2, .prompt = 2, .max_tokens = 2}};
  s.table = {{0, 1, {.prefills = {{2, 2}}, .unschedulable = {1}}},  //
             {1, 3, {.decodes = {2}}}};
  s.iterations = 3;
  RunScenario(s);
}

// Not declared: the prompt fills the pool chunk by chunk, then fails when its next token
// cannot fit even with the whole pool.
TEST(SchedulingPolicyTest, UnschedulableFoundWhenThePoolIsFull) {
  Scenario s;
  s.options = Roomy();
  s.options.block_tokens = 2;
  s.options.total_blocks = 4;
  s.options.max_prefill_chunk = 4;
  s.requests = {{.id = 1, .prompt = 20, .max_tokens = 1}};
  s.table = {{0, 1, {.prefills = {{1, 4}}}},
             {1, 2, {.prefills = {{1, 2}}}},
             {2, 4, {.prefills = {{1, 1}}}},  // the 8th token fits the last block's free slot
             {4, 5, {.unschedulable = {1}}}};
  s.iterations = 5;
  RunScenario(s);
}

// Single plans over hand-made views, for the rules one table step shows poorly: the watermark
// and the queue order. Pool of 20 blocks of 4 tokens, 4 kept free.
class SinglePlanTest : public ::testing::Test {
 protected:
  StepSets PlanOf(const std::vector<RequestView>& views, int64_t free_blocks) {
    PolicyOptions options = Roomy();
    options.total_blocks = 20;
    options.watermark_blocks = 4;
    absl::StatusOr<SchedulingPolicy> policy = SchedulingPolicy::Create(options);
    EXPECT_TRUE(policy.ok()) << policy.status();
    absl::StatusOr<StepPlan> plan = policy->Plan(views, free_blocks);
    EXPECT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(BrokenPromise(options, views, free_blocks, *plan), "");
    return SetsOf(*plan);
  }
  static RequestView Decoding(uint64_t id, int64_t held) {
    return {.id = id, .arrival = id, .state = RequestState::kDecoding, .blocks_held = held};
  }
  static RequestView Waiting(uint64_t id, int64_t prompt) {
    return {.id = id, .arrival = id, .state = RequestState::kWaiting, .prompt_tokens_left = prompt};
  }
  // Preempted while decoding: comes back as a decode.
  static RequestView Preempted(uint64_t id, int64_t swapped) {
    return {.id = id, .arrival = id, .state = RequestState::kPreempted, .swapped_blocks = swapped};
  }
};

TEST_F(SinglePlanTest, AdmissionLeavesTheWatermarkFree) {
  // 10 free, 1 for the decode, 4 kept: 5 for the chunk, ceil(n/4) + 2 <= 5 -> 12 tokens.
  EXPECT_EQ(PlanOf({Decoding(1, 10), Waiting(2, 40)}, 10),
            (StepSets{.decodes = {1}, .prefills = {{2, 12}}}));
}

TEST_F(SinglePlanTest, NoAdmissionIntoTheWatermark) {
  EXPECT_EQ(PlanOf({Decoding(1, 15), Waiting(2, 40)}, 5), (StepSets{.decodes = {1}}));
}

TEST_F(SinglePlanTest, DecodesMayUseTheWatermark) {
  EXPECT_EQ(PlanOf({Decoding(1, 9), Decoding(2, 9)}, 2), (StepSets{.decodes = {1, 2}}));
}

TEST_F(SinglePlanTest, WaivedForTheFirstWorkOfAnIdleStep) {
  // 3 free (the rest held by idle sessions), nothing running: the head starts anyway.
  EXPECT_EQ(PlanOf({Waiting(2, 40)}, 3), (StepSets{.prefills = {{2, 4}}}));
}

TEST_F(SinglePlanTest, HeadOfLineBlocksSmallerRequestsBehindIt) {
  // 10 free, 1 for decode 1, 4 kept: room 5. Preempted 2 (priority 1) needs 8 + 1 to come
  // back; waiting 3 (priority 0) would fit but must not overtake it.
  RequestView running = Decoding(1, 10);
  running.priority = 2;
  RequestView preempted = Preempted(2, 8);
  preempted.priority = 1;
  EXPECT_EQ(PlanOf({running, preempted, Waiting(3, 10)}, 10), (StepSets{.decodes = {1}}));
  preempted.prompt_tokens_left = 10;  // preempted while prefilling: the same
  EXPECT_EQ(PlanOf({running, preempted, Waiting(3, 10)}, 10), (StepSets{.decodes = {1}}));
}

TEST_F(SinglePlanTest, PreemptedResumeBeforeWaitingOfTheSamePriority) {
  // Room for one of them (3 blocks): preempted 5 goes first although waiting 4 arrived
  // earlier, because it already started.
  RequestView running = Decoding(1, 12);
  running.priority = 2;
  EXPECT_EQ(PlanOf({running, Waiting(4, 4), Preempted(5, 2)}, 8),
            (StepSets{.decodes = {1, 5}, .resume = {5}}));
}

TEST_F(SinglePlanTest, HigherPriorityWaitingBeforeLowerPreempted) {
  RequestView running = Decoding(1, 12);
  running.priority = 2;
  RequestView waiting = Waiting(4, 4);
  waiting.priority = 1;
  EXPECT_EQ(PlanOf({running, waiting, Preempted(5, 2)}, 8),
            (StepSets{.decodes = {1}, .prefills = {{4, 4}}}));
}

std::vector<RequestView> RandomViews(std::mt19937_64& rng, int64_t total_blocks) {
  std::uniform_int_distribution<int> count(0, 12);
  std::uniform_int_distribution<int> state(0, 3);
  std::uniform_int_distribution<int64_t> small(0, 6);
  std::vector<RequestView> views;
  const int n = count(rng);
  for (int i = 0; i < n; ++i) {
    RequestView v;
    v.id = static_cast<uint64_t>(100 + i);
    v.priority = static_cast<int32_t>(small(rng) % 3);
    v.arrival = static_cast<uint64_t>(small(rng));  // ties on purpose: id breaks them
    v.state = static_cast<RequestState>(state(rng));
    v.prompt_tokens_left = v.state == RequestState::kDecoding ? 0 : 1 + small(rng) * 20;
    if (v.state != RequestState::kPrefilling && small(rng) < 2) v.prompt_tokens_left = 0;
    if (v.state == RequestState::kPrefilling && v.prompt_tokens_left == 0) {
      v.prompt_tokens_left = 1;
    }
    v.blocks_held = IsRunning(v.state) ? small(rng) : 0;
    v.swapped_blocks = v.state == RequestState::kPreempted ? small(rng) : 0;
    v.next_token_blocks = small(rng) % 2;
    v.min_total_blocks = small(rng) == 0 ? total_blocks + 1 : 0;
    views.push_back(v);
  }
  return views;
}

TEST(SchedulingPolicyTest, SameInputSamePlanInAnyOrder) {
  std::mt19937_64 rng(7);
  PolicyOptions options = Roomy();
  options.total_blocks = 24;
  options.watermark_blocks = 2;
  options.max_batched_tokens = 48;
  options.max_prefill_chunk = 20;
  options.max_prefill_tokens_while_decoding = 24;
  options.max_running = 6;
  absl::StatusOr<SchedulingPolicy> policy = SchedulingPolicy::Create(options);
  ASSERT_TRUE(policy.ok()) << policy.status();
  for (int round = 0; round < 500; ++round) {
    std::vector<RequestView> views = RandomViews(rng, options.total_blocks);
    std::uniform_int_distribution<int64_t> free(0, options.total_blocks);
    const int64_t free_blocks = free(rng);
    absl::StatusOr<StepPlan> first = policy->Plan(views, free_blocks);
    ASSERT_TRUE(first.ok()) << first.status();
    absl::StatusOr<StepPlan> again = policy->Plan(views, free_blocks);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*first, *again) << "round " << round;
    std::shuffle(views.begin(), views.end(), rng);
    absl::StatusOr<StepPlan> shuffled = policy->Plan(views, free_blocks);
    ASSERT_TRUE(shuffled.ok()) << shuffled.status();
    EXPECT_EQ(*first, *shuffled) << "round " << round;
  }
}

// Random workloads (fixed seed): random pools, budgets, priorities, arrivals, prompt lengths,
// full and anchor modes. Every step keeps the policy's promises (BrokenPromise: token budget,
// blocks, every running decode served, no preempted request scheduled, no higher rank
// preempted for a lower one, never an empty plan) and the fake model confirms the blocks
// really were free; every request finishes, or fails only if it could never fit.
TEST(SchedulingPolicyTest, RandomWorkloadsKeepThePromisesAndFinish) {
  std::mt19937_64 rng(20240611);
  const auto uniform = [&rng](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  int64_t failed_total = 0;
  int64_t preemptions = 0;
  int64_t resumes = 0;
  for (int workload = 0; workload < 300; ++workload) {
    PolicyOptions o;
    o.block_tokens = std::vector<int64_t>{1, 2, 4, 8, 16}[uniform(0, 4)];
    o.total_blocks = uniform(3, 80);
    o.max_batched_tokens = uniform(4, 256);
    o.max_running = static_cast<int32_t>(uniform(1, std::min<int64_t>(16, o.max_batched_tokens)));
    o.max_prefill_chunk = uniform(1, o.max_batched_tokens);
    o.max_prefill_tokens_while_decoding = uniform(1, o.max_batched_tokens);
    o.watermark_blocks = uniform(0, o.total_blocks / 4);
    std::vector<FakeRequest> requests;
    const int64_t n = uniform(1, 24);
    for (int64_t i = 0; i < n; ++i) {
      FakeRequest r;
      r.id = static_cast<uint64_t>(i + 1);
      r.priority = static_cast<int32_t>(uniform(0, 2));
      r.prompt = uniform(1, 200);
      r.max_tokens = uniform(1, 60);
      r.sentence_len = uniform(0, 3) == 0 ? 0 : uniform(2, 20);
      r.arrive_at = static_cast<int>(uniform(0, 40));
      r.declare_min_blocks = uniform(0, 1) == 1;
      requests.push_back(r);
    }
    SCOPED_TRACE(absl::StrCat("workload ", workload, ": block_tokens ", o.block_tokens,
                              " total_blocks ", o.total_blocks, " watermark ", o.watermark_blocks));
    const RunResult result = RunWorkload(o, requests, nullptr, 100000);
    for (uint64_t id : result.failed) {
      // A full-mode request that fits the pool alone must never fail.
      const FakeRequest& r = requests[id - 1];
      if (r.sentence_len == 0) {
        EXPECT_GT(CeilDiv(r.prompt + r.max_tokens, o.block_tokens), o.total_blocks)
            << "request " << id << " failed but fits the pool";
      }
    }
    failed_total += static_cast<int64_t>(result.failed.size());
    preemptions += result.preemptions;
    resumes += result.resumes;
    if (::testing::Test::HasFailure()) break;
  }
  // The workloads do reach the interesting paths: requests too large for their pool, and
  // preemptions that come back.
  EXPECT_GT(failed_total, 0);
  EXPECT_GT(preemptions, 0);
  EXPECT_GT(resumes, 0);
  std::printf("random workloads: %lld failed, %lld preemptions, %lld resumes\n",
              static_cast<long long>(failed_total), static_cast<long long>(preemptions),
              static_cast<long long>(resumes));
}

TEST(SchedulingPolicyTest, BlocksForTokens) {
  EXPECT_EQ(BlocksForTokens(0, 16), 0);
  EXPECT_EQ(BlocksForTokens(1, 16), 1);
  EXPECT_EQ(BlocksForTokens(2, 16), 2);   // two regions may each open a block
  EXPECT_EQ(BlocksForTokens(16, 16), 3);  // one block of tokens, three regions
  EXPECT_EQ(BlocksForTokens(17, 16), 4);
  EXPECT_EQ(BlocksForTokens(512, 16), 34);
  RequestView r;
  r.next_token_blocks = 0;
  EXPECT_EQ(BlocksForStep(r, 1, 16), 0);  // one token: the engine knows exactly
  EXPECT_EQ(BlocksForStep(r, 2, 16), 2);
}

TEST(SchedulingPolicyTest, CreateRejectsBadOptions) {
  PolicyOptions o = Roomy();
  EXPECT_TRUE(SchedulingPolicy::Create(o).ok());
  o.total_blocks = 0;
  EXPECT_EQ(SchedulingPolicy::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Roomy();
  o.max_running = static_cast<int32_t>(o.max_batched_tokens + 1);
  EXPECT_EQ(SchedulingPolicy::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Roomy();
  o.watermark_blocks = o.total_blocks;
  EXPECT_EQ(SchedulingPolicy::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Roomy();
  o.max_prefill_tokens_while_decoding = 0;
  EXPECT_EQ(SchedulingPolicy::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SchedulingPolicyTest, PlanRejectsInconsistentRequests) {
  absl::StatusOr<SchedulingPolicy> policy = SchedulingPolicy::Create(Roomy());
  ASSERT_TRUE(policy.ok());
  const RequestView decoding{.id = 1, .state = RequestState::kDecoding};
  EXPECT_TRUE(policy->Plan({decoding}, 10).ok());
  EXPECT_EQ(policy->Plan({decoding, decoding}, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  const RequestView prefilling_done{.id = 2, .state = RequestState::kPrefilling};
  EXPECT_EQ(policy->Plan({prefilling_done}, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(policy->Plan({decoding}, 1001).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace anchorserve::scheduler
