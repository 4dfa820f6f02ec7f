// operator/kube against the real API server of localk8s (run by tests/kube/run.sh, which sets
// KUBECONFIG, LOCALK8S_STATE_DIR, LOCALK8S, KUBECTL and KUBE_ELECTOR). Each test works in its
// own namespace. Faults come from the launcher's hooks: restart apiserver, compact-etcd,
// apf-tighten. Lines starting "MEASURE:" are the figures the issue asks for.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "kube/config.h"
#include "kube/informer.h"
#include "kube/leader_elector.h"
#include "kube/metrics.h"
#include "kube/rest_kube_client.h"
#include "kube/retry.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

const ResourceRef kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const ResourceRef kNamespaces{"", "v1", "namespaces", "Namespace", false};
const ResourceRef kDeployments{"apps", "v1", "deployments", "Deployment", true};
const ResourceRef kServiceAccounts{"", "v1", "serviceaccounts", "ServiceAccount", true};
const ResourceRef kRoleBindings{"rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding",
                                true};
const ResourceRef kRoles{"rbac.authorization.k8s.io", "v1", "roles", "Role", true};
const ResourceRef kCrds{"apiextensions.k8s.io", "v1", "customresourcedefinitions",
                        "CustomResourceDefinition", false};
const ResourceRef kWidgets{"kubetest.kvcache.io", "v1", "widgets", "Widget", true};
const ResourceRef kSelfSubjectReviews{"authentication.k8s.io", "v1", "selfsubjectreviews",
                                      "SelfSubjectReview", false};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

std::string Shell(const std::string& command, int* rc = nullptr) {
  std::string out;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return "popen failed";
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  int status = pclose(pipe);
  if (rc != nullptr) *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// A localk8s fault hook; returns when the launcher says it is done.
void Fault(const std::string& args) {
  int rc;
  // `localk8s SUBCOMMAND --state-dir DIR ARGS...`: flags before the positional arguments.
  std::string sub = args.substr(0, args.find(' '));
  std::string rest = args.find(' ') == std::string::npos ? "" : args.substr(args.find(' '));
  std::string out = Shell(
      Env("LOCALK8S") + " " + sub + " --state-dir " + Env("LOCALK8S_STATE_DIR") + rest, &rc);
  ASSERT_EQ(rc, 0) << args << ": " << out;
}

std::unique_ptr<RestKubeClient> NewClient(RestOptions options = {},
                                          std::string kubeconfig = Env("KUBECONFIG")) {
  auto config = LoadKubeConfig(kubeconfig);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  if (!config.ok()) return nullptr;
  auto client = RestKubeClient::Create(*config, options);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return client.ok() ? std::move(*client) : nullptr;
}

template <typename Pred>
bool Eventually(Pred pred, std::chrono::seconds timeout = 60s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return pred();
}

json ConfigMap(const std::string& name, json data = {{"k", "v"}}, json labels = json::object()) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", {{"name", name}, {"labels", labels}}},
          {"data", data}};
}

std::string Rv(const json& o) { return o["metadata"]["resourceVersion"].get<std::string>(); }

// name -> resourceVersion of a list of objects.
std::map<std::string, std::string> Versions(const std::vector<Object>& objects) {
  std::map<std::string, std::string> out;
  for (const auto& o : objects) out[o["metadata"]["name"]] = Rv(o);
  return out;
}

class KubeIT : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Env("KUBECONFIG").empty() || Env("LOCALK8S_STATE_DIR").empty()) {
      GTEST_SKIP() << "run through tests/kube/run.sh (needs localk8s)";
    }
    client_ = NewClient();
    ASSERT_NE(client_, nullptr);
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ns_ = "kt-";
    for (char c : name) {
      if (std::isupper(static_cast<unsigned char>(c)) && ns_.size() > 3) ns_ += '-';
      ns_ += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    // A suffix per run: a namespace of an earlier run may still be terminating.
    char suffix[16];
    std::snprintf(suffix, sizeof(suffix), "-%04x", static_cast<unsigned>(getpid() & 0xffff));
    ns_ = ns_.substr(0, 45) + suffix;
    CreateNamespace(ns_);
  }
  void TearDown() override {
    if (client_ == nullptr) return;
    for (const std::string& ns : namespaces_) {
      (void)client_->Delete(kNamespaces, "", ns, {.propagation = PropagationPolicy::kBackground});
    }
  }
  void CreateNamespace(const std::string& ns) {
    auto created = client_->Create(kNamespaces, "", {{"metadata", {{"name", ns}}}});
    ASSERT_TRUE(created.ok() || created.status().code() == StatusCode::kAlreadyExists)
        << created.status().ToString();
    namespaces_.push_back(ns);
    // A namespace is usable once its default ServiceAccount machinery does not matter to us:
    // writes into it succeed as soon as it exists.
  }

  std::unique_ptr<RestKubeClient> client_;
  std::string ns_;
  std::vector<std::string> namespaces_;
};

