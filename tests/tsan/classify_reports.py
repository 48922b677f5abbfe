#!/usr/bin/env python3
"""Sorts ThreadSanitizer reports (files written with TSAN_OPTIONS=log_path=PREFIX) into ours and
gRPC's, for the server runs of scripts/tsan-test.sh.

gRPC comes uninstrumented from Debian: TSan cannot see the hand-offs inside it (its completion
queues and closures), so it reports races between gRPC's own inlined header code and memory
gRPC later frees or reuses. A report is ours when the top frame of one of its two accesses, not
counting libstdc++/Abseil inline headers and the TSan runtime, is in one of our source folders;
an access that is the allocation itself (operator new, malloc) is not an access by our code.

Usage: classify_reports.py LOG_PREFIX. Prints the counts and every report of ours in full;
exits 1 if there is one."""
import glob
import re
import sys

SYSTEM = re.compile(r"(/usr/include/c\+\+/|/usr/include/x86_64-linux-gnu/c\+\+/|src/libsanitizer/|"
                    r"/usr/include/absl/)")
ALLOCATION = re.compile(r"#\d+ (operator new|malloc|calloc|realloc|posix_memalign)\b")
OURS = re.compile(r"/(server|scheduler|cache|model|common|client|eval|train|tests)/[^ ]+\.(cc|h):\d+")


def access_tops(report):
    """The top frame of each access stack ('Read of size', 'Previous write of size', ...)."""
    tops = []
    for block in re.split(r"\n  (?=(?:Read|Write|Previous|Atomic)[^\n]*\n)", report)[1:]:
        frames = [l.strip() for l in block.splitlines() if re.match(r"\s*#\d+ ", l)]
        if not frames:
            continue
        if ALLOCATION.match(frames[0]):
            tops.append(None)  # the allocation, not an access by anyone's code
            continue
        frames = [f for f in frames if not SYSTEM.search(f)]
        tops.append(frames[0] if frames else None)
    return tops


def main(prefix):
    total, ours = 0, []
    for path in sorted(glob.glob(prefix + "*")):
        text = open(path, errors="replace").read()
        for report in text.split("WARNING: ThreadSanitizer")[1:]:
            total += 1
            if any(t and OURS.search(t) for t in access_tops(report)):
                ours.append((path, report))
    print(f"ThreadSanitizer reports: {total}, with an access in our code: {len(ours)}, "
          f"inside gRPC only: {total - len(ours)}")
    for path, report in ours:
        print(f"===== {path}\nWARNING: ThreadSanitizer{report}")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
