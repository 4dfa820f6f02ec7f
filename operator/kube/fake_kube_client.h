// FakeKubeClient: an in-memory KubeClient for unit tests (the operator's and this library's).
// It behaves like the API server where reconcilers can tell the difference:
//   - one global resourceVersion counter (like etcd's revision) bumped on every write;
//     metadata.generation starts at 1 and is bumped when anything outside metadata/status
//     changes; uid, creationTimestamp, namespace, apiVersion and kind are set on create;
//     metadata.generateName is honoured.
//   - Update with a stale metadata.resourceVersion is Conflict; without one it is unconditional.
//     A write that changes nothing bumps nothing and emits no watch event (as the server does).
//   - status subresource: Update/Patch with subresource "status" change only .status; the main
//     resource ignores .status (Create drops it; use Seed() to store an object with status).
//   - scale subresource: Get/Update/Patch "scale" map to an autoscaling/v1 Scale built from
//     spec.replicas / status.replicas (paths configurable per resource with SetScalePaths).
//   - Patch: kMerge is RFC 7386; kJson is RFC 6902; kStrategicMerge is treated as a merge patch
//     (lists are replaced, not merged by key: keep strategic patches list-free in tests);
//     kApply is a merge of the given object into the live one, creating it when absent (no
//     field ownership: `force` and field managers are recorded but not enforced). A patch whose
//     body carries metadata.resourceVersion is checked like an Update.
//   - Delete honours uid/resourceVersion preconditions (Conflict), finalizers (sets
//     deletionTimestamp; the object goes when the last finalizer is removed) and ownerReferences
//     (dependents are deleted, or only un-owned with kOrphan), like the garbage collector.
//   - List: label and field selectors, paging with limit/continue; resource_version ignored.
//   - Watch: fed from the store's change stream from the given resourceVersion ("" = from now);
//     a resourceVersion older than the last Compact() is OutOfRange (410); selector changes give
//     ADDED/DELETED as the server does. The server-side timeout is not simulated: end watches
//     with CloseWatches(). Bookmarks only when SendBookmark() is called.
//   - test controls: InjectError (the next N calls of a verb fail with a given Status), call
//     counters per verb (CallCount, WriteCount: "a second reconcile makes zero writes"), and a
//     request log.
//
// Thread safety: every method may be called from any thread concurrently. Watch callbacks run
// without the store's lock held, so they may call back into the client.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kube/clock.h"
#include "kube/kube_client.h"

namespace kvcache::kube {

enum class Verb { kGet, kList, kCreate, kUpdate, kPatch, kDelete, kWatch };
inline constexpr int kVerbCount = 7;
// "get", "list", ... (lower case, as in audit logs and metrics).
std::string_view VerbName(Verb verb);

class FakeKubeClient final : public KubeClient {
 public:
  // `clock` stamps creationTimestamp / deletionTimestamp; the system clock when null.
  explicit FakeKubeClient(Clock* clock = nullptr);
  ~FakeKubeClient() override;

  StatusOr<Object> Get(const ResourceRef& ref, std::string_view ns, std::string_view name,
                       std::string_view subresource = "") override;
  StatusOr<ListResult> List(const ResourceRef& ref, std::string_view ns,
                            const ListOptions& options = {}) override;
  StatusOr<Object> Create(const ResourceRef& ref, std::string_view ns,
                          const Object& object) override;
  StatusOr<Object> Update(const ResourceRef& ref, std::string_view ns, const Object& object,
                          std::string_view subresource = "") override;
  StatusOr<Object> Patch(const ResourceRef& ref, std::string_view ns, std::string_view name,
                         PatchType type, const Object& body, const PatchOptions& options = {},
                         std::string_view subresource = "") override;
  Status Delete(const ResourceRef& ref, std::string_view ns, std::string_view name,
                const DeleteOptions& options = {}) override;
  Status Watch(const ResourceRef& ref, std::string_view ns, const WatchOptions& options,
               const std::function<bool(const WatchEvent&)>& on_event,
               std::stop_token stop) override;

  // ---- test controls (none of these count as calls or appear in the request log) ----

  // Stores `object` as given (status included), creating or replacing, with the usual
  // metadata bumps and a watch event. Returns the stored object.
  Object Seed(const ResourceRef& ref, const Object& object);
  // The stored object, or nullopt. Does not count as a call.
  std::optional<Object> Peek(const ResourceRef& ref, std::string_view ns,
                             std::string_view name) const;
  // Every stored object of `ref` (in `ns`, or all namespaces when ns is empty), sorted.
  std::vector<Object> Objects(const ResourceRef& ref, std::string_view ns = "") const;

