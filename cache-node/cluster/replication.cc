#include "cluster/replication.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include <cpprest/http_client.h>
#include <nlohmann/json.hpp>
#include <pplx/threadpool.h>
#include <sched.h>

namespace kvcache::node {
namespace {

using web::http::http_request;
using web::http::http_response;
using web::http::client::http_client;
using web::http::client::http_client_config;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string NewReplid() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ SteadyMs());
  char buf[17];
  snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

}  // namespace

StatusOr<ReplicationMode> ParseReplicationMode(std::string_view name) {
  if (name == "async") return ReplicationMode::kAsync;
  if (name == "sync") return ReplicationMode::kSync;
  return InvalidArgumentError("replication mode must be async or sync");
}

struct Replication::Sender {
  std::string name;
  std::string addr;
  BatchHeader term;  // epoch, primary, replid of the term it serves
  std::atomic<bool> stop{false};
  std::atomic<bool> finished{false};
  std::atomic<bool> connected{false};
  std::atomic<uint64_t> acked{0};
  pplx::cancellation_token_source cancel;
  std::shared_ptr<http_client> client;  // the sender thread's alone (Post replaces it)
  std::thread thread;
};

Replication::Replication(Store& store, ClusterView& cluster, ReplicationLog& log,
                         ReplicationOptions options, ReplicationLogger logger)
    : store_(store),
      cluster_(cluster),
      log_(log),
      options_(std::move(options)),
      logger_(std::move(logger)) {
  // cpprestsdk's default pool has 40 threads, and every request then bounces between them
  // (measured: context switches were most of a node's CPU when the forwarder used it). One
  // thread per usable CPU is enough for its asynchronous I/O. The pool is process-wide and can
  // be sized only before first use.
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

Replication::~Replication() { Stop(); }

void Replication::Start() {
  OnTopology();
  {
    std::lock_guard apply(apply_mu_);
    LoadState();
    if (!options_.state_path.empty() && ::access(PartialMarkerPath().c_str(), F_OK) == 0) {
      partial_copy_ = true;
      logger_("A full sync was cut off before this start (" + PartialMarkerPath() +
              "): this store is part of its shard, not promotable until a full sync completes");
    }
  }
  started_ = true;
  control_ = std::thread([this] { ControlLoop(); });
}

void Replication::Stop() {
  {
    std::lock_guard lock(control_mu_);
    if (stop_) return;
    stop_ = true;
  }
  control_cv_.notify_all();
  if (control_.joinable()) control_.join();
  std::vector<std::shared_ptr<Sender>> all;
  {
    std::lock_guard lock(mu_);
    RetireSendersLocked();
    all.swap(retired_);
  }
  log_.WakeReaders();
  for (auto& s : all) {
    if (s->thread.joinable()) s->thread.join();
  }
  FailWaiters(UnavailableError("the node is stopping; the write was not acknowledged"));
}

void Replication::RaiseEpoch(uint64_t epoch) {
  uint64_t now = epoch_.load();
  while (epoch > now && !epoch_.compare_exchange_weak(now, epoch)) {
  }
}

void Replication::OnTopology() {
  if (cluster_.current() == seen_routing_.load()) return;
  std::lock_guard apply(apply_mu_);
  std::lock_guard lock(mu_);
  OnTopologyLocked();
}

void Replication::OnTopologyLocked() {
  const Routing* routing = cluster_.current();
  if (routing == nullptr || routing == seen_routing_) return;
  seen_routing_ = routing;
  const uint64_t epoch = routing->topology.epoch;
  RaiseEpoch(epoch);
  self_shard_ = routing->self_shard;
  if (routing->self_shard >= 0 && epoch >= leader_epoch_) {
    leader_ = routing->topology.shards[routing->self_shard].primary.name;
    leader_epoch_ = epoch;
  }
  const protocol::Role named = routing->self_shard < 0 ? protocol::Role::kNone
                               : routing->self_primary ? protocol::Role::kPrimary
                                                       : protocol::Role::kReplica;
  // A topology older than the term this node holds (e.g. it was promoted in a newer epoch and
  // the operator's push has not arrived) does not change the role.
  if (epoch >= role_epoch_) {
    if (named == protocol::Role::kPrimary && role() != protocol::Role::kPrimary) {
      BecomePrimaryLocked(epoch, "the topology names it primary");
    } else if (named != protocol::Role::kPrimary && role() == protocol::Role::kPrimary) {
      DemoteLocked(epoch, named, "topology epoch " + std::to_string(epoch) +
                                     " names another primary");
    } else if (named != protocol::Role::kPrimary) {
      role_ = static_cast<int>(named);
      role_epoch_ = epoch;
    }
  }
  if (role() == protocol::Role::kPrimary) ReconcileSendersLocked();
}

Status Replication::PauseWrites(std::chrono::milliseconds pause) {
  if (role() != protocol::Role::kPrimary) {
    return FailedPreconditionError("this node is not a primary: nothing to hand over");
  }
  writes_paused_until_ms_.store(SteadyMs() + pause.count());
  logger_("Writes paused for " + std::to_string(pause.count()) + " ms: handing the shard over");
  return Status::Ok();
}

void Replication::BecomePrimaryLocked(uint64_t epoch, const std::string& why) {
  writes_paused_until_ms_.store(0);
  RetireSendersLocked();
  replid_ = NewReplid();
  role_epoch_ = epoch;
  RaiseEpoch(epoch);
  follow_replid_.clear();
  following_ = false;
  ForgetState();
  leader_ = cluster_.self_name();
  leader_epoch_ = std::max(leader_epoch_, epoch);
  syncing_ = false;
  last_replica_answer_ms_ = 0;
  {
    std::lock_guard w(waiters_mu_);
    quorum_offset_ = 0;
  }
  role_ = static_cast<int>(protocol::Role::kPrimary);
  logger_("Became primary epoch=" + std::to_string(epoch) + " replid=" + replid_ +
          " offset=" + std::to_string(log_.last_offset()) + " reason=" + why);
  ReconcileSendersLocked();
}

void Replication::DemoteLocked(uint64_t epoch, protocol::Role to, const std::string& why) {
  role_ = static_cast<int>(to);
  role_epoch_ = epoch;
  RaiseEpoch(epoch);
  RetireSendersLocked();
  log_.SetRecording(false);
  // Whatever this node holds may include writes the new primary never got: only a full sync
  // from the new primary makes it a faithful copy again.
  follow_replid_.clear();
  following_ = false;
  contact_ = false;
  ForgetState();
  syncing_ = false;
  applied_ = 0;
  primary_offset_ = 0;
  // The new primary: the topology's if it already names one, else whoever streams next in an
  // epoch at least this one.
  leader_.clear();
  leader_epoch_ = std::max(leader_epoch_, epoch);
  if (const Routing* routing = cluster_.current();
      routing != nullptr && routing->topology.epoch >= epoch && routing->self_shard >= 0 &&
      !routing->self_primary) {
    leader_ = routing->topology.shards[routing->self_shard].primary.name;
  }
  logger_("Demoted role=" + std::string(protocol::RoleName(to)) +
          " epoch=" + std::to_string(epoch) + " reason=" + why);
  // The writes waiting for acks fail, from the control thread within 10 ms: callbacks write to
  // client sockets and must not run under this node's locks.
  std::lock_guard w(waiters_mu_);
  for (auto& [offset, waiter] : waiters_) demoted_waiters_.push_back(std::move(waiter.done));
  waiters_.clear();
}

void Replication::ReconcileSendersLocked() {
  const Routing* routing = cluster_.current();
  std::map<std::string, std::string> want;  // name -> addr
  if (routing != nullptr && routing->self_shard >= 0) {
    const protocol::Shard& shard = routing->topology.shards[routing->self_shard];
    for (const protocol::Member& m : shard.replicas) {
      if (m.name != cluster_.self_name()) want[m.name] = m.addr;
    }
  }
  for (auto it = senders_.begin(); it != senders_.end();) {
    auto w = want.find(it->first);
    if (w == want.end() || w->second != it->second->addr) {
      it->second->stop = true;
      it->second->cancel.cancel();
      retired_.push_back(it->second);
      it = senders_.erase(it);
    } else {
      ++it;
    }
  }
  const bool recording = !want.empty();
  log_.SetRecording(recording);
  for (const auto& [name, addr] : want) {
    if (senders_.count(name) != 0) continue;
    auto sender = std::make_shared<Sender>();
    sender->name = name;
    sender->addr = addr;
    sender->term.epoch = role_epoch_;
    sender->term.primary = cluster_.self_name();
    sender->term.replid = replid_;
    sender->term.replica = name;
    sender->client = NewReplicaClient(addr);
    Sender* raw = sender.get();
    sender->thread = std::thread([this, raw] { RunSender(*raw); });
    senders_[name] = std::move(sender);
  }
  sender_count_ = senders_.size();
  log_.WakeReaders();
}

void Replication::RetireSendersLocked() {
  for (auto& [name, s] : senders_) {
    s->stop = true;
    s->cancel.cancel();
    retired_.push_back(s);
  }
  senders_.clear();
  sender_count_ = 0;
  log_.WakeReaders();
}

void Replication::ObserveNewerEpoch(uint64_t epoch, const std::string& from) {
  std::lock_guard apply(apply_mu_);
  std::lock_guard lock(mu_);
  if (role() != protocol::Role::kPrimary || epoch <= role_epoch_) return;
  DemoteLocked(epoch, protocol::Role::kReplica,
               from + " knows the newer epoch " + std::to_string(epoch));
}

Status Replication::CheckWritable() const {
  if (role() != protocol::Role::kPrimary) {
    return UnavailableError("this node is not the primary of its shard (its role is changing)");
  }
  if (options_.mode == ReplicationMode::kSync &&
      sender_count_.load() < static_cast<size_t>(options_.min_acks)) {
    return UnavailableError("sync replication needs " + std::to_string(options_.min_acks) +
                            " replica(s) and the topology names fewer");
  }
  if (SteadyMs() < writes_paused_until_ms_.load()) {
    return UnavailableError("this primary is handing its shard over to a replica");
  }
  if (options_.lease.count() > 0 && sender_count_.load() > 0 &&
      SteadyMs() - last_replica_answer_ms_.load() > options_.lease.count()) {
    return UnavailableError("no replica has answered within the primary lease; refusing writes");
  }
  return Status::Ok();
}

void Replication::WaitAcked(uint64_t offset, std::function<void(const kvcache::Status&)> done) {
  // A node outside any topology (standalone) has no one to wait for.
  if (options_.mode == ReplicationMode::kAsync || options_.min_acks <= 0 ||
      role() == protocol::Role::kNone) {
    done(Status::Ok());
    return;
  }
  if (role() != protocol::Role::kPrimary) {
    done(UnavailableError("this node stopped being primary; the write was not acknowledged"));
    return;
  }
  {
    std::lock_guard lock(waiters_mu_);
    if (quorum_offset_ < offset) {
      waiters_.emplace(offset,
                       Waiter{std::chrono::steady_clock::now() + options_.ack_timeout,
                              std::move(done)});
      return;
    }
  }
  done(Status::Ok());
}

void Replication::OnAck() {
  std::vector<uint64_t> acked;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, s] : senders_) acked.push_back(s->acked.load());
  }
  const uint64_t quorum = QuorumOffset(std::move(acked), options_.min_acks);
  std::vector<std::function<void(const kvcache::Status&)>> ready;
  {
    std::lock_guard lock(waiters_mu_);
    quorum_offset_ = std::max(quorum_offset_, quorum);
    auto end = waiters_.upper_bound(quorum_offset_);
    for (auto it = waiters_.begin(); it != end; ++it) ready.push_back(std::move(it->second.done));
    waiters_.erase(waiters_.begin(), end);
  }
  for (auto& done : ready) done(Status::Ok());
}