TEST_F(KubeIT, CrudConflictsStrictValidationAndPaging) {
  auto a = client_->Create(kConfigMaps, ns_, ConfigMap("a"));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(client_->Create(kConfigMaps, ns_, ConfigMap("a")).status().code(),
            StatusCode::kAlreadyExists);
  auto got = client_->Get(kConfigMaps, ns_, "a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["data"]["k"], "v");
  EXPECT_EQ((*got)["kind"], "ConfigMap");

  // Optimistic concurrency.
  json v1 = *got;
  v1["data"]["k"] = "v2";
  ASSERT_TRUE(client_->Update(kConfigMaps, ns_, v1).ok());
  EXPECT_EQ(client_->Update(kConfigMaps, ns_, v1).status().code(), StatusCode::kConflict);

  // fieldValidation=Strict: an unknown field is an error, not silently dropped.
  json bogus = ConfigMap("bogus");
  bogus["spec"] = {{"nope", 1}};
  Status strict = client_->Create(kConfigMaps, ns_, bogus).status();
  EXPECT_EQ(strict.code(), StatusCode::kInvalidArgument) << strict.ToString();

  // Patches.
  auto merged = client_->Patch(kConfigMaps, ns_, "a", PatchType::kMerge,
                               {{"metadata", {{"labels", {{"m", "1"}}}}}});
  ASSERT_TRUE(merged.ok()) << merged.status().ToString();
  EXPECT_EQ((*merged)["metadata"]["labels"]["m"], "1");
  auto jsonp = client_->Patch(kConfigMaps, ns_, "a", PatchType::kJson,
                              json::array({{{"op", "add"}, {"path", "/data/z"}, {"value", "1"}}}));
  ASSERT_TRUE(jsonp.ok()) << jsonp.status().ToString();
  auto smp = client_->Patch(kConfigMaps, ns_, "a", PatchType::kStrategicMerge,
                            {{"data", {{"s", "1"}}}});
  ASSERT_TRUE(smp.ok()) << smp.status().ToString();
  EXPECT_EQ((*smp)["data"], json({{"k", "v2"}, {"z", "1"}, {"s", "1"}}));

  // Server-side apply: create, conflict with another manager, force.
  json desired = ConfigMap("applied", {{"x", "1"}});
  desired["metadata"].erase("labels");
  auto applied = client_->Patch(kConfigMaps, ns_, "applied", PatchType::kApply, desired);
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  bool managed = false;
  for (const auto& f : (*applied)["metadata"]["managedFields"]) {
    managed |= f["manager"] == "kvcache-operator" && f["operation"] == "Apply";
  }
  EXPECT_TRUE(managed) << (*applied)["metadata"].dump();
  desired["data"]["x"] = "2";
  Status conflict =
      client_->Patch(kConfigMaps, ns_, "applied", PatchType::kApply, desired,
                     {.field_manager = "someone-else"})
          .status();
  EXPECT_EQ(conflict.code(), StatusCode::kConflict) << conflict.ToString();
  auto forced = client_->Patch(kConfigMaps, ns_, "applied", PatchType::kApply, desired,
                               {.field_manager = "someone-else", .force = true});
  ASSERT_TRUE(forced.ok()) << forced.status().ToString();
  EXPECT_EQ((*forced)["data"]["x"], "2");

  // Delete with preconditions.
  EXPECT_EQ(client_->Delete(kConfigMaps, ns_, "a", {.precondition_uid = "wrong"}).code(),
            StatusCode::kConflict);
  EXPECT_TRUE(client_->Delete(kConfigMaps, ns_, "a",
                              {.propagation = PropagationPolicy::kForeground,
                               .precondition_uid = (*got)["metadata"]["uid"].get<std::string>()})
                  .ok());
  EXPECT_TRUE(Eventually([&] {
    return client_->Get(kConfigMaps, ns_, "a").status().code() == StatusCode::kNotFound;
  }));
  EXPECT_EQ(client_->Delete(kConfigMaps, ns_, "a").code(), StatusCode::kNotFound);

  // Paging.
  for (int i = 0; i < 25; ++i) {
    char name[16];
    std::snprintf(name, sizeof(name), "p-%02d", i);
    ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap(name, {{"i", "x"}}, {{"page", "yes"}}))
                    .ok());
  }
  int64_t before = client_->RequestCount();
  auto all = client_->List(kConfigMaps, ns_, {.label_selector = "page=yes", .limit = 10});
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->items.size(), 25u);
  EXPECT_EQ(client_->RequestCount() - before, 3) << "three pages of 10";
  EXPECT_TRUE(all->continue_token.empty());
  auto page = client_->List(kConfigMaps, ns_,
                            {.label_selector = "page=yes", .limit = 10, .single_page = true});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->items.size(), 10u);
  EXPECT_FALSE(page->continue_token.empty());
  EXPECT_EQ(page->items[0]["kind"], "ConfigMap") << "list items carry apiVersion/kind";
}

