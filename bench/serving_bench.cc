// Engine benchmarks 4 and 5 of the engine issue, through the real scheduler::Engine API.
//
// Benchmark 4, multi-turn serving: K concurrent sessions of T turns each; a turn is a user
// message of a few sentences of real text (with <AC> inserted after each sentence, as the
// server's default `sentences` insertion does, BOS on the first turn only) followed by --gen
// generated tokens (greedy, ignore_eos). Sessions run free: each submits its next turn as soon
// as the previous one finished (no think time). Run in anchor mode, then in full mode, in one
// engine. Per turn: TTFT (Submit -> first streamed token) and TPOT (mean inter-token time of
// the turn). Reported per mode: p50/p99 TTFT and TPOT over all turns, p50 TTFT of the last turn
// over p50 TTFT of turn 1, and the KV a session keeps after its last turn (Engine::GetSession);
// full bytes / anchor bytes per session = sessions held at equal KV memory.
//
// Benchmark 5, engine CPU overhead per step: --batch concurrent one-shot requests decoding
// --batch-gen tokens each. EngineStats is read once every request streams (all are decoding)
// and again before the first can finish, so the window holds only full-batch decode steps.
// Reported: engine-thread time per step, the part inside model forwards, overhead = step -
// model (planning, sampling, stops, streaming) and its share of the step, the mean decode
// batch, and the wall time per step seen by the client.
//
//   serving_bench [--model models/anllm-ac-20m] [--device cpu|cuda] [--dtype float32|bfloat16]
//                 [--sessions 16] [--turns 20] [--gen 32] [--batch 64] [--batch-gen 128]
//                 [--kv-budget-mb 0] [--threads N] [--text FILE] [--json PATH]
//
// --kv-budget-mb 0 sizes the pool so that every full-mode session stays resident (what is
// measured is the sessions' KV, not pressure). Progress goes to stderr, the Markdown tables to
// stdout. Exit codes: 0, 1 when the engine fails or a request ends in error, 2 for bad flags.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/block_pool.h"
#include "model/anchors.h"
#include "model/model_config.h"
#include "model/sentence_splitter.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "scheduler/engine.h"

