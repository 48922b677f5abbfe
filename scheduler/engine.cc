#include "scheduler/engine.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "cache/block_pool.h"
#include "cache/paged_sequence.h"
#include "cache/resident_sequences.h"
#include "common/status_macros.h"
#include "model/tokenizer.h"
#include "scheduler/policy.h"

namespace anchorserve::scheduler {

absl::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kTimedOut: return "timed_out";
    case FinishReason::kError: return "error";
  }
  return "none";
}

namespace {

// A practical identity for "the same model": FNV-1a over config.json and the weight files'
// names and sizes. Two processes serving one directory agree; a retrained model differs.
std::string Fingerprint(const std::string& dir) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](absl::string_view bytes) {
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 1099511628211ULL;
    }
  };
  std::ifstream config(std::filesystem::path(dir) / "config.json", std::ios::binary);
  mix(std::string((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>()));
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".safetensors") != std::string::npos) {
      files.push_back(absl::StrCat(name, ":", entry.file_size(ec)));
    }
  }
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) mix(f);
  return absl::StrFormat("%016x", h);
}

}  // namespace

struct Engine::Impl {
  // ---- immutable after Create ----
  EngineOptions options;
  std::unique_ptr<model::LlamaModel> llama;
  std::unique_ptr<model::Tokenizer> tokenizer;
  ModelInfo info;

  // ---- engine thread only ----
  struct Request {
    uint64_t id = 0;
    GenerationRequest req;
    std::shared_ptr<StreamSink> sink;
    int64_t arrival = 0;
    bool running = false;
    bool preempted = false;
    std::optional<cache::SessionSnapshot> swapped;  // a preempted request's state, on the host
    int64_t swapped_blocks = 0;
    uint64_t handle = 0;  // in `resident`: the sequence this request runs on
    bool session_acquired = false;
    int64_t prefilled = 0;
    std::vector<uint8_t> span_flags;
    std::vector<int32_t> history;  // prompt + generated, for the repetition penalty
    std::unique_ptr<model::Sampler> sampler;
    std::unique_ptr<model::StreamingDetokenizer> detokenizer;
    std::string held_text;  // text that may still turn out to start a stop string
    int64_t generated = 0;
    int32_t pending = -1;   // sampled, emitted, not yet fed
    int64_t cached_tokens = 0;
    cache::KvAccounting kv_before;
    absl::Time submitted = absl::Now();
    absl::Duration queue_time;
    std::vector<float> logits;
  };
  std::unique_ptr<cache::BlockPool> pool;
  std::unique_ptr<cache::ResidentSequences> resident;
  std::unique_ptr<cache::SessionStore> sessions;
  std::map<uint64_t, std::unique_ptr<Request>> active;  // by id (= arrival order)
  std::optional<SchedulingPolicy> policy;
  int64_t steps = 0, preemptions = 0;
  double step_seconds = 0, model_seconds = 0;
  int64_t decode_tokens = 0, decode_batches = 0;
  absl::Time last_idle_sweep = absl::InfinitePast();
  int fail_steps = 0;

  // ---- inbox, guarded by mu ----
  std::mutex mu;
  std::condition_variable wake;
  std::deque<std::unique_ptr<Request>> submitted;
  std::vector<uint64_t> cancelled;
  std::deque<std::function<void()>> calls;
  bool stopping = false;
  bool draining = false;
  absl::Time drain_deadline = absl::InfiniteFuture();
  uint64_t next_id = 1;
  int64_t waiting_count = 0, running_count = 0, rejected = 0;
  std::thread thread;

  // Runs `fn` on the engine thread and waits for it.
  void Call(std::function<void()> fn) {
    absl::Notification done;
    {
      std::unique_lock<std::mutex> lock(mu);
      if (stopping) {  // the engine thread is gone: nothing else owns the state now
        lock.unlock();
        fn();
        return;
      }
      calls.push_back([&] {
        fn();
        done.Notify();
      });
    }
    wake.notify_one();
    done.WaitForNotification();
  }