TEST_F(KubeIT, CustomResourceStatusAndScaleSubresources) {
  json crd = {
      {"apiVersion", "apiextensions.k8s.io/v1"},
      {"kind", "CustomResourceDefinition"},
      {"metadata", {{"name", "widgets.kubetest.kvcache.io"}}},
      {"spec",
       {{"group", "kubetest.kvcache.io"},
        {"scope", "Namespaced"},
        {"names", {{"plural", "widgets"}, {"singular", "widget"}, {"kind", "Widget"}}},
        {"versions",
         {{{"name", "v1"},
           {"served", true},
           {"storage", true},
           {"subresources",
            {{"status", json::object()},
             {"scale",
              {{"specReplicasPath", ".spec.replicas"},
               {"statusReplicasPath", ".status.replicas"}}}}},
           {"schema",
            {{"openAPIV3Schema",
              {{"type", "object"},
               {"properties",
                {{"spec",
                  {{"type", "object"},
                   {"properties", {{"replicas", {{"type", "integer"}}}}}}},
                 {"status",
                  {{"type", "object"},
                   {"properties",
                    {{"replicas", {{"type", "integer"}}},
                     {"phase", {{"type", "string"}}}}}}}}}}}}}}}}}}};
  auto created = client_->Create(kCrds, "", crd);
  ASSERT_TRUE(created.ok() || created.status().code() == StatusCode::kAlreadyExists)
      << created.status().ToString();
  ASSERT_TRUE(Eventually([&] {
    auto c = client_->Get(kCrds, "", "widgets.kubetest.kvcache.io");
    if (!c.ok()) return false;
    for (const auto& cond : (*c)["status"].value("conditions", json::array())) {
      if (cond["type"] == "Established" && cond["status"] == "True") return true;
    }
    return false;
  }));
  json widget = {{"apiVersion", "kubetest.kvcache.io/v1"},
                 {"kind", "Widget"},
                 {"metadata", {{"name", "w"}}},
                 {"spec", {{"replicas", 1}}},
                 {"status", {{"phase", "Ignored"}}}};
  StatusOr<Object> w = Status(StatusCode::kUnavailable, "not tried");
  // Discovery of a new CRD takes a moment.
  ASSERT_TRUE(Eventually([&] {
    w = client_->Create(kWidgets, ns_, widget);
    return w.ok();
  })) << w.status().ToString();
  EXPECT_FALSE(w->contains("status")) << "create ignores status";
  EXPECT_EQ((*w)["metadata"]["generation"], 1);

  json with_status = *w;
  with_status["status"] = {{"phase", "Ready"}, {"replicas", 1}};
  auto s = client_->Update(kWidgets, ns_, with_status, "status");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)["status"]["phase"], "Ready");
  EXPECT_EQ((*s)["metadata"]["generation"], 1) << "status writes do not bump generation";
  auto p = client_->Patch(kWidgets, ns_, "w", PatchType::kMerge,
                          {{"status", {{"phase", "Degraded"}}}}, {}, "status");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)["status"]["phase"], "Degraded");

  auto scale = client_->Get(kWidgets, ns_, "w", "scale");
  ASSERT_TRUE(scale.ok()) << scale.status().ToString();
  EXPECT_EQ((*scale)["spec"]["replicas"], 1);
  EXPECT_EQ((*scale)["status"]["replicas"], 1);
  json next = *scale;
  next["spec"]["replicas"] = 3;
  ASSERT_TRUE(client_->Update(kWidgets, ns_, next, "scale").ok());
  auto after = client_->Get(kWidgets, ns_, "w");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)["spec"]["replicas"], 3);
  EXPECT_EQ((*after)["metadata"]["generation"], 2);
  (void)client_->Delete(kCrds, "", "widgets.kubetest.kvcache.io");
}

