#include "kube/rest_kube_client.h"

#include <thread>

#include <boost/asio/ssl.hpp>
#include <cpprest/containerstream.h>
#include <cpprest/http_client.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "kube/errors.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;
using web::http::http_request;
using web::http::http_response;
using web::http::method;
using web::http::methods;
using web::http::client::http_client;
using web::http::client::http_client_config;

using Query = std::vector<std::pair<std::string, std::string>>;

std::string PropagationName(PropagationPolicy p) {
  switch (p) {
    case PropagationPolicy::kBackground: return "Background";
    case PropagationPolicy::kForeground: return "Foreground";
    case PropagationPolicy::kOrphan: return "Orphan";
  }
  return "Background";
}

std::string PatchContentType(PatchType type) {
  switch (type) {
    case PatchType::kMerge: return "application/merge-patch+json";
    case PatchType::kJson: return "application/json-patch+json";
    case PatchType::kStrategicMerge: return "application/strategic-merge-patch+json";
    case PatchType::kApply: return "application/apply-patch+yaml";
  }
  return "application/merge-patch+json";
}

WatchEvent::Type EventType(const std::string& type, bool* known) {
  *known = true;
  if (type == "ADDED") return WatchEvent::Type::kAdded;
  if (type == "MODIFIED") return WatchEvent::Type::kModified;
  if (type == "DELETED") return WatchEvent::Type::kDeleted;
  if (type == "BOOKMARK") return WatchEvent::Type::kBookmark;
  if (type == "ERROR") return WatchEvent::Type::kError;
  *known = false;
  return WatchEvent::Type::kError;
}

}  // namespace

std::string ResourcePath(const ResourceRef& ref, std::string_view ns, std::string_view name,
                         std::string_view subresource) {
  std::string path = ref.group.empty() ? "/api/" + ref.version
                                       : "/apis/" + ref.group + "/" + ref.version;
  if (ref.namespaced && !ns.empty()) path += "/namespaces/" + std::string(ns);
  path += "/" + ref.resource;
  if (!name.empty()) path += "/" + std::string(name);
  if (!subresource.empty()) path += "/" + std::string(subresource);
  return path;
}

struct RestKubeClient::Impl {
  ClusterConfig config;
  RestOptions options;
  http_client_config http_config;
  std::unique_ptr<http_client> client;
  TokenSource tokens;
  Clock* clock;
  std::atomic<int64_t>* request_count = nullptr;

  Impl(ClusterConfig c, RestOptions o)
      : config(std::move(c)),
        options(std::move(o)),
        tokens(config.token, config.token_file),
        clock(options.clock != nullptr ? options.clock : &SystemClock::Instance()) {}

  struct Answer {
    int code = 0;
    std::string body;
  };

  std::string Target(const std::string& path, const Query& query) const {
    web::uri_builder builder(utility::conversions::to_string_t(path));
    for (const auto& [k, v] : query) builder.append_query(k, v, /*do_encoding=*/true);
    return builder.to_string();
  }

  Status Authorize(http_request& request) {
    if (config.token.empty() && config.token_file.empty()) return Status::Ok();
    auto token = tokens.Token();
    if (!token.ok()) return UnauthenticatedError("no bearer token: " + token.status().message());
    request.headers().add("Authorization", "Bearer " + *token);
    return Status::Ok();
  }

  // Latency is real time, whatever clock paces the retries.
  void Observe(std::string_view verb, int code, std::chrono::steady_clock::time_point start) {
    request_count->fetch_add(1);
    if (options.metrics == nullptr) return;
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    options.metrics->ObserveRequest(verb, code, seconds);
  }

