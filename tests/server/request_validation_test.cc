#include "server/request_validation.h"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/anchors.h"
#include "model/tokenizer.h"

namespace anchorserve::server {
namespace {

namespace v1 = ::anchorserve::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The default model's tokenizer (<AC> = 4), kept beside the fuzzers that use it too.
const std::string kModelDir =
    std::string(ANCHORSERVE_TEST_DATA_DIR) + "/../../fuzz/data/default_model";

model::AnchorSpec AcAnchors() {
  model::AnchorSpec spec;
  spec.kind = model::AnchorKind::kAc;
  spec.token_ids = {4};
  spec.pad_id = 3;
  spec.anchor_token = "<AC>";
  return spec;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(RequestValidationTest, SessionIds) {
  EXPECT_TRUE(ValidateSessionId("chat-1_a.b").ok());
  EXPECT_TRUE(ValidateSessionId(std::string(128, 'x')).ok());
  EXPECT_THAT(Message(ValidateSessionId("")), HasSubstr("must not be empty"));
  EXPECT_THAT(Message(ValidateSessionId(std::string(129, 'x'))), HasSubstr("at most 128"));
  for (const char* bad : {"a b", "a/b", "ä", "a\n"}) {
    EXPECT_EQ(ValidateSessionId(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ValidateSessionId(absl::string_view("a\0b", 3)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RequestValidationTest, ExactlyOneInputAndKnownEnums) {
  v1::GenerateRequest r;
  EXPECT_THAT(Message(ValidateGenerateRequest(r)), HasSubstr("exactly one of prompt"));
  r.set_prompt("hi");
  EXPECT_TRUE(ValidateGenerateRequest(r).ok());
  r.add_messages("hi");
  EXPECT_THAT(Message(ValidateGenerateRequest(r)), HasSubstr("exactly one of prompt"));
  r.clear_messages();
  r.set_mode(static_cast<v1::AttentionMode>(9));
  EXPECT_EQ(Message(ValidateGenerateRequest(r)), "mode: unknown value");
  r.set_mode(v1::ATTENTION_MODE_FULL);
  r.set_position_policy(static_cast<v1::PositionPolicy>(-1));
  EXPECT_EQ(Message(ValidateGenerateRequest(r)), "position_policy: unknown value");
  r.set_position_policy(v1::POSITION_POLICY_COMPACT);
  r.set_anchor_insertion(static_cast<v1::AnchorInsertion>(5));
  EXPECT_EQ(Message(ValidateGenerateRequest(r)), "anchor_insertion: unknown value");
}

TEST(RequestValidationTest, TokenIdsPassThroughAndTextNeedsATokenizer) {
  v1::GenerateRequest ids;
  for (int id : {1, -5, 99999}) ids.add_prompt_token_ids(id);  // the engine checks the range
  absl::StatusOr<std::vector<int32_t>> tokens =
      PromptTokens(ids, nullptr, AcAnchors(), v1::ANCHOR_INSERTION_SENTENCES, true);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ElementsAre(1, -5, 99999));

  v1::GenerateRequest text;
  text.set_prompt("Hello.");
  EXPECT_EQ(PromptTokens(text, nullptr, AcAnchors(), v1::ANCHOR_INSERTION_SENTENCES, true)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(RequestValidationTest, AnchorsAreInsertedPerInsertionMode) {
  absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer = model::Tokenizer::Load(kModelDir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const model::AnchorSpec anchors = AcAnchors();
  auto anchors_in = [&](const v1::GenerateRequest& r, v1::AnchorInsertion fallback) {
    absl::StatusOr<std::vector<int32_t>> ids =
        PromptTokens(r, tokenizer->get(), anchors, fallback, /*add_bos=*/true);
    if (!ids.ok()) {
      ADD_FAILURE() << ids.status();
      return std::ptrdiff_t{-1};
    }
    EXPECT_EQ(ids->front(), (*tokenizer)->bos_id());
    return std::count(ids->begin(), ids->end(), 4);
  };
  v1::GenerateRequest prompt;
  prompt.set_prompt("One sentence. Another one! A third?");
  EXPECT_EQ(anchors_in(prompt, v1::ANCHOR_INSERTION_SENTENCES), 3);
  EXPECT_EQ(anchors_in(prompt, v1::ANCHOR_INSERTION_MESSAGES), 1);
  EXPECT_EQ(anchors_in(prompt, v1::ANCHOR_INSERTION_NONE), 0);
  prompt.set_anchor_insertion(v1::ANCHOR_INSERTION_NONE);  // the request's own choice wins
  EXPECT_EQ(anchors_in(prompt, v1::ANCHOR_INSERTION_SENTENCES), 0);

  v1::GenerateRequest client;
  client.set_prompt("Written by the client.<AC> Twice.<AC>");
  client.set_anchor_insertion(v1::ANCHOR_INSERTION_CLIENT);
  EXPECT_EQ(anchors_in(client, v1::ANCHOR_INSERTION_SENTENCES), 2);

  v1::GenerateRequest messages;
  messages.add_messages("System. Be brief.");
  messages.add_messages("Hi.");
  EXPECT_EQ(anchors_in(messages, v1::ANCHOR_INSERTION_SENTENCES), 2);  // one per message
  EXPECT_EQ(anchors_in(messages, v1::ANCHOR_INSERTION_NONE), 0);
}

TEST(RequestValidationTest, GenerationRequestCarriesTheFields) {
  v1::GenerateRequest r;
  r.set_session_id("s");
  r.set_max_tokens(7);
  r.set_temperature(0.0f);
  r.set_top_p(0.5f);
  r.add_stop("\n");
  r.add_stop_token_ids(2);
  auto* span = r.add_kept_full_spans();
  span->set_begin(1);
  span->set_end(2);
  r.set_include_anchor_tokens(true);
  r.set_ignore_eos(true);
  r.set_priority(-3);
  const scheduler::GenerationRequest g = ToGenerationRequest(
      r, {1, 2, 3}, v1::ATTENTION_MODE_FULL, v1::POSITION_POLICY_COMPACT, /*default_seed=*/99);
  EXPECT_EQ(g.session_id, "s");
  EXPECT_THAT(g.prompt_token_ids, ElementsAre(1, 2, 3));
  EXPECT_EQ(g.max_tokens, 7);
  EXPECT_EQ(g.sampling.temperature, 0.0f);  // set to the default's opposite: kept
  EXPECT_EQ(g.sampling.top_p, 0.5f);
  EXPECT_EQ(g.sampling.top_k, 0);  // unset: model::SamplingParams' default
  EXPECT_EQ(g.sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(g.sampling.seed, 99u);
  EXPECT_EQ(g.mode, model::AttentionMode::kFull);  // UNSPECIFIED takes the server default
  EXPECT_EQ(g.position_policy, model::PositionPolicy::kCompact);
  EXPECT_THAT(g.stop_strings, ElementsAre("\n"));
  EXPECT_THAT(g.stop_token_ids, ElementsAre(2));
  ASSERT_EQ(g.kept_full_spans.size(), 1u);
  EXPECT_EQ(g.kept_full_spans[0].begin, 1);
  EXPECT_EQ(g.kept_full_spans[0].end, 2);
  EXPECT_TRUE(g.include_anchor_tokens);
  EXPECT_TRUE(g.ignore_eos);
  EXPECT_EQ(g.priority, -3);

  r.set_seed(5);
  r.set_mode(v1::ATTENTION_MODE_ANCHOR);
  r.set_position_policy(v1::POSITION_POLICY_ABSOLUTE);
  const scheduler::GenerationRequest h =
      ToGenerationRequest(r, {}, v1::ATTENTION_MODE_FULL, v1::POSITION_POLICY_COMPACT, 99);
  EXPECT_EQ(h.sampling.seed, 5u);
  EXPECT_EQ(h.mode, model::AttentionMode::kAnchor);
  EXPECT_EQ(h.position_policy, model::PositionPolicy::kAbsolute);
}

TEST(RequestValidationTest, PagesTokenizeAndImport) {
  v1::ListSessionsRequest list;
  EXPECT_EQ(*ListSessionsPageSize(list), 100);
  list.set_page_size(1000);
  EXPECT_EQ(*ListSessionsPageSize(list), 1000);
  for (int bad : {-1, 1001}) {
    list.set_page_size(bad);
    EXPECT_THAT(Message(ListSessionsPageSize(list).status()), HasSubstr("page_size"));
  }

  v1::TokenizeRequest tokenize;
  EXPECT_THAT(Message(TokenizeRequestAsPrompt(tokenize).status()), HasSubstr("text"));
  tokenize.set_text("Hi.");
  tokenize.set_anchor_insertion(v1::ANCHOR_INSERTION_NONE);
  absl::StatusOr<v1::GenerateRequest> prompt = TokenizeRequestAsPrompt(tokenize);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(prompt->prompt(), "Hi.");
  EXPECT_EQ(prompt->anchor_insertion(), v1::ANCHOR_INSERTION_NONE);

  v1::ImportSessionRequest import;
  import.set_state("x");
  EXPECT_THAT(Message(ValidateImportSessionRequest(import)), HasSubstr("session_id"));
  import.set_session_id("ok");
  import.clear_state();
  EXPECT_THAT(Message(ValidateImportSessionRequest(import)), HasSubstr("state"));
  import.set_state("x");  // decoding the state is the engine's
  EXPECT_TRUE(ValidateImportSessionRequest(import).ok());
}

}  // namespace
}  // namespace anchorserve::server