// Records what the handlers saw: (verb, name, resourceVersion).
struct EventLog {
  std::mutex mu;
  std::vector<std::tuple<std::string, std::string, std::string>> events;
  EventHandlers Handlers() {
    auto push = [this](const char* verb, const Object& o) {
      std::lock_guard lock(mu);
      events.emplace_back(verb, o["metadata"]["name"].get<std::string>(), Rv(o));
    };
    return {[push](const Object& o) { push("add", o); },
            [push](const Object&, const Object& o) { push("update", o); },
            [push](const Object& o) { push("delete", o); }};
  }
  // No (verb, name, version) twice: nothing delivered twice across restarts and relists.
  bool NoDuplicates() {
    std::lock_guard lock(mu);
    std::set<std::tuple<std::string, std::string, std::string>> seen(events.begin(),
                                                                     events.end());
    return seen.size() == events.size();
  }
};

// Objects of the test in the cache, not counting the kube-root-ca.crt ConfigMap that
// kube-controller-manager puts into every namespace.
size_t OurCount(const Informer& informer, const std::string& ns) {
  return informer.Size() - (informer.Get(ns, "kube-root-ca.crt") ? 1 : 0);
}

bool CacheMatchesList(Informer& informer, KubeClient& client, const std::string& ns) {
  auto fresh = client.List(kConfigMaps, ns);
  return fresh.ok() && Versions(informer.List(ns)) == Versions(fresh->items);
}

TEST_F(KubeIT, InformerResumesAfterApiserverRestart) {
  prometheus::Registry registry;
  ClientMetrics metrics(&registry);
  auto informer_client = NewClient({.metrics = &metrics});
  EventLog log;
  Informer informer(*informer_client, kConfigMaps, {.ns = ns_, .metrics = &metrics});
  informer.AddHandler(log.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(30s));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap("before-" + std::to_string(i))).ok());
  }
  ASSERT_TRUE(Eventually([&] { return OurCount(informer, ns_) == 5; }));

  Fault("restart apiserver");
  // The apiserver is back (the hook waits for /readyz); write while the informer reconnects.
  for (int i = 0; i < 5; ++i) {
    Status created = client_->Create(kConfigMaps, ns_, ConfigMap("after-" + std::to_string(i))).status();
    ASSERT_TRUE(created.ok()) << created.ToString();
  }
  ASSERT_TRUE(client_->Patch(kConfigMaps, ns_, "before-0", PatchType::kMerge,
                             {{"data", {{"k", "changed"}}}})
                  .ok());
  ASSERT_TRUE(client_->Delete(kConfigMaps, ns_, "before-1").ok());
  EXPECT_TRUE(Eventually([&] { return CacheMatchesList(informer, *client_, ns_); }))
      << "cache: " << json(Versions(informer.List(ns_))).dump();
  EXPECT_TRUE(log.NoDuplicates());
  EXPECT_EQ(OurCount(informer, ns_), 9u) << json(Versions(informer.List())).dump();
  EXPECT_GE(metrics.WatchRestarts(), 1);
  std::cout << "MEASURE: apiserver restart: informer lists=" << informer.stats().lists
            << " watches=" << informer.stats().watches << " events=" << informer.stats().events
            << std::endl;
}

