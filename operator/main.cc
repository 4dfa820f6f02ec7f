// kvcache-operator: runs the KVCache controller. Informers on KVCaches and their children feed
// one rate-limited work queue keyed by KVCache ("ns/name"); worker threads reconcile
// (controller/kvcache_reconciler.h). Optional leader election through a Lease; /healthz,
// /readyz and /metrics on --metrics-listen. Every flag has a KVCACHE_OPERATOR_* environment twin.
//
// Shutdown order (SIGTERM/SIGINT): stop handing out work, let running reconciles finish, stop
// the informers, release the Lease, flush events, stop the HTTP server.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <pistache/endpoint.h>
#include <pistache/http.h>
#include <pistache/router.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include "controller/kvcache_reconciler.h"
#include "kube/config.h"
#include "kube/event_recorder.h"
#include "kube/informer.h"
#include "kube/leader_elector.h"
#include "kube/metrics.h"
#include "kube/rest_kube_client.h"
#include "kube/work_queue.h"
#include "protocol/rest_admin_client.h"

namespace kvcache::op {
namespace {

constexpr char kVersion[] = "0.1.0";

struct Flags {
  std::string kubeconfig;
  std::string ns;
  std::string metrics_listen = "0.0.0.0:8080";
  std::string port_file;
  bool leader_elect = false;
  std::string leader_election_namespace;
  std::string leader_election_id = "kvcache-operator";
  int workers = 2;
  int resync_seconds = 60;
  int admin_timeout_ms = 3000;
  std::string log_format = "text";
  std::string log_level = "info";
};

void ConfigureLogging(const Flags& flags) {
  if (flags.log_format == "json") {
    spdlog::set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","msg":"%v"})",
                        spdlog::pattern_time_type::utc);
  } else {
    spdlog::set_pattern("%L%m%d %H:%M:%S.%f %6t] %v");  // klog's layout
  }
  spdlog::set_level(spdlog::level::from_str(flags.log_level));
  // Logs go to a pipe or file in a pod: without this a killed operator loses its last lines.
  spdlog::flush_on(spdlog::level::info);
}

std::string Hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "kvcache-operator";
  return name;
}

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// One RestAdminClient per (KVCache, cluster token): a rotated token gets a fresh client.
class AdminClients {
 public:
  explicit AdminClients(std::chrono::milliseconds timeout) : timeout_(timeout) {}
  protocol::AdminClient& For(const KVCacheSpec& spec, const std::string& token) {
    std::lock_guard lock(mu_);
    auto& slot = clients_[spec.ns + "/" + spec.name];
    if (!slot.client || slot.token != token) {
      slot.token = token;
      // The old client may be in use by no one now: one reconcile per key at a time.
      slot.client = std::make_unique<protocol::RestAdminClient>(token, timeout_);
    }
    return *slot.client;
  }

 private:
  struct Slot {
    std::string token;
    std::unique_ptr<protocol::RestAdminClient> client;
  };
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::map<std::string, Slot> clients_;
};

// /healthz, /readyz, /metrics on one port.
class HealthServer {
 public:
  HealthServer(prometheus::Registry& registry, std::function<bool()> ready)
      : registry_(registry), ready_(std::move(ready)) {}

  Status Start(const std::string& listen) {
    using namespace Pistache;
    try {
      Address addr(listen);
      endpoint_ = std::make_unique<Http::Endpoint>(addr);
      endpoint_->init(Http::Endpoint::options().threads(1).flags(Tcp::Options::ReuseAddr));
      Rest::Routes::Get(router_, "/healthz",
                        [](const Rest::Request&, Http::ResponseWriter response) {
                          response.send(Http::Code::Ok, "ok\n");
                          return Rest::Route::Result::Ok;
                        });
      Rest::Routes::Get(router_, "/readyz",
                        [this](const Rest::Request&, Http::ResponseWriter response) {
                          bool ok = ready_();
                          response.send(ok ? Http::Code::Ok : Http::Code::Service_Unavailable,
                                        ok ? "ok\n" : "informers not synced\n");
                          return Rest::Route::Result::Ok;
                        });
      Rest::Routes::Get(router_, "/metrics",
                        [this](const Rest::Request&, Http::ResponseWriter response) {
                          std::string text =
                              prometheus::TextSerializer().Serialize(registry_.Collect());
                          response.send(Http::Code::Ok, text,
                                        MIME(Text, Plain));
                          return Rest::Route::Result::Ok;
                        });
      endpoint_->setHandler(router_.handler());
      endpoint_->serveThreaded();
    } catch (const std::exception& e) {
      return UnavailableError("cannot serve on " + listen + ": " + e.what());
    }
    return Status::Ok();
  }
  uint16_t port() const { return static_cast<uint16_t>(endpoint_->getPort()); }
  void Stop() {
    if (endpoint_) endpoint_->shutdown();
  }

