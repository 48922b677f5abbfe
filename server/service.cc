#include "server/service.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "model/tokenizer.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "server/tsan_annotations.h"

namespace anchorserve::server {

namespace v1 = ::anchorserve::v1;

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// ------------------------------------------------------------------------- Executor

Executor::Executor(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        std::function<void()> fn;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
          if (queue_.empty()) return;
          fn = std::move(queue_.front());
          queue_.pop_front();
        }
        fn();
      }
    });
  }
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Executor::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(fn));
  }
  cv_.notify_one();
}

// ------------------------------------------------------------------------- helpers

namespace {

v1::FinishReason ReasonOf(scheduler::FinishReason reason) {
  switch (reason) {
    case scheduler::FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case scheduler::FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case scheduler::FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case scheduler::FinishReason::kTimedOut: return v1::FINISH_REASON_TIMED_OUT;
    case scheduler::FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case scheduler::FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::SessionTier TierOf(cache::SessionTier tier) {
  switch (tier) {
    case cache::SessionTier::kEmpty: return v1::SESSION_TIER_EMPTY;
    case cache::SessionTier::kResident: return v1::SESSION_TIER_RESIDENT;
    case cache::SessionTier::kHost: return v1::SESSION_TIER_HOST;
    case cache::SessionTier::kDisk: return v1::SESSION_TIER_DISK;
  }
  return v1::SESSION_TIER_UNSPECIFIED;
}

void FillTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  out->set_seconds(nanos / 1000000000);
  out->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

void FillSession(const cache::SessionInfo& info, v1::Session* out) {
  out->set_session_id(info.session_id);
  out->set_tier(TierOf(info.tier));
  out->set_turns(info.turns);
  out->set_kept_kv_tokens(info.accounting.kept_tokens);
  out->set_full_kv_tokens(info.accounting.full_tokens);
  out->set_cache_reduction(info.accounting.reduction());
  out->set_kept_kv_bytes(info.accounting.kept_bytes());
  out->set_full_kv_bytes(info.accounting.full_bytes());
  out->set_anchors(info.accounting.anchors);
  FillTimestamp(info.created, out->mutable_create_time());
  FillTimestamp(info.last_used, out->mutable_last_used_time());
}

void FillUsage(const scheduler::Usage& usage, v1::Usage* out) {
  out->set_prompt_tokens(usage.prompt_tokens);
  out->set_completion_tokens(usage.completion_tokens);
  out->set_cached_tokens(usage.cached_tokens);
  out->set_kept_kv_tokens(usage.kv.kept_tokens);
  out->set_full_kv_tokens(usage.kv.full_tokens);
  out->set_cache_reduction(usage.kv.reduction());
  out->set_kept_kv_bytes(usage.kv.kept_bytes());
  out->set_full_kv_bytes(usage.kv.full_bytes());
  out->set_anchors(usage.kv.anchors);
  out->set_position_policy(usage.position_policy == model::PositionPolicy::kCompact
                               ? v1::POSITION_POLICY_COMPACT
                               : v1::POSITION_POLICY_ABSOLUTE);
}

// limits.max_sessions_per_tenant: ResourceExhausted when `tenant` already holds `limit`
// sessions. (Checked before the engine adds one, not atomically with it: concurrent creates of
// one tenant can pass it together, by at most the number of executor threads.)
absl::Status RoomForSession(scheduler::WorkerPool& workers, const std::string& tenant,
                            int32_t limit) {
  if (static_cast<int64_t>(workers.ListSessions(tenant).size()) < limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("sessions: the tenant already holds the maximum of ", limit));
}

}  // namespace

// ------------------------------------------------------------------------- Generate

// One Generate stream. Lifetime: created by Generate, deleted in OnDone. The engine holds the
// Sink (a shared_ptr) and may outlive the reactor: the sink then drops events.
class AnchorServeService::GenerateReactor
    : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // Events reach the reactor only after Open(): the engine may finish a request before
  // Submit() has recorded its id, and the reactor may be deleted as soon as it finishes.
  class Sink : public scheduler::StreamSink {
   public:
    explicit Sink(GenerateReactor* reactor) : reactor_(reactor) {}
    // Recursive: a final write may complete inline and run OnDone (Detach) on this thread.
    void OnEvent(scheduler::StreamEvent event) override {
      std::lock_guard<std::recursive_mutex> lock(mu_);
      if (reactor_ == nullptr) return;
      if (!open_) {
        early_.push_back(std::move(event));
        return;
      }
      reactor_->Enqueue(std::move(event));
    }
    void Open() {
      std::lock_guard<std::recursive_mutex> lock(mu_);
      open_ = true;
      std::deque<scheduler::StreamEvent> early;
      early.swap(early_);
      for (auto& event : early) {
        if (reactor_ == nullptr) break;
        reactor_->Enqueue(std::move(event));
      }
    }
    void Detach() {
      std::lock_guard<std::recursive_mutex> lock(mu_);
      reactor_ = nullptr;
    }

   private:
    std::recursive_mutex mu_;
    GenerateReactor* reactor_;
    bool open_ = false;
    std::deque<scheduler::StreamEvent> early_;
  };

  GenerateReactor(AnchorServeService* service, grpc::CallbackServerContext* context,
                  const v1::GenerateRequest* request)
      : service_(service),
        context_(context),
        request_(*request),
        start_(absl::Now()),
        deadline_(context->deadline() == std::chrono::system_clock::time_point::max()
                      ? absl::InfiniteFuture()
                      : absl::FromChrono(context->deadline())) {
    ++service_->active_streams_;
    sink_ = std::make_shared<Sink>(this);
    auto tenant = service_->Authenticate(*context);
    if (!tenant.ok()) {
      FinishWith(ToGrpc(tenant.status()));
      return;
    }
    if (service_->draining_) {
      FinishWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining"));
      return;
    }
    tenant_ = *tenant;
    service_->executor_.Post([this] { Submit(); });
  }

  void OnWriteDone(bool ok) override {
    TsanTakeBack(this);
    if (!ok) CancelEngineRequest();  // the client went away: stop generating
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) broken_ = true;
    WriteNextLocked(lock);
    TsanHandOff(this);  // OnDone runs only after this reaction returns
  }

