// KubeClient: the operator's only way to talk to Kubernetes (DESIGN.md §6). It knows nothing of
// KVCache: objects are plain JSON (nlohmann::json) addressed by a ResourceRef, the way a dynamic
// client works. Implementations: RestKubeClient (cpprestsdk, the real API server) and
// FakeKubeClient (in memory, for the operator's unit tests; bumps resourceVersion and
// generation, and can inject 409/410/500).
//
// Errors map to Status in one place (kube/errors.h): 404 NotFound, 409 AlreadyExists (create)
// or Conflict (stale resourceVersion), 410 OutOfRange ("resourceVersion too old": relist),
// 400/422 InvalidArgument, 401 Unauthenticated, 403 PermissionDenied, 429 ResourceExhausted,
// 5xx and transport errors Unavailable. 429 and 503 with Retry-After are retried inside the
// client (client-go's behaviour) before an error is returned.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/status.h"

namespace kvcache::kube {

using Object = nlohmann::json;

// metadata.<field> of an object when it is a string, else "" (absent metadata included).
inline std::string MetaString(const Object& object, const char* field) {
  auto meta = object.find("metadata");
  if (meta == object.end() || !meta->is_object()) return "";
  auto it = meta->find(field);
  return it != meta->end() && it->is_string() ? it->get<std::string>() : "";
}

// Which REST collection an object lives in: {"apps", "v1", "statefulsets", "StatefulSet"}.
// The core group is "".
struct ResourceRef {
  std::string group;
  std::string version;
  std::string resource;  // plural, lower case
  std::string kind;
  bool namespaced = true;

  // "apps/v1" or "v1" for the core group.
  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  bool operator==(const ResourceRef&) const = default;
};

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
  int64_t limit = 0;           // 0: no paging; List follows continue tokens itself when > 0
  std::string continue_token;  // for callers that page by hand
  std::string resource_version;
  // With limit > 0: return only one page (`limit` items after `continue_token`) and its
  // continue token, instead of following the tokens to the end.
  bool single_page = false;
};

struct ListResult {
  std::vector<Object> items;
  std::string resource_version;  // of the list, to start a watch from
  std::string continue_token;    // empty when this was the last page
};

enum class PatchType { kMerge, kJson, kStrategicMerge, kApply };

struct PatchOptions {
  std::string field_manager = "kvcache-operator";
  bool force = false;  // server-side apply only: take over conflicting fields
};

enum class PropagationPolicy { kBackground, kForeground, kOrphan };

struct DeleteOptions {
  std::optional<PropagationPolicy> propagation;
  std::optional<std::string> precondition_uid;
  std::optional<std::string> precondition_resource_version;
};

struct WatchOptions {
  std::string resource_version;  // start point; "" = from now
  std::string label_selector;
  std::string field_selector;
  bool allow_bookmarks = true;
  int timeout_seconds = 300;  // server-side end of one watch call
};

struct WatchEvent {
  enum class Type { kAdded, kModified, kDeleted, kBookmark, kError };
  Type type = Type::kAdded;
  Object object;  // for kError: the Status object the server sent
};

class KubeClient {
 public:
  virtual ~KubeClient() = default;

  // `ns` is ignored for cluster-scoped resources; "" lists across all namespaces.
  // `subresource` is "" or e.g. "status" / "scale".
  virtual StatusOr<Object> Get(const ResourceRef& ref, std::string_view ns, std::string_view name,
                               std::string_view subresource = "") = 0;
  virtual StatusOr<ListResult> List(const ResourceRef& ref, std::string_view ns,
                                    const ListOptions& options = {}) = 0;
  // AlreadyExists if the name is taken.
  virtual StatusOr<Object> Create(const ResourceRef& ref, std::string_view ns,
                                  const Object& object) = 0;
  // PUT of the whole object (metadata.resourceVersion given = optimistic concurrency:
  // Conflict when it is stale).
  virtual StatusOr<Object> Update(const ResourceRef& ref, std::string_view ns, const Object& object,
                                  std::string_view subresource = "") = 0;
  // `body` is the patch document: JSON for kMerge/kJson/kStrategicMerge, the full intended
  // object (JSON is valid YAML) for kApply.
  virtual StatusOr<Object> Patch(const ResourceRef& ref, std::string_view ns, std::string_view name,
                                 PatchType type, const Object& body,
                                 const PatchOptions& options = {},
                                 std::string_view subresource = "") = 0;
  // OK when deleted or already gone is NOT OK: NotFound is returned so callers can tell.
  virtual Status Delete(const ResourceRef& ref, std::string_view ns, std::string_view name,
                        const DeleteOptions& options = {}) = 0;
  // Streams events to `on_event` until it returns false, the server ends the watch (OK), an
  // error occurs (410 as OutOfRange, others Unavailable), or `stop` is requested (OK). Blocks.
  virtual Status Watch(const ResourceRef& ref, std::string_view ns, const WatchOptions& options,
                       const std::function<bool(const WatchEvent&)>& on_event,
                       std::stop_token stop) = 0;
};

}  // namespace kvcache::kube
