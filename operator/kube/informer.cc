#include "kube/informer.h"

#include <algorithm>

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

}  // namespace

std::string ObjectKey(const Object& object) {
  std::string ns = MetaString(object, "namespace");
  std::string name = MetaString(object, "name");
  return ns.empty() ? name : ns + "/" + name;
}

Informer::Informer(KubeClient& client, ResourceRef ref, InformerOptions options, Clock& clock)
    : client_(client), ref_(std::move(ref)), options_(std::move(options)), clock_(clock) {}

Informer::~Informer() { Stop(); }

void Informer::AddHandler(EventHandlers handlers) {
  std::lock_guard dispatch(dispatch_mu_);
  std::vector<std::shared_ptr<const Object>> existing;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, entry] : cache_) existing.push_back(entry.object);
  }
  if (handlers.on_add) {
    for (const auto& object : existing) handlers.on_add(*object);
  }
  handlers_.push_back(std::move(handlers));
}

void Informer::Start() {
  std::lock_guard lock(threads_mu_);
  if (run_thread_.joinable()) return;
  run_thread_ = std::jthread([this](std::stop_token stop) { Run(stop); });
  if (options_.resync_period > Clock::Duration::zero()) {
    resync_thread_ = std::jthread([this](std::stop_token stop) { ResyncLoop(stop); });
  }
}

void Informer::Stop() {
  std::lock_guard lock(threads_mu_);
  for (std::jthread* t : {&run_thread_, &resync_thread_}) {
    if (!t->joinable()) continue;
    t->request_stop();
    t->join();
  }
}

bool Informer::HasSynced() const {
  std::lock_guard lock(mu_);
  return synced_;
}

bool Informer::WaitForSync(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  return synced_cv_.wait_for(lock, timeout, [&] { return synced_; });
}

Clock::Duration Informer::NextBackoff() {
  std::lock_guard lock(backoff_mu_);
  auto base = options_.backoff_initial * (int64_t{1} << std::min(backoff_steps_, 20));
  base = std::min<Clock::Duration>(base, options_.backoff_max);
  ++backoff_steps_;
  // Jitter 1.0 (the reflector's): anywhere in [base, 2*base), so restarting clients spread out.
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  return base + std::chrono::duration_cast<Clock::Duration>(base * jitter(rng_));
}

void Informer::Run(std::stop_token stop) {
  bool listed = false;
  int quiet_closes = 0;
  auto restart = [&](const char* reason) {
    if (options_.metrics != nullptr) options_.metrics->ObserveWatchRestart(ref_.resource, reason);
  };
  while (!stop.stop_requested()) {
    if (!listed) {
      auto rv = ListAndReplace(stop);
      if (!rv.ok()) {
        restart("list-error");
        clock_.SleepFor(NextBackoff(), stop);
        continue;
      }
      listed = true;
      std::lock_guard lock(backoff_mu_);
      backoff_steps_ = 0;
    }
    WatchOptions watch;
    watch.resource_version = ResourceVersion();
    watch.label_selector = options_.label_selector;
    watch.field_selector = options_.field_selector;
    watch.allow_bookmarks = true;
    {
      std::lock_guard lock(backoff_mu_);
      std::uniform_int_distribution<int> spread(0, std::max(options_.min_watch_timeout_seconds, 1));
      watch.timeout_seconds = options_.min_watch_timeout_seconds + spread(rng_);
    }
    {
      std::lock_guard lock(mu_);
      ++stats_.watches;
    }
    int64_t delivered = 0;
    Status status = client_.Watch(
        ref_, options_.ns, watch,
        [&](const WatchEvent& event) {
          ++delivered;
          Apply(event);
          return !stop.stop_requested();
        },
        stop);
    if (stop.stop_requested()) break;
    if (delivered > 0) {
      quiet_closes = 0;
      std::lock_guard lock(backoff_mu_);
      backoff_steps_ = 0;
    }
    if (status.ok()) {
      // The server ended the watch (its timeout): resume from the last resourceVersion. A
      // server that keeps closing at once gets backed off rather than hammered.
      restart("closed");
      if (delivered == 0 && ++quiet_closes >= 3) clock_.SleepFor(NextBackoff(), stop);
    } else if (status.code() == StatusCode::kOutOfRange) {
      restart("expired");
      listed = false;
    } else {
      restart("error");
      clock_.SleepFor(NextBackoff(), stop);
    }
  }
}

