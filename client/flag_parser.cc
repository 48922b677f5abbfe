#include "client/flag_parser.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace anchorserve::client {
namespace {

absl::Status ParseInt(const std::string& name, const std::string& text, int64_t min, int64_t max,
                      int64_t* out) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected an integer, got \"", text, "\""));
  }
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": ", value, " is outside [", min, ", ", max, "]"));
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status ParseDouble(const std::string& name, const std::string& text, double min, double max,
                         double* out) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": expected a number, got \"", text, "\""));
  }
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": ", text, " is outside [", min, ", ", max, "]"));
  }
  *out = value;
  return absl::OkStatus();
}

}  // namespace

void FlagParser::Add(const std::string& name, Flag flag) {
  if (flags_.find(name) == flags_.end()) order_.push_back(name);
  flags_[name] = std::move(flag);
}

void FlagParser::AddString(const std::string& name, std::string* out, const std::string& help) {
  Add(name, {true, help, "", [out](const std::string& v) {
               *out = v;
               return absl::OkStatus();
             }});
}

void FlagParser::AddOptionalString(const std::string& name, std::optional<std::string>* out,
                                   const std::string& help) {
  Add(name, {true, help, "", [out](const std::string& v) {
               *out = v;
               return absl::OkStatus();
             }});
}

void FlagParser::AddRepeatedString(const std::string& name, std::vector<std::string>* out,
                                   const std::string& help) {
  Add(name, {true, help, "", [out](const std::string& v) {
               out->push_back(v);
               return absl::OkStatus();
             }});
}

void FlagParser::AddInt(const std::string& name, int64_t* out, int64_t min, int64_t max,
                        const std::string& help) {
  Add(name,
      {true, help, "", [=](const std::string& v) { return ParseInt(name, v, min, max, out); }});
}

void FlagParser::AddOptionalInt(const std::string& name, std::optional<int64_t>* out, int64_t min,
                                int64_t max, const std::string& help) {
  Add(name, {true, help, "", [=](const std::string& v) {
               int64_t value = 0;
               absl::Status status = ParseInt(name, v, min, max, &value);
               if (status.ok()) *out = value;
               return status;
             }});
}

void FlagParser::AddDouble(const std::string& name, double* out, double min, double max,
                           const std::string& help) {
  Add(name,
      {true, help, "", [=](const std::string& v) { return ParseDouble(name, v, min, max, out); }});
}

void FlagParser::AddOptionalDouble(const std::string& name, std::optional<double>* out, double min,
                                   double max, const std::string& help) {
  Add(name, {true, help, "", [=](const std::string& v) {
               double value = 0;
               absl::Status status = ParseDouble(name, v, min, max, &value);
               if (status.ok()) *out = value;
               return status;
             }});
}

void FlagParser::AddBool(const std::string& name, bool* out, const std::string& help) {
  Add(name, {false, help, "", [out](const std::string&) {
               *out = true;
               return absl::OkStatus();
             }});
}

void FlagParser::Forbid(const std::string& name, const std::string& why) {
  flags_[name] = Flag{true, "", why, nullptr};
}

absl::Status FlagParser::Parse(const std::vector<std::string>& args) {
  positionals_.clear();
  seen_.clear();
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 2 || arg.rfind("--", 0) != 0) {
      if (!flags_done && arg.size() > 1 && arg[0] == '-' && arg != "-") {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag ", arg, " (flags are spelled --name)"));
      }
      positionals_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = flags_.find(name);
    if (it == flags_.end())
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    const Flag& flag = it->second;
    if (!flag.forbidden_why.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " is not accepted: ", flag.forbidden_why));
    }
    if (!flag.takes_value) {
      if (value.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      value = "";
    } else if (!value.has_value()) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    if (absl::Status status = flag.set(*value); !status.ok()) return status;
    seen_.push_back(name);
  }
  return absl::OkStatus();
}

bool FlagParser::Seen(const std::string& name) const {
  return std::find(seen_.begin(), seen_.end(), name) != seen_.end();
}

std::string FlagParser::Usage() const {
  std::string out;
  for (const std::string& name : order_) {
    const Flag& flag = flags_.at(name);
    if (!flag.forbidden_why.empty()) continue;
    std::string left = absl::StrCat("  --", name, flag.takes_value ? " VALUE" : "");
    if (left.size() < 28) left.resize(28, ' ');
    absl::StrAppend(&out, left, " ", flag.help, "\n");
  }
  return out;
}

}  // namespace anchorserve::client
