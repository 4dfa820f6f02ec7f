#include "cluster/forwarder.h"

#include <sched.h>

#include <atomic>
#include <optional>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace kvcache::node {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

// Headers of the owner's answer that mean something to the client.
constexpr const char* kPassedBack[] = {"Content-Type", "ETag", "Allow", "Retry-After",
                                       "WWW-Authenticate", "X-KVCache-Owner",
                                       "X-KVCache-Epoch"};

// Idle connections kept per peer; more are opened under load and closed when returned.
constexpr size_t kMaxIdlePerPeer = 256;

int UsableCpuCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

}  // namespace

// One keep-alive connection to a peer. Used by one exchange at a time, on its io_context.
struct Forwarder::Connection {
  explicit Connection(asio::io_context& io) : stream(io) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  http::request<http::string_body> request;
  std::optional<http::response_parser<http::string_body>> parser;
  bool connected = false;
};

// A peer's address and its idle connections.
struct Forwarder::Peer {
  std::string host;
  std::string port;
  std::mutex mu;
  std::vector<std::shared_ptr<Connection>> idle;
};

// One forwarded request from start to answer; retried once on a fresh connection when a
// reused one turns out to have been closed by the peer.
struct Forwarder::Exchange : std::enable_shared_from_this<Exchange> {
  Forwarder* forwarder;
  std::shared_ptr<Peer> peer;
  std::string addr;
  std::string to_name;  // of the node meant; empty: any
  ForwardRequest request;
  std::function<void(StatusOr<ForwardResponse>)> done;
  std::shared_ptr<Connection> conn;
  bool reused = false;
  bool retried = false;

  void Start() {
    {
      std::lock_guard lock(peer->mu);
      if (!peer->idle.empty()) {
        conn = std::move(peer->idle.back());
        peer->idle.pop_back();
      }
    }
    reused = conn != nullptr;
    if (!conn) conn = std::make_shared<Connection>(forwarder->NextContext());
    asio::dispatch(conn->stream.get_executor(), [self = shared_from_this()] { self->Send(); });
  }

  void Send() {
    http::request<http::string_body>& req = conn->request;
    req = {};
    req.version(11);
    http::verb verb = http::string_to_verb(request.method);
    if (verb == http::verb::unknown) {
      req.method_string(request.method);
    } else {
      req.method(verb);
    }
    req.target(request.path_and_query);
    req.set(http::field::host, addr);
    for (const auto& [name, value] : request.headers) req.set(name, value);
    req.set(kHopHeader, to_name.empty() ? std::string("1") : to_name);
    req.body() = request.body;
    if (!request.body.empty() || verb == http::verb::put || verb == http::verb::post) {
      req.content_length(request.body.size());
    }
    conn->stream.expires_after(forwarder->timeout_);
    if (conn->connected) {
      Write();
      return;
    }
    auto resolver = std::make_shared<tcp::resolver>(conn->stream.get_executor());
    resolver->async_resolve(peer->host, peer->port,
                            [self = shared_from_this(), resolver](
                                beast::error_code ec, tcp::resolver::results_type results) {
                              if (ec) return self->Fail(ec, "cannot resolve");
                              self->conn->stream.async_connect(
                                  results,
                                  [self](beast::error_code connect_ec, const tcp::endpoint&) {
                                    if (connect_ec) return self->Fail(connect_ec, "unreachable");
                                    self->conn->connected = true;
                                    self->conn->stream.socket().set_option(tcp::no_delay(true));
                                    self->Write();
                                  });
                            });
  }