TEST_F(KubeIT, CompactionGivesGoneAndTheInformerRelists) {
  std::string other = ns_ + "-other";
  CreateNamespace(other);
  EventLog log;
  auto informer_client = NewClient();
  Informer informer(*informer_client, kConfigMaps, {.ns = ns_});
  informer.AddHandler(log.Handlers());
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(30s));
  ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap("one")).ok());
  ASSERT_TRUE(Eventually([&] { return OurCount(informer, ns_) == 1; }));
  auto start = client_->List(kConfigMaps, ns_);
  ASSERT_TRUE(start.ok());
  std::string old_rv = start->resource_version;

  // History moves on elsewhere, etcd compacts it away, and the apiserver restarts (its watch
  // cache starts again at the current revision).
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(client_->Create(kConfigMaps, other, ConfigMap("x-" + std::to_string(i))).ok());
  }
  Fault("compact-etcd");
  ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap("two")).ok());
  Fault("restart apiserver");

  Status watch = client_->Watch(kConfigMaps, ns_, {.resource_version = old_rv, .timeout_seconds = 10},
                                [](const WatchEvent&) { return true; }, {});
  EXPECT_EQ(watch.code(), StatusCode::kOutOfRange) << watch.ToString();
  auto old_list = client_->List(kConfigMaps, ns_, {.limit = 1, .resource_version = old_rv,
                                                   .single_page = true});
  std::cout << "MEASURE: list at a compacted resourceVersion: " << old_list.status().ToString()
            << std::endl;

  ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap("three")).ok());
  EXPECT_TRUE(Eventually([&] { return CacheMatchesList(informer, *client_, ns_); }));
  EXPECT_EQ(OurCount(informer, ns_), 3u);
  EXPECT_GE(informer.stats().relists, 1) << "410 -> relist";
  EXPECT_TRUE(log.NoDuplicates());
}

TEST_F(KubeIT, ConflictFromAConcurrentWriterIsRetriedOnAFreshRead) {
  ASSERT_TRUE(client_->Create(kConfigMaps, ns_, ConfigMap("counter", {{"n", "0"}})).ok());
  // Deterministic: a stale write is refused.
  auto stale = client_->Get(kConfigMaps, ns_, "counter");
  ASSERT_TRUE(client_->Patch(kConfigMaps, ns_, "counter", PatchType::kMerge,
                             {{"data", {{"other", "writer"}}}})
                  .ok());
  (*stale)["data"]["n"] = "1";
  EXPECT_EQ(client_->Update(kConfigMaps, ns_, *stale).status().code(), StatusCode::kConflict);

  // Two writers incrementing: every increment lands exactly once.
  std::atomic<int> conflicts{0};
  auto writer = [&] {
    auto client = NewClient();
    for (int i = 0; i < 15; ++i) {
      Status s = RetryOnConflict(
          [&]() -> Status {
            auto fresh = client->Get(kConfigMaps, ns_, "counter");
            if (!fresh.ok()) return fresh.status();
            int n = std::stoi((*fresh)["data"]["n"].get<std::string>());
            (*fresh)["data"]["n"] = std::to_string(n + 1);
            Status st = client->Update(kConfigMaps, ns_, *fresh).status();
            if (st.code() == StatusCode::kConflict) ++conflicts;
            return st;
          },
          50);
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
  };
  std::thread a(writer), b(writer);
  a.join();
  b.join();
  auto final_value = client_->Get(kConfigMaps, ns_, "counter");
  ASSERT_TRUE(final_value.ok());
  EXPECT_EQ((*final_value)["data"]["n"], "30");
  std::cout << "MEASURE: concurrent writers: 30 increments, " << conflicts
            << " conflicts retried on a fresh read" << std::endl;
}

TEST_F(KubeIT, TooManyRequestsFromApfHonoursRetryAfter) {
  Fault("apf-tighten");
  std::string apf_kubeconfig = Env("LOCALK8S_STATE_DIR") + "/kubeconfig-apf-test";
  auto burst = [&](RestOptions options, int n, std::atomic<int>* ok, std::atomic<int>* refused) {
    auto client = NewClient(options, apf_kubeconfig);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&] {
        auto r = client->List(kConfigMaps, "");
        if (r.ok()) {
          ++*ok;
        } else if (r.status().code() == StatusCode::kResourceExhausted) {
          ++*refused;
        } else {
          ADD_FAILURE() << r.status().ToString();
        }
      });
    }
    for (auto& t : threads) t.join();
  };
  // Without retries the server's 429s come through as ResourceExhausted.
  std::atomic<int> ok0{0}, refused0{0};
  burst({.max_retries = 0}, 60, &ok0, &refused0);
  EXPECT_GT(refused0, 0) << "APF refused nothing: the fault did not apply";

  // With retries, Retry-After is honoured and the burst gets through.
  prometheus::Registry registry;
  ClientMetrics metrics(&registry);
  std::atomic<int> ok1{0}, refused1{0};
  auto start = std::chrono::steady_clock::now();
  burst({.max_retries = 10, .metrics = &metrics}, 60, &ok1, &refused1);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int64_t requests = metrics.Requests("list");
  Fault("apf-tighten --undo");
  EXPECT_EQ(ok1, 60) << refused1 << " still refused after 10 retries";
  EXPECT_GT(requests, 60) << "some requests were retried";
  EXPECT_GE(seconds, 1.0) << "retries waited for Retry-After";
  std::cout << "MEASURE: APF burst of 60 LISTs: without retries " << refused0
            << " refused (429); with Retry-After retries " << ok1 << "/60 ok after " << requests
            << " requests in " << seconds << " s" << std::endl;
}