  void Loop();
  bool Start(Request& r);
  void Step();
  absl::StatusOr<StepPlan> PlanStep();
  void Preempt(Request& r);
  absl::Status Resume(Request& r);
  void Prefill(Request& r, int64_t tokens, std::vector<Request*>* decoding);
  void PublishCounts();
  void Sample(Request& r, absl::Span<const float> logits);
  void Accept(Request& r, int32_t token);
  void DecodeAll(const std::vector<Request*>& decoding);
  void Emit(Request& r, int32_t token);
  void Finish(Request& r, FinishReason reason, absl::Status status);
  absl::Status FeedPending(Request& r, bool logits = true);
  absl::StatusOr<std::vector<float>> Feed(Request& r, absl::Span<const int32_t> ids,
                                          absl::Span<const uint8_t> spans, bool logits = true);
  cache::PagedSequence* Sequence(const Request& r) const { return resident->Get(r.handle); }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() { (void)Drain(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options) {
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->llama, model::LlamaModel::Load(options.model_dir, options.load));
  auto tokenizer = model::Tokenizer::Load(options.model_dir);
  if (tokenizer.ok()) impl->tokenizer = *std::move(tokenizer);
  ModelInfo& info = impl->info;
  info.config = impl->llama->config();
  info.model_dir = options.model_dir;
  info.fingerprint = Fingerprint(options.model_dir);
  info.device = options.load.device;
  info.precision = options.load.precision;
  ASSIGN_OR_RETURN(info.anchors,
                   model::DetectAnchors(options.model_dir, info.config, impl->tokenizer.get()));

  cache::BlockPoolOptions pool_options;
  pool_options.geometry = cache::GeometryOf(info.config, options.load.precision);
  pool_options.device = options.load.device;
  pool_options.precision = options.load.precision;
  pool_options.block_tokens = options.block_tokens;
  pool_options.budget_bytes = options.kv_budget_bytes;
  pool_options.free_memory_fraction = options.kv_free_memory_fraction;
  ASSIGN_OR_RETURN(impl->pool, cache::BlockPool::Create(pool_options));
  impl->resident = std::make_unique<cache::ResidentSequences>(
      impl->llama.get(), impl->pool.get(), info.anchors, info.fingerprint);
  cache::SessionStoreOptions& s = options.sessions;
  s.model_fingerprint = info.fingerprint;
  s.num_layers = static_cast<int32_t>(info.config.num_hidden_layers);
  s.num_kv_heads = static_cast<int32_t>(info.config.num_key_value_heads);
  s.head_dim = static_cast<int32_t>(info.config.head_dim);
  s.dtype = std::string(model::PrecisionName(options.load.precision));
  ASSIGN_OR_RETURN(impl->sessions, cache::SessionStore::Create(s, impl->resident.get()));
  PolicyOptions policy;
  policy.block_tokens = options.block_tokens;
  policy.total_blocks = impl->pool->total_blocks();
  policy.max_batched_tokens = options.max_batched_tokens;
  policy.max_running = options.max_running;
  policy.max_prefill_chunk = options.max_prefill_chunk;
  policy.max_prefill_tokens_while_decoding =
      std::min(options.max_batched_tokens, std::max<int64_t>(1, options.max_batched_tokens / 2));
  policy.watermark_blocks = std::min<int64_t>(impl->pool->total_blocks() / 100,
                                              options.max_running);
  ASSIGN_OR_RETURN(SchedulingPolicy created, SchedulingPolicy::Create(policy));
  impl->policy.emplace(std::move(created));
  impl->options = std::move(options);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelInfo& Engine::model_info() const { return impl_->info; }
const model::Tokenizer* Engine::tokenizer() const { return impl_->tokenizer.get(); }

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request,
                                        std::shared_ptr<StreamSink> sink) {
  const Impl& m = *impl_;
  const int64_t vocab = m.info.config.vocab_size;
  const int64_t n = static_cast<int64_t>(request.prompt_token_ids.size());
  if (n == 0) return absl::InvalidArgumentError("prompt: must not be empty");
  if (n > m.options.max_prompt_tokens) {
    return absl::OutOfRangeError(absl::StrCat("prompt: ", n, " tokens exceed the limit of ",
                                              m.options.max_prompt_tokens));
  }
  for (int32_t id : request.prompt_token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt_token_ids: ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (request.max_tokens <= 0) {
    return absl::InvalidArgumentError("max_tokens: must be positive");
  }
  if (request.max_tokens > m.options.max_new_tokens) {
    return absl::OutOfRangeError(absl::StrCat("max_tokens: ", request.max_tokens,
                                              " exceeds the limit of ", m.options.max_new_tokens));
  }
  RETURN_IF_ERROR(model::ValidateSamplingParams(request.sampling));
  for (const KeptFullSpan& span : request.kept_full_spans) {
    if (span.begin < 0 || span.end < span.begin || span.end >= n) {
      return absl::InvalidArgumentError(absl::StrCat("kept_full_spans: [", span.begin, ", ",
                                                     span.end, "] is not inside the prompt's ", n,
                                                     " tokens"));
    }
  }
  for (const std::string& stop : request.stop_strings) {
    if (stop.empty()) return absl::InvalidArgumentError("stop: strings must not be empty");
  }
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids: ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (!request.session_id.empty()) {
    // Existence is checked here so the caller gets NOT_FOUND before streaming starts.
    absl::Status exists;
    impl_->Call([&] { exists = impl_->sessions->Get(request.tenant, request.session_id).status(); });
    RETURN_IF_ERROR(exists);
  }
  auto r = std::make_unique<Impl::Request>();
  r->req = std::move(request);
  r->sink = std::move(sink);
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->draining || impl_->stopping) {
      return absl::UnavailableError("the server is draining; retry on another replica");
    }
    if (impl_->waiting_count >= impl_->options.max_waiting) {
      ++impl_->rejected;
      return absl::ResourceExhaustedError(absl::StrCat(
          "the request queue is full (", impl_->options.max_waiting, " waiting); retry later"));
    }
    id = impl_->next_id++;
    r->id = id;
    r->arrival = static_cast<int64_t>(id);
    ++impl_->waiting_count;
    impl_->submitted.push_back(std::move(r));
  }
  impl_->wake.notify_one();
  return id;
}

