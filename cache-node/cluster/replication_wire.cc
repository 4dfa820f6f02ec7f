#include "cluster/replication_wire.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

namespace kvcache::node {
namespace {

using nlohmann::json;

constexpr std::array<std::string_view, 4> kKindNames = {"stream", "syncBegin", "syncData",
                                                         "syncEnd"};

template <typename T>
void PutInt(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // little-endian hosts only (x86-64, arm64)
  out->append(buf, sizeof(T));
}

template <typename T>
bool GetInt(std::string_view* in, T* v) {
  if (in->size() < sizeof(T)) return false;
  std::memcpy(v, in->data(), sizeof(T));
  in->remove_prefix(sizeof(T));
  return true;
}

bool GetBytes(std::string_view* in, size_t n, std::string* out) {
  if (in->size() < n) return false;
  out->assign(in->data(), n);
  in->remove_prefix(n);
  return true;
}

}  // namespace

std::string EncodeBatch(const BatchHeader& h, const std::vector<ReplRecord>& records) {
  json head_doc = {{"epoch", h.epoch},
                   {"primary", h.primary},
                   {"replid", h.replid},
                   {"kind", kKindNames[static_cast<size_t>(h.kind)]},
                   {"after", h.after},
                   {"primaryOffset", h.primary_offset}};
  if (!h.replica.empty()) head_doc["replica"] = h.replica;
  const std::string head = head_doc.dump();
  std::string out;
  size_t total = 4 + head.size();
  for (const ReplRecord& r : records) total += r.Bytes();
  out.reserve(total);
  PutInt<uint32_t>(&out, static_cast<uint32_t>(head.size()));
  out += head;
  for (const ReplRecord& r : records) {
    PutInt<uint8_t>(&out, static_cast<uint8_t>(r.type));
    PutInt<uint64_t>(&out, r.offset);
    PutInt<int64_t>(&out, r.expire_at_ms);
    PutInt<uint32_t>(&out, static_cast<uint32_t>(r.key.size()));
    PutInt<uint32_t>(&out, static_cast<uint32_t>(r.value.size()));
    PutInt<uint16_t>(&out, static_cast<uint16_t>(r.content_type.size()));
    out += r.key;
    out += r.value;
    out += r.content_type;
  }
  return out;
}

StatusOr<Batch> DecodeBatch(std::string_view body) {
  uint32_t head_len = 0;
  if (!GetInt(&body, &head_len) || body.size() < head_len) {
    return InvalidArgumentError("replication batch: truncated header");
  }
  Batch batch;
  json head = json::parse(body.substr(0, head_len), nullptr, /*allow_exceptions=*/false);
  body.remove_prefix(head_len);
  if (head.is_discarded() || !head.is_object()) {
    return InvalidArgumentError("replication batch: header is not a JSON object");
  }
  try {
    BatchHeader& h = batch.header;
    h.epoch = head.at("epoch").get<uint64_t>();
    h.primary = head.at("primary").get<std::string>();
    h.replid = head.at("replid").get<std::string>();
    const std::string kind = head.at("kind").get<std::string>();
    auto it = std::find(kKindNames.begin(), kKindNames.end(), kind);
    if (it == kKindNames.end()) return InvalidArgumentError("replication batch: unknown kind");
    h.kind = static_cast<BatchKind>(it - kKindNames.begin());
    h.after = head.at("after").get<uint64_t>();
    h.primary_offset = head.value("primaryOffset", uint64_t{0});
    h.replica = head.value("replica", std::string());
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("replication batch: ") + e.what());
  }
  while (!body.empty()) {
    ReplRecord r;
    uint8_t type = 0;
    uint32_t key_len = 0, value_len = 0;
    uint16_t ct_len = 0;
    if (!GetInt(&body, &type) || !GetInt(&body, &r.offset) || !GetInt(&body, &r.expire_at_ms) ||
        !GetInt(&body, &key_len) || !GetInt(&body, &value_len) || !GetInt(&body, &ct_len) ||
        !GetBytes(&body, key_len, &r.key) || !GetBytes(&body, value_len, &r.value) ||
        !GetBytes(&body, ct_len, &r.content_type)) {
      return InvalidArgumentError("replication batch: truncated record");
    }
    if (type < 1 || type > 3) return InvalidArgumentError("replication batch: bad record type");
    r.type = static_cast<ReplRecord::Type>(type);
    batch.records.push_back(std::move(r));
  }
  return batch;
}

