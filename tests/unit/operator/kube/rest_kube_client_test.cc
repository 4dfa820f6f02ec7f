// RestKubeClient against a scripted HTTP/1.1 server on 127.0.0.1:0 (plain HTTP: TLS and the
// real API server are covered by tests/kube). Checks what goes on the wire and how answers
// are read: paging, Retry-After, patch content types, delete options, watch streaming.
#include "kube/rest_kube_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <set>
#include <thread>

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

struct Request {
  std::string method, target, body;
  std::map<std::string, std::string> headers;  // lower-case names
};
struct Response {
  int code = 200;
  std::string body;
  std::map<std::string, std::string> headers;
  std::vector<std::string> stream;  // chunked lines (watch)
  bool hold_open = false;           // keep a stream open until the client goes away
};

class ScriptedServer {
 public:
  explicit ScriptedServer(std::function<Response(const Request&)> handler)
      : handler_(std::move(handler)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 16);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ScriptedServer() {
    stopping_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
    std::vector<std::thread> connections;
    {
      std::lock_guard lock(mu_);
      for (int c : open_) shutdown(c, SHUT_RDWR);  // wake blocked reads
      connections.swap(connections_);
    }
    for (auto& t : connections) t.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<Request> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  void Loop() {
    while (!stopping_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::lock_guard lock(mu_);
      open_.insert(c);
      connections_.emplace_back([this, c] { Serve(c); });
    }
  }
  static void WriteAll(int c, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = send(c, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }
  void Serve(int c) {
    std::string buf;
    char chunk[4096];
    while (true) {
      size_t end = buf.find("\r\n\r\n");
      if (end == std::string::npos) {
        ssize_t n = recv(c, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buf.append(chunk, static_cast<size_t>(n));
        continue;
      }
      Request req;
      std::string head = buf.substr(0, end);
      size_t line_end = head.find("\r\n");
      std::string first = head.substr(0, line_end);
      req.method = first.substr(0, first.find(' '));
      req.target = first.substr(first.find(' ') + 1, first.rfind(' ') - first.find(' ') - 1);
      size_t pos = line_end + 2;
      while (pos < head.size()) {
        size_t e = head.find("\r\n", pos);
        if (e == std::string::npos) e = head.size();
        std::string h = head.substr(pos, e - pos);
        size_t colon = h.find(':');
        std::string name = h.substr(0, colon);
        for (char& ch : name) ch = static_cast<char>(std::tolower(ch));
        std::string value = h.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        req.headers[name] = value;
        pos = e + 2;
      }
      size_t length = req.headers.count("content-length") ? std::stoul(req.headers["content-length"]) : 0;
      while (buf.size() < end + 4 + length) {
        ssize_t n = recv(c, chunk, sizeof(chunk), 0);
        if (n <= 0) break;
        buf.append(chunk, static_cast<size_t>(n));
      }
      req.body = buf.substr(end + 4, length);
      buf.erase(0, end + 4 + length);
      {
        std::lock_guard lock(mu_);
        requests_.push_back(req);
      }
      Response resp = handler_(req);
      std::string out = "HTTP/1.1 " + std::to_string(resp.code) + " X\r\n";
      for (const auto& [k, v] : resp.headers) out += k + ": " + v + "\r\n";
      if (resp.stream.empty() && !resp.hold_open) {
        out += "Content-Type: application/json\r\nContent-Length: " +
               std::to_string(resp.body.size()) + "\r\n\r\n" + resp.body;
        WriteAll(c, out);
        continue;  // keep-alive
      }
      out += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
      WriteAll(c, out);
      for (const std::string& line : resp.stream) {
        std::string data = line + "\n";
        char size[32];
        std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
        WriteAll(c, size + data + "\r\n");
      }
      if (resp.hold_open) {
        // Until the client hangs up (a cancelled watch) or the server stops.
        pollfd p{c, POLLIN, 0};
        while (!stopping_ && poll(&p, 1, 50) == 0) {
        }
      } else {
        WriteAll(c, "0\r\n\r\n");
      }
      break;
    }
    std::lock_guard lock(mu_);
    open_.erase(c);
    close(c);
  }

  std::function<Response(const Request&)> handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<Request> requests_;
  std::set<int> open_;
  std::vector<std::thread> connections_;
};

// A clock whose sleeps return at once and are recorded (Retry-After waits).
class InstantClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::now();
  }
  bool SleepUntil(TimePoint deadline, std::stop_token) override {
    std::lock_guard lock(mu_);
    sleeps_.push_back(deadline - Now());
    return true;
  }
  std::vector<Duration> sleeps() {
    std::lock_guard lock(mu_);
    return sleeps_;
  }

 private:
  std::mutex mu_;
  std::vector<Duration> sleeps_;
};

const ResourceRef kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const ResourceRef kDeployments{"apps", "v1", "deployments", "Deployment", true};

std::unique_ptr<RestKubeClient> Client(const ScriptedServer& server, RestOptions options = {}) {
  ClusterConfig config;
  config.server = server.url();
  config.token = "secret-token";
  auto client = RestKubeClient::Create(config, options);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return std::move(*client);
}

std::string Query(const std::string& target) {
  size_t q = target.find('?');
  return q == std::string::npos ? "" : target.substr(q + 1);
}

TEST(RestKubeClient, PathsHeadersAndErrors) {
  EXPECT_EQ(ResourcePath(kDeployments, "prod", "web", "scale"),
            "/apis/apps/v1/namespaces/prod/deployments/web/scale");
  EXPECT_EQ(ResourcePath(kConfigMaps, ""), "/api/v1/configmaps");
  ScriptedServer server([](const Request& r) {
    if (r.target.find("/missing") != std::string::npos) {
      return Response{404, R"({"kind":"Status","reason":"NotFound","message":"gone","code":404})"};
    }
    return Response{200, R"({"metadata":{"name":"a"}})"};
  });
  auto client = Client(server);
  auto got = client->Get(kConfigMaps, "ns", "a");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto missing = client->Get(kConfigMaps, "ns", "missing");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[0].target, "/api/v1/namespaces/ns/configmaps/a");
  EXPECT_EQ(reqs[0].headers["authorization"], "Bearer secret-token");
  EXPECT_EQ(reqs[0].headers["accept"], "application/json");
}

