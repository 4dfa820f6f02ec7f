// Forwarder: sends a request one hop to the node that owns its key, over pooled keep-alive
// connections, and hands back the owner's answer. Boost.Beast on Boost.Asio (the event loop
// cpprestsdk itself runs on) stays behind this small interface: one event loop per usable CPU,
// each connection on one loop, idle connections pooled per peer address. It replaced a
// cpprestsdk client whose tasks, shared pointers and thread hops cost twice the CPU per
// forwarded request (forwarded GETs: 22k/s with it, 36k/s with this; docs/cluster.md).
//
// Thread safety: Forward() from any thread; `done` runs on one of the forwarder's threads.
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
#include "protocol/topology.h"

namespace boost::asio {
class io_context;
}

namespace kvcache::node {

// The header that marks a forwarded request; a node never forwards a request carrying it. Its
// value is the name of the node the request is meant for ("1" from nodes before that): a
// node of another name answers 421 (NodeApi), since the address led elsewhere.
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

  // Sends `request` to http://`to.addr`, naming `to.name` in the hop header. Calls `done`
  // exactly once: with the owner's response (any status code), or Unavailable if the owner
  // could not be reached in time, or if another node answered there (421: the address, a DNS
  // name, still led to the pod that held it before; that connection is closed, so a later
  // request resolves the name again).
  void Forward(const protocol::Member& to, ForwardRequest request,
               std::function<void(StatusOr<ForwardResponse>)> done);

 private:
  struct Connection;
  struct Peer;
  struct Exchange;
  struct Loops;

  std::shared_ptr<Peer> PeerFor(const std::string& addr);
  boost::asio::io_context& NextContext();

  const std::chrono::milliseconds timeout_;
  std::unique_ptr<Loops> loops_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Peer>> peers_;
};

}  // namespace kvcache::node
