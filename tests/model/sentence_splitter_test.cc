#include "model/sentence_splitter.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace anchorserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<std::string> Split(absl::string_view text) { return SplitSentenceStrings(text); }

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// The contract of SplitSentences, checked on any input. Returns "" when it holds.
std::string CheckSpanInvariants(absl::string_view text, const std::vector<SentenceSpan>& spans) {
  std::vector<int> owner(text.size(), -1);
  size_t previous_end = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const SentenceSpan& s = spans[i];
    if (s.begin >= s.end) return absl::StrCat("span ", i, " is empty");
    if (s.end > text.size()) return absl::StrCat("span ", i, " ends past the text");
    if (i > 0 && s.begin < previous_end)
      return absl::StrCat("span ", i, " overlaps or is out of order");
    if (IsAsciiSpace(text[s.begin]) || IsAsciiSpace(text[s.end - 1])) {
      return absl::StrCat("span ", i, " is not trimmed");
    }
    // Never inside a multi-byte UTF-8 character: a boundary byte after the span (if any) is
    // whitespace, and the span starts right after whitespace or at the text start.
    if (s.begin > 0 && !IsAsciiSpace(text[s.begin - 1])) {
      return absl::StrCat("span ", i, " starts inside a word");
    }
    if (s.end < text.size() && !IsAsciiSpace(text[s.end])) {
      return absl::StrCat("span ", i, " ends inside a word");
    }
    for (size_t b = s.begin; b < s.end; ++b) owner[b] = static_cast<int>(i);
    previous_end = s.end;
  }
  for (size_t b = 0; b < text.size(); ++b) {
    if (!IsAsciiSpace(text[b]) && owner[b] < 0) {
      return absl::StrCat("non-whitespace byte ", b, " is in no span");
    }
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Basics, whitespace and offsets.

TEST(SentenceSplitterTest, EmptyAndWhitespaceOnlyInputHaveNoSentences) {
  EXPECT_THAT(SplitSentences(""), IsEmpty());
  EXPECT_THAT(SplitSentences(" \t\r\n\n \v\f "), IsEmpty());
}

TEST(SentenceSplitterTest, SplitsOnTerminalPunctuation) {
  EXPECT_THAT(Split("Hello world. How are you? I am fine!"),
              ElementsAre("Hello world.", "How are you?", "I am fine!"));
}

TEST(SentenceSplitterTest, TextWithoutTerminalPunctuationIsOneSentence) {
  EXPECT_THAT(Split("no punctuation at all"), ElementsAre("no punctuation at all"));
  EXPECT_THAT(Split("One. two three"), ElementsAre("One. two three"));
  EXPECT_THAT(Split("First. Second without end"), ElementsAre("First.", "Second without end"));
}

TEST(SentenceSplitterTest, SpansAreTrimmedByteOffsets) {
  const std::string text = "  \n Hello there.   General Kenobi!\t\n ";
  const std::vector<SentenceSpan> spans = SplitSentences(text);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0], (SentenceSpan{4, 16}));
  EXPECT_EQ(spans[1], (SentenceSpan{19, 34}));
  EXPECT_EQ(text.substr(spans[0].begin, spans[0].end - spans[0].begin), "Hello there.");
  EXPECT_EQ(text.substr(spans[1].begin, spans[1].end - spans[1].begin), "General Kenobi!");
  EXPECT_EQ(CheckSpanInvariants(text, spans), "");
}

TEST(SentenceSplitterTest, SingleNewlinesAreOrdinaryWhitespace) {
  EXPECT_THAT(Split("This sentence\nwraps over\r\nlines. And this\none too."),
              ElementsAre("This sentence\nwraps over\r\nlines.", "And this\none too."));
}

TEST(SentenceSplitterTest, BoundaryNeedsWhitespaceAfterTerminator) {
  EXPECT_THAT(Split("end.The next"), ElementsAre("end.The next"));
  EXPECT_THAT(Split("What?!No."), ElementsAre("What?!No."));
}

// ---------------------------------------------------------------------------------------------
// Paragraph breaks.