  void Write() {
    http::async_write(conn->stream, conn->request,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        if (ec) return self->Fail(ec, "unreachable");
                        self->Read();
                      });
  }

  void Read() {
    conn->parser.emplace();
    conn->parser->body_limit(boost::none);
    // A HEAD answer announces a body length but carries none.
    if (request.method == "HEAD") conn->parser->skip(true);
    http::async_read(conn->stream, conn->buffer, *conn->parser,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->Fail(ec, "unreachable");
                       self->Finish();
                     });
  }

  void Finish() {
    http::response<http::string_body> response = conn->parser->release();
    ForwardResponse out;
    out.code = static_cast<int>(response.result_int());
    if (auto it = response.find(http::field::content_length); it != response.end()) {
      out.content_length = std::strtoull(std::string(it->value()).c_str(), nullptr, 10);
    }
    for (const char* name : kPassedBack) {
      auto it = response.find(name);
      if (it != response.end()) out.headers.emplace_back(name, std::string(it->value()));
    }
    out.body = std::move(response.body());
    if (out.code == 421) {
      // Another node answered at this address: never pool this connection.
      beast::error_code ignored;
      conn->stream.socket().close(ignored);
      conn.reset();
      done(UnavailableError("owner " + to_name + " at " + addr +
                            ": another node answered there (421): " + out.body.substr(0, 200)));
      return;
    }
    if (response.keep_alive()) {
      conn->stream.expires_never();
      std::lock_guard lock(peer->mu);
      if (peer->idle.size() < kMaxIdlePerPeer) peer->idle.push_back(std::move(conn));
    }
    conn.reset();
    done(std::move(out));
  }

  void Fail(beast::error_code ec, const char* what) {
    // A reused connection the peer closed while idle fails at once; nothing reached the peer,
    // so the request goes again, once, on a new connection.
    const bool stale = reused && !retried &&
                       (ec == http::error::end_of_stream || ec == asio::error::eof ||
                        ec == asio::error::connection_reset || ec == asio::error::broken_pipe);
    beast::error_code ignored;
    conn->stream.socket().close(ignored);
    conn.reset();
    if (stale) {
      retried = true;
      reused = false;
      conn = std::make_shared<Connection>(forwarder->NextContext());
      asio::dispatch(conn->stream.get_executor(), [self = shared_from_this()] { self->Send(); });
      return;
    }
    done(UnavailableError("owner " + addr + " " + what + ": " + ec.message()));
  }
};

struct Forwarder::Loops {
  using Guard = asio::executor_work_guard<asio::io_context::executor_type>;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<Guard> guards;
  std::vector<std::thread> threads;
  std::atomic<size_t> next{0};
};

Forwarder::Forwarder(std::chrono::milliseconds timeout)
    : timeout_(timeout), loops_(std::make_unique<Loops>()) {
  // One event loop per usable CPU: each connection lives on one of them, so a forwarded
  // request's callbacks never hop threads.
  const int loops = UsableCpuCount();
  for (int i = 0; i < loops; ++i) {
    loops_->contexts.push_back(std::make_unique<asio::io_context>(1));
    loops_->guards.push_back(asio::make_work_guard(*loops_->contexts.back()));
  }
  for (auto& io : loops_->contexts) {
    loops_->threads.emplace_back([ctx = io.get()] { ctx->run(); });
  }
}

Forwarder::~Forwarder() {
  loops_->guards.clear();
  for (auto& io : loops_->contexts) io->stop();
  for (std::thread& t : loops_->threads) t.join();
  // Idle connections first, then the loops; exchanges still queued are freed with their loop
  // (their callbacks never run: nothing is left to answer).
  peers_.clear();
  loops_.reset();
}

asio::io_context& Forwarder::NextContext() {
  return *loops_->contexts[loops_->next.fetch_add(1, std::memory_order_relaxed) %
                           loops_->contexts.size()];
}

std::shared_ptr<Forwarder::Peer> Forwarder::PeerFor(const std::string& addr) {
  std::lock_guard lock(mu_);
  auto it = peers_.find(addr);
  if (it != peers_.end()) return it->second;
  auto peer = std::make_shared<Peer>();
  const size_t colon = addr.rfind(':');
  peer->host = colon == std::string::npos ? addr : addr.substr(0, colon);
  peer->port = colon == std::string::npos ? "80" : addr.substr(colon + 1);
  if (peer->host.size() > 2 && peer->host.front() == '[' && peer->host.back() == ']') {
    peer->host = peer->host.substr(1, peer->host.size() - 2);
  }
  peers_.emplace(addr, peer);
  return peer;
}

void Forwarder::Forward(const protocol::Member& to, ForwardRequest request,
                        std::function<void(StatusOr<ForwardResponse>)> done) {
  auto exchange = std::make_shared<Exchange>();
  exchange->forwarder = this;
  exchange->peer = PeerFor(to.addr);
  exchange->addr = to.addr;
  exchange->to_name = to.name;
  exchange->request = std::move(request);
  exchange->done = std::move(done);
  exchange->Start();
}

}  // namespace kvcache::node