 private:
  prometheus::Registry& registry_;
  std::function<bool()> ready_;
  Pistache::Rest::Router router_;
  std::unique_ptr<Pistache::Http::Endpoint> endpoint_;
};

// Informers -> work queue -> reconcile workers. Runs until `stop`.
class Controller {
 public:
  Controller(kube::KubeClient& client, KVCacheReconciler& reconciler, OperatorMetrics& metrics,
             kube::ClientMetrics& client_metrics, const Flags& flags)
      : client_(client),
        reconciler_(reconciler),
        metrics_(metrics),
        client_metrics_(client_metrics),
        flags_(flags),
        queue_(kube::SystemClock::Instance()) {}

  bool Synced() const { return synced_.load(); }

  void Run(std::stop_token stop) {
    kube::InformerOptions kvc_options;
    kvc_options.ns = flags_.ns;
    kvc_options.resync_period = std::chrono::seconds(flags_.resync_seconds);
    kvc_options.metrics = &client_metrics_;
    // Children: only objects the operator labels (a pod's labels come from its template).
    kube::InformerOptions child_options;
    child_options.ns = flags_.ns;
    child_options.label_selector = "app.kubernetes.io/name=kvcache";
    child_options.metrics = &client_metrics_;

    std::vector<std::unique_ptr<kube::Informer>> informers;
    informers.push_back(std::make_unique<kube::Informer>(client_, kinds::kKVCache, kvc_options));
    informers.back()->AddHandler(HandlersFor([](const kube::Object& o) {
      return o["metadata"].value("name", std::string());
    }));
    for (const kube::ResourceRef& ref : {kinds::kStatefulSet, kinds::kPod, kinds::kService,
                                         kinds::kConfigMap, kinds::kPdb}) {
      informers.push_back(std::make_unique<kube::Informer>(client_, ref, child_options));
      informers.back()->AddHandler(HandlersFor([](const kube::Object& o) {
        const kube::Object& labels = o["metadata"].value("labels", kube::Object::object());
        return labels.value("app.kubernetes.io/instance", std::string());
      }));
    }
    for (auto& informer : informers) informer->Start();
    for (auto& informer : informers) {
      while (!stop.stop_requested() && !informer->WaitForSync(std::chrono::milliseconds(500))) {
      }
    }
    if (!stop.stop_requested()) {
      synced_ = true;
      spdlog::info("Informers synced; starting {} workers", flags_.workers);
    }

    std::vector<std::jthread> workers;
    for (int i = 0; i < flags_.workers && !stop.stop_requested(); ++i) {
      workers.emplace_back([this](std::stop_token worker_stop) { Work(worker_stop); });
    }
    {
      std::mutex mu;
      std::condition_variable_any cv;
      std::unique_lock lock(mu);
      cv.wait(lock, stop, [] { return false; });
    }
    // Order: no new work, running reconciles finish, then the informers stop.
    queue_.ShutDown();
    for (auto& w : workers) w.request_stop();
    workers.clear();
    for (auto& informer : informers) informer->Stop();
    synced_ = false;
  }

 private:
  kube::EventHandlers HandlersFor(std::function<std::string(const kube::Object&)> owner_name) {
    auto enqueue = [this, owner_name](const kube::Object& o) {
      std::string name = owner_name(o);
      if (name.empty()) return;
      queue_.Add(o["metadata"].value("namespace", std::string()) + "/" + name);
      metrics_.SetQueueDepth(static_cast<double>(queue_.Len()));
    };
    kube::EventHandlers h;
    h.on_add = enqueue;
    h.on_update = [enqueue](const kube::Object&, const kube::Object& o) { enqueue(o); };
    h.on_delete = enqueue;
    return h;
  }