TEST(SentenceSplitterTest, BlankLinesAlwaysEndASentence) {
  EXPECT_THAT(Split("CHAPTER I\n\nIt was a dark night"),
              ElementsAre("CHAPTER I", "It was a dark night"));
  EXPECT_THAT(Split("a heading\n   \t\nlower case body"),
              ElementsAre("a heading", "lower case body"));
  EXPECT_THAT(Split("windows line\r\n\r\nends"), ElementsAre("windows line", "ends"));
  EXPECT_THAT(Split("old mac\r\rends"), ElementsAre("old mac", "ends"));
  EXPECT_THAT(Split("many\n\n\n\n\nbreaks"), ElementsAre("many", "breaks"));
  // Even after an abbreviation that otherwise never ends a sentence.
  EXPECT_THAT(Split("Dear Mr.\n\nSmith"), ElementsAre("Dear Mr.", "Smith"));
  // "\n\r" is two breaks: the \r is not part of a \r\n pair, so it counts on its own.
  EXPECT_THAT(Split("odd\n\rbreak"), ElementsAre("odd", "break"));
  // A single break with trailing spaces is not a paragraph.
  EXPECT_THAT(Split("one line  \n  continues"), ElementsAre("one line  \n  continues"));
}

// ---------------------------------------------------------------------------------------------
// Quotes and brackets.

TEST(SentenceSplitterTest, ClosingQuoteBelongsToTheSentence) {
  EXPECT_THAT(Split("He said \"Stop.\" Then he left."),
              ElementsAre("He said \"Stop.\"", "Then he left."));
  EXPECT_THAT(Split("He said 'Stop.' Then he left."),
              ElementsAre("He said 'Stop.'", "Then he left."));
}

TEST(SentenceSplitterTest, CurlyQuotesAreHandledAsWholeCharacters) {
  EXPECT_THAT(Split("He said \u201cStop.\u201d Then he left."),
              ElementsAre("He said \u201cStop.\u201d", "Then he left."));
  EXPECT_THAT(Split("She said \u2018Go!\u2019 \u2018Now?\u2019 he asked."),
              ElementsAre("She said \u2018Go!\u2019", "\u2018Now?\u2019 he asked."));
  EXPECT_THAT(Split("Il dit \u00abNon.\u00bb Puis il partit."),
              ElementsAre("Il dit \u00abNon.\u00bb", "Puis il partit."));
}

TEST(SentenceSplitterTest, QuestionInsideQuoteFollowedByLowercaseDoesNotSplit) {
  EXPECT_THAT(Split("\"Why?\" she asked. \"Stop!\" he cried."),
              ElementsAre("\"Why?\" she asked.", "\"Stop!\" he cried."));
  EXPECT_THAT(Split("\"Stop!\", he said."), ElementsAre("\"Stop!\", he said."));
}

TEST(SentenceSplitterTest, OpeningQuoteOrBracketBeforeUppercaseStartsASentence) {
  EXPECT_THAT(Split("He left. \"Why?\" she asked."),
              ElementsAre("He left.", "\"Why?\" she asked."));
  EXPECT_THAT(Split("He left. (Nobody knew why.) She stayed."),
              ElementsAre("He left.", "(Nobody knew why.)", "She stayed."));
  EXPECT_THAT(Split("He left. [Citation needed.] Really."),
              ElementsAre("He left.", "[Citation needed.]", "Really."));
  EXPECT_THAT(Split("He left. (and nobody cared.)"), ElementsAre("He left. (and nobody cared.)"));
}

TEST(SentenceSplitterTest, NestedClosingBracketsAndQuotes) {
  EXPECT_THAT(Split("He waited (a while (a long one).) Then he came back."),
              ElementsAre("He waited (a while (a long one).)", "Then he came back."));
  EXPECT_THAT(Split("See [the note (Smith, 2003).] It helps."),
              ElementsAre("See [the note (Smith, 2003).]", "It helps."));
  EXPECT_THAT(Split("(He said \"Stop.\") Then he left."),
              ElementsAre("(He said \"Stop.\")", "Then he left."));
  EXPECT_THAT(Split("She wrote: \"He said 'Go.'\" Then she slept."),
              ElementsAre("She wrote: \"He said 'Go.'\"", "Then she slept."));
  EXPECT_THAT(Split("It was \u201cdone (finally).\u201d We cheered."),
              ElementsAre("It was \u201cdone (finally).\u201d", "We cheered."));
}

TEST(SentenceSplitterTest, PeriodAfterClosingBracketOrQuote) {
  EXPECT_THAT(Split("He agreed (see above). Then he left."),
              ElementsAre("He agreed (see above).", "Then he left."));
  EXPECT_THAT(Split("He shouted \"Stop!\". Then he left."),
              ElementsAre("He shouted \"Stop!\".", "Then he left."));
}