  void OnCancel() override {
    TsanTakeBack(this);
    CancelEngineRequest();
    TsanHandOff(this);  // OnDone runs only after this reaction returns
  }

  void OnDone() override {
    TsanTakeBack(this);
    sink_->Detach();
    CancelEngineRequest();  // no-op when finished
    --service_->active_streams_;
    delete this;
  }

 private:
  void Submit() {
    std::vector<int32_t> prompt;
    bool add_bos = true;
    if (!request_.session_id().empty()) {
      auto info = service_->workers_->GetSession(tenant_, request_.session_id());
      if (!info.ok()) {
        FinishWith(ToGrpc(info.status()));
        return;
      }
      add_bos = info->turns == 0 || request_.add_bos();
    }
    auto tokens = service_->PromptTokens(request_, add_bos);
    if (!tokens.ok()) {
      FinishWith(ToGrpc(tokens.status()));
      return;
    }
    const ServiceOptions& options = service_->options_;
    scheduler::GenerationRequest r = ToGenerationRequest(
        request_, *std::move(tokens), options.default_mode, options.default_policy,
        static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
    r.tenant = tenant_;
    if (context_->deadline() != std::chrono::system_clock::time_point::max()) {
      r.deadline = absl::FromChrono(context_->deadline());
    }
    auto id = service_->workers_->Submit(std::move(r), sink_);
    if (!id.ok()) {
      if (absl::IsResourceExhausted(id.status()) && service_->metrics_ != nullptr) {
        service_->metrics_->RecordQueueRejection();
      }
      FinishWith(ToGrpc(id.status()));
      return;
    }
    request_id_ = absl::StrCat("r-", *id);
    pool_id_ = *id;
    submitted_ = true;
    if (cancel_requested_) service_->workers_->Cancel(*id);
    // From here on the reactor may be deleted at any moment: keep the sink alive locally.
    std::shared_ptr<Sink> sink = sink_;
    sink->Open();
  }

  void CancelEngineRequest() {
    cancel_requested_ = true;
    if (submitted_ && !finished_) service_->workers_->Cancel(pool_id_);
  }

  // Called on the engine thread (through the sink). Never blocks on the network.
  void Enqueue(scheduler::StreamEvent event) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!event.token_ids.empty()) {
      const absl::Time now = absl::Now();
      Metrics* m = service_->metrics_;
      if (first_token_time_ == absl::InfinitePast()) {
        first_token_time_ = now;
        if (m != nullptr) m->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - start_));
      } else if (m != nullptr) {
        m->ObserveInterTokenLatency(absl::ToDoubleSeconds(now - last_token_time_));
      }
      last_token_time_ = now;
    }
    // A call whose deadline passed is cancelled by gRPC (OnCancel), or by the client's own
    // deadline timer (a cancel that arrives a transit time before the server's copy of the
    // deadline), often before the engine's deadline check sees it: the stream timed out, its
    // client did not cancel it (cancellations_total{reason="deadline"}, DEADLINE_EXCEEDED).
    constexpr absl::Duration kDeadlineTransit = absl::Milliseconds(50);
    if (event.final && event.finish_reason == scheduler::FinishReason::kCancelled &&
        !absl::IsUnavailable(event.status) && absl::Now() + kDeadlineTransit >= deadline_) {
      event.finish_reason = scheduler::FinishReason::kTimedOut;
      event.status = absl::DeadlineExceededError("the request's deadline passed");
    }
    if (event.final) Observe(event);
    pending_.push_back(std::move(event));
    WriteNextLocked(lock);
  }

  // Starts the next write if none is outstanding; after the final event, finishes the call.
  void WriteNextLocked(std::unique_lock<std::mutex>& lock) {
    if (writing_ || done_ || pending_.empty()) return;
    scheduler::StreamEvent event = std::move(pending_.front());
    pending_.pop_front();
    if (broken_ && !event.final) {  // nobody reads any more: wait for the final event
      WriteNextLocked(lock);
      return;
    }
    current_.Clear();
    current_.set_text(event.text);
    current_.mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    current_.set_request_id(request_id_);
    if (event.final) {
      finished_ = true;
      done_ = true;
      current_.set_finish_reason(ReasonOf(event.finish_reason));
      FillUsage(event.usage, current_.mutable_usage());
      grpc::Status status = grpc::Status::OK;
      if (event.finish_reason == scheduler::FinishReason::kTimedOut) {
        status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed");
      } else if (!event.status.ok()) {
        status = ToGrpc(event.status);
      }
      Log(event, status);
      service_->Record(Rpc::kGenerate, status);
      lock.unlock();
      // The last message and the status go together; a cancelled client gets only the status.
      // Nothing touches `this` after these calls: OnDone may already have deleted it.
      TsanHandOff(this);
      if (broken_ || context_->IsCancelled()) {
        Finish(status);
      } else {
        StartWriteAndFinish(&current_, grpc::WriteOptions(), status);
      }
      return;
    }
    writing_ = true;
    lock.unlock();
    TsanHandOff(this);
    StartWrite(&current_);
  }

  // Request-level metrics of a finished stream.
  void Observe(const scheduler::StreamEvent& event) {
    Metrics* m = service_->metrics_;
    if (m == nullptr) return;
    m->ObserveRequestDuration(absl::ToDoubleSeconds(absl::Now() - start_));
    m->ObserveQueueTime(absl::ToDoubleSeconds(event.usage.queue_time));
    m->AddPromptTokens(event.usage.prompt_tokens);
    m->AddGenerationTokens(event.usage.completion_tokens);
    switch (event.finish_reason) {
      case scheduler::FinishReason::kStop:
      case scheduler::FinishReason::kLength: {
        TurnStats turn;
        turn.in_session = !request_.session_id().empty();
        const auto& b = event.usage.kv_before;
        const auto& a = event.usage.kv;
        turn.before = {b.kept_tokens, b.full_tokens, b.anchors};
        turn.after = {a.kept_tokens, a.full_tokens, a.anchors};
        turn.bytes_per_token = a.bytes_per_token;
        m->ObserveTurn(turn);
        break;
      }
      case scheduler::FinishReason::kCancelled:
        m->RecordCancellation(absl::IsUnavailable(event.status) ? CancellationReason::kDrain
                                                                : CancellationReason::kClient);
        break;
      case scheduler::FinishReason::kTimedOut:
        m->RecordCancellation(CancellationReason::kDeadline);
        break;
      default:
        break;
    }
  }

  void FinishWith(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return;
      done_ = true;
    }
    service_->Record(Rpc::kGenerate, status);
    TsanHandOff(this);
    Finish(status);
  }

  void Log(const scheduler::StreamEvent& event, const grpc::Status& status) {
    const double ttft = first_token_time_ == absl::InfinitePast()
                            ? -1
                            : absl::ToDoubleMilliseconds(first_token_time_ - start_);
    LogEvent("generate", request_id_, request_.session_id(),
             absl::StrFormat("status=%d finish=%s worker=%d prompt_tokens=%d completion_tokens=%d "
                             "cached_tokens=%d kept_kv=%d full_kv=%d ttft_ms=%.1f e2e_ms=%.1f",
                             static_cast<int>(status.error_code()),
                             scheduler::FinishReasonName(event.finish_reason),
                             submitted_ ? service_->workers_->WorkerOfRequest(pool_id_) : -1,
                             event.usage.prompt_tokens, event.usage.completion_tokens,
                             event.usage.cached_tokens, event.usage.kv.kept_tokens,
                             event.usage.kv.full_tokens, ttft,
                             absl::ToDoubleMilliseconds(absl::Now() - start_)));
  }

  AnchorServeService* service_;
  grpc::CallbackServerContext* context_;
  const v1::GenerateRequest request_;
  std::string tenant_;
  std::shared_ptr<Sink> sink_;
  std::atomic<bool> submitted_{false}, finished_{false}, cancel_requested_{false};
  uint64_t pool_id_ = 0;
  std::string request_id_;
  const absl::Time start_;
  const absl::Time deadline_;  // the client's, InfiniteFuture without one

  std::mutex mu_;  // guards the fields below
  std::deque<scheduler::StreamEvent> pending_;
  v1::GenerateResponse current_;
  bool writing_ = false;
  bool done_ = false;
  bool broken_ = false;  // a write failed: the client is gone
  absl::Time first_token_time_ = absl::InfinitePast();
  absl::Time last_token_time_ = absl::InfinitePast();
};