void Engine::Cancel(uint64_t request_id) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->cancelled.push_back(request_id);
  }
  impl_->wake.notify_one();
}

absl::Status Engine::CreateSession(const std::string& tenant, const std::string& session_id) {
  absl::Status status;
  impl_->Call([&] { status = impl_->sessions->CreateSession(tenant, session_id); });
  return status;
}

absl::StatusOr<cache::SessionInfo> Engine::GetSession(const std::string& tenant,
                                                      const std::string& session_id) {
  absl::StatusOr<cache::SessionInfo> info;
  impl_->Call([&] { info = impl_->sessions->Get(tenant, session_id); });
  return info;
}

std::vector<cache::SessionInfo> Engine::ListSessions(const std::string& tenant) {
  std::vector<cache::SessionInfo> list;
  impl_->Call([&] { list = impl_->sessions->List(tenant); });
  return list;
}

absl::Status Engine::DeleteSession(const std::string& tenant, const std::string& session_id) {
  absl::Status status;
  impl_->Call([&] { status = impl_->sessions->Delete(tenant, session_id); });
  return status;
}

absl::StatusOr<std::string> Engine::ExportSession(const std::string& tenant,
                                                  const std::string& session_id) {
  absl::StatusOr<std::string> bytes;
  impl_->Call([&] { bytes = impl_->sessions->Export(tenant, session_id); });
  return bytes;
}

absl::Status Engine::ImportSession(const std::string& tenant, const std::string& session_id,
                                   const std::string& bytes) {
  absl::Status status;
  impl_->Call([&] { status = impl_->sessions->Import(tenant, session_id, bytes); });
  return status;
}

absl::Status Engine::Drain(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->thread.joinable()) return absl::OkStatus();
    impl_->draining = true;
    impl_->drain_deadline = absl::Now() + grace;
  }
  impl_->wake.notify_one();
  impl_->thread.join();
  // Without a disk tier there is nowhere to keep sessions across the exit.
  if (impl_->options.sessions.disk_dir.empty()) return absl::OkStatus();
  return impl_->sessions->PersistAll();
}