std::string EncodeBatchReply(const BatchReply& reply) {
  if (reply.misdirected) {
    return json{{"error", "this node is " + reply.answered_by + ", not the replica the batch is for"},
                {"code", 421},
                {"node", reply.answered_by}}
        .dump();
  }
  if (reply.fenced) {
    return json{{"error", "batch from an older epoch than " + std::to_string(reply.epoch)},
                {"code", 409},
                {"epoch", reply.epoch}}
        .dump();
  }
  return json{{"appliedOffset", reply.applied_offset},
              {"epoch", reply.epoch},
              {"result", reply.full_sync ? "fullSync" : "ok"}}
      .dump();
}

StatusOr<BatchReply> DecodeBatchReply(int code, std::string_view body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgumentError("replication reply: HTTP " + std::to_string(code) +
                                " without a JSON object: " + std::string(body.substr(0, 200)));
  }
  BatchReply reply;
  try {
    if (code == 421) {
      reply.misdirected = true;
      reply.answered_by = doc.value("node", std::string());
      return reply;
    }
    if (code == 409) {
      reply.fenced = true;
      reply.epoch = doc.at("epoch").get<uint64_t>();
      return reply;
    }
    if (code != 200) {
      return InvalidArgumentError("replication reply: HTTP " + std::to_string(code) + " " +
                                  doc.value("error", std::string()));
    }
    reply.applied_offset = doc.at("appliedOffset").get<uint64_t>();
    reply.epoch = doc.value("epoch", uint64_t{0});
    reply.full_sync = doc.at("result").get<std::string>() == "fullSync";
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("replication reply: ") + e.what());
  }
  return reply;
}

BatchVerdict JudgeBatch(const ReceiverState& s, const BatchHeader& h) {
  if (s.role == protocol::Role::kPrimary) {
    return h.epoch > s.epoch ? BatchVerdict::kDemoteAndApply : BatchVerdict::kFence;
  }
  const bool from_leader = !s.leader.empty() && h.primary == s.leader;
  if (!from_leader) {
    if (h.epoch < s.leader_epoch) return BatchVerdict::kFence;
    if (h.epoch == s.leader_epoch && !s.leader.empty()) return BatchVerdict::kFence;
  }
  switch (h.kind) {
    case BatchKind::kSyncBegin:
      return BatchVerdict::kApply;
    case BatchKind::kSyncData:
    case BatchKind::kSyncEnd:
      return s.syncing && s.replid == h.replid ? BatchVerdict::kApply
                                               : BatchVerdict::kNeedFullSync;
    case BatchKind::kStream:
      return !s.syncing && !s.replid.empty() && s.replid == h.replid
                 ? BatchVerdict::kApply
                 : BatchVerdict::kNeedFullSync;
  }
  return BatchVerdict::kNeedFullSync;
}

SenderAction JudgeReply(const BatchReply& reply, uint64_t my_epoch, uint64_t backlog_start) {
  if (reply.fenced) return reply.epoch > my_epoch ? SenderAction::kDemote : SenderAction::kRetry;
  if (reply.full_sync || reply.applied_offset < backlog_start) return SenderAction::kFullSync;
  return SenderAction::kAdvance;
}

uint64_t QuorumOffset(std::vector<uint64_t> acked, int min_acks) {
  if (min_acks <= 0) return std::numeric_limits<uint64_t>::max();
  if (acked.size() < static_cast<size_t>(min_acks)) return 0;
  std::nth_element(acked.begin(), acked.begin() + (min_acks - 1), acked.end(),
                   std::greater<uint64_t>());
  return acked[min_acks - 1];
}

}  // namespace kvcache::node
