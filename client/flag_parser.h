// Command-line flags of anchorctl: `--name value`, `--name=value`, boolean `--name`, and
// positional arguments; `--` ends the flags. Every anchorctl subcommand declares its flags on
// one FlagParser; anything undeclared is a usage error (exit 2), so a mistyped flag never
// silently does nothing.
#ifndef ANCHORSERVE_CLIENT_FLAG_PARSER_H_
#define ANCHORSERVE_CLIENT_FLAG_PARSER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace anchorserve::client {

// Not thread-safe; build, Parse once, then read the bound variables.
class FlagParser {
 public:
  // Each Add* binds `--name` to `*out` (which must outlive Parse). The value is converted and
  // range-checked during Parse; `help` is the one-line description shown by Usage().
  void AddString(const std::string& name, std::string* out, const std::string& help);
  void AddOptionalString(const std::string& name, std::optional<std::string>* out,
                         const std::string& help);
  // Repeatable: every occurrence appends.
  void AddRepeatedString(const std::string& name, std::vector<std::string>* out,
                         const std::string& help);
  void AddInt(const std::string& name, int64_t* out, int64_t min, int64_t max,
              const std::string& help);
  void AddOptionalInt(const std::string& name, std::optional<int64_t>* out, int64_t min,
                      int64_t max, const std::string& help);
  void AddDouble(const std::string& name, double* out, double min, double max,
                 const std::string& help);
  void AddOptionalDouble(const std::string& name, std::optional<double>* out, double min,
                         double max, const std::string& help);
  // Takes no value; present = true.
  void AddBool(const std::string& name, bool* out, const std::string& help);
  // `--name` is refused with `why` (one line): for flags that must never exist, like --token.
  void Forbid(const std::string& name, const std::string& why);

  // Parses `args` (no program name, no subcommand). Success fills the bound variables and
  // positionals(). InvalidArgument with a one-line message naming the flag: unknown or forbidden
  // flag, missing or malformed value, value out of range, a value given to a boolean.
  absl::Status Parse(const std::vector<std::string>& args);

  const std::vector<std::string>& positionals() const { return positionals_; }
  // True when `--name` appeared on the command line (after Parse).
  bool Seen(const std::string& name) const;

  // "  --name VALUE  help" lines, in declaration order.
  std::string Usage() const;

 private:
  struct Flag {
    bool takes_value = true;
    std::string help;
    std::string forbidden_why;  // non-empty: refused
    std::function<absl::Status(const std::string& value)> set;
  };
  void Add(const std::string& name, Flag flag);

  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  std::vector<std::string> positionals_;
  std::vector<std::string> seen_;
};

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_FLAG_PARSER_H_