EngineStats Engine::Stats() const {
  EngineStats stats;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    stats.waiting = impl_->waiting_count;
    stats.running = impl_->running_count;
    stats.rejected = impl_->rejected;
  }
  if (!impl_->thread.joinable()) return stats;
  impl_->Call([&] {
    stats.kv_blocks_total = impl_->pool->total_blocks();
    stats.kv_blocks_used = impl_->pool->used_blocks();
    stats.steps = impl_->steps;
    stats.preemptions = impl_->preemptions;
    stats.step_seconds = impl_->step_seconds;
    stats.model_seconds = impl_->model_seconds;
    stats.decode_tokens = impl_->decode_tokens;
    stats.decode_batches = impl_->decode_batches;
    stats.sessions = impl_->sessions->Stats();
    stats.kv_kept_bytes = stats.sessions.kv_kept_bytes;
    stats.kv_full_equivalent_bytes = stats.sessions.kv_full_equivalent_bytes;
    for (const auto& [id, r] : impl_->active) {
      if (!r->running) continue;
      const cache::KvAccounting kv = impl_->Sequence(*r)->accounting();
      stats.kv_kept_bytes += kv.kept_bytes();
      stats.kv_full_equivalent_bytes += kv.full_bytes();
    }
  });
  return stats;
}

int64_t Engine::Load() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->waiting_count + impl_->running_count;
}

void Engine::TEST_FailSteps(int n) {
  impl_->Call([&] { impl_->fail_steps = n; });
}

// ---------------------------------------------------------------- the engine thread

void Engine::Impl::Loop() {
  for (;;) {
    std::deque<std::unique_ptr<Request>> fresh;
    std::vector<uint64_t> cancels;
    std::deque<std::function<void()>> todo;
    bool drain_now = false, drain_expired = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      const bool idle = active.empty();
      if (idle && submitted.empty() && cancelled.empty() && calls.empty() && !draining) {
        wake.wait_for(lock, std::chrono::seconds(1));  // wake for the idle-session sweep too
      }
      fresh.swap(submitted);
      cancels.swap(cancelled);
      todo.swap(calls);
      drain_now = draining;
      drain_expired = draining && absl::Now() >= drain_deadline;
    }
    for (auto& call : todo) call();
    for (auto& r : fresh) {
      const uint64_t id = r->id;
      active[id] = std::move(r);
    }
    for (uint64_t id : cancels) {
      auto it = active.find(id);
      if (it != active.end()) {
        Finish(*it->second, FinishReason::kCancelled,
               absl::CancelledError("the request was cancelled"));
      }
    }
    const absl::Time now = absl::Now();
    std::vector<Request*> expired;
    for (auto& [id, r] : active) {
      if (now >= r->req.deadline) expired.push_back(r.get());
    }
    for (Request* r : expired) {
      Finish(*r, FinishReason::kTimedOut,
             absl::DeadlineExceededError("the request's deadline passed"));
    }
    if (drain_expired) {
      std::vector<Request*> rest;
      for (auto& [id, r] : active) rest.push_back(r.get());
      for (Request* r : rest) {
        Finish(*r, FinishReason::kCancelled,
               absl::UnavailableError("the server is shutting down; the drain timeout passed"));
      }
    }
    if (drain_now && active.empty()) {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
      // Requests that raced with the drain flag get an answer too.
      for (auto& r : submitted) {
        StreamEvent event;
        event.final = true;
        event.finish_reason = FinishReason::kCancelled;
        event.status = absl::UnavailableError("the server is shutting down");
        r->sink->OnEvent(std::move(event));
      }
      submitted.clear();
      for (auto& call : calls) call();
      calls.clear();
      return;
    }
    // Idle sessions: TTL expiry and idle offload, about once a second.
    if (now - last_idle_sweep >= absl::Seconds(1)) {
      last_idle_sweep = now;
      (void)sessions->ExpireIdle();
    }
    Step();
  }
}

