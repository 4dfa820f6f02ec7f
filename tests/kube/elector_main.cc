// kube_elector: one leader-election candidate for the two-process integration test
// (tests/kube). Prints "leading <identity> <unix-ms>" when it becomes leader and "stopped
// <identity> <unix-ms>" when it stops leading; SIGTERM stops it (releasing the lease).
//
//   kube_elector KUBECONFIG NAMESPACE LEASE IDENTITY
#include <csignal>
#include <cstdio>
#include <thread>

#include "kube/config.h"
#include "kube/leader_elector.h"
#include "kube/rest_kube_client.h"

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvcache::kube;
  if (argc != 5) {
    std::fprintf(stderr, "usage: kube_elector KUBECONFIG NAMESPACE LEASE IDENTITY\n");
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  auto config = LoadKubeConfig(argv[1]);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  // Requests must time out well inside the renew deadline (see leader_elector.h).
  auto client = RestKubeClient::Create(*config, {.request_timeout = std::chrono::seconds(4)});
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  std::string identity = argv[4];
  LeaderElectionOptions options;
  options.lease_namespace = argv[2];
  options.lease_name = argv[3];
  options.identity = identity;
  LeaderElector elector(
      **client, options,
      {[&](std::stop_token) {
         std::printf("leading %s %lld\n", identity.c_str(), static_cast<long long>(NowMs()));
         std::fflush(stdout);
       },
       [&] {
         std::printf("stopped %s %lld\n", identity.c_str(), static_cast<long long>(NowMs()));
         std::fflush(stdout);
       },
       nullptr});
  std::jthread run([&](std::stop_token stop) {
    kvcache::Status s = elector.Run(stop);
    if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
    kill(getpid(), SIGTERM);  // end sigwait below
  });
  int sig;
  sigwait(&set, &sig);
  run.request_stop();
  run.join();
  return 0;
}