  // One API call with client-go's Retry-After handling. Returns the final answer (any code) or
  // Unavailable for transport failures.
  StatusOr<Answer> Send(std::string_view verb, const method& m, const std::string& target,
                        const std::string* body, const std::string& content_type) {
    int transport_retries = 0;
    for (int attempt = 0;; ++attempt) {
      http_request request(m);
      request.set_request_uri(utility::conversions::to_string_t(target));
      request.headers().add("Accept", "application/json");
      request.headers().add("User-Agent", options.user_agent);
      if (Status s = Authorize(request); !s.ok()) return s;
      if (body != nullptr) request.set_body(*body, content_type);
      auto start = std::chrono::steady_clock::now();
      Answer answer;
      std::string retry_after;
      try {
        http_response response = client->request(request).get();
        answer.code = response.status_code();
        answer.body = response.extract_utf8string(/*ignore_content_type=*/true).get();
        auto it = response.headers().find("Retry-After");
        if (it != response.headers().end()) retry_after = it->second;
      } catch (const std::exception& e) {
        Observe(verb, 0, start);
        // A pooled keep-alive connection the server closed (an apiserver restart) fails on
        // first use. Send again when that cannot duplicate a write: reads and PUTs, or
        // when the request never left (connect/write failures).
        std::string what = e.what();
        bool unsent = what.find("write") != std::string::npos ||
                      what.find("connect") != std::string::npos;
        // The pool may hold several dead connections: a few quick tries drain them.
        if (transport_retries < 3 && (m == methods::GET || m == methods::PUT || unsent)) {
          ++transport_retries;
          --attempt;
          clock->SleepFor(std::chrono::milliseconds(20 * transport_retries), {});
          continue;
        }
        return UnavailableError("request to " + config.server + target + " failed: " + what);
      }
      Observe(verb, answer.code, start);
      bool throttled = answer.code == 429 || answer.code >= 500;
      auto wait = throttled ? ParseRetryAfter(retry_after) : std::nullopt;
      if (!wait || attempt >= options.max_retries) return answer;
      if (options.metrics != nullptr) options.metrics->ObserveRetry(answer.code);
      auto delay = std::min<std::chrono::seconds>(*wait, options.max_retry_wait);
      // At least a short pause: Retry-After: 0 must not become a busy loop.
      clock->SleepFor(std::max<Clock::Duration>(delay, std::chrono::milliseconds(100)), {});
    }
  }

  StatusOr<Object> Call(std::string_view verb, const method& m, const std::string& target,
                        const json* body, const std::string& content_type) {
    std::string text;
    if (body != nullptr) text = body->dump();
    auto answer = Send(verb, m, target, body != nullptr ? &text : nullptr, content_type);
    if (!answer.ok()) return answer.status();
    Status s = StatusFromHttp(answer->code, answer->body);
    if (!s.ok()) return s;
    json parsed = json::parse(answer->body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) {
      return InternalError("API server answered " + std::to_string(answer->code) +
                           " with a body that is not JSON");
    }
    return parsed;
  }

  Query WriteQuery() const {
    Query q;
    if (options.strict_field_validation) q.emplace_back("fieldValidation", "Strict");
    return q;
  }
};

RestKubeClient::RestKubeClient(ClusterConfig config, RestOptions options,
                               std::unique_ptr<Impl> impl)
    : config_(std::move(config)), options_(std::move(options)), impl_(std::move(impl)) {
  impl_->request_count = &request_count_;
}

RestKubeClient::~RestKubeClient() = default;

StatusOr<std::unique_ptr<RestKubeClient>> RestKubeClient::Create(ClusterConfig config,
                                                                 RestOptions options) {
  auto impl = std::make_unique<Impl>(config, options);
  bool https = config.server.rfind("https://", 0) == 0;
  if (!https && config.server.rfind("http://", 0) != 0) {
    return InvalidArgumentError("server must be an https:// (or plain http://) URL: " +
                                config.server);
  }
  if (https && config.ca_pem.empty()) {
    return FailedPreconditionError("no cluster CA for " + config.server +
                                   ": TLS verification is never skipped");
  }
  impl->http_config.set_timeout(options.request_timeout);
  impl->http_config.set_validate_certificates(true);
  if (https) {
    std::string ca = config.ca_pem;
    std::string cert = config.client_cert_pem;
    std::string key = config.client_key_pem;
    auto setup = [ca, cert, key](boost::asio::ssl::context& ctx) {
      // Only the cluster CA is trusted: replace the default store (system CAs) cpprestsdk set.
      SSL_CTX_set_cert_store(ctx.native_handle(), X509_STORE_new());
      ctx.add_certificate_authority(boost::asio::buffer(ca));
      if (!cert.empty()) {
        ctx.use_certificate_chain(boost::asio::buffer(cert));
        ctx.use_private_key(boost::asio::buffer(key), boost::asio::ssl::context::pem);
      }
    };
    // Try the PEM data once now so a bad CA or key is an error here, not a handshake failure.
    try {
      boost::asio::ssl::context probe(boost::asio::ssl::context::tls_client);
      setup(probe);
    } catch (const std::exception& e) {
      return InvalidArgumentError("TLS material for " + config.server + " (CA from " +
                                  config.ca_origin + "): " + e.what());
    }
    impl->http_config.set_ssl_context_callback(setup);
  }
  try {
    impl->client = std::make_unique<http_client>(utility::conversions::to_string_t(config.server),
                                                 impl->http_config);
  } catch (const std::exception& e) {
    return InvalidArgumentError("bad server URL " + config.server + ": " + e.what());
  }
  return std::unique_ptr<RestKubeClient>(
      new RestKubeClient(std::move(config), std::move(options), std::move(impl)));
}