TEST(RestKubeClient, RefusesHttpsWithoutCa) {
  ClusterConfig config;
  config.server = "https://127.0.0.1:6443";
  EXPECT_EQ(RestKubeClient::Create(config).status().code(), StatusCode::kFailedPrecondition);
  config.ca_pem = "not a certificate";
  EXPECT_EQ(RestKubeClient::Create(config).status().code(), StatusCode::kInvalidArgument);
}

TEST(RestKubeClient, ListFollowsContinueTokens) {
  ScriptedServer server([](const Request& r) {
    bool second = r.target.find("continue=c1") != std::string::npos;
    json page = {{"kind", "ConfigMapList"},
                 {"metadata", {{"resourceVersion", "77"}, {"continue", second ? "" : "c1"}}},
                 {"items", {{{"metadata", {{"name", second ? "b" : "a"}}}}}}};
    return Response{200, page.dump()};
  });
  auto client = Client(server);
  auto all = client->List(kConfigMaps, "ns", {.label_selector = "app=x", .limit = 1});
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->items.size(), 2u);
  EXPECT_EQ(all->items[1]["kind"], "ConfigMap");
  EXPECT_EQ(all->items[1]["apiVersion"], "v1");
  EXPECT_EQ(all->resource_version, "77");
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(Query(reqs[0].target), "labelSelector=app%3Dx&limit=1");
  EXPECT_EQ(Query(reqs[1].target), "labelSelector=app%3Dx&limit=1&continue=c1");
  auto one = client->List(kConfigMaps, "ns", {.limit = 1, .single_page = true});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->items.size(), 1u);
  EXPECT_EQ(one->continue_token, "c1");
}