  void Work(std::stop_token stop) {
    for (;;) {
      std::optional<std::string> key = queue_.Get(stop);
      if (!key) return;
      metrics_.SetQueueDepth(static_cast<double>(queue_.Len()));
      size_t slash = key->find('/');
      std::string ns = key->substr(0, slash), name = key->substr(slash + 1);
      auto start = std::chrono::steady_clock::now();
      ReconcileResult r = reconciler_.Reconcile(ns, name);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                      .count();
      if (r.status.ok()) {
        queue_.Forget(*key);
        if (r.requeue_after) queue_.AddAfter(*key, *r.requeue_after);
        spdlog::debug("Reconciled KVCache name={} namespace={} duration_ms={:.1f}", name, ns, ms);
      } else if (r.requeue_after) {
        spdlog::info("Reconcile of KVCache name={} namespace={} will retry: {}", name, ns,
                     r.status.ToString());
        queue_.AddAfter(*key, *r.requeue_after);
      } else {
        spdlog::warn("Reconcile of KVCache name={} namespace={} failed: {}", name, ns,
                     r.status.ToString());
        queue_.AddRateLimited(*key);
      }
      queue_.Done(*key);
    }
  }

  kube::KubeClient& client_;
  KVCacheReconciler& reconciler_;
  OperatorMetrics& metrics_;
  kube::ClientMetrics& client_metrics_;
  const Flags& flags_;
  kube::WorkQueue queue_;
  std::atomic<bool> synced_{false};
};

