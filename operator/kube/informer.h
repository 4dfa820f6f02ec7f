// Informer: a local, watched copy of one resource type, as client-go's SharedIndexInformer.
//   LIST (paged) then WATCH from the list's resourceVersion with allowWatchBookmarks and a
//   randomised timeoutSeconds (5-10 min); a watch the server ends is resumed from the last
//   resourceVersion seen (events or bookmarks); 410 Gone (OutOfRange) relists; other errors
//   back off exponentially with jitter (800 ms doubling to 30 s, as the reflector does) and the
//   watch resumes. A relist is diffed against the cache, so handlers see exactly the adds,
//   updates and deletes that happened while the watch was down — no loss, no duplicates.
//   The cache is indexed by namespace, by label (key=value) and by owner uid. Handlers get
//   add/update/delete; every resync_period each cached object is delivered again as an update
//   (old == new), so level-triggered controllers re-check everything periodically.
//
// Thread safety: cache reads and AddHandler may be called from any thread. Handlers run on the
// informer's threads, one at a time, without the cache lock held (they may read the cache).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kube/clock.h"
#include "kube/kube_client.h"
#include "kube/metrics.h"
#include "kube/selector.h"

namespace kvcache::kube {

struct InformerOptions {
  std::string ns;  // "" = all namespaces
  std::string label_selector;
  std::string field_selector;
  int64_t page_size = 500;                              // LIST limit (0 = one request)
  Clock::Duration resync_period = Clock::Duration::zero();  // 0 = no resync
  int min_watch_timeout_seconds = 300;                  // each watch: [min, 2*min) seconds
  Clock::Duration backoff_initial = std::chrono::milliseconds(800);
  Clock::Duration backoff_max = std::chrono::seconds(30);
  ClientMetrics* metrics = nullptr;                     // watch restarts; not owned
  // Drop metadata.managedFields from cached objects (controller-runtime does the same): they
  // are most of an object's size and a controller never reads them.
  bool strip_managed_fields = true;
};

struct EventHandlers {
  std::function<void(const Object&)> on_add;
  std::function<void(const Object& old_object, const Object& new_object)> on_update;
  std::function<void(const Object&)> on_delete;
};

class Informer {
 public:
  Informer(KubeClient& client, ResourceRef ref, InformerOptions options = {},
           Clock& clock = SystemClock::Instance());
  ~Informer();  // Stop().
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  // Handlers added after Start get an add for every cached object first (as client-go does).
  void AddHandler(EventHandlers handlers);
  void Start();
  // Stops the threads (cancelling a blocked watch) and waits for them. Idempotent.
  void Stop();

  // True once the first LIST has been stored and delivered to the handlers.
  bool HasSynced() const;
  // Waits (real time) until HasSynced or the timeout passes.
  bool WaitForSync(std::chrono::milliseconds timeout) const;

  // ---- the cache (copies; cheap enough for the controller's reads) ----
  std::optional<Object> Get(std::string_view ns, std::string_view name) const;
  // All objects (in `ns` when non-empty), sorted by namespace/name.
  std::vector<Object> List(std::string_view ns = "") const;
  // Objects matching `selector` (in `ns` when non-empty); an equality term picks the index.
  std::vector<Object> ListByLabel(const LabelSelector& selector, std::string_view ns = "") const;
  // Objects with an ownerReference to `uid`.
  std::vector<Object> ListByOwner(std::string_view uid) const;
  size_t Size() const;
  // The resourceVersion the next watch starts from.
  std::string ResourceVersion() const;

  struct Stats {
    int64_t lists = 0;          // LIST calls made (pages included)
    int64_t watches = 0;        // WATCH calls made
    int64_t relists = 0;        // relists after the first (410 or errors while listing)
    int64_t events = 0;         // watch events applied
  };
  Stats stats() const;

 private:
  using Key = std::pair<std::string, std::string>;  // namespace, name
  struct Entry {
    std::shared_ptr<const Object> object;
  };
  enum class Change { kAdd, kUpdate, kDelete };
  struct Notification {
    Change change;
    std::shared_ptr<const Object> old_object;
    std::shared_ptr<const Object> object;
  };

  void Run(std::stop_token stop);
  void ResyncLoop(std::stop_token stop);
  // Lists and replaces the cache. Returns the list's resourceVersion.
  StatusOr<std::string> ListAndReplace(std::stop_token stop);
  // Applies one watch event to the cache and notifies the handlers.
  void Apply(const WatchEvent& event);
  void Upsert(std::shared_ptr<const Object> object, std::vector<Notification>* out);
  void Remove(const Key& key, std::shared_ptr<const Object> last, std::vector<Notification>* out);
  void IndexLocked(const Key& key, const Object& object, bool add);
  void DispatchLocked(const std::vector<Notification>& notes);
  Clock::Duration NextBackoff();
  static Status CancelledStatus();
  std::vector<Object> CollectLocked(const std::set<Key>& keys, std::string_view ns) const;

  KubeClient& client_;
  const ResourceRef ref_;
  const InformerOptions options_;
  Clock& clock_;

  mutable std::mutex mu_;
  mutable std::condition_variable synced_cv_;
  std::map<Key, Entry> cache_;
  std::map<std::string, std::set<Key>> by_namespace_;
  std::map<std::string, std::set<Key>> by_label_;  // "key=value"
  std::map<std::string, std::set<Key>> by_owner_;
  std::string resource_version_;
  bool synced_ = false;
  Stats stats_;

  // Lock order: dispatch_mu_, then mu_. Held while the cache changes and its handlers run, so
  // handlers run one at a time and in the order of the changes.
  std::mutex dispatch_mu_;
  std::vector<EventHandlers> handlers_;

  std::mutex backoff_mu_;
  int backoff_steps_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};

  std::mutex threads_mu_;
  std::jthread run_thread_;
  std::jthread resync_thread_;
};

// "ns/name" (or "name" for cluster-scoped objects): the WorkQueue key of an object.
std::string ObjectKey(const Object& object);

}  // namespace kvcache::kube