namespace anchorserve::bench {
namespace {

using scheduler::Engine;
using scheduler::FinishReason;
using scheduler::GenerationRequest;
using scheduler::StreamEvent;
using scheduler::StreamSink;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Built-in text (plain narrative English in the style of the model's Gutenberg training data),
// so that the benchmark runs without ../shared. --text replaces it.
constexpr const char* kBuiltinText[] = {
    "The village lay at the foot of a long green hill, and a narrow road wound down to it from "
    "the moor. In the summer the children ran barefoot along the road and gathered berries in "
    "the hedges. The miller's house stood by the stream, and its great wheel turned slowly all "
    "day long. Nobody in the village could remember a time when the wheel had been still.",
    "One morning in early autumn a stranger came down the hill with a pack upon his back. He "
    "walked slowly, as a man walks who has come a long way and does not know where he will "
    "sleep. At the inn he asked for bread and cheese and a glass of cider. The landlord's wife "
    "looked at his worn boots and gave him a bowl of soup as well.",
    "He said that his name was Thomas and that he had been a sailor for twenty years. He had "
    "seen the ice of the north and the hot harbours of the south. Now he wished only to find a "
    "quiet place where he might mend nets and watch the weather. The landlord told him that the "
    "miller wanted a man to help with the sacks.",
    "So Thomas went to the mill and stayed there through the winter. He was a quiet worker and "
    "never complained of the cold. In the evenings he sat by the fire and told the miller's "
    "children stories of the sea. They listened with wide eyes, and the youngest girl would "
    "not go to bed until the story was done.",
    "When the spring came the stream rose higher than it had risen for many years. The rain "
    "fell for nine days without stopping, and the fields below the mill were under water. On "
    "the tenth night there was a sound like thunder from the hill. The old dam above the "
    "village had given way.",
    "Thomas was the first to understand what had happened. He ran from house to house in the "
    "dark, knocking on every door and shouting to the people to climb the hill. Some of them "
    "thought he was mad and would not come. But the miller believed him, and together they "
    "carried the old and the sick up the slope.",
    "By morning the water had passed, and the village was full of mud and broken fences. Not "
    "one person had been lost. The people stood on the hill and looked down at their houses, "
    "and they did not know what to say. At last the landlord's wife went to Thomas and took "
    "his hand.",
    "After that nobody called him a stranger. The children followed him wherever he went, and "
    "the old men asked his opinion about the weather. He rebuilt the dam with the miller, "
    "stone by stone, through the long days of summer. When it was finished the whole village "
    "came to see the water rise behind it.",
    "Years later, when Thomas was old, he still walked every evening to the top of the hill. "
    "From there he could see the village, the mill and the silver line of the stream. He said "
    "that it was the finest harbour he had ever found. The children who had listened to his "
    "stories now told them to their own children.",
};

struct Flags {
  std::string model_dir = "models/anllm-ac-20m";
  std::string device = "cpu", dtype = "float32", text_file, json_path;
  int sessions = 16, turns = 20, gen = 32, batch = 64, batch_gen = 128, threads = 0;
  int64_t kv_budget_mb = 0;
};

// Sentences of --text (lines of at least 40 bytes, split), else of the built-in text.
std::vector<std::string> LoadSentences(const std::string& text_file) {
  std::vector<std::string> out;
  auto add = [&](const std::string& paragraph) {
    for (std::string& s : model::SplitSentenceStrings(paragraph)) {
      if (s.size() >= 8) out.push_back(std::move(s));
    }
  };
  if (!text_file.empty()) {
    std::ifstream in(text_file);
    std::string line;
    while (std::getline(in, line) && out.size() < 100000) {
      if (line.size() >= 40 && line != "<|endoftext|>") add(line);
    }
  } else {
    for (const char* p : kBuiltinText) add(p);
  }
  return out;
}

// The prompt of one turn: 3-5 consecutive sentences, anchors inserted the way the server's
// default insertion (`sentences`) does, BOS on the session's first turn only.
std::vector<int32_t> TurnPrompt(const std::vector<std::string>& sentences, int session, int turn,
                                const model::Tokenizer& tokenizer,
                                const model::AnchorSpec& anchors) {
  const size_t n = sentences.size();
  const size_t first = (static_cast<size_t>(session) * 7 + static_cast<size_t>(turn) * 4) % n;
  const int count = 3 + (session + turn) % 3;
  std::string text;
  for (int i = 0; i < count; ++i) {
    if (!text.empty()) text += " ";
    text += sentences[(first + i) % n];
  }
  if (anchors.kind == model::AnchorKind::kAc) {
    text = model::InsertAnchorsAtSentenceEnds(text, anchors.anchor_token, false);
  }
  return tokenizer.Encode(text, /*add_bos=*/turn == 0);
}

// What the client saw of one request.
struct RequestRecord {
  int session = 0;
  int turn = 0;
  double submit = 0;
  double first = -1;  // first token
  double last = -1;   // latest token
  int64_t tokens = 0;
  bool done = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;
  scheduler::Usage usage;

  double ttft() const { return first - submit; }
  double tpot() const {
    return tokens >= 2 ? (last - first) / static_cast<double>(tokens - 1) : -1;
  }
};

// Shared by the sinks of one phase and the driving thread. Sinks run on the engine thread, so
// they only record and notify (they hold `mu` for a few assignments, never wait).
struct Board {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> finished;  // record indexes whose final event arrived, in order
  int streaming = 0;          // records with at least one token
  int marked = 0;             // records that reached `mark` tokens
  int64_t mark = 0;           // 0: not tracked
};

class RecordingSink : public StreamSink {
 public:
  RecordingSink(Board* board, RequestRecord* record, int index)
      : board_(board), record_(record), index_(index) {}

  void OnEvent(StreamEvent event) override {
    const double now = Now();
    std::lock_guard<std::mutex> lock(board_->mu);
    bool notify = false;
    if (!event.token_ids.empty()) {
      if (record_->first < 0) {
        record_->first = now;
        ++board_->streaming;
        notify = true;
      }
      record_->last = now;
      const int64_t before = record_->tokens;
      record_->tokens += static_cast<int64_t>(event.token_ids.size());
      if (board_->mark > 0 && before < board_->mark && record_->tokens >= board_->mark) {
        ++board_->marked;
        notify = true;
      }
    }
    if (event.final) {
      record_->done = true;
      record_->reason = event.finish_reason;
      record_->status = event.status;
      record_->usage = event.usage;
      board_->finished.push_back(index_);
      notify = true;
    }
    if (notify) board_->cv.notify_all();
  }

 private:
  Board* board_;
  RequestRecord* record_;
  int index_;
};

bool Failed(const RequestRecord& r) {
  return r.reason != FinishReason::kLength && r.reason != FinishReason::kStop;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::max(1.0, std::ceil(p / 100.0 * v.size())));
  return v[std::min(rank, v.size()) - 1];
}

struct SessionsResult {
  std::string mode;
  std::vector<RequestRecord> records;  // session * turns + turn
  std::vector<cache::SessionInfo> infos;
  int errors = 0;
  double wall_seconds = 0;
  // Derived.
  double ttft_p50 = 0, ttft_p99 = 0, tpot_p50 = 0, tpot_p99 = 0;
  double ttft_first_p50 = 0, ttft_second_p50 = 0, ttft_last_p50 = 0, prompt_tokens_per_turn = 0;
  double kept_tokens = 0, full_tokens = 0, kept_bytes = 0, held_bytes = 0;
  std::string tiers;
};

void Summarize(SessionsResult& r, int turns) {
  std::vector<double> ttft, tpot, first, second, last;
  double prompt_tokens = 0;
  int ok = 0;
  for (const RequestRecord& rec : r.records) {
    if (!rec.done || Failed(rec) || rec.first < 0) continue;
    ++ok;
    prompt_tokens += static_cast<double>(rec.usage.prompt_tokens);
    ttft.push_back(rec.ttft());
    if (rec.tpot() >= 0) tpot.push_back(rec.tpot());
    if (rec.turn == 0) first.push_back(rec.ttft());
    if (rec.turn == 1) second.push_back(rec.ttft());
    if (rec.turn == turns - 1) last.push_back(rec.ttft());
  }
  r.ttft_p50 = Percentile(ttft, 50);
  r.ttft_p99 = Percentile(ttft, 99);
  r.tpot_p50 = Percentile(tpot, 50);
  r.tpot_p99 = Percentile(tpot, 99);
  r.ttft_first_p50 = Percentile(first, 50);
  r.ttft_second_p50 = Percentile(second, 50);
  r.ttft_last_p50 = Percentile(last, 50);
  r.prompt_tokens_per_turn = ok == 0 ? 0 : prompt_tokens / ok;
  std::vector<std::string> tiers;
  for (const cache::SessionInfo& info : r.infos) {
    r.kept_tokens += static_cast<double>(info.accounting.kept_tokens);
    r.full_tokens += static_cast<double>(info.accounting.full_tokens);
    r.kept_bytes += static_cast<double>(info.accounting.kept_bytes());
    r.held_bytes += static_cast<double>(info.bytes);
    const std::string tier(cache::SessionTierName(info.tier));
    if (std::find(tiers.begin(), tiers.end(), tier) == tiers.end()) tiers.push_back(tier);
  }
  const double n = r.infos.empty() ? 1.0 : static_cast<double>(r.infos.size());
  r.kept_tokens /= n;
  r.full_tokens /= n;
  r.kept_bytes /= n;
  r.held_bytes /= n;
  for (const std::string& t : tiers) r.tiers += (r.tiers.empty() ? "" : "+") + t;
}

GenerationRequest Request(std::vector<int32_t> prompt, int32_t max_tokens,
                          model::AttentionMode mode) {
  GenerationRequest r;
  r.tenant = "bench";
  r.prompt_token_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;  // greedy
  r.ignore_eos = true;
  r.mode = mode;
  return r;
}

// Benchmark 4 in one mode: every session's turns in order, all sessions concurrently.
SessionsResult RunSessions(Engine& engine, model::AttentionMode mode,
                           const std::vector<std::vector<std::vector<int32_t>>>& prompts,
                           const Flags& flags) {
  SessionsResult result;
  result.mode = std::string(model::AttentionModeName(mode));
  const int sessions = flags.sessions, turns = flags.turns;
  result.records.resize(static_cast<size_t>(sessions) * turns);
  auto id_of = [&](int s) { return absl::StrCat(result.mode, "-", s); };
  for (int s = 0; s < sessions; ++s) {
    if (absl::Status st = engine.CreateSession("bench", id_of(s)); !st.ok()) {
      std::fprintf(stderr, "serving_bench: CreateSession: %s\n", st.ToString().c_str());
      result.errors = sessions;
      return result;
    }
  }
  Board board;
  int outstanding = 0;
  auto submit = [&](int s, int t) {
    const int index = s * turns + t;
    RequestRecord& rec = result.records[index];
    rec.session = s;
    rec.turn = t;
    GenerationRequest request = Request(prompts[s][t], flags.gen, mode);
    request.session_id = id_of(s);
    auto sink = std::make_shared<RecordingSink>(&board, &rec, index);
    rec.submit = Now();
    auto id = engine.Submit(std::move(request), std::move(sink));
    if (!id.ok()) {
      std::lock_guard<std::mutex> lock(board.mu);
      rec.done = true;
      rec.reason = FinishReason::kError;
      rec.status = id.status();
      board.finished.push_back(index);
    }
    ++outstanding;
  };
  const double start = Now();
  for (int s = 0; s < sessions; ++s) submit(s, 0);
  std::vector<int> completed(turns, 0);
  while (outstanding > 0) {
    std::vector<int> finished;
    {
      std::unique_lock<std::mutex> lock(board.mu);
      board.cv.wait(lock, [&] { return !board.finished.empty(); });
      finished.swap(board.finished);
    }
    for (int index : finished) {
      --outstanding;
      const RequestRecord& rec = result.records[index];
      if (Failed(rec)) {
        ++result.errors;
        std::fprintf(stderr, "serving_bench: %s session %d turn %d ended %s: %s\n",
                     result.mode.c_str(), rec.session, rec.turn + 1,
                     std::string(scheduler::FinishReasonName(rec.reason)).c_str(),
                     rec.status.ToString().c_str());
        continue;  // the session stops here
      }
      if (++completed[rec.turn] == sessions) {
        std::fprintf(stderr,
                     "serving_bench: %s mode: turn %d/%d done by all %d sessions (%.1f s)\n",
                     result.mode.c_str(), rec.turn + 1, turns, sessions, Now() - start);
      }
      if (rec.turn + 1 < turns) submit(rec.session, rec.turn + 1);
    }
  }
  result.wall_seconds = Now() - start;
  for (int s = 0; s < sessions; ++s) {
    auto info = engine.GetSession("bench", id_of(s));
    if (info.ok()) {
      result.infos.push_back(*info);
    } else {
      std::fprintf(stderr, "serving_bench: GetSession: %s\n", info.status().ToString().c_str());
      ++result.errors;
    }
  }
  // Free the pool for the next phase.
  for (int s = 0; s < sessions; ++s) (void)engine.DeleteSession("bench", id_of(s));
  Summarize(result, turns);
  return result;
}

struct OverheadResult {
  int batch = 0;
  int64_t steps = 0, decode_tokens = 0, decode_batches = 0;
  double step_seconds = 0, model_seconds = 0;
  double window_seconds = 0;
  int64_t window_tokens = 0;  // tokens streamed to clients inside the window
  int errors = 0;
};

// Benchmark 5: `batch` one-shot requests at once; the EngineStats window spans from when all
// of them stream to shortly before the first can finish.
OverheadResult RunOverhead(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                           const Flags& flags) {
  OverheadResult result;
  result.batch = flags.batch;
  std::vector<RequestRecord> records(flags.batch);
  Board board;
  // Close the window a few tokens before the end so that no request has finished yet.
  const int margin = std::clamp(flags.batch_gen / 8, 1, 8);
  board.mark = std::max(2, flags.batch_gen - margin);
  for (int i = 0; i < flags.batch; ++i) {
    auto sink = std::make_shared<RecordingSink>(&board, &records[i], i);
    records[i].session = i;
    records[i].submit = Now();
    auto id = engine.Submit(
        Request(prompts[i % prompts.size()], flags.batch_gen, model::AttentionMode::kAnchor),
        std::move(sink));
    if (!id.ok()) {
      std::fprintf(stderr, "serving_bench: Submit: %s\n", id.status().ToString().c_str());
      std::lock_guard<std::mutex> lock(board.mu);
      records[i].done = true;
      records[i].reason = FinishReason::kError;
      board.finished.push_back(i);
    }
  }
  auto tokens_now = [&] {
    int64_t n = 0;
    for (const RequestRecord& r : records) n += r.tokens;
    return n;
  };
  scheduler::EngineStats before, after;
  double t_before = 0, t_after = 0;
  int64_t tokens_before = 0, tokens_after = 0;
  {
    std::unique_lock<std::mutex> lock(board.mu);
    board.cv.wait(lock, [&] {
      return board.streaming + static_cast<int>(board.finished.size()) >= flags.batch;
    });
  }
  before = engine.Stats();
  t_before = Now();
  {
    std::lock_guard<std::mutex> lock(board.mu);
    tokens_before = tokens_now();
  }
  std::fprintf(stderr, "serving_bench: overhead: all %d requests streaming; window open\n",
               flags.batch);
  {
    std::unique_lock<std::mutex> lock(board.mu);
    board.cv.wait(lock, [&] { return board.marked > 0 || !board.finished.empty(); });
  }
  after = engine.Stats();
  t_after = Now();
  {
    std::lock_guard<std::mutex> lock(board.mu);
    tokens_after = tokens_now();
  }
  std::fprintf(stderr, "serving_bench: overhead: window closed after %lld steps\n",
               static_cast<long long>(after.steps - before.steps));
  {
    std::unique_lock<std::mutex> lock(board.mu);
    board.cv.wait(lock, [&] { return static_cast<int>(board.finished.size()) >= flags.batch; });
  }
  for (const RequestRecord& r : records) {
    if (Failed(r)) {
      ++result.errors;
      std::fprintf(stderr, "serving_bench: overhead request %d ended %s: %s\n", r.session,
                   std::string(scheduler::FinishReasonName(r.reason)).c_str(),
                   r.status.ToString().c_str());
    }
  }
  result.steps = after.steps - before.steps;
  result.step_seconds = after.step_seconds - before.step_seconds;
  result.model_seconds = after.model_seconds - before.model_seconds;
  result.decode_tokens = after.decode_tokens - before.decode_tokens;
  result.decode_batches = after.decode_batches - before.decode_batches;
  result.window_seconds = t_after - t_before;
  result.window_tokens = tokens_after - tokens_before;
  return result;
}

bool ParseInt(const std::string& v, int64_t* out) {
  try {
    size_t used = 0;
    *out = std::stoll(v, &used);
    return used == v.size();
  } catch (...) {
    return false;
  }
}

// Bad flags print one line and return false.
bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "serving_bench: %s needs a value\n", k.c_str());
      return false;
    }
    const std::string v = argv[i + 1];
    int64_t n = 0;
    auto positive = [&](auto* out) {
      if (!ParseInt(v, &n) || n <= 0 || n > 1'000'000) {
        std::fprintf(stderr, "serving_bench: %s wants a positive integer, got %s\n", k.c_str(),
                     v.c_str());
        return false;
      }
      *out = static_cast<std::remove_pointer_t<decltype(out)>>(n);
      return true;
    };
    bool ok = true;
    if (k == "--model")
      f->model_dir = v;
    else if (k == "--device")
      f->device = v;
    else if (k == "--dtype")
      f->dtype = v;
    else if (k == "--text")
      f->text_file = v;
    else if (k == "--json")
      f->json_path = v;
    else if (k == "--sessions")
      ok = positive(&f->sessions);
    else if (k == "--turns")
      ok = positive(&f->turns);
    else if (k == "--gen")
      ok = positive(&f->gen);
    else if (k == "--batch")
      ok = positive(&f->batch);
    else if (k == "--batch-gen")
      ok = positive(&f->batch_gen);
    else if (k == "--threads")
      ok = positive(&f->threads);
    else if (k == "--kv-budget-mb") {
      ok = ParseInt(v, &f->kv_budget_mb) && f->kv_budget_mb >= 0;
      if (!ok) std::fprintf(stderr, "serving_bench: --kv-budget-mb wants an integer >= 0\n");
    } else {
      std::fprintf(stderr, "serving_bench: unknown flag %s\n", k.c_str());
      return false;
    }
    if (!ok) return false;
  }
  if (f->batch_gen < 2) {
    std::fprintf(stderr, "serving_bench: --batch-gen must be at least 2\n");
    return false;
  }
  return true;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string Ms(double seconds) { return Fixed(1e3 * seconds, 2); }