TEST(SentenceSplitterTest, GutenbergItalicsMarkers) {
  EXPECT_THAT(Split("I read _Hamlet._ It was long."),
              ElementsAre("I read _Hamlet._", "It was long."));
  EXPECT_THAT(Split("He left. _Never_ again."), ElementsAre("He left.", "_Never_ again."));
}

// ---------------------------------------------------------------------------------------------
// Question and exclamation marks.

TEST(SentenceSplitterTest, RunsOfQuestionAndExclamationMarks) {
  EXPECT_THAT(Split("What?! No way!!! Really?!? Yes."),
              ElementsAre("What?!", "No way!!!", "Really?!?", "Yes."));
  EXPECT_THAT(Split("Is it? 42 is the answer."), ElementsAre("Is it?", "42 is the answer."));
  EXPECT_THAT(Split("Who?. Me."), ElementsAre("Who?.", "Me."));
}

TEST(SentenceSplitterTest, QuestionMarkBeforeLowercaseDoesNotSplit) {
  EXPECT_THAT(Split("Is it? maybe not."), ElementsAre("Is it? maybe not."));
  EXPECT_THAT(Split("Wow! said the owl."), ElementsAre("Wow! said the owl."));
}

// ---------------------------------------------------------------------------------------------
// Ellipses.

TEST(SentenceSplitterTest, EllipsisBeforeLowercaseContinuesTheSentence) {
  EXPECT_THAT(Split("I wonder... maybe not."), ElementsAre("I wonder... maybe not."));
  EXPECT_THAT(Split("I wonder\u2026 maybe not."), ElementsAre("I wonder\u2026 maybe not."));
  EXPECT_THAT(Split("I wonder . . . maybe not."), ElementsAre("I wonder . . . maybe not."));
  EXPECT_THAT(Split("I wonder .. maybe not."), ElementsAre("I wonder .. maybe not."));
}

TEST(SentenceSplitterTest, EllipsisBeforeUppercaseEndsTheSentence) {
  EXPECT_THAT(Split("I wonder... Maybe not."), ElementsAre("I wonder...", "Maybe not."));
  EXPECT_THAT(Split("I wonder\u2026 Maybe not."), ElementsAre("I wonder\u2026", "Maybe not."));
  EXPECT_THAT(Split("I wonder . . . Maybe not."), ElementsAre("I wonder . . .", "Maybe not."));
  EXPECT_THAT(Split("Wait... \"What?\" he said."), ElementsAre("Wait...", "\"What?\" he said."));
  EXPECT_THAT(Split("And then...? Nothing."), ElementsAre("And then...?", "Nothing."));
  // An ellipsis after an abbreviation is still an ellipsis.
  EXPECT_THAT(Split("apples, pears, etc... Then pie."),
              ElementsAre("apples, pears, etc...", "Then pie."));
}

// ---------------------------------------------------------------------------------------------
// Abbreviations.

TEST(SentenceSplitterTest, TitleBeforeNameDoesNotSplit) {
  EXPECT_THAT(Split("Mr. Smith went to Washington. He stayed."),
              ElementsAre("Mr. Smith went to Washington.", "He stayed."));
  for (const char* title : {"Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Rev.", "Hon.", "Gen.", "Col.",
                            "Capt.", "Lt.", "Sgt.", "Gov.", "Sen.", "Messrs."}) {
    const std::string text = absl::StrCat("We met ", title, " Brown today. It went well.");
    EXPECT_THAT(Split(text),
                ElementsAre(absl::StrCat("We met ", title, " Brown today."), "It went well."))
        << text;
  }
  // Titles precede names even when the name is a closed-class word.
  EXPECT_THAT(Split("It starred Dr. Who and Mr. Right."),
              ElementsAre("It starred Dr. Who and Mr. Right."));
}

TEST(SentenceSplitterTest, AbbreviationsInQuotesBracketsAndCapitals) {
  EXPECT_THAT(Split("He asked (Mr. Jones) first."), ElementsAre("He asked (Mr. Jones) first."));
  EXPECT_THAT(Split("\"Dr. Watson,\" said he."), ElementsAre("\"Dr. Watson,\" said he."));
  EXPECT_THAT(Split("It was--Mr. Jones, no less."), ElementsAre("It was--Mr. Jones, no less."));
  EXPECT_THAT(Split("It was\u2014Mr. Jones, no less."),
              ElementsAre("It was\u2014Mr. Jones, no less."));
  EXPECT_THAT(Split("MR. SMITH ARRIVED. HE SAT."), ElementsAre("MR. SMITH ARRIVED.", "HE SAT."));
}