// Binds a sequence to `r`: the session's state forked, or a fresh one. False when the pool has
// no room yet (the request stays queued); other failures finish the request.
bool Engine::Impl::Start(Request& r) {
  cache::PagedSequenceOptions seq_options;
  seq_options.mode = r.req.mode;
  seq_options.policy = r.req.position_policy;
  seq_options.anchors = info.anchors;
  seq_options.model_fingerprint = info.fingerprint;
  absl::Status status;
  if (!r.req.session_id.empty()) {
    auto acquired = sessions->Acquire(r.req.tenant, r.req.session_id);
    if (!acquired.ok()) {
      Finish(r, FinishReason::kError, acquired.status());
      return true;
    }
    r.session_acquired = true;
    if (acquired->has_value()) {
      cache::PagedSequence* base = resident->Get(**acquired);
      if (base->options().mode != r.req.mode || base->options().policy != r.req.position_policy) {
        Finish(r, FinishReason::kError,
               absl::FailedPreconditionError(absl::StrCat(
                   "mode/position_policy: the session was started with ",
                   model::AttentionModeName(base->options().mode), "/",
                   model::PositionPolicyName(base->options().policy))));
        return true;
      }
      r.kv_before = base->accounting();
      r.cached_tokens = r.kv_before.full_tokens;
      auto fork = resident->Fork(**acquired);
      if (!fork.ok()) {
        (void)sessions->Abandon(r.req.tenant, r.req.session_id);
        r.session_acquired = false;
        if (absl::IsResourceExhausted(fork.status())) return false;
        Finish(r, FinishReason::kError, fork.status());
        return true;
      }
      r.handle = *fork;
    }
  }
  if (r.handle == 0) {
    auto seq = cache::PagedSequence::Create(llama.get(), pool.get(), seq_options);
    if (!seq.ok()) {
      Finish(r, FinishReason::kError, seq.status());
      return true;
    }
    r.handle = resident->Insert(*std::move(seq));
  }
  r.running = true;
  r.queue_time = absl::Now() - r.submitted;
  r.sampler = std::make_unique<model::Sampler>(r.req.sampling);
  if (tokenizer) {
    model::Tokenizer::DecodeOptions decode;
    decode.render_added_tokens = r.req.include_anchor_tokens;
    r.detokenizer = std::make_unique<model::StreamingDetokenizer>(tokenizer.get(), decode);
  }
  const int64_t n = static_cast<int64_t>(r.req.prompt_token_ids.size());
  if (!r.req.kept_full_spans.empty()) {
    r.span_flags.assign(static_cast<size_t>(n), 0);
    for (const KeptFullSpan& s : r.req.kept_full_spans) {
      for (int64_t i = s.begin; i <= s.end; ++i) r.span_flags[i] = 1;
    }
  }
  r.history = r.req.prompt_token_ids;
  return true;
}

absl::StatusOr<StepPlan> Engine::Impl::PlanStep() {
  std::vector<RequestView> views;
  views.reserve(active.size());
  for (auto& [id, r] : active) {
    RequestView v;
    v.id = id;
    v.priority = r->req.priority;
    v.arrival = static_cast<uint64_t>(r->arrival);
    const int64_t total = static_cast<int64_t>(r->req.prompt_token_ids.size());
    v.prompt_tokens_left = total - r->prefilled;
    if (r->preempted) {
      v.state = RequestState::kPreempted;
      v.swapped_blocks = r->swapped_blocks;
    } else if (!r->running) {
      v.state = RequestState::kWaiting;
    } else {
      cache::PagedSequence* seq = Sequence(*r);
      v.blocks_held = seq->blocks_held();
      if (v.prompt_tokens_left > 0) {
        v.state = RequestState::kPrefilling;
        v.next_token_blocks = seq->BlocksForNext(r->req.prompt_token_ids[r->prefilled]);
      } else {
        v.state = RequestState::kDecoding;
        v.next_token_blocks = seq->BlocksForNext(r->pending);
      }
    }
    if (r->req.mode == model::AttentionMode::kFull) {
      v.min_total_blocks = (total + r->cached_tokens + options.block_tokens - 1) / options.block_tokens;
    }
    views.push_back(v);
  }
  return policy->Plan(views, pool->free_blocks());
}

void Engine::Impl::Preempt(Request& r) {
  auto snapshot = Sequence(r)->Snapshot();
  if (!snapshot.ok()) {
    Finish(r, FinishReason::kError, snapshot.status());
    return;
  }
  r.swapped_blocks = Sequence(r)->blocks_held();
  r.swapped = *std::move(snapshot);
  resident->Release(r.handle);
  r.handle = 0;
  r.running = false;
  r.preempted = true;
  ++preemptions;
}

