// The replication protocol between a primary and its replicas, and the pure decisions both
// sides take on it (fencing, full sync, quorum). No I/O here, so all of it is unit-tested.
//
// A primary pushes batches to each replica: POST /internal/replication (cluster token), body =
//   u32 length of the JSON header | JSON header | records (binary, see EncodeRecords)
// header: {"epoch", "primary", "replid", "kind", "after", "primaryOffset"}
//   kind "stream":     records with offsets after `after` (the offset the replica must have
//                      applied); no records = a heartbeat
//   kind "syncBegin":  full sync: the replica drops its data; `after` = the snapshot's offset
//   kind "syncData":   snapshot entries (puts; their offsets mean nothing)
//   kind "syncEnd":    snapshot complete: the replica has applied up to `after`
// The replica answers 200 {"appliedOffset", "epoch", "result": "ok" | "fullSync"}, or 409
// {"epoch"} when the batch comes from an older epoch than it knows (fencing).
//
// Thread safety: pure functions and values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/replication_log.h"
#include "protocol/admin.h"
#include "protocol/status.h"

namespace kvcache::node {

enum class BatchKind { kStream, kSyncBegin, kSyncData, kSyncEnd };

struct BatchHeader {
  uint64_t epoch = 0;
  std::string primary;  // the sender's node name
  std::string replid;   // the sender's replication id (new for every primary term)
  BatchKind kind = BatchKind::kStream;
  uint64_t after = 0;
  uint64_t primary_offset = 0;  // the sender's last offset (for the replica's lag)
  // The node the batch is meant for. A replica's address is a DNS name that can point at
  // another pod for a while (every pod restarted with new IPs, records not yet updated), and a
  // kept-alive connection stays with whoever answered first: the receiver refuses a batch
  // meant for another node (421), so the sender reconnects instead of streaming into a
  // stranger. Empty (a sender before this field): any receiver takes it.
  std::string replica;
  bool operator==(const BatchHeader&) const = default;
};

struct Batch {
  BatchHeader header;
  std::vector<ReplRecord> records;
};

std::string EncodeBatch(const BatchHeader& header, const std::vector<ReplRecord>& records);
// InvalidArgument if the body is malformed or truncated.
StatusOr<Batch> DecodeBatch(std::string_view body);

struct BatchReply {
  bool fenced = false;  // 409: the receiver knows a newer epoch
  bool full_sync = false;
  uint64_t applied_offset = 0;
  uint64_t epoch = 0;
  // 421: the receiver is not header.replica; answered_by is its own name.
  bool misdirected = false;
  std::string answered_by;
};
std::string EncodeBatchReply(const BatchReply& reply);
// `code` is the HTTP status. InvalidArgument for a body that is not a reply.
StatusOr<BatchReply> DecodeBatchReply(int code, std::string_view body);

// What a receiving node knows when a batch arrives.
struct ReceiverState {
  protocol::Role role = protocol::Role::kNone;
  uint64_t epoch = 0;      // the highest epoch it knows
  std::string replid;      // of the primary it follows; empty before its first full sync
  std::string leader;      // the primary it knows for its shard (may be empty)
  uint64_t leader_epoch = 0;  // the epoch in which it learned that
  bool syncing = false;    // between syncBegin and syncEnd
  uint64_t applied = 0;    // offset applied, in `replid`'s numbering
};

enum class BatchVerdict {
  kFence,            // refuse with 409 and the receiver's epoch
  kDemoteAndApply,   // the receiver is a primary of an older epoch: demote, then re-judge
  kApply,            // apply (for a stream: the records after `applied`)
  kNeedFullSync,     // answer "fullSync"
};

// Fencing and sync rules for an incoming batch:
// - a primary receiving a batch from a newer epoch than it knows has been replaced: it
//   demotes; otherwise the batch is fenced (two primaries in one epoch: refuse);
// - a replica accepts batches from the primary it knows (whatever their epoch: a topology push
//   that keeps the roles must not cut the stream), and from another node only in a newer
//   epoch than the one it learned its primary in (equal, when it knows no primary); anything
//   else is fenced: that is how an old primary learns it was replaced;
// - syncBegin always applies; syncData/syncEnd only inside that sync from that replid;
// - a stream applies only from the replid the receiver followed through its last full sync
//   and not during a sync; a stream starting after the receiver's offset applies nothing and
//   the reply's offset tells the sender where to resume.
BatchVerdict JudgeBatch(const ReceiverState& state, const BatchHeader& header);

enum class SenderAction { kAdvance, kFullSync, kDemote, kRetry };

// What a primary does with a replica's reply: advance its cursor to reply.applied_offset, run a
// full sync (asked, or the replica is behind what the backlog still holds), demote (fenced by a
// newer epoch), or retry later (fenced by an equal epoch: another node claims the same term).
SenderAction JudgeReply(const BatchReply& reply, uint64_t my_epoch, uint64_t backlog_start);

// The offset acknowledged by at least `min_acks` of the replicas whose acknowledged offsets
// are given (0 if fewer replicas than that). min_acks 0 acknowledges everything (UINT64_MAX).
uint64_t QuorumOffset(std::vector<uint64_t> acked, int min_acks);

}  // namespace kvcache::node
