// anchorserve: the gRPC server binary. A thin main: configuration, the engine, the service,
// health, and a graceful drain on SIGTERM/SIGINT.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/server_main.h"

int main(int argc, char** argv) { return anchorserve::server::ServerMain(argc, argv); }