absl::Status Engine::Impl::Resume(Request& r) {
  ASSIGN_OR_RETURN(r.handle, resident->Restore(*r.swapped));
  r.swapped.reset();
  r.swapped_blocks = 0;
  r.preempted = false;
  r.running = true;
  return absl::OkStatus();
}

// A prompt chunk. The prompt's last token (outside a kept-full span) is not fed here: it joins
// the step's decode batch, whose logits give the first generated token, so a step waits for
// the device once however many prompts finish in it.
void Engine::Impl::Prefill(Request& r, int64_t tokens, std::vector<Request*>* decoding) {
  absl::Span<const int32_t> ids =
      absl::MakeConstSpan(r.req.prompt_token_ids).subspan(r.prefilled, tokens);
  absl::Span<const uint8_t> spans;
  if (!r.span_flags.empty()) spans = absl::MakeConstSpan(r.span_flags).subspan(r.prefilled, tokens);
  const int64_t total = static_cast<int64_t>(r.req.prompt_token_ids.size());
  if (r.prefilled + tokens == total && (spans.empty() || !spans.back())) {
    if (tokens > 1) {
      auto fed = Feed(r, ids.subspan(0, tokens - 1),
                      spans.empty() ? spans : spans.subspan(0, tokens - 1), /*logits=*/false);
      if (!fed.ok()) {
        Finish(r, FinishReason::kError, fed.status());
        return;
      }
    }
    r.prefilled = total - 1;
    r.pending = ids.back();
    decoding->push_back(&r);
    return;
  }
  // Only the prompt's last chunk needs logits; earlier chunks leave the device running.
  const bool last = r.prefilled + tokens == static_cast<int64_t>(r.req.prompt_token_ids.size());
  absl::StatusOr<std::vector<float>> logits = Feed(r, ids, spans, /*logits=*/last);
  if (!logits.ok()) {
    Finish(r, FinishReason::kError, logits.status());
    return;
  }
  r.prefilled += tokens;
  if (last) {
    r.logits = *std::move(logits);
    Sample(r, r.logits);
  }
}

// One iteration: the pure policy decides (decodes first, prefill chunks within the token
// budget, admissions by free blocks, preemption by swapping the lowest-ranked out), then this
// thread carries the plan out.
void Engine::Impl::Step() {
  if (active.empty()) return;
  auto plan = PlanStep();
  if (!plan.ok()) {  // a bug in the views: fail loudly rather than spin
    std::vector<Request*> all;
    for (auto& [id, r] : active) all.push_back(r.get());
    for (Request* r : all) Finish(*r, FinishReason::kError, plan.status());
    return;
  }
  if (plan->Empty()) {
    // Blocks held by idle sessions are invisible to the policy: move some out and retry.
    auto freed = sessions->OffloadLeastRecentlyUsed(pool->block_bytes() * 4);
    if (freed.ok() && *freed > 0) plan = PlanStep();
    if (!plan.ok() || plan->Empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // nothing can move yet
      return;
    }
  }
  ++steps;
  const auto step_start = std::chrono::steady_clock::now();
  auto find = [&](uint64_t id) -> Request* {
    auto it = active.find(id);
    return it == active.end() ? nullptr : it->second.get();
  };
  for (uint64_t id : plan->unschedulable) {
    if (Request* r = find(id)) {
      Finish(*r, FinishReason::kError,
             absl::ResourceExhaustedError(
                 "the request needs more KV memory than the pool holds; shorten it or use "
                 "anchor mode"));
    }
  }
  for (uint64_t id : plan->preempt) {
    if (Request* r = find(id); r != nullptr && r->running) Preempt(*r);
  }
  for (uint64_t id : plan->resume) {
    if (Request* r = find(id); r != nullptr && r->preempted) {
      if (absl::Status s = Resume(*r); !s.ok()) Finish(*r, FinishReason::kError, s);
    }
  }
  std::vector<Request*> decoding;
  for (uint64_t id : plan->decodes) {
    Request* r = find(id);
    if (r != nullptr && r->running && r->pending >= 0) decoding.push_back(r);
  }
  for (const PrefillChunk& chunk : plan->prefills) {
    Request* r = find(chunk.id);
    if (r == nullptr) continue;
    if (!r->running && !r->preempted && !Start(*r)) continue;
    if (find(chunk.id) == nullptr || !r->running) continue;  // Start may have failed it
    Prefill(*r, chunk.tokens, &decoding);
  }
  DecodeAll(decoding);
  PublishCounts();
  step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
}