TEST_F(KubeIT, RotatedTokenIsPickedUpWithoutRestart) {
  for (const char* sa : {"rot-a", "rot-b"}) {
    ASSERT_TRUE(client_->Create(kServiceAccounts, ns_, {{"metadata", {{"name", sa}}}}).ok());
  }
  json role = {{"metadata", {{"name", "cm-reader"}}},
               {"rules",
                {{{"apiGroups", {""}}, {"resources", {"configmaps"}}, {"verbs", {"get", "list"}}}}}};
  ASSERT_TRUE(client_->Create(kRoles, ns_, role).ok());
  json binding = {{"metadata", {{"name", "rot-read"}}},
                  {"roleRef",
                   {{"apiGroup", "rbac.authorization.k8s.io"},
                    {"kind", "Role"},
                    {"name", "cm-reader"}}},
                  {"subjects",
                   {{{"kind", "ServiceAccount"}, {"name", "rot-a"}, {"namespace", ns_}},
                    {{"kind", "ServiceAccount"}, {"name", "rot-b"}, {"namespace", ns_}}}}};
  ASSERT_TRUE(client_->Create(kRoleBindings, ns_, binding).ok());
  auto token = [&](const std::string& sa) {
    int rc;
    std::string out = Shell("KUBECONFIG=" + Env("KUBECONFIG") + " " + Env("KUBECTL") +
                                " create token " + sa + " -n " + ns_ + " --duration 10m",
                            &rc);
    EXPECT_EQ(rc, 0) << out;
    while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
    return out;
  };
  // A pod's service-account directory, pointed at the host's apiserver address.
  fs::path dir = fs::temp_directory_path() / ("kube-sa-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    // The kubelet's way: write a new file and rename it over the old one.
    std::ofstream(dir / (name + ".tmp")) << text;
    fs::rename(dir / (name + ".tmp"), dir / name);
  };
  write("token", token("rot-a"));
  write("ca.crt", client_->config().ca_pem);
  write("namespace", ns_);
  // The host and port a pod would get from KUBERNETES_SERVICE_HOST/PORT: here the admin
  // kubeconfig's server (https://127.0.0.1:6443 for localk8s).
  std::string server = client_->config().server.substr(std::string("https://").size());
  std::string host = server.substr(0, server.rfind(':'));
  std::string port = server.substr(server.rfind(':') + 1);
  auto config = LoadInClusterConfig({.host = host, .port = port, .dir = dir.string()});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->default_namespace, ns_);
  auto pod_client = RestKubeClient::Create(*config);
  ASSERT_TRUE(pod_client.ok()) << pod_client.status().ToString();
  auto whoami = [&]() -> std::string {
    auto review = (*pod_client)->Create(
        kSelfSubjectReviews, "",
        {{"apiVersion", "authentication.k8s.io/v1"}, {"kind", "SelfSubjectReview"}});
    if (!review.ok()) return review.status().ToString();
    return (*review)["status"]["userInfo"]["username"];
  };
  std::string prefix = "system:serviceaccount:" + ns_ + ":";
  EXPECT_EQ(whoami(), prefix + "rot-a");
  EXPECT_TRUE(Eventually([&] { return (*pod_client)->List(kConfigMaps, ns_).ok(); }, 20s));

  write("token", "not-a-token");
  EXPECT_EQ((*pod_client)->List(kConfigMaps, ns_).status().code(), StatusCode::kUnauthenticated);
  write("token", token("rot-b"));
  EXPECT_EQ(whoami(), prefix + "rot-b") << "the new token is used without a restart";
  EXPECT_TRUE((*pod_client)->List(kConfigMaps, ns_).ok());
  fs::remove_all(dir);
}