TEST(RestKubeClient, HonoursRetryAfterWithABound) {
  std::atomic<int> calls{0};
  ScriptedServer server([&](const Request&) {
    if (++calls <= 2) {
      return Response{429, R"({"kind":"Status","reason":"TooManyRequests","code":429})",
                      {{"Retry-After", "3"}}};
    }
    return Response{200, R"({"metadata":{"name":"a"}})"};
  });
  InstantClock clock;
  auto client = Client(server, {.max_retries = 5, .clock = &clock});
  EXPECT_TRUE(client->Get(kConfigMaps, "ns", "a").ok());
  EXPECT_EQ(calls, 3);
  ASSERT_EQ(clock.sleeps().size(), 2u);
  EXPECT_GE(clock.sleeps()[0], 2900ms);

  // Always throttled: gives up after max_retries and returns ResourceExhausted.
  calls = -100;
  auto bounded = Client(server, {.max_retries = 2, .clock = &clock});
  EXPECT_EQ(bounded->Get(kConfigMaps, "ns", "a").status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(calls, -97);
  // Without Retry-After a 429 is returned at once.
  ScriptedServer plain([](const Request&) { return Response{429, "slow down"}; });
  EXPECT_EQ(Client(plain, {.clock = &clock})->Get(kConfigMaps, "ns", "a").status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(plain.requests().size(), 1u);
}

TEST(RestKubeClient, WritesCarryTheirContentTypesAndOptions) {
  ScriptedServer server([](const Request&) { return Response{200, R"({"metadata":{}})"}; });
  auto client = Client(server);
  json body = {{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"metadata", {{"name", "a"}}}};
  ASSERT_TRUE(client->Create(kConfigMaps, "ns", body).ok());
  ASSERT_TRUE(client->Update(kConfigMaps, "ns", body, "status").ok());
  ASSERT_TRUE(client->Patch(kConfigMaps, "ns", "a", PatchType::kApply, body, {.force = true}).ok());
  ASSERT_TRUE(client->Patch(kConfigMaps, "ns", "a", PatchType::kMerge, body).ok());
  ASSERT_TRUE(client->Patch(kConfigMaps, "ns", "a", PatchType::kJson, json::array()).ok());
  ASSERT_TRUE(client->Patch(kConfigMaps, "ns", "a", PatchType::kStrategicMerge, body).ok());
  ASSERT_TRUE(client
                  ->Delete(kConfigMaps, "ns", "a",
                           {.propagation = PropagationPolicy::kForeground,
                            .precondition_uid = "u1",
                            .precondition_resource_version = "9"})
                  .ok());
  auto r = server.requests();
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0].method, "POST");
  EXPECT_EQ(r[0].target, "/api/v1/namespaces/ns/configmaps?fieldValidation=Strict");
  EXPECT_EQ(json::parse(r[0].body), body);
  EXPECT_EQ(r[1].method, "PUT");
  EXPECT_EQ(r[1].target, "/api/v1/namespaces/ns/configmaps/a/status?fieldValidation=Strict");
  EXPECT_EQ(r[2].method, "PATCH");
  EXPECT_EQ(r[2].headers["content-type"], "application/apply-patch+yaml");
  EXPECT_EQ(Query(r[2].target), "fieldValidation=Strict&fieldManager=kvcache-operator&force=true");
  EXPECT_EQ(r[3].headers["content-type"], "application/merge-patch+json");
  EXPECT_EQ(Query(r[3].target), "fieldValidation=Strict&fieldManager=kvcache-operator");
  EXPECT_EQ(r[4].headers["content-type"], "application/json-patch+json");
  EXPECT_EQ(r[5].headers["content-type"], "application/strategic-merge-patch+json");
  EXPECT_EQ(r[6].method, "DELETE");
  EXPECT_EQ(json::parse(r[6].body),
            json({{"kind", "DeleteOptions"},
                  {"apiVersion", "v1"},
                  {"propagationPolicy", "Foreground"},
                  {"preconditions", {{"uid", "u1"}, {"resourceVersion", "9"}}}}));
}

TEST(RestKubeClient, WatchStreamsEventsAndMapsErrorEvents) {
  ScriptedServer server([](const Request&) {
    Response r;
    r.stream = {R"({"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}})",
                R"({"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"6"}}})",
                R"({"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}})"};
    return r;
  });
  auto client = Client(server);
  std::vector<WatchEvent> events;
  Status s = client->Watch(kConfigMaps, "ns", {.resource_version = "4", .timeout_seconds = 60},
                           [&](const WatchEvent& e) {
                             events.push_back(e);
                             return true;
                           },
                           {});
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kAdded);
  EXPECT_EQ(events[0].object["kind"], "ConfigMap");
  EXPECT_EQ(events[1].type, WatchEvent::Type::kBookmark);
  EXPECT_EQ(events[2].type, WatchEvent::Type::kError);
  EXPECT_EQ(Query(server.requests()[0].target),
            "watch=true&resourceVersion=4&allowWatchBookmarks=true&timeoutSeconds=60");
}

TEST(RestKubeClient, WatchEndsWhenTheServerClosesOrStopIsRequested) {
  std::atomic<bool> hold{false};
  ScriptedServer server([&](const Request&) {
    Response r;
    r.stream = {R"({"type":"ADDED","object":{"metadata":{"name":"a"}}})"};
    r.hold_open = hold.load();
    return r;
  });
  auto client = Client(server);
  int n = 0;
  EXPECT_TRUE(client->Watch(kConfigMaps, "", {}, [&](const WatchEvent&) { return ++n > 0; }, {})
                  .ok());
  EXPECT_EQ(n, 1);

  hold = true;
  std::stop_source stop;
  std::atomic<bool> got{false};
  std::thread t([&] {
    Status s = client->Watch(kConfigMaps, "", {},
                             [&](const WatchEvent&) {
                               got = true;
                               return true;
                             },
                             stop.get_token());
    EXPECT_TRUE(s.ok()) << s.ToString();
  });
  for (int i = 0; i < 1000 && !got; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(got);
  auto start = std::chrono::steady_clock::now();
  stop.request_stop();
  t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "a stop cancels the blocked read";
}

}  // namespace
}  // namespace kvcache::kube