TEST(SentenceSplitterTest, ExampleAbbreviationsNeverEndASentence) {
  EXPECT_THAT(Split("Cities, e.g. Paris, are big."), ElementsAre("Cities, e.g. Paris, are big."));
  EXPECT_THAT(Split("The capital, i.e. The Hague, is small."),
              ElementsAre("The capital, i.e. The Hague, is small."));
  EXPECT_THAT(Split("Compare A vs. B today. Cf. Smith on this."),
              ElementsAre("Compare A vs. B today.", "Cf. Smith on this."));
}

// Decision: "etc." followed by a capitalised word ends the sentence (docs/SENTENCE_SPLITTING.md).
TEST(SentenceSplitterTest, EtcBeforeCapitalisedWordEndsTheSentence) {
  EXPECT_THAT(Split("We bought apples, pears, etc. The rest was sold."),
              ElementsAre("We bought apples, pears, etc.", "The rest was sold."));
  EXPECT_THAT(Split("Cats, dogs, etc. Mary liked them all."),
              ElementsAre("Cats, dogs, etc.", "Mary liked them all."));
  EXPECT_THAT(Split("Cats, dogs, &c. Mary liked them all."),
              ElementsAre("Cats, dogs, &c.", "Mary liked them all."));
  EXPECT_THAT(Split("Cats, dogs, etc. and more."), ElementsAre("Cats, dogs, etc. and more."));
  EXPECT_THAT(Split("Cats, dogs, etc., and more."), ElementsAre("Cats, dogs, etc., and more."));
  EXPECT_THAT(Split("(cats, dogs, etc.) are pets."), ElementsAre("(cats, dogs, etc.) are pets."));
}

TEST(SentenceSplitterTest, AmbiguousAbbreviationsSplitOnlyBeforeClosedClassWords) {
  EXPECT_THAT(Split("He joined Acme Inc. The pay was good."),
              ElementsAre("He joined Acme Inc.", "The pay was good."));
  EXPECT_THAT(Split("He joined Acme Inc. Research in May."),
              ElementsAre("He joined Acme Inc. Research in May."));
  EXPECT_THAT(Split("He met John Smith Jr. He was tall."),
              ElementsAre("He met John Smith Jr.", "He was tall."));
  EXPECT_THAT(Split("Smith et al. Showed this. Jones et al. They disagree."),
              ElementsAre("Smith et al. Showed this.", "Jones et al.", "They disagree."));
  EXPECT_THAT(Split("Smith et al. (2003) showed this."),
              ElementsAre("Smith et al. (2003) showed this."));
  EXPECT_THAT(Split("We saw St. Paul's. It was big. He lives on Main St. The house is red."),
              ElementsAre("We saw St. Paul's.", "It was big.", "He lives on Main St.",
                          "The house is red."));
  EXPECT_THAT(Split("They climbed Mt. Everest."), ElementsAre("They climbed Mt. Everest."));
  EXPECT_THAT(Split("THE ACME CO. THE END."), ElementsAre("THE ACME CO.", "THE END."));
}

TEST(SentenceSplitterTest, ReferenceAbbreviationsBeforeNumbers) {
  EXPECT_THAT(Split("See Vol. 3, Fig. 2 and pp. 12-14 for details."),
              ElementsAre("See Vol. 3, Fig. 2 and pp. 12-14 for details."));
  EXPECT_THAT(Split("See Vol. II of the set."), ElementsAre("See Vol. II of the set."));
  EXPECT_THAT(Split("See Vol. I of the set."), ElementsAre("See Vol. I of the set."));
  EXPECT_THAT(Split("It was signed on Jan. 5, 1990 and Sept. 12."),
              ElementsAre("It was signed on Jan. 5, 1990 and Sept. 12."));
}

TEST(SentenceSplitterTest, NoIsAnAbbreviationOnlyBeforeANumber) {
  EXPECT_THAT(Split("He lives at No. 10 Downing Street."),
              ElementsAre("He lives at No. 10 Downing Street."));
  EXPECT_THAT(Split("\"No. I won't,\" he said."), ElementsAre("\"No.", "I won't,\" he said."));
  EXPECT_THAT(Split("He said no. Then he left."), ElementsAre("He said no.", "Then he left."));
}

TEST(SentenceSplitterTest, OrdinaryWordsThatLookLikeAbbreviationsStillEndSentences) {
  EXPECT_THAT(Split("I love art. Paintings move me."),
              ElementsAre("I love art.", "Paintings move me."));
  EXPECT_THAT(Split("He ate a fig. Then another."), ElementsAre("He ate a fig.", "Then another."));
  EXPECT_THAT(Split("She is in the co. Then."), ElementsAre("She is in the co.", "Then."));
}

