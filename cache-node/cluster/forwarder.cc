#include "cluster/forwarder.h"

#include <atomic>

#include <cpprest/http_client.h>
#include <pplx/threadpool.h>
#include <sched.h>

namespace kvcache::node {
namespace {

using web::http::http_request;
using web::http::http_response;
using web::http::client::http_client;
using web::http::client::http_client_config;

// Headers of the owner's answer that mean something to the client.
constexpr const char* kPassedBack[] = {"Content-Type", "ETag", "Allow", "Retry-After",
                                       "WWW-Authenticate", "X-KVCache-Owner",
                                       "X-KVCache-Epoch"};

}  // namespace

Forwarder::Forwarder(std::chrono::milliseconds timeout) : timeout_(timeout) {
  // cpprestsdk's default pool has 40 threads: every forwarded request then bounces between
  // threads (measured: context switches were most of the forwarding node's CPU). One thread per
  // usable CPU is enough for its asynchronous I/O. The pool is process-wide and can be sized
  // only before first use.
  static std::once_flag sized;
  std::call_once(sized, [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    size_t cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    try {
      crossplat::threadpool::initialize_with_threads(std::max<size_t>(cpus, 2));
    } catch (const std::exception&) {
      // Already in use: keep the pool as it is.
    }
  });
}

Forwarder::~Forwarder() = default;

std::shared_ptr<http_client> Forwarder::ClientFor(const std::string& addr) {
  std::lock_guard lock(mu_);
  auto it = clients_.find(addr);
  if (it != clients_.end()) return it->second;
  http_client_config config;
  config.set_timeout(timeout_);
  auto client = std::make_shared<http_client>("http://" + addr, config);
  clients_.emplace(addr, client);
  return client;
}

void Forwarder::Forward(const std::string& addr, ForwardRequest request,
                        std::function<void(StatusOr<ForwardResponse>)> done) {
  // `done` must run exactly once, whichever continuation gets there.
  auto once = std::make_shared<std::atomic<bool>>(false);
  auto finish = [once, done = std::move(done)](StatusOr<ForwardResponse> result) {
    if (!once->exchange(true)) done(std::move(result));
  };
  const std::string where = addr;
  try {
    http_request out{web::http::method(request.method)};
    out.set_request_uri(web::uri(request.path_and_query));
    std::string content_type;
    for (auto& [name, value] : request.headers) {
      if (name == "Content-Type") {
        content_type = value;
      } else {
        out.headers().add(name, value);
      }
    }
    out.headers().add(kHopHeader, "1");
    if (!request.body.empty() || request.method == "PUT") {
      std::vector<unsigned char> bytes(request.body.begin(), request.body.end());
      out.set_body(std::move(bytes));
      // set_body labels the bytes application/octet-stream; pass on what the client said.
      out.headers().remove(web::http::header_names::content_type);
      if (!content_type.empty()) out.headers().add("Content-Type", content_type);
    }
    ClientFor(addr)
        ->request(out)
        .then([finish](http_response response) {
          auto result = std::make_shared<ForwardResponse>();
          result->code = response.status_code();
          result->content_length = response.headers().content_length();
          for (const char* name : kPassedBack) {
            auto it = response.headers().find(name);
            if (it != response.headers().end()) result->headers.emplace_back(name, it->second);
          }
          return response.extract_vector().then(
              [finish, result](std::vector<unsigned char> body) {
                result->body.assign(body.begin(), body.end());
                finish(std::move(*result));
              });
        })
        .then([finish, where](pplx::task<void> task) {
          try {
            task.get();
          } catch (const std::exception& e) {
            finish(UnavailableError("owner " + where + " unreachable: " + e.what()));
          }
        });
  } catch (const std::exception& e) {
    finish(UnavailableError("cannot forward to " + where + ": " + e.what()));
  }
}

}  // namespace kvcache::node