// A child process whose stdout lines are collected.
class Child {
 public:
  explicit Child(std::vector<std::string> argv) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      std::string buf;
      char chunk[512];
      ssize_t n;
      while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        buf.append(chunk, static_cast<size_t>(n));
        size_t nl;
        while ((nl = buf.find('\n')) != std::string::npos) {
          std::lock_guard lock(mu_);
          lines_.push_back(buf.substr(0, nl));
          buf.erase(0, nl + 1);
          cv_.notify_all();
        }
      }
      close(fd);
    });
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (reader_.joinable()) reader_.join();
  }
  // The first line starting with `prefix`, waiting up to `timeout`.
  std::optional<std::string> AwaitLine(const std::string& prefix, std::chrono::seconds timeout) {
    std::unique_lock lock(mu_);
    std::optional<std::string> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& l : lines_) {
        if (l.rfind(prefix, 0) == 0) {
          found = l;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  void Signal(int sig) { kill(pid_, sig); }
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return status;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t ParseMicroTimeMs(const std::string& text) {
  std::tm tm{};
  const char* rest = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  int64_t ms = static_cast<int64_t>(timegm(&tm)) * 1000;
  if (rest != nullptr && *rest == '.') ms += std::stoll(std::string(rest + 1, 3));
  return ms;
}

TEST_F(KubeIT, LeaderElectionBetweenTwoProcesses) {
  const std::string lease = "it-leader";
  // The Lease's history as the API server recorded it, from a watch.
  struct Record {
    std::string holder;
    int64_t renew_ms;
    int64_t transitions;
  };
  std::mutex mu;
  std::vector<Record> history;
  auto watch_client = NewClient();
  Informer leases(*watch_client, kLeaseResource,
                  {.ns = ns_, .field_selector = "metadata.name=" + lease});
  auto record = [&](const Object& o) {
    const json& spec = o["spec"];
    std::lock_guard lock(mu);
    history.push_back({spec.value("holderIdentity", ""),
                       spec.contains("renewTime") ? ParseMicroTimeMs(spec["renewTime"]) : 0,
                       spec.value("leaseTransitions", int64_t{0})});
  };
  leases.AddHandler({record, [&](const Object&, const Object& o) { record(o); }, nullptr});
  leases.Start();
  ASSERT_TRUE(leases.WaitForSync(30s));

  auto elector = [&](const std::string& id) {
    return std::make_unique<Child>(std::vector<std::string>{Env("KUBE_ELECTOR"),
                                                            Env("KUBECONFIG"), ns_, lease, id});
  };
  auto a = elector("a");
  ASSERT_TRUE(a->AwaitLine("leading a", 30s));
  auto b = elector("b");
  std::this_thread::sleep_for(5s);  // b campaigns against a live leader for a while
  EXPECT_FALSE(b->AwaitLine("leading b", 0s)) << "two leaders at once";

  int64_t killed_ms = NowMs();
  a->Signal(SIGKILL);
  a->Wait();
  auto b_leads = b->AwaitLine("leading b", 40s);
  ASSERT_TRUE(b_leads);
  int64_t b_ms = std::stoll(b_leads->substr(b_leads->rfind(' ') + 1));
  double failover = (b_ms - killed_ms) / 1000.0;
  EXPECT_LE(failover, 15 + 2 + 3) << "within lease duration + retry period (+ request slack)";

  // Graceful stop of b releases the lease.
  b->Signal(SIGTERM);
  EXPECT_TRUE(b->AwaitLine("stopped b", 20s));
  int status = b->Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return !history.empty() && history.back().holder.empty();
  }, 20s));

  // Never two holders: b's first record comes only after a's last renewal + lease duration,
  // and the holder changes exactly a -> b -> (released).
  std::lock_guard lock(mu);
  int64_t a_last_renew = 0, b_first = 0;
  std::vector<std::string> holders;
  for (const Record& r : history) {
    if (holders.empty() || holders.back() != r.holder) holders.push_back(r.holder);
    if (r.holder == "a") a_last_renew = std::max(a_last_renew, r.renew_ms);
    if (r.holder == "b" && b_first == 0) b_first = r.renew_ms;
  }
  EXPECT_EQ(holders, (std::vector<std::string>{"a", "b", ""}));
  EXPECT_GE(b_first - a_last_renew, 15000 - 50) << "b acquired while a's lease was valid";
  EXPECT_EQ(history.back().transitions, 1);
  std::cout << "MEASURE: leader failover after SIGKILL: " << failover
            << " s (a's last renewal -> b's acquisition: " << (b_first - a_last_renew) / 1000.0
            << " s; lease 15 s, renew deadline 10 s, retry 2 s)" << std::endl;
}