int Main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  auto device = model::ParseDevice(flags.device);
  auto precision = model::ParsePrecision(flags.dtype);
  if (!device.ok() || !precision.ok()) {
    std::fprintf(stderr, "serving_bench: --device cpu|cuda, --dtype float32|bfloat16\n");
    return 2;
  }
  const std::vector<std::string> sentences = LoadSentences(flags.text_file);
  if (sentences.size() < 8) {
    std::fprintf(stderr, "serving_bench: too little text (%zu sentences)\n", sentences.size());
    return 2;
  }
  auto config = model::LoadModelConfig(flags.model_dir);
  if (!config.ok()) {
    std::fprintf(stderr, "serving_bench: %s\n", config.status().ToString().c_str());
    return 1;
  }
  const int64_t bytes_per_token = cache::GeometryOf(*config, *precision).bytes_per_token();

  scheduler::EngineOptions options;
  options.model_dir = flags.model_dir;
  options.load.device = *device;
  options.load.precision = *precision;
  options.load.num_threads = flags.threads;
  options.max_running = std::max({64, flags.sessions, flags.batch});
  options.max_waiting = std::max(256, 2 * options.max_running);
  options.max_new_tokens = std::max({4096, flags.gen, flags.batch_gen});
  if (flags.kv_budget_mb > 0) {
    options.kv_budget_bytes = flags.kv_budget_mb << 20;
  } else {
    // Every full-mode session resident at its last turn (prompts of at most ~5 sentences of
    // ~30 tokens), or the overhead batch, whichever is larger, plus a quarter.
    const int64_t per_turn = 5 * 48 + flags.gen + options.block_tokens;
    const int64_t sessions_tokens = int64_t{flags.sessions} * flags.turns * per_turn;
    const int64_t batch_tokens =
        int64_t{flags.batch} * (5 * 48 + flags.batch_gen + 2 * options.block_tokens);
    const int64_t need = std::max(sessions_tokens, batch_tokens) * bytes_per_token * 5 / 4;
    options.kv_budget_bytes = std::max<int64_t>(need, int64_t{256} << 20);
  }
  std::fprintf(stderr, "serving_bench: loading %s on %s (%s), KV pool %.0f MB...\n",
               flags.model_dir.c_str(), flags.device.c_str(), flags.dtype.c_str(),
               options.kv_budget_bytes / 1048576.0);
  auto created = Engine::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "serving_bench: %s\n", created.status().ToString().c_str());
    return 1;
  }
  Engine& engine = **created;
  const model::Tokenizer* tokenizer = engine.tokenizer();
  if (tokenizer == nullptr) {
    std::fprintf(stderr, "serving_bench: %s has no tokenizer.model\n", flags.model_dir.c_str());
    return 1;
  }
  const model::AnchorSpec& anchors = engine.model_info().anchors;

  std::vector<std::vector<std::vector<int32_t>>> prompts(flags.sessions);
  for (int s = 0; s < flags.sessions; ++s) {
    for (int t = 0; t < flags.turns; ++t) {
      prompts[s].push_back(TurnPrompt(sentences, s, t, *tokenizer, anchors));
    }
  }
  std::vector<std::vector<int32_t>> one_shot;
  for (int i = 0; i < std::min(flags.batch, 64); ++i) {
    one_shot.push_back(TurnPrompt(sentences, i, 0, *tokenizer, anchors));
  }

  // Warm-up: a few short requests in both modes, so that first-use costs (allocator, thread
  // pools, CUDA kernels) do not land in the first mode's turn 1.
  {
    Flags warm = flags;
    warm.batch = std::min(flags.batch, 8);
    warm.batch_gen = 4;
    for (model::AttentionMode mode : {model::AttentionMode::kAnchor, model::AttentionMode::kFull}) {
      Board board;
      std::vector<RequestRecord> records(warm.batch);
      for (int i = 0; i < warm.batch; ++i) {
        auto sink = std::make_shared<RecordingSink>(&board, &records[i], i);
        if (!engine.Submit(Request(one_shot[i % one_shot.size()], warm.batch_gen, mode), sink)
                 .ok()) {
          std::lock_guard<std::mutex> lock(board.mu);
          board.finished.push_back(i);
        }
      }
      std::unique_lock<std::mutex> lock(board.mu);
      board.cv.wait(lock, [&] { return static_cast<int>(board.finished.size()) >= warm.batch; });
    }
    std::fprintf(stderr, "serving_bench: warmed up\n");
  }

  std::vector<SessionsResult> modes;
  for (model::AttentionMode mode : {model::AttentionMode::kAnchor, model::AttentionMode::kFull}) {
    std::fprintf(stderr, "serving_bench: benchmark 4, %s mode: %d sessions x %d turns, gen %d\n",
                 std::string(model::AttentionModeName(mode)).c_str(), flags.sessions, flags.turns,
                 flags.gen);
    modes.push_back(RunSessions(engine, mode, prompts, flags));
  }
  // Benchmark 4 table.
  const SessionsResult& anchor = modes[0];
  const SessionsResult& full = modes[1];
  auto ratio = [](double num, double den) { return den > 0 ? num / den : 0.0; };
  const double sessions_ratio_held = ratio(full.held_bytes, anchor.held_bytes);
  const double sessions_ratio_kept = ratio(full.kept_bytes, anchor.kept_bytes);
  std::printf(
      "Benchmark 4, multi-turn serving: %s, %s, %s, %d sessions x %d turns, "
      "%d tokens generated per turn\n\n",
      flags.model_dir.c_str(), flags.device.c_str(), flags.dtype.c_str(), flags.sessions,
      flags.turns, flags.gen);
  std::printf(
      "| mode | prompt tok/turn | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | "
      "TTFT turn 1 p50 ms | TTFT turn %d p50 ms | TTFT turn %d / turn 1 | kept tok/session | "
      "history tok/session | kept KV MB/session | held KV MB/session | tier |\n",
      flags.turns, flags.turns);
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const SessionsResult& m : modes) {
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                m.mode.c_str(), Fixed(m.prompt_tokens_per_turn, 1).c_str(), Ms(m.ttft_p50).c_str(),
                Ms(m.ttft_p99).c_str(), Ms(m.tpot_p50).c_str(), Ms(m.tpot_p99).c_str(),
                Ms(m.ttft_first_p50).c_str(), Ms(m.ttft_last_p50).c_str(),
                Fixed(ratio(m.ttft_last_p50, m.ttft_first_p50), 2).c_str(),
                Fixed(m.kept_tokens, 1).c_str(), Fixed(m.full_tokens, 1).c_str(),
                Fixed(m.kept_bytes / 1e6, 3).c_str(), Fixed(m.held_bytes / 1e6, 3).c_str(),
                m.tiers.empty() ? "-" : m.tiers.c_str());
  }
  std::printf(
      "\nSessions held at equal KV memory (full / anchor bytes per session): **%.1fx** "
      "by held bytes (block-granular), %.1fx by kept tokens (goal >= 15x). "
      "TTFT(turn %d)/TTFT(turn 1) in anchor mode: **%.2f** (goal <= 1.3); full mode %.2f.\n",
      sessions_ratio_held, sessions_ratio_kept, flags.turns,
      ratio(anchor.ttft_last_p50, anchor.ttft_first_p50),
      ratio(full.ttft_last_p50, full.ttft_first_p50));
  if (flags.turns >= 2) {
    // Turn 1 of every session arrives at once, before any decode runs, so its TTFT has no
    // decode steps ahead of it; from turn 2 on, sessions arrive while others decode.
    std::printf("TTFT(turn %d)/TTFT(turn 2), both in steady state: anchor %.2f, full %.2f.\n",
                flags.turns, ratio(anchor.ttft_last_p50, anchor.ttft_second_p50),
                ratio(full.ttft_last_p50, full.ttft_second_p50));
  }
  std::printf("\n");

  std::fflush(stdout);  // the first table stands even if benchmark 5 is cut short

  std::fprintf(stderr, "serving_bench: benchmark 5: %d one-shot requests x %d tokens\n",
               flags.batch, flags.batch_gen);
  const OverheadResult overhead = RunOverhead(engine, one_shot, flags);

  // Benchmark 5 table.
  const double steps = static_cast<double>(overhead.steps);
  const bool timed = overhead.step_seconds > 0 && overhead.steps > 0;
  const double step_ms = steps > 0 ? 1e3 * overhead.step_seconds / steps : 0;
  const double model_ms = steps > 0 ? 1e3 * overhead.model_seconds / steps : 0;
  const double mean_batch =
      overhead.decode_batches > 0
          ? static_cast<double>(overhead.decode_tokens) / overhead.decode_batches
          : 0;
  std::printf(
      "Benchmark 5, engine CPU overhead per step: %d concurrent one-shot requests x %d "
      "tokens, anchor mode\n\n",
      flags.batch, flags.batch_gen);
  std::printf(
      "| batch | steps | mean decode batch | step ms | model ms | overhead ms | "
      "overhead %% of step | wall ms/step | decode tok/s |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::printf("| %d | %lld | %s | %s | %s | %s | %s | %s | %s |\n", overhead.batch,
              static_cast<long long>(overhead.steps),
              overhead.decode_batches > 0 ? Fixed(mean_batch, 1).c_str() : "n/a",
              timed ? Fixed(step_ms, 3).c_str() : "n/a", timed ? Fixed(model_ms, 3).c_str() : "n/a",
              timed ? Fixed(step_ms - model_ms, 3).c_str() : "n/a",
              timed ? Fixed(100.0 * (step_ms - model_ms) / step_ms, 1).c_str() : "n/a",
              Fixed(steps > 0 ? 1e3 * overhead.window_seconds / steps : 0, 3).c_str(),
              Fixed(ratio(static_cast<double>(overhead.window_tokens), overhead.window_seconds), 1)
                  .c_str());
  if (!timed) {
    std::printf("\nn/a: the engine reported no step timings (EngineStats step_seconds = 0).\n");
  }

  const int errors = anchor.errors + full.errors + overhead.errors;
  if (!flags.json_path.empty()) {
    nlohmann::json j;
    j["model"] = flags.model_dir;
    j["device"] = flags.device;
    j["dtype"] = flags.dtype;
    j["kv_budget_bytes"] = options.kv_budget_bytes;
    j["bytes_per_token"] = bytes_per_token;
    j["errors"] = errors;
    nlohmann::json b4;
    b4["sessions"] = flags.sessions;
    b4["turns"] = flags.turns;
    b4["gen"] = flags.gen;
    for (const SessionsResult& m : modes) {
      nlohmann::json x;
      x["wall_seconds"] = m.wall_seconds;
      x["errors"] = m.errors;
      x["prompt_tokens_per_turn"] = m.prompt_tokens_per_turn;
      x["ttft_ms"] = {{"p50", 1e3 * m.ttft_p50},
                      {"p99", 1e3 * m.ttft_p99},
                      {"turn1_p50", 1e3 * m.ttft_first_p50},
                      {"last_turn_p50", 1e3 * m.ttft_last_p50}};
      x["ttft_last_over_first"] = ratio(m.ttft_last_p50, m.ttft_first_p50);
      x["ttft_last_over_second"] = ratio(m.ttft_last_p50, m.ttft_second_p50);
      x["tpot_ms"] = {{"p50", 1e3 * m.tpot_p50}, {"p99", 1e3 * m.tpot_p99}};
      x["kv_per_session"] = {{"kept_tokens", m.kept_tokens},
                             {"history_tokens", m.full_tokens},
                             {"kept_bytes", m.kept_bytes},
                             {"held_bytes", m.held_bytes},
                             {"tier", m.tiers}};
      // Per turn p50 TTFT, for the curve over the chat.
      std::vector<double> per_turn;
      for (int t = 0; t < flags.turns; ++t) {
        std::vector<double> v;
        for (const RequestRecord& r : m.records) {
          if (r.turn == t && r.done && !Failed(r) && r.first >= 0) v.push_back(r.ttft());
        }
        per_turn.push_back(1e3 * Percentile(v, 50));
      }
      x["ttft_p50_ms_by_turn"] = per_turn;
      b4[m.mode] = x;
    }
    b4["sessions_at_equal_kv_memory"] = {{"held_bytes", sessions_ratio_held},
                                         {"kept_bytes", sessions_ratio_kept}};
    j["benchmark4"] = b4;
    nlohmann::json b5;
    b5["batch"] = flags.batch;
    b5["gen"] = flags.batch_gen;
    b5["steps"] = overhead.steps;
    b5["step_seconds"] = overhead.step_seconds;
    b5["model_seconds"] = overhead.model_seconds;
    b5["decode_tokens"] = overhead.decode_tokens;
    b5["decode_batches"] = overhead.decode_batches;
    b5["window_seconds"] = overhead.window_seconds;
    b5["window_tokens"] = overhead.window_tokens;
    b5["mean_decode_batch"] = overhead.decode_batches > 0 ? nlohmann::json(mean_batch) : nullptr;
    b5["step_ms"] = timed ? nlohmann::json(step_ms) : nullptr;
    b5["model_ms"] = timed ? nlohmann::json(model_ms) : nullptr;
    b5["overhead_ms"] = timed ? nlohmann::json(step_ms - model_ms) : nullptr;
    b5["overhead_fraction"] = timed ? nlohmann::json((step_ms - model_ms) / step_ms) : nullptr;
    b5["errors"] = overhead.errors;
    j["benchmark5"] = b5;
    std::ofstream out(flags.json_path);
    out << j.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "serving_bench: cannot write %s\n", flags.json_path.c_str());
      return 1;
    }
  }
  if (errors > 0) {
    std::fprintf(stderr, "serving_bench: %d request(s) failed\n", errors);
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace anchorserve::bench

int main(int argc, char** argv) { return anchorserve::bench::Main(argc, argv); }