  // The next `times` calls of `verb` (optionally only on `ref` / `name`) fail with `status`
  // (before touching the store). Injections queue up in order.
  void InjectError(Verb verb, Status status, int times = 1,
                   std::optional<ResourceRef> only_ref = std::nullopt,
                   std::string only_name = "");
  void ClearInjectedErrors();

  // Calls made per verb since construction or ResetCounts() (failed calls included).
  int64_t CallCount(Verb verb) const;
  // Create + Update + Patch + Delete calls.
  int64_t WriteCount() const;
  void ResetCounts();

  struct Request {
    Verb verb;
    ResourceRef ref;
    std::string ns;
    std::string name;
    std::string subresource;
    std::optional<PatchType> patch_type;
    Object body;  // the object or patch sent (null for reads/deletes)
    StatusCode result = StatusCode::kOk;
    // "patch apps/v1 statefulsets prod/demo-0 (status)"
    std::string ToString() const;
  };
  std::vector<Request> Requests() const;
  void ClearRequests();

  // The current resourceVersion (the last write's).
  int64_t ResourceVersion() const;
  // Forgets history up to now: Watch from an older resourceVersion is OutOfRange (410).
  void Compact();
  // Ends every running Watch: with OK (as a server-side timeout does) or with `status`; an
  // OutOfRange status is delivered first as an ERROR event carrying a 410 Status object.
  void CloseWatches(Status status = Status::Ok());
  // Sends a BOOKMARK with the current resourceVersion to every watch that allows bookmarks.
  void SendBookmark();
  // Number of Watch calls currently blocked/streaming (tests await this before writing).
  int ActiveWatches() const;
  bool AwaitActiveWatches(int n, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Where the scale subresource reads and writes replicas for `ref` (JSON pointers).
  void SetScalePaths(const ResourceRef& ref, std::string spec_replicas_pointer,
                     std::string status_replicas_pointer, std::string selector_pointer = "");

 private:
  using Key = std::tuple<std::string, std::string, std::string, std::string>;  // group,res,ns,name
  struct Change {
    int64_t rv;
    std::string group, resource, ns;
    WatchEvent::Type type;
    Object old_object;  // null for ADDED
    Object object;
  };
  struct Injection {
    Verb verb;
    Status status;
    int remaining;
    std::optional<ResourceRef> ref;
    std::string name;
  };
  struct ScalePaths {
    std::string spec, status, selector;
  };

  // All helpers below REQUIRE mu_ held.
  std::optional<Status> TakeInjectionLocked(Verb verb, const ResourceRef& ref,
                                            std::string_view name);
  void RecordLocked(Verb verb, const ResourceRef& ref, std::string_view ns, std::string_view name,
                    std::string_view subresource, std::optional<PatchType> patch_type,
                    const Object& body, StatusCode result);
  StatusOr<Object> CreateLocked(const ResourceRef& ref, std::string_view ns, Object object,
                                bool keep_status);
  // Stores `next` over `current` (which exists): bumps rv/generation when something changed.
  Object CommitLocked(const ResourceRef& ref, const Key& key, const Object& current, Object next);
  StatusOr<Object> WriteExistingLocked(const ResourceRef& ref, std::string_view ns,
                                       std::string_view name, Object next,
                                       std::string_view subresource);
  void RemoveLocked(const ResourceRef& ref, const Key& key, std::optional<PropagationPolicy> policy);
  void EmitLocked(const ResourceRef& ref, std::string_view ns, WatchEvent::Type type,
                  Object old_object, Object object);
  std::string NowTimestampLocked() const;
  Object ScaleOfLocked(const ResourceRef& ref, const Object& object) const;
  ScalePaths ScalePathsLocked(const ResourceRef& ref) const;
  std::string NamespaceFor(const ResourceRef& ref, std::string_view ns,
                           const Object& object) const;

  Clock* clock_;
  mutable std::mutex mu_;
  std::condition_variable_any changed_;
  std::map<Key, Object> objects_;
  // Who owns what is found by scanning: the fake holds few objects.
  static constexpr size_t kMaxHistory = 100000;
  std::deque<Change> changes_;
  int64_t rv_ = 1000;
  int64_t compacted_rv_ = 0;
  int64_t uid_counter_ = 0;
  int64_t name_counter_ = 0;
  std::vector<Injection> injections_;
  std::array<int64_t, kVerbCount> calls_{};
  std::vector<Request> requests_;
  std::map<std::pair<std::string, std::string>, ScalePaths> scale_paths_;
  int active_watches_ = 0;
  int64_t close_generation_ = 0;
  Status close_status_;
  int64_t bookmark_generation_ = 0;
};

}  // namespace kvcache::kube
