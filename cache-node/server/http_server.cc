#include "server/http_server.h"

#include <sched.h>

#include <pistache/endpoint.h>
#include <pistache/http.h>

#include "server/http_util.h"

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

// A response header with a name chosen at run time. Pistache 0.0.5 writes only typed headers
// (a Raw header added to a response is silently dropped), so every header we send is one of
// these.
class OutHeader final : public Http::Header::Header {
 public:
  OutHeader(const char* name, std::string value)
      : name_(name), hash_(Http::Header::detail::hash(name)), value_(std::move(value)) {}
  const char* name() const override { return name_; }
  uint64_t hash() const override { return hash_; }
  void write(std::ostream& os) const override { os << value_; }
  void parse(const std::string& /*data*/) override {}

 private:
  const char* name_;
  uint64_t hash_;
  std::string value_;
};

class RequestHandler : public Http::Handler {
 public:
  HTTP_PROTOTYPE(RequestHandler)

  RequestHandler(const NodeApi* api, NodeMetrics* metrics) : api_(api), metrics_(metrics) {}

  void onRequest(const Http::Request& req, Http::ResponseWriter response) override {
    const auto started = std::chrono::steady_clock::now();
    // Pistache 0.0.5 answers "Connection: Close" to every request without a Connection
    // header, which costs HTTP/1.1 clients (curl, wrk, Go, Python) a new connection per
    // request. HTTP/1.1 is persistent by default, so drop that header; explicit
    // "Connection: close" and HTTP/1.0 requests still close.
    if (req.version() == Http::Version::Http11 && !req.headers().has("Connection")) {
      response.headers().remove<Http::Header::Connection>();
    }

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
    }
    if (auto ct = req.headers().tryGet<Http::Header::ContentType>()) {
      api_req.content_type = ct->mime().raw();
      if (api_req.content_type->empty()) api_req.content_type = ct->mime().toString();
    }
    if (auto auth = req.headers().tryGet<Http::Header::Authorization>()) {
      api_req.authorization = auth->value();
    }
    api_req.if_match = RawHeader(req, "If-Match");
    api_req.if_none_match = RawHeader(req, "If-None-Match");

    ApiResponse out = api_->Handle(api_req);
    Send(response, out, api_req.method == HttpMethod::kHead);
    metrics_->RecordRequest(api_req.method, out.code, std::chrono::steady_clock::now() - started);
  }

  void onTimeout(const Http::Request& /*req*/, Http::ResponseWriter response) override {
    response.headers().remove<Http::Header::Connection>();
    response.headers().add<Http::Header::Connection>(Http::ConnectionControl::Close);
    ApiResponse out;
    out.code = 408;
    out.body = JsonError(408, "request not received in time");
    out.content_type = "application/json";
    Send(response, out, false);
  }

 private:
  static void Send(Http::ResponseWriter& response, ApiResponse& out, bool head) {
    auto& headers = response.headers();
    auto add = [&headers](const char* name, std::string value) {
      headers.add(std::make_shared<OutHeader>(name, std::move(value)));
    };
    if (!out.content_type.empty()) add("Content-Type", std::move(out.content_type));
    if (out.etag) add("ETag", FormatEtag(*out.etag));
    if (out.allow) add("Allow", out.allow);
    if (out.www_authenticate) add("WWW-Authenticate", "Bearer");
    if (out.cache_control) add("Cache-Control", out.cache_control);
    if (head) out.body.clear();
    // A rejected promise only means the client went away; nothing to do about it here.
    response.send(static_cast<Http::Code>(out.code), out.body);
  }

  const NodeApi* api_;
  NodeMetrics* metrics_;
};

}  // namespace

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

HttpServer::HttpServer(const NodeApi& api, NodeMetrics& metrics, ServerOptions options)
    : api_(api), metrics_(metrics), options_(std::move(options)) {}

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
    endpoint_->setHandler(Http::make_handler<RequestHandler>(&api_, &metrics_));
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