int Run(int argc, char** argv) {
  Flags flags;
  CLI::App app{"kvcache-operator: reconciles KVCache resources (kvcache.io/v1alpha1) into "
               "sharded, replicated kvcache-node clusters.\n"
               "Every flag can also be set by the environment variable named after it."};
  app.set_version_flag("--version", kVersion);
  app.add_option("--kubeconfig", flags.kubeconfig,
                 "kubeconfig file; default: $KUBECONFIG, else in-cluster, else ~/.kube/config")
      ->envname("KVCACHE_OPERATOR_KUBECONFIG");
  app.add_option("--namespace", flags.ns, "Watch only this namespace (default: all namespaces)")
      ->envname("KVCACHE_OPERATOR_NAMESPACE");
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "Address of /healthz, /readyz and /metrics (host:port; port 0 = any)")
      ->envname("KVCACHE_OPERATOR_METRICS_LISTEN")
      ->capture_default_str();
  app.add_option("--port-file", flags.port_file,
                 "Write the bound metrics port to this file once serving (for scripts and tests)")
      ->envname("KVCACHE_OPERATOR_PORT_FILE");
  app.add_flag("--leader-elect", flags.leader_elect,
               "Run only while holding the Lease (one active operator among replicas)")
      ->envname("KVCACHE_OPERATOR_LEADER_ELECT");
  app.add_option("--leader-election-namespace", flags.leader_election_namespace,
                 "Namespace of the Lease (default: the pod's namespace, else --namespace, else "
                 "default)")
      ->envname("KVCACHE_OPERATOR_LEADER_ELECTION_NAMESPACE");
  app.add_option("--leader-election-id", flags.leader_election_id, "Name of the Lease")
      ->envname("KVCACHE_OPERATOR_LEADER_ELECTION_ID")
      ->capture_default_str();
  app.add_option("--workers", flags.workers, "KVCaches reconciled in parallel")
      ->envname("KVCACHE_OPERATOR_WORKERS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--resync-seconds", flags.resync_seconds,
                 "Reconcile every KVCache at least this often")
      ->envname("KVCACHE_OPERATOR_RESYNC_SECONDS")
      ->check(CLI::Range(5, 86400))
      ->capture_default_str();
  app.add_option("--admin-timeout-ms", flags.admin_timeout_ms,
                 "Timeout of one call to a node's admin API")
      ->envname("KVCACHE_OPERATOR_ADMIN_TIMEOUT_MS")
      ->check(CLI::Range(100, 60000))
      ->capture_default_str();
  app.add_option("--log-format", flags.log_format, "text (klog-like) or json")
      ->envname("KVCACHE_OPERATOR_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error")
      ->envname("KVCACHE_OPERATOR_LOG_LEVEL")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ConfigureLogging(flags);

  // Block the stop signals before any thread starts so only sigwait() below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  StatusOr<kube::ClusterConfig> config = kube::LoadDefaultConfig(flags.kubeconfig);
  if (!config.ok()) {
    spdlog::error("No usable Kubernetes configuration: {}", config.status().ToString());
    return 2;
  }
  auto registry = std::make_shared<prometheus::Registry>();
  kube::ClientMetrics client_metrics(registry.get());
  OperatorMetrics metrics(*registry);
  kube::RestOptions rest_options;
  rest_options.metrics = &client_metrics;
  auto client = kube::RestKubeClient::Create(*config, rest_options);
  if (!client.ok()) {
    spdlog::error("Cannot build the Kubernetes client: {}", client.status().ToString());
    return 2;
  }
  spdlog::info("kvcache-operator {} talking to {} (namespace: {})", kVersion, config->server,
               flags.ns.empty() ? "all" : flags.ns);

  const std::string pod_name = std::getenv("POD_NAME") ? std::getenv("POD_NAME") : Hostname();
  kube::EventRecorderOptions event_options;
  event_options.reporting_instance = pod_name;
  kube::EventRecorder recorder(**client, event_options);
  EventFn events = [&recorder](const Json& kvcache, std::string_view type,
                               std::string_view reason, const std::string& message) {
    spdlog::info("Event type={} reason={} name={} namespace={}: {}", type, reason,
                 kvcache["metadata"].value("name", ""), kvcache["metadata"].value("namespace", ""),
                 message);
    Status s = recorder.Record(kvcache, std::string(type), std::string(reason),
                               std::string(reason), message);
    if (!s.ok()) spdlog::debug("Event not recorded: {}", s.ToString());
  };
  AdminClients admin_clients{std::chrono::milliseconds(flags.admin_timeout_ms)};
  KVCacheReconciler reconciler(
      **client,
      [&admin_clients](const KVCacheSpec& spec, const std::string& token)
          -> protocol::AdminClient& { return admin_clients.For(spec, token); },
      kube::SystemClock::Instance(), metrics, events);
  Controller controller(**client, reconciler, metrics, client_metrics, flags);

  std::atomic<bool> standby{flags.leader_elect};
  HealthServer health(*registry, [&] { return standby.load() || controller.Synced(); });
  if (Status s = health.Start(flags.metrics_listen); !s.ok()) {
    spdlog::error("{}", s.ToString());
    return 1;
  }
  spdlog::info("Serving /healthz /readyz /metrics on port {}", health.port());
  if (!flags.port_file.empty()) {
    std::ofstream(flags.port_file) << health.port() << "\n";
  }

  std::atomic<int> exit_code{0};
  std::stop_source stop;
  std::jthread runner;
  if (flags.leader_elect) {
    std::string lease_ns = flags.leader_election_namespace;
    if (lease_ns.empty() && std::getenv("POD_NAMESPACE")) lease_ns = std::getenv("POD_NAMESPACE");
    if (lease_ns.empty()) {
      lease_ns = ReadFirstLine("/var/run/secrets/kubernetes.io/serviceaccount/namespace");
    }
    if (lease_ns.empty()) lease_ns = flags.ns.empty() ? "default" : flags.ns;
    std::random_device rd;
    kube::LeaderElectionOptions le;
    le.lease_namespace = lease_ns;
    le.lease_name = flags.leader_election_id;
    le.identity = pod_name + "_" + std::to_string(rd());
    kube::LeaderCallbacks callbacks;
    // By value: lease_ns and le end with this block, the callback runs later on the elector's
    // thread.
    callbacks.on_started_leading = [&, lease = lease_ns + "/" + le.lease_name](
                                       std::stop_token lead_stop) {
      spdlog::info("Became leader (Lease {})", lease);
      standby = false;
      metrics.SetLeader(true);
      controller.Run(lead_stop);
      metrics.SetLeader(false);
    };
    callbacks.on_new_leader = [](const std::string& id) { spdlog::info("Leader is {}", id); };
    auto elector = std::make_shared<kube::LeaderElector>(**client, le, callbacks);
    runner = std::jthread([elector, &stop, &exit_code] {
      Status s = elector->Run(stop.get_token());
      if (!s.ok() && !stop.stop_requested()) {
        // Lost the lease: exit so a restart campaigns afresh (controller-runtime does the same).
        spdlog::error("Leadership lost: {}", s.ToString());
        exit_code = 1;
        kill(getpid(), SIGTERM);
      }
    });
  } else {
    metrics.SetLeader(true);
    runner = std::jthread([&] { controller.Run(stop.get_token()); });
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::info("Shutting down (signal {})", signal_number);
  stop.request_stop();
  runner.join();
  recorder.Flush();
  health.Stop();
  spdlog::info("Stopped");
  return exit_code.load();
}

}  // namespace
}  // namespace kvcache::op

int main(int argc, char** argv) { return kvcache::op::Run(argc, argv); }
