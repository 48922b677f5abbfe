// anchorctl: the command-line client of anchorserve (docs/ANCHORCTL.md).
#include "client/commands.h"

int main(int argc, char** argv) { return anchorserve::client::AnchorctlMain(argc, argv); }