StatusOr<std::string> Informer::ListAndReplace(std::stop_token stop) {
  ListOptions list;
  list.label_selector = options_.label_selector;
  list.field_selector = options_.field_selector;
  list.limit = options_.page_size;
  bool first;
  {
    std::lock_guard lock(mu_);
    ++stats_.lists;
    first = !synced_;
  }
  auto result = client_.List(ref_, options_.ns, list);
  if (!result.ok()) return result.status();
  if (stop.stop_requested()) return CancelledStatus();

  // Cache change and handler calls under dispatch_mu_: a handler added meanwhile sees each
  // object exactly once (from AddHandler's replay or from here, never both).
  std::lock_guard dispatch(dispatch_mu_);
  std::vector<Notification> notes;
  {
    std::lock_guard lock(mu_);
    if (!first) ++stats_.relists;
    std::set<Key> seen;
    for (Object& item : result->items) {
      if (options_.strip_managed_fields && item.contains("metadata")) {
        item["metadata"].erase("managedFields");
      }
      auto object = std::make_shared<const Object>(std::move(item));
      seen.insert({MetaString(*object, "namespace"), MetaString(*object, "name")});
      Upsert(std::move(object), &notes);
    }
    std::vector<std::pair<Key, std::shared_ptr<const Object>>> gone;
    for (const auto& [key, entry] : cache_) {
      if (seen.count(key) == 0) gone.emplace_back(key, entry.object);
    }
    for (auto& [key, last] : gone) Remove(key, last, &notes);
    resource_version_ = result->resource_version;
  }
  DispatchLocked(notes);
  {
    // Synced once the handlers have seen the initial state too.
    std::lock_guard lock(mu_);
    synced_ = true;
  }
  synced_cv_.notify_all();
  return result->resource_version;
}

Status Informer::CancelledStatus() { return UnavailableError("informer stopped"); }

void Informer::Apply(const WatchEvent& event) {
  std::lock_guard dispatch(dispatch_mu_);
  std::vector<Notification> notes;
  {
    std::lock_guard lock(mu_);
    std::string rv = MetaString(event.object, "resourceVersion");
    switch (event.type) {
      case WatchEvent::Type::kAdded:
      case WatchEvent::Type::kModified: {
        auto object = std::make_shared<Object>(event.object);
        if (options_.strip_managed_fields && object->contains("metadata")) {
          (*object)["metadata"].erase("managedFields");
        }
        Upsert(std::move(object), &notes);
        break;
      }
      case WatchEvent::Type::kDeleted:
        Remove({MetaString(event.object, "namespace"), MetaString(event.object, "name")},
               std::make_shared<const Object>(event.object), &notes);
        break;
      case WatchEvent::Type::kBookmark:
        break;
      case WatchEvent::Type::kError:
        return;  // Watch returns the error; nothing to store
    }
    if (!rv.empty()) resource_version_ = rv;
    ++stats_.events;
  }
  DispatchLocked(notes);
}

// REQUIRES: mu_ held.
void Informer::Upsert(std::shared_ptr<const Object> object, std::vector<Notification>* out) {
  Key key{MetaString(*object, "namespace"), MetaString(*object, "name")};
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    IndexLocked(key, *object, true);
    cache_.emplace(key, Entry{object});
    out->push_back({Change::kAdd, nullptr, std::move(object)});
    return;
  }
  std::shared_ptr<const Object> old = it->second.object;
  // The same version seen twice (a relist after a resumed watch): not a change.
  if (MetaString(*old, "resourceVersion") == MetaString(*object, "resourceVersion")) return;
  IndexLocked(key, *old, false);
  IndexLocked(key, *object, true);
  it->second.object = object;
  out->push_back({Change::kUpdate, std::move(old), std::move(object)});
}

// REQUIRES: mu_ held.
void Informer::Remove(const Key& key, std::shared_ptr<const Object> last,
                      std::vector<Notification>* out) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return;
  IndexLocked(key, *it->second.object, false);
  cache_.erase(it);
  out->push_back({Change::kDelete, nullptr, std::move(last)});
}

