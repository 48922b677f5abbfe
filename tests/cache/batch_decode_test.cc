// PagedSequence::DecodeBatch computes what one Feed() per sequence computes: the same logits
// and the same kept state, for sequences in different modes, position policies, lengths and
// phases of a sentence (anchors and pads among the decoded tokens). On a GPU the paged CUDA
// kernel, eager and through CUDA graphs, is checked against the gathering reference on the
// same bf16 weights.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

#include "cache/paged_sequence.h"
#include "gtest/gtest.h"
#include "tests/model/test_util.h"

namespace anchorserve::cache {
namespace {

using ::anchorserve::testing::MaxAbsDiff;
using model::AttentionMode;
using model::PositionPolicy;

constexpr int32_t kAnchor = 7;
constexpr int32_t kPad = 3;

model::ModelConfig Config(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  return c;
}

std::unique_ptr<BlockPool> MakePool(const model::LlamaModel& llama, int64_t block_tokens,
                                    int64_t blocks) {
  BlockPoolOptions options;
  options.geometry = GeometryOf(llama.config(), llama.options().precision);
  options.device = llama.options().device;
  options.precision = llama.options().precision;
  options.block_tokens = block_tokens;
  options.budget_bytes = blocks * block_tokens * options.geometry.bytes_per_token();
  auto pool = BlockPool::Create(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *std::move(pool) : nullptr;
}

// Random sentences closed by the anchor, optionally with pads sprinkled in.
std::vector<int32_t> Text(std::mt19937_64& rng, int64_t tokens, bool pads) {
  std::vector<int32_t> ids = {1};
  while (static_cast<int64_t>(ids.size()) < tokens) {
    const uint64_t r = rng() % 100;
    if (r < 9) {
      ids.push_back(kAnchor);
    } else if (pads && r < 12) {
      ids.push_back(kPad);
    } else {
      int32_t id;
      do id = static_cast<int32_t>(8 + rng() % 56);
      while (id == kAnchor);
      ids.push_back(id);
    }
  }
  return ids;
}

struct Case {
  AttentionMode mode;
  PositionPolicy policy;
  int64_t prompt;
};

// Twin sequences: one decoded through DecodeBatch, one through Feed, both prefilled alike.
struct Twins {
  std::vector<std::unique_ptr<PagedSequence>> batched, single;
  std::vector<std::vector<int32_t>> streams;  // per sequence: tokens to decode
};

Twins MakeTwins(const model::LlamaModel* llama, BlockPool* pool, const std::vector<Case>& cases,
                int64_t steps, bool pads, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Twins t;
  for (const Case& c : cases) {
    PagedSequenceOptions o;
    o.mode = c.mode;
    o.policy = c.policy;
    o.anchors = model::CustomAnchors({kAnchor}, kPad);
    auto a = PagedSequence::Create(llama, pool, o);
    auto b = PagedSequence::Create(llama, pool, o);
    EXPECT_TRUE(a.ok() && b.ok());
    const std::vector<int32_t> prompt = Text(rng, c.prompt, pads);
    std::vector<uint8_t> spans(prompt.size(), 0);
    if (c.prompt > 6) spans[2] = spans[3] = 1;  // a kept-full span where the mode allows one
    EXPECT_TRUE((*a)->Feed(prompt, false, spans).ok());
    EXPECT_TRUE((*b)->Feed(prompt, false, spans).ok());
    t.batched.push_back(*std::move(a));
    t.single.push_back(*std::move(b));
    std::vector<int32_t> stream = Text(rng, steps + 1, pads);
    t.streams.push_back(std::vector<int32_t>(stream.begin() + 1, stream.end()));
  }
  return t;
}

void ExpectSameState(const PagedSequence& a, const PagedSequence& b, double tolerance) {
  const auto ea = a.entries(), eb = b.entries();
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i) {
    EXPECT_EQ(ea[i].token, eb[i].token);
    EXPECT_EQ(ea[i].position, eb[i].position);
    EXPECT_EQ(ea[i].kind, eb[i].kind);
  }
  EXPECT_EQ(a.next_position(), b.next_position());
  EXPECT_EQ(a.blocks_held(), b.blocks_held());
  EXPECT_EQ(a.accounting().anchors, b.accounting().anchors);
  auto sa = a.Snapshot(), sb = b.Snapshot();
  ASSERT_TRUE(sa.ok() && sb.ok());
  ASSERT_EQ(sa->kv.size(), sb->kv.size());
  if (sa->dtype == "float32") {
    std::vector<float> fa(sa->kv.size() / 4), fb(sb->kv.size() / 4);
    std::memcpy(fa.data(), sa->kv.data(), sa->kv.size());
    std::memcpy(fb.data(), sb->kv.data(), sb->kv.size());
    EXPECT_LE(MaxAbsDiff(fa, fb), tolerance);
  }
}

const std::vector<Case> kCases = {
    {AttentionMode::kAnchor, PositionPolicy::kAbsolute, 37},
    {AttentionMode::kAnchor, PositionPolicy::kCompact, 5},
    {AttentionMode::kFull, PositionPolicy::kAbsolute, 23},
    {AttentionMode::kAnchor, PositionPolicy::kAbsolute, 1},
    {AttentionMode::kFull, PositionPolicy::kCompact, 61},
};

TEST(DecodeBatchTest, EqualsOneFeedPerSequenceOnCpu) {
  for (bool pads : {false, true}) {
    auto llama = model::LlamaModel::CreateRandom(Config(64, 4, 2, 16), 99, {}, 0.15);
    ASSERT_TRUE(llama.ok());
    auto pool = MakePool(**llama, 4, 512);
    Twins t = MakeTwins(llama->get(), pool.get(), kCases, 24, pads, pads ? 5 : 6);
    const int64_t vocab = (*llama)->config().vocab_size;
    for (int64_t step = 0; step < 24; ++step) {
      std::vector<PagedSequence*> seqs;
      std::vector<int32_t> tokens;
      for (size_t i = 0; i < kCases.size(); ++i) {
        seqs.push_back(t.batched[i].get());
        tokens.push_back(t.streams[i][step]);
      }
      // Odd steps ask for the greedy ids only.
      std::vector<int32_t> greedy;
      auto got = PagedSequence::DecodeBatch(seqs, tokens, {}, step % 2 ? &greedy : nullptr);
      ASSERT_TRUE(got.ok()) << got.status();
      if (step % 2) {
        EXPECT_TRUE(got->empty());
        ASSERT_EQ(greedy.size(), seqs.size());
      } else {
        ASSERT_EQ(static_cast<int64_t>(got->size()), vocab * static_cast<int64_t>(seqs.size()));
      }
      for (size_t i = 0; i < seqs.size(); ++i) {
        auto want = t.single[i]->Feed({&tokens[i], 1}, false);
        ASSERT_TRUE(want.ok());
        if (step % 2) {
          const int32_t argmax = static_cast<int32_t>(
              std::max_element(want->begin(), want->end()) - want->begin());
          EXPECT_EQ(greedy[i], argmax) << "sequence " << i << " step " << step;
          continue;
        }
        EXPECT_LE(MaxAbsDiff(testing::Row(*got, vocab, static_cast<int64_t>(i)), *want), 1e-5)
            << "sequence " << i << " step " << step << " token " << tokens[i];
      }
    }
    for (size_t i = 0; i < kCases.size(); ++i) ExpectSameState(*t.batched[i], *t.single[i], 1e-5);
    t.batched.clear();
    t.single.clear();
    EXPECT_EQ(pool->used_blocks(), 0);
  }
}

TEST(DecodeBatchTest, FailuresChangeNothing) {
  auto llama = model::LlamaModel::CreateRandom(Config(64, 4, 2, 16), 7, {}, 0.15);
  ASSERT_TRUE(llama.ok());
  auto pool = MakePool(**llama, 4, 256);
  // Prompts that end a block exactly, so every next token needs a fresh block.
  Twins t = MakeTwins(llama->get(), pool.get(),
                      {{AttentionMode::kFull, PositionPolicy::kAbsolute, 8},
                       {AttentionMode::kFull, PositionPolicy::kAbsolute, 12},
                       {AttentionMode::kFull, PositionPolicy::kAbsolute, 16}},
                      2, false, 3);
  std::vector<PagedSequence*> seqs = {t.batched[0].get(), t.batched[1].get(), t.batched[2].get()};
  const std::vector<int32_t> tokens = {20, 21, 22};
  const int64_t used = pool->used_blocks();
  for (int64_t nth = 1; nth <= 3; ++nth) {
    pool->TEST_FailAllocation(nth);
    auto failed = PagedSequence::DecodeBatch(seqs, tokens);
    EXPECT_TRUE(absl::IsResourceExhausted(failed.status())) << failed.status();
    EXPECT_EQ(pool->used_blocks(), used);
    for (size_t i = 0; i < seqs.size(); ++i) ExpectSameState(*t.batched[i], *t.single[i], 0);
  }
  pool->TEST_FailAllocation(0);

  auto mismatch = PagedSequence::DecodeBatch(seqs, {20, 21});
  EXPECT_TRUE(absl::IsInvalidArgument(mismatch.status()));
  auto twice = PagedSequence::DecodeBatch({seqs[0], seqs[0]}, {20, 21});
  EXPECT_TRUE(absl::IsInvalidArgument(twice.status()));
  auto outside = PagedSequence::DecodeBatch(seqs, {20, 64, 22});
  EXPECT_TRUE(absl::IsInvalidArgument(outside.status()));
  EXPECT_NE(outside.status().message().find("vocabulary"), std::string::npos);
  DecodeOptions kernel_only;
  kernel_only.attention = DecodeAttention::kKernel;
  auto refused = PagedSequence::DecodeBatch(seqs, tokens, kernel_only);  // a CPU model
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_EQ(pool->used_blocks(), used);
  for (size_t i = 0; i < seqs.size(); ++i) ExpectSameState(*t.batched[i], *t.single[i], 0);

  auto ok = PagedSequence::DecodeBatch(seqs, tokens);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(pool->used_blocks(), used + 3);
}

// The CUDA kernel (eager and graph-replayed) against the gathering reference on the same
// bf16 weights, over many steps of sequences of mixed modes and lengths, head_dim 64 and 128.
TEST(DecodeBatchTest, CudaKernelMatchesReference) {
  if (!model::CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  model::LoadOptions load;
  load.device = model::Device::kCuda;
  load.precision = model::Precision::kBFloat16;
  for (int64_t head_dim : {64, 128}) {
    auto llama =
        model::LlamaModel::CreateRandom(Config(256, 256 / head_dim, 128 / head_dim, head_dim),
                                        17, load, 0.05);
    ASSERT_TRUE(llama.ok()) << llama.status();
    auto pool = MakePool(**llama, 16, 4096);
    std::vector<Case> cases = kCases;
    cases.push_back({AttentionMode::kFull, PositionPolicy::kAbsolute, 700});
    cases.push_back({AttentionMode::kAnchor, PositionPolicy::kAbsolute, 900});
    for (bool graphs : {false, true}) {
      Twins t = MakeTwins(llama->get(), pool.get(), cases, 40, false, head_dim + graphs);
      DecodeOptions kernel;
      kernel.attention = DecodeAttention::kKernel;
      kernel.cuda_graphs = graphs;
      DecodeOptions reference;
      reference.attention = DecodeAttention::kReference;
      double worst = 0, scale = 0;
      for (int64_t step = 0; step < 40; ++step) {
        // Batch sizes vary, so several graph buckets are captured and replayed.
        const size_t n = 1 + static_cast<size_t>(step) % cases.size();
        std::vector<PagedSequence*> a, b;
        std::vector<int32_t> tokens;
        for (size_t i = 0; i < n; ++i) {
          a.push_back(t.batched[i].get());
          b.push_back(t.single[i].get());
          tokens.push_back(t.streams[i][step]);
        }
        auto got = PagedSequence::DecodeBatch(a, tokens, kernel);
        ASSERT_TRUE(got.ok()) << got.status();
        auto want = PagedSequence::DecodeBatch(b, tokens, reference);
        ASSERT_TRUE(want.ok()) << want.status();
        worst = std::max(worst, MaxAbsDiff(*got, *want));
        for (float v : *want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
      }
      // bf16: both paths round activations to 8 bits of mantissa at different points.
      EXPECT_LE(worst, 2e-2 * scale) << "head_dim " << head_dim << " graphs " << graphs;
      for (size_t i = 0; i < cases.size(); ++i) {
        EXPECT_EQ(t.batched[i]->entries().size(), t.single[i]->entries().size());
        EXPECT_EQ(t.batched[i]->blocks_held(), t.single[i]->blocks_held());
      }
      std::printf("head_dim %lld graphs %d: max |kernel - reference| %.4g (max |logit| %.3g)\n",
                  static_cast<long long>(head_dim), graphs, worst, scale);
    }
  }
}

}  // namespace
}  // namespace anchorserve::cache