// ------------------------------------------------------------------------- service

AnchorServeService::AnchorServeService(scheduler::WorkerPool* workers, Metrics* metrics,
                                       ServiceOptions options)
    : workers_(workers),
      metrics_(metrics),
      options_(std::move(options)),
      executor_(options_.executor_threads) {}

AnchorServeService::~AnchorServeService() = default;

absl::StatusOr<std::string> AnchorServeService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (!options_.auth_enabled) return std::string("default");
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing authorization metadata (Bearer token)");
  }
  const std::string value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(value, kBearer)) {
    return absl::UnauthenticatedError("authorization must be \"Bearer <token>\"");
  }
  auto tenant = options_.tokens.find(value.substr(kBearer.size()));
  if (tenant == options_.tokens.end()) return absl::UnauthenticatedError("unknown token");
  return tenant->second;
}

absl::StatusOr<std::vector<int32_t>> AnchorServeService::PromptTokens(
    const v1::GenerateRequest& request, bool add_bos) const {
  return server::PromptTokens(request, workers_->tokenizer(), workers_->model_info().anchors,
                              options_.default_insertion, add_bos);
}

void AnchorServeService::Record(Rpc rpc, const grpc::Status& status) {
  // gRPC and Abseil number their status codes the same way.
  if (metrics_ != nullptr) metrics_->RecordRequest(rpc, static_cast<absl::StatusCode>(status.error_code()));
}