// REQUIRES: mu_ held.
void Informer::IndexLocked(const Key& key, const Object& object, bool add) {
  auto touch = [&](std::map<std::string, std::set<Key>>& index, const std::string& term) {
    if (add) {
      index[term].insert(key);
      return;
    }
    auto it = index.find(term);
    if (it == index.end()) return;
    it->second.erase(key);
    if (it->second.empty()) index.erase(it);
  };
  touch(by_namespace_, key.first);
  const json& meta = object.contains("metadata") ? object["metadata"] : json::object();
  if (auto labels = meta.find("labels"); labels != meta.end() && labels->is_object()) {
    for (const auto& [k, v] : labels->items()) {
      touch(by_label_, k + "=" + (v.is_string() ? v.get<std::string>() : v.dump()));
    }
  }
  if (auto owners = meta.find("ownerReferences"); owners != meta.end() && owners->is_array()) {
    for (const json& owner : *owners) {
      std::string uid = owner.value("uid", "");
      if (!uid.empty()) touch(by_owner_, uid);
    }
  }
}

// REQUIRES: dispatch_mu_ held (not mu_: handlers may read the cache).
void Informer::DispatchLocked(const std::vector<Notification>& notes) {
  for (const Notification& n : notes) {
    for (const EventHandlers& h : handlers_) {
      switch (n.change) {
        case Change::kAdd:
          if (h.on_add) h.on_add(*n.object);
          break;
        case Change::kUpdate:
          if (h.on_update) h.on_update(*n.old_object, *n.object);
          break;
        case Change::kDelete:
          if (h.on_delete) h.on_delete(*n.object);
          break;
      }
    }
  }
}

void Informer::ResyncLoop(std::stop_token stop) {
  while (clock_.SleepFor(options_.resync_period, stop)) {
    std::lock_guard dispatch(dispatch_mu_);
    std::vector<Notification> notes;
    {
      std::lock_guard lock(mu_);
      if (!synced_) continue;
      for (const auto& [key, entry] : cache_) {
        notes.push_back({Change::kUpdate, entry.object, entry.object});
      }
    }
    DispatchLocked(notes);
  }
}

std::vector<Object> Informer::CollectLocked(const std::set<Key>& keys, std::string_view ns) const {
  std::vector<Object> out;
  out.reserve(keys.size());
  for (const Key& key : keys) {
    if (!ns.empty() && key.first != ns) continue;
    auto it = cache_.find(key);
    if (it != cache_.end()) out.push_back(*it->second.object);
  }
  return out;
}

std::optional<Object> Informer::Get(std::string_view ns, std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = cache_.find(Key{std::string(ns), std::string(name)});
  if (it == cache_.end()) return std::nullopt;
  return *it->second.object;
}

std::vector<Object> Informer::List(std::string_view ns) const {
  std::lock_guard lock(mu_);
  std::vector<Object> out;
  if (!ns.empty()) {
    auto it = by_namespace_.find(std::string(ns));
    return it == by_namespace_.end() ? out : CollectLocked(it->second, ns);
  }
  out.reserve(cache_.size());
  for (const auto& [key, entry] : cache_) out.push_back(*entry.object);
  return out;
}

std::vector<Object> Informer::ListByLabel(const LabelSelector& selector,
                                          std::string_view ns) const {
  std::vector<Object> candidates;
  auto equalities = selector.Equalities();
  if (equalities.empty()) {
    candidates = List(ns);
  } else {
    std::lock_guard lock(mu_);
    auto it = by_label_.find(equalities.front().first + "=" + equalities.front().second);
    if (it != by_label_.end()) candidates = CollectLocked(it->second, ns);
  }
  std::vector<Object> out;
  for (Object& object : candidates) {
    const json& meta = object["metadata"];
    if (selector.Matches(meta.contains("labels") ? meta["labels"] : json())) {
      out.push_back(std::move(object));
    }
  }
  return out;
}

std::vector<Object> Informer::ListByOwner(std::string_view uid) const {
  std::lock_guard lock(mu_);
  auto it = by_owner_.find(std::string(uid));
  if (it == by_owner_.end()) return {};
  return CollectLocked(it->second, "");
}

size_t Informer::Size() const {
  std::lock_guard lock(mu_);
  return cache_.size();
}

std::string Informer::ResourceVersion() const {
  std::lock_guard lock(mu_);
  return resource_version_;
}

Informer::Stats Informer::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace kvcache::kube