// ---------------------------------------------------------------------------------------------
// Initials and dotted acronyms.

TEST(SentenceSplitterTest, SingleLetterInitialsDoNotSplit) {
  EXPECT_THAT(Split("J. R. R. Tolkien wrote books. He was British."),
              ElementsAre("J. R. R. Tolkien wrote books.", "He was British."));
  EXPECT_THAT(Split("The U. S. Army is large."), ElementsAre("The U. S. Army is large."));
  EXPECT_THAT(Split("George W. Bush spoke."), ElementsAre("George W. Bush spoke."));
  EXPECT_THAT(Split("Smith v. Jones was decided."), ElementsAre("Smith v. Jones was decided."));
  EXPECT_THAT(Split("by J. A. Smith."), ElementsAre("by J. A. Smith."));
}

TEST(SentenceSplitterTest, PronounIEndsASentenceUnlessInitialsFollow) {
  EXPECT_THAT(Split("\"Nice,\" said I. Mary agreed."),
              ElementsAre("\"Nice,\" said I.", "Mary agreed."));
  EXPECT_THAT(Split("He reigned after Charles I. Parliament was angry."),
              ElementsAre("He reigned after Charles I.", "Parliament was angry."));
  EXPECT_THAT(Split("It was built by I. M. Pei in glass."),
              ElementsAre("It was built by I. M. Pei in glass."));
}

TEST(SentenceSplitterTest, LowercaseRomanNumeralsInReferences) {
  EXPECT_THAT(Split("See Ecl. ii. 18 and book xiv. 3 there."),
              ElementsAre("See Ecl. ii. 18 and book xiv. 3 there."));
  EXPECT_THAT(Split("See book ii. The end."), ElementsAre("See book ii.", "The end."));
}

TEST(SentenceSplitterTest, SingleLetterBeforeClosedClassWordEndsTheSentence) {
  EXPECT_THAT(Split("We chose plan B. The others failed."),
              ElementsAre("We chose plan B.", "The others failed."));
  EXPECT_THAT(Split("Take vitamin C. A doctor said so."),
              ElementsAre("Take vitamin C.", "A doctor said so."));
}

TEST(SentenceSplitterTest, DottedAcronyms) {
  EXPECT_THAT(Split("We met at 5 p.m. and talked."), ElementsAre("We met at 5 p.m. and talked."));
  EXPECT_THAT(Split("We met at 5 p.m. Monday."), ElementsAre("We met at 5 p.m. Monday."));
  EXPECT_THAT(Split("We met at 5 p.m. He was late."),
              ElementsAre("We met at 5 p.m.", "He was late."));
  EXPECT_THAT(Split("The U.S. Army is large."), ElementsAre("The U.S. Army is large."));
  EXPECT_THAT(Split("He moved to the U.S. The weather was fine."),
              ElementsAre("He moved to the U.S.", "The weather was fine."));
  EXPECT_THAT(Split("She has a Ph.D. in physics."), ElementsAre("She has a Ph.D. in physics."));
  EXPECT_THAT(Split("In 300 B.C. Rome was small."), ElementsAre("In 300 B.C. Rome was small."));
  EXPECT_THAT(Split("He left the U.K. In June he came back."),
              ElementsAre("He left the U.K.", "In June he came back."));
}

// ---------------------------------------------------------------------------------------------
// Numbers, list markers, URLs.

TEST(SentenceSplitterTest, DecimalsAndVersionNumbersDoNotSplit) {
  EXPECT_THAT(Split("Pi is 3.14 roughly. Version 1.5.2 is out. It costs $2.50. Then we paid."),
              ElementsAre("Pi is 3.14 roughly.", "Version 1.5.2 is out.", "It costs $2.50.",
                          "Then we paid."));
  EXPECT_THAT(Split("Use .5 of it. Or 0.25."), ElementsAre("Use .5 of it.", "Or 0.25."));
}

TEST(SentenceSplitterTest, NumberAtSentenceEndSplits) {
  EXPECT_THAT(Split("He was born in 1999. The next year he walked."),
              ElementsAre("He was born in 1999.", "The next year he walked."));
  EXPECT_THAT(Split("I have 3. 4 are gone."), ElementsAre("I have 3.", "4 are gone."));
}