grpc::ServerUnaryReactor* AnchorServeService::Unary(
    grpc::CallbackServerContext* context, Rpc rpc,
    std::function<absl::Status(const std::string& tenant)> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto tenant = Authenticate(*context);
  if (!tenant.ok()) {
    const grpc::Status status = ToGrpc(tenant.status());
    Record(rpc, status);
    reactor->Finish(status);
    return reactor;
  }
  if (draining_) {
    const grpc::Status status(grpc::StatusCode::UNAVAILABLE, "the server is draining");
    Record(rpc, status);
    reactor->Finish(status);
    return reactor;
  }
  executor_.Post([this, reactor, rpc, tenant = *tenant, work = std::move(work)] {
    const grpc::Status status = ToGrpc(work(tenant));
    Record(rpc, status);
    reactor->Finish(status);
  });
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* AnchorServeService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* reactor = new GenerateReactor(this, context, request);
  TsanHandOff(reactor);
  return reactor;
}

grpc::ServerUnaryReactor* AnchorServeService::CreateSession(
    grpc::CallbackServerContext* context, const v1::CreateSessionRequest* request,
    v1::CreateSessionResponse* response) {
  return Unary(context, Rpc::kCreateSession, [this, request, response](const std::string& tenant) {
    std::string id = request->session_id();
    if (id.empty()) {
      id = absl::StrFormat("s-%016x-%d", absl::ToUnixNanos(absl::Now()), ++session_counter_);
    }
    if (absl::Status s = ValidateSessionId(id); !s.ok()) return s;
    if (absl::Status s = RoomForSession(*workers_, tenant, options_.max_sessions_per_tenant);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = workers_->CreateSession(tenant, id); !s.ok()) return s;
    auto info = workers_->GetSession(tenant, id);
    if (!info.ok()) return info.status();
    FillSession(*info, response->mutable_session());
    LogEvent("create_session", "-", id, "status=0");
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::GetSession(grpc::CallbackServerContext* context,
                                                         const v1::GetSessionRequest* request,
                                                         v1::GetSessionResponse* response) {
  return Unary(context, Rpc::kGetSession, [this, request, response](const std::string& tenant) {
    auto info = workers_->GetSession(tenant, request->session_id());
    if (!info.ok()) return info.status();
    FillSession(*info, response->mutable_session());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::ListSessions(
    grpc::CallbackServerContext* context, const v1::ListSessionsRequest* request,
    v1::ListSessionsResponse* response) {
  return Unary(context, Rpc::kListSessions, [this, request, response](const std::string& tenant) {
    absl::StatusOr<int32_t> page = ListSessionsPageSize(*request);
    if (!page.ok()) return page.status();
    std::vector<cache::SessionInfo> all = workers_->ListSessions(tenant);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      return a.session_id < b.session_id;
    });
    // The page token is the last session id of the previous page.
    auto it = all.begin();
    if (!request->page_token().empty()) {
      it = std::upper_bound(all.begin(), all.end(), request->page_token(),
                            [](const std::string& token, const cache::SessionInfo& info) {
                              return token < info.session_id;
                            });
    }
    for (int32_t n = 0; it != all.end() && n < *page; ++it, ++n) {
      FillSession(*it, response->add_sessions());
    }
    if (it != all.end()) response->set_next_page_token((it - 1)->session_id);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::DeleteSession(
    grpc::CallbackServerContext* context, const v1::DeleteSessionRequest* request,
    v1::DeleteSessionResponse*) {
  return Unary(context, Rpc::kDeleteSession, [this, request](const std::string& tenant) {
    absl::Status s = workers_->DeleteSession(tenant, request->session_id());
    LogEvent("delete_session", "-", request->session_id(), absl::StrCat("status=", s.code()));
    return s;
  });
}

grpc::ServerUnaryReactor* AnchorServeService::ExportSession(
    grpc::CallbackServerContext* context, const v1::ExportSessionRequest* request,
    v1::ExportSessionResponse* response) {
  return Unary(context, Rpc::kExportSession, [this, request, response](const std::string& tenant) {
    auto bytes = workers_->ExportSession(tenant, request->session_id());
    if (!bytes.ok()) return bytes.status();
    response->set_state(*std::move(bytes));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::ImportSession(
    grpc::CallbackServerContext* context, const v1::ImportSessionRequest* request,
    v1::ImportSessionResponse* response) {
  return Unary(context, Rpc::kImportSession, [this, request, response](const std::string& tenant) {
    if (absl::Status s = ValidateImportSessionRequest(*request); !s.ok()) return s;
    // An import adds a session (an existing id is ALREADY_EXISTS): the same limit as Create.
    if (absl::Status s = RoomForSession(*workers_, tenant, options_.max_sessions_per_tenant);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = workers_->ImportSession(tenant, request->session_id(), request->state());
        !s.ok()) {
      return s;
    }
    auto info = workers_->GetSession(tenant, request->session_id());
    if (!info.ok()) return info.status();
    FillSession(*info, response->mutable_session());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::GetModelInfo(grpc::CallbackServerContext* context,
                                                           const v1::GetModelInfoRequest*,
                                                           v1::GetModelInfoResponse* response) {
  return Unary(context, Rpc::kGetModelInfo, [this, response](const std::string&) {
    const scheduler::ModelInfo& info = workers_->model_info();
    const model::ModelConfig& c = info.config;
    response->set_model_name(info.model_dir);
    response->set_fingerprint(info.fingerprint);
    response->set_anchor_type(std::string(model::AnchorKindName(info.anchors.kind)));
    for (int32_t id : info.anchors.token_ids) response->add_anchor_token_ids(id);
    response->set_anchor_token(info.anchors.anchor_token);
    response->set_vocab_size(static_cast<int32_t>(c.vocab_size));
    response->set_max_position_embeddings(static_cast<int32_t>(c.max_position_embeddings));
    response->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
    response->set_hidden_size(static_cast<int32_t>(c.hidden_size));
    response->set_num_attention_heads(static_cast<int32_t>(c.num_attention_heads));
    response->set_num_key_value_heads(static_cast<int32_t>(c.num_key_value_heads));
    response->set_bos_token_id(c.bos_token_id);
    for (int32_t id : c.eos_token_ids) response->add_eos_token_ids(id);
    response->set_pad_token_id(info.anchors.pad_id);
    response->set_kv_bytes_per_token(2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim *
                                     (info.precision == model::Precision::kBFloat16 ? 2 : 4));
    response->set_dtype(std::string(model::PrecisionName(info.precision)));
    response->set_device(std::string(model::DeviceName(info.device)));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnchorServeService::Tokenize(grpc::CallbackServerContext* context,
                                                       const v1::TokenizeRequest* request,
                                                       v1::TokenizeResponse* response) {
  return Unary(context, Rpc::kTokenize, [this, request, response](const std::string&) {
    absl::StatusOr<v1::GenerateRequest> as_prompt = TokenizeRequestAsPrompt(*request);
    if (!as_prompt.ok()) return as_prompt.status();
    auto ids = PromptTokens(*as_prompt, request->add_bos());
    if (!ids.ok()) return ids.status();
    for (int32_t id : *ids) {
      response->add_token_ids(id);
      response->add_pieces(workers_->tokenizer()->IdToPiece(id));
    }
    return absl::OkStatus();
  });
}

}  // namespace anchorserve::server