TEST_F(KubeIT, MeasureInformerAt1000Objects) {
  constexpr int kObjects = 1000;
  {
    // Create in parallel: 4 writers.
    std::vector<std::thread> writers;
    for (int w = 0; w < 4; ++w) {
      writers.emplace_back([&, w] {
        auto client = NewClient();
        for (int i = w; i < kObjects; i += 4) {
          json data = {{"shard", std::to_string(i % 16)}, {"payload", std::string(64, 'x')}};
          auto r = client->Create(kConfigMaps, ns_,
                                  ConfigMap("obj-" + std::to_string(i), data,
                                            {{"app.kubernetes.io/name", "bench"},
                                             {"shard", std::to_string(i % 16)}}));
          if (!r.ok()) ADD_FAILURE() << r.status().ToString();
        }
      });
    }
    for (auto& t : writers) t.join();
  }
  malloc_trim(0);
  size_t heap_before = mallinfo2().uordblks;
  auto informer_client = NewClient();
  const std::string bench = "app.kubernetes.io/name=bench";
  auto informer = std::make_unique<Informer>(
      *informer_client, kConfigMaps, InformerOptions{.ns = ns_, .label_selector = bench});
  informer->Start();
  ASSERT_TRUE(informer->WaitForSync(60s));
  ASSERT_EQ(informer->Size(), static_cast<size_t>(kObjects));
  malloc_trim(0);
  size_t heap_after = mallinfo2().uordblks;
  int64_t list_requests = informer_client->RequestCount();

  // A reconcile-like cycle: one object changes, the controller reads all 1000. Cycle 0 is a
  // warm-up: it also waits for the informer's WATCH to be open (counted there, not per cycle).
  constexpr int kCycles = 10;
  int64_t informer_before = 0;
  for (int c = 0; c <= kCycles; ++c) {
    if (c == 1) informer_before = informer_client->RequestCount();
    std::string name = "obj-" + std::to_string(c);
    auto patched = client_->Patch(kConfigMaps, ns_, name, PatchType::kMerge,
                                  {{"data", {{"cycle", std::to_string(c)}}}});
    ASSERT_TRUE(patched.ok());
    ASSERT_TRUE(Eventually([&] {
      auto cached = informer->Get(ns_, name);
      return cached && Rv(*cached) == Rv(*patched);
    }));
    EXPECT_EQ(informer->List(ns_).size(), static_cast<size_t>(kObjects));
  }
  double watch_requests = double(informer_client->RequestCount() - informer_before) / kCycles;

  auto poller = NewClient();
  auto poll_start = std::chrono::steady_clock::now();
  for (int c = 0; c < kCycles; ++c) {
    auto all = poller->List(kConfigMaps, ns_, {.label_selector = bench, .limit = 500});
    ASSERT_TRUE(all.ok());
    ASSERT_EQ(all->items.size(), static_cast<size_t>(kObjects));
  }
  double relist_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - poll_start)
          .count() /
      kCycles;
  double relist_requests = double(poller->RequestCount()) / kCycles;
  auto cache_start = std::chrono::steady_clock::now();
  for (int c = 0; c < kCycles; ++c) ASSERT_EQ(informer->List(ns_).size(), size_t(kObjects));
  double cache_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - cache_start)
          .count() /
      kCycles;

  size_t json_bytes = 0;
  for (const auto& o : informer->List(ns_)) json_bytes += o.dump().size();
  std::cout << "MEASURE: informer initial sync of " << kObjects << " ConfigMaps: "
            << list_requests << " LIST requests (pages of 500), then one WATCH" << std::endl;
  std::cout << "MEASURE: requests per reconcile-like cycle (1 change, read all " << kObjects
            << "): watch/informer " << watch_requests << ", relist " << relist_requests
            << " (LIST pages of 500, " << relist_ms << " ms per relist vs " << cache_ms
            << " ms from the cache)" << std::endl;
  std::cout << "MEASURE: informer cache heap for " << kObjects
            << " ConfigMaps (" << json_bytes / kObjects
            << " bytes of JSON each, managedFields stripped): "
            << (heap_after - heap_before) / 1024 << " KiB (" << (heap_after - heap_before) / kObjects
            << " bytes/object, glibc mallinfo2 delta)" << std::endl;
  EXPECT_EQ(watch_requests, 0) << "reads come from the cache";
  EXPECT_EQ(relist_requests, 2);
}

}  // namespace
}  // namespace kvcache::kube
