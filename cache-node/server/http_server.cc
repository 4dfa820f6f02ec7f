#include "server/http_server.h"

#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <poll.h>
#include <unistd.h>

#include <pistache/endpoint.h>
#include <pistache/http.h>
#include <pistache/peer.h>

#include "server/http_util.h"

#include <algorithm>
#include <iterator>
#include <mutex>
#include <thread>

namespace kvcache::node {
namespace {

namespace Http = Pistache::Http;

HttpMethod ToApiMethod(Http::Method method) {
  switch (method) {
    case Http::Method::Get: return HttpMethod::kGet;
    case Http::Method::Head: return HttpMethod::kHead;
    case Http::Method::Put: return HttpMethod::kPut;
    case Http::Method::Post: return HttpMethod::kPost;
    case Http::Method::Delete: return HttpMethod::kDelete;
    case Http::Method::Patch: return HttpMethod::kPatch;
    case Http::Method::Options: return HttpMethod::kOptions;
    default: return HttpMethod::kOther;
  }
}

std::optional<std::string> RawHeader(const Http::Request& req, const char* name) {
  auto raw = req.headers().tryGetRaw(name);
  if (!raw) return std::nullopt;
  return raw->value();
}

// The Content-Type as the client sent it (Pistache parses it; raw() keeps the text).
std::optional<std::string> ContentTypeOf(const Http::Request& req) {
  auto ct = req.headers().tryGet<Http::Header::ContentType>();
  if (!ct) return std::nullopt;
  std::string text = ct->mime().raw();
  return text.empty() ? ct->mime().toString() : text;
}

std::optional<std::string> AuthorizationOf(const Http::Request& req) {
  auto auth = req.headers().tryGet<Http::Header::Authorization>();
  if (!auth) return std::nullopt;
  return auth->value();
}

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
  }
}

// Responses are written straight to the socket from the worker thread that parsed the
// request. Pistache 0.0.5's own writer queues every response and wakes its reactor through an
// eventfd, then flips the socket's epoll interest twice: about five extra system calls per
// request, which measured as most of the server's CPU. When the socket cannot take the whole
// response at once, the rest goes through Pistache's queue (Peer::send), and so does every
// later response on that connection until the queue has drained, keeping responses in order.
constexpr char kPendingWrites[] = "kvc.pending";
constexpr size_t kInlineBodyLimit = 16 * 1024;  // larger bodies go out with writev, uncopied

void QueueRest(const std::shared_ptr<Pistache::Tcp::Peer>& peer, std::string rest) {
  auto pending = std::static_pointer_cast<int>(peer->tryGetData(kPendingWrites));
  if (!pending) {
    pending = std::make_shared<int>(0);
    peer->putData(kPendingWrites, pending);
  }
  ++*pending;
  size_t size = rest.size();
  // Both callbacks run on the peer's own worker thread, like the request handler.
  peer->send(Pistache::RawBuffer(std::move(rest), size))
      .then([pending](ssize_t) { --*pending; }, [pending](std::exception_ptr) { --*pending; });
}

constexpr int kDeferredWriteTimeoutMs = 10'000;

// Writes all of `data` to a non-blocking socket, waiting for room up to the timeout; gives up
// silently when the client is gone or too slow (it then sees the connection close).
void WriteWithTimeout(int fd, std::string_view data) {
  if (fd < 0) return;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kDeferredWriteTimeoutMs);
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    pollfd pfd{fd, POLLOUT, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) return;
  }
}