StatusOr<Object> RestKubeClient::GetPath(const std::string& path) {
  return impl_->Call("get", methods::GET, path, nullptr, "");
}

StatusOr<Object> RestKubeClient::Get(const ResourceRef& ref, std::string_view ns,
                                     std::string_view name, std::string_view subresource) {
  return impl_->Call("get", methods::GET,
                     impl_->Target(ResourcePath(ref, ns, name, subresource), {}), nullptr, "");
}

StatusOr<ListResult> RestKubeClient::List(const ResourceRef& ref, std::string_view ns,
                                          const ListOptions& options) {
  ListResult result;
  std::string continue_token = options.continue_token;
  while (true) {
    Query q;
    if (!options.label_selector.empty()) q.emplace_back("labelSelector", options.label_selector);
    if (!options.field_selector.empty()) q.emplace_back("fieldSelector", options.field_selector);
    if (options.limit > 0) q.emplace_back("limit", std::to_string(options.limit));
    if (!continue_token.empty()) {
      q.emplace_back("continue", continue_token);
    } else if (!options.resource_version.empty()) {
      q.emplace_back("resourceVersion", options.resource_version);
    }
    auto page = impl_->Call("list", methods::GET, impl_->Target(ResourcePath(ref, ns), q), nullptr,
                            "");
    if (!page.ok()) return page.status();
    const json& meta = (*page)["metadata"];
    if (result.resource_version.empty() || continue_token.empty()) {
      result.resource_version = meta.value("resourceVersion", "");
    }
    continue_token = meta.value("continue", "");
    if (auto items = page->find("items"); items != page->end() && items->is_array()) {
      result.items.reserve(result.items.size() + items->size());
      for (json& item : *items) {
        // Typed lists leave apiVersion/kind off their items; callers expect whole objects.
        if (!item.contains("apiVersion")) item["apiVersion"] = ref.ApiVersion();
        if (!item.contains("kind") && !ref.kind.empty()) item["kind"] = ref.kind;
        result.items.push_back(std::move(item));
      }
    }
    if (continue_token.empty() || options.limit <= 0 || options.single_page) break;
  }
  result.continue_token = continue_token;
  return result;
}

StatusOr<Object> RestKubeClient::Create(const ResourceRef& ref, std::string_view ns,
                                        const Object& object) {
  std::string in_ns = ns.empty() ? MetaString(object, "namespace") : std::string(ns);
  return impl_->Call("create", methods::POST,
                     impl_->Target(ResourcePath(ref, in_ns), impl_->WriteQuery()), &object,
                     "application/json");
}

StatusOr<Object> RestKubeClient::Update(const ResourceRef& ref, std::string_view ns,
                                        const Object& object, std::string_view subresource) {
  std::string name = MetaString(object, "name");
  if (name.empty()) return InvalidArgumentError("update: metadata.name is required");
  std::string in_ns = ns.empty() ? MetaString(object, "namespace") : std::string(ns);
  return impl_->Call("update", methods::PUT,
                     impl_->Target(ResourcePath(ref, in_ns, name, subresource),
                                   impl_->WriteQuery()),
                     &object, "application/json");
}

StatusOr<Object> RestKubeClient::Patch(const ResourceRef& ref, std::string_view ns,
                                       std::string_view name, PatchType type, const Object& body,
                                       const PatchOptions& options, std::string_view subresource) {
  Query q = impl_->WriteQuery();
  if (!options.field_manager.empty()) q.emplace_back("fieldManager", options.field_manager);
  if (type == PatchType::kApply && options.force) q.emplace_back("force", "true");
  return impl_->Call("patch", methods::PATCH,
                     impl_->Target(ResourcePath(ref, ns, name, subresource), q), &body,
                     PatchContentType(type));
}