void Replication::FailWaiters(const kvcache::Status& why) {
  std::multimap<uint64_t, Waiter> failed;
  std::vector<std::function<void(const kvcache::Status&)>> demoted;
  {
    std::lock_guard lock(waiters_mu_);
    failed.swap(waiters_);
    demoted.swap(demoted_waiters_);
  }
  for (auto& [offset, w] : failed) w.done(why);
  for (auto& done : demoted) done(why);
}

void Replication::ControlLoop() {
  uint64_t ticks = 0;
  std::unique_lock lock(control_mu_);
  while (!stop_) {
    control_cv_.wait_for(lock, std::chrono::milliseconds(10), [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    OnTopology();
    if (++ticks % 50 == 0) SaveState();
    // Writes whose acks did not come in time.
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::function<void(const kvcache::Status&)>> expired;
    {
      std::lock_guard w(waiters_mu_);
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->second.deadline <= now) {
          expired.push_back(std::move(it->second.done));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    std::vector<std::function<void(const kvcache::Status&)>> demoted;
    {
      std::lock_guard w(waiters_mu_);
      demoted.swap(demoted_waiters_);
    }
    for (auto& done : demoted) {
      done(UnavailableError("this node stopped being primary; the write was not acknowledged"));
    }
    for (auto& done : expired) {
      done(UnavailableError("the write was not acknowledged by " +
                            std::to_string(options_.min_acks) + " replica(s) in time; it may "
                            "or may not survive a failover"));
    }
    // Join senders that have finished since they were retired.
    std::vector<std::shared_ptr<Sender>> done;
    {
      std::lock_guard m(mu_);
      for (auto it = retired_.begin(); it != retired_.end();) {
        if ((*it)->finished) {
          done.push_back(*it);
          it = retired_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& s : done) {
      if (s->thread.joinable()) s->thread.join();
    }
    lock.lock();
  }
}

std::shared_ptr<http_client> Replication::NewReplicaClient(const std::string& addr) const {
  http_client_config config;
  config.set_timeout(options_.request_timeout);
  return std::make_shared<http_client>("http://" + addr, config);
}

StatusOr<BatchReply> Replication::Post(Sender& s, const BatchHeader& header,
                                       const std::vector<ReplRecord>& records) {
  try {
    http_request req(web::http::methods::POST);
    req.set_request_uri("/internal/replication");
    req.headers().add("Authorization", "Bearer " + options_.cluster_token);
    const std::string body = EncodeBatch(header, records);
    req.set_body(std::vector<unsigned char>(body.begin(), body.end()));
    http_response resp = s.client->request(req, s.cancel.get_token()).get();
    std::vector<unsigned char> bytes = resp.extract_vector().get();
    StatusOr<BatchReply> reply = DecodeBatchReply(
        resp.status_code(),
        std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (reply.ok() && reply->misdirected) {
      // The name led to another node (its address changed hands): drop the kept-alive
      // connection, so that the next request resolves the name again.
      s.client = NewReplicaClient(s.addr);
      return UnavailableError("replica " + s.name + " at " + s.addr + " answered as " +
                              reply->answered_by + ": reconnecting");
    }
    return reply;
  } catch (const std::exception& e) {
    return UnavailableError("replica " + s.name + " at " + s.addr + ": " + e.what());
  }
}

Status Replication::FullSync(Sender& s, const BatchHeader& term, uint64_t* cursor) {
  // The snapshot's offset is read before the store is visited: every record up to it is
  // applied before its shard is copied (offsets are assigned under the key's shard lock, which
  // the visit takes), and the stream from it on replays whatever the fuzzy copy also caught.
  const uint64_t snapshot = log_.last_offset();
  BatchHeader h = term;
  auto send = [&](BatchKind kind, const std::vector<ReplRecord>& records) -> Status {
    h.kind = kind;
    h.epoch = epoch();
    h.after = snapshot;
    h.primary_offset = log_.last_offset();
    StatusOr<BatchReply> reply = Post(s, h, records);
    if (!reply.ok()) return reply.status();
    last_replica_answer_ms_ = SteadyMs();
    if (reply->fenced) {
      ObserveNewerEpoch(reply->epoch, "replica " + s.name);
      return ConflictError("fenced by epoch " + std::to_string(reply->epoch));
    }
    if (reply->full_sync) return UnavailableError("replica lost the sync; starting over");
    return Status::Ok();
  };
  logger_("Full sync started replica=" + s.name + " offset=" + std::to_string(snapshot));
  if (Status st = send(BatchKind::kSyncBegin, {}); !st.ok()) return st;
  uint64_t entries = 0;
  std::vector<ReplRecord> batch;
  size_t batch_bytes = 0;
  for (size_t shard = 0; shard < store_.shard_count(); ++shard) {
    if (s.stop) return UnavailableError("sender stopped");
    std::vector<ReplRecord> copied;
    store_.VisitShard(shard, [&copied](std::string_view key, std::string_view value,
                                       std::string_view content_type, int64_t expire_at_ms) {
      ReplRecord r;
      r.key.assign(key);
      r.value.assign(value);
      r.content_type.assign(content_type);
      r.expire_at_ms = expire_at_ms;
      copied.push_back(std::move(r));
    });
    for (ReplRecord& r : copied) {
      // A batch stays under batch_bytes unless one record alone is larger (a value can be up
      // to the node's value limit, which the replica's request limit allows for).
      if (!batch.empty() && batch_bytes + r.Bytes() > options_.batch_bytes) {
        if (Status st = send(BatchKind::kSyncData, batch); !st.ok()) return st;
        batch.clear();
        batch_bytes = 0;
      }
      batch_bytes += r.Bytes();
      batch.push_back(std::move(r));
      ++entries;
    }
  }
  if (!batch.empty()) {
    if (Status st = send(BatchKind::kSyncData, batch); !st.ok()) return st;
  }
  if (Status st = send(BatchKind::kSyncEnd, {}); !st.ok()) return st;
  *cursor = snapshot;
  s.acked = snapshot;
  ++full_syncs_;
  logger_("Full sync done replica=" + s.name + " entries=" + std::to_string(entries) +
          " offset=" + std::to_string(snapshot));
  OnAck();
  return Status::Ok();
}

void Replication::RunSender(Sender& s) {
  // A new sender starts at the current offset; a replica of this term that is behind says so
  // in its first answer and the cursor goes back to it (or it gets a full sync).
  uint64_t cursor = log_.last_offset();
  bool need_full_sync = false;
  int failures = 0;
  auto pause = [&](std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!s.stop && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  while (!s.stop) {
    if (need_full_sync) {
      Status st = FullSync(s, s.term, &cursor);
      if (!st.ok()) {
        s.connected = false;
        if (st.code() == StatusCode::kConflict) break;  // demoted
        if (failures++ % 50 == 0) {
          logger_("Full sync failed replica=" + s.name + ": " + st.message());
        }
        pause(std::chrono::milliseconds(200));
        continue;
      }
      need_full_sync = false;
      s.connected = true;
    }
    StatusOr<std::vector<ReplRecord>> records =
        log_.Read(cursor, options_.batch_bytes, 100000, options_.heartbeat);
    if (s.stop) break;
    if (!records.ok()) {
      need_full_sync = true;
      continue;
    }
    BatchHeader h = s.term;
    h.kind = BatchKind::kStream;
    h.epoch = epoch();
    h.after = cursor;
    h.primary_offset = log_.last_offset();
    StatusOr<BatchReply> reply = Post(s, h, *records);
    if (!reply.ok()) {
      if (s.connected.exchange(false) || failures == 0) {
        logger_("Replica unreachable replica=" + s.name + ": " + reply.status().message());
      }
      ++failures;
      pause(std::chrono::milliseconds(200));
      continue;
    }
    last_replica_answer_ms_ = SteadyMs();
    switch (JudgeReply(*reply, h.epoch, 0)) {
      case SenderAction::kDemote:
        s.connected = false;
        ObserveNewerEpoch(reply->epoch, "replica " + s.name);
        s.stop = true;
        break;
      case SenderAction::kRetry:
        s.connected = false;
        pause(std::chrono::milliseconds(500));
        break;
      case SenderAction::kFullSync:
        need_full_sync = true;
        break;
      case SenderAction::kAdvance:
        if (!s.connected.exchange(true)) {
          logger_("Replica connected replica=" + s.name + " offset=" +
                  std::to_string(reply->applied_offset));
        }
        failures = 0;
        cursor = reply->applied_offset;
        s.acked = reply->applied_offset;
        OnAck();
        break;
    }
  }
  s.connected = false;
  s.finished = true;
}

Status Replication::ApplyRecord(const ReplRecord& r) {
  switch (r.type) {
    case ReplRecord::Type::kPut: {
      PutRequest put;
      put.key = r.key;
      put.value = r.value;
      put.content_type = r.content_type;
      put.expire_at_ms = r.expire_at_ms;
      StatusOr<PutResult> done = store_.Put(put);
      return done.ok() ? Status::Ok() : done.status();
    }
    case ReplRecord::Type::kDelete: {
      Status st = store_.Delete(r.key);
      return st.ok() || st.code() == StatusCode::kNotFound ? Status::Ok() : st;
    }
    case ReplRecord::Type::kFlush: {
      StatusOr<uint64_t> flushed = store_.Flush();
      return flushed.ok() ? Status::Ok() : flushed.status();
    }
  }
  return Status::Ok();
}

std::pair<int, std::string> Replication::HandleBatch(std::string_view body) {
  if (!started_) {
    return {503, R"j({"error": "not serving yet (recovering)", "code": 503})j"};
  }
  StatusOr<Batch> batch = DecodeBatch(body);
  if (!batch.ok()) {
    return {400, "{\"error\": \"bad replication batch\", \"code\": 400}"};
  }
  const BatchHeader& h = batch->header;
  if (!h.replica.empty() && h.replica != cluster_.self_name()) {
    // Meant for another node that this address pointed at until recently: neither apply nor
    // fence (the epoch says nothing about this node's shard); the sender reconnects.
    BatchReply reply;
    reply.misdirected = true;
    reply.answered_by = cluster_.self_name();
    return {421, EncodeBatchReply(reply)};
  }
  std::lock_guard apply(apply_mu_);
  auto judge = [&] {
    ReceiverState st;
    st.role = role();
    st.epoch = epoch();
    st.replid = follow_replid_;
    st.leader = leader_;
    st.leader_epoch = leader_epoch_;
    st.syncing = syncing_;
    st.applied = applied_;
    return JudgeBatch(st, h);
  };
  BatchVerdict verdict = judge();
  if (verdict == BatchVerdict::kDemoteAndApply) {
    {
      std::lock_guard lock(mu_);
      DemoteLocked(h.epoch, protocol::Role::kReplica,
                   "primary " + h.primary + " streams in the newer epoch " +
                       std::to_string(h.epoch));
    }
    verdict = judge();
  }
  BatchReply reply;
  if (verdict == BatchVerdict::kFence) {
    reply.fenced = true;
    reply.epoch = epoch();
    return {409, EncodeBatchReply(reply)};
  }
  RaiseEpoch(h.epoch);
  if (h.primary != leader_ && h.epoch >= leader_epoch_) {
    logger_("Following primary=" + h.primary + " epoch=" + std::to_string(h.epoch));
    leader_ = h.primary;
    leader_epoch_ = h.epoch;
  }
  primary_offset_ = h.primary_offset;
  contact_ = true;
  reply.epoch = epoch();
  if (verdict == BatchVerdict::kNeedFullSync) {
    reply.full_sync = true;
    reply.applied_offset = applied_;
    return {200, EncodeBatchReply(reply)};
  }
  Status st = Status::Ok();
  switch (h.kind) {
    case BatchKind::kSyncBegin: {
      logger_("Full sync from primary=" + h.primary + " replid=" + h.replid +
              " offset=" + std::to_string(h.after));
      // The data is about to be replaced: a saved resume point no longer describes it.
      ForgetState();
      follow_replid_ = h.replid;
      following_ = false;
      syncing_ = true;
      // Set (and on disk) before the flush: from here until syncEnd the store is only part of
      // the shard, across a restart too.
      MarkPartialCopy(true);
      applied_ = 0;
      ++full_syncs_;
      StatusOr<uint64_t> flushed = store_.Flush();
      if (!flushed.ok()) st = flushed.status();
      break;
    }
    case BatchKind::kSyncData:
      for (const ReplRecord& r : batch->records) {
        if (st = ApplyRecord(r); !st.ok()) break;
      }
      break;
    case BatchKind::kSyncEnd:
      applied_ = h.after;
      syncing_ = false;
      following_ = true;
      Checkpoint(h.after);
      MarkPartialCopy(false);
      logger_("Full sync complete primary=" + h.primary + " offset=" + std::to_string(h.after) +
              " keys=" + std::to_string(store_.Stats().keys));
      break;
    case BatchKind::kStream:
      if (h.after <= applied_) {
        for (const ReplRecord& r : batch->records) {
          if (r.offset <= applied_) continue;
          if (st = ApplyRecord(r); !st.ok()) break;
          applied_ = r.offset;
        }
        if (!batch->records.empty()) Checkpoint(applied_);
      }
      break;
  }
  if (!st.ok()) {
    // Nothing after the failed record is applied; the primary resends from applied_ later.
    return {500, nlohmann::json{{"error", "cannot apply: " + st.message()}, {"code", 500}}.dump()};
  }
  reply.applied_offset = applied_;
  return {200, EncodeBatchReply(reply)};
}

bool Replication::CaughtUp() const {
  if (role() != protocol::Role::kReplica) return true;
  if (syncing_ || !following_ || !contact_) return false;
  const uint64_t applied = applied_.load(), primary = primary_offset_.load();
  return primary <= applied || primary - applied <= options_.ready_lag_records;
}

Status Replication::Promote(const protocol::PromoteRequest& request) {
  std::lock_guard apply(apply_mu_);
  std::lock_guard lock(mu_);
  OnTopologyLocked();
  if (self_shard_ < 0) {
    return FailedPreconditionError("no installed topology names this node: nothing to promote");
  }
  if (request.epoch <= epoch()) {
    return ConflictError("promotion epoch " + std::to_string(request.epoch) +
                         " is not newer than this node's epoch " + std::to_string(epoch()));
  }
  // Under apply_mu_: no batch of the full sync lands between this check and the promotion.
  if (partial_copy_) {
    return FailedPreconditionError(
        "this replica is in the middle of a full sync from " +
        (leader_.empty() ? std::string("its primary") : leader_) + " (" +
        std::to_string(store_.Stats().keys) +
        " keys so far): it holds only part of the shard, and promoted it would lose the rest "
        "for good; wait for the primary to come back, or promote a replica that is caught up");
  }
  // Already primary (promoted twice, or the operator re-promotes): a new term all the same.
  BecomePrimaryLocked(request.epoch, "promoted (POST /internal/promote)");
  return Status::Ok();
}

uint64_t Replication::offset() const {
  return role() == protocol::Role::kPrimary ? log_.last_offset() : applied_.load();
}

protocol::NodeStatus Replication::Describe() const {
  protocol::NodeStatus s;
  s.name = cluster_.self_name();
  s.role = role();
  const Routing* routing = cluster_.current();
  if (routing != nullptr) {
    s.epoch = routing->topology.epoch;
    if (routing->self_shard >= 0) s.shard = routing->topology.shards[routing->self_shard].id;
  }
  s.fence_epoch = epoch();
  s.applied_offset = offset();
  s.primary_offset =
      role() == protocol::Role::kPrimary ? log_.last_offset() : primary_offset_.load();
  return s;
}

std::string Replication::MetricsText() const {
  std::ostringstream out;
  const protocol::NodeStatus s = Describe();
  auto gauge = [&out](const char* name, const char* help) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " gauge\n";
  };
  gauge("kvcache_node_role", "1 for this node's current role in its shard");
  for (protocol::Role r : {protocol::Role::kNone, protocol::Role::kPrimary,
                           protocol::Role::kReplica}) {
    out << "kvcache_node_role{role=\"" << protocol::RoleName(r) << "\"} "
        << (r == s.role ? 1 : 0) << "\n";
  }
  gauge("kvcache_node_shard", "Id of the shard this node belongs to (-1: none)");
  out << "kvcache_node_shard " << s.shard << "\n";
  gauge("kvcache_node_topology_epoch", "Epoch of the installed cluster topology");
  out << "kvcache_node_topology_epoch " << s.epoch << "\n";
  gauge("kvcache_node_replication_offset",
        "Replication offset: last assigned (primary) or applied (replica)");
  out << "kvcache_node_replication_offset " << s.applied_offset << "\n";
  gauge("kvcache_node_replication_lag_records",
        "Replica: records the primary has that this node has not applied");
  const uint64_t lag = s.role == protocol::Role::kReplica && s.primary_offset > s.applied_offset
                           ? s.primary_offset - s.applied_offset
                           : 0;
  out << "kvcache_node_replication_lag_records " << lag << "\n";
  gauge("kvcache_node_replication_connected_replicas",
        "Primary: replicas whose last batch was answered");
  size_t connected = 0;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, sender] : senders_) connected += sender->connected ? 1 : 0;
  }
  out << "kvcache_node_replication_connected_replicas " << connected << "\n";
  out << "# HELP kvcache_node_replication_full_syncs_total Full syncs sent (primary) or "
         "received (replica)\n# TYPE kvcache_node_replication_full_syncs_total counter\n"
      << "kvcache_node_replication_full_syncs_total " << full_syncs_.load() << "\n";
  return out.str();
}

}  // namespace kvcache::node

namespace kvcache::node {

void Replication::Checkpoint(uint64_t applied) {
  if (options_.state_path.empty()) return;
  std::lock_guard lock(state_mu_);
  if (state_replid_ != follow_replid_) {
    state_replid_ = follow_replid_;
    checkpoints_.clear();
  }
  // Everything applied so far is in the local log up to its current offset.
  checkpoints_.emplace_back(applied, log_.last_offset());
  if (checkpoints_.size() > 4096) checkpoints_.erase(checkpoints_.begin());
}

std::string Replication::PartialMarkerPath() const {
  return options_.state_path + ".partial-copy";
}

void Replication::MarkPartialCopy(bool partial) {
  partial_copy_ = partial;
  if (options_.state_path.empty()) return;
  const std::string path = PartialMarkerPath();
  if (partial) {
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    static constexpr char kText[] =
        "A full sync from this node's primary is in progress or was cut off: the data here is "
        "part of the shard. Removed when a full sync completes.\n";
    const bool written = fd >= 0 && ::write(fd, kText, sizeof(kText) - 1) ==
                                        static_cast<ssize_t>(sizeof(kText) - 1) &&
                         ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    // Not fatal: the flag in memory still guards this process; only a restart would forget.
    if (!written) logger_("Cannot write " + path + ": " + std::strerror(errno));
  } else if (std::remove(path.c_str()) != 0 && errno != ENOENT) {
    logger_("Cannot remove " + path + ": " + std::strerror(errno));
    return;
  }
  // The entry itself (created or removed) is durable before the data changes.
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void Replication::ForgetState() {
  if (options_.state_path.empty()) return;
  std::lock_guard lock(state_mu_);
  checkpoints_.clear();
  state_replid_.clear();
  saved_offset_ = 0;
  if (std::remove(options_.state_path.c_str()) == 0) {
    // Durably gone before the data it described changes (a full sync flushes next): a file
    // that came back after a power loss would resume a stream over the wrong data.
    const size_t slash = options_.state_path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : options_.state_path.substr(0, slash);
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
}

void Replication::SaveState() {
  if (options_.state_path.empty() || !options_.durable_offset) return;
  const uint64_t durable = options_.durable_offset();
  std::lock_guard lock(state_mu_);
  // The newest checkpoint whose records are all durable locally: after a crash the recovered
  // data holds at least that state, and replaying the stream from there over it is idempotent.
  size_t best = checkpoints_.size();
  for (size_t i = 0; i < checkpoints_.size() && checkpoints_[i].second <= durable; ++i) best = i;
  if (best == checkpoints_.size()) return;
  const uint64_t offset = checkpoints_[best].first;
  checkpoints_.erase(checkpoints_.begin(), checkpoints_.begin() + static_cast<long>(best));
  if (offset == saved_offset_) return;
  const std::string tmp = options_.state_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << nlohmann::json{{"replid", state_replid_}, {"offset", offset}}.dump() << "\n";
    if (!out) return;
  }
  // A lost or torn file after a crash only costs a full sync.
  if (std::rename(tmp.c_str(), options_.state_path.c_str()) == 0) saved_offset_ = offset;
}

void Replication::LoadState() {
  if (options_.state_path.empty()) return;
  std::ifstream in(options_.state_path);
  if (!in) return;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (role() != protocol::Role::kReplica || doc.is_discarded() || !doc.is_object() ||
      !doc["replid"].is_string() || !doc["offset"].is_number_unsigned()) {
    ForgetState();
    return;
  }
  follow_replid_ = doc["replid"].get<std::string>();
  applied_ = doc["offset"].get<uint64_t>();
  primary_offset_ = applied_.load();
  following_ = true;
  {
    std::lock_guard lock(state_mu_);
    state_replid_ = follow_replid_;
    saved_offset_ = applied_;
  }
  logger_("Resuming replication replid=" + follow_replid_ +
          " offset=" + std::to_string(applied_.load()) + " (no full sync unless the primary's "
          "backlog no longer holds it)");
}

}  // namespace kvcache::node