void WriteResponse(const std::shared_ptr<Pistache::Tcp::Peer>& peer, const std::string& head,
                   std::string_view body) {
  auto pending = std::static_pointer_cast<int>(peer->tryGetData(kPendingWrites));
  size_t written = 0;
  if (!pending || *pending == 0) {
    iovec iov[2] = {{const_cast<char*>(head.data()), head.size()},
                    {const_cast<char*>(body.data()), body.size()}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = body.empty() ? 1 : 2;
    ssize_t n = ::sendmsg(peer->fd(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      // EAGAIN: nothing went out, queue it all. Anything else: the connection is broken and
      // Pistache will see it on its next read; there is no one left to answer.
      if (errno != EAGAIN && errno != EWOULDBLOCK) return;
      n = 0;
    }
    written = static_cast<size_t>(n);
    if (written == head.size() + body.size()) return;
  }
  std::string rest;
  if (written < head.size()) {
    rest.reserve(head.size() - written + body.size());
    rest.append(head, written, std::string::npos);
    rest.append(body);
  } else {
    rest.assign(body.substr(written - head.size()));
  }
  QueueRest(peer, std::move(rest));
}

// How a response goes out on its connection.
struct Framing {
  Http::Version version = Http::Version::Http11;
  bool head = false;               // HEAD: headers only
  bool close = false;              // "Connection: close" (the client then closes)
  bool http10_keep_alive = false;  // "Connection: keep-alive" for an HTTP/1.0 client
};

// Appends the status line and headers to `buf`, and the body when it is small; returns the
// body still to send (large bodies go out with writev, uncopied).
std::string_view Serialize(const ApiResponse& out, const Framing& framing, std::string& buf) {
  buf += framing.version == Http::Version::Http10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  buf += std::to_string(out.code);
  buf += ' ';
  buf += ReasonPhrase(out.code);
  buf += "\r\n";
  auto header = [&buf](std::string_view name, std::string_view value) {
    buf += name;
    buf += ": ";
    buf += value;
    buf += "\r\n";
  };
  if (!out.content_type.empty()) header("Content-Type", out.content_type);
  if (out.etag) header("ETag", FormatEtag(*out.etag));
  if (out.allow) header("Allow", out.allow);
  if (out.www_authenticate) header("WWW-Authenticate", "Bearer");
  if (out.cache_control) header("Cache-Control", out.cache_control);
  if (out.retry_after_seconds > 0) header("Retry-After", std::to_string(out.retry_after_seconds));
  if (!out.owner.empty()) header("X-KVCache-Owner", out.owner);
  for (const auto& [name, value] : out.extra_headers) header(name, value);
  if (framing.close) {
    header("Connection", "close");
  } else if (framing.http10_keep_alive) {
    header("Connection", "keep-alive");
  }
  const bool no_body = framing.head || out.code == 204 || out.code == 304;
  uint64_t length = framing.head ? out.head_content_length.value_or(out.body.size())
                                 : out.body.size();
  if (out.code != 204 && out.code != 304) header("Content-Length", std::to_string(length));
  buf += "\r\n";
  std::string_view body = no_body ? std::string_view() : std::string_view(out.body);
  if (body.size() <= kInlineBodyLimit) {
    buf += body;
    body = {};
  }
  return body;
}

class RequestHandler : public Http::Handler {
 public:
  HTTP_PROTOTYPE(RequestHandler)

  RequestHandler(const NodeApi* api, NodeMetrics* metrics, Persistence* persistence,
                 Forwarder* forwarder, const HttpServer::AckWaiter* ack_waiter)
      : api_(api),
        metrics_(metrics),
        persistence_(persistence),
        forwarder_(forwarder),
        ack_waiter_(ack_waiter != nullptr && *ack_waiter ? ack_waiter : nullptr) {}

  void onRequest(const Http::Request& req, Http::ResponseWriter response) override {
    const auto started = std::chrono::steady_clock::now();

    ApiRequest api_req;
    api_req.method = ToApiMethod(req.method());
    api_req.path = req.resource();
    api_req.body = req.body();
    const auto& query = req.query();
    if (query.parameters_begin() != query.parameters_end()) {
      api_req.ttl = query.get("ttl");
      api_req.prefix = query.get("prefix");
      api_req.limit = query.get("limit");
      api_req.cursor = query.get("cursor");
      api_req.replica_read = query.get("replica").value_or("") == "ok";
    }
    api_req.content_type = ContentTypeOf(req);
    api_req.authorization = AuthorizationOf(req);
    api_req.if_match = RawHeader(req, "If-Match");
    api_req.if_none_match = RawHeader(req, "If-None-Match");
    if (std::optional<std::string> hop = RawHeader(req, kHopHeader)) {
      api_req.hop = true;
      if (*hop != "1") api_req.hop_to = std::move(*hop);
      if (std::optional<std::string> epoch = RawHeader(req, kEpochHeader)) {
        if (std::optional<int64_t> n = ParseNonNegativeInt(*epoch)) {
          api_req.sender_epoch = static_cast<uint64_t>(*n);
        }
      }
    }

    ApiResponse out = api_->Handle(api_req);
    // HTTP/1.1 connections persist unless the client says "close" (Pistache 0.0.5 would answer
    // "Connection: Close" to every request without a Connection header, costing curl, wrk, Go
    // and Python clients a new connection per request); HTTP/1.0 ones only if asked to.
    auto connection = req.headers().tryGet<Http::Header::Connection>();
    const bool asked_close =
        connection && connection->control() == Http::ConnectionControl::Close;
    const bool asked_keep_alive =
        connection && connection->control() == Http::ConnectionControl::KeepAlive;
    Framing framing;
    framing.version = req.version();
    framing.head = api_req.method == HttpMethod::kHead;
    framing.close = asked_close || (framing.version == Http::Version::Http10 && !asked_keep_alive);
    framing.http10_keep_alive = framing.version == Http::Version::Http10 && asked_keep_alive;

    std::shared_ptr<Pistache::Tcp::Peer> peer;
    try {
      peer = response.peer();
    } catch (const std::exception&) {
      return;  // the client is gone
    }
    peer->setIdle(true);
    if (out.fanout && forwarder_ != nullptr) {
      FanOut(req, api_req, std::move(peer), framing, started);
      return;
    }
    if (out.forward_to != nullptr && forwarder_ != nullptr) {
      Forward(req, api_req, std::move(peer), std::move(out), framing, started);
      return;
    }
    if (out.durable_seq != 0 && (persistence_ != nullptr || ack_waiter_ != nullptr)) {
      SendWhenDurable(std::move(peer), std::move(out), framing, api_req.method, started);
      return;
    }
    Send(peer, out, framing);
    metrics_->RecordRequest(api_req.method, out.code, std::chrono::steady_clock::now() - started);
  }

  void onTimeout(const Http::Request& req, Http::ResponseWriter response) override {
    ApiResponse out;
    out.code = 408;
    out.body = JsonError(408, "request not received in time");
    out.content_type = "application/json";
    Framing framing;
    framing.version = req.version();
    framing.close = true;
    try {
      Send(response.peer(), out, framing);
    } catch (const std::exception&) {
      // the client is gone
    }
  }

 private:
  static void Send(const std::shared_ptr<Pistache::Tcp::Peer>& peer, const ApiResponse& out,
                   const Framing& framing) {
    thread_local std::string buf;
    buf.clear();
    std::string_view body = Serialize(out, framing, buf);
    WriteResponse(peer, buf, body);
  }

  // Returns a callable that answers this request later, from any thread. On the worker
  // thread (the answer came at once) it writes as usual. From another thread (the journal's
  // flusher, the forwarder) it must not go through Pistache: Peer::send queues by fd number, and
  // if the client disconnects and a new connection gets the same number before the queue is
  // drained, the answer would reach the wrong client. So the callable holds its own dup() of
  // this connection's socket, taken now while the fd surely is this connection's, and writes
  // there (waiting up to kDeferredWriteTimeout for room); the socket closes with the last copy.
  std::function<void(ApiResponse)> Deferred(const std::shared_ptr<Pistache::Tcp::Peer>& peer,
                                            Framing framing, HttpMethod method,
                                            std::chrono::steady_clock::time_point started) {
    const auto worker = std::this_thread::get_id();
    std::weak_ptr<Pistache::Tcp::Peer> weak = peer;
    auto own_fd = std::shared_ptr<int>(new int(::dup(peer->fd())), [](int* fd) {
      if (*fd >= 0) ::close(*fd);
      delete fd;
    });
    NodeMetrics* metrics = metrics_;
    return [weak, worker, own_fd, framing, method, started, metrics](ApiResponse out) {
      metrics->RecordRequest(method, out.code, std::chrono::steady_clock::now() - started);
      std::string buf;
      std::string_view body = Serialize(out, framing, buf);
      if (std::this_thread::get_id() == worker) {
        if (std::shared_ptr<Pistache::Tcp::Peer> alive = weak.lock()) {
          WriteResponse(alive, buf, body);
        }
        return;
      }
      buf += body;
      WriteWithTimeout(*own_fd, buf);
    };
  }

  static ApiResponse JsonFailure(const Status& status, std::string_view what) {
    ApiResponse out;
    out.code = HttpCodeFor(status.code());
    out.body = JsonError(out.code, std::string(what) + status.message());
    out.content_type = "application/json";
    if (status.code() == StatusCode::kUnavailable) out.retry_after_seconds = 1;
    return out;
  }

  // fsync=always: the worker thread goes on serving other connections; the journal's flusher
  // answers once the record is on disk (or with an error if it cannot get there). Concurrent
  // writers thereby share fdatasyncs.
  void SendWhenDurable(std::shared_ptr<Pistache::Tcp::Peer> peer, ApiResponse out,
                       Framing framing, HttpMethod method,
                       std::chrono::steady_clock::time_point started) {
    const uint64_t seq = out.durable_seq;
    auto answer = Deferred(peer, framing, method, started);
    auto then = [answer, out = std::move(out)](const Status& durable) mutable {
      // On failure the write is applied in memory (and queued for the disk and the replicas),
      // but the client cannot count on it.
      answer(durable.ok() ? std::move(out) : JsonFailure(durable, "write not acknowledged: "));
    };
    if (ack_waiter_ != nullptr && *ack_waiter_) {
      (*ack_waiter_)(seq, std::move(then));
    } else {
      persistence_->OnDurable(seq, std::move(then));
    }
  }

  // The request as it goes to another node: same method, path and query, and credentials.
  ForwardRequest ForwardOf(const Http::Request& req, const ApiRequest& api_req) const {
    ForwardRequest request;
    request.method = std::string(MethodName(api_req.method));
    request.path_and_query = req.resource() + req.query().as_str();
    if (api_req.authorization) request.headers.emplace_back("Authorization", *api_req.authorization);
    if (uint64_t epoch = api_->Epoch(); epoch > 0) {
      request.headers.emplace_back(kEpochHeader, std::to_string(epoch));
    }
    return request;
  }

  // What a fan-out round needs, owned: the request's views die with the handler call.
  struct FanoutPlan {
    std::string path;
    ApiRequest local;  // this node's part (hop set); its path points into `path`
    ForwardRequest remote;
    std::vector<std::pair<std::string, std::string>> targets;  // name, address
  };

  // Cluster mode, listing and flush: this node's own answer plus every other primary's (sent
  // with the hop header), merged once the last one is in. A listing that met a slot migration
  // is asked a second time (NodeApi::ListingNeedsSecondRound) and both rounds are merged.
  void FanOut(const Http::Request& req, ApiRequest api_req,
              std::shared_ptr<Pistache::Tcp::Peer> peer, Framing framing,
              std::chrono::steady_clock::time_point started) {
    auto plan = std::make_shared<FanoutPlan>();
    plan->path = std::string(api_req.path);
    plan->local = std::move(api_req);
    plan->local.path = plan->path;
    plan->local.body = {};
    plan->local.hop = true;
    plan->remote = ForwardOf(req, plan->local);
    for (const protocol::Member* target : api_->FanoutTargets()) {
      plan->targets.emplace_back(target->name, target->addr);
    }
    auto answer = Deferred(peer, framing, plan->local.method, started);
    const NodeApi* api = api_;
    Forwarder* forwarder = forwarder_;
    const bool listing = plan->path != "/flush";
    auto after_first = [api, forwarder, plan, answer, listing](std::vector<ApiResponse> first) {
      if (!listing || !NodeApi::ListingNeedsSecondRound(first)) {
        answer(first.size() == 1 ? std::move(first.front())
                                 : api->MergeFanout(plan->local, std::move(first)));
        return;
      }
      auto after_second = [api, plan, answer,
                           first = std::move(first)](std::vector<ApiResponse> second) mutable {
        std::move(second.begin(), second.end(), std::back_inserter(first));
        answer(api->MergeFanout(plan->local, std::move(first)));
      };
      FanOutRound(api, forwarder, plan, std::move(after_second));
    };
    FanOutRound(api, forwarder, plan, std::move(after_first));
  }

  // One round: this node's answer first, then every target's; `done` gets them all once the
  // last is in (on the thread of the last answer).
  static void FanOutRound(const NodeApi* api, Forwarder* forwarder,
                          const std::shared_ptr<const FanoutPlan>& plan,
                          std::function<void(std::vector<ApiResponse>)> done) {
    struct Gather {
      std::mutex mu;
      std::vector<ApiResponse> answers;
      size_t waiting = 0;
      std::function<void(std::vector<ApiResponse>)> done;
    };
    auto gather = std::make_shared<Gather>();
    gather->answers.reserve(plan->targets.size() + 1);
    gather->answers.push_back(api->Handle(plan->local));
    if (plan->targets.empty()) {
      done(std::move(gather->answers));
      return;
    }
    gather->waiting = plan->targets.size();
    gather->done = std::move(done);
    for (const auto& [name, addr] : plan->targets) {
      forwarder->Forward(protocol::Member{name, addr}, plan->remote, [gather, name](StatusOr<ForwardResponse> got) {
        ApiResponse one;
        if (!got.ok()) {
          one.code = 503;
          one.body = name + ": " + got.status().message();
        } else {
          one.code = got->code;
          one.body = std::move(got->body);
        }
        std::vector<ApiResponse> all;
        {
          std::lock_guard lock(gather->mu);
          gather->answers.push_back(std::move(one));
          if (--gather->waiting > 0) return;
          all = std::move(gather->answers);
        }
        gather->done(std::move(all));
      });
    }
  }

  // Cluster mode: one hop to the key's owner; its answer (or 503 + Retry-After if it cannot be
  // reached) goes back to the client with X-KVCache-Owner.
  void Forward(const Http::Request& req, const ApiRequest& api_req,
               std::shared_ptr<Pistache::Tcp::Peer> peer, ApiResponse out, Framing framing,
               std::chrono::steady_clock::time_point started) {
    ForwardRequest request = ForwardOf(req, api_req);
    request.body = req.body();
    for (auto [name, value] : {std::pair{"Content-Type", &api_req.content_type},
                               std::pair{"If-Match", &api_req.if_match},
                               std::pair{"If-None-Match", &api_req.if_none_match}}) {
      if (*value) request.headers.emplace_back(name, **value);
    }
    auto answer = Deferred(peer, framing, api_req.method, started);
    std::string owner(out.owner);
    const int not_found_code = out.forward_not_found_code;
    NodeMetrics* metrics = metrics_;
    forwarder_->Forward(
        *out.forward_to, std::move(request),
        [answer, owner, not_found_code, metrics](StatusOr<ForwardResponse> got) {
          metrics->RecordForwarded(got.ok() ? got->code : 503);
          if (!got.ok()) {
            ApiResponse failed = JsonFailure(got.status(), "");
            failed.extra_headers.emplace_back("X-KVCache-Owner", owner);
            answer(std::move(failed));
            return;
          }
          if (not_found_code != 0 && got->code == 404) {
            ApiResponse done;
            done.code = not_found_code;
            done.extra_headers.emplace_back("X-KVCache-Owner", owner);
            answer(std::move(done));
            return;
          }
          ApiResponse relayed;
          relayed.code = got->code;
          if (got->code == 409 && std::any_of(got->headers.begin(), got->headers.end(),
                                              [](const auto& h) { return h.first == kEpochHeader; })) {
            // The owner fenced this node's older epoch: the topology is changing, and the
            // client's retry succeeds once it has reached this node.
            relayed.code = 503;
            relayed.retry_after_seconds = 1;
          }
          relayed.body = std::move(got->body);
          relayed.head_content_length = got->content_length;
          for (auto& [name, value] : got->headers) {
            if (name == "Content-Type") {
              relayed.content_type = value;
            } else {
              relayed.extra_headers.emplace_back(name, value);
            }
          }
          answer(std::move(relayed));
        });
  }

  const NodeApi* api_;
  NodeMetrics* metrics_;
  Persistence* persistence_;
  Forwarder* forwarder_;
  const HttpServer::AckWaiter* ack_waiter_;
};

}  // namespace

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

HttpServer::HttpServer(const NodeApi& api, NodeMetrics& metrics, ServerOptions options,
                       Persistence* persistence, Forwarder* forwarder)
    : api_(api),
      metrics_(metrics),
      options_(std::move(options)),
      persistence_(persistence),
      forwarder_(forwarder) {}

HttpServer::~HttpServer() { Shutdown(); }

Status HttpServer::Start() {
  const std::string& listen = options_.listen;
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("listen address must be host:port, got \"" + listen + "\"");
  }
  std::string host = listen.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::optional<int64_t> port = ParseNonNegativeInt(listen.substr(colon + 1));
  if (!port || *port > 65535) {
    return InvalidArgumentError("listen port must be 0-65535, got \"" + listen + "\"");
  }
  threads_ = options_.threads > 0 ? options_.threads : UsableCpus();
  try {
    endpoint_ = std::make_unique<Http::Endpoint>(
        Pistache::Address(host, Pistache::Port(static_cast<uint16_t>(*port))));
    auto opts = Http::Endpoint::options()
                    .threads(threads_)
                    .threadsName("kvcache-http")
                    .flags(Pistache::Tcp::Options::ReuseAddr)
                    .backlog(1024)
                    .maxRequestSize(options_.max_request_bytes)
                    .maxResponseSize(options_.max_request_bytes + 64 * 1024)
                    .headerTimeout(options_.header_timeout)
                    .bodyTimeout(options_.body_timeout);
    endpoint_->init(opts);
    endpoint_->setHandler(Http::make_handler<RequestHandler>(&api_, &metrics_, persistence_, forwarder_,
                                                          &ack_waiter_));
    endpoint_->serveThreaded();
  } catch (const std::exception& e) {
    endpoint_.reset();
    return UnavailableError("cannot serve on " + listen + ": " + e.what());
  }
  return Status::Ok();
}

uint16_t HttpServer::port() const { return static_cast<uint16_t>(endpoint_->getPort()); }

void HttpServer::Shutdown() {
  if (endpoint_) {
    endpoint_->shutdown();
    endpoint_.reset();
  }
}

}  // namespace kvcache::node
