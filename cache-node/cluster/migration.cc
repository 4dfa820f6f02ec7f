#include "cluster/migration.h"

#include <algorithm>
#include <future>

namespace kvcache::node {
namespace {

using protocol::MigrationStatus;
using State = protocol::MigrationStatus::State;

constexpr char kImportPath[] = "/internal/import";

// The index of the shard whose primary is `name`, or -1.
int ShardWithPrimary(const protocol::Topology& topology, const std::string& name) {
  for (size_t i = 0; i < topology.shards.size(); ++i) {
    if (topology.shards[i].primary.name == name) return static_cast<int>(i);
  }
  return -1;
}

int ShardIndexById(const protocol::Topology& topology, int id) {
  for (size_t i = 0; i < topology.shards.size(); ++i) {
    if (topology.shards[i].id == id) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

Migrations::Migrations(Store& store, const ClusterView& cluster, Forwarder& forwarder, Env& env,
                       MigrationOptions options, Log log)
    : store_(store),
      cluster_(cluster),
      forwarder_(forwarder),
      env_(env),
      options_(std::move(options)),
      log_(log ? std::move(log) : [](const std::string&) {}) {}

Migrations::~Migrations() { Stop(); }

// ---- source side -------------------------------------------------------------------------

Status Migrations::Load() {
  if (options_.data_dir.empty()) return Status::Ok();
  const std::string path = options_.data_dir + "/" + kStateFile;
  if (!env_.FileExists(path)) return Status::Ok();
  StatusOr<std::string> text = env_.ReadFile(path);
  if (!text.ok()) return text.status();
  StatusOr<MigrationRecord> record = ParseMigrationRecord(*text);
  if (!record.ok()) {
    return InvalidArgumentError(path + ": " + record.status().message());
  }
  std::lock_guard lock(mu_);
  record_ = std::move(*record);
  if (!record_->finished) {
    slots_ = SlotSet::FromRanges(record_->request.slots);
    // Some keys may be at the target already: route as during the migration from the start.
    PublishRoute(record_->request);
    SetActive(record_->status.state != State::kFailed);
    log_("Loaded migration slots=" + slots_.Describe() + " target=" + record_->request.target.name +
         " state=" + protocol::EncodeMigrationStatus(record_->status));
  }
  return Status::Ok();
}

void Migrations::Resume() {
  std::lock_guard lock(mu_);
  if (!record_ || record_->finished || record_->status.state == State::kFailed) return;
  if (worker_.joinable()) return;
  stop_ = false;
  worker_ = std::thread([this] { Run(); });
}

StatusOr<MigrationStatus> Migrations::Start(const protocol::MigrationRequest& request) {
  std::lock_guard start_lock(start_mu_);
  const Routing* routing = cluster_.current();
  if (routing == nullptr || !routing->self_primary || routing->self_shard < 0) {
    return FailedPreconditionError("this node is not a shard primary in its topology");
  }
  const protocol::Topology& topology = routing->topology;
  const protocol::Shard& self = topology.shards[routing->self_shard];
  const SlotSet wanted = SlotSet::FromRanges(request.slots);
  const SlotSet not_owned = wanted.Minus(SlotSet::OwnedBy(routing->owners, routing->self_shard));
  if (!not_owned.empty()) {
    return InvalidArgumentError("slots " + not_owned.Describe() + " are not owned by shard " +
                                std::to_string(self.id) + " (this node's shard)");
  }
  const int target_index = ShardIndexById(topology, request.target_shard);
  if (target_index < 0) {
    return InvalidArgumentError("unknown target shard " + std::to_string(request.target_shard) +
                                " (not in topology epoch " + std::to_string(topology.epoch) + ")");
  }
  if (target_index == routing->self_shard) {
    return InvalidArgumentError("target shard " + std::to_string(request.target_shard) +
                                " is this node's own shard");
  }
  const protocol::Member& target_primary = topology.shards[target_index].primary;
  if (target_primary.name != request.target.name) {
    return InvalidArgumentError("target " + request.target.name + " is not the primary of shard " +
                                std::to_string(request.target_shard) + " (that is " +
                                target_primary.name + ")");
  }
  // Step 5 reads "no key of the slots here" as "all at the target". From a store that is not
  // the whole shard (recovering, or part of a full sync) that would hand the slots over with
  // keys never sent: the move the operator hands to a new primary after a failover hit this.
  if (Status whole = CheckStoreComplete(); !whole.ok()) {
    return UnavailableError("cannot move slots from this node yet: " + whole.message());
  }

  std::unique_lock lock(mu_);
  if (record_ && !record_->finished && record_->status.state == State::kFailed) {
    // A move this node failed at as a primary that was replaced (it came back fenced): the
    // new primary took the move over, and the topology has given its slots away since. Kept,
    // the record would refuse every later move from this shard once this node leads it again.
    const SlotSet recorded = SlotSet::FromRanges(record_->request.slots);
    if (recorded.Minus(SlotSet::OwnedBy(routing->owners, routing->self_shard)) == recorded) {
      record_->finished = true;
      route_.store(nullptr, std::memory_order_release);
      log_("Dropped the failed migration of slots " + recorded.Describe() +
           ": this shard no longer owns any of them");
    }
  }
  if (record_ && !record_->finished) {
    const MigrationStatus& now = record_->status;
    const std::string what = "the migration of slots " +
                             SlotSet::FromRanges(record_->request.slots).Describe() + " to shard " +
                             std::to_string(now.target_shard);
    if (now.state == State::kStreaming) return ConflictError(what + " is still running");
    if (now.state == State::kDone) {
      return ConflictError(what + " is done and waits for the topology in which shard " +
                           std::to_string(now.target_shard) + " owns them");
    }
    if (now.state == State::kFailed && (SlotSet::FromRanges(record_->request.slots) != wanted ||
                                        record_->request.target_shard != request.target_shard)) {
      return ConflictError(what +
                           " failed with keys on both sides: resume it by sending the "
                           "same request again");
    }
  }
  // A finished or failed worker has returned already; reap it.
  if (worker_.joinable()) {
    lock.unlock();
    worker_.join();
    lock.lock();
  }
  const bool resuming = record_ && !record_->finished;
  MigrationRecord record;
  record.request = request;
  record.request.target = target_primary;
  record.status.state = State::kStreaming;
  record.status.target_shard = request.target_shard;
  record.status.slots = wanted.Ranges();
  record.status.keys_moved = resuming ? record_->status.keys_moved : 0;
  std::optional<MigrationRecord> previous = std::move(record_);
  record_ = std::move(record);
  if (Status saved = SaveLocked(); !saved.ok()) {
    record_ = std::move(previous);
    return Status(saved.code(), "cannot save migration state: " + saved.message());
  }
  slots_ = wanted;
  source_name_ = cluster_.self_name();
  stop_ = false;
  SetActive(true);
  log_("Started migration slots=" + wanted.Describe() +
       " target_shard=" + std::to_string(request.target_shard) + " target=" + target_primary.name +
       (resuming ? " (resumed)" : ""));
  worker_ = std::thread([this] { Run(); });
  return record_->status;
}

MigrationStatus Migrations::status() const {
  std::lock_guard lock(mu_);
  if (!record_) return {};
  MigrationStatus s = record_->status;
  if (s.state == State::kStreaming) s.keys_remaining = keys_remaining();
  return s;
}

Status Migrations::DeleteLocal(std::string_view key, uint64_t* seq) {
  std::lock_guard lock(in_flight_mu_);
  if (in_flight_.count(std::string(key)) != 0) {
    return UnavailableError("the key is being copied to its new shard; retry");
  }
  return store_.Delete(key, seq);
}

void Migrations::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Migrations::PublishRoute(const protocol::MigrationRequest& request) {
  auto route = std::make_unique<Route>();
  route->slots = SlotSet::FromRanges(request.slots);
  route->target = request.target;
  route_.store(route.get(), std::memory_order_release);
  routes_.push_back(std::move(route));
}

void Migrations::SetActive(bool active) {
  active_.store(active, std::memory_order_relaxed);
  if (!active) keys_remaining_.store(0, std::memory_order_relaxed);
}

bool Migrations::Stopping() {
  std::lock_guard lock(mu_);
  return stop_;
}

bool Migrations::SleepFor(std::chrono::steady_clock::duration d) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, d, [this] { return stop_; });
  return stop_;
}

Status Migrations::CheckStoreComplete() const {
  return options_.store_complete ? options_.store_complete() : Status::Ok();
}

Status Migrations::SaveLocked() {
  if (options_.data_dir.empty() || !record_) return Status::Ok();
  const std::string path = options_.data_dir + "/" + kStateFile;
  StatusOr<std::unique_ptr<WritableFile>> file = env_.NewWritableFile(path + ".tmp");
  if (!file.ok()) return file.status();
  Status st = (*file)->Append(EncodeMigrationRecord(*record_));
  if (st.ok()) st = (*file)->Sync();
  if (st.ok()) st = (*file)->Close();
  if (st.ok()) st = env_.RenameFile(path + ".tmp", path);
  if (st.ok()) st = env_.SyncDir(options_.data_dir);
  return st;
}

void Migrations::Fail(const std::string& error) {
  std::lock_guard lock(mu_);
  record_->status.state = State::kFailed;
  record_->status.error = error;
  // The special routing stays: some keys are at the target already.
  SetActive(false);
  if (Status st = SaveLocked(); !st.ok()) log_("Cannot save migration state: " + st.message());
  log_("Migration failed target=" + record_->request.target.name + " error=" + error);
}

void Migrations::Run() {
  protocol::MigrationRequest request;
  {
    std::lock_guard lock(mu_);
    request = record_->request;
    if (source_name_.empty()) source_name_ = cluster_.self_name();
    slots_ = SlotSet::FromRanges(request.slots);
  }
  // Register at the target before any key is routed there (step 2).
  ImportBatch hello{source_name_, request.slots, {}};
  if (Status st = PostWithRetry(hello); !st.ok()) {
    if (!Stopping()) Fail("cannot register at the target: " + st.message());
    return;
  }
  if (route_.load() == nullptr || route_.load()->target != request.target ||
      !(route_.load()->slots == slots_)) {
    PublishRoute(request);
  }
  auto last_hello = std::chrono::steady_clock::now();
  bool told_incomplete = false;
  while (!Stopping()) {
    const Routing* routing = cluster_.current();
    if (routing == nullptr || !routing->self_primary) {
      Fail("this node is no longer a shard primary");
      return;
    }
    // Flipped: the topology gives none of the slots to this shard any more.
    const bool flipped =
        slots_.Minus(SlotSet::OwnedBy(routing->owners, routing->self_shard)) == slots_;
    State state;
    {
      std::lock_guard lock(mu_);
      state = record_->status.state;
    }
    if (state == State::kStreaming) {
      StatusOr<uint64_t> found = StreamPass();
      if (!found.ok()) {
        if (!Stopping()) Fail(found.status().message());
        return;
      }
      if (*found == 0) {
        // Checked again here, not only in Start(): a resumed move (Resume() runs before the
        // node is ready) or a store emptied since by a full sync must not end the move.
        if (Status whole = CheckStoreComplete(); !whole.ok()) {
          if (!told_incomplete) log_("Migration not done yet: " + whole.message());
          told_incomplete = true;
          SleepFor(std::chrono::milliseconds(100));
          continue;
        }
        std::lock_guard lock(mu_);
        record_->status.state = State::kDone;
        record_->status.keys_remaining = 0;
        keys_remaining_.store(0, std::memory_order_relaxed);
        if (Status st = SaveLocked(); !st.ok())
          log_("Cannot save migration state: " + st.message());
        log_("Migration done slots=" + slots_.Describe() + " target=" + request.target.name +
             " keys_moved=" + std::to_string(record_->status.keys_moved) +
             ": push the topology in which shard " + std::to_string(request.target_shard) +
             " owns them");
      }
      continue;
    }
    if (flipped) {
      FinishAfterFlip();
      return;
    }
    // Done, waiting for the flip: keep the target's registration fresh (step 5).
    if (std::chrono::steady_clock::now() - last_hello >= options_.heartbeat) {
      if (Status st = PostImport(hello); !st.ok()) log_("Migration heartbeat: " + st.message());
      last_hello = std::chrono::steady_clock::now();
    }
    SleepFor(std::chrono::milliseconds(100));
  }
}

StatusOr<uint64_t> Migrations::StreamPass() {
  // Estimate first, for keys_remaining: one cheap pass over the keys.
  uint64_t total = 0;
  for (size_t shard = 0; shard < store_.shard_count(); ++shard) {
    store_.VisitShard(shard,
                      [&](std::string_view key, std::string_view, std::string_view, int64_t) {
                        if (slots_.Contains(protocol::KeySlot(key))) ++total;
                      });
  }
  keys_remaining_.store(total, std::memory_order_relaxed);
  uint64_t found = 0;
  RatePacer pacer(options_.max_keys_per_second);
  // Paced: batches of a tenth of a second's keys, so the rate holds within the second instead
  // of one batch of up to batch_keys going at once and the pause coming after it.
  size_t batch_keys = options_.batch_keys;
  if (options_.max_keys_per_second > 0) {
    batch_keys = static_cast<size_t>(std::clamp<uint64_t>(options_.max_keys_per_second / 10, 1,
                                                          options_.batch_keys));
  }
  std::vector<std::string> pending;
  for (size_t shard = 0; shard < store_.shard_count(); ++shard) {
    store_.VisitShard(shard,
                      [&](std::string_view key, std::string_view, std::string_view, int64_t) {
                        if (slots_.Contains(protocol::KeySlot(key))) pending.emplace_back(key);
                      });
    while (pending.size() >= batch_keys ||
           (shard + 1 == store_.shard_count() && !pending.empty())) {
      const size_t n = std::min(pending.size(), batch_keys);
      std::vector<std::string> batch(std::make_move_iterator(pending.begin()),
                                     std::make_move_iterator(pending.begin() + n));
      pending.erase(pending.begin(), pending.begin() + n);
      found += n;
      if (Status st = SendKeys(batch); !st.ok()) return st;
      if (Stopping()) return UnavailableError("stopping");
      if (auto wait = pacer.Sent(n, std::chrono::steady_clock::now());
          wait > std::chrono::steady_clock::duration::zero() && SleepFor(wait)) {
        return UnavailableError("stopping");
      }
    }
  }
  return found;
}

Status Migrations::SendKeys(const std::vector<std::string>& keys) {
  {
    std::lock_guard lock(in_flight_mu_);
    for (const std::string& k : keys) in_flight_.insert(k);
  }
  // Read after marking: a DELETE that got in before the mark has removed the key already, and
  // none can get in after it until the keys are unmarked.
  struct Copy {
    std::string key;
    GetResult got;
  };
  std::vector<Copy> copies;
  copies.reserve(keys.size());
  for (const std::string& k : keys) {
    StatusOr<GetResult> got = store_.Get(k);
    if (got.ok()) copies.push_back({k, std::move(*got)});
  }
  Status result = Status::Ok();
  size_t next = 0;
  BatchOutcome outcome;
  while (next < copies.size() && result.ok()) {
    ImportBatch batch{source_name_, slots_.Ranges(), {}};
    size_t bytes = 0;
    const size_t first = next;
    while (next < copies.size()) {
      const Copy& c = copies[next];
      ImportEntry e{c.key, c.got.value, c.got.content_type, c.got.expire_at_ms};
      const size_t size = EncodedEntrySize(e);
      if (!batch.entries.empty() && bytes + size > options_.batch_bytes) break;
      batch.entries.push_back(e);
      bytes += size;
      ++next;
    }
    result = PostWithRetry(batch);
    if (!result.ok()) break;
    if (options_.on_acknowledged) options_.on_acknowledged(batch);
    for (size_t i = first; i < next; ++i) {
      Status deleted =
          store_.DeleteIfUnchanged(copies[i].key, copies[i].got.etag, copies[i].got.expire_at_ms);
      if (!outcome.Count(deleted)) {
        result = Status(deleted.code(), "cannot delete a moved key here: " + deleted.message());
        break;
      }
    }
  }
  {
    std::lock_guard lock(in_flight_mu_);
    for (const std::string& k : keys) in_flight_.erase(k);
  }
  keys_moved_total_.fetch_add(outcome.moved, std::memory_order_relaxed);
  uint64_t remaining = keys_remaining_.load(std::memory_order_relaxed);
  keys_remaining_.store(remaining > outcome.moved ? remaining - outcome.moved : 0,
                        std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    record_->status.keys_moved += outcome.moved;
    // The count survives a restart too, give or take the last second.
    const auto now = std::chrono::steady_clock::now();
    if (now - last_saved_ >= std::chrono::seconds(1)) {
      last_saved_ = now;
      if (Status st = SaveLocked(); !st.ok()) log_("Cannot save migration state: " + st.message());
    }
  }
  return result;
}

Status Migrations::PostWithRetry(const ImportBatch& batch) {
  const auto started = std::chrono::steady_clock::now();
  auto backoff = std::chrono::milliseconds(50);
  while (true) {
    Status st = PostImport(batch);
    if (st.ok()) return st;
    if (std::chrono::steady_clock::now() - started >= options_.give_up_after) return st;
    log_("Migration import failed, retrying: " + st.message());
    if (SleepFor(backoff)) return UnavailableError("stopping");
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

Status Migrations::PostImport(const ImportBatch& batch) {
  protocol::Member target;
  {
    std::lock_guard lock(mu_);
    target = record_->request.target;
  }
  ForwardRequest request;
  request.method = "POST";
  request.path_and_query = kImportPath;
  request.body = EncodeImportBatch(batch);
  request.headers.emplace_back("Content-Type", "application/octet-stream");
  if (options_.cluster_token) {
    request.headers.emplace_back("Authorization", "Bearer " + *options_.cluster_token);
  }
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  forwarder_.Forward(
      target, std::move(request), [&done, &target](StatusOr<ForwardResponse> got) {
        if (!got.ok()) {
          done.set_value(got.status());
        } else if (got->code != 200) {
          done.set_value(UnavailableError("target " + target.name + " answered " +
                                          std::to_string(got->code) + ": " + got->body));
        } else {
          done.set_value(Status::Ok());
        }
      });
  return result.get();
}

void Migrations::FinishAfterFlip() {
  // Step 7: anything of the moved slots still here is a stray copy (written around the flip);
  // the target is the owner now.
  std::vector<std::string> strays;
  for (size_t shard = 0; shard < store_.shard_count(); ++shard) {
    store_.VisitShard(shard,
                      [&](std::string_view key, std::string_view, std::string_view, int64_t) {
                        if (slots_.Contains(protocol::KeySlot(key))) strays.emplace_back(key);
                      });
  }
  for (const std::string& k : strays) (void)store_.Delete(k);
  std::lock_guard lock(mu_);
  record_->finished = true;
  route_.store(nullptr, std::memory_order_release);
  SetActive(false);
  if (Status st = SaveLocked(); !st.ok()) log_("Cannot save migration state: " + st.message());
  log_("Migration finished slots=" + slots_.Describe() + " target=" + record_->request.target.name +
       " keys_moved=" + std::to_string(record_->status.keys_moved) +
       " stray_keys_deleted=" + std::to_string(strays.size()));
}

// ---- target side -------------------------------------------------------------------------

StatusOr<uint64_t> Migrations::Import(std::string_view body) {
  StatusOr<ImportBatch> batch = DecodeImportBatch(body);
  if (!batch.ok()) return batch.status();
  const Routing* routing = cluster_.current();
  if (routing == nullptr || !routing->self_primary || routing->self_shard < 0) {
    return FailedPreconditionError("this node is not a shard primary in its topology");
  }
  const SlotSet slots = SlotSet::FromRanges(batch->slots);
  const int source_index = ShardWithPrimary(routing->topology, batch->source);
  SlotSet foreign = slots.Minus(SlotSet::OwnedBy(routing->owners, routing->self_shard));
  if (source_index >= 0) foreign = foreign.Minus(SlotSet::OwnedBy(routing->owners, source_index));
  if (!foreign.empty()) {
    return ConflictError("slots " + foreign.Describe() +
                         " are owned neither by this shard nor by " + batch->source +
                         "'s in topology epoch " + std::to_string(routing->topology.epoch));
  }
  for (const ImportEntry& e : batch->entries) {
    if (!slots.Contains(protocol::KeySlot(e.key))) {
      return InvalidArgumentError("import batch: a key outside the batch's slots");
    }
  }
  {
    std::lock_guard lock(import_mu_);
    Registration& reg = registrations_[batch->source];
    if (reg.epoch != routing->topology.epoch || !(reg.slots == slots)) {
      if (reg.epoch == 0) {
        log_("Importing slots=" + slots.Describe() + " from " + batch->source);
      }
      reg.epoch = routing->topology.epoch;
      reg.slots = slots;
    }
  }
  uint64_t last_seq = 0;
  for (const ImportEntry& e : batch->entries) {
    PutRequest put;
    put.key = e.key;
    put.value = e.value;
    put.content_type = e.content_type;
    put.expire_at_ms = e.expire_at_ms;
    StatusOr<PutResult> written = store_.Put(put);
    if (!written.ok()) return written.status();
    last_seq = std::max(last_seq, written->seq);
  }
  return last_seq;
}

bool Migrations::Importing(int slot) const {
  const Routing* routing = cluster_.current();
  if (routing == nullptr) return false;
  std::lock_guard lock(import_mu_);
  for (const auto& [source, reg] : registrations_) {
    if (reg.epoch == routing->topology.epoch && reg.slots.Contains(slot)) return true;
  }
  return false;
}

}  // namespace kvcache::node
