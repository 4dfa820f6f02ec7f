// HttpServer: the Pistache endpoint that serves NodeApi. It owns the endpoint, its worker
// threads and their lifecycle; the request handler only copies fields between Pistache and
// ApiRequest/ApiResponse and records metrics.
//
// Thread safety: Start() and Shutdown() from one controlling thread; requests are served on
// the server's own worker threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cluster/forwarder.h"
#include "persist/persistence.h"
#include "protocol/status.h"
#include "server/metrics.h"
#include "server/node_api.h"

namespace Pistache::Http {
class Endpoint;
}

namespace kvcache::node {

struct ServerOptions {
  // "host:port"; port 0 picks a free port (see port()).
  std::string listen = "0.0.0.0:8080";
  // Worker threads; 0 means one per CPU this process may run on.
  int threads = 0;
  // Largest request accepted (request line, headers and body); larger ones get 413.
  size_t max_request_bytes = (1 << 20) + 64 * 1024;
  // A client that has not sent its headers / body within these gets 408 and is closed.
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{60'000};
};

// CPUs this process may run on (sched_getaffinity), at least 1.
int UsableCpus();

class HttpServer {
 public:
  // `persistence` (may be null): under fsync=always a write is answered once it is durable,
  // without holding up the worker thread.
  // `forwarder` (may be null): cluster mode, requests for other nodes' keys go one hop there.
  HttpServer(const NodeApi& api, NodeMetrics& metrics, ServerOptions options,
             Persistence* persistence = nullptr, Forwarder* forwarder = nullptr);
  ~HttpServer();

  // Decides when a write's answer may go out: calls `done` once record `seq` is durable and
  // acknowledged as configured (persistence, sync replication), or with the error that stops
  // it. When set it replaces the persistence-only wait. REQUIRES: before Start().
  using AckWaiter = std::function<void(uint64_t seq, std::function<void(const Status&)> done)>;
  void SetAckWaiter(AckWaiter waiter) { ack_waiter_ = std::move(waiter); }

  // Binds and starts serving on background threads. Returns InvalidArgument for a malformed
  // listen address and Unavailable if it cannot be bound (e.g. the port is in use).
  Status Start();
  // The bound port. REQUIRES: Start() succeeded.
  uint16_t port() const;
  int threads() const { return threads_; }
  // Stops accepting and stops the worker threads once their current request is answered.
  void Shutdown();

 private:
  const NodeApi& api_;
  NodeMetrics& metrics_;
  const ServerOptions options_;
  Persistence* persistence_;
  Forwarder* forwarder_;
  AckWaiter ack_waiter_;
  int threads_ = 0;
  std::unique_ptr<Pistache::Http::Endpoint> endpoint_;
};

}  // namespace kvcache::node