TEST(SentenceSplitterTest, ListMarkersStayWithTheirItem) {
  EXPECT_THAT(Split("1. Open the box.\n2. Close it."),
              ElementsAre("1. Open the box.", "2. Close it."));
  EXPECT_THAT(Split("A. First point. B. Second point."),
              ElementsAre("A. First point.", "B. Second point."));
  // A lowercase marker does not look like a sentence start, so inline it joins the sentence
  // before it; on its own paragraph it is fine.
  EXPECT_THAT(Split("a. First point. b. Second point."),
              ElementsAre("a. First point. b. Second point."));
  EXPECT_THAT(Split("a. First point.\n\nb. Second point."),
              ElementsAre("a. First point.", "b. Second point."));
  EXPECT_THAT(Split("IV. The Return\n\niv. The end."),
              ElementsAre("IV. The Return", "iv. The end."));
  // Not at the start of a sentence it is an ordinary number.
  EXPECT_THAT(Split("Read chapter 12. It is short."),
              ElementsAre("Read chapter 12.", "It is short."));
}

TEST(SentenceSplitterTest, UrlsEmailsAndFileNamesAreNeverSplitInside) {
  EXPECT_THAT(Split("Visit www.example.com/a.b?c=d!E.f for info. It is free."),
              ElementsAre("Visit www.example.com/a.b?c=d!E.f for info.", "It is free."));
  EXPECT_THAT(Split("Go to https://example.com. It works."),
              ElementsAre("Go to https://example.com.", "It works."));
  EXPECT_THAT(Split("Mail john.doe@example.com. Then wait."),
              ElementsAre("Mail john.doe@example.com.", "Then wait."));
  EXPECT_THAT(Split("Open config.Yaml and main.Cc now."),
              ElementsAre("Open config.Yaml and main.Cc now."));
}

// ---------------------------------------------------------------------------------------------
// UTF-8.

TEST(SentenceSplitterTest, NonAsciiUppercaseStartsASentence) {
  EXPECT_THAT(Split("He drank caf\u00e9. \u00dcber alles. \u00c9lan! \u0152uvre."),
              ElementsAre("He drank caf\u00e9.", "\u00dcber alles.", "\u00c9lan!", "\u0152uvre."));
  EXPECT_THAT(Split("It was na\u00efve. \u00e9lan followed."),
              ElementsAre("It was na\u00efve. \u00e9lan followed."));
  EXPECT_THAT(Split("Greek. \u0391lpha. Cyrillic. \u0416uk."),
              ElementsAre("Greek.", "\u0391lpha.", "Cyrillic.", "\u0416uk."));
  // Scripts without case do not start an English sentence.
  EXPECT_THAT(Split("Hello. \u4f60\u597d."), ElementsAre("Hello. \u4f60\u597d."));
}

TEST(SentenceSplitterTest, NoBreakSpaceIsNotASplitPoint) {
  EXPECT_THAT(Split("He stopped.\u00a0Then he left."),
              ElementsAre("He stopped.\u00a0Then he left."));
}

TEST(SentenceSplitterTest, InvalidUtf8IsHandledByteSafely) {
  const std::string text = "Bad \xC3. \xE2\x80 Ok. \xFF\xFE. \xE2\x80\xA6 End.";
  const std::vector<SentenceSpan> spans = SplitSentences(text);
  EXPECT_EQ(CheckSpanInvariants(text, spans), "");
  // Broken sequences are never uppercase letters; the intact ellipsis still ends a sentence.
  EXPECT_THAT(Split(text), ElementsAre("Bad \xC3. \xE2\x80 Ok. \xFF\xFE. \xE2\x80\xA6", "End."));
}

// ---------------------------------------------------------------------------------------------
// JoinSentencesWithAnchor and InsertAnchorsAtSentenceEnds.

TEST(JoinSentencesWithAnchorTest, JoinsWithSpacedAnchorAndNoneAfterTheLast) {
  EXPECT_EQ(JoinSentencesWithAnchor("Hello world. How are you?"), "Hello world. <AC> How are you?");
  EXPECT_EQ(JoinSentencesWithAnchor("  Mr. Smith left.\n\n  He said \"Bye.\" Then\nhe went.  "),
            "Mr. Smith left. <AC> He said \"Bye.\" <AC> Then\nhe went.");
  EXPECT_EQ(JoinSentencesWithAnchor("Title\n\nBody text", "[A]"), "Title [A] Body text");
  EXPECT_EQ(JoinSentencesWithAnchor("Only one sentence."), "Only one sentence.");
  EXPECT_EQ(JoinSentencesWithAnchor(""), "");
  EXPECT_EQ(JoinSentencesWithAnchor(" \n "), "");
}