// All of a step's decodes in one batched forward. When that fails (a pool short of blocks, a
// sequence at its position limit, a device error), each request goes alone, so that only the
// ones at fault end and idle sessions can be moved out of the pool first.
void Engine::Impl::DecodeAll(const std::vector<Request*>& decoding) {
  if (decoding.empty()) return;
  if (fail_steps == 0) {
    std::vector<cache::PagedSequence*> seqs;
    std::vector<int32_t> tokens;
    for (Request* r : decoding) {
      seqs.push_back(Sequence(*r));
      tokens.push_back(r->pending);
    }
    cache::DecodeOptions decode;
    decode.cuda_graphs = options.cuda_graphs;
    // All greedy (the sampler would take the plain argmax): only the ids leave the device.
    const bool all_greedy = std::all_of(decoding.begin(), decoding.end(), [](Request* r) {
      return r->req.sampling.temperature == 0.0f && r->req.sampling.repetition_penalty == 1.0f;
    });
    std::vector<int32_t> greedy;
    const auto start = std::chrono::steady_clock::now();
    auto logits = cache::PagedSequence::DecodeBatch(seqs, tokens, decode,
                                                    all_greedy ? &greedy : nullptr);
    model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (logits.ok()) {
      const size_t vocab = all_greedy ? 0 : logits->size() / decoding.size();
      decode_tokens += static_cast<int64_t>(decoding.size());
      ++decode_batches;
      for (size_t i = 0; i < decoding.size(); ++i) {
        decoding[i]->pending = -1;
        decoding[i]->prefilled = static_cast<int64_t>(decoding[i]->req.prompt_token_ids.size());
        if (all_greedy) {
          Accept(*decoding[i], greedy[i]);
        } else {
          Sample(*decoding[i], absl::MakeConstSpan(logits->data() + i * vocab, vocab));
        }
      }
      return;
    }
  }
  for (Request* r : decoding) {
    if (absl::Status s = FeedPending(*r); !s.ok()) {
      Finish(*r, FinishReason::kError, s);
      continue;
    }
    r->prefilled = static_cast<int64_t>(r->req.prompt_token_ids.size());
    ++decode_tokens;
    ++decode_batches;
    Sample(*r, r->logits);
  }
}

void Engine::Impl::PublishCounts() {
  int64_t running = 0;
  for (auto& [id, r] : active) running += r->running;
  std::lock_guard<std::mutex> lock(mu);
  running_count = running;
  waiting_count =
      static_cast<int64_t>(active.size()) - running + static_cast<int64_t>(submitted.size());
}

// Feeds through the sequence; when the pool is full, moves idle sessions out of it (least
// recently used first) and tries once more.
absl::StatusOr<std::vector<float>> Engine::Impl::Feed(Request& r, absl::Span<const int32_t> ids,
                                                      absl::Span<const uint8_t> spans,
                                                      bool logits) {
  if (fail_steps > 0) {
    --fail_steps;
    return absl::InternalError("injected model step failure");
  }
  auto timed_feed = [&] {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::vector<float>> out = std::vector<float>{};
    if (logits) {
      out = Sequence(r)->Feed(ids, false, spans);
    } else if (absl::Status s = Sequence(r)->Prefill(ids, spans); !s.ok()) {
      out = s;
    }
    model_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
  };
  auto result = timed_feed();
  if (!absl::IsResourceExhausted(result.status())) return result;
  const int64_t need = (static_cast<int64_t>(ids.size()) / pool->block_tokens() + 3) * pool->block_bytes();
  auto freed = sessions->OffloadLeastRecentlyUsed(need);
  if (!freed.ok() || *freed == 0) return result;
  return timed_feed();
}

absl::Status Engine::Impl::FeedPending(Request& r, bool logits) {
  if (r.pending < 0) return absl::OkStatus();
  const int32_t token = r.pending;
  ASSIGN_OR_RETURN(r.logits, Feed(r, {&token, 1}, {}, logits));
  r.pending = -1;
  return absl::OkStatus();
}