Status RestKubeClient::Delete(const ResourceRef& ref, std::string_view ns, std::string_view name,
                              const DeleteOptions& options) {
  json body = {{"kind", "DeleteOptions"}, {"apiVersion", "v1"}};
  if (options.propagation) body["propagationPolicy"] = PropagationName(*options.propagation);
  if (options.precondition_uid) body["preconditions"]["uid"] = *options.precondition_uid;
  if (options.precondition_resource_version) {
    body["preconditions"]["resourceVersion"] = *options.precondition_resource_version;
  }
  auto result = impl_->Call("delete", methods::DEL,
                            impl_->Target(ResourcePath(ref, ns, name), {}), &body,
                            "application/json");
  return result.ok() ? Status::Ok() : result.status();
}

Status RestKubeClient::Watch(const ResourceRef& ref, std::string_view ns,
                             const WatchOptions& options,
                             const std::function<bool(const WatchEvent&)>& on_event,
                             std::stop_token stop) {
  if (stop.stop_requested()) return Status::Ok();
  Query q = {{"watch", "true"}};
  if (!options.resource_version.empty()) q.emplace_back("resourceVersion", options.resource_version);
  if (!options.label_selector.empty()) q.emplace_back("labelSelector", options.label_selector);
  if (!options.field_selector.empty()) q.emplace_back("fieldSelector", options.field_selector);
  if (options.allow_bookmarks) q.emplace_back("allowWatchBookmarks", "true");
  if (options.timeout_seconds > 0) {
    q.emplace_back("timeoutSeconds", std::to_string(options.timeout_seconds));
  }
  std::string target = impl_->Target(ResourcePath(ref, ns), q);

  // Its own client: the inactivity timeout must outlast a quiet watch (DEPS-NOTES).
  http_client_config config = impl_->http_config;
  config.set_timeout(std::chrono::seconds(std::max(options.timeout_seconds, 60) + 30));
  pplx::cancellation_token_source cancel;
  std::stop_callback on_stop(stop, [&cancel] { cancel.cancel(); });
  auto start = std::chrono::steady_clock::now();
  bool answered = false;
  try {
    http_client client(utility::conversions::to_string_t(config_.server), config);
    http_request request(methods::GET);
    request.set_request_uri(utility::conversions::to_string_t(target));
    request.headers().add("Accept", "application/json");
    request.headers().add("User-Agent", options_.user_agent);
    if (Status s = impl_->Authorize(request); !s.ok()) return s;
    http_response response = client.request(request, cancel.get_token()).get();
    answered = true;
    impl_->Observe("watch", response.status_code(), start);
    if (response.status_code() != 200) {
      std::string body = response.extract_utf8string(true).get();
      return StatusFromHttp(response.status_code(), body);
    }
    auto stream = response.body();
    while (!stop.stop_requested()) {
      concurrency::streams::container_buffer<std::string> line;
      size_t n = stream.read_line(line).get();
      if (n == 0) {
        if (stream.is_eof()) return Status::Ok();  // the server ended the watch
        continue;
      }
      json event = json::parse(line.collection(), nullptr, /*allow_exceptions=*/false);
      if (!event.is_object()) return UnavailableError("watch: malformed event line");
      bool known;
      WatchEvent e{EventType(event.value("type", ""), &known), event.value("object", json())};
      if (!known) continue;
      if (e.type != WatchEvent::Type::kError && e.object.is_object()) {
        if (!e.object.contains("apiVersion")) e.object["apiVersion"] = ref.ApiVersion();
        if (!e.object.contains("kind") && !ref.kind.empty()) e.object["kind"] = ref.kind;
      }
      if (!on_event(e)) return Status::Ok();
      if (e.type == WatchEvent::Type::kError) {
        Status s = StatusFromApiStatus(e.object);
        return s.ok() ? UnavailableError("watch ended with an ERROR event") : s;
      }
    }
    return Status::Ok();
  } catch (const std::exception& e) {
    if (stop.stop_requested()) return Status::Ok();
    if (!answered) impl_->Observe("watch", 0, start);
    return UnavailableError("watch " + target + ": " + e.what());
  }
}

}  // namespace kvcache::kube