TEST(InsertAnchorsAtSentenceEndsTest, InsertsRightAfterEachSentenceAndKeepsWhitespace) {
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Hello world. How are you?", "<AC>", false),
            "Hello world.<AC> How are you?<AC>");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("  Hi.  There!\n", "<AC>", false),
            "  Hi.<AC>  There!<AC>\n");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("He said \"Stop.\" Then he left.", "<AC>", false),
            "He said \"Stop.\"<AC> Then he left.<AC>");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Title\n\nBody.", "<AC>", false), "Title<AC>\n\nBody.<AC>");
}

TEST(InsertAnchorsAtSentenceEndsTest, LastSentenceNeedsTerminatorUnlessForced) {
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Hello world. How are", "<AC>", false),
            "Hello world.<AC> How are");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Hello world. How are", "<AC>", true),
            "Hello world.<AC> How are<AC>");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Is it (really?) ", "<AC>", false), "Is it (really?)<AC> ");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Wait\u2026", "<AC>", false), "Wait\u2026<AC>");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("Done.", "<AC>", true), "Done.<AC>");
}

TEST(InsertAnchorsAtSentenceEndsTest, TextWithoutSentencesIsUnchanged) {
  EXPECT_EQ(InsertAnchorsAtSentenceEnds("", "<AC>", true), "");
  EXPECT_EQ(InsertAnchorsAtSentenceEnds(" \n\n ", "<AC>", true), " \n\n ");
}

TEST(EndsWithSentenceTerminatorTest, RecognisesTerminatorsBehindClosers) {
  EXPECT_TRUE(EndsWithSentenceTerminator("Done."));
  EXPECT_TRUE(EndsWithSentenceTerminator("Done?!  \n"));
  EXPECT_TRUE(EndsWithSentenceTerminator("He said \u201cDone.\u201d"));
  EXPECT_TRUE(EndsWithSentenceTerminator("(Done!)]"));
  EXPECT_TRUE(EndsWithSentenceTerminator("Well\u2026"));
  EXPECT_FALSE(EndsWithSentenceTerminator("Done"));
  EXPECT_FALSE(EndsWithSentenceTerminator("Done,\""));
  EXPECT_FALSE(EndsWithSentenceTerminator(""));
  EXPECT_FALSE(EndsWithSentenceTerminator("\"\")"));
}

// ---------------------------------------------------------------------------------------------
// Properties over random input.

struct RandomText {
  explicit RandomText(uint32_t seed) : rng(seed) {}

  size_t Uniform(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }

  std::string Bytes(size_t max_length) {
    // Bias towards the bytes the splitter cares about so that short strings hit every branch.
    static constexpr char kInteresting[] =
        " \n\r\t.?!\"')]([{_*aAzZ09&#$\xE2\x80\xA6\x9C\x9D\xC2\xAB\xBB";
    std::string s(Uniform(max_length + 1), '\0');
    for (char& c : s) {
      c = Uniform(2) == 0 ? kInteresting[Uniform(sizeof(kInteresting) - 1)]
                          : static_cast<char>(Uniform(256));
    }
    return s;
  }

  std::string Soup(size_t max_words) {
    static const std::vector<std::string> kWords = {
        "the",     "The",    "He",        "she",       "It",        "Mr.",
        "Dr.",     "etc.",   "e.g.",      "U.S.",      "p.m.",      "No.",
        "Inc.",    "J.",     "a.",        "1.",        "IV.",       "3.14",
        "$2.50",   "1999.",  "www.x.com", "caf\u00e9", "\u00dcber", "\u4f60\u597d",
        "Smith",   "went",   "A",         "I",         "and",       "vs.",
        "St.",     "&c.",    "...",       "\u2026",    ".",         "?",
        "!",       "?!",     "\"",        "'",         "(",         ")",
        "\u201c",  "\u201d", "\u2019",    "_Stop._",   "\"Stop.\"", "(see above).",
        "Stop!\"", "word",   "x\u00a0y",  "Ph.D."};
    static const std::vector<std::string> kGaps = {" ",      " ",  " ",    "  ",       "\n", "\n\n",
                                                   " \n \n", "\t", "\r\n", "\r\n\r\n", ""};
    std::string s;
    const size_t words = Uniform(max_words + 1);
    for (size_t i = 0; i < words; ++i) {
      absl::StrAppend(&s, kGaps[Uniform(kGaps.size())], kWords[Uniform(kWords.size())]);
      if (Uniform(4) == 0) s.push_back(".?!,;:"[Uniform(6)]);
    }
    if (Uniform(2) == 0) s += kGaps[Uniform(kGaps.size())];
    return s;
  }