void Engine::Impl::Sample(Request& r, absl::Span<const float> logits) {
  Accept(r, r.sampler->Sample(logits, r.history));
}

// `token` is the request's next token: record it, then stop or stream it.
void Engine::Impl::Accept(Request& r, int32_t token) {
  r.history.push_back(token);
  ++r.generated;
  r.pending = token;  // fed at the next step (or at commit)
  const auto& eos = info.config.eos_token_ids;
  const bool stop = (!r.req.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) ||
                    std::find(r.req.stop_token_ids.begin(), r.req.stop_token_ids.end(), token) !=
                        r.req.stop_token_ids.end();
  if (stop) {
    Finish(r, FinishReason::kStop, absl::OkStatus());
    return;
  }
  const uint64_t id = r.id;
  Emit(r, token);
  if (!active.count(id)) return;  // a stop string ended it (and destroyed r)
  if (r.generated >= r.req.max_tokens) Finish(r, FinishReason::kLength, absl::OkStatus());
}

void Engine::Impl::Emit(Request& r, int32_t token) {
  StreamEvent event;
  event.token_ids = {token};
  if (r.detokenizer) r.held_text += r.detokenizer->Push(token);
  // Stop strings: emit text up to a match, hold back any suffix that could start one.
  size_t cut = std::string::npos;
  for (const std::string& stop : r.req.stop_strings) {
    const size_t at = r.held_text.find(stop);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    event.text = r.held_text.substr(0, cut);
    r.held_text.clear();
    r.detokenizer.reset();  // nothing after the stop string is shown
    r.sink->OnEvent(std::move(event));
    Finish(r, FinishReason::kStop, absl::OkStatus());
    return;
  }
  size_t keep = 0;
  for (const std::string& stop : r.req.stop_strings) {
    for (size_t len = std::min(stop.size() - 1, r.held_text.size()); len > keep; --len) {
      if (r.held_text.compare(r.held_text.size() - len, len, stop, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  event.text = r.held_text.substr(0, r.held_text.size() - keep);
  r.held_text.erase(0, r.held_text.size() - keep);
  r.sink->OnEvent(std::move(event));
}

void Engine::Impl::Finish(Request& r, FinishReason reason, absl::Status status) {
  StreamEvent event;
  event.final = true;
  event.finish_reason = reason;
  const bool completed = reason == FinishReason::kStop || reason == FinishReason::kLength;
  cache::PagedSequence* seq = r.running ? Sequence(r) : nullptr;
  if (completed && !r.req.session_id.empty() && seq != nullptr) {
    // The session's history holds the whole turn, its last token included.
    if (absl::Status fed = FeedPending(r, /*logits=*/false); !fed.ok()) {
      reason = FinishReason::kError;
      status = fed;
    }
  }
  if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
    if (r.detokenizer) r.held_text += r.detokenizer->Flush();
    event.text = std::move(r.held_text);  // held back for stop strings that never matched
  }
  event.finish_reason = reason;
  event.status = status;
  event.usage.prompt_tokens = static_cast<int64_t>(r.req.prompt_token_ids.size());
  event.usage.completion_tokens = r.generated;
  event.usage.cached_tokens = r.cached_tokens;
  event.usage.kv_before = r.kv_before;
  event.usage.queue_time = r.queue_time;
  event.usage.position_policy = r.req.position_policy;
  if (seq != nullptr) event.usage.kv = seq->accounting();
  if (!r.req.session_id.empty() && r.session_acquired) {
    if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
      absl::Status committed = sessions->Commit(r.req.tenant, r.req.session_id, r.handle,
                                                event.usage.kv);
      if (committed.ok()) {
        r.handle = 0;  // the store owns it now
      } else {
        event.finish_reason = FinishReason::kError;
        event.status = committed;
        (void)sessions->Abandon(r.req.tenant, r.req.session_id);
      }
    } else {
      (void)sessions->Abandon(r.req.tenant, r.req.session_id);
    }
  }
  if (r.handle != 0) resident->Release(r.handle);  // one-shot, or a turn that did not commit
  r.sink->OnEvent(std::move(event));
  active.erase(r.id);  // destroys r (and a preempted request's host copy)
  PublishCounts();
}

}  // namespace anchorserve::scheduler
