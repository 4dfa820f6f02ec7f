// Forwarder: sends a request one hop to the node that owns its key, over pooled keep-alive
// connections (one cpprestsdk client per peer address), and hands back the owner's answer.
// cpprestsdk stays behind this small interface (it is in maintenance mode upstream).
//
// Thread safety: Forward() from any thread; `done` runs on a cpprestsdk pool thread.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "protocol/status.h"

namespace web::http::client {
class http_client;
}

namespace kvcache::node {

// The header that marks a forwarded request; a node never forwards a request carrying it.
inline constexpr char kHopHeader[] = "X-KVCache-Hop";
// The sender's epoch on a forwarded request, and a fencing node's epoch on its refusal.
inline constexpr char kEpochHeader[] = "X-KVCache-Epoch";

struct ForwardRequest {
  std::string method;          // "GET", "HEAD", "PUT", "DELETE"
  std::string path_and_query;  // as received, still percent-encoded
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides Host/Content-Length
};

struct ForwardResponse {
  int code = 0;
  std::string body;
  uint64_t content_length = 0;  // as the owner sent it (for HEAD)
  std::vector<std::pair<std::string, std::string>> headers;  // the ones worth passing on
};

class Forwarder {
 public:
  explicit Forwarder(std::chrono::milliseconds timeout);
  ~Forwarder();

  // Sends `request` to http://`addr`. Calls `done` exactly once: with the owner's response
  // (any status code), or Unavailable if the owner could not be reached in time.
  void Forward(const std::string& addr, ForwardRequest request,
               std::function<void(StatusOr<ForwardResponse>)> done);

 private:
  std::shared_ptr<web::http::client::http_client> ClientFor(const std::string& addr);

  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<web::http::client::http_client>> clients_;
};

}  // namespace kvcache::node