  std::mt19937 rng;
};

void CheckAllProperties(const std::string& text) {
  const std::vector<SentenceSpan> spans = SplitSentences(text);
  ASSERT_EQ(CheckSpanInvariants(text, spans), "") << "text: " << text;

  // Locality: each sentence re-splits to itself.
  for (const SentenceSpan& span : spans) {
    const std::string sentence = text.substr(span.begin, span.end - span.begin);
    const std::vector<SentenceSpan> again = SplitSentences(sentence);
    ASSERT_EQ(again.size(), 1u) << "sentence: " << sentence;
    ASSERT_EQ(again[0], (SentenceSpan{0, sentence.size()})) << "sentence: " << sentence;
  }

  // The anchor helpers agree with the spans. The anchor is a byte the generators never emit.
  const std::string anchor = "\x01";
  const std::string joined = JoinSentencesWithAnchor(text, anchor);
  const size_t joined_anchors = std::count(joined.begin(), joined.end(), '\x01');
  ASSERT_EQ(joined_anchors, spans.empty() ? 0 : spans.size() - 1);
  const std::string inserted = InsertAnchorsAtSentenceEnds(text, anchor, true);
  ASSERT_EQ(static_cast<size_t>(std::count(inserted.begin(), inserted.end(), '\x01')),
            spans.size());
  ASSERT_EQ(absl::StrReplaceAll(inserted, {{anchor, ""}}), text);
}

TEST(SentenceSplitterPropertyTest, RandomBytes) {
  RandomText random(20240211);
  for (int i = 0; i < 3000; ++i) {
    std::string text = random.Bytes(80);
    std::replace(text.begin(), text.end(), '\x01', '\x02');
    CheckAllProperties(text);
    if (HasFatalFailure()) return;
  }
}

TEST(SentenceSplitterPropertyTest, RandomWordAndPunctuationSoup) {
  RandomText random(7);
  for (int i = 0; i < 3000; ++i) {
    CheckAllProperties(random.Soup(30));
    if (HasFatalFailure()) return;
  }
}

// Paragraphs are independent: splitting two texts joined by a blank line gives the sentences of
// each, so a document can be split paragraph by paragraph (or in parallel) with the same result.
TEST(SentenceSplitterPropertyTest, ParagraphsSplitIndependently) {
  RandomText random(99);
  for (int i = 0; i < 1000; ++i) {
    const std::string a = random.Soup(20);
    const std::string b = random.Soup(20);
    const std::string joined = absl::StrCat(a, "\n\n", b);
    std::vector<SentenceSpan> expected = SplitSentences(a);
    for (SentenceSpan span : SplitSentences(b)) {
      expected.push_back({span.begin + a.size() + 2, span.end + a.size() + 2});
    }
    ASSERT_EQ(SplitSentences(joined), expected) << "a: " << a << "\nb: " << b;
  }
}

// Inputs that would make a backtracking or quadratic splitter crawl; each must finish quickly
// (the whole suite runs in well under a second) and still satisfy the contract.
TEST(SentenceSplitterPropertyTest, PathologicalInputsStayLinear) {
  const size_t n = 1 << 20;
  const std::vector<std::string> texts = {
      std::string(n, '.'),
      std::string(n, ')') + ".",
      "(" + std::string(n, '"') + "A",
      std::string(n, 'a') + ". B",
      std::string(n, ' '),
      std::string(n, '\n'),
      absl::StrReplaceAll(std::string(n / 8, 'x'), {{"x", "Mr. A. "}}),
      absl::StrReplaceAll(std::string(n / 8, 'x'), {{"x", "U.S.A. "}}),
      absl::StrReplaceAll(std::string(n / 8, 'x'), {{"x", "\u2026 \u201c"}}),
  };
  for (const std::string& text : texts) {
    const std::vector<SentenceSpan> spans = SplitSentences(text);
    ASSERT_EQ(CheckSpanInvariants(text, spans), "") << text.substr(0, 40);
  }
  EXPECT_EQ(SplitSentences(std::string(n, '.')).size(), 1u);
  EXPECT_EQ(SplitSentences(absl::StrReplaceAll(std::string(1000, 'x'), {{"x", "Go. "}})).size(),
            1000u);
}

}  // namespace
}  // namespace anchorserve::model
