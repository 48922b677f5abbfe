#include "model/tokenizer_trainer.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/remove_tree.h"

extern char** environ;

namespace anchorserve::model {
namespace {

namespace fs = std::filesystem;

// Removes the scratch directory on every return path.
class ScratchDirectory {
 public:
  explicit ScratchDirectory(fs::path path) : path_(std::move(path)) {}
  ~ScratchDirectory() {
    anchorserve::RemoveTree(path_);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The last `max_bytes` of a log file, for error messages.
std::string LogTail(const fs::path& path, size_t max_bytes = 800) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  std::string log = contents.str();
  if (log.size() > max_bytes) log = "..." + log.substr(log.size() - max_bytes);
  while (!log.empty() && (log.back() == '\n' || log.back() == ' ')) log.pop_back();
  return log;
}

// Runs `argv` in `working_dir` with stdout and stderr sent to `log_path`; returns its exit
// status (or 128 + signal) in `exit_code`.
absl::Status RunChild(const std::vector<std::string>& argv, const fs::path& working_dir,
                      const fs::path& log_path, int* exit_code) {
  std::vector<char*> c_argv;
  for (const std::string& arg : argv) c_argv.push_back(const_cast<char*>(arg.c_str()));
  c_argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, working_dir.c_str());
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid;
  const int spawn_error =
      posix_spawnp(&pid, c_argv[0], &actions, /*attrp=*/nullptr, c_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run ", argv[0], ": ", std::strerror(spawn_error),
                     " (install the Debian package `sentencepiece` or set spm_train_path)"));
  }
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid for ", argv[0], ": ", std::strerror(errno)));
    }
  }
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return absl::OkStatus();
}

}  // namespace

absl::Status TrainTokenizer(const TokenizerTrainOptions& options) {
  constexpr int kMinVocabSize = 5 + 256 + 1;  // fixed ids, byte pieces, at least "▁"
  if (options.input_files.empty()) {
    return absl::InvalidArgumentError("TrainTokenizer: no input_files");
  }
  if (options.output_dir.empty()) {
    return absl::InvalidArgumentError("TrainTokenizer: empty output_dir");
  }
  if (options.vocab_size < kMinVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("TrainTokenizer: vocab_size ",
                                                   options.vocab_size, " is below the minimum ",
                                                   kMinVocabSize));
  }
  if (!(options.character_coverage > 0 && options.character_coverage <= 1)) {
    return absl::InvalidArgumentError("TrainTokenizer: character_coverage must be in (0, 1]");
  }
  if (options.num_threads < 1 || options.input_sentence_size < 0) {
    return absl::InvalidArgumentError(
        "TrainTokenizer: num_threads must be >= 1 and input_sentence_size >= 0");
  }
  std::vector<std::string> inputs;
  for (const std::string& path : options.input_files) {
    if (absl::StrContains(path, ',')) {
      return absl::InvalidArgumentError(
          absl::StrCat("TrainTokenizer: input path contains ',': ", path));
    }
    if (!std::ifstream(path).is_open()) {
      return absl::NotFoundError(absl::StrCat("cannot open training input ", path));
    }
    // The child runs in the scratch directory.
    inputs.push_back(fs::absolute(path).string());
  }

  // Absolute: the child changes into a scratch directory before opening its log there.
  const fs::path output_dir = fs::absolute(options.output_dir);
  std::error_code error;
  fs::create_directories(output_dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", options.output_dir, ": ", error.message()));
  }
  // Inside output_dir so the final rename stays on one file system.
  std::string scratch_template = (output_dir / ".tokenizer-train-XXXXXX").string();
  if (mkdtemp(scratch_template.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a scratch directory in ",
                                            options.output_dir, ": ", std::strerror(errno)));
  }
  const ScratchDirectory scratch{fs::path(scratch_template)};

  const std::vector<std::string> argv = {
      options.spm_train_path, absl::StrCat("--input=", absl::StrJoin(inputs, ",")),
      // Relative, so the prefix recorded in the model is the same wherever it is trained.
      "--model_prefix=tokenizer", "--model_type=bpe",
      absl::StrCat("--vocab_size=", options.vocab_size),
      absl::StrCat("--input_sentence_size=", options.input_sentence_size),
      absl::StrCat("--character_coverage=", options.character_coverage),
      absl::StrCat("--num_threads=", options.num_threads), "--unk_id=0", "--bos_id=1", "--eos_id=2",
      "--pad_id=3", "--unk_piece=<unk>", "--bos_piece=<s>", "--eos_piece=</s>", "--pad_piece=[PAD]",
      // User-defined symbols take the ids right after the fixed ones, before the byte pieces.
      "--user_defined_symbols=<AC>", "--byte_fallback=true", "--split_digits=true",
      // Identity keeps Decode(Encode(s)) == s; NFKC would fold full-width forms, ligatures and
      // the like. Llama-2 uses the same settings.
      "--normalization_rule_name=identity", "--add_dummy_prefix=true",
      "--remove_extra_whitespaces=false", "--allow_whitespace_only_pieces=true",
      // Sentence sampling and shuffling draw from this seed instead of std::random_device.
      "--random_seed=20240207",
      "--minloglevel=2",  // errors only
  };
  const fs::path log_path = scratch.path() / "spm_train.log";
  int exit_code = 0;
  if (absl::Status status = RunChild(argv, scratch.path(), log_path, &exit_code); !status.ok()) {
    return status;
  }
  const fs::path trained = scratch.path() / "tokenizer.model";
  if (exit_code != 0 || !fs::exists(trained)) {
    return absl::InvalidArgumentError(absl::StrCat("TrainTokenizer: ", options.spm_train_path,
                                                   " failed (exit ", exit_code,
                                                   "): ", LogTail(log_path)));
  }
  const fs::path final_path = output_dir / "tokenizer.model";
  fs::rename(trained, final_path, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot move the trained model to ",
                                            final_path.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace anchorserve::model
