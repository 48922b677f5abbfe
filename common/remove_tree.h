// Recursive delete without std::filesystem::remove_all. PyTorch's pip libtorch (the GPU
// build) exports its own copy of remove_all, and calls from our binaries bound to it jumped to
// address 0 (docs/DECISIONS.md); nftw from libc cannot be interposed that way.
#ifndef ANCHORSERVE_COMMON_REMOVE_TREE_H_
#define ANCHORSERVE_COMMON_REMOVE_TREE_H_

#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

#include <string>

namespace anchorserve {

// Removes `path` and everything below it; symbolic links are removed, never followed.
// Returns true when nothing is left (also when `path` did not exist).
inline bool RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return true;
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) -> int {
    return ::remove(p) == 0 ? 0 : -1;
  };
  return ::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

}  // namespace anchorserve

#endif  // ANCHORSERVE_COMMON_REMOVE_TREE_H_
